//! The delivery state machine, as plain functions over the records: how one
//! notification's delivery on one lane moves. [`super::outbox`] runs each
//! step in one store transaction; the store keeps the record and the keys it
//! implies.
//!
//! ```text
//!  pending --begin_attempt--> pending (attempts + 1, due at the lease's end)
//!  pending --finish--> delivered | suppressed | dead | pending (retry, hold)
//!  dead --redrive--> pending (attempts 0, due now)
//!  batched --deliver_in_digest--> delivered
//! ```

use crate::model::notification::{ChannelDelivery, DeliveryState, Lane, Notification, Outcome};

/// `notification`'s delivery on `lane`, if it is in `state`.
fn delivery_in(
    notification: &mut Notification,
    lane: Lane,
    state: DeliveryState,
) -> Option<&mut ChannelDelivery> {
    notification
        .deliveries
        .iter_mut()
        .find(|d| d.channel == lane && d.state == state)
}

/// Records an attempt about to be made: the attempt count goes up and the
/// delivery falls due again at `lease_until_ms` (ms since the epoch), so a
/// crash during the attempt retries it then. `false` (nothing changed) when
/// the delivery is not pending.
pub fn begin_attempt(notification: &mut Notification, lane: Lane, lease_until_ms: i64) -> bool {
    let Some(delivery) = delivery_in(notification, lane, DeliveryState::Pending) else {
        return false;
    };
    delivery.attempts += 1;
    delivery.due_ms = lease_until_ms;
    true
}

/// What recording an outcome did.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    /// The delivery was not pending (answered meanwhile): nothing changed.
    NotPending,
    Recorded,
    /// Recorded, and the recipient's devices get the `notification` event
    /// (the notification's view): an in-app delivery is that event.
    Announce {
        user_id: String,
    },
}

/// Records how a pending delivery went, at `at` (RFC 3339): delivered,
/// retried or held (due again then), dead, or suppressed with the reason.
pub fn finish(
    notification: &mut Notification,
    lane: Lane,
    outcome: &Outcome,
    at: &str,
) -> Finished {
    let Some(delivery) = delivery_in(notification, lane, DeliveryState::Pending) else {
        return Finished::NotPending;
    };
    delivery.updated_at = Some(at.to_owned());
    match outcome {
        Outcome::Delivered => {
            delivery.state = DeliveryState::Delivered;
            delivery.note = None;
        }
        Outcome::Retry { at_ms, error } => {
            delivery.due_ms = *at_ms;
            delivery.note = Some(error.clone());
        }
        Outcome::Hold { until_ms } => delivery.due_ms = *until_ms,
        Outcome::Dead(error) => {
            delivery.state = DeliveryState::Dead;
            delivery.note = Some(error.clone());
        }
        Outcome::Suppressed(reason) => {
            delivery.state = DeliveryState::Suppressed;
            delivery.note = Some(reason.clone());
        }
    }
    match (&notification.user_id, lane, outcome) {
        (Some(user_id), Lane::InApp, Outcome::Delivered) => Finished::Announce {
            user_id: user_id.clone(),
        },
        _ => Finished::Recorded,
    }
}

/// Puts a dead delivery back: pending, due at `now_ms`, attempts reset.
/// `false` (nothing changed) if it is not dead.
pub fn redrive(notification: &mut Notification, lane: Lane, now_ms: i64) -> bool {
    let Some(delivery) = delivery_in(notification, lane, DeliveryState::Dead) else {
        return false;
    };
    delivery.state = DeliveryState::Pending;
    delivery.attempts = 0;
    delivery.due_ms = now_ms;
    true
}

/// Marks every batched delivery of `item` delivered through the digest
/// `digest_id` (none when no digest was needed: nothing left to send).
pub fn deliver_in_digest(item: &mut Notification, digest_id: Option<&str>) {
    for delivery in &mut item.deliveries {
        if delivery.state == DeliveryState::Batched {
            delivery.state = DeliveryState::Delivered;
            delivery.note = digest_id.map(|id| format!("in digest {id}"));
        }
    }
}

/// Whether a digest falling due at `due_ms` opens the user's digest whose
/// due time is `armed` (the store's `w` key): only if it is still this one.
/// Once open, an item batched meanwhile arms a digest of its own instead of
/// counting on this one, which may have read the items already.
pub fn opens(armed: Option<i64>, due_ms: i64) -> bool {
    armed == Some(due_ms)
}

/// Whether a notification is finished with: every delivery delivered or
/// suppressed. A dead one stays for operators until re-driven.
pub fn finished(notification: &Notification) -> bool {
    notification.deliveries.iter().all(|d| {
        matches!(
            d.state,
            DeliveryState::Delivered | DeliveryState::Suppressed
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::notification::Priority;

    fn notification(user: Option<&str>, lanes: &[(Lane, DeliveryState)]) -> Notification {
        Notification {
            id: "n1".into(),
            kind: "reply".into(),
            priority: Priority::Medium,
            user_id: user.map(str::to_owned),
            created_at: "2030-01-01T00:00:00.000Z".into(),
            event: "message.sent".into(),
            conversation_id: None,
            message_seq: None,
            title: "t".into(),
            text: "x".into(),
            html: None,
            attachments: Vec::new(),
            payload: serde_json::Value::Null,
            deliveries: lanes
                .iter()
                .map(|&(lane, state)| ChannelDelivery {
                    state,
                    ..ChannelDelivery::new(lane, 100)
                })
                .collect(),
        }
    }

    #[test]
    fn an_attempt_counts_and_leases_only_a_pending_delivery() {
        let mut n = notification(Some("u"), &[(Lane::Email, DeliveryState::Pending)]);
        assert!(begin_attempt(&mut n, Lane::Email, 5_000));
        assert!(begin_attempt(&mut n, Lane::Email, 9_000));
        let d = n.delivery(Lane::Email).unwrap();
        assert_eq!((d.attempts, d.due_ms), (2, 9_000));

        let before = n.clone();
        assert!(!begin_attempt(&mut n, Lane::Sms, 1), "no such lane");
        n.deliveries[0].state = DeliveryState::Dead;
        assert!(!begin_attempt(&mut n, Lane::Email, 1), "not pending");
        assert_eq!(n.deliveries[0].attempts, before.deliveries[0].attempts);
    }

    #[test]
    fn each_outcome_moves_the_delivery_where_it_says() {
        let cases = [
            (Outcome::Delivered, DeliveryState::Delivered, 100, None),
            (
                Outcome::Retry {
                    at_ms: 700,
                    error: "503".into(),
                },
                DeliveryState::Pending,
                700,
                Some("503"),
            ),
            (
                Outcome::Hold { until_ms: 800 },
                DeliveryState::Pending,
                800,
                None,
            ),
            (
                Outcome::Dead("refused".into()),
                DeliveryState::Dead,
                100,
                Some("refused"),
            ),
            (
                Outcome::Suppressed("read".into()),
                DeliveryState::Suppressed,
                100,
                Some("read"),
            ),
        ];
        for (outcome, state, due_ms, note) in cases {
            let mut n = notification(Some("u"), &[(Lane::Push, DeliveryState::Pending)]);
            assert_eq!(
                finish(&mut n, Lane::Push, &outcome, "at"),
                Finished::Recorded
            );
            let d = n.delivery(Lane::Push).unwrap();
            assert_eq!(d.state, state, "{outcome:?}");
            assert_eq!(d.due_ms, due_ms, "{outcome:?}");
            assert_eq!(d.note.as_deref(), note, "{outcome:?}");
            assert_eq!(d.updated_at.as_deref(), Some("at"));
        }
    }

    #[test]
    fn only_a_delivered_in_app_notification_with_a_recipient_is_announced() {
        let mut n = notification(Some("u"), &[(Lane::InApp, DeliveryState::Pending)]);
        match finish(&mut n, Lane::InApp, &Outcome::Delivered, "at") {
            Finished::Announce { user_id } => assert_eq!(user_id, "u"),
            other => panic!("{other:?}"),
        }
        let mut webhook = notification(None, &[(Lane::InApp, DeliveryState::Pending)]);
        assert_eq!(
            finish(&mut webhook, Lane::InApp, &Outcome::Delivered, "at"),
            Finished::Recorded
        );
        let mut suppressed = notification(Some("u"), &[(Lane::InApp, DeliveryState::Pending)]);
        let outcome = Outcome::Suppressed("read".into());
        assert_eq!(
            finish(&mut suppressed, Lane::InApp, &outcome, "at"),
            Finished::Recorded
        );
        assert_eq!(
            finish(&mut suppressed, Lane::InApp, &Outcome::Delivered, "at"),
            Finished::NotPending,
            "answered already"
        );
    }

    #[test]
    fn a_redrive_resets_a_dead_delivery_only() {
        let mut n = notification(Some("u"), &[(Lane::Sms, DeliveryState::Pending)]);
        assert!(!redrive(&mut n, Lane::Sms, 42), "pending, not dead");
        finish(&mut n, Lane::Sms, &Outcome::Dead("x".into()), "at");
        n.deliveries[0].attempts = 5;
        assert!(redrive(&mut n, Lane::Sms, 42));
        let d = n.delivery(Lane::Sms).unwrap();
        assert_eq!(
            (d.state, d.attempts, d.due_ms),
            (DeliveryState::Pending, 0, 42)
        );
    }

    #[test]
    fn a_digest_delivers_the_batched_deliveries_and_opens_only_its_own_due_time() {
        let mut n = notification(
            Some("u"),
            &[
                (Lane::Email, DeliveryState::Batched),
                (Lane::InApp, DeliveryState::Delivered),
            ],
        );
        deliver_in_digest(&mut n, Some("d1"));
        assert!(finished(&n));
        assert_eq!(n.deliveries[0].note.as_deref(), Some("in digest d1"));
        assert_eq!(n.deliveries[1].note, None, "untouched");

        assert!(opens(Some(1_000), 1_000));
        assert!(!opens(Some(500), 1_000), "re-armed sooner by a later item");
        assert!(!opens(None, 1_000));
    }

    #[test]
    fn dead_and_pending_notifications_are_not_finished() {
        for state in [
            DeliveryState::Dead,
            DeliveryState::Pending,
            DeliveryState::Batched,
        ] {
            let n = notification(
                Some("u"),
                &[(Lane::Email, DeliveryState::Delivered), (Lane::Push, state)],
            );
            assert!(!finished(&n), "{state:?}");
        }
    }
}
