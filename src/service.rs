//! The service layer: every operation a caller can perform, whichever transport
//! (HTTP, WebSocket, long-poll) it arrives by. It checks who may do what, validates,
//! writes through the store, waits for durability, then publishes to the hub.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::{Authenticator, Caller, Role};
use crate::automation::Engine;
use crate::clock::{Clock, ManualClock};
use crate::config::Config;
use crate::contact::{Action, Analysis, ContactKind, Detector};
use crate::domain::Subject;
use crate::error::ApiError;
use crate::feed::Frame;
use crate::hub::Hub;
use crate::model::notification::{Lane, Notification};
use crate::model::pipeline::DeadItem;
use crate::model::{
    check_len, format_time, page_limit, validate_id, validate_period, Booking, BookingInput,
    BookingPatch, Conversation, ConversationView, Flag, Listing, ListingInput, Message,
    MessageType, Reply, SendInput, Signal, SignalInput, User, UserInput,
};
use crate::moderation::{self, Moderator, Submission};
use crate::pipeline::Backlog;
use crate::rules::{Rules, RulesStatus};
use crate::store::{send_fingerprint, NewMessage, Store, Stored};
use crate::supervisor::{ComponentReport, State, Supervisor};

/// The reply to a send: the stored message, and whether this call stored it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SendReply {
    pub message: Message,
    /// False when the `client_id` had already been used: nothing new was stored.
    pub created: bool,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ReadReply {
    pub conversation_id: String,
    pub last_read_seq: u64,
    pub unread_count: u64,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeliveredReply {
    pub conversation_id: String,
    pub delivered_seq: u64,
}

/// `GET /v1/admin/outbox`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct OutboxReport {
    /// Entries waiting in each lane (due now or later).
    pub queued: std::collections::BTreeMap<String, usize>,
    pub dead: Vec<DeadLetter>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub notification_id: String,
    pub channel: Lane,
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: Option<String>,
    pub attempts: u32,
    pub error: Option<String>,
    pub failed_at: Option<String>,
}

pub struct App {
    pub config: Config,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub auth: Authenticator,
    pub rules: Arc<Rules>,
    moderator: Moderator,
    clock: Arc<dyn Clock>,
    send_limiter: DefaultKeyedRateLimiter<String>,
    engine: Option<Arc<Engine>>,
    /// Present when the config asks for a manual clock (tests, demos).
    manual_clock: Option<Arc<ManualClock>>,
    /// The background components (an empty one for offline commands).
    supervisor: Arc<Supervisor>,
}

/// `GET /v1/admin/pipeline`: each background component's state, and what
/// waits in the pipeline.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PipelineReport {
    /// By name: `engine`, `scheduler`, `outbox.<channel>`, `outbox.retention`,
    /// `rules.hangup`, `rules.watch`, `upkeep`, `writer`.
    pub components: Vec<ComponentReport>,
    #[serde(flatten)]
    pub backlog: Backlog,
}

/// `PUT /v1/admin/pipeline/components/{name}/fault` (dev only).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultInput {
    /// `true` ends the component's current run as a failure and fails every
    /// restart; `false` lets the next restart run (at once).
    pub fail: bool,
}

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

/// What `prepare_send` concluded.
enum Prepared {
    /// Nothing to write: the answer is known.
    Answered(SendReply),
    Write(NewMessage),
}

fn send_reply(stored: Stored, created: bool) -> Result<SendReply, ApiError> {
    match stored {
        Stored::Message(message) => Ok(SendReply { message, created }),
        Stored::Blocked(flag) => {
            let types: Vec<ContactKind> = flag.detections.iter().map(|d| d.kind).collect();
            Err(ApiError::Blocked(
                moderation::notice(Action::Block, &types).unwrap_or_default(),
            ))
        }
    }
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeInput {
    pub content: String,
    /// Judge under this conversation's phase and stage (pre-booking without one).
    pub conversation_id: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AnalyzeReply {
    /// What sending it would do: `allow`, `warn`, `mask` or `block`.
    #[schema(value_type = String)]
    pub action: Action,
    pub flag: bool,
    /// The text the composer can show the writer.
    pub notice: Option<String>,
    #[schema(value_type = Object)]
    pub analysis: Analysis,
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

    /// Attaches the supervisor of the background components (for health,
    /// `GET /v1/admin/pipeline` and fault injection).
    pub fn with_supervisor(mut self, supervisor: Arc<Supervisor>) -> App {
        self.supervisor = supervisor;
        self
    }

    /// The components that are down or stuck (empty when all is well).
    pub fn unhealthy(&self) -> Vec<(String, State)> {
        self.supervisor.unhealthy()
    }

    /// What waits in the pipeline now (scans what is due: see
    /// [`Backlog::observe`]).
    pub fn backlog(&self) -> Result<Backlog, crate::store::StoreError> {
        Backlog::observe(&self.store, self.clock.now())
    }

    /// The pipeline for operators; also refreshes its gauges.
    pub fn pipeline(&self, caller: Caller) -> Result<PipelineReport, ApiError> {
        caller.require(&[Role::Operator])?;
        let backlog = self.backlog()?;
        backlog.record();
        Ok(PipelineReport {
            components: self.supervisor.report(),
            backlog,
        })
    }

    /// Makes a component fail on purpose, to see supervision at work. Only
    /// on the manual clock (`clock: manual`, which needs `--dev`), and not the
    /// writer thread: 404 otherwise, as for an unknown component.
    pub fn inject_fault(
        &self,
        caller: Caller,
        name: &str,
        input: FaultInput,
    ) -> Result<ComponentReport, ApiError> {
        caller.require(&[Role::Operator])?;
        let component = self
            .manual_clock
            .as_ref()
            .and_then(|_| self.supervisor.spawned(name))
            .ok_or_else(|| ApiError::not_found("component"))?;
        component.inject_fault(input.fail);
        Ok(component.report(self.config.pipeline.stuck_after))
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

    /// The first answer given under an idempotency record key, unless it is
    /// older than `storage.idempotency_retention`.
    pub fn replay(&self, key: &[u8]) -> Result<Option<Reply>, ApiError> {
        let kept_since = self.replies_kept_since();
        Ok(self.store.reply(key)?.filter(|r| r.at_ms >= kept_since))
    }

    /// Remembers the first answer under an idempotency record key, now.
    pub fn remember(
        &self,
        key: &[u8],
        fingerprint: &str,
        status: u16,
        body: &serde_json::Value,
    ) -> Result<(), ApiError> {
        let reply = Reply {
            fingerprint: fingerprint.to_owned(),
            status,
            body: body.clone(),
            at_ms: self.clock.now().as_millisecond(),
        };
        Ok(self.store.keep_reply(key, &reply)?)
    }

    /// Forgets idempotent answers past their retention; called periodically.
    pub fn forget_old_replies(&self) -> Result<usize, ApiError> {
        Ok(self.store.forget_replies(self.replies_kept_since())?)
    }

    fn replies_kept_since(&self) -> i64 {
        let now = self.clock.now();
        now.checked_sub(self.config.storage.idempotency_retention)
            .unwrap_or(now)
            .as_millisecond()
    }

    /// Forgets rate-limit state of users who have been quiet long enough for it
    /// not to matter; called periodically so the map does not grow forever.
    pub fn prune_rate_limits(&self) {
        self.send_limiter.retain_recent();
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

    pub fn put_user(&self, caller: Caller, id: &str, input: UserInput) -> Result<User, ApiError> {
        caller.require(&[Role::Service])?;
        let user = input.into_user(id, self.clock.now())?;
        self.store.put_user(&user)?;
        Ok(user)
    }

    pub fn put_listing(
        &self,
        caller: Caller,
        id: &str,
        input: ListingInput,
    ) -> Result<Listing, ApiError> {
        caller.require(&[Role::Service])?;
        let listing = input.into_listing(id, self.clock.now())?;
        self.store.put_listing(&listing)?;
        Ok(listing)
    }

    /// Opens the customer's conversation about a listing (or returns it).
    pub async fn open_conversation(
        &self,
        caller: Caller,
        listing_id: &str,
    ) -> Result<(ConversationView, bool), ApiError> {
        let caller = caller.require(&[Role::Customer])?;
        validate_id("listing_id", listing_id)?;
        let listing = self
            .store
            .listing(listing_id)?
            .ok_or_else(|| ApiError::not_found("listing"))?;
        if listing.provider_id == caller.user_id {
            return Err(ApiError::Unprocessable(
                "a provider cannot open a conversation about their own listing".into(),
            ));
        }
        let (conversation, created) = self
            .store
            .open_conversation(&listing, &caller.user_id, &self.now())
            .await?;
        Ok((self.view(&caller, &conversation)?, created))
    }

    pub fn list_conversations(&self, caller: Caller) -> Result<Vec<ConversationView>, ApiError> {
        let caller = caller.require_person()?;
        self.store
            .conversations_of(&caller.user_id)?
            .iter()
            .map(|c| self.view(&caller, c))
            .collect()
    }

    pub fn get_conversation(&self, caller: Caller, id: &str) -> Result<ConversationView, ApiError> {
        let caller = caller.require_person()?;
        let conversation = self.conversation_of(&caller, id)?;
        self.view(&caller, &conversation)
    }

    pub fn messages(
        &self,
        caller: Caller,
        id: &str,
        after: u64,
        limit: Option<usize>,
    ) -> Result<Vec<Message>, ApiError> {
        let caller = caller.require_person()?;
        let limit = page_limit(limit, 100)?;
        self.conversation_of(&caller, id)?;
        Ok(self.store.messages(id, after, limit)?)
    }

    /// Stores and delivers a person's message, as contact moderation allows. A
    /// retry with a used `client_id` gets the first answer again, even past the
    /// rate limit.
    pub async fn send(
        self: &Arc<Self>,
        caller: Caller,
        conversation_id: &str,
        input: SendInput,
    ) -> Result<SendReply, ApiError> {
        let caller = caller.require_person()?;
        input.validate(self.config.limits.max_message_chars)?;
        // How long until the sender may send again, when over the limit now.
        let limited = self
            .send_limiter
            .check_key(&caller.user_id)
            .err()
            .map(|not_until| {
                not_until.wait_time_from(governor::clock::Clock::now(self.send_limiter.clock()))
            });
        let in_memory = if limited.is_some() {
            None
        } else {
            let n = self.moderator.history_len();
            self.store.send_context(conversation_id, &caller.user_id, n)
        };
        let prepared = match in_memory {
            // An active conversation: nothing to read, so no detour.
            Some((conversation, history)) => {
                if !conversation.is_participant(&caller.user_id) {
                    return Err(ApiError::not_found("conversation"));
                }
                let new =
                    self.moderate_send(caller, conversation_id, input, &conversation, history);
                Prepared::Write(new)
            }
            // Anything read from sled is read on the blocking pool: a sled read
            // waits while the writer commits, and must not stall an async worker
            // (and every connection it serves) meanwhile.
            None => {
                let app = Arc::clone(self);
                let conversation_id = conversation_id.to_owned();
                tokio::task::spawn_blocking(move || {
                    app.prepare_send(caller, conversation_id, input, limited)
                })
                .await
                .map_err(|e| ApiError::Internal(format!("send task failed: {e}")))??
            }
        };
        let new = match prepared {
            Prepared::Answered(reply) => return Ok(reply),
            Prepared::Write(new) => new,
        };
        let (stored, created) = self.store.append_message(new).await?;
        if created {
            metrics::counter!("parleyd_messages_stored_total").increment(1);
        }
        send_reply(stored, created)
    }

    /// A send whose context is not in memory, or whose sender is over the rate
    /// limit: reads from sled, so it runs on the blocking pool.
    fn prepare_send(
        &self,
        caller: Caller,
        conversation_id: String,
        input: SendInput,
        limited: Option<std::time::Duration>,
    ) -> Result<Prepared, ApiError> {
        if let Some(retry_after) = limited {
            // A retry of a stored message is answered even past the limit; only
            // then is it worth a read (the writer spots duplicates otherwise).
            let fingerprint = send_fingerprint(&conversation_id, &input.content);
            let replayed = self.store.replay_send(
                &caller.user_id,
                &input.client_id,
                &conversation_id,
                &fingerprint,
            )?;
            if let Some(stored) = replayed {
                return send_reply(stored, false).map(Prepared::Answered);
            }
            metrics::counter!("parleyd_rate_limited_total").increment(1);
            return Err(ApiError::RateLimited {
                message: format!(
                    "more than {} messages per second; slow down",
                    self.config.limits.send_rate_per_second
                ),
                retry_after,
            });
        }
        let conversation = self.conversation_of(&caller, &conversation_id)?;
        let history = self.store.recent_from(
            &conversation_id,
            &caller.user_id,
            self.moderator.history_len(),
        )?;
        let new = self.moderate_send(caller, &conversation_id, input, &conversation, history);
        Ok(Prepared::Write(new))
    }

    /// The message to store, as contact moderation decides given the
    /// conversation and the sender's previous messages.
    fn moderate_send(
        &self,
        caller: Caller,
        conversation_id: &str,
        input: SendInput,
        conversation: &Conversation,
        history: Vec<String>,
    ) -> NewMessage {
        let now = self.now();
        let rules = self.rules.current();
        let submission = Submission {
            conversation,
            sender_id: &caller.user_id,
            client_id: &input.client_id,
            content: &input.content,
            at: &now,
        };
        // The listing is read (from sled) only when a contact detail is found.
        let outcome = self
            .moderator
            .moderate(&rules.contact, &submission, &history, || {
                self.store
                    .listing(&conversation.listing_id)
                    .ok()
                    .flatten()
                    .and_then(|l| l.address)
            });
        NewMessage {
            fingerprint: Some(send_fingerprint(conversation_id, &input.content)),
            conversation_id: conversation_id.to_owned(),
            sender_id: caller.user_id,
            client_id: input.client_id,
            content: outcome.content,
            kind: MessageType::Text,
            created_at: now,
            moderation: outcome.moderated,
            automation: None,
            actions: Vec::new(),
            attachments: Vec::new(),
        }
    }

    /// The live composer check: what the policy would do with `content` in this
    /// conversation (pre-booking rules without one). Nothing is stored.
    pub fn analyze(&self, caller: Caller, input: AnalyzeInput) -> Result<AnalyzeReply, ApiError> {
        let caller = caller.require_person()?;
        check_len(
            "content",
            &input.content,
            self.config.limits.max_message_chars,
        )?;
        let conversation = match &input.conversation_id {
            Some(id) => Some(self.conversation_of(&caller, id)?),
            None => None,
        };
        let history = match &conversation {
            Some(c) => {
                self.store
                    .recent_from(&c.id, &caller.user_id, self.moderator.history_len())?
            }
            None => Vec::new(),
        };
        let history: Vec<&str> = history.iter().map(String::as_str).collect();
        let analysis = self
            .moderator
            .detector()
            .analyze_with_history(&input.content, &history);
        let rules = self.rules.current();
        let decision = match &conversation {
            Some(c) => moderation::decide(&rules.contact, c, &analysis),
            None => rules.contact.decide("pre_booking", None, &analysis),
        };
        let types: Vec<ContactKind> = analysis.detections.iter().map(|d| d.kind).collect();
        Ok(AnalyzeReply {
            notice: moderation::notice(decision.action, &types),
            action: decision.action,
            flag: decision.flag,
            analysis,
        })
    }

    /// Moderation records for operators, oldest first, after the id `after`.
    pub fn flags(
        &self,
        caller: Caller,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Flag>, ApiError> {
        caller.require(&[Role::Operator])?;
        Ok(self.store.flags(after, page_limit(limit, 100)?)?)
    }

    /// The outbox for operators: what waits in each lane, and the dead letters.
    pub fn outbox(&self, caller: Caller) -> Result<OutboxReport, ApiError> {
        caller.require(&[Role::Operator])?;
        let queued = Lane::ALL
            .iter()
            .map(|lane| (lane.name().to_owned(), self.store.queued_in(*lane)))
            .collect();
        let dead = self
            .store
            .dead_letters(1000)?
            .into_iter()
            .filter_map(|(n, lane)| {
                let d = n.delivery(lane)?;
                Some(DeadLetter {
                    notification_id: n.id.clone(),
                    channel: lane,
                    kind: n.kind.clone(),
                    user_id: n.user_id.clone(),
                    attempts: d.attempts,
                    error: d.note.clone(),
                    failed_at: d.updated_at.clone(),
                })
            })
            .collect();
        Ok(OutboxReport { queued, dead })
    }

    /// One notification with the state of each of its channels.
    pub fn notification(&self, caller: Caller, id: &str) -> Result<Notification, ApiError> {
        caller.require(&[Role::Operator])?;
        self.store
            .notification(id)?
            .ok_or_else(|| ApiError::not_found("notification"))
    }

    /// A user's latest notifications with each channel's state.
    pub fn notifications_of(
        &self,
        caller: Caller,
        user_id: &str,
        limit: Option<usize>,
    ) -> Result<Vec<Notification>, ApiError> {
        caller.require(&[Role::Operator])?;
        Ok(self
            .store
            .notifications_of(user_id, page_limit(limit, 50)?)?)
    }

    /// The automation pipeline's dead-letter list, oldest first.
    pub fn pipeline_dead(
        &self,
        caller: Caller,
        limit: Option<usize>,
    ) -> Result<Vec<DeadItem>, ApiError> {
        caller.require(&[Role::Operator])?;
        Ok(self.store.dead_items(page_limit(limit, 50)?)?)
    }

    /// Takes a dead event or step off the list and queues it again with fresh
    /// attempts, to be evaluated with the rules in force now; the entry as it
    /// was. 404 if `id` is not on the list.
    pub async fn redrive_pipeline(&self, caller: Caller, id: &str) -> Result<DeadItem, ApiError> {
        caller.require(&[Role::Operator])?;
        let item = self
            .store
            .redrive_dead(id)
            .await?
            .ok_or_else(|| ApiError::not_found("dead letter"))?;
        crate::automation::count_dead(&self.store);
        if let Some(engine) = &self.engine {
            engine.wake_scheduler();
        }
        Ok(item)
    }

    /// Puts a dead delivery back in its queue with fresh attempts.
    pub async fn redrive(
        &self,
        caller: Caller,
        id: &str,
        channel: &str,
    ) -> Result<Notification, ApiError> {
        caller.require(&[Role::Operator])?;
        let lane = Lane::ALL
            .into_iter()
            .find(|l| l.name() == channel)
            .ok_or_else(|| {
                ApiError::Unprocessable(format!(
                    "{channel:?} is not a channel: push, email, sms, webhook or in_app"
                ))
            })?;
        let now = self.clock.now().as_millisecond();
        if !crate::notifications::outbox::redrive(&self.store, id, lane, now).await? {
            return Err(ApiError::not_found("dead letter"));
        }
        if let Some(engine) = &self.engine {
            engine.wake_scheduler();
        }
        self.store
            .notification(id)?
            .ok_or_else(|| ApiError::not_found("notification"))
    }

    pub fn rules_status(&self, caller: Caller) -> Result<RulesStatus, ApiError> {
        caller.require(&[Role::Operator])?;
        Ok(self.rules.status())
    }

    pub async fn read(
        &self,
        caller: Caller,
        conversation_id: &str,
        seq: u64,
    ) -> Result<ReadReply, ApiError> {
        let caller = caller.require_person()?;
        let (last_read_seq, unread_count) = self
            .store
            .mark_read(conversation_id, &caller.user_id, seq, &self.now())
            .await?;
        Ok(ReadReply {
            conversation_id: conversation_id.to_owned(),
            last_read_seq,
            unread_count,
        })
    }

    /// The caller's device received the conversation up to `seq`.
    pub async fn delivered(
        &self,
        caller: Caller,
        conversation_id: &str,
        seq: u64,
    ) -> Result<DeliveredReply, ApiError> {
        let caller = caller.require_person()?;
        let delivered_seq = self
            .store
            .mark_delivered(conversation_id, &caller.user_id, seq, &self.now())
            .await?;
        Ok(DeliveredReply {
            conversation_id: conversation_id.to_owned(),
            delivered_seq,
        })
    }

    /// Tells the other participants' live connections that `caller` is typing
    /// (coalesced per connection: see [`crate::hub::TypingSlots`]).
    pub fn typing(&self, caller: Caller, conversation_id: &str) -> Result<(), ApiError> {
        let caller = caller.require_person()?;
        let conversation = self.conversation_of(&caller, conversation_id)?;
        let frame = Arc::new(Frame::typing(conversation_id, &caller.user_id));
        for p in &conversation.participants {
            if p.user_id != caller.user_id {
                self.hub
                    .publish_typing(&p.user_id, conversation_id, &caller.user_id, &frame);
            }
        }
        Ok(())
    }

    pub async fn create_booking(
        &self,
        caller: Caller,
        input: BookingInput,
    ) -> Result<Booking, ApiError> {
        caller.require(&[Role::Service])?;
        let id = match input.id.clone() {
            Some(id) => {
                validate_id("id", &id)?;
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        validate_period(&input.start, &input.end)?;
        let conversation = match (input.conversation_id, input.listing_id, input.customer_id) {
            (Some(cid), _, _) => {
                validate_id("conversation_id", &cid)?;
                self.store
                    .conversation(&cid)?
                    .ok_or_else(|| ApiError::not_found("conversation"))?
            }
            (None, Some(listing_id), Some(customer_id)) => {
                validate_id("listing_id", &listing_id)?;
                validate_id("customer_id", &customer_id)?;
                let listing = self
                    .store
                    .listing(&listing_id)?
                    .ok_or_else(|| ApiError::not_found("listing"))?;
                let (conversation, _) = self
                    .store
                    .open_conversation(&listing, &customer_id, &self.now())
                    .await?;
                conversation
            }
            _ => {
                return Err(ApiError::Unprocessable(
                    "give conversation_id, or listing_id and customer_id".into(),
                ))
            }
        };
        let now = self.now();
        let booking = Booking {
            id,
            conversation_id: conversation.id.clone(),
            listing_id: conversation.listing_id.clone(),
            customer_id: conversation.customer_id.clone(),
            provider_id: conversation.provider_id.clone(),
            start: input.start,
            end: input.end,
            stage: input.stage,
            created_at: now.clone(),
            updated_at: now,
        };
        // The writer decides whether the id is new, so that concurrent
        // creations of one booking are one: the others get it back.
        let card = self.store.card(&conversation)?;
        let (booking, _) = self.store.create_booking(&booking, &card).await?;
        Ok(booking)
    }

    pub async fn update_booking(
        &self,
        caller: Caller,
        id: &str,
        patch: BookingPatch,
    ) -> Result<Booking, ApiError> {
        caller.require(&[Role::Service])?;
        validate_id("booking id", id)?;
        let stored = self
            .store
            .booking(id)?
            .ok_or_else(|| ApiError::not_found("booking"))?;
        let mut booking = stored.clone();
        if let Some(start) = patch.start {
            booking.start = start;
        }
        if let Some(end) = patch.end {
            booking.end = end;
        }
        if let Some(stage) = patch.stage {
            booking.stage = stage;
        }
        validate_period(&booking.start, &booking.end)?;
        if booking == stored {
            // Nothing changes (a retry of a patch that was applied): nothing
            // is written, and no booking_updated fires twice.
            return Ok(stored);
        }
        booking.updated_at = self.now();
        let conversation = self
            .store
            .conversation(&booking.conversation_id)?
            .ok_or_else(|| ApiError::not_found("conversation"))?;
        self.save_booking(&booking, &conversation).await?;
        Ok(booking)
    }

    async fn save_booking(
        &self,
        booking: &Booking,
        conversation: &Conversation,
    ) -> Result<(), ApiError> {
        let card = self.store.card(conversation)?;
        self.store.put_booking(booking, &card).await?;
        Ok(())
    }

    pub async fn signal(&self, caller: Caller, input: SignalInput) -> Result<Signal, ApiError> {
        caller.require(&[Role::Service])?;
        input.validate()?;
        let signal = Signal {
            id: input.id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
            kind: input.kind,
            user_id: input.user_id,
            listing_id: input.listing_id,
            conversation_id: input.conversation_id,
            data: if input.data.is_null() {
                serde_json::json!({})
            } else {
                input.data
            },
            received_at: self.now(),
        };
        let subject = self.signal_subject(&signal)?;
        Ok(self.store.put_signal(signal, subject).await?)
    }

    /// What a signal is about, for the engine: the ids it names, and whether its
    /// user is the customer or the provider (the listing's owner).
    fn signal_subject(&self, signal: &Signal) -> Result<Subject, ApiError> {
        let mut subject = Subject {
            conversation_id: signal.conversation_id.clone(),
            listing_id: signal.listing_id.clone(),
            user_id: signal.user_id.clone(),
            ..Subject::default()
        };
        if let Some(conversation) = match &signal.conversation_id {
            Some(id) => self.store.conversation(id)?,
            None => None,
        } {
            subject = Subject {
                user_id: signal.user_id.clone(),
                ..conversation.subject()
            };
        } else if let Some(listing) = match &signal.listing_id {
            Some(id) => self.store.listing(id)?,
            None => None,
        } {
            subject.provider_id = Some(listing.provider_id.clone());
            if signal.user_id.as_ref() != Some(&listing.provider_id) {
                subject.customer_id = signal.user_id.clone();
            }
        }
        Ok(subject)
    }
}
