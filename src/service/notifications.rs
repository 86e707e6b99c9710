//! The notification outbox for operators: queues, dead letters, re-drive;
//! a user's notifications.

use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::model::notification::{Lane, Notification};
use crate::model::page_limit;

use super::App;

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

impl App {
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
}
