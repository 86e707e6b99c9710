//! The service layer: every operation a caller can perform, whichever transport
//! (HTTP, WebSocket, long-poll) it arrives by. It checks who may do what, validates,
//! writes through the store, waits for durability, then publishes to the hub.

mod analytics;
mod bookings;
mod clock;
mod conversations;
mod experiments;
mod notifications;
mod pipeline;
mod platform;
mod replies;
mod report;
mod send;
mod signals;
mod users;

pub use clock::{ClockInput, ClockReply};
pub use conversations::{DeliveredReply, ReadReply};
pub use notifications::{DeadLetter, OutboxReport};
pub use pipeline::{FaultInput, PipelineReport, SettledReport};
pub use send::{AnalyzeInput, AnalyzeReply, SendReply};

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::{Authenticator, Caller};
use crate::automation::Engine;
use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use crate::contact::Detector;
use crate::error::ApiError;
use crate::feed::Frame;
use crate::hub::{Hub, Subscription};
use crate::model::{Conversation, ConversationView};
use crate::moderation::Moderator;
use crate::rules::Rules;
use crate::store::{Store, StoreError};
use crate::supervisor::Supervisor;

pub struct App {
    config: Config,
    store: Store,
    hub: Arc<Hub>,
    auth: Authenticator,
    rules: Arc<Rules>,
    moderator: Moderator,
    clock: Arc<dyn Clock>,
    send_limiter: DefaultKeyedRateLimiter<String>,
    engine: Option<Arc<Engine>>,
    /// Present when the config asks for a manual clock (tests, demos).
    manual_clock: Option<Arc<ManualClock>>,
    /// The background components (an empty one for offline commands).
    supervisor: Arc<Supervisor>,
}

impl App {
    pub fn new(
        config: Config,
        store: Store,
        hub: Arc<Hub>,
        rules: Arc<Rules>,
        clock: Arc<dyn Clock>,
    ) -> App {
        let rate = NonZeroU32::new(config.limits.send_rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.limits.send_burst).unwrap_or(NonZeroU32::MIN);
        App {
            auth: Authenticator::new(&config.auth.jwt_secret, &config.auth.service_key),
            send_limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            hub,
            moderator: Moderator::new(
                Detector::new(&config.contact.detector()),
                config.contact.history_messages,
            ),
            rules,
            config,
            store,
            clock,
            engine: None,
            manual_clock: None,
            supervisor: Arc::default(),
        }
    }

    /// The configuration the daemon runs with (transports read their limits
    /// from it).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Subscribes a stream or long-poll of `user_id` to the user's live
    /// frames, at most `capacity` waiting (see [`Hub::subscribe`]).
    pub fn subscribe(&self, user_id: &str, capacity: usize) -> Subscription {
        self.hub.subscribe(user_id, capacity)
    }

    /// Who is calling, from an `Authorization` header or a `?token=`; 401
    /// without a valid one (see [`Authenticator::authenticate`]).
    pub fn authenticate(
        &self,
        header: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        self.auth.authenticate(header, query_token)
    }

    /// [`App::authenticate`], with the token's expiry (seconds since the
    /// epoch; none for the service key) for connections that outlive it.
    pub fn authenticate_until(
        &self,
        header: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<(Caller, Option<i64>), ApiError> {
        self.auth.authenticate_until(header, query_token)
    }

    /// The user's event-log cursor once everything up to it is durable: what
    /// a stream or long-poll may replay up to.
    pub async fn durable_cursor(&self, user_id: &str) -> Result<u64, StoreError> {
        self.store.durable_cursor(user_id).await
    }

    /// The user's logged events with cursor in `(after, until]`, at most
    /// `limit`, in order.
    pub fn events_between(
        &self,
        user_id: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<Vec<Frame>, StoreError> {
        self.store.events_between(user_id, after, until, limit)
    }

    /// Attaches the supervisor of the background components (for health,
    /// `GET /v1/admin/pipeline` and fault injection).
    pub fn with_supervisor(mut self, supervisor: Arc<Supervisor>) -> App {
        self.supervisor = supervisor;
        self
    }

    /// Attaches the automation engine (woken when the clock moves) and the
    /// manual clock, if the config asks for one.
    pub fn with_automation(
        mut self,
        engine: Arc<Engine>,
        manual_clock: Option<Arc<ManualClock>>,
    ) -> App {
        self.engine = Some(engine);
        self.manual_clock = manual_clock;
        self
    }

    /// The conversation, if `caller` takes part in it; 404 otherwise (whether or
    /// not it exists is not revealed).
    fn conversation_of(&self, caller: &Caller, id: &str) -> Result<Conversation, ApiError> {
        let conversation = self
            .store
            .conversation(id)?
            .filter(|c| c.is_participant(&caller.user_id))
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        Ok(conversation)
    }

    fn view(&self, caller: &Caller, c: &Conversation) -> Result<ConversationView, ApiError> {
        Ok(c.view_for(&caller.user_id, Some(self.store.card(c)?)))
    }
}
