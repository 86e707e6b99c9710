//! The automation pipeline's failed attempts and dead-letter list. They live in
//! the `domain` tree, behind its queue: sled transactions span at most 14 trees,
//! all taken, and the engine must move an event (or a timer) to the list in the
//! same transaction that takes it off its queue.
//!
//! | key (in `domain`)                  | value                               |
//! |------------------------------------|-------------------------------------|
//! | `0xFF a e` event seq (u64)         | `Attempts` JSON: a queued event's   |
//! | `0xFF a t` timer key               | `Attempts` JSON: a due step's       |
//! | `0xFF d` id (uuid v7)              | `DeadItem` JSON: the dead-letter list |
//! | `0xFF s`                           | u64: the last event seq given (`writes::DomainSeq`) |
//!
//! Queue keys are 8-byte big-endian seqs, which stay below `0xFF` (it would
//! take 2^63 events), so [`QUEUE_END`] bounds the queue.

use serde::{Deserialize, Serialize};

use super::automation::{get_instance, AutomationTx, TxError};
use super::writer::OpResult;
use super::writes::{emit, Tx};
use super::{decode, encode, keys, Store, StoreError};
use crate::domain::{DomainEvent, Timer};
use crate::model::format_time;
use crate::model::pipeline::{DeadItem, DeadKind, DeadTimer};

/// Every key of the queue is below it.
pub const QUEUE_END: [u8; 1] = [0xFF];
const ATTEMPTS: [u8; 2] = [0xFF, b'a'];
const DEAD: [u8; 2] = [0xFF, b'd'];
/// The last domain event number given, so that none is reused.
pub const LAST_SEQ: [u8; 2] = [0xFF, b's'];

/// What the engine failed to process: a queued event (by seq) or a due step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    Event(u64),
    Timer(Timer),
}

impl Held {
    fn attempts_key(&self) -> Vec<u8> {
        match self {
            Held::Event(seq) => [&ATTEMPTS[..], b"e", &keys::domain(*seq)].concat(),
            Held::Timer(t) => [
                &ATTEMPTS[..],
                b"t",
                &keys::timer(t.due_ms, &t.instance, &t.step),
            ]
            .concat(),
        }
    }
}

/// One failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The sequence or `sequence.step` that failed, if one did.
    pub rule: Option<String>,
    pub error: String,
}

/// What became of a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempted {
    /// Recorded: this many attempts have failed; it stays queued.
    Again(u32),
    /// Moved to the dead-letter list under this id.
    Dead(String),
    /// No longer queued (acknowledged, cancelled or dead already): nothing done.
    Gone,
}

#[derive(Debug, Serialize, Deserialize)]
struct Attempts {
    attempts: u32,
    first_failed_at: String,
}

fn dead_key(id: &str) -> Vec<u8> {
    [&DEAD[..], id.as_bytes()].concat()
}

/// Counts a failed attempt at `held`; at the `max_attempts`th, moves it to the
/// dead-letter list, off its queue, under `dead_id`. `event` is the event held
/// (for a step, unused: the entry keeps the trigger of its instance).
pub fn record_failure(
    tx: &Tx<'_>,
    held: &Held,
    event: Option<&DomainEvent>,
    failure: &Failure,
    max_attempts: u32,
    (now, dead_id): (&str, &str),
) -> OpResult<Attempted> {
    let (queue, queued_key) = match held {
        Held::Event(seq) => (tx.domain, keys::domain(*seq).to_vec()),
        Held::Timer(t) => (tx.timers, keys::timer(t.due_ms, &t.instance, &t.step)),
    };
    if queue.get(&queued_key)?.is_none() {
        return Ok(Ok(Attempted::Gone));
    }
    let attempts_key = held.attempts_key();
    // An unreadable count gives up at once rather than retry without end.
    let previous = match tx.domain.get(&attempts_key)? {
        Some(bytes) => decode::<Attempts>(&bytes).unwrap_or(Attempts {
            attempts: max_attempts,
            first_failed_at: now.to_owned(),
        }),
        None => Attempts {
            attempts: 0,
            first_failed_at: now.to_owned(),
        },
    };
    let attempts = previous.attempts.saturating_add(1);
    if attempts < max_attempts {
        let record = Attempts {
            attempts,
            first_failed_at: previous.first_failed_at,
        };
        tx.domain.insert(attempts_key, encode(&record))?;
        return Ok(Ok(Attempted::Again(attempts)));
    }
    let (event, timer) = match (held, event) {
        (Held::Event(_), Some(event)) => (event.clone(), None),
        (Held::Event(seq), None) => {
            return Ok(Err(StoreError::Corrupt(format!(
                "event {seq} failed without its record"
            ))))
        }
        (Held::Timer(t), _) => {
            // Without its instance the step is skipped when it fires, not failed.
            let Ok(Some(instance)) = get_instance(tx, &t.instance)? else {
                return Ok(Ok(Attempted::Gone));
            };
            let trigger = instance.trigger;
            let due_at = jiff::Timestamp::from_millisecond(t.due_ms)
                .map(format_time)
                .unwrap_or_default();
            let timer = DeadTimer {
                instance: t.instance.clone(),
                step: t.step.clone(),
                due_at,
                due_ms: t.due_ms,
            };
            (trigger, Some(timer))
        }
    };
    let item = DeadItem {
        id: dead_id.to_owned(),
        kind: match held {
            Held::Event(_) => DeadKind::Event,
            Held::Timer(_) => DeadKind::Timer,
        },
        event,
        timer,
        rule: failure.rule.clone(),
        error: failure.error.clone(),
        attempts,
        first_failed_at: previous.first_failed_at,
        failed_at: now.to_owned(),
    };
    queue.remove(queued_key)?;
    tx.domain.remove(attempts_key)?;
    tx.domain.insert(dead_key(dead_id), encode(&item))?;
    Ok(Ok(Attempted::Dead(dead_id.to_owned())))
}

/// Forgets the failed attempts at `held` (it went through on a retry).
pub fn forget(tx: &Tx<'_>, held: &Held) -> OpResult<bool> {
    Ok(Ok(tx.domain.remove(held.attempts_key())?.is_some()))
}

impl AutomationTx<'_, '_> {
    /// Counts a failed attempt (see [`record_failure`]).
    pub fn record_failure(
        &self,
        held: &Held,
        event: Option<&DomainEvent>,
        failure: &Failure,
        max_attempts: u32,
        (now, dead_id): (&str, &str),
    ) -> Result<Attempted, TxError> {
        Ok(record_failure(
            self.tx,
            held,
            event,
            failure,
            max_attempts,
            (now, dead_id),
        )??)
    }

    /// Takes the entry `id` off the dead-letter list: an event is queued again
    /// behind those waiting now (with a new seq), marked re-driven at `now`
    /// (`DomainEvent::redriven_at`); a step is handed to `rearm`. `None` if
    /// `id` is not on the list.
    pub fn redrive(
        &self,
        id: &str,
        now: &str,
        rearm: impl Fn(&DeadTimer) -> Result<(), TxError>,
    ) -> Result<Option<DeadItem>, TxError> {
        let key = dead_key(id);
        let Some(bytes) = self.tx.domain.get(&key)? else {
            return Ok(None);
        };
        let item: DeadItem = decode(&bytes)?;
        // Re-armed or queued first: an error there (an unreadable instance)
        // leaves the entry on the list, as the whole transaction commits.
        match (&item.kind, &item.timer) {
            (DeadKind::Timer, Some(timer)) => rearm(timer)?,
            _ => emit(
                self.tx,
                DomainEvent {
                    redriven_at: Some(now.to_owned()),
                    ..item.event.clone()
                },
            )?,
        }
        self.tx.domain.remove(key)?;
        Ok(Some(item))
    }
}

impl Store {
    /// The dead-letter list, oldest first.
    pub fn dead_items(&self, limit: usize) -> Result<Vec<DeadItem>, StoreError> {
        self.trees
            .domain
            .scan_prefix(DEAD)
            .take(limit)
            .map(|entry| decode(&entry?.1))
            .collect()
    }

    /// How many entries the dead-letter list holds (one key each: a scan of
    /// the list, not of the queue).
    pub fn dead_count(&self) -> usize {
        self.trees.domain.scan_prefix(DEAD).count()
    }

    /// Failed attempts recorded for `held`, if any. Cheap when nothing has
    /// failed: one seek.
    pub fn attempts_of(&self, held: &Held) -> Result<Option<u32>, StoreError> {
        if self.trees.domain.scan_prefix(ATTEMPTS).next().is_none() {
            return Ok(None);
        }
        match self.trees.domain.get(held.attempts_key())? {
            Some(bytes) => Ok(Some(decode::<Attempts>(&bytes)?.attempts)),
            None => Ok(None),
        }
    }

    /// Counts a failed attempt (see [`record_failure`]); `now` is RFC 3339.
    pub async fn record_failure(
        &self,
        held: Held,
        event: Option<DomainEvent>,
        failure: Failure,
        max_attempts: u32,
        now: String,
    ) -> Result<Attempted, StoreError> {
        let dead_id = uuid::Uuid::now_v7().to_string();
        self.writer
            .run("failure", move |tx, _| {
                record_failure(
                    tx,
                    &held,
                    event.as_ref(),
                    &failure,
                    max_attempts,
                    (&now, &dead_id),
                )
            })
            .await
    }
}
