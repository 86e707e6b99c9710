//! What the outbox keeps: a notification for one person (or one webhook post)
//! and the state of its delivery on each channel. Records only: the store
//! keeps them, `notify` decides what goes in them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Attachment, Channel};

/// How urgent a notification is (a routing rule's `priority`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
    Critical,
}

/// When a fallback is not needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unless {
    /// The message the notification is about has been read.
    Read,
    /// One of the notification's own channels delivered it.
    Delivered,
}

/// An outbox queue: one per channel, so a channel that is down never holds
/// back the others; `digest` holds each user's next digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    InApp,
    Push,
    Email,
    Sms,
    Webhook,
    Digest,
}

impl Lane {
    pub const ALL: [Lane; 6] = [
        Lane::InApp,
        Lane::Push,
        Lane::Email,
        Lane::Sms,
        Lane::Webhook,
        Lane::Digest,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Lane::InApp => "in_app",
            Lane::Push => "push",
            Lane::Email => "email",
            Lane::Sms => "sms",
            Lane::Webhook => "webhook",
            Lane::Digest => "digest",
        }
    }

    /// Its one-byte code in store keys.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Lane> {
        Lane::ALL.get(usize::from(code)).copied()
    }
}

impl From<Channel> for Lane {
    fn from(channel: Channel) -> Lane {
        match channel {
            Channel::InApp => Lane::InApp,
            Channel::Push => Lane::Push,
            Channel::Email => Lane::Email,
            Channel::Sms => Lane::Sms,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Queued (or between attempts).
    Pending,
    /// Waiting in the recipient's digest.
    Batched,
    Delivered,
    /// Not needed any more: read in time, or a fallback whose condition passed.
    Suppressed,
    /// Gave up after the configured attempts (or a permanent refusal); listed
    /// at `GET /v1/admin/outbox/dead` and re-drivable from there.
    Dead,
}

/// One channel of one notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelDelivery {
    pub channel: Lane,
    pub state: DeliveryState,
    /// When it is (or was) due, in ms since the epoch.
    pub due_ms: i64,
    pub attempts: u32,
    /// The last error, or why it was suppressed.
    pub note: Option<String>,
    pub updated_at: Option<String>,
    /// Held while the recipient is in quiet hours.
    pub quiet_hours: bool,
    /// Dropped if the recipient has read the message by the time it is due.
    pub suppress_if_read: bool,
    /// A fallback: sent only if this has not happened by the time it is due.
    pub unless: Option<Unless>,
}

impl ChannelDelivery {
    pub fn new(channel: Lane, due_ms: i64) -> ChannelDelivery {
        ChannelDelivery {
            channel,
            state: DeliveryState::Pending,
            due_ms,
            attempts: 0,
            note: None,
            updated_at: None,
            quiet_hours: false,
            suppress_if_read: false,
            unless: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Notification {
    /// Also the idempotency key sent to gateways (with the channel).
    pub id: String,
    /// The routing rule's name, `digest`, or `webhook`.
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: Priority,
    /// The recipient; none for a webhook post.
    pub user_id: Option<String>,
    pub created_at: String,
    /// The domain event that raised it.
    pub event: String,
    pub conversation_id: Option<String>,
    /// The message it is about (read tracking for grace and fallbacks).
    pub message_seq: Option<u64>,
    pub title: String,
    pub text: String,
    pub html: Option<String>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    /// A webhook's event, or a digest's items.
    #[serde(default)]
    pub payload: serde_json::Value,
    pub deliveries: Vec<ChannelDelivery>,
}

impl Notification {
    pub fn delivery(&self, lane: Lane) -> Option<&ChannelDelivery> {
        self.deliveries.iter().find(|d| d.channel == lane)
    }

    /// A fallback's `delivered` condition: one of the other channels got it.
    pub fn delivered_elsewhere(&self, lane: Lane) -> bool {
        self.deliveries
            .iter()
            .any(|d| d.channel != lane && d.unless.is_none() && d.state == DeliveryState::Delivered)
    }
}

/// What the recipient's devices get in a `notification` event.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NotificationView {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub priority: Priority,
    pub title: String,
    pub body: String,
    pub conversation_id: Option<String>,
    pub message_seq: Option<u64>,
    pub created_at: String,
}

impl Notification {
    pub fn view(&self) -> NotificationView {
        NotificationView {
            id: self.id.clone(),
            kind: self.kind.clone(),
            priority: self.priority,
            title: self.title.clone(),
            body: self.text.clone(),
            conversation_id: self.conversation_id.clone(),
            message_seq: self.message_seq,
            created_at: self.created_at.clone(),
        }
    }
}

/// How an attempt (or a decision not to attempt) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Delivered,
    /// Try again at this time.
    Retry {
        at_ms: i64,
        error: String,
    },
    Dead(String),
    Suppressed(String),
    /// Not now: held (quiet hours) until this time; not an attempt.
    Hold {
        until_ms: i64,
    },
}
