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
//! A digest *opens* ([`open_digest`]) before its items are read: from then on
//! its `w` key is gone, so an item batched meanwhile schedules a digest of its
//! own instead of counting on this one, which may have read the items already.
//! The flush removes exactly the items the digest read; whatever came after
//! waits for that next digest. So each item is in exactly one digest.
//! Queue keys lead with the due time, so each lane is read in order of when
//! things fall due.

use sled::transaction::UnabortableTransactionError;

use super::writer::OpResult;
use super::writes::{log_event, Tx};
use super::{decode, encode, Delivery, Store, StoreError};
use crate::feed::UserEvent;
use crate::model::notification::{DeliveryState, Lane, Notification, Outcome};

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

/// The notification `id`, read in the transaction. One that cannot be read
/// is logged and treated as gone: its queue entries are dropped instead of
/// coming round forever, and no operation fails halfway through its writes.
fn get_notification(
    tx: &Tx<'_>,
    id: &str,
) -> Result<Option<Notification>, UnabortableTransactionError> {
    let Some(bytes) = tx.outbox.get(notification_key(id))? else {
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

/// The notification `id` and the index of its `lane` delivery, if that
/// delivery is in `state`.
fn delivery_in(
    tx: &Tx<'_>,
    id: &str,
    lane: Lane,
    state: DeliveryState,
) -> Result<Option<(Notification, usize)>, UnabortableTransactionError> {
    Ok(get_notification(tx, id)?.and_then(|n| {
        let index = n
            .deliveries
            .iter()
            .position(|d| d.channel == lane && d.state == state)?;
        Some((n, index))
    }))
}

fn save(tx: &Tx<'_>, notification: &Notification) -> Result<(), UnabortableTransactionError> {
    tx.outbox
        .insert(notification_key(&notification.id), encode(notification))?;
    Ok(())
}

/// Sets the user's digest to fall due at `due_ms` unless it already falls due
/// sooner.
fn schedule_digest(tx: &Tx<'_>, user_id: &str, due_ms: i64) -> OpResult<()> {
    if let Some(current) = tx.outbox.get(digest_key(user_id))? {
        let current = super::keys::read_u64(&current) as i64;
        if current <= due_ms {
            return Ok(Ok(()));
        }
        tx.outbox
            .remove(queue_key(Lane::Digest, current, user_id))?;
    }
    tx.outbox
        .insert(digest_key(user_id), &(due_ms as u64).to_be_bytes())?;
    tx.outbox
        .insert(queue_key(Lane::Digest, due_ms, user_id), &[])?;
    Ok(Ok(()))
}

/// Stores a new notification and queues its deliveries (or adds it to its
/// recipient's digest). Creating one that exists changes nothing.
pub fn create(tx: &Tx<'_>, notification: &Notification) -> OpResult<bool> {
    if tx.outbox.get(notification_key(&notification.id))?.is_some() {
        return Ok(Ok(false));
    }
    save(tx, notification)?;
    if let Some(user) = &notification.user_id {
        tx.outbox.insert(
            [user_prefix(user), notification.id.as_bytes().to_vec()].concat(),
            &[],
        )?;
    }
    for delivery in &notification.deliveries {
        match (delivery.state, &notification.user_id) {
            (DeliveryState::Pending, _) => {
                tx.outbox.insert(
                    queue_key(delivery.channel, delivery.due_ms, &notification.id),
                    &[],
                )?;
            }
            (DeliveryState::Batched, Some(user)) => {
                tx.outbox.insert(batch_key(user, &notification.id), &[])?;
                if let Err(e) = schedule_digest(tx, user, delivery.due_ms)? {
                    return Ok(Err(e));
                }
            }
            _ => {}
        }
    }
    Ok(Ok(true))
}

/// Records an attempt about to be made: the attempt count goes up and the
/// queue entry moves to `lease_until_ms`, so a crash during the attempt
/// retries it then. Returns the notification as recorded, or `None` when the
/// delivery is no longer pending.
pub fn begin_attempt(
    tx: &Tx<'_>,
    id: &str,
    lane: Lane,
    lease_until_ms: i64,
) -> OpResult<Option<Notification>> {
    let Some((mut notification, i)) = delivery_in(tx, id, lane, DeliveryState::Pending)? else {
        return Ok(Ok(None));
    };
    let delivery = &mut notification.deliveries[i];
    tx.outbox.remove(queue_key(lane, delivery.due_ms, id))?;
    delivery.attempts += 1;
    delivery.due_ms = lease_until_ms;
    tx.outbox.insert(queue_key(lane, lease_until_ms, id), &[])?;
    save(tx, &notification)?;
    Ok(Ok(Some(notification)))
}

/// Records how a delivery went (or why it was not made); an in-app delivery
/// also logs the `notification` event to the recipient's stream. `due_ms` is
/// the queue entry being answered: it goes whatever the record says, so an
/// entry whose record is gone or unreadable cannot come round again.
pub fn finish(
    tx: &Tx<'_>,
    id: &str,
    lane: Lane,
    due_ms: i64,
    outcome: &Outcome,
    at: &str,
    out: &mut Vec<Delivery>,
) -> OpResult<bool> {
    tx.outbox.remove(queue_key(lane, due_ms, id))?;
    let Some((mut notification, i)) = delivery_in(tx, id, lane, DeliveryState::Pending)? else {
        return Ok(Ok(false));
    };
    let delivery = &mut notification.deliveries[i];
    tx.outbox.remove(queue_key(lane, delivery.due_ms, id))?;
    delivery.updated_at = Some(at.to_owned());
    match outcome {
        Outcome::Delivered => {
            delivery.state = DeliveryState::Delivered;
            delivery.note = None;
        }
        Outcome::Retry { at_ms, error } => {
            delivery.due_ms = *at_ms;
            delivery.note = Some(error.clone());
            tx.outbox.insert(queue_key(lane, *at_ms, id), &[])?;
        }
        Outcome::Hold { until_ms } => {
            delivery.due_ms = *until_ms;
            tx.outbox.insert(queue_key(lane, *until_ms, id), &[])?;
        }
        Outcome::Dead(error) => {
            delivery.state = DeliveryState::Dead;
            delivery.note = Some(error.clone());
            tx.outbox.insert(dead_key(id, lane), &[])?;
        }
        Outcome::Suppressed(reason) => {
            delivery.state = DeliveryState::Suppressed;
            delivery.note = Some(reason.clone());
        }
    }
    save(tx, &notification)?;
    if lane == Lane::InApp && *outcome == Outcome::Delivered {
        if let Some(user) = &notification.user_id {
            let event = UserEvent::Notification {
                notification: Box::new(notification.view()),
            };
            log_event(tx, user, &event, out)?;
        }
    }
    Ok(Ok(true))
}

/// Puts a dead delivery back in its queue, due at `now_ms`, with its attempts
/// reset. `false` if it is not dead.
pub fn redrive(tx: &Tx<'_>, id: &str, lane: Lane, now_ms: i64) -> OpResult<bool> {
    let Some((mut notification, i)) = delivery_in(tx, id, lane, DeliveryState::Dead)? else {
        return Ok(Ok(false));
    };
    let delivery = &mut notification.deliveries[i];
    delivery.state = DeliveryState::Pending;
    delivery.attempts = 0;
    delivery.due_ms = now_ms;
    tx.outbox.remove(dead_key(id, lane))?;
    tx.outbox.insert(queue_key(lane, now_ms, id), &[])?;
    save(tx, &notification)?;
    Ok(Ok(true))
}

/// Opens the user's digest falling due at `due_ms`, before its items are
/// read: its `w` key goes (if it is still this digest's), so items batched from
/// now on schedule the next digest. The queue entry stays until the flush, so
/// a crash in between sends this digest again rather than losing it.
pub fn open_digest(
    tx: &Tx<'_>,
    user_id: &str,
    due_ms: i64,
) -> Result<(), UnabortableTransactionError> {
    if let Some(current) = tx.outbox.get(digest_key(user_id))? {
        if super::keys::read_u64(&current) as i64 == due_ms {
            tx.outbox.remove(digest_key(user_id))?;
        }
    }
    Ok(())
}

/// Sends a user's opened digest: the batched notifications `items` (those
/// still waiting, as read after [`open_digest`]) are marked delivered through
/// `digest`, which is created and queued, and the digest's queue entry
/// (`due_ms`) goes. Items batched since it opened are left to the digest they
/// scheduled. `next_due_ms` holds the digest back until then (quiet hours).
pub fn flush_digest(
    tx: &Tx<'_>,
    user_id: &str,
    due_ms: i64,
    items: &[String],
    digest: Option<&Notification>,
    next_due_ms: Option<i64>,
) -> OpResult<()> {
    // An item batched since `open_digest` may have scheduled a digest due at
    // this very time, with this very queue key: that one stays.
    let rearmed = tx
        .outbox
        .get(digest_key(user_id))?
        .is_some_and(|due| super::keys::read_u64(&due) as i64 == due_ms);
    if !rearmed {
        tx.outbox.remove(queue_key(Lane::Digest, due_ms, user_id))?;
    }
    for id in items {
        if tx.outbox.remove(batch_key(user_id, id))?.is_none() {
            continue;
        }
        let Some(mut notification) = get_notification(tx, id)? else {
            continue;
        };
        for delivery in &mut notification.deliveries {
            if delivery.state == DeliveryState::Batched {
                delivery.state = DeliveryState::Delivered;
                delivery.note = digest.map(|d| format!("in digest {}", d.id));
            }
        }
        save(tx, &notification)?;
    }
    if let Some(digest) = digest {
        if let Err(e) = create(tx, digest)? {
            return Ok(Err(e));
        }
    }
    if let Some(next) = next_due_ms {
        return schedule_digest(tx, user_id, next);
    }
    Ok(Ok(()))
}

/// Whether a notification is finished with: every delivery delivered or
/// suppressed. A dead one stays for operators until re-driven.
fn finished(notification: &Notification) -> bool {
    notification.deliveries.iter().all(|d| {
        matches!(
            d.state,
            DeliveryState::Delivered | DeliveryState::Suppressed
        )
    })
}

/// Forgets the finished notifications among `ids` (checked again here).
pub fn forget(tx: &Tx<'_>, ids: &[String]) -> OpResult<usize> {
    let mut forgotten = 0;
    for id in ids {
        let Some(notification) = get_notification(tx, id)?.filter(finished) else {
            continue;
        };
        tx.outbox.remove(notification_key(id))?;
        if let Some(user) = &notification.user_id {
            tx.outbox
                .remove([user_prefix(user), id.as_bytes().to_vec()].concat())?;
        }
        forgotten += 1;
    }
    Ok(Ok(forgotten))
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

    /// Looks at up to `limit` notifications after the id `after` and forgets
    /// the finished ones created before `before` (RFC 3339). Returns how many
    /// it forgot and where to go on from, `None` once it reached notifications
    /// recent enough to keep (ids are time-ordered, uuid v7).
    pub async fn prune_notifications(
        &self,
        before: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(usize, Option<String>), StoreError> {
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
                Ok(n) if finished(&n) => old.push(id.clone()),
                _ => {}
            }
            next = Some(id);
        }
        let forgotten = if old.is_empty() {
            0
        } else {
            self.writer.run(move |tx, _| forget(tx, &old)).await?
        };
        Ok((forgotten, next))
    }

    pub async fn create_notification(
        &self,
        notification: Notification,
    ) -> Result<bool, StoreError> {
        self.writer
            .run(move |tx, _| create(tx, &notification))
            .await
    }

    pub async fn begin_attempt(
        &self,
        id: &str,
        lane: Lane,
        lease_until_ms: i64,
    ) -> Result<Option<Notification>, StoreError> {
        let id = id.to_owned();
        self.writer
            .run(move |tx, _| begin_attempt(tx, &id, lane, lease_until_ms))
            .await
    }

    pub async fn finish_delivery(
        &self,
        id: &str,
        lane: Lane,
        due_ms: i64,
        outcome: Outcome,
        at: String,
    ) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .run(move |tx, out| finish(tx, &id, lane, due_ms, &outcome, &at, out))
            .await
    }

    pub async fn redrive(&self, id: &str, lane: Lane, now_ms: i64) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.writer
            .run(move |tx, _| redrive(tx, &id, lane, now_ms))
            .await
    }

    /// See [`open_digest`].
    pub async fn open_digest(&self, user_id: &str, due_ms: i64) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.writer
            .run(move |tx, _| Ok(Ok(open_digest(tx, &user_id, due_ms)?)))
            .await
    }

    pub async fn flush_digest(
        &self,
        user_id: &str,
        due_ms: i64,
        items: Vec<String>,
        digest: Option<Notification>,
        next_due_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let user_id = user_id.to_owned();
        self.writer
            .run(move |tx, _| {
                flush_digest(tx, &user_id, due_ms, &items, digest.as_ref(), next_due_ms)
            })
            .await
    }

    /// Sends nothing now: the digest due at `due_ms` falls due again at
    /// `until_ms`, its items still batched.
    pub async fn postpone_digest(
        &self,
        user_id: &str,
        due_ms: i64,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        self.flush_digest(user_id, due_ms, Vec::new(), None, Some(until_ms))
            .await
    }
}
