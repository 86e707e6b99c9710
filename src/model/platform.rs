//! The platform view's records: what `analytics::platform` folds the domain
//! events into for `GET /v1/admin/analytics`. Counters only, keyed by the
//! platform's day (UTC), so a period's figures are sums over its days: one
//! range read, no scan of history. README.md ("Platform analytics") defines
//! each figure; `analytics::platform` is the only code that changes them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What contact moderation did on one day: people's messages in which
/// contact details were found, by the policy's action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactTally {
    /// Messages with contact details found (delivered or blocked).
    #[serde(default)]
    pub detections: u64,
    #[serde(default)]
    pub allowed: u64,
    #[serde(default)]
    pub warned: u64,
    #[serde(default)]
    pub masked: u64,
    #[serde(default)]
    pub blocked: u64,
    /// Of the detections, those queued for an operator's review.
    #[serde(default)]
    pub flagged: u64,
}

/// The whole platform's figures for one day (UTC), the
/// `analytics_platform` tree's `d` records.
///
/// Two cohorts: `viewed` and `viewed_messaged` count on the day of the
/// customer's first view of the listing; the other funnel figures and the
/// first responses count on the day of the conversation's inquiry (the
/// customer's first message), whenever the outcome comes. Contact
/// detections count on the day of the message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformDay {
    /// Customer–listing pairs whose first `listing_viewed` came that day.
    #[serde(default)]
    pub viewed: u64,
    /// Of those, the pairs whose conversation's inquiry came at or after the
    /// view.
    #[serde(default)]
    pub viewed_messaged: u64,
    /// Inquiries received that day.
    #[serde(default)]
    pub messaged: u64,
    /// Of those, the conversations quoted, booked, and both.
    #[serde(default)]
    pub quoted: u64,
    #[serde(default)]
    pub booked: u64,
    #[serde(default)]
    pub quoted_booked: u64,
    /// Of the inquiries, those the provider answered: their first response
    /// times in whole minutes, rounded up, with how many took each.
    #[serde(default)]
    pub first_response_minutes: BTreeMap<u64, u64>,
    #[serde(default)]
    pub contact: ContactTally,
}

/// The automated step a message came from: its sequence (or milestone) and
/// step, and the experiment variant that chose it, if any.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StepKey {
    pub sequence: String,
    pub step: String,
    #[serde(default)]
    pub experiment: Option<String>,
    #[serde(default)]
    pub variant: Option<String>,
}

/// One step's messages sent on one day (UTC), the `analytics_platform`
/// tree's `s` records; what followed them counts on their send day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepDay {
    #[serde(default)]
    pub sent: u64,
    /// Read by the person they were addressed to.
    #[serde(default)]
    pub read: u64,
    /// Replies the messages got (the addressee's next message, while the
    /// message was the conversation's latest step message), by hours from
    /// the message to the reply, rounded up.
    #[serde(default)]
    pub replies: BTreeMap<u64, u64>,
    /// Bookings attributed to the messages (last touch), by days from the
    /// message to the booking, rounded up.
    #[serde(default)]
    pub bookings: BTreeMap<u64, u64>,
}

/// A step message a conversation keeps for the platform view's attribution.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Touch {
    pub key: StepKey,
    /// Its send day (`YYYY-MM-DD`, UTC) and time (RFC 3339).
    pub day: String,
    pub at: String,
    pub seq: u64,
    pub recipient: String,
    /// A reply, a booking was already counted for it.
    #[serde(default)]
    pub replied: bool,
    #[serde(default)]
    pub booked: bool,
}

/// A conversation's step messages as the platform view follows them: the
/// latest (replies and bookings count for it), the latest sent at an
/// earlier instant than it (a booking at the latest's very instant counts
/// for that one), and those not read yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepTouches {
    #[serde(default)]
    pub last: Option<Touch>,
    #[serde(default)]
    pub earlier: Option<Touch>,
    #[serde(default)]
    pub unread: Vec<Touch>,
}
