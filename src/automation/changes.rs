//! The engine's decisions about one event, and how a batch of them is written:
//! each [`Change`] is applied inside one writer transaction through the
//! sequence state machine ([`super::sequence`]) on the instance as the
//! transaction reads it. [`Overlay`] lets the engine evaluate several events
//! before writing: each sees the instances as the batch's earlier changes left
//! them.

use std::collections::HashMap;

use crate::domain::{DomainEvent, Instance, StepState, Timer};
use crate::model::notification::Notification;
use crate::model::Message;
use crate::store::{
    AutomationTx, InstanceWrite, NewMessage, Store, StoreError, Stored, TxError, Written,
};

use super::sequence;
use crate::analytics::experiments::{self, NewExposure};
use crate::model::experiment::UnitKind;

/// A change the engine makes to its state.
#[derive(Debug, Clone)]
pub enum Change {
    /// Starts the instance unless one with its id is running.
    Start(Box<Instance>),
    /// Stops the instance: its pending steps will not fire.
    Stop(String),
    /// Moves the instance's pending (and dropped) steps: each to a new time, or
    /// dropped (with the reason).
    Replan {
        instance: String,
        steps: Vec<(String, Result<i64, String>)>,
    },
    /// A notification to queue; written with its event's acknowledgement, so
    /// each event is routed once.
    Notify(Box<Notification>),
    /// A unit's first exposure to an experiment: the `Start` or `Replan`
    /// before it in the batch planned instance `instance` (run `run`) with a
    /// variant's timing. Written only if that took effect and left a step
    /// pending (a plan that starts nothing, because the sequence runs already
    /// for the unit or every step is dropped, exposes no one); the first one
    /// written stands.
    Expose {
        exposure: Box<NewExposure>,
        instance: String,
        run: String,
    },
    /// The engine is done with this domain event (its failed attempts go too).
    Ack(u64),
    /// Folds the domain event into the analytics (`analytics::record`):
    /// pushed for every event taken from the queue, before its rules are
    /// evaluated, so rules failing on it never lose its analytics; folding
    /// it again (a retry) changes nothing.
    Record(Box<DomainEvent>),
}

/// What `change` writes, given the instance it is about as it stands
/// (`current`); `None` when it changes no instance.
fn transition(change: &Change, current: Option<Instance>) -> Option<InstanceWrite> {
    match change {
        Change::Start(new) => sequence::start(current.as_ref(), Instance::clone(new)),
        Change::Stop(_) => current.map(sequence::stop),
        Change::Replan { steps, .. } => current.map(|i| sequence::replan(i, steps)),
        Change::Notify(_) | Change::Expose { .. } | Change::Ack(_) | Change::Record(_) => None,
    }
}

/// The instance a change is about.
fn about(change: &Change) -> Option<&str> {
    match change {
        Change::Start(new) => Some(&new.id),
        Change::Stop(id) | Change::Replan { instance: id, .. } => Some(id),
        Change::Notify(_) | Change::Expose { .. } | Change::Ack(_) | Change::Record(_) => None,
    }
}

/// The first exposures `exposures` as made by the `Start` or `Replan` of
/// `instance`, to go after it in the batch.
pub fn exposed_by(instance: &Instance, exposures: Vec<NewExposure>) -> Vec<Change> {
    exposures
        .into_iter()
        .map(|exposure| Change::Expose {
            exposure: Box::new(exposure),
            instance: instance.id.clone(),
            run: instance.run.clone(),
        })
        .collect()
}

/// Whether `instance` (as it stands after the change planning it) is run
/// `run` with a step pending: the plan an exposure goes with took effect.
fn planned(instance: Option<&Instance>, run: &str) -> bool {
    instance.is_some_and(|i| i.run == run && i.pending().next().is_some())
}

/// Applies one change in `tx`; says whether it took effect.
pub fn apply(tx: &AutomationTx<'_, '_>, change: &Change) -> Result<bool, TxError> {
    match change {
        Change::Notify(notification) => tx.notify(notification),
        Change::Expose {
            exposure,
            instance,
            run,
        } => {
            if planned(tx.instance(instance)?.as_ref(), run) {
                experiments::expose(&tx.analytics(), exposure)
            } else {
                Ok(false)
            }
        }
        Change::Ack(seq) => tx.ack(*seq).map(|()| true),
        Change::Record(event) => crate::analytics::record(&tx.analytics(), event).map(|()| true),
        _ => {
            let current = match about(change) {
                Some(id) => tx.instance(id)?,
                None => None,
            };
            match transition(change, current) {
                Some(write) => tx.write(&write).map(|()| true),
                None => Ok(false),
            }
        }
    }
}

/// Applies `changes` in one writer transaction; says which took effect.
pub async fn apply_changes(store: &Store, changes: Vec<Change>) -> Result<Vec<bool>, StoreError> {
    store
        .transact("automation", move |tx| {
            changes.iter().map(|c| apply(tx, c)).collect()
        })
        .await
}

/// What a due step does when it fires.
#[derive(Debug, Clone)]
pub enum Firing {
    /// The message, and the recipient unit's first exposure to the
    /// experiment that chose its step (written only if the message is).
    Send(Box<NewMessage>, Option<Box<NewExposure>>),
    Skip(String),
}

/// A step's message, stored by [`fire`].
#[derive(Debug)]
pub struct Sent {
    pub message: Message,
    /// The firing stored the recipient unit's first exposure (to count once
    /// committed); `false` when it carried none or the unit had one.
    pub exposed: bool,
}

/// Fires one due step: sends its message (or records why not), removes its
/// timer (and its failed attempts) and updates its instance, all in one
/// transaction, so a step is sent exactly once even if the daemon dies right
/// after. A timer that is gone was cancelled (or already fired): nothing
/// happens. A timer whose instance is gone or unreadable is cleared, so it
/// cannot block the timers behind it. A message composed for a first
/// exposure to a variant other than the one the unit was exposed to since
/// (by another writer, between the decision and now) is not sent and the
/// timer stays armed: the next round composes it again with the stored
/// variant, so a message's provenance always names the unit's variant.
pub async fn fire(store: &Store, timer: Timer, firing: Firing) -> Result<Option<Sent>, StoreError> {
    store
        .transact("step", move |tx| {
            if !tx.armed(&timer)? {
                return Ok(None);
            }
            let instance = match tx.instance(&timer.instance) {
                Ok(Some(instance)) => instance,
                Ok(None) => return tx.remove_timer(&timer).map(|()| None),
                Err(TxError::Store(e)) => {
                    tracing::error!(instance = %timer.instance, error = %e,
                        "timer dropped: its instance is unreadable");
                    return tx.remove_timer(&timer).map(|()| None);
                }
                Err(e) => return Err(e),
            };
            if !instance.pending().any(|s| s.name == timer.step) {
                // Stopped, re-planned or fired already: a stale timer.
                return tx.remove_timer(&timer).map(|()| None);
            }
            if let Firing::Send(_, Some(exposure)) = &firing {
                let stored = tx
                    .analytics()
                    .unit_exposures(exposure.unit, &exposure.unit_id)?;
                let stored = stored.experiments.get(&exposure.experiment);
                if let Some(stored) = stored.filter(|s| s.variant != exposure.variant) {
                    tracing::info!(instance = %timer.instance, step = %timer.step,
                        experiment = %exposure.experiment, variant = %stored.variant,
                        "step composed again: its unit was exposed to another variant meanwhile");
                    return Ok(None);
                }
            }
            let (state, note, sent) = match &firing {
                Firing::Send(new, exposure) => match tx.append_message(new)? {
                    Ok(Stored::Message(message)) => {
                        let exposed = match exposure {
                            Some(exposure) => experiments::expose(&tx.analytics(), exposure)?,
                            None => false,
                        };
                        (StepState::Sent, None, Some(Sent { message, exposed }))
                    }
                    Ok(Stored::Blocked(_)) => (
                        StepState::Skipped,
                        Some("the message was blocked".to_owned()),
                        None,
                    ),
                    Err(e) => (StepState::Skipped, Some(e.to_string()), None),
                },
                Firing::Skip(reason) => (StepState::Skipped, Some(reason.clone()), None),
            };
            match sequence::fired(instance, &timer, state, note) {
                Some(write) => tx.write(&write).map(|()| sent),
                // Cannot happen after the check above; should it, the timer
                // goes all the same, so the scheduler cannot fire it forever.
                None => tx.remove_timer(&timer).map(|()| sent),
            }
        })
        .await
}

/// Takes the entry `id` off the dead-letter list and queues it again, with
/// fresh attempts, in one transaction: an event behind those waiting now,
/// marked re-driven at `now` (RFC 3339), so its sequences are planned from
/// then rather than fire in a burst what fell due meanwhile ([`super::plan`]); a
/// step pending again at its old time (so at once), if its sequence still
/// runs (a stop since has the last word). `None` if `id` is not on the list.
pub async fn redrive(
    store: &Store,
    id: &str,
    now: String,
) -> Result<Option<crate::model::pipeline::DeadItem>, StoreError> {
    let id = id.to_owned();
    store
        .transact("redrive", move |tx| {
            tx.redrive(&id, &now, |dead| {
                let timer = Timer {
                    due_ms: dead.due_ms,
                    instance: dead.instance.clone(),
                    step: dead.step.clone(),
                };
                let again = tx
                    .instance(&timer.instance)?
                    .and_then(|i| sequence::redrive(i, &timer.step, timer.due_ms));
                match again {
                    Some(write) => tx.write(&write),
                    None => {
                        tracing::info!(instance = %timer.instance, step = %timer.step,
                            "re-driven step not armed: its sequence no longer runs");
                        Ok(())
                    }
                }
            })
        })
        .await
}

/// The instances as a batch of changes not yet written leaves them: `Some`
/// for one started or changed by the batch, `None` for one it finished.
#[derive(Debug, Default)]
pub struct Overlay {
    instances: HashMap<String, Option<Instance>>,
    /// First exposures the batch makes: (experiment, unit kind, unit id) to
    /// the variant's name.
    exposures: HashMap<(String, UnitKind, String), String>,
}

impl Overlay {
    /// The instance `id` as the batch leaves it (the store's if the batch
    /// has not touched it).
    pub fn instance(&self, store: &Store, id: &str) -> Result<Option<Instance>, StoreError> {
        match self.instances.get(id) {
            Some(instance) => Ok(instance.clone()),
            None => store.instance(id),
        }
    }

    /// `found` (the store's instances an event may concern) as the batch
    /// leaves them, with those the batch started that `event` concerns.
    pub fn about(&self, event: &DomainEvent, found: Vec<Instance>) -> Vec<Instance> {
        let mut instances: Vec<Instance> = found
            .into_iter()
            .filter(|i| !self.instances.contains_key(&i.id))
            .collect();
        instances.extend(
            self.instances
                .values()
                .flatten()
                .filter(|i| event.subject.concerns(&i.subject))
                .cloned(),
        );
        instances
    }

    /// The variant the batch exposed unit `unit_id` of `kind` to in
    /// `experiment`, if it did.
    pub fn exposed(&self, experiment: &str, kind: UnitKind, unit_id: &str) -> Option<&str> {
        self.exposures
            .get(&(experiment.to_owned(), kind, unit_id.to_owned()))
            .map(String::as_str)
    }

    /// Records what `change` does to the instance it is about (or the
    /// exposure it makes).
    pub fn record(&mut self, store: &Store, change: &Change) -> Result<(), StoreError> {
        if let Change::Expose {
            exposure: e,
            instance,
            run,
        } = change
        {
            if planned(self.instance(store, instance)?.as_ref(), run) {
                let key = (e.experiment.clone(), e.unit, e.unit_id.clone());
                self.exposures
                    .entry(key)
                    .or_insert_with(|| e.variant.clone());
            }
        }
        let Some(id) = about(change) else {
            return Ok(());
        };
        let current = self.instance(store, id)?;
        if let Some(write) = transition(change, current) {
            let after = (write.state != Written::Finished).then_some(write.instance);
            self.instances.insert(id.to_owned(), after);
        }
        Ok(())
    }

    /// Forgets everything (the batch was written).
    pub fn clear(&mut self) {
        self.instances.clear();
        self.exposures.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::Subject;

    fn instance(id: &str, due_ms: i64) -> Instance {
        let subject = Subject {
            conversation_id: Some(format!("conv-{id}")),
            ..Subject::default()
        };
        crate::domain::test_instance(id, subject, due_ms)
    }

    fn store(dir: &std::path::Path) -> Store {
        let config = crate::config::StorageConfig {
            cache_capacity_mb: 16,
            ..Default::default()
        };
        Store::open(dir, &config, Arc::new(|_| {})).unwrap()
    }

    #[tokio::test]
    async fn an_unreadable_instance_drops_its_timer_instead_of_blocking_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let started = apply_changes(
            &store,
            vec![
                Change::Start(Box::new(instance("a", 1_000))),
                Change::Start(Box::new(instance("b", 2_000))),
            ],
        )
        .await
        .unwrap();
        assert_eq!(started, [true, true]);
        store.corrupt_instance("a").unwrap();
        let due = store.due_timers(5_000, 10).unwrap();
        assert_eq!(due.len(), 2);
        let first = Timer {
            due_ms: 1_000,
            instance: "a".into(),
            step: "s".into(),
        };
        assert_eq!(due[0], first);
        let fired = fire(&store, first, Firing::Skip("test".into()))
            .await
            .unwrap();
        assert!(fired.is_none());
        assert_eq!(
            store.next_due().unwrap(),
            Some(2_000),
            "the next timer is up"
        );
    }

    /// Events of one batch see each other's effect before it is written: a
    /// start then a stop of the same instance leave nothing running.
    #[tokio::test]
    async fn the_overlay_shows_the_batch_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let mut overlay = Overlay::default();
        let start = Change::Start(Box::new(instance("a", 1_000)));
        overlay.record(&store, &start).unwrap();
        assert!(overlay.instance(&store, "a").unwrap().is_some());
        let event = DomainEvent {
            subject: instance("a", 0).subject,
            ..instance("a", 0).trigger
        };
        assert_eq!(overlay.about(&event, Vec::new()).len(), 1);
        overlay.record(&store, &Change::Stop("a".into())).unwrap();
        assert!(overlay.instance(&store, "a").unwrap().is_none());
        assert!(overlay.about(&event, Vec::new()).is_empty());
        assert!(store.instance("a").unwrap().is_none(), "nothing written");
    }

    fn customer_message(seq: u64, content: &str) -> DomainEvent {
        DomainEvent {
            seq,
            name: "message_sent".into(),
            aliases: vec!["inquiry_received".into()],
            at: "2030-01-01T10:00:00Z".into(),
            redriven_at: None,
            subject: Subject {
                conversation_id: Some("c1".into()),
                listing_id: Some("l1".into()),
                customer_id: Some("alice".into()),
                provider_id: Some("bob".into()),
                user_id: Some("alice".into()),
                ..Subject::default()
            },
            data: serde_json::json!({"seq": 1, "content": content, "type": "text"}),
        }
    }

    /// An event recorded again (the engine pushes it again after a failed
    /// rule evaluation wrote the batch, or after a restart before its
    /// acknowledgement) and the same event re-driven from the dead-letter
    /// list (a new seq, `redriven_at` set) count once.
    #[tokio::test]
    async fn an_event_recorded_again_or_redriven_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let event = customer_message(7, "hello");
        let record = || Change::Record(Box::new(event.clone()));
        apply_changes(&store, vec![record()]).await.unwrap();
        apply_changes(&store, vec![record(), record()])
            .await
            .unwrap();
        let redriven = DomainEvent {
            seq: 9,
            redriven_at: Some("2030-01-02T00:00:00Z".into()),
            ..event.clone()
        };
        apply_changes(&store, vec![Change::Record(Box::new(redriven))])
            .await
            .unwrap();
        let metrics = store.conversation_metrics("c1").unwrap().unwrap();
        assert_eq!(metrics.messages.total, 1);
        assert_eq!(metrics.messages.customer, 1);
        let days = store
            .provider_days("bob", "2030-01-01", "2030-01-01")
            .unwrap();
        assert_eq!(days.len(), 1);
        assert_eq!(days[0].1.inquiries, 1);
        assert_eq!(days[0].1.messages.customer, 1);
        // A later event still counts.
        let next = DomainEvent {
            seq: 10,
            ..customer_message(10, "still there?")
        };
        apply_changes(&store, vec![Change::Record(Box::new(next))])
            .await
            .unwrap();
        let metrics = store.conversation_metrics("c1").unwrap().unwrap();
        assert_eq!(metrics.messages.customer, 2);
        assert_eq!(
            store.provider_conversations("bob", 0, i64::MAX).unwrap(),
            ["c1"]
        );
    }

    /// An event whose fold meets an unreadable record (here the provider's
    /// daily figures, read after the conversation's record is folded) leaves
    /// nothing of itself behind, is counted as skipped, and moves the
    /// watermark, so it is not tried again.
    #[tokio::test]
    async fn an_event_skipped_over_an_unreadable_record_writes_none_of_its_fold() {
        use metrics_exporter_prometheus::PrometheusBuilder;
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        store.corrupt_daily("bob", "2030-01-01").unwrap();
        let recorder = Arc::new(PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let event = customer_message(7, "hello");
        store
            .transact("test", move |tx| {
                metrics::with_local_recorder(&*recorder, || {
                    crate::analytics::record(&tx.analytics(), &event)
                })
            })
            .await
            .unwrap();
        assert_eq!(store.conversation_metrics("c1").unwrap(), None);
        assert!(store
            .provider_conversations("bob", 0, i64::MAX)
            .unwrap()
            .is_empty());
        assert!(
            handle
                .render()
                .contains("parleyd_analytics_skipped_events_total 1"),
            "{}",
            handle.render()
        );
        let folded = store
            .transact("test", |tx| tx.analytics().folded_seq())
            .await
            .unwrap();
        assert_eq!(folded, 7);
    }

    fn exposure(unit_id: &str) -> NewExposure {
        NewExposure {
            experiment: "timing".into(),
            variant: "fast".into(),
            unit: UnitKind::Conversation,
            unit_id: unit_id.into(),
            at: "2030-01-01T00:00:00Z".into(),
            metric: crate::model::experiment::Metric {
                kind: crate::model::experiment::MetricKind::Replied,
                window_ms: 1_000,
            },
        }
    }

    /// A timing experiment's exposure goes with the start that carries it:
    /// a start that does nothing (the sequence runs already for the unit,
    /// or every step is dropped) exposes no one, in the batch's overlay as
    /// in the store.
    #[tokio::test]
    async fn an_exposure_takes_effect_only_with_the_start_that_carries_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let batch = |instance: Instance, unit: &str| {
            let exposures = exposed_by(&instance, vec![exposure(unit)]);
            [vec![Change::Start(Box::new(instance))], exposures].concat()
        };
        let exposed = |unit: &str| {
            store
                .unit_exposures(UnitKind::Conversation, unit)
                .unwrap()
                .experiments
                .get("timing")
                .map(|e| e.variant.clone())
        };

        let mut dropped = instance("d", 1_000);
        dropped.steps[0].state = StepState::Dropped;
        let mut overlay = Overlay::default();
        for change in batch(dropped.clone(), "u-dropped") {
            overlay.record(&store, &change).unwrap();
        }
        assert_eq!(
            overlay.exposed("timing", UnitKind::Conversation, "u-dropped"),
            None
        );
        let applied = apply_changes(&store, batch(dropped, "u-dropped"))
            .await
            .unwrap();
        assert_eq!(applied, [false, false]);
        assert_eq!(exposed("u-dropped"), None);

        let applied = apply_changes(&store, batch(instance("a", 1_000), "u-first"))
            .await
            .unwrap();
        assert_eq!(applied, [true, true]);
        assert_eq!(exposed("u-first").as_deref(), Some("fast"));

        let again = Instance {
            run: "run-again".into(),
            ..instance("a", 2_000)
        };
        let mut overlay = Overlay::default();
        for change in batch(again.clone(), "u-running") {
            overlay.record(&store, &change).unwrap();
        }
        assert_eq!(
            overlay.exposed("timing", UnitKind::Conversation, "u-running"),
            None
        );
        let applied = apply_changes(&store, batch(again, "u-running"))
            .await
            .unwrap();
        assert_eq!(applied, [false, false], "a already runs");
        assert_eq!(exposed("u-running"), None);
    }
}
