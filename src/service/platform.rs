//! The platform view for operators (`GET /v1/admin/analytics`): the period's
//! days read from the store (two range reads), summed by
//! [`crate::analytics::platform::view`].

use crate::analytics::platform::{period, view, PlatformView, Windows, PLATFORM_ZONE};
use crate::auth::{Caller, Role};
use crate::error::ApiError;

use super::App;

impl App {
    /// The platform's figures for the days `from..=to` (`YYYY-MM-DD`, UTC,
    /// `to` included; defaults in [`period`]). 400 for a date that is not
    /// `YYYY-MM-DD`, `from` after `to`, or a period over the cap.
    pub fn platform_analytics(
        &self,
        caller: Caller,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<PlatformView, ApiError> {
        caller.require(&[Role::Operator])?;
        let zone = jiff::tz::TimeZone::get(PLATFORM_ZONE).unwrap_or(jiff::tz::TimeZone::UTC);
        let today = zone.to_datetime(self.clock.now()).date();
        let period =
            period(from, to, today).map_err(|e| ApiError::BadRequest(format!("period: {e}")))?;
        let (first, last) = (period.from.to_string(), period.to.to_string());
        let days = self.store.platform_days(&first, &last)?;
        let steps = self.store.step_days(&first, &last)?;
        let windows = Windows {
            reply_hours: self.config.analytics.reply_window_hours,
            attribution_days: self.config.analytics.attribution_days,
        };
        Ok(view(period, &days, &steps, windows))
    }
}
