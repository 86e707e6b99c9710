//! The durable scheduler: pending steps are timers in sled, ordered by due
//! time. A due step is rendered from the rules in force and sent in one
//! transaction that also removes its timer (see `automation::changes::fire`):
//! exactly once, across crashes. The loop sleeps until the earliest timer (at
//! most a second, so a manual clock's moves are seen promptly even unwoken).

use std::sync::Arc;
use std::time::Duration;

use super::changes::{fire, Firing, Sent};
use super::{caught, retry_delay, sequence, Engine, Failed, Loaded};
use crate::domain::{Instance, Timer};
use crate::model::{Automation, SYSTEM_SENDER};
use crate::rules::plugins::TEMPLATE_VARS;
use crate::rules::script::{off_the_workers, report};
use crate::rules::sequences::{Party, Sender, Sequence, Step};
use crate::rules::templates::Unfilled;
use crate::rules::RuleSet;
use crate::store::{Attempted, Failure, Held, NewMessage, StoreError};

/// Timers read at a time.
const BATCH: usize = 64;
/// Domain events processed before each round of timers: the queue is drained
/// first as long as it keeps up, but under a load above the engine's capacity
/// timers still fire (a stop queued behind this many events may then come
/// after a step it would have cancelled).
const EVENTS_PER_ROUND: usize = 256;
/// The longest the loop sleeps without looking.
const MAX_SLEEP: Duration = Duration::from_secs(1);

impl Engine {
    /// Fires every step due by the clock's now; returns how many fired.
    /// Before each round of timers, queued events are processed (at most
    /// [`EVENTS_PER_ROUND`]): a stop that happened before a step fell due (a
    /// reply, then a clock jump past the next nudge) must cancel it, and
    /// events and timers share the engine when it cannot keep up.
    pub async fn fire_due(&self) -> Result<usize, StoreError> {
        let mut fired = 0;
        loop {
            self.drain_at_most(EVENTS_PER_ROUND).await?;
            let now = self.clock.now().as_millisecond();
            let due = self.store.due_timers(now, BATCH)?;
            if due.is_empty() {
                return Ok(fired);
            }
            for timer in due {
                let firing = match self.prepare(&timer).await {
                    Ok(firing) => firing,
                    // Recorded as a skip, so one bad record cannot stall the rest.
                    Err(Failed::Store(StoreError::Corrupt(e))) => {
                        Firing::Skip(format!("unreadable record: {e}"))
                    }
                    Err(Failed::Store(e)) => return Err(e),
                    // Counted; the next round tries it again (due timers are
                    // read earliest first) until it is dead.
                    Err(Failed::Rule(failure)) => {
                        self.step_failed(&timer, failure).await?;
                        continue;
                    }
                };
                let result = match &firing {
                    Firing::Send(..) => "sent",
                    Firing::Skip(reason) => {
                        tracing::info!(instance = %timer.instance, step = %timer.step, %reason, "step skipped");
                        "skipped"
                    }
                };
                let exposure = match &firing {
                    Firing::Send(_, Some(exposure)) => Some(exposure.clone()),
                    _ => None,
                };
                // Its failed attempts go with its timer.
                let sent = fire(&self.store, timer, firing).await?;
                if let (Some(exposure), Some(Sent { exposed: true, .. })) = (exposure, &sent) {
                    super::count_exposure(&exposure);
                }
                if let Some(Sent { message, .. }) = &sent {
                    let step = message.automation.as_ref().map(|a| a.step.as_str());
                    crate::faults::crash_point("scheduler::after_fire", step);
                }
                if sent.is_some() || result == "skipped" {
                    metrics::counter!("parleyd_automation_steps_total", "result" => result)
                        .increment(1);
                }
                fired += 1;
            }
        }
    }

    /// Counts a failed preparation of `timer`'s step; the last one moves the
    /// step to the dead-letter list and marks it dead on its instance, in the
    /// same transaction.
    async fn step_failed(&self, timer: &Timer, failure: Failure) -> Result<(), StoreError> {
        let (timer_owned, failure_owned) = (timer.clone(), failure.clone());
        let (max_attempts, now) = (self.max_attempts, self.now());
        let dead_id = uuid::Uuid::now_v7().to_string();
        let attempted = self
            .store
            .transact("step_failure", move |tx| {
                let held = Held::Timer(timer_owned.clone());
                let attempted =
                    tx.record_failure(&held, None, &failure_owned, max_attempts, (&now, &dead_id))?;
                if let Attempted::Dead(_) = attempted {
                    let dead = tx.instance(&timer_owned.instance)?.and_then(|instance| {
                        sequence::dead(instance, &timer_owned, &failure_owned.error)
                    });
                    if let Some(write) = dead {
                        tx.write(&write)?;
                    }
                }
                Ok(attempted)
            })
            .await?;
        self.failed(&failure, &attempted, "timer", || {
            format!("step {} of {}", timer.step, timer.instance)
        });
        match attempted {
            Attempted::Dead(_) => {
                metrics::counter!("parleyd_automation_steps_total", "result" => "dead")
                    .increment(1);
            }
            // The same pause as an event's before its next attempt, so a
            // transient failure (a deadline missed on a busy machine) can pass.
            Attempted::Again(attempts) => tokio::time::sleep(retry_delay(attempts)).await,
            Attempted::Gone => {}
        }
        Ok(())
    }

    /// Decides what a due step sends, from the rules in force now. A condition
    /// or template that fails (or panics) is a [`Failed::Rule`] of the step.
    async fn prepare(&self, timer: &Timer) -> Result<Firing, Failed> {
        let Some(instance) = self.store.instance(&timer.instance)? else {
            return Ok(Firing::Skip("the sequence is no longer running".into()));
        };
        let rules = self.rules.current();
        let Some(sequence) = rules.sequence(&instance.rule) else {
            return Ok(Firing::Skip(format!(
                "sequence {} is no longer in the rules",
                instance.rule
            )));
        };
        let Some(step) = sequence.step(&timer.step) else {
            return Ok(Firing::Skip(format!(
                "sequence {} no longer has a step {}",
                instance.rule, timer.step
            )));
        };
        let Some(conversation_id) = self.conversation_for(&instance).await? else {
            return Ok(Firing::Skip(
                "no conversation to send in (the listing or customer is unknown)".into(),
            ));
        };
        let rule = format!("{}.{}", sequence.name, step.name);
        caught(Some(rule.clone()), || {
            off_the_workers(|| {
                self.compose(&rules, rule, sequence, step, &instance, conversation_id)
            })
        })
    }

    /// The message `step` of `instance` sends in `conversation_id`; `rule`
    /// names the step in failures.
    fn compose(
        &self,
        rules: &RuleSet,
        rule: String,
        sequence: &Sequence,
        step: &Step,
        instance: &Instance,
        conversation_id: String,
    ) -> Result<Firing, Failed> {
        let failed = |error: String| {
            Failed::Rule(Failure {
                rule: Some(rule.clone()),
                error,
            })
        };
        let subject = crate::domain::Subject {
            conversation_id: Some(conversation_id.clone()),
            ..instance.subject.clone()
        };
        let loaded = Loaded::read(&self.store, &subject, &instance.trigger)?;
        let Some(conversation) = &loaded.conversation else {
            return Ok(Firing::Skip("the conversation is gone".into()));
        };
        // An experiment swapping this step chooses which version fires.
        let unit = crate::domain::Subject {
            conversation_id: Some(conversation_id.clone()),
            customer_id: Some(conversation.customer_id.clone()),
            provider_id: Some(conversation.provider_id.clone()),
            ..Default::default()
        };
        let mut chosen = None;
        let mut step = step;
        if let Some(experiment) = rules
            .experiments_on(&sequence.name)
            .find(|e| e.swaps(&step.name))
        {
            if let Some(decision) = self.decide(experiment, &unit, None)? {
                let variant = &experiment.variants[decision.variant];
                if let Some(swapped) = variant.steps.iter().find(|s| s.name == step.name) {
                    step = swapped;
                }
                chosen = Some((
                    experiment.name.clone(),
                    variant.name.clone(),
                    decision.exposure.map(Box::new),
                ));
            }
        }
        let (experiment, variant, exposure) = match chosen {
            Some((experiment, variant, exposure)) => (Some(experiment), Some(variant), exposure),
            None => (None, None, None),
        };
        let mut context = loaded.script_context(&*self.clock);
        let plugin_vars: serde_json::Map<String, serde_json::Value> = rules
            .plugins
            .iter()
            .filter(|p| p.has(TEMPLATE_VARS))
            .filter_map(|p| p.call(TEMPLATE_VARS, context.as_map()).ok())
            .filter_map(|v| match v {
                serde_json::Value::Object(map) => Some(map),
                _ => None,
            })
            .flatten()
            .collect();
        context = context.with("plugin", &plugin_vars.into());
        if let Some(when) = &step.when {
            match when.test(&context) {
                Ok(true) => {}
                Ok(false) => return Ok(Firing::Skip("its condition is false".into())),
                Err(e) => {
                    report(&format!("sequence/{}", sequence.name), &e);
                    return Err(failed(format!("when: {e}")));
                }
            }
        }
        let Some(template) = rules.templates.get(&step.template) else {
            return Ok(Firing::Skip(format!("no template {}", step.template)));
        };
        let (recipient_id, recipient) = match step.to {
            Party::Customer => (conversation.customer_id.clone(), &loaded.customer),
            Party::Provider => (conversation.provider_id.clone(), &loaded.provider),
        };
        let zone = super::reader_zone(recipient.as_ref(), loaded.listing.as_ref());
        let content = match template.render(&context, &zone) {
            Ok(text) => text,
            Err(Unfilled::Failed(error)) => return Err(failed(error)),
            Err(Unfilled::NoValue(reason)) => return Ok(Firing::Skip(reason)),
        };
        let sender_id = match step.sender {
            Sender::System => SYSTEM_SENDER.to_owned(),
            Sender::Provider => conversation.provider_id.clone(),
            Sender::Customer => conversation.customer_id.clone(),
        };
        let mut actions = step.actions.clone();
        actions.sort_by_key(|a| std::cmp::Reverse(a.priority));
        let now = self.now();
        let attachments = match (step.invite, &loaded.booking) {
            (false, _) => Vec::new(),
            (true, Some(booking)) => {
                let title = loaded
                    .listing
                    .as_ref()
                    .map_or("Booking", |l| l.title.as_str());
                let address = loaded.listing.as_ref().and_then(|l| l.address.as_deref());
                super::invite::invite(booking, title, address, &now)
                    .into_iter()
                    .collect()
            }
            (true, None) => {
                return Ok(Firing::Skip("an invite needs a booking".into()));
            }
        };
        Ok(Firing::Send(
            Box::new(NewMessage {
                conversation_id,
                sender_id,
                client_id: format!("auto:{}:{}", instance.run, step.name),
                content,
                kind: sequence.kind,
                created_at: now,
                moderation: None,
                automation: Some(Box::new(Automation {
                    rule: sequence.name.clone(),
                    step: step.name.clone(),
                    template: step.template.clone(),
                    recipient_id,
                    experiment,
                    variant,
                })),
                actions,
                attachments,
                quick_reply_id: None,
                fingerprint: None,
            }),
            exposure,
        ))
    }

    /// The conversation a step speaks in: the instance's, or the customer's
    /// conversation about its listing (opened if need be, e.g. for a customer
    /// who viewed a listing but never wrote).
    async fn conversation_for(&self, instance: &Instance) -> Result<Option<String>, StoreError> {
        if let Some(id) = &instance.subject.conversation_id {
            return Ok(Some(id.clone()));
        }
        let (Some(listing_id), Some(customer_id)) =
            (&instance.subject.listing_id, &instance.subject.customer_id)
        else {
            return Ok(None);
        };
        let Some(listing) = self.store.listing(listing_id)? else {
            return Ok(None);
        };
        if listing.provider_id == *customer_id {
            return Ok(None);
        }
        let (conversation, _) = self
            .store
            .open_conversation(&listing, customer_id, &self.now())
            .await?;
        Ok(Some(conversation.id))
    }

    /// Processes domain events as they commit, until the task is dropped
    /// (the component `engine`).
    pub async fn run_events(self: Arc<Self>) {
        let committed = self.store.committed();
        loop {
            if let Err(e) = self.drain().await {
                tracing::error!(error = %e, "automation engine");
            }
            let _ = tokio::time::timeout(MAX_SLEEP, committed.notified()).await;
        }
    }

    /// Fires steps as they fall due, until the task is dropped (the
    /// component `scheduler`).
    pub async fn run_timers(self: Arc<Self>) {
        loop {
            if let Err(e) = self.fire_due().await {
                tracing::error!(error = %e, "automation scheduler");
            }
            let now = self.clock.now().as_millisecond();
            let sleep = match self.store.next_due() {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now).max(0) as u64),
                _ => MAX_SLEEP,
            };
            let _ =
                tokio::time::timeout(sleep.min(MAX_SLEEP), self.timers_changed.notified()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use super::*;
    use crate::automation::{apply_changes, Change};
    use crate::clock::ManualClock;
    use crate::domain::{DomainEvent, PlannedStep, StepState, Subject};
    use crate::model::Signal;
    use crate::rules::{RuleDirs, Rules};
    use crate::store::Store;

    /// A store and an engine whose rules are the shipped contact policy and
    /// `files` (path under the rule directory, text).
    fn engine_with(files: &[(&str, &str)]) -> (tempfile::TempDir, Store, Engine, Arc<ManualClock>) {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::StorageConfig {
            cache_capacity_mb: 16,
            ..Default::default()
        };
        let store = Store::open(&dir.path().join("data"), &config, Arc::new(|_| {})).unwrap();
        let root = dir.path().join("rules");
        for sub in ["rules", "templates", "plugins"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        // The one rule file a rule set needs.
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/contact.yaml");
        std::fs::copy(shipped, root.join("rules/contact.yaml")).unwrap();
        for (path, text) in files {
            std::fs::write(root.join(path), text).unwrap();
        }
        let rules = Rules::open(RuleDirs::under(&root), Box::new(|| "t".into())).unwrap();
        let clock = Arc::new(ManualClock::starting_at(
            "2030-01-01T00:00:00Z".parse().unwrap(),
        ));
        let engine = Engine::new(store.clone(), Arc::new(rules), clock.clone());
        (dir, store, engine, clock)
    }

    fn signal(id: &str, kind: &str, conversation: Option<&str>) -> (Signal, Subject) {
        let signal = Signal {
            id: id.into(),
            kind: kind.into(),
            user_id: Some("cust".into()),
            listing_id: None,
            conversation_id: conversation.map(str::to_owned),
            data: serde_json::Value::Null,
            received_at: "2030-01-01T00:00:00Z".into(),
        };
        let subject = Subject {
            user_id: signal.user_id.clone(),
            conversation_id: signal.conversation_id.clone(),
            ..Subject::default()
        };
        (signal, subject)
    }

    /// A step that fails `max_attempts` times is dead on its sequence: a
    /// re-plan does not arm it again, and a re-drive does.
    #[tokio::test]
    async fn a_dead_step_stays_dead_through_a_replan_until_it_is_redriven() {
        let rules = "signals: [go, again]\nsequences:\n  - name: s\n    trigger: go\n    replan_on: [again]\n    steps:\n      - name: a\n        after: 1h\n        when: 'boom()'\n        template: t\n        to: customer\n";
        let (_dir, store, engine, clock) = engine_with(&[
            ("rules/s.yaml", rules),
            ("templates/t.yaml", "t:\n  text: \"hello\"\n"),
        ]);
        let listing = crate::model::Listing::test_listing();
        store.put_listing(&listing).unwrap();
        let (conversation, _) = store
            .open_conversation(&listing, "cust", "2030-01-01T00:00:00Z")
            .await
            .unwrap();
        let (go, about) = signal("go", "go", Some(&conversation.id));
        store.put_signal(go, about).await.unwrap();
        engine.drain().await.unwrap();
        let id = format!("s/c:{}", conversation.id);
        let step = |store: &Store| store.instance(&id).unwrap().unwrap().steps[0].clone();
        assert_eq!(step(&store).state, StepState::Pending);

        clock.advance(jiff::SignedDuration::from_hours(2)).unwrap();
        engine.fire_due().await.unwrap();
        assert_eq!(step(&store).state, StepState::Dead);
        assert_eq!(store.dead_count(), 1);
        assert_eq!(store.next_due().unwrap(), None, "no timer");

        let (again, about) = signal("again", "again", Some(&conversation.id));
        store.put_signal(again, about).await.unwrap();
        engine.drain().await.unwrap();
        assert_eq!(step(&store).state, StepState::Dead, "the re-plan left it");
        assert_eq!(store.next_due().unwrap(), None);

        let dead = store.dead_items(1).unwrap().remove(0);
        crate::automation::changes::redrive(&store, &dead.id, engine.now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(step(&store).state, StepState::Pending);
        assert_eq!(store.next_due().unwrap(), Some(step(&store).due_ms));
    }

    /// Under more queued events than a round processes, a due step still
    /// fires: the scheduler does not wait for the event queue to empty (it
    /// never would under a load above the engine's capacity).
    #[tokio::test]
    async fn a_due_step_fires_while_events_are_still_queued() {
        let (_dir, store, engine, _) = engine_with(&[]);

        // A step due long ago, of a sequence no longer in the rules: it fires
        // as a skip, which finishes its instance.
        let trigger = DomainEvent {
            seq: 0,
            name: "e".into(),
            aliases: Vec::new(),
            at: "2029-01-01T00:00:00Z".into(),
            redriven_at: None,
            subject: Subject::default(),
            data: serde_json::Value::Null,
        };
        let instance = Instance {
            id: "gone/c:c1".into(),
            rule: "gone".into(),
            run: "run".into(),
            subject: Subject {
                conversation_id: Some("c1".into()),
                ..Subject::default()
            },
            trigger,
            steps: vec![PlannedStep {
                name: "s".into(),
                due_ms: 1_000,
                state: StepState::Pending,
                note: None,
            }],
        };
        apply_changes(&store, vec![Change::Start(Box::new(instance))])
            .await
            .unwrap();
        let signals = (0..3 * EVENTS_PER_ROUND).map(|i| {
            let signal = Signal {
                id: format!("s{i}"),
                kind: "viewed".into(),
                user_id: Some(format!("u{i}")),
                listing_id: None,
                conversation_id: None,
                data: serde_json::Value::Null,
                received_at: "2030-01-01T00:00:00Z".into(),
            };
            let subject = Subject {
                user_id: signal.user_id.clone(),
                ..Subject::default()
            };
            store.put_signal(signal, subject)
        });
        for queued in futures_util::future::join_all(signals).await {
            queued.unwrap();
        }

        assert_eq!(engine.fire_due().await.unwrap(), 1);
        assert!(store.instance("gone/c:c1").unwrap().is_none(), "it fired");
        let (_, waiting) = store
            .domain_backlog()
            .unwrap()
            .expect("events still queued");
        assert!(waiting > 0);
    }

    /// A step composed for a first exposure is sent under the variant the
    /// unit has when it fires: if another writer exposed the unit to another
    /// variant meanwhile, nothing is sent and the timer stays armed (the next
    /// round composes again); the exposure counts only when the firing
    /// stored it, so the counter follows the stored exposures.
    #[tokio::test]
    async fn a_step_fires_under_the_variant_its_unit_has_when_it_fires() {
        use crate::analytics::experiments::{self, NewExposure};
        use crate::model::experiment::{Metric, MetricKind, UnitKind};
        let (_dir, store, _engine, _) = engine_with(&[]);
        let listing = crate::model::Listing::test_listing();
        store.put_listing(&listing).unwrap();
        let (conversation, _) = store
            .open_conversation(&listing, "cust", "2030-01-01T00:00:00Z")
            .await
            .unwrap();
        let mut instance = crate::domain::test_instance(
            "x",
            Subject {
                conversation_id: Some(conversation.id.clone()),
                ..Subject::default()
            },
            1_000,
        );
        instance.steps.push(PlannedStep {
            name: "t".into(),
            due_ms: 2_000,
            state: StepState::Pending,
            note: None,
        });
        apply_changes(&store, vec![Change::Start(Box::new(instance))])
            .await
            .unwrap();
        let exposure = |unit: &str, variant: &str| NewExposure {
            experiment: "e".into(),
            variant: variant.into(),
            unit: UnitKind::Conversation,
            unit_id: unit.into(),
            at: "2030-01-01T00:00:00Z".into(),
            metric: Metric {
                kind: MetricKind::Replied,
                window_ms: 1_000,
            },
        };
        let send = |step: &str, unit: &str, variant: &str| {
            let message = NewMessage {
                conversation_id: conversation.id.clone(),
                sender_id: SYSTEM_SENDER.into(),
                client_id: format!("auto:run-x:{step}:{variant}"),
                content: "hello".into(),
                kind: crate::model::MessageType::Nudge,
                created_at: "2030-01-01T00:00:01Z".into(),
                moderation: None,
                automation: Some(Box::new(Automation {
                    rule: "r".into(),
                    step: step.into(),
                    template: "t".into(),
                    recipient_id: "cust".into(),
                    experiment: Some("e".into()),
                    variant: Some(variant.into()),
                })),
                actions: Vec::new(),
                attachments: Vec::new(),
                quick_reply_id: None,
                fingerprint: None,
            };
            let exposure = Box::new(exposure(unit, variant));
            Firing::Send(Box::new(message), Some(exposure))
        };
        let timer = |step: &str, due_ms| Timer {
            due_ms,
            instance: "x".into(),
            step: step.into(),
        };
        // Another writer exposes the unit to "slow" after "fast" was decided.
        let slow = exposure("u", "slow");
        store
            .transact("test", move |tx| {
                experiments::expose(&tx.analytics(), &slow)
            })
            .await
            .unwrap();

        let stale = fire(&store, timer("s", 1_000), send("s", "u", "fast"))
            .await
            .unwrap();
        assert!(stale.is_none(), "{stale:?}");
        assert_eq!(store.next_due().unwrap(), Some(1_000), "still armed");
        let pending = store.instance("x").unwrap().unwrap();
        assert_eq!(pending.steps[0].state, StepState::Pending);

        let sent = fire(&store, timer("s", 1_000), send("s", "u", "slow"))
            .await
            .unwrap()
            .unwrap();
        assert!(!sent.exposed, "the unit had its exposure");
        let provenance = sent.message.automation.unwrap();
        assert_eq!(provenance.variant.as_deref(), Some("slow"));

        let sent = fire(&store, timer("t", 2_000), send("t", "v", "fast"))
            .await
            .unwrap()
            .unwrap();
        assert!(sent.exposed, "a first exposure");
        let tallies = store.tallies("e").unwrap();
        assert_eq!(tallies["slow"].exposures, 1);
        assert_eq!(tallies["fast"].exposures, 1);
    }
}
