//! The events a person's devices receive. Logged events carry the `cursor` of the
//! user's event log and are stored as the exact JSON frame that is sent, so replay
//! costs no re-serialisation. Typing indicators are ephemeral: never logged, no
//! cursor.

use std::sync::Arc;

use serde::Serialize;

use crate::contact::{Action, ContactKind};
use crate::model::{ConversationView, Message};

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserEvent {
    /// A message was stored in one of the user's conversations (their own included,
    /// so every device of the sender sees it too).
    Message { message: Box<Message> },
    /// `reader_id` has read the conversation up to `seq`; `unread_count` is the
    /// reader's count after it.
    Receipt {
        conversation_id: String,
        reader_id: String,
        seq: u64,
        read_at: String,
        unread_count: u64,
    },
    /// `recipient_id`'s device received the conversation up to `seq`.
    #[serde(rename = "receipt")]
    DeliveryReceipt {
        conversation_id: String,
        recipient_id: String,
        seq: u64,
        delivered_at: String,
        /// Always `delivered` (read receipts carry `read_at`).
        status: &'static str,
    },
    /// A conversation was opened or changed (phase, stage, booking).
    Conversation { conversation: Box<ConversationView> },
    /// To the sender only: contact moderation warned about, masked or blocked
    /// their message (`message_seq` is absent when it was blocked).
    Moderation {
        conversation_id: String,
        client_id: String,
        message_seq: Option<u64>,
        action: Action,
        types: Vec<ContactKind>,
        notice: String,
    },
    /// An in-app notification (routed by `rules/routing.yaml`).
    Notification {
        notification: Box<crate::model::notification::NotificationView>,
    },
}

#[derive(Serialize)]
struct Logged<'a> {
    cursor: u64,
    #[serde(flatten)]
    event: &'a UserEvent,
}

/// A frame ready to write to a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The event-log position; `None` for ephemeral frames.
    pub cursor: Option<u64>,
    pub json: Arc<str>,
    /// For a live message: its (conversation id, sender id). The sender's
    /// typing indicator that a device has not written yet is stale once the
    /// message reaches it (`hub::TypingSlots`).
    pub ends_typing: Option<(String, String)>,
}

impl Frame {
    pub fn logged(cursor: u64, event: &UserEvent) -> Frame {
        let json = serde_json::to_string(&Logged { cursor, event }).unwrap_or_default();
        let ends_typing = match event {
            UserEvent::Message { message } => {
                Some((message.conversation_id.clone(), message.sender_id.clone()))
            }
            _ => None,
        };
        Frame {
            cursor: Some(cursor),
            json: json.into(),
            ends_typing,
        }
    }

    pub fn typing(conversation_id: &str, user_id: &str) -> Frame {
        let json = serde_json::json!({
            "type": "typing",
            "conversation_id": conversation_id,
            "user_id": user_id,
        });
        Frame {
            cursor: None,
            json: json.to_string().into(),
            ends_typing: None,
        }
    }
}
