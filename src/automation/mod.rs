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

pub mod changes;
pub mod invite;
pub mod scheduler;
pub mod sequence;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;

use crate::analytics::experiments::{self, NewExposure};
use crate::clock::Clock;
use crate::domain::{DomainEvent, Instance, PlannedStep, StepState, Subject};
use crate::model::{format_time, Booking};
use crate::notifications::router::{self, Enabled};
use crate::notifications::Wakers;
use crate::rules::plugins::{PluginAction, ON_EVENT};
use crate::rules::script::{off_the_workers, report};
use crate::rules::sequences::{Anchor, Sequence, Step};
use crate::rules::{RuleSet, Rules};
use crate::store::{Attempted, Failure, Held, Store, StoreError};

use crate::rules::context::{reader_zone, Loaded};
use changes::Overlay;
pub use changes::{apply_changes, Change, Firing};

/// Events read from the queue, evaluated and written at a time.
const BATCH: usize = 256;

/// The pauses before the 2nd, 3rd, … attempt at an event or a step that
/// failed (the last one repeats): a transient failure (a script deadline
/// missed on a busy machine) gets a chance to pass. Short, because the events
/// behind a failing one wait for it to go through or die.
const RETRY_DELAYS: [std::time::Duration; 3] = [
    std::time::Duration::from_millis(100),
    std::time::Duration::from_millis(300),
    std::time::Duration::from_secs(1),
];

/// The pause before the next attempt after `attempts` failed ones.
fn retry_delay(attempts: u32) -> std::time::Duration {
    let at = (attempts as usize)
        .saturating_sub(1)
        .min(RETRY_DELAYS.len() - 1);
    RETRY_DELAYS[at]
}

/// The events evaluated and not yet written.
#[derive(Default)]
struct Batch {
    changes: Vec<Change>,
    overlay: Overlay,
}

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
    /// Experiment name to the variant every unit gets (`parleyd test-rules`).
    pins: BTreeMap<String, String>,
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
            pins: BTreeMap::new(),
        }
    }

    /// Gives every unit these variants (experiment name to variant name),
    /// whatever the hash and the experiments' time windows say: rule tests
    /// of a variant are then deterministic.
    pub fn with_pins(mut self, pins: BTreeMap<String, String>) -> Engine {
        self.pins = pins;
        self
    }

    /// What `experiment` gives the unit `subject` names now (see
    /// [`experiments::decide`]); `pending` is the batch's own exposures.
    fn decide(
        &self,
        experiment: &crate::rules::experiments::Experiment,
        subject: &Subject,
        overlay: Option<&Overlay>,
    ) -> Result<Option<experiments::Decision>, StoreError> {
        let unit_id = experiments::unit_id(experiment.unit, subject);
        let stored = match unit_id {
            Some(id) => self.store.unit_exposures(experiment.unit, id)?,
            None => Default::default(),
        };
        let pending = overlay
            .zip(unit_id)
            .and_then(|(o, id)| o.exposed(&experiment.name, experiment.unit, id));
        let pin = self.pins.get(&experiment.name).map(String::as_str);
        Ok(experiments::decide(
            experiment,
            unit_id,
            &stored,
            pending,
            self.clock.now(),
            pin,
        ))
    }

    /// The steps of `sequence` the experiments that move its steps in time
    /// swap for the unit `subject` names, and the first exposures that makes
    /// (a sequence planned with a variant's timing exposes its unit).
    fn timed_variants<'r>(
        &self,
        rules: &'r RuleSet,
        sequence: &'r Sequence,
        subject: &Subject,
        overlay: &Overlay,
    ) -> Result<(Vec<&'r Step>, Vec<NewExposure>), StoreError> {
        let (mut steps, mut exposures) = (Vec::new(), Vec::new());
        for experiment in rules.experiments_on(&sequence.name) {
            if !experiment.changes_timing(sequence) {
                continue;
            }
            let Some(decision) = self.decide(experiment, subject, Some(overlay))? else {
                continue;
            };
            steps.extend(&experiment.variants[decision.variant].steps);
            exposures.extend(decision.exposure);
        }
        Ok((steps, exposures))
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
        self.drain_at_most(usize::MAX).await
    }

    /// Processes queued domain events, in order, until the queue is empty or
    /// `limit` are done (at least one batch); returns how many. Each batch's
    /// changes and acknowledgements are written in one writer transaction:
    /// every event is evaluated against the instances as the batch's earlier
    /// events left them ([`Overlay`]), so it sees their effect unwritten.
    pub async fn drain_at_most(&self, limit: usize) -> Result<usize, StoreError> {
        let mut processed = 0;
        while processed < limit {
            // Taken per batch, not per drain: the lock is fair, so the
            // scheduler waiting for its round of events gets the next batch
            // even while the events task never finds the queue empty.
            let _one_at_a_time = self.draining.lock().await;
            let events = self.store.domain_events(BATCH)?;
            if events.is_empty() {
                break;
            }
            let mut batch = Batch::default();
            for event in &events {
                // Before the rules: whatever they do, the event is counted.
                batch.changes.push(Change::Record(Box::new(event.clone())));
                if !reacts(&self.rules.current(), event) {
                    batch.changes.push(Change::Ack(event.seq));
                    continue;
                }
                if let Some(changes) = self.evaluate_or_quarantine(event, &mut batch).await? {
                    for change in &changes {
                        batch.overlay.record(&self.store, change)?;
                    }
                    batch.changes.extend(changes);
                }
            }
            self.write(&mut batch).await?;
            processed += events.len();
            metrics::counter!("parleyd_engine_events_total").increment(events.len() as u64);
        }
        Ok(processed)
    }

    /// Writes the batch's changes (one writer transaction) and starts it
    /// afresh. If the writer panics applying them (a bug, or a record that
    /// trips one), each event's changes are written on their own, and the
    /// event whose changes panic again gets a failed attempt: a poison event
    /// ends on the dead-letter list instead of being retried forever.
    async fn write(&self, batch: &mut Batch) -> Result<(), StoreError> {
        if batch.changes.is_empty() {
            return Ok(());
        }
        let changes = std::mem::take(&mut batch.changes);
        batch.overlay.clear();
        let wake = changes
            .iter()
            .any(|c| !matches!(c, Change::Ack(_) | Change::Record(_)));
        match apply_changes(&self.store, changes.clone()).await {
            Err(StoreError::Panicked(_)) => {
                // Each event's changes end with its acknowledgement. Its
                // analytics record is written first, on its own: were it
                // left with changes that panic, a later event's record would
                // move the watermark past it and it would never be folded.
                for group in changes.split_inclusive(|c| matches!(c, Change::Ack(_))) {
                    let (record, rest): (Vec<Change>, Vec<Change>) = group
                        .iter()
                        .cloned()
                        .partition(|c| matches!(c, Change::Record(_)));
                    match apply_changes(&self.store, record).await {
                        // A bug in the fold itself: the event's analytics are
                        // lost, its automation goes on.
                        Err(e @ StoreError::Panicked(_)) => {
                            tracing::error!(error = %e, "an event is left out of the analytics: folding it panicked");
                            metrics::counter!("parleyd_analytics_skipped_events_total")
                                .increment(1);
                        }
                        result => {
                            result?;
                        }
                    }
                    match apply_changes(&self.store, rest.clone()).await {
                        Err(e @ StoreError::Panicked(_)) => self.write_failed(&rest, &e).await?,
                        result => count_exposures(&rest, &result?),
                    }
                }
            }
            result => count_exposures(&changes, &result?),
        }
        if wake {
            self.wake_scheduler();
        }
        Ok(())
    }

    /// Counts a failed attempt at the event whose changes (`group`, ending
    /// with its acknowledgement) could not be written.
    async fn write_failed(&self, group: &[Change], error: &StoreError) -> Result<(), StoreError> {
        let Some(Change::Ack(seq)) = group.last() else {
            return Ok(());
        };
        let Some(event) = self.store.domain_event(*seq)? else {
            return Ok(());
        };
        let failure = Failure {
            rule: None,
            error: format!("writing its changes failed: {error}"),
        };
        self.event_failed(&event, failure).await.map(drop)
    }

    /// Records, logs and counts a failed attempt at `event`.
    async fn event_failed(
        &self,
        event: &DomainEvent,
        failure: Failure,
    ) -> Result<Attempted, StoreError> {
        let attempted = self
            .store
            .record_failure(
                Held::Event(event.seq),
                Some(event.clone()),
                failure.clone(),
                self.max_attempts,
                self.now(),
            )
            .await?;
        self.failed(&failure, &attempted, "event", || {
            format!("domain event {} ({})", event.seq, event.name)
        });
        Ok(attempted)
    }

    /// What one event changes (ending with its acknowledgement), retried while
    /// the rules fail on it, after a short growing pause ([`RETRY_DELAYS`]);
    /// `None` once it has failed `max_attempts` times and moved to the
    /// dead-letter list. The batch so far is written before an attempt is
    /// counted, so the count never outlives an event that was done.
    async fn evaluate_or_quarantine(
        &self,
        event: &DomainEvent,
        batch: &mut Batch,
    ) -> Result<Option<Vec<Change>>, StoreError> {
        let held = Held::Event(event.seq);
        let mut retried = self.store.attempts_of(&held)?;
        loop {
            if let Some(attempts) = retried {
                tokio::time::sleep(retry_delay(attempts)).await;
            }
            let rules = self.rules.current();
            let overlay = &batch.overlay;
            let failure = match caught(None, || {
                off_the_workers(|| self.evaluate(&rules, event, overlay))
            }) {
                Ok(changes) => return Ok(Some(changes)),
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
            self.write(batch).await?;
            match self.event_failed(event, failure).await? {
                Attempted::Again(attempts) => retried = Some(attempts),
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
    /// `overlay`: the instances as the batch's earlier events left them.
    fn evaluate(
        &self,
        rules: &RuleSet,
        event: &DomainEvent,
        overlay: &Overlay,
    ) -> Result<Vec<Change>, Failed> {
        let _span = tracing::debug_span!("rules", event = %event.name, seq = event.seq).entered();
        let mut changes = Vec::new();
        let mut loaded: Option<Loaded> = None;
        let reacting = rules.plugins.iter().any(|p| p.has(ON_EVENT));
        let mut plugin_actions: Vec<PluginAction> = Vec::new();
        if reacting {
            let argument = rhai::serde::to_dynamic(event).unwrap_or(rhai::Dynamic::UNIT);
            for plugin in &rules.plugins {
                // Not "no actions": the event is tried again, then kept for a
                // re-drive once the plugin is fixed.
                let actions = plugin.on_event(argument.clone()).map_err(|error| {
                    Failed::Rule(Failure {
                        rule: Some(format!("plugin/{}", plugin.name)),
                        error: format!("{ON_EVENT}: {error}"),
                    })
                })?;
                plugin_actions.extend(actions);
            }
        }

        let listens = |s: &Sequence| {
            s.stop_on.iter().chain(&s.replan_on).any(|n| event.is(n))
                || plugin_actions
                    .iter()
                    .any(|a| matches!(a, PluginAction::Stop(name) if *name == s.name))
        };
        if rules.sequences.iter().any(listens) {
            for instance in overlay.about(event, self.store.instances_about(event)?) {
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
                    let (swapped, exposures) =
                        self.timed_variants(rules, sequence, &instance.subject, overlay)?;
                    let context = self.loaded(&mut loaded, event)?;
                    let booking = context.booking.as_ref();
                    let steps = plan(sequence, &swapped, &instance.trigger, event, booking)
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
                    changes.extend(changes::exposed_by(&instance, exposures));
                }
            }
        }

        let started_by_plugin = |s: &Sequence| {
            plugin_actions
                .iter()
                .any(|a| matches!(a, PluginAction::Start(name) if *name == s.name))
        };
        // Built once per event, for every condition and route that reads it.
        let mut script = None;
        for sequence in &rules.sequences {
            if !(event.is(&sequence.trigger) || started_by_plugin(sequence)) {
                continue;
            }
            let context = self.loaded(&mut loaded, event)?;
            let subject = context.subject(event);
            let id = Instance::id_for(&sequence.name, &subject);
            // Already running (a second message of a conversation whose
            // sequence starts on message_sent): nothing to write, and no
            // condition to evaluate. The writer checks again, so a race only
            // costs a no-op.
            if overlay.instance(&self.store, &id)?.is_some() {
                continue;
            }
            if let Some(when) = &sequence.when {
                let script = script.get_or_insert_with(|| context.script_context(&*self.clock));
                match when.test(script) {
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
            let (swapped, exposures) = self.timed_variants(rules, sequence, &subject, overlay)?;
            let instance = Instance {
                id,
                rule: sequence.name.clone(),
                run: uuid::Uuid::now_v7().to_string(),
                subject,
                trigger: event.clone(),
                steps: plan(sequence, &swapped, event, event, context.booking.as_ref()),
            };
            let exposures = changes::exposed_by(&instance, exposures);
            changes.push(Change::Start(Box::new(instance)));
            changes.extend(exposures);
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
                context: script.get_or_insert_with(|| loaded.script_context(&*self.clock)),
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

/// Counts the first exposures among `changes` that took effect (`applied`,
/// in the same order): `parleyd_experiment_exposures_total{experiment,variant}`.
fn count_exposures(changes: &[Change], applied: &[bool]) {
    for (change, applied) in changes.iter().zip(applied) {
        if let (Change::Expose { exposure, .. }, true) = (change, applied) {
            count_exposure(exposure);
        }
    }
}

/// One more `parleyd_experiment_exposures_total{experiment,variant}`.
pub fn count_exposure(e: &NewExposure) {
    metrics::counter!("parleyd_experiment_exposures_total",
        "experiment" => e.experiment.clone(), "variant" => e.variant.clone())
    .increment(1);
}

/// Whether anything in `rules` may act on `event`: a plugin reacting to
/// every event, a sequence it triggers, stops or re-plans, a route or a
/// webhook on it. The engine acknowledges an event nothing reacts to
/// without evaluating it (no read of its attempts, no script): a
/// `message_read` on a daemon whose rules never mention it costs nothing
/// but its acknowledgement.
fn reacts(rules: &RuleSet, event: &DomainEvent) -> bool {
    rules.plugins.iter().any(|p| p.has(ON_EVENT))
        || rules.sequences.iter().any(|s| {
            event.is(&s.trigger) || s.stop_on.iter().chain(&s.replan_on).any(|n| event.is(n))
        })
        || rules
            .routing
            .routes
            .iter()
            .any(|r| r.on.iter().any(|n| event.is(n)))
        || rules.routing.webhooks.iter().any(|n| event.is(n))
}

/// Sets the `parleyd_dead_letters{list="events"}` gauge at once (upkeep
/// refreshes it too): entries on the pipeline's dead-letter list now (events
/// and steps; `Store::dead_count`).
pub fn count_dead(store: &Store) {
    metrics::gauge!("parleyd_dead_letters", "list" => "events").set(store.dead_count() as f64);
}

/// When each step of `sequence` is due, for a run triggered by `trigger` and
/// planned (or re-planned) on `event`; a step named in `swapped` (an
/// experiment's variant) is timed as that one says. A step whose time is before `event` (a
/// day-before reminder for a booking made this morning) or that needs a
/// booking there is none of, is dropped. An event re-driven from the
/// dead-letter list counts as happening when it was re-driven
/// (`DomainEvent::redriven_at`): steps timed from it are planned from then,
/// not fired at once for the days it was dead.
pub fn plan(
    sequence: &Sequence,
    swapped: &[&Step],
    trigger: &DomainEvent,
    event: &DomainEvent,
    booking: Option<&Booking>,
) -> Vec<PlannedStep> {
    // A re-driven event happened, for planning, when it was re-driven.
    let when = |e: &DomainEvent| timestamp(e.redriven_at.as_deref().unwrap_or(&e.at));
    let (triggered, at) = (when(trigger), when(event));
    let period = booking.and_then(|b| Some((timestamp(&b.start)?, timestamp(&b.end)?)));
    sequence
        .steps
        .iter()
        .map(|base| {
            let step = swapped
                .iter()
                .find(|s| s.name == base.name)
                .map_or(base, |s| *s);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Subject;

    fn event(name: &str, aliases: &[&str]) -> DomainEvent {
        DomainEvent {
            seq: 1,
            name: name.into(),
            aliases: aliases.iter().map(|a| a.to_string()).collect(),
            at: "2030-01-01T00:00:00Z".into(),
            redriven_at: None,
            subject: Subject::default(),
            data: serde_json::Value::Null,
        }
    }

    /// The shipped rules react to inquiries and bookings, not to reads (no
    /// rule names `message_read`), so reads cost the engine no evaluation.
    #[test]
    fn only_events_the_rules_name_are_evaluated() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let rules = crate::rules::load(&crate::rules::RuleDirs::under(root)).unwrap();
        assert!(reacts(
            &rules,
            &event("message_sent", &["inquiry_received"])
        ));
        assert!(reacts(
            &rules,
            &event("booking_created", &["booking_confirmed"])
        ));
        assert!(!reacts(&rules, &event("message_read", &[])));
    }
}
