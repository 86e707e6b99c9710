//! Live fan-out of committed events to each user's connected devices. Every
//! connection (WebSocket or a waiting long-poll) holds a bounded queue; publishing
//! never waits. A connection whose queue is full is dropped from the hub: it drains
//! what it has, sees its queue end, and tells its client to resume from its cursor.
//! The durable event log, not the hub, is the source of truth.
//!
//! Typing indicators are state, not events: each connection keeps the latest
//! one per (conversation, sender) in [`TypingSlots`], outside its queue, so
//! however fast someone types they never push a reader towards being dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use crate::feed::Frame;

/// At most one typing indicator per conversation and sender reaches a device
/// in this interval; later ones in it replace each other and the last is sent
/// when it ends.
pub const TYPING_INTERVAL: Duration = Duration::from_secs(1);

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<Arc<Frame>>,
    typing: Arc<TypingSlots>,
}

/// Which typing indicator a slot holds: (conversation id, sender id).
type TypingKey = (String, String);

/// One connection's pending typing indicators: the latest per (conversation,
/// sender), and when each was last written, so the writer sends each at most
/// once per [`TYPING_INTERVAL`]. Its size is bounded by the conversations the
/// user is in, not by how many indicators arrive.
#[derive(Default)]
pub struct TypingSlots {
    state: Mutex<TypingState>,
    changed: Notify,
}

#[derive(Default)]
struct TypingState {
    latest: HashMap<TypingKey, Arc<Frame>>,
    sent_at: HashMap<TypingKey, Instant>,
}

impl TypingSlots {
    /// Holds `frame` as the latest indicator of `key`, replacing an unsent one.
    fn offer(&self, key: TypingKey, frame: &Arc<Frame>) {
        self.lock().latest.insert(key, Arc::clone(frame));
        self.changed.notify_one();
    }

    /// Drops `key`'s unsent indicator: its sender's message has just been
    /// queued, and "typing" must not show up after it.
    fn clear(&self, key: &TypingKey) {
        self.lock().latest.remove(key);
    }

    /// Resolves once an indicator has been offered since the last call
    /// (at once if one was offered while nobody waited).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Takes the indicators that may be written at `now` (marking them sent),
    /// and says when the earliest of the rest may be.
    pub fn take_due(&self, now: Instant) -> (Vec<Arc<Frame>>, Option<Instant>) {
        let mut state = self.lock();
        let TypingState { latest, sent_at } = &mut *state;
        sent_at.retain(|_, at| now < *at + TYPING_INTERVAL);
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        latest.retain(|key, frame| match sent_at.get(key) {
            Some(at) => {
                let when = *at + TYPING_INTERVAL;
                next = Some(next.map_or(when, |n| n.min(when)));
                true
            }
            None => {
                due.push(Arc::clone(frame));
                sent_at.insert(key.clone(), now);
                false
            }
        });
        (due, next)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TypingState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
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
    pub typing: Arc<TypingSlots>,
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
        let typing = Arc::new(TypingSlots::default());
        self.subscribers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(user_id.to_owned())
            .or_default()
            .push(Subscriber {
                id,
                queue,
                typing: Arc::clone(&typing),
            });
        Subscription {
            hub: Arc::clone(self),
            user_id: user_id.to_owned(),
            id,
            frames,
            typing,
        }
    }

    /// Offers `sender_id`'s typing indicator in `conversation_id` (`frame`) to
    /// every connection of `user_id`, replacing the one they have not written
    /// yet. Never touches their queues.
    pub fn publish_typing(
        &self,
        user_id: &str,
        conversation_id: &str,
        sender_id: &str,
        frame: &Arc<Frame>,
    ) {
        let subscribers = self
            .subscribers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for s in subscribers.get(user_id).into_iter().flatten() {
            let key = (conversation_id.to_owned(), sender_id.to_owned());
            s.typing.offer(key, frame);
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
                if let Some(key) = &frame.ends_typing {
                    s.typing.clear(key);
                }
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
            ends_typing: None,
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

    fn typing(conversation: &str, sender: &str, n: u32) -> Arc<Frame> {
        Arc::new(Frame {
            cursor: None,
            json: format!("{conversation}/{sender}/{n}").into(),
            ends_typing: None,
        })
    }

    fn texts(frames: &[Arc<Frame>]) -> Vec<&str> {
        frames.iter().map(|f| &*f.json).collect()
    }

    #[tokio::test]
    async fn a_message_drops_its_senders_unsent_typing_indicator() {
        let hub = Arc::new(Hub::default());
        let reader = hub.subscribe("ann", 4);
        let t0 = Instant::now();
        hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", 1));
        assert_eq!(reader.typing.take_due(t0).0.len(), 1);
        // Bob types again within the interval, then sends: the held indicator
        // would otherwise be written after his message.
        hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", 2));
        hub.publish_typing("ann", "c1", "cid", &typing("c1", "cid", 1));
        let message = Arc::new(Frame {
            ends_typing: Some(("c1".into(), "bob".into())),
            ..(*frame(7)).clone()
        });
        hub.publish("ann", &message);
        let (due, _) = reader.typing.take_due(t0 + TYPING_INTERVAL);
        assert_eq!(texts(&due), ["c1/cid/1"], "only another sender's is left");
    }

    #[tokio::test]
    async fn a_typing_flood_is_one_slot_outside_the_queue() {
        let hub = Arc::new(Hub::default());
        let reader = hub.subscribe("ann", 2);
        for n in 0..10_000 {
            hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", n));
        }
        // The queue is untouched: a real event still fits, and nobody was evicted.
        hub.publish("ann", &frame(1));
        assert_eq!(hub.subscribers.read().unwrap()["ann"].len(), 1);
        let t0 = Instant::now();
        let (due, next) = reader.typing.take_due(t0);
        assert_eq!(texts(&due), ["c1/bob/9999"], "the latest wins");
        assert_eq!(next, None);
    }

    #[tokio::test]
    async fn typing_reaches_a_device_at_most_once_per_interval_per_conversation_and_sender() {
        let hub = Arc::new(Hub::default());
        let reader = hub.subscribe("ann", 2);
        let t0 = Instant::now();
        hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", 1));
        assert_eq!(texts(&reader.typing.take_due(t0).0), ["c1/bob/1"]);

        // Within the interval: held, the latest replacing the earlier.
        hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", 2));
        hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", 3));
        // Another conversation is not held back by the first.
        hub.publish_typing("ann", "c2", "cid", &typing("c2", "cid", 1));
        let half = t0 + TYPING_INTERVAL / 2;
        let (due, next) = reader.typing.take_due(half);
        assert_eq!(texts(&due), ["c2/cid/1"]);
        assert_eq!(next, Some(t0 + TYPING_INTERVAL));

        let (due, _) = reader.typing.take_due(t0 + TYPING_INTERVAL);
        assert_eq!(texts(&due), ["c1/bob/3"]);
        let (due, next) = reader.typing.take_due(t0 + TYPING_INTERVAL * 3);
        assert!(
            due.is_empty() && next.is_none(),
            "nothing new, nothing sent"
        );
    }

    #[tokio::test]
    async fn an_offer_wakes_the_writer_even_if_it_was_not_waiting_yet() {
        let hub = Arc::new(Hub::default());
        let reader = hub.subscribe("ann", 2);
        hub.publish_typing("ann", "c1", "bob", &typing("c1", "bob", 1));
        tokio::time::timeout(Duration::from_secs(5), reader.typing.changed())
            .await
            .expect("woken by the earlier offer");
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Arc::new(Hub::default());
        drop(hub.subscribe("ann", 2));
        assert!(hub.subscribers.read().unwrap().is_empty());
    }
}
