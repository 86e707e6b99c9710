//! `parleyd-automation-bench`: benchmarks of the automation engine, in process.
//!
//! - `engine`: a generated rule set of `--rules` sequences over the shipped
//!   templates; users, listings and conversations; then `--events` domain
//!   events (people's messages through `App::send`, marketplace signals through
//!   `App::signal`), enqueued in rounds and processed by `Engine::drain()`. The
//!   enqueue and the drain are timed separately and never overlap.
//! - `timers`: fills a fresh store with pending timers through
//!   `automation::apply_changes(Change::Start ..)`, then restarts it and times how
//!   soon the scheduler could answer.
//! - `reload`: hot-reload latency: from a rule or template file write to the new
//!   rule set in force (`Rules::status().version`).
//!
//! The clock is a `ManualClock` that never moves, so no step falls due and the
//! engine figures are those of the event path alone.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use parleyd::auth::{Caller, Role};
use parleyd::automation::{apply_changes, Change, Engine};
use parleyd::clock::{Clock, ManualClock};
use parleyd::config::{Config, StorageConfig};
use parleyd::domain::{DomainEvent, Instance, PlannedStep, StepState, Subject};
use parleyd::hub::Hub;
use parleyd::model::{format_time, ListingInput, SendInput, SignalInput, UserInput};
use parleyd::rules::{Reloader, RuleDirs, Rules};
use parleyd::service::App;
use parleyd::store::Store;

/// Virtual time of the engine run (the clock never moves).
const EPOCH: &str = "2030-01-07T09:00:00Z";

#[derive(Parser, Debug)]
#[command(
    name = "parleyd-automation-bench",
    about = "Benchmarks of parleyd's automation engine, timers and rule reload"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Domain events through the engine: enqueue (send/signal) and drain, timed apart.
    Engine(EngineArgs),
    /// Fill a store with pending timers, restart it, and time the first answers.
    Timers(TimersArgs),
    /// Hot-reload latency: file write to the new rule set in force.
    Reload(ReloadArgs),
    /// (internal) Re-opens a timers store in a fresh process and prints figures.
    #[command(hide = true)]
    Reopen {
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct EngineArgs {
    /// Sequences in the generated rule file.
    #[arg(long, default_value_t = 50)]
    rules: usize,
    /// Domain events to generate (messages and signals).
    #[arg(long, default_value_t = 10_000)]
    events: usize,
    /// Conversations (one customer each) the events are spread over; by
    /// default `--per-provider` for each provider.
    #[arg(long)]
    conversations: Option<usize>,
    /// Conversations per provider when `--conversations` is not given.
    #[arg(long, default_value_t = 50)]
    per_provider: usize,
    /// Providers; each has two listings, the conversations are spread over them.
    #[arg(long, default_value_t = 20)]
    providers: usize,
    /// Events enqueued per round; each round is then drained on its own.
    #[arg(long, default_value_t = 256)]
    round: usize,
    /// Sends/signals in flight at once while enqueueing.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// storage.durability: group_commit (default, fsync per write batch) or periodic.
    #[arg(long, default_value = "group_commit")]
    durability: String,
    /// Also copy the shipped plugins/ (promo.rhai) into the rule set.
    #[arg(long)]
    plugins: bool,
    /// The repository whose rules/contact.yaml and templates/ are used
    /// (default: the one this tool was built in).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    repo: PathBuf,
}

#[derive(clap::Args, Debug)]
struct TimersArgs {
    /// Pending timers to create (one instance with one pending step each).
    #[arg(long, default_value_t = 1_000_000)]
    count: usize,
    /// Instances per `automation::apply_changes` call (one writer transaction).
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Stop filling after this many seconds and extrapolate.
    #[arg(long, default_value_t = 150)]
    max_seconds: u64,
    /// Data directory (default: a temporary one, removed at the end).
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct ReloadArgs {
    #[arg(long, default_value_t = 20)]
    iterations: usize,
    /// Pause between writes (longer than the watcher's 100 ms debounce).
    #[arg(long, default_value_t = 300)]
    gap_ms: u64,
    /// The repository whose rules/, templates/ and plugins/ are copied.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    repo: PathBuf,
}

fn main() -> Result<(), String> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match cli.command {
        Command::Engine(args) => runtime.block_on(engine_bench(args)),
        Command::Timers(args) => runtime.block_on(timers_bench(args)),
        Command::Reload(args) => reload_bench(args),
        Command::Reopen { dir } => reopen_report(&dir, "fresh process"),
    }
}

// ---------------------------------------------------------------------------
// Helpers

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A small deterministic generator (xorshift64*), so runs are repeatable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `VmRSS` and `VmHWM` of this process, in MiB.
fn memory() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Bytes of the files under `dir` (apparent size, and allocated on disk).
fn disk_usage(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let (mut apparent, mut allocated) = (0, 0);
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                apparent += meta.len();
                allocated += meta.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `p`th percentile (0–100) of sorted values (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// A counter, or a summary's `_sum`/`_count`, from the Prometheus rendering.
fn metric(handle: &PrometheusHandle, name: &str) -> f64 {
    handle
        .render()
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // Every labelled series counts too: `name{…} value`.
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .fold(0.0, |sum, v| sum + v)
}

fn copy_files(from: &Path, to: &Path, exts: &[&str]) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(err)?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let path = entry.map_err(err)?.path();
        let wanted = path
            .extension()
            .is_some_and(|x| exts.iter().any(|e| x == *e));
        if path.is_file() && wanted {
            let name = path.file_name().ok_or("file without a name")?;
            std::fs::copy(&path, to.join(name)).map_err(err)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// engine

/// Templates of the shipped `templates/` the generated steps send.
const TEMPLATES: &[&str] = &[
    "inquiry_ack",
    "provider_reply_reminder",
    "inquiry_follow_up",
    "inquiry_final",
    "viewed_not_messaged",
    "checkout_recovery",
];

/// Conditions of the generated sequences, checked when their trigger arrives.
const CONDITIONS: &[Option<&str>] = &[
    None,
    Some("listing.open_dates > 0"),
    Some("customer.timezone == \"Europe/Paris\""),
    Some("conversation.phase == \"pre_booking\" && listing.open_dates >= 1"),
    Some("listing.open_dates > 1"),
];

/// Signal types the generated sequences start on.
const SIGNALS: usize = 25;

/// Signal types that only stop sequences.
const STOP_SIGNALS: &[&str] = &["bench_stop_a", "bench_stop_b", "unsubscribed"];

/// The trigger of the `i`th generated sequence: 10 on `inquiry_received`, then
/// 5 each on `message_sent`, `customer_replied` and `provider_replied`, the rest
/// on distinct signals (cycled if there are more than 25).
fn trigger(i: usize) -> String {
    match i {
        0..=9 => "inquiry_received".into(),
        10..=14 => "message_sent".into(),
        15..=19 => "customer_replied".into(),
        20..=24 => "provider_replied".into(),
        _ => format!("bench_signal_{:02}", (i - 25) % SIGNALS),
    }
}

fn generated_rules(count: usize) -> String {
    let signals: Vec<String> = (0..SIGNALS)
        .map(|i| format!("bench_signal_{i:02}"))
        .chain(STOP_SIGNALS.iter().map(|s| s.to_string()))
        .collect();
    let mut yaml = format!(
        "# Generated by parleyd-automation-bench.\nsignals: [{}]\nsequences:\n",
        signals.join(", ")
    );
    for i in 0..count {
        let trigger = trigger(i);
        let mut stop_on = vec![STOP_SIGNALS[i % STOP_SIGNALS.len()].to_owned()];
        match trigger.as_str() {
            "provider_replied" => stop_on.push("customer_replied".into()),
            _ => stop_on.push("provider_replied".into()),
        }
        if i % 4 == 0 {
            stop_on.push("booking_created".into());
        }
        if i % 3 == 0 {
            stop_on.push(format!("bench_signal_{:02}", (i + 7) % SIGNALS));
        }
        yaml.push_str(&format!(
            "  - name: bench_seq_{i:03}\n    trigger: {trigger}\n    stop_on: [{}]\n",
            stop_on.join(", ")
        ));
        if let Some(when) = CONDITIONS[i % CONDITIONS.len()] {
            yaml.push_str(&format!("    when: '{when}'\n"));
        }
        yaml.push_str("    steps:\n");
        for (s, after) in ["1h", "24h", "72h"].iter().take(1 + i % 3).enumerate() {
            yaml.push_str(&format!(
                "      - name: step_{s}\n        after: {after}\n        template: {}\n        to: {}\n",
                TEMPLATES[(i + s) % TEMPLATES.len()],
                if (i + s) % 4 == 1 { "provider" } else { "customer" },
            ));
        }
    }
    yaml
}

/// One generated domain event.
#[derive(Debug, Clone)]
enum Event {
    /// A message in conversation `c`, from its customer or its provider.
    Message { c: usize, provider: bool },
    /// A signal of type `kind` about conversation `c` (its customer).
    Signal { c: usize, kind: String },
}

struct Fixture {
    app: Arc<App>,
    /// Per conversation: (id, customer, provider, listing).
    conversations: Vec<(String, String, String, String)>,
}

fn caller(user_id: &str, role: Role) -> Caller {
    Caller {
        user_id: user_id.to_owned(),
        role,
    }
}

async fn enqueue(fixture: &Arc<Fixture>, event: Event, n: usize) -> Result<(), String> {
    match event {
        Event::Message { c, provider } => {
            let (id, customer, provider_id, _) = &fixture.conversations[c];
            let who = if provider {
                caller(provider_id, Role::Provider)
            } else {
                caller(customer, Role::Customer)
            };
            let text = if provider {
                "Yes, those dates are free. Shall I hold them for you?"
            } else {
                "Hello! Is the loft still free in spring, and is there parking nearby?"
            };
            let input = SendInput {
                client_id: format!("bench-{n}"),
                content: text.to_owned(),
                quick_reply_id: None,
            };
            fixture.app.send(who, id, input).await.map_err(err)?;
        }
        Event::Signal { c, kind } => {
            let (id, customer, _, listing) = &fixture.conversations[c];
            let input = SignalInput {
                kind,
                user_id: Some(customer.clone()),
                listing_id: Some(listing.clone()),
                conversation_id: Some(id.clone()),
                data: serde_json::json!({ "n": n, "source": "bench" }),
                id: None,
            };
            fixture
                .app
                .signal(caller("marketplace", Role::Service), input)
                .await
                .map_err(err)?;
        }
    }
    Ok(())
}

/// The event mix: 45 % customer messages (the first in a conversation is its
/// `inquiry_received`, later ones `customer_replied`), 15 % provider replies,
/// 38 % start signals, 2 % stop-only signals.
fn generate(rng: &mut Rng, conversations: usize) -> Event {
    let c = rng.below(conversations);
    match rng.below(100) {
        0..=44 => Event::Message { c, provider: false },
        45..=59 => Event::Message { c, provider: true },
        60..=97 => Event::Signal {
            c,
            kind: format!("bench_signal_{:02}", rng.below(SIGNALS)),
        },
        _ => Event::Signal {
            c,
            kind: STOP_SIGNALS[rng.below(STOP_SIGNALS.len())].to_owned(),
        },
    }
}

async fn engine_bench(args: EngineArgs) -> Result<(), String> {
    let metrics = PrometheusBuilder::new().install_recorder().map_err(err)?;
    let tmp = tempfile::tempdir().map_err(err)?;
    let root = tmp.path().join("rules-root");
    let dirs = RuleDirs::under(&root);
    std::fs::create_dir_all(&dirs.rules).map_err(err)?;
    std::fs::copy(
        args.repo.join("rules/contact.yaml"),
        dirs.rules.join("contact.yaml"),
    )
    .map_err(|e| format!("rules/contact.yaml: {e}"))?;
    copy_files(
        &args.repo.join("templates"),
        &dirs.templates,
        &["yaml", "yml"],
    )?;
    if args.plugins {
        copy_files(&args.repo.join("plugins"), &dirs.plugins, &["rhai"])?;
    }
    std::fs::write(dirs.rules.join("bench.yaml"), generated_rules(args.rules)).map_err(err)?;

    let data = tmp.path().join("data");
    let config = Config::parse(
        &format!(
            "listen: 127.0.0.1:0\ndata_dir: {data:?}\nrules_dir: {:?}\n\
             auth:\n  jwt_secret: bench-only-secret\n  service_key: bench-only-key\n\
             storage:\n  durability: {}\n\
             limits:\n  send_rate_per_second: 1000000\n  send_burst: 1000000\n",
            dirs.rules, args.durability
        ),
        Path::new("bench"),
    )
    .map_err(err)?;
    let start: jiff::Timestamp = EPOCH.parse().map_err(err)?;
    let clock = Arc::new(ManualClock::starting_at(start));
    let store = Store::open(&data, &config.storage, Arc::new(|_| {})).map_err(err)?;
    let rules_clock = clock.clone();
    let rules = Rules::open(dirs, Box::new(move || format_time(rules_clock.now())))
        .map_err(|errors| parleyd::rules::error_lines(&errors))?;
    let rules = Arc::new(rules);
    let sequences: Vec<String> = rules
        .current()
        .sequences
        .iter()
        .map(|s| s.name.clone())
        .collect();
    let plugins = rules.current().plugins.len();
    let engine = Engine::new(store.clone(), rules.clone(), clock.clone());
    let app = Arc::new(App::new(
        config,
        store.clone(),
        Arc::new(Hub::default()),
        rules,
        clock.clone(),
    ));

    // Users, listings (two per provider; 0–2 open dates) and conversations.
    let setup = Instant::now();
    let service = caller("marketplace", Role::Service);
    let listings = args.providers.max(1) * 2;
    for p in 0..args.providers.max(1) {
        let user: UserInput =
            serde_json::from_value(serde_json::json!({"name": format!("Provider {p}"),
                "timezone": "Europe/Paris"}))
            .map_err(err)?;
        app.put_user(service.clone(), &format!("p{p}"), user)
            .map_err(err)?;
    }
    for l in 0..listings {
        let dates: Vec<String> = (0..l % 3)
            .map(|d| format!("2030-02-{:02}", d + 1))
            .collect();
        let listing: ListingInput = serde_json::from_value(serde_json::json!({
            "title": format!("Loft {l}"), "provider_id": format!("p{}", l / 2),
            "response_time": "within an hour", "availability": dates,
            "address": "1 Harbour Road",
        }))
        .map_err(err)?;
        app.put_listing(service.clone(), &format!("l{l}"), listing)
            .map_err(err)?;
    }
    let conversation_count = args
        .conversations
        .unwrap_or(args.providers.max(1) * args.per_provider);
    let mut conversations = Vec::with_capacity(conversation_count);
    for c in 0..conversation_count {
        let tz = if c % 2 == 0 {
            "Europe/Paris"
        } else {
            "America/New_York"
        };
        let user: UserInput = serde_json::from_value(
            serde_json::json!({"name": format!("Customer {c}"), "timezone": tz}),
        )
        .map_err(err)?;
        let customer = format!("u{c}");
        app.put_user(service.clone(), &customer, user)
            .map_err(err)?;
        let listing = format!("l{}", c % listings);
        let (view, _) = app
            .open_conversation(caller(&customer, Role::Customer), &listing)
            .await
            .map_err(err)?;
        let provider = format!("p{}", (c % listings) / 2);
        conversations.push((view.id, customer, provider, listing));
    }
    let opened = engine.drain().await.map_err(err)?;
    println!(
        "setup: {} sequences ({} generated), {} plugins, {} providers, {listings} listings, {} conversations; {opened} conversation_opened events drained; {:.1} s",
        sequences.len(),
        args.rules,
        plugins,
        args.providers.max(1),
        conversation_count,
        setup.elapsed().as_secs_f64()
    );
    println!(
        "durability: {}; round: {} events; {} in flight while enqueueing",
        args.durability, args.round, args.concurrency
    );

    let fixture = Arc::new(Fixture { app, conversations });
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let events: Vec<Event> = (0..args.events)
        .map(|_| generate(&mut rng, conversation_count.max(1)))
        .collect();
    let failures = Arc::new(AtomicUsize::new(0));
    let semaphore = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let (mut enqueue_total, mut drain_total) = (Duration::ZERO, Duration::ZERO);
    let (mut drain_rounds, mut enqueue_rounds, mut per_event) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut processed = 0;
    let (mut tx_count, mut tx_seconds) = (0.0, 0.0);
    let progress_every = (args.events / args.round.max(1) / 10).max(1);
    for (r, chunk) in events.chunks(args.round.max(1)).enumerate() {
        let began = Instant::now();
        let mut tasks = JoinSet::new();
        for (i, event) in chunk.iter().enumerate() {
            let n = r * args.round + i;
            let permit = semaphore.clone().acquire_owned().await.map_err(err)?;
            let (fixture, event, failures) = (fixture.clone(), event.clone(), failures.clone());
            tasks.spawn(async move {
                if let Err(e) = enqueue(&fixture, event, n).await {
                    if failures.fetch_add(1, Ordering::Relaxed) < 5 {
                        eprintln!("enqueue failed: {e}");
                    }
                }
                drop(permit);
            });
        }
        while tasks.join_next().await.is_some() {}
        let enqueued = began.elapsed();

        let (count0, seconds0) = (
            metric(&metrics, "parleyd_write_batch_size_count"),
            metric(&metrics, "parleyd_write_batch_seconds_sum"),
        );
        let began = Instant::now();
        let n = engine.drain().await.map_err(err)?;
        let drained = began.elapsed();
        tx_count += metric(&metrics, "parleyd_write_batch_size_count") - count0;
        tx_seconds += metric(&metrics, "parleyd_write_batch_seconds_sum") - seconds0;

        processed += n;
        enqueue_total += enqueued;
        drain_total += drained;
        enqueue_rounds.push(ms(enqueued));
        drain_rounds.push(ms(drained));
        per_event.push(ms(drained) / n.max(1) as f64);
        if (r + 1) % progress_every == 0 {
            println!(
                "  round {:>4}: {n} events, enqueue {:.0} ms, drain {:.0} ms ({:.2} ms/event), timers pending {}",
                r + 1,
                ms(enqueued),
                ms(drained),
                ms(drained) / n.max(1) as f64,
                store.pending_timers()
            );
        }
    }

    // What is running at the end (started minus stopped; no step fired).
    let mut running = 0;
    for (id, ..) in &fixture.conversations {
        for name in &sequences {
            if store
                .instance(&format!("{name}/c:{id}"))
                .map_err(err)?
                .is_some()
            {
                running += 1;
            }
        }
    }
    // The cost of finding the instances an event may stop, per conversation.
    let sample = fixture.conversations.len().min(200);
    let began = Instant::now();
    let mut found = 0;
    for (id, customer, provider, listing) in fixture.conversations.iter().take(sample) {
        let event = DomainEvent {
            seq: 0,
            name: "message_sent".into(),
            aliases: vec!["customer_replied".into()],
            at: EPOCH.into(),
            redriven_at: None,
            subject: Subject {
                conversation_id: Some(id.clone()),
                listing_id: Some(listing.clone()),
                customer_id: Some(customer.clone()),
                provider_id: Some(provider.clone()),
                user_id: Some(customer.clone()),
                booking_id: None,
            },
            data: serde_json::Value::Null,
        };
        found += store.instances_about(&event).map_err(err)?.len();
    }
    let about = began.elapsed();

    let failed = failures.load(Ordering::Relaxed);
    println!(
        "\nevents generated: {} ({failed} enqueue failures)",
        args.events
    );
    println!(
        "enqueue (App::send / App::signal, {} in flight): {:.2} s, {:.0} events/s",
        args.concurrency,
        enqueue_total.as_secs_f64(),
        args.events as f64 / enqueue_total.as_secs_f64()
    );
    println!(
        "drain (Engine::drain): {processed} events in {:.2} s, {:.0} events/s",
        drain_total.as_secs_f64(),
        processed as f64 / drain_total.as_secs_f64()
    );
    let (d, e, p) = (
        sorted(&drain_rounds),
        sorted(&enqueue_rounds),
        sorted(&per_event),
    );
    println!(
        "  per round of {} events: drain p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; enqueue p50 {:.1} ms, p99 {:.1} ms",
        args.round,
        percentile(&d, 50.0),
        percentile(&d, 99.0),
        percentile(&d, 100.0),
        percentile(&e, 50.0),
        percentile(&e, 99.0)
    );
    let tenth = (per_event.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "  drain per event: p50 {:.3} ms; first 10 % of rounds {:.3} ms, last 10 % {:.3} ms",
        percentile(&p, 50.0),
        mean(&per_event[..tenth]),
        mean(&per_event[per_event.len() - tenth..])
    );
    println!(
        "  writer transactions during drains: {tx_count:.0} ({:.2} per event), {:.2} s in them (transaction + flush), {:.2} ms each",
        tx_count / processed.max(1) as f64,
        tx_seconds,
        1000.0 * tx_seconds / tx_count.max(1.0)
    );
    println!(
        "instances running at the end (started minus stopped): {running}; timers pending: {}",
        store.pending_timers()
    );
    println!(
        "Store::instances_about for a conversation's message: {:.2} ms, {:.0} instances read (mean of {sample} conversations)",
        ms(about) / sample.max(1) as f64,
        found as f64 / sample.max(1) as f64
    );
    println!(
        "rule condition errors (parleyd_rule_errors_total): {:.0}",
        metric(&metrics, "parleyd_rule_errors_total")
    );
    let (rss, hwm) = memory();
    println!("RSS {rss:.0} MiB, peak {hwm:.0} MiB");
    Ok(())
}

// ---------------------------------------------------------------------------
// timers

fn timer_instance(i: usize, due_ms: i64) -> Instance {
    let subject = Subject {
        conversation_id: Some(format!("conv{i:07}")),
        customer_id: Some(format!("cust{i:07}")),
        ..Subject::default()
    };
    let trigger = DomainEvent {
        seq: i as u64 + 1,
        name: "message_sent".into(),
        aliases: vec!["inquiry_received".into()],
        at: EPOCH.into(),
        redriven_at: None,
        subject: Subject {
            user_id: subject.customer_id.clone(),
            ..subject.clone()
        },
        data: serde_json::json!({
            "seq": 1, "content": "Hi! Is the loft free in May?", "type": "text", "automation": null,
        }),
    };
    Instance {
        id: Instance::id_for("bench_timer", &subject),
        rule: "bench_timer".into(),
        run: uuid::Uuid::now_v7().to_string(),
        subject,
        trigger,
        steps: vec![PlannedStep {
            name: "follow_up".into(),
            due_ms,
            state: StepState::Pending,
            note: None,
        }],
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

async fn timers_bench(args: TimersArgs) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(err)?;
    let dir = args.dir.clone().unwrap_or_else(|| tmp.path().join("data"));
    let config = StorageConfig::default();
    println!(
        "store: {} ({:?}, cache {} MiB, flush_every_ms {})",
        dir.display(),
        config.durability,
        config.cache_capacity_mb,
        config.flush_every_ms
    );
    let store = Store::open(&dir, &config, Arc::new(|_| {})).map_err(err)?;
    let start: jiff::Timestamp = EPOCH.parse().map_err(err)?;
    let base = start.as_millisecond() + 3_600_000;
    // Due times: distinct, one second apart, in a scrambled order (timer keys
    // land all over the tree, as real ones do).
    let count = args.count.max(1);
    let stride = [7_919, 104_729, 1_299_709]
        .into_iter()
        .find(|p| gcd(*p, count) == 1)
        .unwrap_or(1);
    let due = |i: usize| base + ((i * stride) % count) as i64 * 1000;

    let began = Instant::now();
    let limit = Duration::from_secs(args.max_seconds);
    let mut created = 0;
    let mut batch_times = Vec::new();
    let mut next_report = count / 10;
    while created < count {
        if began.elapsed() > limit {
            println!(
                "stopped after {:.0} s (--max-seconds {})",
                began.elapsed().as_secs_f64(),
                args.max_seconds
            );
            break;
        }
        let n = args.batch.min(count - created);
        let changes: Vec<Change> = (created..created + n)
            .map(|i| Change::Start(Box::new(timer_instance(i, due(i)))))
            .collect();
        let t = Instant::now();
        let applied = apply_changes(&store, changes).await.map_err(err)?;
        batch_times.push(ms(t.elapsed()));
        if applied.iter().any(|a| !a) {
            return Err("an instance was not started".into());
        }
        created += n;
        if created >= next_report {
            let (rss, _) = memory();
            println!(
                "  {created:>8} timers: {:.1} s, {:.0}/s so far, last batch {:.0} ms, RSS {rss:.0} MiB",
                began.elapsed().as_secs_f64(),
                created as f64 / began.elapsed().as_secs_f64(),
                batch_times.last().copied().unwrap_or_default()
            );
            next_report += count / 10;
        }
    }
    let filled = began.elapsed();
    let t = Instant::now();
    store.flush().map_err(err)?;
    let flushed = t.elapsed();
    let (rss, hwm) = memory();
    let (apparent, allocated) = disk_usage(&dir);
    let b = sorted(&batch_times);
    let rate = created as f64 / filled.as_secs_f64();
    println!("\nfill: {created} timers in {:.1} s ({rate:.0} timers/s), {} per apply_changes; per call p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; final flush {:.0} ms",
        filled.as_secs_f64(),
        args.batch,
        percentile(&b, 50.0),
        percentile(&b, 99.0),
        percentile(&b, 100.0),
        ms(flushed)
    );
    if created < count {
        println!(
            "EXTRAPOLATED (linear, from {created} timers): {count} timers would take ~{:.0} s and ~{:.0} MiB on disk",
            count as f64 / rate,
            mib(allocated) * count as f64 / created as f64
        );
    }
    println!(
        "disk: {:.0} MiB apparent, {:.0} MiB allocated ({:.0} bytes per timer)",
        mib(apparent),
        mib(allocated),
        allocated as f64 / created as f64
    );
    println!("process after fill: RSS {rss:.0} MiB, peak (VmHWM) {hwm:.0} MiB");

    let t = Instant::now();
    drop(store);
    println!(
        "drop (writer thread joined, sled closed): {:.0} ms",
        ms(t.elapsed())
    );
    // A restart: first a fresh process (the first open after the fill, which
    // recovers sled's log), then this process, then a fresh process again.
    reopen_in_child(&dir)?;
    reopen_report(&dir, "same process, second open")?;
    reopen_in_child(&dir)?;
    let (apparent, allocated) = disk_usage(&dir);
    println!(
        "disk after the re-opens: {:.0} MiB apparent, {:.0} MiB allocated",
        mib(apparent),
        mib(allocated)
    );
    Ok(())
}

fn reopen_in_child(dir: &Path) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(err)?;
    let status = std::process::Command::new(exe)
        .arg("reopen")
        .arg("--dir")
        .arg(dir)
        .status()
        .map_err(err)?;
    if !status.success() {
        return Err(format!("the re-open in a fresh process failed: {status}"));
    }
    Ok(())
}

/// Re-opens a store and times how soon the scheduler's questions are answered.
fn reopen_report(dir: &Path, label: &str) -> Result<(), String> {
    // The store's writer is a thread of its own: no runtime is needed here.
    let t = Instant::now();
    let store = Store::open(dir, &StorageConfig::default(), Arc::new(|_| {})).map_err(err)?;
    let opened = t.elapsed();
    let t = Instant::now();
    let next = store.next_due().map_err(err)?;
    let answered = t.elapsed();
    let t = Instant::now();
    let first = store.due_timers(next.unwrap_or(i64::MIN), 1).map_err(err)?;
    let first_read = t.elapsed();
    let t = Instant::now();
    let batch = store
        .due_timers(next.unwrap_or(i64::MIN) + 64_000, 64)
        .map_err(err)?;
    let batch_read = t.elapsed();
    let (rss_before_scan, _) = memory();
    let t = Instant::now();
    let pending = store.pending_timers();
    let counted = t.elapsed();
    let (rss, hwm) = memory();
    println!("\nre-open ({label}):");
    println!("  Store::open: {:.0} ms", ms(opened));
    println!(
        "  Store::next_due: {:.2} ms after open ({:.0} ms from start of open) -> {}",
        ms(answered),
        ms(opened + answered),
        next.and_then(|n| jiff::Timestamp::from_millisecond(n).ok())
            .map_or("none".into(), format_time)
    );
    println!(
        "  Store::due_timers(next, 1): {:.2} ms ({:.0} ms from start of open), {} timer; due_timers(next + 64 s, 64): {:.2} ms, {} timers",
        ms(first_read),
        ms(opened + answered + first_read),
        first.len(),
        ms(batch_read),
        batch.len()
    );
    println!("  RSS after open and first reads: {rss_before_scan:.0} MiB");
    println!(
        "  Store::pending_timers (a full scan of the tree): {pending} in {:.0} ms; RSS then {rss:.0} MiB, peak {hwm:.0} MiB",
        ms(counted)
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// reload

fn reload_bench(args: ReloadArgs) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(err)?;
    let dirs = RuleDirs::under(tmp.path());
    copy_files(&args.repo.join("rules"), &dirs.rules, &["yaml", "yml"])?;
    copy_files(
        &args.repo.join("templates"),
        &dirs.templates,
        &["yaml", "yml"],
    )?;
    copy_files(&args.repo.join("plugins"), &dirs.plugins, &["rhai"])?;
    let now = || Box::new(|| format_time(jiff::Timestamp::now()));

    // How long one load of the shipped set takes, without the watcher.
    let mut loads = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        Rules::open(dirs.clone(), now()).map_err(|e| format!("{e:?}"))?;
        loads.push(ms(t.elapsed()));
    }

    let rules = Arc::new(Rules::open(dirs.clone(), now()).map_err(|e| format!("{e:?}"))?);
    let reloader = Reloader::watch(rules.clone()).map_err(err)?;
    let runtime = tokio::runtime::Runtime::new().map_err(err)?;
    runtime.spawn(reloader.run(false));
    std::thread::sleep(Duration::from_millis(500));

    let template_file = dirs.templates.join("inquiry.yaml");
    let original = std::fs::read_to_string(&template_file).map_err(err)?;
    let extra_file = dirs.rules.join("bench_extra.yaml");
    let (mut latencies, mut timeouts) = (Vec::new(), 0);
    for i in 0..args.iterations {
        let version = rules.status().version;
        let (path, text) = if i % 2 == 0 {
            (
                &template_file,
                original.replace("Last reminder about", &format!("Last reminder ({i}) about")),
            )
        } else {
            (
                &extra_file,
                format!(
                    "signals: [bench_never_{i}]\nsequences:\n  - name: bench_extra_{i}\n    trigger: bench_never_{i}\n    steps:\n      - name: only\n        after: 1h\n        template: inquiry_final\n        to: customer\n"
                ),
            )
        };
        let t = Instant::now();
        std::fs::write(path, text).map_err(err)?;
        let mut reloaded = false;
        while t.elapsed() < Duration::from_secs(5) {
            if rules.status().version > version {
                reloaded = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let took = t.elapsed();
        if reloaded {
            latencies.push(ms(took));
        } else {
            timeouts += 1;
        }
        if let Some(failure) = rules.status().last_failure {
            return Err(format!("a reload failed: {:?}", failure.errors));
        }
        std::thread::sleep(Duration::from_millis(args.gap_ms));
    }
    let version = rules.status().version;
    let extra_loaded = (0..args.iterations)
        .rev()
        .find(|i| i % 2 == 1)
        .is_none_or(|i| {
            rules
                .current()
                .sequence(&format!("bench_extra_{i}"))
                .is_some()
        });
    let l = sorted(&latencies);
    let d = sorted(&loads);
    println!(
        "load of the shipped rules/templates/plugins (Rules::open, no watcher), 20 runs: min {:.2} ms, p50 {:.2} ms, max {:.2} ms",
        percentile(&d, 0.0),
        percentile(&d, 50.0),
        percentile(&d, 100.0)
    );
    println!(
        "write -> Rules::status().version increased ({} writes, alternately templates/inquiry.yaml text and rules/bench_extra.yaml, {} ms apart): min {:.1} ms, p50 {:.1} ms, max {:.1} ms; {timeouts} not seen within 5 s",
        args.iterations,
        args.gap_ms,
        percentile(&l, 0.0),
        percentile(&l, 50.0),
        percentile(&l, 100.0)
    );
    println!(
        "versions: {version} (1 at start; more than one reload per write would show here); last extra sequence in force: {extra_loaded}"
    );
    Ok(())
}
