//! The periods of days the analytics reads answer for (provider reports,
//! the platform view): one parser, so both routes and `parleyd report`
//! take and refuse the same `from` and `to`.

use jiff::civil::Date;
use jiff::ToSpan;

/// The longest period one request may ask for, in days.
pub const MAX_DAYS: i64 = 366;

/// The period asked for when `from` is absent: this many days ending `to`.
pub const DEFAULT_DAYS: i64 = 30;

/// Why a period was refused (a 400 on the routes, exit 1 for the command).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeriodError {
    #[error("{0}: not a date (YYYY-MM-DD)")]
    NotADate(String),
    #[error("from ({from}) is after to ({to})")]
    Reversed { from: Date, to: Date },
    #[error("the period has {0} days; at most {MAX_DAYS}")]
    TooLong(i64),
}

/// The days `(from, to)`, both included, of `from` and `to` as asked
/// (`YYYY-MM-DD`, either absent): without `to`, `today`; without `from`,
/// [`DEFAULT_DAYS`] ending at `to`. Refused: anything but a `YYYY-MM-DD`
/// date, `from` after `to`, more than [`MAX_DAYS`] days.
pub fn days(
    from: Option<&str>,
    to: Option<&str>,
    today: Date,
) -> Result<(Date, Date), PeriodError> {
    let date = |text: &str| {
        text.parse::<Date>()
            .ok()
            .filter(|_| text.len() == 10)
            .ok_or_else(|| PeriodError::NotADate(text.to_owned()))
    };
    let to = to.map_or(Ok(today), date)?;
    let from = match from {
        Some(from) => date(from)?,
        None => to
            .checked_sub((DEFAULT_DAYS - 1).days())
            .map_err(|_| PeriodError::NotADate(to.to_string()))?,
    };
    if from > to {
        return Err(PeriodError::Reversed { from, to });
    }
    let days = i64::from((to - from).get_days()) + 1;
    if days > MAX_DAYS {
        return Err(PeriodError::TooLong(days));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn periods_default_to_thirty_days_ending_today_and_refuse_bad_dates() {
        let today = day("2030-07-31");
        assert_eq!(days(None, None, today), Ok((day("2030-07-02"), today)));
        assert_eq!(
            days(None, Some("2030-03-10"), today),
            Ok((day("2030-02-09"), day("2030-03-10")))
        );
        assert_eq!(
            days(Some("2030-07-20"), None, today),
            Ok((day("2030-07-20"), today))
        );
        assert_eq!(
            days(Some("2030-01-01"), Some("2031-01-01"), today),
            Ok((day("2030-01-01"), day("2031-01-01"))),
            "366 days"
        );
        for (from, to, error) in [
            (Some("2030-7-1"), None, "not a date"),
            (Some("2030-02-30"), None, "not a date"),
            (None, Some("yesterday"), "not a date"),
            (Some("2030-07-01T00:00:00Z"), None, "not a date"),
            (Some("2030-07-10"), Some("2030-07-01"), "after"),
            // A future start without an end: the end is today.
            (Some("2030-08-02"), None, "after"),
            (Some("2029-01-01"), Some("2030-07-01"), "at most 366"),
        ] {
            let e = days(from, to, today).unwrap_err();
            assert!(e.to_string().contains(error), "{from:?} {to:?}: {e}");
        }
    }
}
