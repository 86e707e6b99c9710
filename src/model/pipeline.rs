//! The automation pipeline's dead-letter list: domain events and due steps the
//! engine gave up on, kept with their error until an operator re-drives them
//! (`GET /v1/admin/pipeline/dead`, `POST /v1/admin/pipeline/dead/{id}/redrive`).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::DomainEvent;

/// What a dead entry held up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeadKind {
    /// A domain event whose evaluation against the rules kept failing.
    Event,
    /// A due sequence step that could not be prepared (its condition or its
    /// template kept failing).
    Timer,
}

/// The step of a dead timer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeadTimer {
    /// The sequence instance, `{rule}/{anchor}`.
    pub instance: String,
    pub step: String,
    /// When it fell due (RFC 3339, UTC, milliseconds).
    pub due_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub due_ms: i64,
}

/// One entry of the dead-letter list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeadItem {
    /// uuid v7, so the list reads in the order things died; names the entry in
    /// `POST /v1/admin/pipeline/dead/{id}/redrive`.
    pub id: String,
    pub kind: DeadKind,
    /// The domain event; for a timer, the event that started its sequence.
    #[schema(value_type = Object)]
    pub event: DomainEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timer: Option<DeadTimer>,
    /// The sequence (`inquiry_follow_up`) or step (`inquiry_follow_up.acknowledge`)
    /// whose evaluation failed; absent when the failure was no one rule's (a
    /// panic in the engine itself).
    pub rule: Option<String>,
    /// The last attempt's error.
    pub error: String,
    /// Failed attempts (the configured `automation.max_attempts`).
    pub attempts: u32,
    /// RFC 3339, the daemon's clock.
    pub first_failed_at: String,
    pub failed_at: String,
}
