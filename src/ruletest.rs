//! `parleyd test-rules`: rule tests on a virtual clock. Each test is a timeline
//! of events (messages, signals, bookings) at virtual times and the automated
//! messages (template, recipient, time) and notifications (type, recipient,
//! time, channels) expected, or forbidden. It runs the
//! real service, store and engine in process, on a temporary data directory,
//! with a manual clock that jumps from one due step to the next: "72 hours
//! later" takes milliseconds. Each test prints the timeline of what was sent,
//! which doubles as a dry run of a rule change.
//!
//! ```yaml
//! tests:
//!   - name: the provider's reply stops the follow-ups
//!     timeline:
//!       - { at: 0h, message: { from: customer, text: "Is May free?" } }
//!       - { at: 30h, message: { from: provider, text: "Yes!" } }
//!     expect:
//!       - { template: inquiry_follow_up, to: customer, at: 24h }
//!       - { notification: new_message, to: customer, channels: [in_app, push, email] }
//!     forbid:
//!       - { template: inquiry_final }
//! ```
//!
//! A test may pin experiment variants (`variants: {follow_up_wording:
//! short}`): every unit then gets that variant, whatever the hash and the
//! experiment's start and stop; `variant:` in an expectation matches the
//! variant a message's provenance names.
//!
//! Notifications are routed as if every channel had an endpoint (and the
//! fixture people an email and a phone), so a test shows where they would go.
//!
//! A rule, template or plugin that fails while a test runs (a script error,
//! a broken limit) fails the test, with the error at its file:line:column.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;

use crate::auth::{Caller, Role};
use crate::automation::Engine;
use crate::clock::{parse_duration, Clock, ManualClock};
use crate::config::Config;
use crate::hub::Hub;
use crate::model::{
    format_time, BookingInput, BookingPatch, ListingInput, Message, SendInput, SignalInput, Stage,
    UserInput,
};
use crate::notifications::router::Enabled;
use crate::rules::script::RULE_ERRORS;
use crate::rules::{RuleDirs, Rules};
use crate::service::App;
use crate::store::Store;

/// Virtual time zero of every test: fixed, so runs are reproducible.
const EPOCH: &str = "2030-01-07T09:00:00Z";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    tests: Vec<RuleTest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTest {
    name: String,
    /// Overrides of the fixture listing (fields of `PUT /v1/listings`).
    #[serde(default)]
    listing: serde_json::Map<String, serde_json::Value>,
    /// Overrides of the fixture people (fields of `PUT /v1/users`).
    #[serde(default)]
    customer: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    provider: serde_json::Map<String, serde_json::Value>,
    timeline: Vec<Entry>,
    #[serde(default)]
    expect: Vec<Expectation>,
    #[serde(default)]
    forbid: Vec<Expectation>,
    /// How long the virtual clock runs (default: 14 days after the last event).
    #[serde(default)]
    until: Option<String>,
    /// Pinned experiment variants (experiment name to variant name): every
    /// unit gets these, whatever the hash and the experiments' start and stop.
    #[serde(default)]
    variants: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    at: String,
    #[serde(flatten)]
    event: Event,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Who {
    Customer,
    Provider,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Event {
    /// A person writes in the conversation (opened if need be).
    Message { from: Who, text: String },
    /// The marketplace posts a signal about the fixture listing (and the
    /// conversation, if one is open).
    Signal {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default = "customer")]
        from: Who,
        #[serde(default)]
        data: serde_json::Value,
    },
    /// A booking, its times relative to virtual time zero (`72h`).
    Booking {
        start: String,
        end: String,
        #[serde(default)]
        stage: Option<Stage>,
    },
    /// The booking moves or changes stage.
    BookingUpdate {
        #[serde(default)]
        start: Option<String>,
        #[serde(default)]
        end: Option<String>,
        #[serde(default)]
        stage: Option<Stage>,
    },
}

fn customer() -> Who {
    Who::Customer
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    #[serde(default)]
    template: Option<String>,
    /// A notification of this type (`rules/routing.yaml`) instead of a message.
    #[serde(default)]
    notification: Option<String>,
    /// The notification's channels, fallbacks included, in any order.
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    to: Option<Who>,
    #[serde(default)]
    at: Option<String>,
    /// Text the message must contain: one string or a list.
    #[serde(default)]
    contains: Option<Texts>,
    /// The experiment variant the message was chosen by (its provenance).
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    fn all(&self) -> &[String] {
        match self {
            Texts::One(one) => std::slice::from_ref(one),
            Texts::Many(many) => many,
        }
    }
}

/// An automated message or a notification, as the test sees it.
struct Sent {
    offset: jiff::SignedDuration,
    /// The message's template, or the notification's type.
    template: String,
    /// A notification's channels; `None` for a message.
    channels: Option<Vec<String>>,
    to: Who,
    content: String,
    /// The experiment variant that chose a message's step.
    variant: Option<String>,
}

fn show(d: jiff::SignedDuration) -> String {
    let minutes = d.as_secs() / 60;
    match (minutes / 60, minutes % 60) {
        (h, 0) => format!("{h}h"),
        (h, m) => format!("{h}h{m:02}m"),
    }
}

impl Expectation {
    fn matches(&self, sent: &Sent) -> Result<bool, String> {
        if let Some(at) = &self.at {
            let at = parse_duration(at)?;
            // Steps fire when due; the scheduler's resolution is the millisecond.
            if (sent.offset - at).abs() > jiff::SignedDuration::from_secs(1) {
                return Ok(false);
            }
        }
        let kind_matches = match (&self.notification, &sent.channels) {
            (Some(kind), Some(channels)) => {
                *kind == sent.template
                    && self.channels.as_ref().is_none_or(|want| {
                        want.len() == channels.len() && want.iter().all(|c| channels.contains(c))
                    })
            }
            (None, None) => self.template.as_ref().is_none_or(|t| *t == sent.template),
            _ => false,
        };
        Ok(kind_matches
            && self.to.is_none_or(|to| to == sent.to)
            && self
                .variant
                .as_ref()
                .is_none_or(|v| sent.variant.as_ref() == Some(v))
            && self.contains.as_ref().is_none_or(|texts| {
                texts
                    .all()
                    .iter()
                    .all(|t| sent.content.contains(t.as_str()))
            }))
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(t) = &self.template {
            parts.push(format!("template {t}"));
        }
        if let Some(n) = &self.notification {
            parts.push(format!("notification {n}"));
        }
        if let Some(c) = &self.channels {
            parts.push(format!("on {}", c.join(", ")));
        }
        if let Some(to) = self.to {
            parts.push(format!("to {to:?}").to_lowercase());
        }
        if let Some(variant) = &self.variant {
            parts.push(format!("variant {variant}"));
        }
        if let Some(at) = &self.at {
            parts.push(format!("at {at}"));
        }
        if let Some(texts) = &self.contains {
            parts.push(format!("containing {:?}", texts.all()));
        }
        parts.join(", ")
    }
}

/// Runs every test file under `tests_dir` against the rules in `dirs`; prints
/// the results and returns whether all passed.
pub async fn run_all(dirs: &RuleDirs, tests_dir: &Path) -> Result<bool, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(tests_dir)
        .map_err(|e| format!("cannot read {}: {e}", tests_dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    // The tests run on this thread (the engine is driven, not spawned), so
    // its default subscriber sees every rule error they cause.
    let rule_errors = RuleErrors::default();
    let _collecting =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(rule_errors.clone()));
    let (mut passed, mut failed) = (0, 0);
    for path in paths {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let file: TestFile = serde_yaml::from_str(&text).map_err(|e| {
            let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
            format!("{}:{line}:{column}: {e}", path.display())
        })?;
        for test in &file.tests {
            let outcome = run_one(dirs, test).await;
            let errors = rule_errors.take();
            let outcome = match outcome {
                Ok(timeline) if !errors.is_empty() => {
                    Err(format!("{}\nwhat was sent:\n{timeline}", errors.join("\n")))
                }
                Err(problems) if !errors.is_empty() => {
                    Err(format!("{}\n{problems}", errors.join("\n")))
                }
                outcome => outcome,
            };
            match outcome {
                Ok(timeline) => {
                    passed += 1;
                    println!("ok   {}: {}", path.display(), test.name);
                    print!("{timeline}");
                }
                Err(problems) => {
                    failed += 1;
                    println!("FAIL {}: {}", path.display(), test.name);
                    for p in problems.lines() {
                        println!("       {p}");
                    }
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    Ok(failed == 0)
}

/// The rule errors logged (at [`RULE_ERRORS`]) since the last `take`, each
/// as its message followed by its other fields.
#[derive(Clone, Default)]
struct RuleErrors(Arc<Mutex<Vec<String>>>);

impl RuleErrors {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RuleErrors {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() != RULE_ERRORS {
            return;
        }
        let (mut message, mut fields) = (String::new(), Vec::new());
        event.record(
            &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| match field.name() {
                "message" => message = format!("{value:?}"),
                name => fields.push(format!("{name}={value:?}")),
            },
        );
        let line = match fields.is_empty() {
            true => format!("rule error: {message}"),
            false => format!("rule error: {message} ({})", fields.join(", ")),
        };
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
}

/// The fixture: a customer, a provider and a listing, over a fresh store.
struct World {
    app: Arc<App>,
    /// The world's own handle on the store it opened, to read what happened.
    store: Store,
    engine: Engine,
    clock: Arc<ManualClock>,
    start: jiff::Timestamp,
    booking_id: Option<String>,
    _data: tempfile::TempDir,
}

fn caller(user_id: &str, role: Role) -> Caller {
    Caller {
        user_id: user_id.to_owned(),
        role,
    }
}

fn merged<T: serde::de::DeserializeOwned>(
    base: serde_json::Value,
    overrides: &serde_json::Map<String, serde_json::Value>,
) -> Result<T, String> {
    let mut value = base;
    if let Some(object) = value.as_object_mut() {
        object.extend(overrides.clone());
    }
    serde_json::from_value(value).map_err(|e| format!("fixture: {e}"))
}

impl World {
    async fn new(dirs: &RuleDirs, test: &RuleTest) -> Result<World, String> {
        let data = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = Config::parse(
            &format!(
                "listen: 127.0.0.1:0\ndata_dir: {:?}\nrules_dir: {:?}\nauth:\n  jwt_secret: rule-tests-only-secret\n  service_key: rule-tests-only-key\n",
                data.path(),
                dirs.rules
            ),
            Path::new("test-rules"),
        )
        .map_err(|e| e.to_string())?;
        let start: jiff::Timestamp = EPOCH.parse().map_err(|e| format!("{e}"))?;
        let clock = Arc::new(ManualClock::starting_at(start));
        let hub = Arc::new(Hub::default());
        let store = Store::open(data.path(), &config.storage, Arc::new(|_| {}))
            .map_err(|e| e.to_string())?;
        let rules_clock = clock.clone();
        let rules = Rules::open(
            dirs.clone(),
            Box::new(move || format_time(rules_clock.now())),
        )
        .map_err(|errors| crate::rules::error_lines(&errors))?;
        let set = rules.current();
        for (experiment, variant) in &test.variants {
            match set.experiment(experiment) {
                None => {
                    return Err(format!(
                        "variants: no experiment {experiment:?} in the rules"
                    ))
                }
                Some(e) if e.variant(variant).is_none() => {
                    return Err(format!(
                        "variants: experiment {experiment} has no variant {variant:?}"
                    ))
                }
                Some(_) => {}
            }
        }
        let rules = Arc::new(rules);
        let engine = Engine::new(store.clone(), rules.clone(), clock.clone())
            .with_channels(Enabled {
                push: true,
                email: true,
                sms: true,
                webhook: false,
            })
            .with_pins(test.variants.clone());
        let app = Arc::new(App::new(config, store.clone(), hub, rules, clock.clone()));
        let service = caller("marketplace", Role::Service);
        let dates: Vec<String> = (1..=4).map(|d| format!("2030-02-{:02}", d * 3)).collect();
        let listing: ListingInput = merged(
            serde_json::json!({
                "title": "Sea-view loft", "provider_id": "provider",
                "response_time": "within an hour", "availability": dates,
                "address": "1 Harbour Road",
            }),
            &test.listing,
        )?;
        for (id, name, overrides) in [
            ("customer", "Ana", &test.customer),
            ("provider", "Bruno", &test.provider),
        ] {
            let user: UserInput = merged(
                serde_json::json!({"name": name, "timezone": "Europe/Paris",
                    "email": format!("{id}@example.test"), "phone": "+33600000000"}),
                overrides,
            )?;
            app.put_user(service.clone(), id, user)
                .map_err(|e| e.to_string())?;
        }
        app.put_listing(service, "listing", listing)
            .map_err(|e| e.to_string())?;
        Ok(World {
            app,
            store,
            engine,
            clock,
            start,
            booking_id: None,
            _data: data,
        })
    }

    fn at(&self, offset: &str) -> Result<jiff::Timestamp, String> {
        self.start
            .checked_add(parse_duration(offset)?)
            .map_err(|e| e.to_string())
    }

    /// Processes events and due steps until nothing more happens.
    async fn settle(&self) -> Result<(), String> {
        loop {
            let events = self.engine.drain().await.map_err(|e| e.to_string())?;
            let fired = self.engine.fire_due().await.map_err(|e| e.to_string())?;
            if events + fired == 0 {
                return Ok(());
            }
        }
    }

    /// Moves the clock to `target`, stopping at every due step on the way so
    /// each fires at its own time.
    async fn advance_to(&self, target: jiff::Timestamp) -> Result<(), String> {
        loop {
            self.settle().await?;
            let next = self.store.next_due().map_err(|e| e.to_string())?;
            match next.and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok()) {
                Some(due) if due <= target => {
                    self.clock.set(due);
                }
                _ => break,
            }
        }
        self.clock.set(target);
        self.settle().await
    }

    async fn conversation_id(&self) -> Result<String, String> {
        let customer = caller("customer", Role::Customer);
        let (view, _) = self
            .app
            .open_conversation(customer, "listing")
            .await
            .map_err(|e| e.to_string())?;
        Ok(view.id)
    }

    async fn apply(&mut self, event: &Event) -> Result<(), String> {
        let service = caller("marketplace", Role::Service);
        match event {
            Event::Message { from, text } => {
                let conversation_id = self.conversation_id().await?;
                let who = match from {
                    Who::Customer => caller("customer", Role::Customer),
                    Who::Provider => caller("provider", Role::Provider),
                };
                let input = SendInput {
                    client_id: uuid::Uuid::now_v7().to_string(),
                    content: text.clone(),
                    quick_reply_id: None,
                };
                self.app
                    .send(who, &conversation_id, input)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Event::Signal { kind, from, data } => {
                let existing = self
                    .store
                    .conversations_of("customer")
                    .map_err(|e| e.to_string())?;
                let input = SignalInput {
                    kind: kind.clone(),
                    user_id: Some(format!("{from:?}").to_lowercase()),
                    listing_id: Some("listing".into()),
                    conversation_id: existing.first().map(|c| c.id.clone()),
                    data: data.clone(),
                    id: None,
                };
                self.app
                    .signal(service, input)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Event::Booking { start, end, stage } => {
                let input = BookingInput {
                    id: Some("booking".into()),
                    conversation_id: None,
                    listing_id: Some("listing".into()),
                    customer_id: Some("customer".into()),
                    start: format_time(self.at(start)?),
                    end: format_time(self.at(end)?),
                    stage: stage.unwrap_or(Stage::Confirmed),
                };
                let booking = self
                    .app
                    .create_booking(service, input)
                    .await
                    .map_err(|e| e.to_string())?;
                self.booking_id = Some(booking.id);
            }
            Event::BookingUpdate { start, end, stage } => {
                let id = self
                    .booking_id
                    .clone()
                    .ok_or("booking_update before any booking")?;
                let time = |t: &Option<String>| -> Result<Option<String>, String> {
                    t.as_deref()
                        .map(|t| self.at(t).map(format_time))
                        .transpose()
                };
                let patch = BookingPatch {
                    start: time(start)?,
                    end: time(end)?,
                    stage: *stage,
                };
                self.app
                    .update_booking(service, &id, patch)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Every automated message sent in the fixture's conversations.
    fn sent(&self) -> Result<Vec<Sent>, String> {
        let mut sent = Vec::new();
        let conversations = self
            .store
            .conversations_of("customer")
            .map_err(|e| e.to_string())?;
        for conversation in conversations {
            let messages: Vec<Message> = self
                .store
                .messages(&conversation.id, 0, usize::MAX)
                .map_err(|e| e.to_string())?;
            for m in messages {
                let Some(automation) = m.automation else {
                    continue;
                };
                let at: jiff::Timestamp = m.created_at.parse().map_err(|e| format!("{e}"))?;
                sent.push(Sent {
                    offset: at.duration_since(self.start),
                    template: automation.template,
                    variant: automation.variant,
                    channels: None,
                    to: if automation.recipient_id == conversation.customer_id {
                        Who::Customer
                    } else {
                        Who::Provider
                    },
                    content: m.content,
                });
            }
        }
        for n in self.store.notifications().map_err(|e| e.to_string())? {
            let (Some(user), Ok(at)) = (&n.user_id, n.created_at.parse::<jiff::Timestamp>()) else {
                continue;
            };
            sent.push(Sent {
                offset: at.duration_since(self.start),
                to: if user == "customer" {
                    Who::Customer
                } else {
                    Who::Provider
                },
                channels: Some(
                    n.deliveries
                        .iter()
                        .map(|d| d.channel.name().to_owned())
                        .collect(),
                ),
                template: n.kind,
                content: n.title,
                variant: None,
            });
        }
        sent.sort_by_key(|s| s.offset);
        Ok(sent)
    }
}

/// Runs one test; the timeline of what was sent, or what went wrong.
async fn run_one(dirs: &RuleDirs, test: &RuleTest) -> Result<String, String> {
    let mut world = World::new(dirs, test).await?;
    let mut timeline: Vec<&Entry> = test.timeline.iter().collect();
    let mut last = jiff::SignedDuration::ZERO;
    for entry in &timeline {
        last = last.max(parse_duration(&entry.at)?);
    }
    timeline.sort_by_key(|e| parse_duration(&e.at).unwrap_or_default());
    for entry in timeline {
        world.advance_to(world.at(&entry.at)?).await?;
        world
            .apply(&entry.event)
            .await
            .map_err(|e| format!("at {}: {e}", entry.at))?;
        world.settle().await?;
    }
    let until = match &test.until {
        Some(until) => world.at(until)?,
        None => world
            .start
            .checked_add(last + jiff::SignedDuration::from_hours(14 * 24))
            .map_err(|e| e.to_string())?,
    };
    world.advance_to(until).await?;

    let sent = world.sent()?;
    let mut report = String::new();
    for s in &sent {
        let what = match &s.channels {
            Some(channels) => format!("[{}] {}", channels.join(", "), s.content),
            None => s.content.clone(),
        };
        report.push_str(&format!(
            "       {:>7}  to {:<8}  {:<24} {what}\n",
            show(s.offset),
            format!("{:?}", s.to).to_lowercase(),
            match &s.channels {
                Some(_) => format!("notify:{}", s.template),
                None => s.template.clone(),
            },
        ));
    }
    let mut problems = Vec::new();
    let mut used = vec![false; sent.len()];
    for expectation in &test.expect {
        let mut found = false;
        for (i, s) in sent.iter().enumerate() {
            if !used[i] && expectation.matches(s)? {
                used[i] = true;
                found = true;
                break;
            }
        }
        if !found {
            problems.push(format!("expected, not sent: {}", expectation.describe()));
        }
    }
    for forbidden in &test.forbid {
        for s in &sent {
            if forbidden.matches(s)? {
                problems.push(format!(
                    "sent, but forbidden ({}): {} to {:?} at {}",
                    forbidden.describe(),
                    s.template,
                    s.to,
                    show(s.offset)
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(format!("{}\nwhat was sent:\n{report}", problems.join("\n")))
    }
}
