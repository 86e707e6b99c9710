//! The records parleyd stores and the shapes callers see. Inputs are separate
//! `*Input` types with `deny_unknown_fields`, validated before anything is stored.

pub mod analytics;
pub mod experiment;
pub mod notification;
pub mod pipeline;
pub mod platform;
pub mod report;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::contact::{Action, ContactKind, Detection};
pub use crate::domain::Stage;

/// Input that breaks a rule of the record it would become (HTTP 422
/// `unprocessable`); the message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

/// Ids are chosen by the marketplace (users, listings) or by parleyd (uuid v7).
/// They must not contain the store's key separator, so the alphabet is restricted.
pub fn validate_id(field: &str, id: &str) -> Result<(), Invalid> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Invalid(format!(
            "{field} must be 1-128 characters of A-Z a-z 0-9 - _ . : @"
        )))
    }
}

/// RFC 3339 UTC with millisecond precision, the one timestamp format of the API.
pub fn format_time(t: jiff::Timestamp) -> String {
    format!("{:.3}", t)
}

pub fn parse_time(field: &str, text: &str) -> Result<jiff::Timestamp, Invalid> {
    text.parse().map_err(|_| {
        Invalid(format!(
            "{field} must be an RFC 3339 timestamp such as 2026-12-01T15:00:00Z"
        ))
    })
}

/// The most items one page of a list route returns (its `limit` query parameter).
pub const MAX_PAGE: usize = 500;

/// A list route's `limit`: `default` when absent; 422 outside `1..=MAX_PAGE`
/// (refused rather than clamped, so a client never mistakes a short page for
/// the end of the list).
pub fn page_limit(limit: Option<usize>, default: usize) -> Result<usize, Invalid> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(Invalid(format!("limit must be 1-{MAX_PAGE}, not {n}"))),
    }
}

pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), Invalid> {
    if value.chars().count() > max {
        return Err(Invalid(format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    InApp,
    Push,
    Email,
    Sms,
}

/// A `timezone` field: an IANA name the bundled tz database knows.
pub fn check_timezone(tz: &str) -> Result<(), Invalid> {
    jiff::tz::TimeZone::get(tz).map(drop).map_err(|_| {
        Invalid(format!(
            "timezone {tz:?} is not an IANA time zone name such as Europe/Paris"
        ))
    })
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Local time `HH:MM` in the user's time zone when quiet hours begin.
    pub start: String,
    /// Local time `HH:MM` when they end (may be on the next day).
    pub end: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    /// IANA time zone name, e.g. `Europe/Paris`.
    pub timezone: Option<String>,
    pub quiet_hours: Option<QuietHours>,
    /// Channel opt-ins (`true`) and opt-outs (`false`); absent means the default.
    pub channels: BTreeMap<Channel, bool>,
    /// Unsubscribed from promotional notifications.
    pub unsubscribed_promotional: bool,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserInput {
    pub name: Option<String>,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub timezone: Option<String>,
    pub quiet_hours: Option<QuietHours>,
    #[serde(default)]
    pub channels: BTreeMap<Channel, bool>,
    #[serde(default)]
    pub unsubscribed_promotional: bool,
}

impl UserInput {
    pub fn into_user(self, id: &str, now: jiff::Timestamp) -> Result<User, Invalid> {
        validate_id("user id", id)?;
        for (field, value) in [
            ("name", &self.name),
            ("email", &self.email),
            ("phone", &self.phone),
        ] {
            if let Some(v) = value {
                check_len(field, v, 256)?;
            }
        }
        if let Some(email) = &self.email {
            if !email.contains('@') || email.contains(char::is_whitespace) {
                return Err(Invalid(format!("email {email:?} is not an address")));
            }
        }
        if let Some(tz) = &self.timezone {
            check_timezone(tz)?;
        }
        if let Some(q) = &self.quiet_hours {
            for (field, value) in [("quiet_hours.start", &q.start), ("quiet_hours.end", &q.end)] {
                value
                    .parse::<jiff::civil::Time>()
                    .map_err(|_| Invalid(format!("{field} must be a local time HH:MM")))?;
            }
        }
        Ok(User {
            id: id.to_owned(),
            name: self.name,
            email: self.email,
            phone: self.phone,
            timezone: self.timezone,
            quiet_hours: self.quiet_hours,
            channels: self.channels,
            unsubscribed_promotional: self.unsubscribed_promotional,
            updated_at: format_time(now),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Listing {
    pub id: String,
    pub title: String,
    pub price: Option<f64>,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: Option<String>,
    pub provider_id: String,
    pub primary_image: Option<String>,
    pub badges: Vec<String>,
    /// The provider's typical response time as shown to customers, e.g. `within an hour`.
    pub response_time: Option<String>,
    /// Open dates (`YYYY-MM-DD`).
    pub availability: Vec<String>,
    /// What the price includes.
    pub included: Vec<String>,
    /// The listing's own address (never treated as a contact detail).
    pub address: Option<String>,
    /// IANA time zone name of where the listing takes place, e.g.
    /// `Europe/Paris`: automated messages show times in it to people who have
    /// no `timezone` of their own.
    #[serde(default)]
    pub timezone: Option<String>,
    pub updated_at: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ListingInput {
    pub title: String,
    pub price: Option<f64>,
    pub currency: Option<String>,
    pub provider_id: String,
    pub primary_image: Option<String>,
    #[serde(default)]
    pub badges: Vec<String>,
    pub response_time: Option<String>,
    #[serde(default)]
    pub availability: Vec<String>,
    #[serde(default)]
    pub included: Vec<String>,
    pub address: Option<String>,
    pub timezone: Option<String>,
}

impl ListingInput {
    pub fn into_listing(self, id: &str, now: jiff::Timestamp) -> Result<Listing, Invalid> {
        validate_id("listing id", id)?;
        validate_id("provider_id", &self.provider_id)?;
        if self.title.trim().is_empty() {
            return Err(Invalid("title must not be empty".into()));
        }
        check_len("title", &self.title, 300)?;
        if let Some(price) = self.price {
            if !price.is_finite() || price < 0.0 {
                return Err(Invalid("price must be a non-negative number".into()));
            }
        }
        if let Some(c) = &self.currency {
            if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
                return Err(Invalid(
                    "currency must be a three-letter ISO 4217 code such as EUR".into(),
                ));
            }
        }
        if let Some(tz) = &self.timezone {
            check_timezone(tz)?;
        }
        for date in &self.availability {
            date.parse::<jiff::civil::Date>()
                .map_err(|_| Invalid(format!("availability date {date:?} is not YYYY-MM-DD")))?;
        }
        for (field, list) in [
            ("badges", &self.badges),
            ("included", &self.included),
            ("availability", &self.availability),
        ] {
            if list.len() > 1000 {
                return Err(Invalid(format!("{field} has more than 1000 entries")));
            }
            for item in list {
                check_len(field, item, 300)?;
            }
        }
        Ok(Listing {
            id: id.to_owned(),
            title: self.title,
            price: self.price,
            currency: self.currency,
            provider_id: self.provider_id,
            primary_image: self.primary_image,
            badges: self.badges,
            response_time: self.response_time,
            availability: self.availability,
            included: self.included,
            address: self.address,
            timezone: self.timezone,
            updated_at: format_time(now),
        })
    }
}

impl Listing {
    /// Listing `l1`, "Kayak tour", of provider `prov`, with nothing else
    /// set, for tests.
    #[cfg(test)]
    pub(crate) fn test_listing() -> Listing {
        Listing {
            id: "l1".into(),
            title: "Kayak tour".into(),
            price: None,
            currency: None,
            provider_id: "prov".into(),
            primary_image: None,
            badges: vec![],
            response_time: None,
            availability: vec![],
            included: vec![],
            address: None,
            timezone: None,
            updated_at: "2030-01-01T00:00:00Z".into(),
        }
    }

    /// The card shown at the top of a conversation.
    pub fn card(&self) -> ContextCard {
        ContextCard {
            listing_id: self.id.clone(),
            title: self.title.clone(),
            price: self.price,
            currency: self.currency.clone(),
            primary_image: self.primary_image.clone(),
            badges: self.badges.clone(),
            response_time: self.response_time.clone(),
            open_dates: self.availability.len(),
            included: self.included.clone(),
        }
    }
}

/// The listing context card of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContextCard {
    pub listing_id: String,
    pub title: String,
    pub price: Option<f64>,
    pub currency: Option<String>,
    pub primary_image: Option<String>,
    pub badges: Vec<String>,
    pub response_time: Option<String>,
    /// How many open dates the listing has.
    pub open_dates: usize,
    pub included: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    PreBooking,
    PostBooking,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ParticipantState {
    pub user_id: String,
    /// Highest `seq` this participant has marked read.
    pub last_read_seq: u64,
    /// Messages for this participant (see [`Message::is_for`]) after
    /// `last_read_seq`.
    pub unread_count: u64,
    /// Highest `seq` this participant's device confirmed it received (reading
    /// implies receiving).
    #[serde(default)]
    pub delivered_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct MessageSummary {
    pub seq: u64,
    pub sender_id: String,
    pub content: String,
    pub created_at: String,
}

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub id: String,
    pub listing_id: String,
    pub customer_id: String,
    pub provider_id: String,
    pub phase: Phase,
    pub stage: Option<Stage>,
    pub booking_id: Option<String>,
    pub last_seq: u64,
    pub last_message: Option<MessageSummary>,
    /// The customer first, then the provider.
    pub participants: Vec<ParticipantState>,
    /// The listing card as it was when the conversation was opened; the live card
    /// replaces it while the listing exists.
    pub listing_snapshot: ContextCard,
    pub created_at: String,
    pub updated_at: String,
    /// When the customer's first message arrived (the inquiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inquiry_at: Option<String>,
}

impl Conversation {
    /// What automation keys this conversation's sequences by.
    pub fn subject(&self) -> crate::domain::Subject {
        crate::domain::Subject {
            conversation_id: Some(self.id.clone()),
            listing_id: Some(self.listing_id.clone()),
            booking_id: self.booking_id.clone(),
            customer_id: Some(self.customer_id.clone()),
            provider_id: Some(self.provider_id.clone()),
            user_id: None,
        }
    }

    pub fn is_participant(&self, user_id: &str) -> bool {
        self.participants.iter().any(|p| p.user_id == user_id)
    }

    pub fn participant(&self, user_id: &str) -> Option<&ParticipantState> {
        self.participants.iter().find(|p| p.user_id == user_id)
    }

    pub fn participant_mut(&mut self, user_id: &str) -> Option<&mut ParticipantState> {
        self.participants.iter_mut().find(|p| p.user_id == user_id)
    }

    /// The other participants.
    fn peers_of<'a>(&'a self, user_id: &'a str) -> impl Iterator<Item = &'a ParticipantState> {
        self.participants
            .iter()
            .filter(move |p| p.user_id != user_id)
    }

    /// What `user_id` sees of this conversation.
    pub fn view_for(&self, user_id: &str, card: Option<ContextCard>) -> ConversationView {
        let me = self.participant(user_id);
        ConversationView {
            id: self.id.clone(),
            listing_id: self.listing_id.clone(),
            customer_id: self.customer_id.clone(),
            provider_id: self.provider_id.clone(),
            phase: self.phase,
            stage: self.stage,
            booking_id: self.booking_id.clone(),
            last_seq: self.last_seq,
            last_message: self.last_message.clone(),
            unread_count: me.map_or(0, |p| p.unread_count),
            last_read_seq: me.map_or(0, |p| p.last_read_seq),
            peer_delivered_seq: self
                .peers_of(user_id)
                .map(|p| p.delivered_seq)
                .min()
                .unwrap_or(0),
            peer_read_seq: self
                .peers_of(user_id)
                .map(|p| p.last_read_seq)
                .min()
                .unwrap_or(0),
            listing: card.unwrap_or_else(|| self.listing_snapshot.clone()),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// A conversation as one participant sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ConversationView {
    pub id: String,
    pub listing_id: String,
    pub customer_id: String,
    pub provider_id: String,
    pub phase: Phase,
    pub stage: Option<Stage>,
    pub booking_id: Option<String>,
    pub last_seq: u64,
    pub last_message: Option<MessageSummary>,
    pub unread_count: u64,
    pub last_read_seq: u64,
    /// The other side has received my messages up to this `seq`…
    pub peer_delivered_seq: u64,
    /// …and read them up to this one.
    pub peer_read_seq: u64,
    /// The listing context card.
    pub listing: ContextCard,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    /// Written by a person.
    Text,
    /// Sent by a nudge sequence.
    Nudge,
    /// Sent by another automation (milestones, confirmations).
    Automated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored and on its way to the recipient.
    Sent,
    /// Marked read by the recipient.
    Read,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Message {
    pub id: String,
    pub seq: u64,
    pub conversation_id: String,
    pub sender_id: String,
    pub client_id: String,
    pub content: String,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub status: MessageStatus,
    pub created_at: String,
    pub read_at: Option<String>,
    /// How contact moderation treated the message; absent when nothing was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub moderation: Option<Moderation>,
    /// The rule and step that sent an automated message (boxed: most
    /// messages are people's, and the box keeps them small).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automation: Option<Box<Automation>>,
    /// Suggested next steps shown with the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<SuggestedAction>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
    /// The quick reply the sender used to write it (`SendInput`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quick_reply_id: Option<String>,
}

impl Message {
    /// Whether the message is addressed to `user_id`: an automated message
    /// speaks to its one recipient, a person's message to every other
    /// participant. A message's audience is its sender and these recipients;
    /// only a recipient's unread count, read marks (`status`, `read_at`),
    /// receipts and notification read grace ever move because of it.
    pub fn is_for(&self, user_id: &str) -> bool {
        match &self.automation {
            Some(automation) => automation.recipient_id == user_id,
            None => user_id != self.sender_id,
        }
    }
}

/// The sender id of messages the platform itself sends.
pub const SYSTEM_SENDER: &str = "system";

/// Which automation sent a message, and to whom it speaks (only the recipient's
/// unread count grows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Automation {
    pub rule: String,
    pub step: String,
    pub template: String,
    pub recipient_id: String,
    /// The experiment whose variant chose this step (`rules/*.yaml`,
    /// `experiments:`), when one runs on it for the recipient's unit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The variant of `experiment` the unit got (the first is control).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    BookNow,
    ViewAvailability,
    QuickReply,
}

/// A button offered with an automated message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SuggestedAction {
    #[serde(rename = "type")]
    pub kind: ActionKind,
    pub label: String,
    /// What the client sends back or opens (e.g. a quick reply's text).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// Higher first.
    #[serde(default)]
    pub priority: i32,
}

/// A file carried inline with a message (e.g. a calendar invite).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: String,
}

/// What contact moderation did to a delivered message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moderation {
    /// `allow`, `warn` or `mask` (`mask`: the content shows `[contact hidden]` where
    /// contact details were).
    pub action: Action,
    /// The kinds of contact detail found.
    pub types: Vec<ContactKind>,
    /// Queued for an operator's review.
    pub flagged: bool,
}

impl Moderation {
    /// Whether the message is refused delivery (kept only as a [`Flag`]).
    pub fn blocks(&self) -> bool {
        self.action == Action::Block
    }
}

/// A message that contact moderation masked, blocked or flagged: the original
/// text, for operators only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Flag {
    pub id: String,
    pub conversation_id: String,
    pub sender_id: String,
    pub client_id: String,
    /// The delivered message; absent when it was blocked.
    pub message_seq: Option<u64>,
    #[schema(value_type = String)]
    pub action: Action,
    /// The policy asked for an operator's review.
    pub review: bool,
    /// What the sender wrote.
    pub original: String,
    #[schema(value_type = Vec<Object>)]
    pub detections: Vec<Detection>,
    pub reasons: Vec<String>,
    pub created_at: String,
}

/// The kinds of contact detail among `detections`, in [`ContactKind`]
/// order, once each (a [`Moderation`]'s `types`).
pub fn kinds_found(detections: &[Detection]) -> Vec<ContactKind> {
    let mut types: Vec<ContactKind> = detections.iter().map(|d| d.kind).collect();
    types.sort_by_key(|t| *t as u8);
    types.dedup();
    types
}

impl Flag {
    /// The moderation note of the message it records, as a delivered
    /// message carries it.
    pub fn moderation(&self) -> Moderation {
        Moderation {
            action: self.action,
            types: kinds_found(&self.detections),
            flagged: self.review,
        }
    }
}

impl Message {
    /// The `data` of the domain event that says it was stored.
    pub fn event_data(&self) -> serde_json::Value {
        serde_json::json!({
            "seq": self.seq,
            "content": self.content,
            "type": self.kind,
            "automation": self.automation,
            "quick_reply_id": self.quick_reply_id,
            "moderation": self.moderation,
        })
    }

    pub fn summary(&self) -> MessageSummary {
        MessageSummary {
            seq: self.seq,
            sender_id: self.sender_id.clone(),
            content: self.content.clone(),
            created_at: self.created_at.clone(),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendInput {
    /// Made by the client (e.g. a UUID), unique per sender: a retry with the same
    /// `client_id` returns the stored message instead of storing it again.
    /// 1-128 printable ASCII characters (checked by `validate`).
    #[schema(pattern = "^[!-~]{1,128}$", example = "7d1c2a9e-0001")]
    pub client_id: String,
    /// Not blank; at most `limits.max_message_chars` characters (4000 as shipped).
    #[schema(pattern = "\\S", example = "Is the 1 December tour still open?")]
    pub content: String,
    /// The quick reply the sender picked to write it, if any (an id from
    /// the suggestions; 1-128 of `A-Z a-z 0-9 - _ . : @`): stored on the
    /// message and counted as quick-reply usage in its metrics.
    #[serde(default)]
    #[schema(example = "qr-availability-yes")]
    pub quick_reply_id: Option<String>,
}

impl SendInput {
    pub fn validate(&self, max_chars: usize) -> Result<(), Invalid> {
        let id_ok = !self.client_id.is_empty()
            && self.client_id.len() <= 128
            && self.client_id.bytes().all(|b| b.is_ascii_graphic());
        if !id_ok {
            return Err(Invalid(
                "client_id must be 1-128 printable ASCII characters".into(),
            ));
        }
        if self.content.trim().is_empty() {
            return Err(Invalid("content must not be empty".into()));
        }
        if let Some(id) = &self.quick_reply_id {
            validate_id("quick_reply_id", id)?;
        }
        check_len("content", &self.content, max_chars)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Booking {
    pub id: String,
    pub conversation_id: String,
    pub listing_id: String,
    pub customer_id: String,
    pub provider_id: String,
    pub start: String,
    pub end: String,
    pub stage: Stage,
    pub created_at: String,
    pub updated_at: String,
    /// When the booking first reached the stage `completed` (kept so that
    /// `parleyd analytics rebuild` knows when the service was completed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
}

impl Booking {
    /// Whether `other` is this booking as its creation asked for it: the same
    /// conversation, period and stage (times of writing aside).
    pub fn same_details(&self, other: &Booking) -> bool {
        self.conversation_id == other.conversation_id
            && self.start == other.start
            && self.end == other.end
            && self.stage == other.stage
    }
}

impl Booking {
    pub fn subject(&self) -> crate::domain::Subject {
        crate::domain::Subject {
            conversation_id: Some(self.conversation_id.clone()),
            listing_id: Some(self.listing_id.clone()),
            booking_id: Some(self.id.clone()),
            customer_id: Some(self.customer_id.clone()),
            provider_id: Some(self.provider_id.clone()),
            user_id: None,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingInput {
    /// Chosen by the marketplace; generated when absent.
    pub id: Option<String>,
    pub conversation_id: Option<String>,
    pub listing_id: Option<String>,
    pub customer_id: Option<String>,
    pub start: String,
    pub end: String,
    #[serde(default = "confirmed")]
    pub stage: Stage,
}

fn confirmed() -> Stage {
    Stage::Confirmed
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BookingPatch {
    pub start: Option<String>,
    pub end: Option<String>,
    pub stage: Option<Stage>,
}

/// Checks that a booking's `start` and `end` are timestamps in order.
pub fn validate_period(start: &str, end: &str) -> Result<(), Invalid> {
    if parse_time("start", start)? >= parse_time("end", end)? {
        return Err(Invalid("start must be before end".into()));
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Signal {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: Option<String>,
    pub listing_id: Option<String>,
    pub conversation_id: Option<String>,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub received_at: String,
}

impl Signal {
    /// What the signal is about: its conversation's people when it names an
    /// open conversation (`conversation`), else its listing's provider and
    /// its user as the customer (unless the user is that provider).
    pub fn subject(
        &self,
        conversation: Option<&Conversation>,
        listing: Option<&Listing>,
    ) -> crate::domain::Subject {
        if let Some(conversation) = conversation {
            return crate::domain::Subject {
                user_id: self.user_id.clone(),
                ..conversation.subject()
            };
        }
        let mut subject = crate::domain::Subject {
            conversation_id: self.conversation_id.clone(),
            listing_id: self.listing_id.clone(),
            user_id: self.user_id.clone(),
            ..crate::domain::Subject::default()
        };
        if let Some(listing) = listing {
            subject.provider_id = Some(listing.provider_id.clone());
            if self.user_id.as_ref() != Some(&listing.provider_id) {
                subject.customer_id = self.user_id.clone();
            }
        }
        subject
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalInput {
    /// `listing_viewed`, `checkout_started`, `checkout_abandoned`, `booking_completed`,
    /// `explicit_decline`, `provider_unavailable`, `unsubscribed`, or any other
    /// lower_snake_case name.
    #[serde(rename = "type")]
    pub kind: String,
    pub user_id: Option<String>,
    pub listing_id: Option<String>,
    pub conversation_id: Option<String>,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The signal's id when its request carried an `Idempotency-Key` (derived
    /// from the key, so a retry names the same signal); generated otherwise.
    #[serde(skip)]
    pub id: Option<String>,
}

impl SignalInput {
    pub fn validate(&self) -> Result<(), Invalid> {
        let name_ok = !self.kind.is_empty()
            && self.kind.len() <= 64
            && self
                .kind
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !name_ok {
            return Err(Invalid(
                "type must be a lower_snake_case name of at most 64 characters".into(),
            ));
        }
        for (field, id) in [
            ("user_id", &self.user_id),
            ("listing_id", &self.listing_id),
            ("conversation_id", &self.conversation_id),
        ] {
            if let Some(id) = id {
                validate_id(field, id)?;
            }
        }
        if !(self.data.is_null() || self.data.is_object()) {
            return Err(Invalid("data must be an object".into()));
        }
        Ok(())
    }
}

/// The first answer to a request made with an `Idempotency-Key`, replayed to
/// a retry of the same request (`api::idempotency`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Hex SHA-256 of the request: method, path and its JSON body.
    pub fingerprint: String,
    /// HTTP status of the first answer.
    pub status: u16,
    pub body: serde_json::Value,
    /// When it was given, Unix milliseconds.
    pub at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_exclude_separators_and_spaces() {
        assert!(validate_id("id", "user-42_a.b:c@d").is_ok());
        for bad in ["", "a b", "a\0b", "é", &"x".repeat(129)] {
            assert!(validate_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn send_input_rules() {
        let input = |content: &str, quick_reply_id: Option<&str>| SendInput {
            client_id: "c1".into(),
            content: content.into(),
            quick_reply_id: quick_reply_id.map(str::to_owned),
        };
        assert!(input("hello", None).validate(10).is_ok());
        assert!(input(" \n ", None).validate(10).is_err());
        assert!(input(&"é".repeat(11), None).validate(10).is_err());
        assert!(input("hello", Some("qr-yes")).validate(10).is_ok());
        assert!(input("hello", Some("no spaces")).validate(10).is_err());
        assert!(input("hello", Some("")).validate(10).is_err());
    }

    #[test]
    fn user_input_validates_timezone_and_quiet_hours() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let input: UserInput = serde_json::from_str(
            r#"{"timezone":"Europe/Paris","quiet_hours":{"start":"22:00","end":"07:30"}}"#,
        )
        .unwrap();
        assert!(input.into_user("u1", now).is_ok());
        let bad: UserInput = serde_json::from_str(r#"{"timezone":"Mars/Olympus"}"#).unwrap();
        assert!(bad.into_user("u1", now).is_err());
        assert!(serde_json::from_str::<UserInput>(r#"{"nmae":"typo"}"#).is_err());
    }

    #[test]
    fn listing_input_validates_timezone() {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let listing = |tz: &str| {
            serde_json::from_value::<ListingInput>(serde_json::json!({
                "title": "Loft", "provider_id": "p1", "timezone": tz,
            }))
            .unwrap()
            .into_listing("l1", now)
        };
        assert_eq!(
            listing("Europe/Paris").unwrap().timezone.as_deref(),
            Some("Europe/Paris")
        );
        assert!(listing("Mars/Olympus").is_err());
        // Records stored before listings had a zone still read.
        let old = serde_json::json!({
            "id": "l1", "title": "Loft", "price": null, "currency": null,
            "provider_id": "p1", "primary_image": null, "badges": [],
            "response_time": null, "availability": [], "included": [],
            "address": null, "updated_at": "2026-11-25T00:00:00.000Z",
        });
        assert_eq!(
            serde_json::from_value::<Listing>(old).unwrap().timezone,
            None
        );
    }

    #[test]
    fn booking_period_must_be_ordered() {
        assert!(validate_period("2026-12-01T10:00:00Z", "2026-12-01T12:00:00Z").is_ok());
        assert!(validate_period("2026-12-01T12:00:00Z", "2026-12-01T10:00:00Z").is_err());
        assert!(validate_period("tomorrow", "2026-12-01T10:00:00Z").is_err());
    }
}
