//! The daemon's clock: reading it, and moving it when it is manual.

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::model::format_time;

use super::App;

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClockInput {
    /// Move the clock forward by this much, e.g. `24h`.
    pub advance: Option<String>,
    /// Or to this time (RFC 3339); never backwards.
    pub to: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ClockReply {
    pub now: String,
}

impl App {
    /// Moves the manual clock (`clock: manual` only); due steps fire at once.
    pub fn move_clock(&self, caller: Caller, input: ClockInput) -> Result<ClockReply, ApiError> {
        caller.require(&[Role::Operator])?;
        let clock = self.manual_clock.as_ref().ok_or_else(|| {
            ApiError::Conflict("the clock is the system clock; set clock: manual to move it".into())
        })?;
        let now = match (input.advance, input.to) {
            (Some(by), None) => {
                let by = crate::clock::parse_duration(&by).map_err(ApiError::Unprocessable)?;
                clock.advance(by).map_err(ApiError::Unprocessable)?
            }
            (None, Some(to)) => clock.set(crate::model::parse_time("to", &to)?),
            _ => {
                return Err(ApiError::Unprocessable(
                    "give either advance (e.g. 24h) or to (an RFC 3339 time)".into(),
                ))
            }
        };
        if let Some(engine) = &self.engine {
            engine.wake_scheduler();
        }
        Ok(ClockReply {
            now: format_time(now),
        })
    }

    pub fn now(&self) -> String {
        format_time(self.clock.now())
    }
}
