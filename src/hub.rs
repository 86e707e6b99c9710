//! Live fan-out of committed events to each user's connected devices. Every
//! connection (WebSocket or a waiting long-poll) holds a bounded queue; publishing
//! never waits. A connection whose queue is full is dropped from the hub: it drains
//! what it has, sees its queue end, and tells its client to resume from its cursor.
//! The durable event log, not the hub, is the source of truth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use crate::events::Frame;

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Arc<Frame>>,
}

#[derive(Default)]
pub struct Hub {
    subscribers: RwLock<HashMap<String, Vec<Subscriber>>>,
    next_id: AtomicU64,
}

/// A registration in the hub; dropping it unregisters.
pub struct Subscription {
    hub: Arc<Hub>,
    user_id: String,
    id: u64,
    pub frames: mpsc::Receiver<Arc<Frame>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.user_id, &[self.id]);
    }
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>, user_id: &str, capacity: usize) -> Subscription {
        let (queue, frames) = mpsc::channel(capacity);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.subscribers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(user_id.to_owned())
            .or_default()
            .push(Subscriber { id, queue });
        Subscription {
            hub: Arc::clone(self),
            user_id: user_id.to_owned(),
            id,
            frames,
        }
    }

    /// Offers `frame` to every connection of `user_id`; overflowing ones are evicted.
    pub fn publish(&self, user_id: &str, frame: &Arc<Frame>) {
        let mut overflowed = Vec::new();
        {
            let subscribers = self
                .subscribers
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let Some(list) = subscribers.get(user_id) else {
                return;
            };
            for s in list {
                if let Err(mpsc::error::TrySendError::Full(_)) = s.queue.try_send(Arc::clone(frame))
                {
                    overflowed.push(s.id);
                }
            }
        }
        if !overflowed.is_empty() {
            metrics::counter!("parleyd_stream_overflows_total").increment(overflowed.len() as u64);
            self.remove(user_id, &overflowed);
        }
    }

    fn remove(&self, user_id: &str, ids: &[u64]) {
        let mut subscribers = self
            .subscribers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(list) = subscribers.get_mut(user_id) {
            list.retain(|s| !ids.contains(&s.id));
            if list.is_empty() {
                subscribers.remove(user_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(cursor: u64) -> Arc<Frame> {
        Arc::new(Frame {
            cursor: Some(cursor),
            json: format!("{{\"cursor\":{cursor}}}").into(),
        })
    }

    #[tokio::test]
    async fn every_device_of_the_user_gets_the_frame() {
        let hub = Arc::new(Hub::default());
        let mut a = hub.subscribe("ann", 4);
        let mut b = hub.subscribe("ann", 4);
        let mut other = hub.subscribe("bob", 4);
        hub.publish("ann", &frame(1));
        assert_eq!(a.frames.recv().await.unwrap().cursor, Some(1));
        assert_eq!(b.frames.recv().await.unwrap().cursor, Some(1));
        assert!(other.frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn a_full_queue_is_evicted_after_draining() {
        let hub = Arc::new(Hub::default());
        let mut slow = hub.subscribe("ann", 2);
        for c in 1..=3 {
            hub.publish("ann", &frame(c));
        }
        assert_eq!(slow.frames.recv().await.unwrap().cursor, Some(1));
        assert_eq!(slow.frames.recv().await.unwrap().cursor, Some(2));
        assert!(slow.frames.recv().await.is_none(), "evicted queue ends");
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Arc::new(Hub::default());
        drop(hub.subscribe("ann", 2));
        assert!(hub.subscribers.read().unwrap().is_empty());
    }
}
