//! Experiment records: the variant each unit got at its first exposure (kept
//! for good: a weight change, a reload or a restart never moves a unit), and
//! per-variant tallies counted as exposures, conversions and guardrail events
//! happen, so results are read without a scan. The decisions are
//! `analytics::experiments`'; the store keeps these.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What an experiment assigns: a person (by user id) or a conversation.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum UnitKind {
    Customer,
    Provider,
    Conversation,
}

impl UnitKind {
    pub fn name(self) -> &'static str {
        match self {
            UnitKind::Customer => "customer",
            UnitKind::Provider => "provider",
            UnitKind::Conversation => "conversation",
        }
    }
}

/// The primary metric's event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A booking created for the unit (`booking_created`).
    Booked,
    /// A message from the unit's person (for a conversation unit: from either
    /// person in it); automated messages do not count.
    Replied,
}

/// A conversion: `kind` within `window_ms` milliseconds after exposure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Metric {
    pub kind: MetricKind,
    pub window_ms: i64,
}

/// One unit's exposure to one experiment, and what it did since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exposure {
    pub variant: String,
    /// When the variant first changed what the unit got (RFC 3339).
    pub exposed_at: String,
    /// The primary metric in force at exposure: a later edit of the rules
    /// does not change how an exposed unit converts.
    pub metric: Metric,
    /// When it converted (RFC 3339); counted once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_at: Option<String>,
    /// Whether an `unsubscribed` signal of the unit followed the exposure
    /// (counted once).
    #[serde(default)]
    pub unsubscribed: bool,
}

/// A unit's exposures, by experiment name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitExposures {
    pub experiments: BTreeMap<String, Exposure>,
}

/// What one variant of an experiment counted so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Units exposed.
    pub exposures: u64,
    /// Exposed units that converted within the metric's window.
    pub conversions: u64,
    /// Exposed units that unsubscribed after exposure.
    #[serde(default)]
    pub unsubscribes: u64,
    /// Messages of exposed units that moderation blocked after exposure.
    #[serde(default)]
    pub blocked_messages: u64,
}
