//! Provider reports (README.md, "Provider reports"): who may read one, its
//! period and time zone; `analytics::report` makes it.

use jiff::tz::TimeZone;

use crate::analytics::report::{self, Inputs, Period, Report};
use crate::auth::{Caller, Role};
use crate::error::ApiError;

use super::App;

impl App {
    /// `provider_id`'s report over `from..=to` (`YYYY-MM-DD` in their time
    /// zone, either absent; see [`Period::parse`]), for that provider
    /// (another provider: 404) and operators (an id that is neither a user
    /// nor ever received an inquiry: 404). A bad, reversed or too long
    /// period is 400.
    pub fn provider_report(
        &self,
        caller: Caller,
        provider_id: &str,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Report, ApiError> {
        let caller = caller.require(&[Role::Provider, Role::Operator])?;
        let indexed = self.store.report_provider_zone(provider_id)?;
        let user = self.store.user(provider_id)?;
        let known = indexed.is_some() || user.is_some();
        match caller.role {
            Role::Operator if known => {}
            Role::Provider if caller.user_id == provider_id => {}
            _ => return Err(ApiError::not_found("provider")),
        }
        // Their own zone, else the one their first inquiry was counted in
        // (a listing's): fixed, so a new inquiry on a listing elsewhere does
        // not move the period's boundaries.
        let zone = user
            .and_then(|u| u.timezone)
            .or(indexed)
            .and_then(|name| TimeZone::get(&name).ok())
            .unwrap_or(TimeZone::UTC);
        let today = zone.to_datetime(self.clock.now()).date();
        let period = Period::parse(from, to, today, &zone)
            .map_err(|e| ApiError::BadRequest(format!("period: {e}")))?;
        let rules = self.rules.current();
        let inputs = Inputs {
            benchmarks: &self.config.benchmarks,
            recommendations: &rules.recommendations,
        };
        Ok(report::gather(
            &self.store,
            provider_id,
            &zone,
            period,
            &inputs,
        )?)
    }
}
