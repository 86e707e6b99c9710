//! Notifications: routing (`router`: which events tell whom, on which
//! channels, when), quiet hours, digests, and delivery through the durable
//! outbox (`worker`, `channels`). See README "Notifications".

pub mod channels;
pub mod delivery;
pub mod outbox;
mod quiet;
pub mod router;
pub mod worker;

use tokio::sync::Notify;

use crate::model::notification::Lane;

/// Wakes the outbox's lanes: new entries were queued, or the clock moved.
#[derive(Debug, Default)]
pub struct Wakers {
    lanes: [Notify; Lane::ALL.len()],
}

impl Wakers {
    pub fn lane(&self, lane: Lane) -> &Notify {
        &self.lanes[usize::from(lane.code())]
    }

    pub fn wake_all(&self) {
        for lane in &self.lanes {
            lane.notify_one();
        }
    }
}
