//! Time is injected: everything asks the app's clock, never the system directly,
//! so tests and simulations can control it.

pub trait Clock: Send + Sync {
    fn now(&self) -> jiff::Timestamp;
}

/// Parses a duration such as `30m`, `24h`, `-24h` or `7d` (jiff's friendly
/// format); a day is 24 hours.
pub fn parse_duration(text: &str) -> Result<jiff::SignedDuration, String> {
    let invalid = |e: jiff::Error| format!("{text:?} is not a duration like 30m, 24h or 7d: {e}");
    let span: jiff::Span = text.trim().parse().map_err(invalid)?;
    span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(invalid)
}

/// Parses a token lifetime such as `30m`, `1h`, `7d` (see [`parse_duration`])
/// into whole seconds; zero and negative lifetimes are errors.
pub fn parse_ttl(text: &str) -> Result<i64, String> {
    let seconds = parse_duration(text)?.as_secs();
    if seconds <= 0 {
        return Err(format!("{text:?} must be a positive duration"));
    }
    Ok(seconds)
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A clock that moves only when told to: rule tests, `parleyd test-rules` and
/// end-to-end tests make "72 hours later" happen at once.
pub struct ManualClock {
    now: std::sync::Mutex<jiff::Timestamp>,
}

impl ManualClock {
    pub fn starting_at(now: jiff::Timestamp) -> ManualClock {
        ManualClock {
            now: std::sync::Mutex::new(now),
        }
    }

    /// Moves the clock to `to`; never backwards (time-ordered state such as
    /// message timestamps must not go back). Returns the time now.
    pub fn set(&self, to: jiff::Timestamp) -> jiff::Timestamp {
        let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
        *now = (*now).max(to);
        *now
    }

    pub fn advance(&self, by: jiff::SignedDuration) -> Result<jiff::Timestamp, String> {
        if by.is_negative() {
            return Err("the clock cannot go backwards".into());
        }
        let to = self.now().checked_add(by).map_err(|e| e.to_string())?;
        Ok(self.set(to))
    }
}

impl Clock for ManualClock {
    fn now(&self) -> jiff::Timestamp {
        *self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h").unwrap(), 3600);
        assert_eq!(parse_ttl("7d").unwrap(), 7 * 86400);
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("-5m").is_err());
    }
}
