//! The notification outbox: one tree, changed only in writer transactions, so
//! a notification is created in the same transaction that acknowledges the
//! domain event raising it, and an in-app notification is logged in the same
//! transaction that marks it delivered.
//!
//! | key                                   | value                          |
//! |---------------------------------------|--------------------------------|
//! | `n` id                                | `Notification` JSON            |
//! | `q` lane (1 byte) due ms (u64) id     | empty: the lane's queue        |
//! | `x` id `\0` lane (1 byte)             | empty: the dead-letter list    |
//! | `b` user `\0` id                      | empty: waiting for a digest    |
//! | `w` user                              | due ms of the user's next digest, until it opens |
//! | `u` user `\0` id                      | empty: the user's notifications |
//!
//! A digest's queue entry is `q` + the digest lane + due + the user id.
//!
//! The record decides: every `q`, `x`, `b` and `u` key follows from it
//! ([`OutboxTx::save`] moves them with it). How a record moves (attempts,
//! retries, dead letters, digests) is decided in `notifications::delivery`;
//! this module stores. Queue keys lead with the due time, so each lane is read
//! in order of when things fall due.

use super::writes::{log_event, Tx};
use super::{decode, encode, Delivery, Store, StoreError, TxError};
use crate::feed::UserEvent;
use crate::model::notification::{DeliveryState, Lane, Notification};

const SEP: u8 = 0;

fn notification_key(id: &str) -> Vec<u8> {
    [b"n", id.as_bytes()].concat()
}

fn queue_prefix(lane: Lane) -> [u8; 2] {
    [b'q', lane.code()]
}

fn queue_key(lane: Lane, due_ms: i64, id: &str) -> Vec<u8> {
    let due = u64::try_from(due_ms).unwrap_or(0).to_be_bytes();
    [&queue_prefix(lane)[..], &due, id.as_bytes()].concat()
}

/// `(due_ms, id)` of a queue key.
fn parse_queue_key(key: &[u8]) -> Option<(i64, String)> {
    let rest = key.get(2..)?;
    let (due, id) = rest.split_at_checked(8)?;
    let due = i64::try_from(u64::from_be_bytes(due.try_into().ok()?)).ok()?;
    Some((due, std::str::from_utf8(id).ok()?.to_owned()))
}

fn dead_key(id: &str, lane: Lane) -> Vec<u8> {
    [b"x", id.as_bytes(), &[SEP, lane.code()]].concat()
}

fn batch_prefix(user_id: &str) -> Vec<u8> {
    [b"b", user_id.as_bytes(), &[SEP]].concat()
}

fn batch_key(user_id: &str, id: &str) -> Vec<u8> {
    [batch_prefix(user_id), id.as_bytes().to_vec()].concat()
}

fn user_prefix(user_id: &str) -> Vec<u8> {
    [b"u", user_id.as_bytes(), &[SEP]].concat()
}

fn digest_key(user_id: &str) -> Vec<u8> {
    [b"w", user_id.as_bytes()].concat()
}

/// The keys a notification's record implies: its user's list entry, and for
/// each delivery its queue entry (pending), dead-letter entry (dead) or batch
/// entry (batched). [`OutboxTx::save`] keeps them in step with the record.
fn derived_keys(notification: &Notification) -> Vec<Vec<u8>> {
    let id = &notification.id;
    let mut keys = Vec::new();
    if let Some(user) = &notification.user_id {
        keys.push([user_prefix(user), id.as_bytes().to_vec()].concat());
    }
    for delivery in &notification.deliveries {
        match (delivery.state, &notification.user_id) {
            (DeliveryState::Pending, _) => {
                keys.push(queue_key(delivery.channel, delivery.due_ms, id));
            }
            (DeliveryState::Dead, _) => keys.push(dead_key(id, delivery.channel)),
            (DeliveryState::Batched, Some(user)) => keys.push(batch_key(user, id)),
            _ => {}
        }
    }
    keys
}

/// Sets the user's digest to fall due at `due_ms` unless it already falls due
/// sooner (the `w` key holds the earliest, with its queue entry).
fn arm_digest(tx: &Tx<'_>, user_id: &str, due_ms: i64) -> Result<(), TxError> {
    if let Some(current) = tx.outbox.get(digest_key(user_id))? {
        let current = super::keys::read_u64(&current) as i64;
        if current <= due_ms {
            return Ok(());
        }
        tx.outbox
            .remove(queue_key(Lane::Digest, current, user_id))?;
    }
    tx.outbox
        .insert(digest_key(user_id), &(due_ms as u64).to_be_bytes())?;
    tx.outbox
        .insert(queue_key(Lane::Digest, due_ms, user_id), &[])?;
    Ok(())
}

/// Stores a new notification with the keys it implies, and arms its
/// recipient's digest no later than its batched deliveries are due. Creating
/// one that exists changes nothing; `false` then.
pub fn create(tx: &Tx<'_>, notification: &Notification) -> Result<bool, TxError> {
    if tx.outbox.get(notification_key(&notification.id))?.is_some() {
        return Ok(false);
    }
    tx.outbox
        .insert(notification_key(&notification.id), encode(notification))?;
    for key in derived_keys(notification) {
        tx.outbox.insert(key, &[])?;
    }
    if let Some(user) = &notification.user_id {
        for delivery in &notification.deliveries {
            if delivery.state == DeliveryState::Batched {
                arm_digest(tx, user, delivery.due_ms)?;
            }
        }
    }
    Ok(true)
}

/// The outbox as one writer transaction sees it: typed reads, and writes
/// that keep the keys derived from a record in step with it. The delivery
/// state machine (`notifications::delivery`) decides; this only stores. Its
/// methods fail only when sled aborts the transaction, which the writer then
/// retries or reports.
pub struct OutboxTx<'t, 'a> {
    tx: &'t Tx<'a>,
    out: &'t mut Vec<Delivery>,
}

impl OutboxTx<'_, '_> {
    /// The notification `id`. One that cannot be read is logged and treated
    /// as gone, so its queue entries are dropped instead of coming round
    /// forever, and no step fails halfway through its writes.
    pub fn notification(&self, id: &str) -> Result<Option<Notification>, TxError> {
        let Some(bytes) = self.tx.outbox.get(notification_key(id))? else {
            return Ok(None);
        };
        match decode(&bytes) {
            Ok(notification) => Ok(Some(notification)),
            Err(e) => {
                tracing::error!(id, error = %e, "unreadable notification ignored");
                Ok(None)
            }
        }
    }

    /// See [`create`].
    pub fn create(&self, notification: &Notification) -> Result<bool, TxError> {
        create(self.tx, notification)
    }

    /// Stores `after`, the record read as `before`, moving the keys it implies
    /// (queue, dead-letter and batch entries) along with it.
    pub fn save(&self, before: &Notification, after: &Notification) -> Result<(), TxError> {
        for key in derived_keys(before) {
            self.tx.outbox.remove(key)?;
        }
        for key in derived_keys(after) {
            self.tx.outbox.insert(key, &[])?;
        }
        self.tx
            .outbox
            .insert(notification_key(&after.id), encode(after))?;
        Ok(())
    }

    /// Removes the queue entry `lane`/`due_ms`/`id` (in the digest lane the
    /// id is the user's), whatever any record says.
    pub fn unqueue(&self, lane: Lane, due_ms: i64, id: &str) -> Result<(), TxError> {
        self.tx.outbox.remove(queue_key(lane, due_ms, id))?;
        Ok(())
    }

    /// Removes the batch entry of `id` in `user_id`'s digest; `false` if it
    /// was not there.
    pub fn unbatch(&self, user_id: &str, id: &str) -> Result<bool, TxError> {
        Ok(self.tx.outbox.remove(batch_key(user_id, id))?.is_some())
    }

    /// When the user's next digest falls due, until it opens.
    pub fn digest_due(&self, user_id: &str) -> Result<Option<i64>, TxError> {
        Ok(self
            .tx
            .outbox
            .get(digest_key(user_id))?
            .map(|due| super::keys::read_u64(&due) as i64))
    }

    /// Forgets when the user's next digest falls due (it has opened); its
    /// queue entry stays.
    pub fn clear_digest_due(&self, user_id: &str) -> Result<(), TxError> {
        self.tx.outbox.remove(digest_key(user_id))?;
        Ok(())
    }

    /// See [`arm_digest`].
    pub fn arm_digest(&self, user_id: &str, due_ms: i64) -> Result<(), TxError> {
        arm_digest(self.tx, user_id, due_ms)
    }

    /// Removes the record and every key it implies.
    pub fn forget(&self, notification: &Notification) -> Result<(), TxError> {
        for key in derived_keys(notification) {
            self.tx.outbox.remove(key)?;
        }
        self.tx.outbox.remove(notification_key(&notification.id))?;
        Ok(())
    }

    /// Appends `event` to `user_id`'s event log, published once committed.
    pub fn log(&mut self, user_id: &str, event: &UserEvent) -> Result<(), TxError> {
        Ok(log_event(self.tx, user_id, event, self.out)?)
    }
}

/// A queue entry that has fallen due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub due_ms: i64,
    /// The notification, or (in the digest lane) the user.
    pub id: String,
}

impl Store {
    pub fn notification(&self, id: &str) -> Result<Option<Notification>, StoreError> {
        self.get(&self.trees.outbox, &notification_key(id))
    }

    /// The user's latest `limit` notifications, oldest first.
    pub fn notifications_of(
        &self,
        user_id: &str,
        limit: usize,
    ) -> Result<Vec<Notification>, StoreError> {
        let prefix = user_prefix(user_id);
        let mut found = Vec::new();
        for entry in self.trees.outbox.scan_prefix(&prefix).rev().take(limit) {
            let (key, _) = entry?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(n) = self.notification(&id)? {
                found.push(n);
            }
        }
        found.reverse();
        Ok(found)
    }

    /// Every notification, oldest first (for rule tests: a small store).
    pub fn notifications(&self) -> Result<Vec<Notification>, StoreError> {
        self.trees
            .outbox
            .scan_prefix(b"n")
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// Up to `limit` entries of `lane` due by `now_ms`, earliest first.
    pub fn due_in(&self, lane: Lane, now_ms: i64, limit: usize) -> Result<Vec<Due>, StoreError> {
        let start = queue_key(lane, 0, "");
        let end = queue_key(lane, now_ms.saturating_add(1), "");
        let mut due = Vec::new();
        for entry in self.trees.outbox.range(start..end).take(limit) {
            let (key, _) = entry?;
            if let Some((due_ms, id)) = parse_queue_key(&key) {
                due.push(Due { due_ms, id });
            }
        }
        Ok(due)
    }

    /// When the next entry of `lane` falls due.
    pub fn next_due_in(&self, lane: Lane) -> Result<Option<i64>, StoreError> {
        Ok(self.earliest_in(lane)?.map(|due| due.due_ms))
    }

    /// The earliest entry of `lane`'s queue, due or not.
    pub fn earliest_in(&self, lane: Lane) -> Result<Option<Due>, StoreError> {
        match self.trees.outbox.scan_prefix(queue_prefix(lane)).next() {
            Some(entry) => Ok(parse_queue_key(&entry?.0).map(|(due_ms, id)| Due { due_ms, id })),
            None => Ok(None),
        }
    }

    /// How many entries of `lane` are due by `now_ms` (a scan of the due ones).
    pub fn due_count_in(&self, lane: Lane, now_ms: i64) -> usize {
        let start = queue_key(lane, 0, "");
        let end = queue_key(lane, now_ms.saturating_add(1), "");
        self.trees.outbox.range(start..end).count()
    }

    /// How many deliveries are in the dead-letter list (a scan of the list).
    pub fn dead_letter_count(&self) -> usize {
        self.trees.outbox.scan_prefix(b"x").count()
    }

    /// How many entries wait in `lane`'s queue.
    pub fn queued_in(&self, lane: Lane) -> usize {
        self.trees.outbox.scan_prefix(queue_prefix(lane)).count()
    }

    /// The user's notifications waiting for a digest, oldest first.
    pub fn batched(&self, user_id: &str) -> Result<Vec<Notification>, StoreError> {
        let prefix = batch_prefix(user_id);
        let mut items = Vec::new();
        for entry in self.trees.outbox.scan_prefix(&prefix) {
            let (key, _) = entry?;
            let id = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if let Some(n) = self.notification(&id)? {
                items.push(n);
            }
        }
        Ok(items)
    }

    /// The dead-letter list, in notification order: `(notification, lane)`.
    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(Notification, Lane)>, StoreError> {
        let mut dead = Vec::new();
        for entry in self.trees.outbox.scan_prefix(b"x").take(limit) {
            let (key, _) = entry?;
            let (Some(&code), Some(id)) = (key.last(), key.get(1..key.len().saturating_sub(2)))
            else {
                continue;
            };
            let (Some(lane), Some(n)) = (
                Lane::from_code(code),
                self.notification(&String::from_utf8_lossy(id))?,
            ) else {
                continue;
            };
            dead.push((n, lane));
        }
        Ok(dead)
    }

    /// Up to `limit` notifications after the id `after` (or from the first)
    /// created before `before` (RFC 3339), oldest first, and where to go on
    /// from: `None` once it reached notifications recent enough or the end
    /// (ids are time-ordered, uuid v7). Unreadable ones are skipped.
    pub fn notifications_before(
        &self,
        before: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Notification>, Option<String>), StoreError> {
        let start = match after {
            Some(id) => [notification_key(id), vec![0]].concat(),
            None => b"n".to_vec(),
        };
        let mut old = Vec::new();
        let mut next = None;
        for entry in self.trees.outbox.range(start..).take(limit) {
            let (key, value) = entry?;
            if !key.starts_with(b"n") {
                next = None;
                break;
            }
            let id = String::from_utf8_lossy(&key[1..]).into_owned();
            match decode::<Notification>(&value) {
                Ok(n) if n.created_at.as_str() >= before => {
                    next = None;
                    break;
                }
                Ok(n) => old.push(n),
                Err(_) => {}
            }
            next = Some(id);
        }
        Ok((old, next))
    }

    /// Runs `step` in one writer transaction over the outbox (again if sled
    /// retries it) and returns what it returned once committed and durable.
    pub async fn outbox<T, F>(&self, step: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&mut OutboxTx<'_, '_>) -> Result<T, TxError> + Send + 'static,
    {
        self.writer
            .run("outbox", move |tx, out| {
                TxError::into_op(step(&mut OutboxTx { tx, out }))
            })
            .await
    }

    pub async fn create_notification(
        &self,
        notification: Notification,
    ) -> Result<bool, StoreError> {
        self.outbox(move |tx| tx.create(&notification)).await
    }
}
