//! Quiet hours: a daily local-time window in the user's time zone (which may
//! wrap past midnight) during which interrupting channels wait.
//!
//! Daylight saving (offsets and their changes are the bundled tz database's):
//! each boundary takes effect at the first instant the local clock reads that
//! time or later. So a boundary skipped by a spring-forward gap takes effect
//! when the gap ends (an end at 02:30 in Paris on the last Sunday of March
//! releases at 03:00 CEST), and one repeated by a fall-back takes effect at its
//! first occurrence; the window is a span of instants, so the repeated hour
//! inside it stays quiet.

use jiff::civil::{Date, Time};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::Timestamp;

use crate::model::User;

/// When something due at `at` may go out to `user`: `at` itself, or the end of
/// the quiet hours `at` falls in (see the module comment for daylight saving).
/// A user without quiet hours, or with an empty window (start = end), is
/// never held; an unknown zone is read as UTC.
pub fn release(at: Timestamp, user: &User) -> Timestamp {
    let Some(quiet) = &user.quiet_hours else {
        return at;
    };
    let (Ok(start), Ok(end)) = (quiet.start.parse::<Time>(), quiet.end.parse::<Time>()) else {
        return at;
    };
    if start == end {
        return at;
    }
    let tz = user
        .timezone
        .as_deref()
        .and_then(|name| TimeZone::get(name).ok())
        .unwrap_or(TimeZone::UTC);
    let today = at.to_zoned_datetime(tz.clone()).date();
    // Only the windows that start yesterday or today can hold `at`.
    for day in [today.yesterday(), Ok(today)].into_iter().flatten() {
        let end_day = if start < end { Ok(day) } else { day.tomorrow() };
        let (Some(from), Some(until)) = (
            boundary(&tz, day, start),
            end_day.ok().and_then(|d| boundary(&tz, d, end)),
        ) else {
            continue;
        };
        if from <= at && at < until {
            return until;
        }
    }
    at
}

/// The first instant at which the local clock in `tz` reads `time` on `day`
/// or later: the time itself, its first occurrence when a fall-back repeats
/// it, or the end of the gap when a spring-forward skips it.
fn boundary(tz: &TimeZone, day: Date, time: Time) -> Option<Timestamp> {
    let ambiguous = tz.to_ambiguous_timestamp(day.to_datetime(time));
    let earlier = ambiguous.earlier().ok()?;
    match ambiguous.offset() {
        // `earlier` is then before the gap; the transition that follows it
        // is the gap's end.
        AmbiguousOffset::Gap { .. } => tz.following(earlier).next().map(|t| t.timestamp()),
        AmbiguousOffset::Unambiguous { .. } | AmbiguousOffset::Fold { .. } => Some(earlier),
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

    /// Quiet from `start` to `end` in `tz`: the release of each `(at, expected)`.
    fn releases(tz: &str, start: &str, end: &str, cases: &[(&str, &str)]) {
        let u = user(tz, start, end);
        for (when, expected) in cases {
            assert_eq!(
                release(at(when), &u),
                at(expected),
                "{tz} {start}-{end} at {when}"
            );
        }
    }

    #[test]
    fn an_end_in_a_spring_forward_gap_releases_when_the_gap_ends() {
        // Paris, 2030-03-31: 02:00 CET (01:00Z) jumps to 03:00 CEST; 02:30
        // never happens, so quiet hours ending then end at 03:00 CEST (01:00Z).
        releases(
            "Europe/Paris",
            "22:00",
            "02:30",
            &[
                ("2030-03-30T23:00:00Z", "2030-03-31T01:00:00Z"),
                ("2030-03-31T00:59:59Z", "2030-03-31T01:00:00Z"),
                ("2030-03-31T01:00:00Z", "2030-03-31T01:00:00Z"),
                // The next night is ordinary: 02:30 CEST is 00:30Z.
                ("2030-03-31T23:00:00Z", "2030-04-01T00:30:00Z"),
            ],
        );
    }

    #[test]
    fn a_start_in_a_spring_forward_gap_begins_when_the_gap_ends() {
        // New York, 2030-03-10: 02:00 EST (07:00Z) jumps to 03:00 EDT.
        releases(
            "America/New_York",
            "02:30",
            "06:00",
            &[
                // 01:59:59 EST: not yet quiet.
                ("2030-03-10T06:59:59Z", "2030-03-10T06:59:59Z"),
                // 03:00 EDT, the gap's end: quiet until 06:00 EDT (10:00Z).
                ("2030-03-10T07:00:00Z", "2030-03-10T10:00:00Z"),
            ],
        );
    }

    #[test]
    fn an_end_repeated_by_a_fall_back_releases_at_its_first_occurrence() {
        // New York, 2030-11-03: 02:00 EDT (06:00Z) falls back to 01:00 EST;
        // 01:30 happens at 05:30Z (EDT) and again at 06:30Z (EST).
        releases(
            "America/New_York",
            "22:00",
            "01:30",
            &[
                ("2030-11-03T05:00:00Z", "2030-11-03T05:30:00Z"),
                // 01:15 EST, the second time round: already released.
                ("2030-11-03T06:15:00Z", "2030-11-03T06:15:00Z"),
            ],
        );
    }

    #[test]
    fn a_start_repeated_by_a_fall_back_holds_through_the_repeated_hour() {
        // Paris, 2030-10-27: 03:00 CEST (01:00Z) falls back to 02:00 CET;
        // quiet from the first 02:30 (00:30Z) to 06:00 CET (05:00Z).
        releases(
            "Europe/Paris",
            "02:30",
            "06:00",
            &[
                ("2030-10-27T00:29:59Z", "2030-10-27T00:29:59Z"),
                ("2030-10-27T00:45:00Z", "2030-10-27T05:00:00Z"),
                // 02:15 CET: the clock reads before 02:30 again, but quiet
                // hours began at the first 02:30 and have not ended.
                ("2030-10-27T01:15:00Z", "2030-10-27T05:00:00Z"),
            ],
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
