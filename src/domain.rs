//! Domain events: what happened in the marketplace (a message, a booking, a
//! signal), as the automation engine sees it. The store writes each one in the
//! same transaction as the change that caused it, so the engine never misses an
//! event and never sees one whose change was rolled back.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an event (or a sequence instance) is about. Every field is optional: a
/// signal may name only a user and a listing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listing_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_id: Option<String>,
    /// Who acted: a message's sender, a signal's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl Subject {
    /// Every person the subject involves.
    pub fn users(&self) -> impl Iterator<Item = &str> {
        [&self.customer_id, &self.provider_id, &self.user_id]
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether an event about `self` concerns something about `other`: they
    /// agree on every id both name and share at least one, and the event's
    /// actor (if any) is one of `other`'s people. So a reply in a conversation
    /// stops that conversation's sequences, `unsubscribed` naming only a user
    /// stops all of theirs, and another customer's booking of the same listing
    /// stops nothing of this customer's.
    pub fn concerns(&self, other: &Subject) -> bool {
        let mut shared = false;
        for (a, b) in [
            (&self.conversation_id, &other.conversation_id),
            (&self.listing_id, &other.listing_id),
            (&self.booking_id, &other.booking_id),
            (&self.customer_id, &other.customer_id),
            (&self.provider_id, &other.provider_id),
        ] {
            if let (Some(a), Some(b)) = (a, b) {
                if a != b {
                    return false;
                }
                shared = true;
            }
        }
        if let Some(actor) = &self.user_id {
            let mut theirs = other.users().peekable();
            if theirs.peek().is_some() {
                if !theirs.any(|u| u == actor) {
                    return false;
                }
                shared = true;
            }
        }
        shared
    }

    /// `self`, with what it lacks taken from `other`.
    pub fn or(self, other: &Subject) -> Subject {
        Subject {
            conversation_id: self
                .conversation_id
                .or_else(|| other.conversation_id.clone()),
            listing_id: self.listing_id.or_else(|| other.listing_id.clone()),
            booking_id: self.booking_id.or_else(|| other.booking_id.clone()),
            customer_id: self.customer_id.or_else(|| other.customer_id.clone()),
            provider_id: self.provider_id.or_else(|| other.provider_id.clone()),
            user_id: self.user_id.or_else(|| other.user_id.clone()),
        }
    }

    /// The index keys under which instances about this subject are found:
    /// one per id it names.
    pub fn index_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (kind, id) in [
            ("c", &self.conversation_id),
            ("l", &self.listing_id),
            ("b", &self.booking_id),
        ] {
            if let Some(id) = id {
                keys.push(format!("{kind}\0{id}"));
            }
        }
        for user in self.users() {
            let key = format!("u\0{user}");
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        keys
    }
}

/// A name or alias of an event the daemon emits itself (signals are the
/// marketplace's, named by their `type`). The store names the events it emits
/// with these, and `parleyd check` accepts exactly these (and the signals the
/// rule files declare) in `trigger`, `stop_on`, `replan_on` and routing's `on`
/// and `webhooks`: one list for both, so they cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emitted {
    /// A person's message was stored.
    MessageSent,
    /// Alias of `message_sent`: the customer's first message in a conversation
    /// before booking.
    InquiryReceived,
    /// Alias of `message_sent`: any message from the provider.
    ProviderReplied,
    /// Alias of `message_sent`: any other message from the customer.
    CustomerReplied,
    /// Automation sent a message.
    AutomatedMessageSent,
    /// Contact moderation blocked a person's message: nothing was delivered
    /// (the sender is the event's user).
    MessageBlocked,
    /// A person read messages addressed to them (`data.count` of them, up to
    /// `data.seq`).
    MessageRead,
    /// A conversation was created.
    ConversationOpened,
    /// A booking id was stored for the first time.
    BookingCreated,
    /// A booking changed.
    BookingUpdated,
    /// Alias of `booking_updated`: its `start` or `end` changed.
    BookingRescheduled,
    /// `booking_{stage}`, alias of `booking_created` and of a `booking_updated`
    /// that changed the stage.
    BookingStage(Stage),
}

impl Emitted {
    /// Every name and alias the daemon emits.
    pub fn all() -> impl Iterator<Item = Emitted> {
        [
            Emitted::MessageSent,
            Emitted::InquiryReceived,
            Emitted::ProviderReplied,
            Emitted::CustomerReplied,
            Emitted::AutomatedMessageSent,
            Emitted::MessageBlocked,
            Emitted::MessageRead,
            Emitted::ConversationOpened,
            Emitted::BookingCreated,
            Emitted::BookingUpdated,
            Emitted::BookingRescheduled,
        ]
        .into_iter()
        .chain(Stage::ALL.map(Emitted::BookingStage))
    }
}

impl std::fmt::Display for Emitted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Emitted::MessageSent => "message_sent",
            Emitted::InquiryReceived => "inquiry_received",
            Emitted::ProviderReplied => "provider_replied",
            Emitted::CustomerReplied => "customer_replied",
            Emitted::AutomatedMessageSent => "automated_message_sent",
            Emitted::MessageBlocked => "message_blocked",
            Emitted::MessageRead => "message_read",
            Emitted::ConversationOpened => "conversation_opened",
            Emitted::BookingCreated => "booking_created",
            Emitted::BookingUpdated => "booking_updated",
            Emitted::BookingRescheduled => "booking_rescheduled",
            Emitted::BookingStage(stage) => return write!(f, "booking_{}", stage.name()),
        };
        f.write_str(name)
    }
}

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    /// Position in the engine's queue (assigned by the store).
    #[serde(default)]
    pub seq: u64,
    /// An [`Emitted`] name (`message_sent`, `conversation_opened`, …) or a
    /// signal's type.
    pub name: String,
    /// More specific [`Emitted`] names a rule can listen to:
    /// `inquiry_received`, `booking_rescheduled`, `booking_{stage}`, ….
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// When it happened (RFC 3339, the daemon's clock).
    pub at: String,
    /// When an operator re-drove it from the dead-letter list (RFC 3339):
    /// sequences plan from then (`automation::plan`), so a re-drive does not
    /// fire in a burst the steps of the days the event was dead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redriven_at: Option<String>,
    #[serde(flatten)]
    pub subject: Subject,
    /// Details: a message's seq and content, a booking's period, a signal's data.
    #[serde(default)]
    pub data: serde_json::Value,
}

impl DomainEvent {
    /// Whether the event goes by `name` (its own or an alias).
    pub fn is(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name)
    }
}

/// A running sequence: one rule applied to one subject. Its steps' times are
/// fixed when it starts (or is re-planned); what they send is decided when they
/// fire, from the rules then in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// `{rule}/{anchor}`: one instance of a rule per booking, conversation, or
    /// listing and customer at a time.
    pub id: String,
    pub rule: String,
    /// Unique per run; with the step name, the idempotency key of what it sends.
    pub run: String,
    pub subject: Subject,
    /// The event that started it (rules and templates can read it).
    pub trigger: DomainEvent,
    pub steps: Vec<PlannedStep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Waiting for its timer.
    Pending,
    Sent,
    /// Fired, but its condition was false, a placeholder had no value, or its
    /// sequence, step or template is gone from the rules. A condition or var
    /// that raises an error is no skip: the step is tried again, then
    /// dead-lettered (`store::Held`).
    Skipped,
    /// Its time had passed when it was planned, or re-planning removed it.
    Dropped,
    /// Failed `automation.max_attempts` times and moved to the dead-letter
    /// list: it has no timer and re-planning leaves it; a re-drive makes it
    /// pending again.
    Dead,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub name: String,
    /// Due time, milliseconds since the Unix epoch.
    pub due_ms: i64,
    pub state: StepState,
    /// Why it was skipped or dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl Instance {
    pub fn id_for(rule: &str, subject: &Subject) -> String {
        let anchor = match (
            &subject.booking_id,
            &subject.conversation_id,
            &subject.listing_id,
            &subject.customer_id,
        ) {
            (Some(b), _, _, _) => format!("b:{b}"),
            (None, Some(c), _, _) => format!("c:{c}"),
            (None, None, Some(l), Some(u)) => format!("l:{l}:{u}"),
            (None, None, Some(l), None) => format!("l:{l}"),
            (None, None, None, _) => format!("u:{}", subject.users().next().unwrap_or("")),
        };
        format!("{rule}/{anchor}")
    }

    pub fn pending(&self) -> impl Iterator<Item = &PlannedStep> {
        self.steps.iter().filter(|s| s.state == StepState::Pending)
    }
}

/// A due (or future) step, as the scheduler reads it from its timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub due_ms: i64,
    pub instance: String,
    pub step: String,
}

/// The stages a booking goes through; `booking_{stage}` events name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Confirmed,
    Preparation,
    Active,
    Completed,
    Review,
    Cancelled,
}

impl Stage {
    /// Every stage, in the order a booking goes through them.
    pub const ALL: [Stage; 6] = [
        Stage::Confirmed,
        Stage::Preparation,
        Stage::Active,
        Stage::Completed,
        Stage::Review,
        Stage::Cancelled,
    ];

    /// The stage's name, as in JSON and the contact policy (`confirmed`).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Confirmed => "confirmed",
            Stage::Preparation => "preparation",
            Stage::Active => "active",
            Stage::Completed => "completed",
            Stage::Review => "review",
            Stage::Cancelled => "cancelled",
        }
    }
}

/// A running instance `id` about `subject` with one step pending at `due_ms`
/// (rule `r`, triggered by an event `e`), for tests.
#[cfg(test)]
pub(crate) fn test_instance(id: &str, subject: Subject, due_ms: i64) -> Instance {
    Instance {
        id: id.into(),
        rule: "r".into(),
        run: format!("run-{id}"),
        subject: subject.clone(),
        trigger: DomainEvent {
            seq: 1,
            name: "e".into(),
            aliases: Vec::new(),
            at: "2030-01-01T00:00:00Z".into(),
            redriven_at: None,
            subject,
            data: serde_json::Value::Null,
        },
        steps: vec![PlannedStep {
            name: "s".into(),
            due_ms,
            state: StepState::Pending,
            note: None,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject(conversation: Option<&str>, users: &[&str]) -> Subject {
        Subject {
            conversation_id: conversation.map(str::to_owned),
            customer_id: users.first().map(|u| u.to_string()),
            provider_id: users.get(1).map(|u| u.to_string()),
            ..Subject::default()
        }
    }

    #[test]
    fn concerns_needs_agreement_and_something_shared() {
        let instance = subject(Some("c1"), &["alice", "bob"]);
        assert!(subject(Some("c1"), &["alice"]).concerns(&instance));
        assert!(!subject(Some("c2"), &["alice", "bob"]).concerns(&instance));
        // Another customer of the same provider.
        assert!(!subject(None, &["carol", "bob"]).concerns(&instance));
        let only_user = Subject {
            user_id: Some("alice".into()),
            ..Subject::default()
        };
        assert!(only_user.concerns(&instance));
        let stranger = Subject {
            user_id: Some("carol".into()),
            ..Subject::default()
        };
        assert!(!stranger.concerns(&instance));
        assert!(!Subject::default().concerns(&instance));
    }
}
