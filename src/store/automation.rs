//! The automation engine's state: the queue of domain events, running sequence
//! instances, their timers, and an index from ids (conversation, listing,
//! booking, user) to the instances about them.
//!
//! | tree        | key                          | value                        |
//! |-------------|------------------------------|------------------------------|
//! | `domain`    | event seq (u64)              | `DomainEvent` JSON           |
//! | `instances` | instance id                  | `Instance` JSON              |
//! | `timers`    | due ms (u64) instance `\0` step | empty                     |
//! | `subjects`  | kind `\0` id `\0` scope `\0` instance | empty (`keys::subject_entries`) |
//!
//! `domain` also holds, behind the queue, failed attempts and the dead-letter
//! list (`quarantine.rs`).
//!
//! The subject index has one key per (id, instance), so starting or stopping
//! an instance writes a few small keys and rewrites nothing. sled transactions
//! cannot scan: it is read by prefix outside the writer
//! ([`Store::instances_about`]). Schema 3 and earlier kept one JSON list per id;
//! opening such a directory rebuilds the index from `instances`
//! ([`rebuild_subject_index`]).

use std::collections::BTreeSet;

use sled::transaction::UnabortableTransactionError;

use super::writer::OpResult;
use super::writes::{append_message, Tx};
use super::{decode, encode, keys, Delivery, NewMessage, Store, StoreError, Stored};
use crate::domain::{DomainEvent, Instance, Timer};
use crate::model::notification::Notification;

/// What a transition of a sequence instance writes (the transition itself is
/// decided by `automation::sequence`): the instance as it is after it, whether
/// it is new, running or finished, and the timers to cancel and to arm.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceWrite {
    pub instance: Instance,
    pub state: Written,
    /// Timers to remove, with their failed attempts (`quarantine.rs`).
    pub cancel: Vec<Timer>,
    pub arm: Vec<Timer>,
}

/// What becomes of the instance record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Saved for the first time, with its subject-index entries.
    Started,
    /// Saved over the stored one.
    Running,
    /// Removed, with its subject-index entries.
    Finished,
}

/// Why an operation of an [`AutomationTx`] failed: sled's (the whole batch is
/// retried or fails) or the operation's own.
#[derive(Debug)]
pub enum TxError {
    Sled(UnabortableTransactionError),
    Store(StoreError),
}

impl From<UnabortableTransactionError> for TxError {
    fn from(e: UnabortableTransactionError) -> TxError {
        TxError::Sled(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> TxError {
        TxError::Store(e)
    }
}

impl TxError {
    /// What the writer makes of an operation's outcome: sled's error goes to
    /// the whole batch, the operation's own to its caller.
    pub(super) fn into_op<T>(result: Result<T, TxError>) -> OpResult<T> {
        match result {
            Ok(value) => Ok(Ok(value)),
            Err(TxError::Store(e)) => Ok(Err(e)),
            Err(TxError::Sled(e)) => Err(e),
        }
    }
}

/// The automation engine's view of one writer transaction: typed reads of its
/// records and the writes it may make. Everything done through it commits (or
/// not) together.
pub struct AutomationTx<'a, 'b> {
    pub(super) tx: &'a Tx<'b>,
    out: std::cell::RefCell<&'a mut Vec<Delivery>>,
}

impl AutomationTx<'_, '_> {
    pub fn instance(&self, id: &str) -> Result<Option<Instance>, TxError> {
        Ok(get_instance(self.tx, id)??)
    }

    /// Writes what a transition decided (see [`InstanceWrite`]).
    pub fn write(&self, write: &InstanceWrite) -> Result<(), TxError> {
        let tx = self.tx;
        for timer in &write.cancel {
            self.remove_timer(timer)?;
        }
        for timer in &write.arm {
            tx.timers
                .insert(keys::timer(timer.due_ms, &timer.instance, &timer.step), &[])?;
        }
        let instance = &write.instance;
        match write.state {
            Written::Started | Written::Running => {
                tx.instances
                    .insert(instance.id.as_bytes(), encode(instance))?;
            }
            Written::Finished => {
                tx.instances.remove(instance.id.as_bytes())?;
            }
        }
        if write.state != Written::Running {
            for key in keys::subject_entries(&instance.subject, &instance.id) {
                if write.state == Written::Started {
                    tx.subjects.insert(key, &[])?;
                } else {
                    tx.subjects.remove(key)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `timer` is armed.
    pub fn armed(&self, timer: &Timer) -> Result<bool, TxError> {
        let key = keys::timer(timer.due_ms, &timer.instance, &timer.step);
        Ok(self.tx.timers.get(key)?.is_some())
    }

    /// Removes `timer` and its failed attempts.
    pub fn remove_timer(&self, timer: &Timer) -> Result<(), TxError> {
        self.tx
            .timers
            .remove(keys::timer(timer.due_ms, &timer.instance, &timer.step))?;
        self.forget(&super::Held::Timer(timer.clone()))
    }

    /// Queues a notification; `false` if it exists already (a replay).
    pub fn notify(&self, notification: &Notification) -> Result<bool, TxError> {
        super::outbox::create(self.tx, notification)
    }

    /// Takes the domain event off the queue, with its failed attempts.
    pub fn ack(&self, seq: u64) -> Result<(), TxError> {
        self.tx.domain.remove(&keys::domain(seq))?;
        self.forget(&super::Held::Event(seq))
    }

    /// Forgets the failed attempts recorded for an event or a step.
    fn forget(&self, held: &super::Held) -> Result<(), TxError> {
        super::quarantine::forget(self.tx, held)??;
        Ok(())
    }

    /// Stores an automated message (see `writes::append_message`); an error
    /// of the message's own (the conversation is gone) is returned as such.
    pub fn append_message(&self, new: &NewMessage) -> Result<Result<Stored, StoreError>, TxError> {
        let message_id = uuid::Uuid::now_v7().to_string();
        let mut out = self.out.borrow_mut();
        Ok(append_message(self.tx, new, &message_id, &mut out)?.map(|(stored, _)| stored))
    }
}

pub(super) fn get_instance(tx: &Tx<'_>, id: &str) -> OpResult<Option<Instance>> {
    Ok(tx
        .instances
        .get(id.as_bytes())?
        .map(|bytes| decode(&bytes))
        .transpose())
}

/// Replaces whatever `subjects` holds with the entries of every instance in
/// `instances` (the upgrade from schema 3's JSON lists). An unreadable
/// instance is left out of the index, logged: no event finds it, and its
/// timers clear it when they fire (`automation::changes::fire`).
pub(super) fn rebuild_subject_index(
    instances: &sled::Tree,
    subjects: &sled::Tree,
) -> Result<usize, StoreError> {
    subjects.clear()?;
    let mut indexed = 0;
    for entry in instances.iter() {
        let (id, value) = entry?;
        match decode::<Instance>(&value) {
            Ok(instance) => {
                for key in keys::subject_entries(&instance.subject, &instance.id) {
                    subjects.insert(key, &[])?;
                }
                indexed += 1;
            }
            Err(e) => tracing::error!(instance = %String::from_utf8_lossy(&id), error = %e,
                "instance left out of the subject index: it is unreadable"),
        }
    }
    Ok(indexed)
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

    /// Overwrites the record of instance `id` with bytes that do not decode.
    #[cfg(test)]
    pub fn corrupt_instance(&self, id: &str) -> Result<(), StoreError> {
        self.trees.instances.insert(id, &b"{not json"[..])?;
        Ok(())
    }

    /// The queued domain event `seq`, if it is still queued.
    pub fn domain_event(&self, seq: u64) -> Result<Option<DomainEvent>, StoreError> {
        let event: Option<DomainEvent> = self.get(&self.trees.domain, &keys::domain(seq))?;
        Ok(event.map(|e| DomainEvent { seq, ..e }))
    }

    /// The running instances `event` may concern: a superset of those
    /// `Subject::concerns` accepts, read by prefix from the subject index
    /// (`keys::subject_scans`), so an event reads its own conversation's
    /// instances and not those of the provider's other conversations. Read
    /// outside the writer (sled transactions cannot scan): the engine is the
    /// only writer of instances, and the writer re-reads each one it changes.
    pub fn instances_about(&self, event: &DomainEvent) -> Result<Vec<Instance>, StoreError> {
        let mut ids = BTreeSet::new();
        for prefix in keys::subject_scans(&event.subject) {
            for entry in self.trees.subjects.scan_prefix(prefix) {
                let (key, _) = entry?;
                ids.insert(keys::instance_of_subject_entry(&key).to_vec());
            }
        }
        let mut instances = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(instance) = self.get(&self.trees.instances, &id)? {
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

    /// Runs `op`, a `what` operation (see [`super::writer::Writer::run`]), in
    /// one writer transaction: everything it writes through the
    /// [`AutomationTx`] commits together (durably, under `group_commit`)
    /// before this returns; an error of its own is returned, with whatever it
    /// wrote before it in the batch (operations check before they write).
    pub async fn transact<T, F>(&self, what: &'static str, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&AutomationTx<'_, '_>) -> Result<T, TxError> + Send + 'static,
    {
        self.writer
            .run(what, move |tx, out| {
                let atx = AutomationTx {
                    tx,
                    out: std::cell::RefCell::new(out),
                };
                TxError::into_op(op(&atx))
            })
            .await
    }
}
