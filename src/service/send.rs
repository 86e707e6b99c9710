//! Sending messages (HTTP and stream alike): rate limit, idempotent `client_id`s,
//! contact moderation; the composer's live check; moderation flags.

use std::sync::Arc;

use crate::auth::{Caller, Role};
use crate::contact::{Action, Analysis, ContactKind};
use crate::error::ApiError;
use crate::model::{check_len, page_limit, Conversation, Flag, Message, MessageType, SendInput};
use crate::moderation::{self, Submission};
use crate::store::{send_fingerprint, NewMessage, Stored};

use super::App;

/// The reply to a send: the stored message, and whether this call stored it.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SendReply {
    pub message: Message,
    /// False when the `client_id` had already been used: nothing new was stored.
    pub created: bool,
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
    /// Forgets rate-limit state of users who have been quiet long enough for it
    /// not to matter; called periodically so the map does not grow forever.
    pub fn prune_rate_limits(&self) {
        self.send_limiter.retain_recent();
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
            quick_reply_id: input.quick_reply_id,
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
}
