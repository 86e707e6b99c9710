//! The automation engine's state: the queue of domain events, running sequence
//! instances, their timers, and an index from ids (conversation, listing,
//! booking, user) to the instances about them.
//!
//! | tree        | key                          | value                        |
//! |-------------|------------------------------|------------------------------|
//! | `domain`    | event seq (u64)              | `DomainEvent` JSON           |
//! | `instances` | instance id                  | `Instance` JSON              |
//! | `timers`    | due ms (u64) instance `\0` step | empty                     |
//! | `subjects`  | kind `\0` id                 | JSON list of instance ids    |
//!
//! `domain` also holds, behind the queue, failed attempts and the dead-letter
//! list (`quarantine.rs`).
//!
//! sled transactions cannot scan, so the index is a list per id rather than a
//! prefix of keys; its lists are short (the sequences running about one thing).

use std::collections::BTreeSet;

use sled::transaction::UnabortableTransactionError;

use super::writer::OpResult;
use super::writes::{append_message, Tx};
use super::{decode, encode, keys, Delivery, NewMessage, Store, StoreError, Stored};
use crate::domain::{DomainEvent, Instance, StepState, Timer};
use crate::model::Message;

/// A change the engine makes to its state, applied in a writer transaction.
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
    /// A notification to queue (it exists already after a crash and replay:
    /// then nothing changes).
    Notify(Box<crate::model::notification::Notification>),
    /// The engine is done with this domain event.
    Ack(u64),
    /// Forgets the failed attempts recorded for an event or a step that went
    /// through on a retry.
    Forget(super::Held),
}

/// What a due step does when it fires.
#[derive(Debug, Clone)]
pub enum Firing {
    Send(Box<NewMessage>),
    Skip(String),
}

pub(super) fn get_instance(tx: &Tx<'_>, id: &str) -> OpResult<Option<Instance>> {
    Ok(tx
        .instances
        .get(id.as_bytes())?
        .map(|bytes| decode(&bytes))
        .transpose())
}

fn index_update(
    tx: &Tx<'_>,
    instance: &Instance,
    add: bool,
) -> Result<Result<(), StoreError>, UnabortableTransactionError> {
    for key in instance.subject.index_keys() {
        let mut ids: BTreeSet<String> = match tx.subjects.get(key.as_bytes())? {
            Some(bytes) => match decode(&bytes) {
                Ok(ids) => ids,
                Err(e) => return Ok(Err(e)),
            },
            None => BTreeSet::new(),
        };
        if add {
            ids.insert(instance.id.clone());
        } else {
            ids.remove(&instance.id);
        }
        if ids.is_empty() {
            tx.subjects.remove(key.as_bytes())?;
        } else {
            tx.subjects.insert(key.as_bytes(), encode(&ids))?;
        }
    }
    Ok(Ok(()))
}

/// Saves an instance, or forgets it (and its index entries) once nothing of it
/// is pending.
fn save_or_finish(tx: &Tx<'_>, instance: &Instance) -> OpResult<()> {
    if instance.pending().next().is_some() {
        tx.instances
            .insert(instance.id.as_bytes(), encode(instance))?;
        return Ok(Ok(()));
    }
    tx.instances.remove(instance.id.as_bytes())?;
    index_update(tx, instance, false)
}

fn remove_timers(tx: &Tx<'_>, instance: &Instance) -> Result<(), UnabortableTransactionError> {
    for step in instance.pending() {
        tx.timers
            .remove(keys::timer(step.due_ms, &instance.id, &step.name))?;
    }
    Ok(())
}

fn insert_timers(tx: &Tx<'_>, instance: &Instance) -> Result<(), UnabortableTransactionError> {
    for step in instance.pending() {
        tx.timers
            .insert(keys::timer(step.due_ms, &instance.id, &step.name), &[])?;
    }
    Ok(())
}

pub fn apply_change(tx: &Tx<'_>, change: &Change) -> OpResult<bool> {
    match change {
        Change::Start(instance) => {
            if tx.instances.get(instance.id.as_bytes())?.is_some() {
                return Ok(Ok(false));
            }
            if instance.pending().next().is_none() {
                return Ok(Ok(false));
            }
            if let Err(e) = index_update(tx, instance, true)? {
                return Ok(Err(e));
            }
            insert_timers(tx, instance)?;
            tx.instances
                .insert(instance.id.as_bytes(), encode(instance))?;
            Ok(Ok(true))
        }
        Change::Stop(id) => {
            let Some(instance) = get_instance(tx, id)?.transpose() else {
                return Ok(Ok(false));
            };
            let instance = match instance {
                Ok(i) => i,
                Err(e) => return Ok(Err(e)),
            };
            remove_timers(tx, &instance)?;
            tx.instances.remove(id.as_bytes())?;
            index_update(tx, &instance, false).map(|r| r.map(|()| true))
        }
        Change::Replan { instance, steps } => {
            let Some(instance) = get_instance(tx, instance)?.transpose() else {
                return Ok(Ok(false));
            };
            let mut instance = match instance {
                Ok(i) => i,
                Err(e) => return Ok(Err(e)),
            };
            remove_timers(tx, &instance)?;
            // Steps already sent or skipped stay so; a dropped one whose new
            // time is ahead is pending again.
            for step in instance
                .steps
                .iter_mut()
                .filter(|s| matches!(s.state, StepState::Pending | StepState::Dropped))
            {
                match steps.iter().find(|(name, _)| *name == step.name) {
                    Some((_, Ok(due))) => {
                        step.due_ms = *due;
                        step.state = StepState::Pending;
                        step.note = None;
                    }
                    Some((_, Err(reason))) => {
                        step.state = StepState::Dropped;
                        step.note = Some(reason.clone());
                    }
                    None => {}
                }
            }
            insert_timers(tx, &instance)?;
            save_or_finish(tx, &instance).map(|r| r.map(|()| true))
        }
        Change::Notify(notification) => Ok(Ok(super::outbox::create(tx, notification)?)),
        Change::Ack(seq) => {
            tx.domain.remove(&keys::domain(*seq))?;
            Ok(Ok(true))
        }
        Change::Forget(held) => super::quarantine::forget(tx, held),
    }
}

/// Fires one due step: sends its message (or records why not), removes its
/// timer and updates its instance, all in one transaction, so a step is sent
/// exactly once even if the daemon dies right after. A timer that is gone was
/// cancelled (or already fired): nothing happens.
pub fn fire(
    tx: &Tx<'_>,
    timer: &Timer,
    firing: &Firing,
    out: &mut Vec<Delivery>,
) -> OpResult<Option<Message>> {
    let key = keys::timer(timer.due_ms, &timer.instance, &timer.step);
    if tx.timers.get(&key)?.is_none() {
        return Ok(Ok(None));
    }
    let mut instance = match get_instance(tx, &timer.instance)? {
        Ok(Some(instance)) => instance,
        Ok(None) => {
            // A timer without its instance: nothing to send; clear it.
            tx.timers.remove(key)?;
            return Ok(Ok(None));
        }
        Err(e) => {
            // An unreadable instance cannot be sent for; clearing its timer
            // keeps it from blocking the timers behind it.
            tracing::error!(instance = %timer.instance, error = %e, "timer dropped: its instance is unreadable");
            tx.timers.remove(key)?;
            return Ok(Ok(None));
        }
    };
    let Some(index) = instance
        .steps
        .iter()
        .position(|s| s.name == timer.step && s.state == StepState::Pending)
    else {
        tx.timers.remove(key)?;
        return Ok(Ok(None));
    };
    let (state, note, sent) = match firing {
        Firing::Send(new) => {
            let message_id = uuid::Uuid::now_v7().to_string();
            match append_message(tx, new, &message_id, out)? {
                Ok((Stored::Message(message), _)) => (StepState::Sent, None, Some(message)),
                Ok((Stored::Blocked(_), _)) => (
                    StepState::Skipped,
                    Some("the message was blocked".to_owned()),
                    None,
                ),
                Err(e) => (StepState::Skipped, Some(e.to_string()), None),
            }
        }
        Firing::Skip(reason) => (StepState::Skipped, Some(reason.clone()), None),
    };
    tx.timers.remove(key)?;
    instance.steps[index].state = state;
    instance.steps[index].note = note;
    if let Err(e) = save_or_finish(tx, &instance)? {
        return Ok(Err(e));
    }
    Ok(Ok(sent))
}

impl Store {
    /// The oldest domain events the engine has not acknowledged.
    pub fn domain_events(&self, limit: usize) -> Result<Vec<DomainEvent>, StoreError> {
        self.trees
            .domain
            .range(..super::quarantine::QUEUE_END)
            .take(limit)
            .map(|entry| {
                let (key, value) = entry?;
                let mut event: DomainEvent = decode(&value)?;
                event.seq = keys::domain_seq(&key);
                Ok(event)
            })
            .collect()
    }

    pub fn instance(&self, id: &str) -> Result<Option<Instance>, StoreError> {
        self.get(&self.trees.instances, id.as_bytes())
    }

    /// Every running instance whose subject shares an id with `event`'s.
    pub fn instances_about(&self, event: &DomainEvent) -> Result<Vec<Instance>, StoreError> {
        let mut ids = BTreeSet::new();
        for key in event.subject.index_keys() {
            if let Some(list) = self.trees.subjects.get(key.as_bytes())? {
                ids.extend(decode::<Vec<String>>(&list)?);
            }
        }
        let mut instances = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(instance) = self.instance(&id)? {
                instances.push(instance);
            }
        }
        Ok(instances)
    }

    /// Timers due at or before `now_ms`, earliest first.
    pub fn due_timers(&self, now_ms: i64, limit: usize) -> Result<Vec<Timer>, StoreError> {
        let mut due = Vec::new();
        for entry in self
            .trees
            .timers
            .range(..keys::timers_after(now_ms))
            .take(limit)
        {
            let (key, _) = entry?;
            let (due_ms, instance, step) = keys::parse_timer(&key)
                .ok_or_else(|| StoreError::Corrupt("unreadable timer key".into()))?;
            due.push(Timer {
                due_ms,
                instance,
                step,
            });
        }
        Ok(due)
    }

    /// When the earliest pending step is due.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        Ok(self
            .trees
            .timers
            .first()?
            .and_then(|(key, _)| keys::parse_timer(&key))
            .map(|(due, _, _)| due))
    }

    /// The oldest unacknowledged domain event and how many wait. The count is
    /// the span of sequence numbers from the oldest to the newest: the engine
    /// acknowledges in order, so the queue has no holes (two key reads, no scan).
    pub fn domain_backlog(&self) -> Result<Option<(DomainEvent, u64)>, StoreError> {
        // The queue only: the dead-letter records share the tree, after it.
        let queue = || self.trees.domain.range(..super::quarantine::QUEUE_END);
        let (Some((first, value)), Some((last, _))) = (
            queue().next().transpose()?,
            queue().next_back().transpose()?,
        ) else {
            return Ok(None);
        };
        let mut oldest: DomainEvent = decode(&value)?;
        oldest.seq = keys::domain_seq(&first);
        let waiting = keys::domain_seq(&last).saturating_sub(oldest.seq) + 1;
        Ok(Some((oldest, waiting)))
    }

    /// The earliest pending timer, due or not.
    pub fn earliest_timer(&self) -> Result<Option<Timer>, StoreError> {
        let Some((key, _)) = self.trees.timers.first()? else {
            return Ok(None);
        };
        let (due_ms, instance, step) = keys::parse_timer(&key)
            .ok_or_else(|| StoreError::Corrupt("unreadable timer key".into()))?;
        Ok(Some(Timer {
            due_ms,
            instance,
            step,
        }))
    }

    /// How many timers are due at `now_ms` (a scan of the due ones).
    pub fn due_timer_count(&self, now_ms: i64) -> usize {
        self.trees
            .timers
            .range(..keys::timers_after(now_ms))
            .count()
    }

    pub fn pending_timers(&self) -> usize {
        self.trees.timers.len()
    }

    /// Applies the engine's changes in one transaction; says which took effect.
    pub async fn apply_changes(&self, changes: Vec<Change>) -> Result<Vec<bool>, StoreError> {
        self.writer
            .run(move |tx, _| {
                let mut applied = Vec::with_capacity(changes.len());
                for change in &changes {
                    match apply_change(tx, change)? {
                        Ok(done) => applied.push(done),
                        Err(e) => return Ok(Err(e)),
                    }
                }
                Ok(Ok(applied))
            })
            .await
    }

    /// Fires a due step (see [`fire`]); the message it sent, if any.
    pub async fn fire(&self, timer: Timer, firing: Firing) -> Result<Option<Message>, StoreError> {
        self.writer
            .run(move |tx, out| fire(tx, &timer, &firing, out))
            .await
    }
}
