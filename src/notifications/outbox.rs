//! The outbox's steps: each reads the records it needs, lets
//! [`super::delivery`] decide, and writes the result in one store transaction
//! (one writer round trip, however many entries it is given).

use super::delivery::{self, Finished};
use crate::feed::UserEvent;
use crate::model::notification::{Lane, Notification, Outcome};
use crate::store::{Due, Store, StoreError};

/// Records the attempts about to be made on `lane`: each `(id, lease_until_ms)`
/// answered, in order, by the notification as recorded, or `None` when its
/// delivery is no longer pending (see [`delivery::begin_attempt`]).
pub async fn begin_attempts(
    store: &Store,
    lane: Lane,
    attempts: Vec<(String, i64)>,
) -> Result<Vec<Option<Notification>>, StoreError> {
    store
        .outbox(move |tx| {
            let mut begun = Vec::with_capacity(attempts.len());
            for (id, lease_until_ms) in &attempts {
                let Some(before) = tx.notification(id)? else {
                    begun.push(None);
                    continue;
                };
                let mut after = before.clone();
                if delivery::begin_attempt(&mut after, lane, *lease_until_ms) {
                    tx.save(&before, &after)?;
                    begun.push(Some(after));
                } else {
                    begun.push(None);
                }
            }
            Ok(begun)
        })
        .await
}

/// Records how deliveries on `lane` went, at `at` (RFC 3339): each queue
/// entry answered (it goes, whatever its record says, so an entry whose record
/// is gone or unreadable cannot come round again) with its outcome (see
/// [`delivery::finish`]); an in-app delivery also logs the `notification`
/// event to its recipient's stream. Answers, in order, whether each outcome
/// was recorded (`false`: the delivery was not pending any more).
pub async fn finish(
    store: &Store,
    lane: Lane,
    outcomes: Vec<(Due, Outcome)>,
    at: String,
) -> Result<Vec<bool>, StoreError> {
    store
        .outbox(move |tx| {
            let mut recorded = Vec::with_capacity(outcomes.len());
            for (entry, outcome) in &outcomes {
                tx.unqueue(lane, entry.due_ms, &entry.id)?;
                let Some(before) = tx.notification(&entry.id)? else {
                    recorded.push(false);
                    continue;
                };
                let mut after = before.clone();
                let finished = delivery::finish(&mut after, lane, outcome, &at);
                if finished != Finished::NotPending {
                    tx.save(&before, &after)?;
                }
                if let Finished::Announce { user_id } = &finished {
                    let event = UserEvent::Notification {
                        notification: Box::new(after.view()),
                    };
                    tx.log(user_id, &event)?;
                }
                recorded.push(finished != Finished::NotPending);
            }
            Ok(recorded)
        })
        .await
}

/// Puts the dead delivery of `id` on `lane` back in its queue, due at
/// `now_ms`; `false` if it is not dead (see [`delivery::redrive`]).
pub async fn redrive(store: &Store, id: &str, lane: Lane, now_ms: i64) -> Result<bool, StoreError> {
    let id = id.to_owned();
    store
        .outbox(move |tx| {
            let Some(before) = tx.notification(&id)? else {
                return Ok(false);
            };
            let mut after = before.clone();
            let redriven = delivery::redrive(&mut after, lane, now_ms);
            if redriven {
                tx.save(&before, &after)?;
            }
            Ok(redriven)
        })
        .await
}

/// Opens the user's digest falling due at `due_ms`, before its items are
/// read (see [`delivery::opens`]). Its queue entry stays until the flush, so a
/// crash in between sends this digest again rather than losing it.
pub async fn open_digest(store: &Store, user_id: &str, due_ms: i64) -> Result<(), StoreError> {
    let user_id = user_id.to_owned();
    store
        .outbox(move |tx| {
            if delivery::opens(tx.digest_due(&user_id)?, due_ms) {
                tx.clear_digest_due(&user_id)?;
            }
            Ok(())
        })
        .await
}

/// Sends a user's opened digest: the batched notifications `items` (those
/// still waiting, as read after [`open_digest`]) are marked delivered through
/// `digest`, which is created and queued, and the digest's queue entry
/// (`due_ms`) goes. Items batched since it opened are left to the digest they
/// armed. `next_due_ms` holds the digest back until then (quiet hours).
pub async fn flush_digest(
    store: &Store,
    user_id: &str,
    due_ms: i64,
    items: Vec<String>,
    digest: Option<Notification>,
    next_due_ms: Option<i64>,
) -> Result<(), StoreError> {
    let user_id = user_id.to_owned();
    store
        .outbox(move |tx| {
            // An item batched since `open_digest` may have armed a digest due
            // at this very time, with this very queue key: that one stays.
            if tx.digest_due(&user_id)? != Some(due_ms) {
                tx.unqueue(Lane::Digest, due_ms, &user_id)?;
            }
            for id in &items {
                if !tx.unbatch(&user_id, id)? {
                    continue;
                }
                let Some(before) = tx.notification(id)? else {
                    continue;
                };
                let mut after = before.clone();
                delivery::deliver_in_digest(&mut after, digest.as_ref().map(|d| d.id.as_str()));
                tx.save(&before, &after)?;
            }
            if let Some(digest) = &digest {
                tx.create(digest)?;
            }
            if let Some(next) = next_due_ms {
                tx.arm_digest(&user_id, next)?;
            }
            Ok(())
        })
        .await
}

/// Sends nothing now: the digest due at `due_ms` falls due again at
/// `until_ms`, its items still batched.
pub async fn postpone_digest(
    store: &Store,
    user_id: &str,
    due_ms: i64,
    until_ms: i64,
) -> Result<(), StoreError> {
    flush_digest(store, user_id, due_ms, Vec::new(), None, Some(until_ms)).await
}

/// Looks at up to `limit` notifications after the id `after` and forgets the
/// finished ones created before `before` (RFC 3339; see
/// [`delivery::finished`], checked again in the transaction). Returns how
/// many it forgot and where to go on from, `None` once done.
pub async fn prune(
    store: &Store,
    before: &str,
    after: Option<&str>,
    limit: usize,
) -> Result<(usize, Option<String>), StoreError> {
    let (old, next) = store.notifications_before(before, after, limit)?;
    let ids: Vec<String> = old
        .into_iter()
        .filter(delivery::finished)
        .map(|n| n.id)
        .collect();
    if ids.is_empty() {
        return Ok((0, next));
    }
    let forgotten = store
        .outbox(move |tx| {
            let mut forgotten = 0;
            for id in &ids {
                if let Some(n) = tx.notification(id)?.filter(delivery::finished) {
                    tx.forget(&n)?;
                    forgotten += 1;
                }
            }
            Ok(forgotten)
        })
        .await?;
    Ok((forgotten, next))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::config::StorageConfig;
    use crate::store::Delivery;

    fn store(dir: &Path) -> Store {
        let config = StorageConfig {
            cache_capacity_mb: 16,
            ..StorageConfig::default()
        };
        Store::open(dir, &config, Arc::new(|_: &Delivery| {})).unwrap()
    }

    fn notification(
        created_at: &str,
        state: crate::model::notification::DeliveryState,
    ) -> crate::model::notification::Notification {
        use crate::model::notification::{ChannelDelivery, Lane};
        crate::model::notification::Notification {
            id: uuid::Uuid::now_v7().to_string(),
            kind: "new_message".into(),
            priority: crate::model::notification::Priority::High,
            user_id: Some("cust".into()),
            created_at: created_at.into(),
            event: "message_sent".into(),
            conversation_id: None,
            message_seq: None,
            title: "t".into(),
            text: "x".into(),
            html: None,
            attachments: Vec::new(),
            payload: serde_json::Value::Null,
            deliveries: vec![ChannelDelivery {
                state,
                ..ChannelDelivery::new(Lane::Email, 0)
            }],
        }
    }

    #[tokio::test]
    async fn retention_forgets_old_finished_notifications_only() {
        use crate::model::notification::DeliveryState;
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let old_done = notification("2030-01-01T00:00:00.000Z", DeliveryState::Delivered);
        let old_dead = notification("2030-01-01T00:00:01.000Z", DeliveryState::Dead);
        let old_pending = notification("2030-01-01T00:00:02.000Z", DeliveryState::Pending);
        let new_done = notification("2030-03-01T00:00:00.000Z", DeliveryState::Delivered);
        for n in [&old_done, &old_dead, &old_pending, &new_done] {
            assert!(store.create_notification(n.clone()).await.unwrap());
        }
        // One notification per call: the scan goes on from where it stopped.
        let mut after: Option<String> = None;
        let mut forgotten = 0;
        loop {
            let (n, next) = prune(&store, "2030-02-01T00:00:00.000Z", after.as_deref(), 1)
                .await
                .unwrap();
            forgotten += n;
            match next {
                Some(id) => after = Some(id),
                None => break,
            }
        }
        assert_eq!(forgotten, 1);
        assert!(store.notification(&old_done.id).unwrap().is_none());
        let kept: Vec<String> = store
            .notifications_of("cust", 10)
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect();
        assert_eq!(kept, [old_dead.id, old_pending.id, new_done.id]);
    }

    /// A notification for `cust`'s digest, due (the end of its digest window) at
    /// `due_ms`.
    fn batched(due_ms: i64) -> crate::model::notification::Notification {
        use crate::model::notification::DeliveryState;
        let mut n = notification("2030-01-01T00:00:00.000Z", DeliveryState::Batched);
        n.deliveries[0].due_ms = due_ms;
        n
    }

    /// The ids of what waits for `cust`'s digest.
    fn batched_ids(store: &Store) -> Vec<String> {
        store
            .batched("cust")
            .unwrap()
            .into_iter()
            .map(|n| n.id)
            .collect()
    }

    fn digests_due(store: &Store) -> Vec<(i64, String)> {
        use crate::model::notification::Lane;
        store
            .due_in(Lane::Digest, i64::MAX - 1, 10)
            .unwrap()
            .into_iter()
            .map(|d| (d.due_ms, d.id))
            .collect()
    }

    /// The digest worker's steps, interleaved by hand with an item batched after
    /// the digest read its items (due later, sooner, and at the same time as the
    /// digest): the item is in the next digest, never in neither.
    #[tokio::test]
    async fn an_item_batched_while_a_digest_is_sent_gets_the_next_digest() {
        for late_due in [5_000, 500, 1_000] {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path());
            let first = batched(1_000);
            assert!(store.create_notification(first.clone()).await.unwrap());
            assert_eq!(digests_due(&store), [(1_000, "cust".to_owned())]);

            // The worker opens the digest due at 1000 and reads what waits.
            open_digest(&store, "cust", 1_000).await.unwrap();
            let read = batched_ids(&store);
            assert_eq!(read, [first.id]);
            // Meanwhile the router batches another item.
            let late = batched(late_due);
            assert!(store.create_notification(late.clone()).await.unwrap());
            // The digest goes out with what it read.
            let digest = notification(
                "2030-01-01T00:00:01.000Z",
                crate::model::notification::DeliveryState::Pending,
            );
            flush_digest(&store, "cust", 1_000, read, Some(digest), None)
                .await
                .unwrap();

            let waiting = batched_ids(&store);
            assert_eq!(waiting, [late.id], "due {late_due}");
            assert_eq!(
                digests_due(&store),
                [(late_due, "cust".to_owned())],
                "the late item's own digest, due {late_due}"
            );

            // That digest takes the late item and leaves nothing behind.
            open_digest(&store, "cust", late_due).await.unwrap();
            let read = batched_ids(&store);
            flush_digest(&store, "cust", late_due, read, None, None)
                .await
                .unwrap();
            assert!(store.batched("cust").unwrap().is_empty());
            assert!(digests_due(&store).is_empty());
        }
    }
}
