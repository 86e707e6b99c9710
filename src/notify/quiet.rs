//! Quiet hours: a daily local-time window in the user's time zone (which may
//! wrap past midnight) during which interrupting channels wait.

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use crate::model::User;

/// When something due at `at` may go out to `user`: `at` itself, or the end of
/// the quiet hours `at` falls in. Daylight-saving changes are the tz
/// database's (an end time skipped by a spring-forward gap resolves to the
/// instant after the gap).
pub fn release(at: Timestamp, user: &User) -> Timestamp {
    let Some(quiet) = &user.quiet_hours else {
        return at;
    };
    let (Ok(start), Ok(end)) = (quiet.start.parse::<Time>(), quiet.end.parse::<Time>()) else {
        return at;
    };
    let tz = user
        .timezone
        .as_deref()
        .and_then(|name| TimeZone::get(name).ok())
        .unwrap_or(TimeZone::UTC);
    let local = at.to_zoned_datetime(tz.clone());
    let now = local.time();
    let date = local.date();
    let end_date = if start < end {
        if !(start <= now && now < end) {
            return at;
        }
        date
    } else if start > end {
        if now >= start {
            match date.tomorrow() {
                Ok(d) => d,
                Err(_) => return at,
            }
        } else if now < end {
            date
        } else {
            return at;
        }
    } else {
        return at;
    };
    match end_date.to_datetime(end).to_zoned_datetime(tz) {
        Ok(zoned) => zoned.timestamp().max(at),
        Err(_) => at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::QuietHours;

    fn user(tz: &str, start: &str, end: &str) -> User {
        User {
            id: "u".into(),
            name: None,
            email: None,
            phone: None,
            timezone: Some(tz.into()),
            quiet_hours: Some(QuietHours {
                start: start.into(),
                end: end.into(),
            }),
            channels: Default::default(),
            unsubscribed_promotional: false,
            updated_at: String::new(),
        }
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn wrapping_window_in_the_users_zone() {
        let u = user("Europe/Paris", "22:00", "07:30");
        // 23:00 in Paris (winter, UTC+1) is 22:00Z: held until 07:30 Paris.
        assert_eq!(
            release(at("2030-01-07T22:00:00Z"), &u),
            at("2030-01-08T06:30:00Z")
        );
        // 03:00 Paris: the same night's end.
        assert_eq!(
            release(at("2030-01-08T02:00:00Z"), &u),
            at("2030-01-08T06:30:00Z")
        );
        // Noon: not quiet.
        assert_eq!(
            release(at("2030-01-08T11:00:00Z"), &u),
            at("2030-01-08T11:00:00Z")
        );
    }

    #[test]
    fn same_day_window_and_daylight_saving() {
        let u = user("America/New_York", "01:00", "09:00");
        // 2030-03-10 is the spring-forward day in New York: 09:00 EDT is 13:00Z.
        assert_eq!(
            release(at("2030-03-10T08:00:00Z"), &u),
            at("2030-03-10T13:00:00Z")
        );
        // The day before, 09:00 EST is 14:00Z.
        assert_eq!(
            release(at("2030-03-09T08:00:00Z"), &u),
            at("2030-03-09T14:00:00Z")
        );
    }

    #[test]
    fn no_window_no_hold() {
        let mut u = user("UTC", "10:00", "10:00");
        assert_eq!(
            release(at("2030-01-07T10:00:00Z"), &u),
            at("2030-01-07T10:00:00Z")
        );
        u.quiet_hours = None;
        assert_eq!(
            release(at("2030-01-07T10:00:00Z"), &u),
            at("2030-01-07T10:00:00Z")
        );
    }
}
