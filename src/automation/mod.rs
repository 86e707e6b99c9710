//! The automation engine: domain events from the store are evaluated against the
//! rule set in force; the outcome (start, stop or re-plan sequence instances) is
//! written back in one transaction with the event's acknowledgement. Due steps
//! are fired by [`scheduler`], which renders their templates with the rules in
//! force *then* and sends through the same transactional path as a person's
//! message.
//!
//! What happens to running sequences when rules change: an instance keeps the
//! step times planned when it started; each step's template, condition, actions
//! and recipient are read from the current rules when it fires, by name. A step
//! whose sequence or step name has disappeared is skipped (recorded on the
//! instance). Stop and re-plan events are those of the current rules.

pub mod invite;
pub mod scheduler;

use std::sync::Arc;

use tokio::sync::Notify;

use crate::clock::Clock;
use crate::domain::{DomainEvent, Instance, PlannedStep, StepState};
use crate::model::{format_time, Booking};
use crate::notifications::router::{self, Enabled};
use crate::notifications::Wakers;
use crate::rules::plugins::{PluginAction, ON_EVENT};
use crate::rules::script::{off_the_workers, report};
use crate::rules::sequences::{Anchor, Sequence};
use crate::rules::{RuleSet, Rules};
use crate::store::{Attempted, Change, Failure, Held, Store, StoreError};

use crate::rules::context::{reader_zone, Loaded};

/// Events read from the queue at a time.
const BATCH: usize = 256;

pub struct Engine {
    store: Store,
    rules: Arc<Rules>,
    clock: Arc<dyn Clock>,
    /// Woken when new timers may be due sooner than the scheduler thinks.
    timers_changed: Arc<Notify>,
    /// One drain at a time: the events loop and the scheduler both drain.
    draining: tokio::sync::Mutex<()>,
    /// The outbound channels notifications may use.
    channels: Enabled,
    /// Wakes the outbox when notifications are queued or the clock moves.
    outbox: Arc<Wakers>,
    /// Failed attempts at an event or a step before it is dead.
    max_attempts: u32,
}

/// Why an event or a due step was not processed.
#[derive(Debug)]
enum Failed {
    /// The store failed: not the event's fault; the loop tries again later.
    Store(StoreError),
    /// The rules failed on it (an error, or a panic caught): an attempt.
    Rule(Failure),
}

impl From<StoreError> for Failed {
    fn from(e: StoreError) -> Failed {
        Failed::Store(e)
    }
}

impl From<router::RouteError> for Failed {
    fn from(e: router::RouteError) -> Failed {
        match e {
            router::RouteError::Store(e) => Failed::Store(e),
            router::RouteError::Condition { route, error } => Failed::Rule(Failure {
                rule: Some(route),
                error: format!("when: {error}"),
            }),
        }
    }
}

/// Runs one evaluation, turning a panic that escapes it into a failure of
/// `rule` (when the evaluation is one rule's), so one bad rule or record
/// cannot take the engine task (and every later event) down with it.
fn caught<T>(
    rule: Option<String>,
    evaluation: impl FnOnce() -> Result<T, Failed>,
) -> Result<T, Failed> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(evaluation)).unwrap_or_else(|panic| {
        let message = crate::supervisor::panic_message(&*panic);
        // Logged and counted like a script error, so `test-rules` sees it too.
        let what = rule
            .as_ref()
            .map_or("event".to_owned(), |r| format!("step/{r}"));
        report(&what, &format!("panicked: {message}"));
        Err(Failed::Rule(Failure {
            rule,
            error: format!("panicked: {message}"),
        }))
    })
}

fn timestamp(text: &str) -> Option<jiff::Timestamp> {
    text.parse().ok()
}

impl Engine {
    pub fn new(store: Store, rules: Arc<Rules>, clock: Arc<dyn Clock>) -> Engine {
        Engine {
            store,
            rules,
            clock,
            timers_changed: Arc::new(Notify::new()),
            draining: tokio::sync::Mutex::new(()),
            channels: Enabled::default(),
            outbox: Arc::default(),
            max_attempts: crate::config::AutomationConfig::default().max_attempts,
        }
    }

    /// Failed attempts at one event or step before it moves to the
    /// dead-letter list (`automation.max_attempts`; at least 1).
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Engine {
        self.max_attempts = max_attempts.max(1);
        self
    }

    /// Routes notifications to these outbound channels too (in-app only
    /// without it).
    pub fn with_channels(mut self, channels: Enabled) -> Engine {
        self.channels = channels;
        self
    }

    /// What wakes the outbox's lanes.
    pub fn outbox_wakers(&self) -> Arc<Wakers> {
        Arc::clone(&self.outbox)
    }

    /// Wakes the scheduler and the outbox (after the clock moved, or new
    /// timers or notifications).
    pub fn wake_scheduler(&self) {
        self.timers_changed.notify_one();
        self.outbox.wake_all();
    }

    /// Processes every queued domain event, in order; returns how many.
    pub async fn drain(&self) -> Result<usize, StoreError> {
        let _one_at_a_time = self.draining.lock().await;
        let mut processed = 0;
        loop {
            let events = self.store.domain_events(BATCH)?;
            if events.is_empty() {
                return Ok(processed);
            }
            // Acknowledgements accumulate; anything else is applied before the
            // next event is evaluated, which must see its effect.
            let mut pending = Vec::new();
            for event in &events {
                let Some(mut changes) = self.evaluate_or_quarantine(event, &mut pending).await?
                else {
                    continue;
                };
                let effective = changes.len() > 1;
                pending.append(&mut changes);
                if effective {
                    self.store
                        .apply_changes(std::mem::take(&mut pending))
                        .await?;
                    self.wake_scheduler();
                }
            }
            if !pending.is_empty() {
                self.store.apply_changes(pending).await?;
            }
            processed += events.len();
            metrics::counter!("parleyd_engine_events_total").increment(events.len() as u64);
        }
    }

    /// What one event changes (ending with its acknowledgement), retried at
    /// once while the rules fail on it; `None` once it has failed
    /// `max_attempts` times and moved to the dead-letter list. `pending` (the
    /// earlier events' acknowledgements) is applied before an attempt is
    /// counted, so the count never outlives an event that was done.
    async fn evaluate_or_quarantine(
        &self,
        event: &DomainEvent,
        pending: &mut Vec<Change>,
    ) -> Result<Option<Vec<Change>>, StoreError> {
        let held = Held::Event(event.seq);
        let mut retried = self.store.attempts_of(&held)?.is_some();
        loop {
            let rules = self.rules.current();
            let failure = match caught(None, || off_the_workers(|| self.evaluate(&rules, event))) {
                Ok(mut changes) => {
                    if retried {
                        changes.insert(0, Change::Forget(held));
                    }
                    return Ok(Some(changes));
                }
                // An unreadable record must not hold up every later event.
                Err(Failed::Store(StoreError::Corrupt(e))) => {
                    tracing::error!(seq = event.seq, event = %event.name, error = %e,
                        "domain event skipped: a record it needs is unreadable");
                    metrics::counter!("parleyd_engine_skipped_events_total").increment(1);
                    return Ok(Some(vec![Change::Ack(event.seq)]));
                }
                Err(Failed::Store(e)) => return Err(e),
                Err(Failed::Rule(failure)) => failure,
            };
            if !pending.is_empty() {
                self.store.apply_changes(std::mem::take(pending)).await?;
            }
            let attempted = self
                .store
                .record_failure(
                    held.clone(),
                    Some(event.clone()),
                    failure.clone(),
                    self.max_attempts,
                    self.now(),
                )
                .await?;
            self.failed(&failure, &attempted, "event", || {
                format!("domain event {} ({})", event.seq, event.name)
            });
            match attempted {
                Attempted::Again(_) => retried = true,
                Attempted::Dead(_) | Attempted::Gone => return Ok(None),
            }
        }
    }

    /// Logs and counts a failed attempt at `what` (an `event` or a `timer`).
    fn failed(
        &self,
        failure: &Failure,
        attempted: &Attempted,
        kind: &'static str,
        what: impl Fn() -> String,
    ) {
        let rule = failure.rule.as_deref().unwrap_or("-");
        // The script error itself was logged at its place and counted by rule
        // (`rules::script::report`); this counts the attempt.
        metrics::counter!("parleyd_pipeline_failed_attempts_total", "kind" => kind).increment(1);
        match attempted {
            Attempted::Again(attempts) => {
                tracing::warn!(rule, error = %failure.error, attempts, "{} failed; trying again", what());
            }
            Attempted::Dead(id) => {
                tracing::error!(rule, error = %failure.error, dead = %id,
                    "{} moved to the dead-letter list (GET /v1/admin/pipeline/dead)", what());
                metrics::counter!("parleyd_pipeline_dead_total", "kind" => kind).increment(1);
                self.count_dead();
            }
            Attempted::Gone => {}
        }
    }

    /// See [`count_dead`].
    pub fn count_dead(&self) {
        count_dead(&self.store);
    }

    /// What one event changes; always ends with its acknowledgement.
    fn evaluate(&self, rules: &RuleSet, event: &DomainEvent) -> Result<Vec<Change>, Failed> {
        let _span = tracing::debug_span!("rules", event = %event.name, seq = event.seq).entered();
        let mut changes = Vec::new();
        let mut loaded: Option<Loaded> = None;
        let reacting = rules.plugins.iter().any(|p| p.has(ON_EVENT));
        let plugin_actions: Vec<PluginAction> = if !reacting {
            Vec::new()
        } else {
            let argument = rhai::serde::to_dynamic(event).unwrap_or(rhai::Dynamic::UNIT);
            rules
                .plugins
                .iter()
                .flat_map(|p| p.on_event(argument.clone()))
                .collect()
        };

        let listens = |s: &Sequence| {
            s.stop_on.iter().chain(&s.replan_on).any(|n| event.is(n))
                || plugin_actions
                    .iter()
                    .any(|a| matches!(a, PluginAction::Stop(name) if *name == s.name))
        };
        if rules.sequences.iter().any(listens) {
            for instance in self.store.instances_about(event)? {
                if !event.subject.concerns(&instance.subject) {
                    continue;
                }
                let Some(sequence) = rules.sequence(&instance.rule) else {
                    continue;
                };
                let stopped_by_plugin = plugin_actions
                    .iter()
                    .any(|a| matches!(a, PluginAction::Stop(name) if *name == sequence.name));
                if stopped_by_plugin || sequence.stop_on.iter().any(|n| event.is(n)) {
                    tracing::debug!(instance = %instance.id, "stopped");
                    changes.push(Change::Stop(instance.id.clone()));
                } else if sequence.replan_on.iter().any(|n| event.is(n)) {
                    let context = self.loaded(&mut loaded, event)?;
                    let steps = plan(sequence, &instance.trigger, event, context.booking.as_ref())
                        .into_iter()
                        .map(|s| {
                            let due = match s.state {
                                StepState::Pending => Ok(s.due_ms),
                                _ => Err(s.note.unwrap_or_default()),
                            };
                            (s.name, due)
                        })
                        .collect();
                    changes.push(Change::Replan {
                        instance: instance.id.clone(),
                        steps,
                    });
                }
            }
        }

        let started_by_plugin = |s: &Sequence| {
            plugin_actions
                .iter()
                .any(|a| matches!(a, PluginAction::Start(name) if *name == s.name))
        };
        for sequence in &rules.sequences {
            if !(event.is(&sequence.trigger) || started_by_plugin(sequence)) {
                continue;
            }
            let context = self.loaded(&mut loaded, event)?;
            if let Some(when) = &sequence.when {
                match when.test(&context.script_context(&*self.clock)) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    // Not "not started": the event is tried again, then kept
                    // for a re-drive once the condition is fixed.
                    Err(e) => {
                        report(&format!("sequence/{}", sequence.name), &e);
                        return Err(Failed::Rule(Failure {
                            rule: Some(sequence.name.clone()),
                            error: format!("when: {e}"),
                        }));
                    }
                }
            }
            let subject = context.subject(event);
            let id = Instance::id_for(&sequence.name, &subject);
            // Already running (a second message of a conversation whose
            // sequence starts on message_sent): nothing to write. The writer
            // checks again, so a race only costs a no-op.
            if self.store.instance(&id)?.is_some() {
                continue;
            }
            let instance = Instance {
                id,
                rule: sequence.name.clone(),
                run: uuid::Uuid::now_v7().to_string(),
                subject,
                trigger: event.clone(),
                steps: plan(sequence, event, event, context.booking.as_ref()),
            };
            changes.push(Change::Start(Box::new(instance)));
        }

        let routing = &rules.routing;
        let routed = routing
            .routes
            .iter()
            .any(|r| router::may_route(r, event, self.channels))
            || (self.channels.webhook && routing.webhooks.iter().any(|n| event.is(n)));
        if routed {
            let loaded = self.loaded(&mut loaded, event)?;
            let input = router::Input {
                rules,
                event,
                loaded,
                context: &loaded.script_context(&*self.clock),
                store: &self.store,
                enabled: self.channels,
                now: self.clock.now(),
            };
            for notification in router::route(&input)? {
                changes.push(Change::Notify(Box::new(notification)));
            }
        }
        changes.push(Change::Ack(event.seq));
        Ok(changes)
    }

    fn loaded<'a>(
        &self,
        slot: &'a mut Option<Loaded>,
        event: &DomainEvent,
    ) -> Result<&'a Loaded, StoreError> {
        if slot.is_none() {
            *slot = Some(Loaded::read(&self.store, &event.subject, event)?);
        }
        Ok(slot.as_ref().expect("just filled"))
    }

    pub fn now(&self) -> String {
        format_time(self.clock.now())
    }
}

/// Sets the `parleyd_dead_letters{list="events"}` gauge at once (upkeep
/// refreshes it too): entries on the pipeline's dead-letter list now (events
/// and steps; `Store::dead_count`).
pub fn count_dead(store: &Store) {
    metrics::gauge!("parleyd_dead_letters", "list" => "events").set(store.dead_count() as f64);
}

/// When each step of `sequence` is due, for a run triggered by `trigger` and
/// planned (or re-planned) on `event`. A step whose time is before `event` (a
/// day-before reminder for a booking made this morning) or that needs a
/// booking there is none of, is dropped.
pub fn plan(
    sequence: &Sequence,
    trigger: &DomainEvent,
    event: &DomainEvent,
    booking: Option<&Booking>,
) -> Vec<PlannedStep> {
    let triggered = timestamp(&trigger.at);
    let at = timestamp(&event.at);
    let period = booking.and_then(|b| Some((timestamp(&b.start)?, timestamp(&b.end)?)));
    sequence
        .steps
        .iter()
        .map(|step| {
            let anchor = match (step.at, period) {
                (Anchor::Trigger, _) => triggered.ok_or("the trigger has no time"),
                (Anchor::Start, Some((start, _))) => Ok(start),
                (Anchor::End, Some((_, end))) => Ok(end),
                (Anchor::Midpoint, Some((start, end))) => Ok(start + end.duration_since(start) / 2),
                (_, None) => Err("no booking to anchor it to"),
            };
            let due = anchor
                .map_err(str::to_owned)
                .and_then(|a| a.checked_add(step.offset).map_err(|e| e.to_string()))
                .and_then(|due| match at {
                    Some(at) if due < at => Err(format!(
                        "due at {}, before the event that planned it",
                        format_time(due)
                    )),
                    _ => Ok(due),
                });
            match due {
                Ok(due) => PlannedStep {
                    name: step.name.clone(),
                    due_ms: due.as_millisecond(),
                    state: StepState::Pending,
                    note: None,
                },
                Err(note) => PlannedStep {
                    name: step.name.clone(),
                    due_ms: 0,
                    state: StepState::Dropped,
                    note: Some(note),
                },
            }
        })
        .collect()
}
