//! The analytics records: what `analytics::metrics` folds the domain events
//! into, and what the store keeps of them (`store::analytics`). Plain data:
//! counters and times only, so that a read of one conversation's metrics, or
//! of one provider's day, is one key and no scan. The definitions of what
//! each counter counts are in README.md ("Conversation metrics") and in
//! `analytics::metrics`, which is the only code that changes them.

use serde::{Deserialize, Serialize};

/// How many of the messages addressed to one person they have read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadTally {
    /// Messages addressed to them (`Message::is_for`).
    pub addressed: u64,
    /// Of those, the ones they marked read.
    pub read: u64,
}

/// Message counts of one conversation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageCounts {
    /// Every stored message, people's and automation's.
    pub total: u64,
    /// Written by the provider.
    pub provider: u64,
    /// Written by the customer.
    pub customer: u64,
    /// Sent by automation (nudges, milestones).
    pub automated: u64,
    /// People's messages sent with a quick reply (`quick_reply_id` set).
    pub quick_replies: u64,
    /// Characters (Unicode scalar values) of people's messages, summed.
    pub characters: u64,
}

/// One conversation's metrics as kept (the `analytics_conversations` tree).
/// Times are RFC 3339 on the daemon's clock; durations whole seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConversationMetrics {
    pub conversation_id: String,
    pub listing_id: String,
    pub customer_id: String,
    pub provider_id: String,
    /// The IANA time zone whose days the provider's aggregates use
    /// (provider's, else listing's, else `UTC`), fixed at the first event.
    pub zone: String,
    /// The customer's first message (the inquiry).
    #[serde(default)]
    pub inquiry_at: Option<String>,
    #[serde(default)]
    pub first_message_at: Option<String>,
    #[serde(default)]
    pub last_message_at: Option<String>,
    /// The provider's first reply after the inquiry.
    #[serde(default)]
    pub first_response_at: Option<String>,
    /// Seconds of each provider reply to customer messages, in order; the
    /// first is the first response time.
    #[serde(default)]
    pub response_secs: Vec<i64>,
    /// The earliest customer message no provider reply has answered yet.
    #[serde(default)]
    pub unanswered_since: Option<String>,
    /// Customer messages since `unanswered_since`.
    #[serde(default)]
    pub unanswered: u64,
    /// Customer messages a provider reply came after.
    #[serde(default)]
    pub answered: u64,
    #[serde(default)]
    pub messages: MessageCounts,
    /// Messages addressed to the customer, and read by them.
    #[serde(default)]
    pub to_customer: ReadTally,
    /// Messages addressed to the provider, and read by them.
    #[serde(default)]
    pub to_provider: ReadTally,
    /// The funnel: when each stage was first reached.
    #[serde(default)]
    pub viewed_at: Option<String>,
    #[serde(default)]
    pub quoted_at: Option<String>,
    #[serde(default)]
    pub booked_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub booking_id: Option<String>,
    /// Step messages followed for the platform view's attribution.
    #[serde(default)]
    pub touches: crate::model::platform::StepTouches,
    /// The `seq` of the inquiry and of the provider's first reply (the
    /// provider report lists them).
    #[serde(default)]
    pub inquiry_seq: Option<u64>,
    #[serde(default)]
    pub first_response_seq: Option<u64>,
    /// The provider's messages sent with a quick reply.
    #[serde(default)]
    pub provider_quick_replies: u64,
}

/// Upper bounds (seconds, inclusive) of the first-response-time buckets of
/// [`DailyAggregate::first_response_buckets`]: 5 min, 15 min, 1 h, 3 h, 6 h,
/// 12 h, 24 h; the last bucket holds everything slower.
pub const FIRST_RESPONSE_BOUNDS: [i64; 7] = [300, 900, 3_600, 10_800, 21_600, 43_200, 86_400];

/// One provider's figures for one day in their time zone (the
/// `analytics_daily` tree): counts and sums only, so a period's figures are
/// sums over its days. Conversation outcomes count on the day of the
/// inquiry they follow (a cohort); activity counts on the day it happened.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyAggregate {
    /// Inquiries received that day (conversations whose customer wrote first
    /// that day).
    #[serde(default)]
    pub inquiries: u64,
    /// Of those, the ones the provider answered, and within 24 hours.
    #[serde(default)]
    pub answered: u64,
    #[serde(default)]
    pub answered_within_24h: u64,
    /// Sum of the first response times of those answered, seconds.
    #[serde(default)]
    pub first_response_secs: i64,
    /// Their distribution over [`FIRST_RESPONSE_BOUNDS`] (one more bucket
    /// for slower).
    #[serde(default)]
    pub first_response_buckets: [u64; 8],
    /// Of the inquiries, those quoted, booked, completed.
    #[serde(default)]
    pub quoted: u64,
    #[serde(default)]
    pub booked: u64,
    #[serde(default)]
    pub completed: u64,
    /// Activity that day: messages by side, quick replies, characters.
    #[serde(default)]
    pub messages: MessageCounts,
    /// Provider replies and the sum of their response times, seconds.
    #[serde(default)]
    pub responses: u64,
    #[serde(default)]
    pub response_secs: i64,
    /// Customer messages answered that day.
    #[serde(default)]
    pub answered_messages: u64,
    /// Messages addressed to customers (counted the day they were sent)
    /// and read by them (counted the day they were read).
    #[serde(default)]
    pub to_customers: ReadTally,
    /// The same for messages addressed to the provider.
    #[serde(default)]
    pub to_provider: ReadTally,
    /// The day's inquiries' conversations, counted as they stand now (the
    /// provider reports' figures).
    #[serde(default)]
    pub cohort: crate::model::report::CohortCounts,
}
