//! Notifications: routing (`router`: which events tell whom, on which
//! channels, when), quiet hours, digests, and delivery through the durable
//! outbox (`worker`, `channels`). See README "Notifications".

pub mod channels;
pub mod delivery;
pub mod outbox;
mod quiet;
pub mod router;
pub mod worker;

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::model::notification::Lane;

/// Wakes the outbox's lanes (new entries were queued, or the clock moved),
/// and counts each lane's deliveries in flight: an entry being attempted has
/// moved to the end of its lease, so only this count tells that an attempt
/// is still under way (`pipeline::unsettled`).
#[derive(Debug, Default)]
pub struct Wakers {
    lanes: [Notify; Lane::ALL.len()],
    in_flight: [AtomicUsize; Lane::ALL.len()],
}

/// One delivery in flight on a lane, from before its entry is leased until
/// its outcome is recorded; dropping it ends it (a panic too).
#[derive(Debug)]
pub struct Dispatching<'a> {
    count: &'a AtomicUsize,
}

impl Drop for Dispatching<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Wakers {
    pub fn lane(&self, lane: Lane) -> &Notify {
        &self.lanes[usize::from(lane.code())]
    }

    /// Counts a delivery on `lane` in flight until the guard is dropped.
    pub fn dispatching(&self, lane: Lane) -> Dispatching<'_> {
        let count = &self.in_flight[usize::from(lane.code())];
        count.fetch_add(1, Ordering::AcqRel);
        Dispatching { count }
    }

    /// Deliveries on `lane` in flight now.
    pub fn in_flight(&self, lane: Lane) -> usize {
        self.in_flight[usize::from(lane.code())].load(Ordering::Acquire)
    }

    pub fn wake_all(&self) {
        for lane in &self.lanes {
            lane.notify_one();
        }
    }
}
