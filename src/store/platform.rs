//! The platform view's records (`model::platform`), in one analytics tree,
//! keyed by day first so a period is one range read:
//!
//! | tree                 | key                                             | value                    |
//! |----------------------|-------------------------------------------------|--------------------------|
//! | `analytics_platform` | `d` `\0` day                                    | `PlatformDay` JSON       |
//! | `analytics_platform` | `s` `\0` day `\0` sequence `\0` step `\0` experiment `\0` variant | `[StepKey, StepDay]` JSON |
//!
//! Days are `YYYY-MM-DD` in UTC (fixed width: key order is time order).
//! A step record carries its [`StepKey`] in its value, so reading never
//! parses names out of keys. What to write is `analytics::platform`'s.

use super::automation::TxError;
use super::AnalyticsTx;
use super::{decode, encode, Store, StoreError};
use crate::model::platform::{PlatformDay, StepDay, StepKey};

const SEP: u8 = 0;

fn day_key(day: &str) -> Vec<u8> {
    [b"d".as_slice(), &[SEP], day.as_bytes()].concat()
}

fn step_prefix(day: &str) -> Vec<u8> {
    [b"s".as_slice(), &[SEP], day.as_bytes(), &[SEP]].concat()
}

fn step_key(day: &str, key: &StepKey) -> Vec<u8> {
    let mut out = step_prefix(day);
    for part in [
        key.sequence.as_str(),
        key.step.as_str(),
        key.experiment.as_deref().unwrap_or_default(),
        key.variant.as_deref().unwrap_or_default(),
    ] {
        out.extend_from_slice(part.as_bytes());
        out.push(SEP);
    }
    out
}

impl AnalyticsTx<'_, '_> {
    /// The platform's figures for `day`.
    pub fn platform_day(&self, day: &str) -> Result<PlatformDay, TxError> {
        Ok(self
            .get(self.views().platform, &day_key(day))?
            .unwrap_or_default())
    }

    pub fn put_platform_day(&self, day: &str, figures: &PlatformDay) -> Result<(), TxError> {
        self.put(self.views().platform, day_key(day), encode(figures))
    }

    /// The figures of `key`'s messages sent on `day`.
    pub fn step_day(&self, day: &str, key: &StepKey) -> Result<StepDay, TxError> {
        let stored: Option<(StepKey, StepDay)> =
            self.get(self.views().platform, &step_key(day, key))?;
        Ok(stored.map(|(_, figures)| figures).unwrap_or_default())
    }

    pub fn put_step_day(&self, day: &str, key: &StepKey, figures: &StepDay) -> Result<(), TxError> {
        self.put(
            self.views().platform,
            step_key(day, key),
            encode(&(key, figures)),
        )
    }
}

impl Store {
    /// The platform's figures for the days `from..=to` (`YYYY-MM-DD`), in
    /// day order; days without activity are absent.
    pub fn platform_days(&self, from: &str, to: &str) -> Result<Vec<PlatformDay>, StoreError> {
        self.trees
            .analytics
            .platform
            .range(day_key(from)..=day_key(to))
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// The step figures of the messages sent on the days `from..=to`, one
    /// entry per step and day.
    pub fn step_days(&self, from: &str, to: &str) -> Result<Vec<(StepKey, StepDay)>, StoreError> {
        // Every key of `to` starts with its prefix and sorts below the
        // prefix with the separator raised by one.
        let mut end = step_prefix(to);
        if let Some(last) = end.last_mut() {
            *last = SEP + 1;
        }
        self.trees
            .analytics
            .platform
            .range(step_prefix(from)..end)
            .map(|entry| decode(&entry?.1))
            .collect()
    }
}
