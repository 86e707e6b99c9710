//! Rate limits on what a client asks for besides sending messages (those have
//! the per-user send limit of the service layer): typing indicators, receipts,
//! pings, and frames of any kind. A WebSocket connection has its own buckets
//! ([`ConnectionLimits`]), dropped with it; HTTP requests are counted per user
//! ([`UserLimits`]). The buckets are `governor`'s GCRA (a token bucket of
//! `burst` refilled at `per_second`), so a limit costs one atomic per check.

use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, RateLimiter};

use crate::auth::Caller;
use crate::config::{LimitsConfig, Rate};
use crate::error::ApiError;

pub use crate::telemetry::count_refusal;

/// What a client asked for, as far as the limits are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Typing,
    Read,
    Delivered,
    Ping,
    /// Any frame (counted for every frame, before its own kind).
    Frame,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::Typing => "typing",
            Action::Read => "read",
            Action::Delivered => "delivered",
            Action::Ping => "ping",
            Action::Frame => "frame",
        }
    }

    fn rate(self, limits: &LimitsConfig) -> Rate {
        match self {
            Action::Typing => limits.typing_rate,
            Action::Read => limits.read_rate,
            Action::Delivered => limits.delivered_rate,
            Action::Ping => limits.ping_rate,
            Action::Frame => limits.frame_rate,
        }
    }
}

/// A request or frame past its limit.
#[derive(Debug)]
pub struct Limited {
    action: Action,
    rate: Rate,
    /// How long until the same request would be allowed.
    pub retry_after: Duration,
}

impl Limited {
    fn new(action: Action, rate: Rate, retry_after: Duration) -> Self {
        metrics::counter!("parleyd_client_rate_limited_total", "action" => action.name())
            .increment(1);
        Limited {
            action,
            rate,
            retry_after,
        }
    }

    /// The `rate_limited` error: 429 with `Retry-After`, or an `error` frame.
    pub fn error(&self) -> ApiError {
        let what = match self.action {
            Action::Frame => "frames".to_owned(),
            other => format!("{} requests", other.name()),
        };
        ApiError::RateLimited {
            message: format!(
                "more than {} {what} per second (bursts of {}); slow down",
                self.rate.per_second, self.rate.burst
            ),
            retry_after: self.retry_after,
        }
    }
}

/// The buckets of one WebSocket connection.
pub struct ConnectionLimits {
    typing: DefaultDirectRateLimiter,
    read: DefaultDirectRateLimiter,
    delivered: DefaultDirectRateLimiter,
    ping: DefaultDirectRateLimiter,
    frame: DefaultDirectRateLimiter,
    config: LimitsConfig,
}

impl ConnectionLimits {
    pub fn new(config: &LimitsConfig) -> ConnectionLimits {
        let direct = |action: Action| RateLimiter::direct(action.rate(config).quota());
        ConnectionLimits {
            typing: direct(Action::Typing),
            read: direct(Action::Read),
            delivered: direct(Action::Delivered),
            ping: direct(Action::Ping),
            frame: direct(Action::Frame),
            config: config.clone(),
        }
    }

    /// Takes a token for `action` (and for [`Action::Frame`], which every
    /// frame also counts against), or says which limit it is past.
    pub fn check(&self, action: Action) -> Result<(), Limited> {
        self.take(Action::Frame)?;
        if action != Action::Frame {
            self.take(action)?;
        }
        Ok(())
    }

    fn take(&self, action: Action) -> Result<(), Limited> {
        let limiter = match action {
            Action::Typing => &self.typing,
            Action::Read => &self.read,
            Action::Delivered => &self.delivered,
            Action::Ping => &self.ping,
            Action::Frame => &self.frame,
        };
        limiter.check().map_err(|n| {
            let wait = n.wait_time_from(limiter.clock().now());
            Limited::new(action, action.rate(&self.config), wait)
        })
    }
}

/// Per-user buckets for the HTTP typing and receipt routes.
pub struct UserLimits {
    typing: DefaultKeyedRateLimiter<String>,
    read: DefaultKeyedRateLimiter<String>,
    delivered: DefaultKeyedRateLimiter<String>,
    config: LimitsConfig,
}

impl UserLimits {
    pub fn new(config: &LimitsConfig) -> UserLimits {
        let keyed = |action: Action| RateLimiter::keyed(action.rate(config).quota());
        UserLimits {
            typing: keyed(Action::Typing),
            read: keyed(Action::Read),
            delivered: keyed(Action::Delivered),
            config: config.clone(),
        }
    }

    /// Takes one of `user_id`'s tokens for `action` (typing, read or
    /// delivered; anything else is not limited per user).
    pub fn check(&self, action: Action, user_id: &str) -> Result<(), Limited> {
        let limiter = match action {
            Action::Typing => &self.typing,
            Action::Read => &self.read,
            Action::Delivered => &self.delivered,
            Action::Ping | Action::Frame => return Ok(()),
        };
        limiter.check_key(&user_id.to_owned()).map_err(|n| {
            let wait = n.wait_time_from(limiter.clock().now());
            Limited::new(action, action.rate(&self.config), wait)
        })
    }

    /// The caller, if authenticated and under their `action` limit: else the
    /// authentication error, or `rate_limited` (429 with `Retry-After`).
    pub fn admit(&self, action: Action, who: Result<Caller, ApiError>) -> Result<Caller, ApiError> {
        let caller = who?;
        self.check(action, &caller.user_id).map_err(|l| l.error())?;
        Ok(caller)
    }

    /// Forgets users whose buckets are full again (they are as if new), so the
    /// maps do not grow with every user ever seen; call it now and then.
    pub fn prune(&self) {
        self.typing.retain_recent();
        self.read.retain_recent();
        self.delivered.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LimitsConfig {
        LimitsConfig {
            typing_rate: Rate::new(1, 3),
            frame_rate: Rate::new(1, 5),
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn a_connection_gets_its_burst_of_each_kind_then_rate_limited() {
        let limits = ConnectionLimits::new(&config());
        for _ in 0..3 {
            limits.check(Action::Typing).unwrap();
        }
        let limited = limits.check(Action::Typing).unwrap_err();
        assert_eq!(limited.error().code(), "rate_limited");
        assert!(limited.error().to_string().contains("typing"));
        assert!(limited.retry_after > Duration::ZERO);
    }

    #[test]
    fn every_frame_counts_against_the_frame_limit() {
        let limits = ConnectionLimits::new(&config());
        // 5 frames in all: pings are well under their own limit, but not under this one.
        for _ in 0..5 {
            limits.check(Action::Ping).unwrap();
        }
        let limited = limits.check(Action::Ping).unwrap_err();
        assert!(
            limited.error().to_string().contains("frames"),
            "{limited:?}"
        );
        assert!(limits.check(Action::Frame).is_err());
    }

    #[test]
    fn a_limited_http_request_is_429_with_retry_after_in_seconds() {
        use warp::Reply;
        let limits = UserLimits::new(&config());
        let ann = || {
            Ok(Caller {
                user_id: "ann".into(),
                role: crate::auth::Role::Customer,
            })
        };
        for _ in 0..3 {
            limits.admit(Action::Typing, ann()).unwrap();
        }
        let reply = limits
            .admit(Action::Typing, ann())
            .unwrap_err()
            .into_response();
        assert_eq!(reply.status(), 429);
        assert_eq!(reply.headers()["retry-after"], "1");
        // Who is not authenticated hears that first.
        let nobody = Err(ApiError::Unauthorized("no".into()));
        let reply = limits.admit(Action::Typing, nobody).unwrap_err();
        assert_eq!(reply.into_response().status(), 401);
    }

    #[test]
    fn users_are_limited_apart() {
        let limits = UserLimits::new(&config());
        for _ in 0..3 {
            limits.check(Action::Typing, "ann").unwrap();
        }
        assert!(limits.check(Action::Typing, "ann").is_err());
        limits.check(Action::Typing, "bob").unwrap();
        limits.check(Action::Read, "ann").unwrap();
    }
}
