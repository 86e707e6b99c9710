//! `parleyd-notify-bench`: notification delivery, in process, against a local
//! HTTP receiver standing in for the push service.
//!
//! The daemon's own parts run as in `serve`: the store, the engine (routing)
//! and the outbox worker, with the system clock. A routing rule sends every
//! person's message to the recipient as an immediate push. Messages go in
//! through `App::send` (as over HTTP, minus the socket) from providers to
//! customers, at `--rate` per second (0: all at once, for throughput); the
//! receiver notes when each push arrives.
//!
//! Printed: sent, delivered, lost; trigger-to-channel latency (from the send
//! call to the receiver reading the POST) p50/p99/max; and deliveries per
//! second from the first send to the last arrival.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::Semaphore;
use warp::Filter;

use parleyd::auth::{Caller, Role};
use parleyd::automation::Engine;
use parleyd::clock::{Clock, SystemClock};
use parleyd::config::Config;
use parleyd::hub::Hub;
use parleyd::model::{format_time, ListingInput, SendInput, UserInput};
use parleyd::notifications::router::Enabled;
use parleyd::notifications::worker::Outbox;
use parleyd::rules::{RuleDirs, Rules};
use parleyd::service::App;
use parleyd::store::Store;

#[derive(Parser, Debug)]
#[command(
    name = "parleyd-notify-bench",
    about = "Notification delivery latency and outbox throughput"
)]
struct Args {
    /// Messages (one push notification each).
    #[arg(long, default_value_t = 5_000)]
    messages: usize,
    /// Messages per second; 0 sends them all at once (throughput).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Conversations the messages are spread over.
    #[arg(long, default_value_t = 200)]
    conversations: usize,
    /// `notify.concurrency`: pushes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Queue every notification first, then start the outbox and time how
    /// fast it drains the backlog (outbox throughput alone).
    #[arg(long)]
    backlog: bool,
    /// `group_commit` or `periodic`.
    #[arg(long, default_value = "group_commit")]
    durability: String,
}

const ROUTING: &str = r#"
notifications:
  - name: new_message
    on: [message_sent]
    to: recipient
    priority: high
    channels: [push]
    template: notify_new_message
"#;

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn caller(user_id: &str, role: Role) -> Caller {
    Caller {
        user_id: user_id.to_owned(),
        role,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// When each push arrived, by message number.
type Arrivals = Arc<Mutex<HashMap<usize, Instant>>>;

/// The push receiver: notes the arrival of `"#N "`-prefixed bodies.
async fn receiver(arrivals: Arrivals) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(err)?;
    let url = format!("http://{}/push", listener.local_addr().map_err(err)?);
    let route = warp::post()
        .and(warp::body::json())
        .map(move |body: serde_json::Value| {
            let n = body["body"]
                .as_str()
                .and_then(|b| b.split('#').nth(1))
                .and_then(|b| b.split(' ').next())
                .and_then(|n| n.parse::<usize>().ok());
            if let (Some(n), Ok(mut arrivals)) = (n, arrivals.lock()) {
                arrivals.entry(n).or_insert_with(Instant::now);
            }
            warp::reply()
        });
    tokio::spawn(warp::serve(route).incoming(listener).run());
    Ok(url)
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(err)?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> Result<(), String> {
    let scratch = tempfile::tempdir().map_err(err)?;
    // The repository root: this binary lives in its tools/ member.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("tools/ has no parent directory")?;
    let dirs = RuleDirs::under(scratch.path());
    for dir in [&dirs.rules, &dirs.templates] {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    std::fs::copy(
        repo.join("rules/contact.yaml"),
        dirs.rules.join("contact.yaml"),
    )
    .map_err(err)?;
    std::fs::write(dirs.rules.join("routing.yaml"), ROUTING).map_err(err)?;
    std::fs::copy(
        repo.join("templates/notifications.yaml"),
        dirs.templates.join("notifications.yaml"),
    )
    .map_err(err)?;

    let arrivals: Arrivals = Arc::default();
    let push_url = receiver(arrivals.clone()).await?;
    let data = scratch.path().join("data");
    let config = Config::parse(
        &format!(
            "listen: 127.0.0.1:0\ndata_dir: {data:?}\nrules_dir: {:?}\n\
             auth:\n  jwt_secret: bench-only-secret-0123456789\n  service_key: bench-only-key-0123456789\n\
             storage:\n  durability: {}\n\
             limits:\n  send_rate_per_second: 1000000\n  send_burst: 1000000\n\
             notify:\n  push_url: {push_url}\n  concurrency: {}\n",
            dirs.rules, args.durability, args.concurrency
        ),
        Path::new("bench"),
    )
    .map_err(err)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Store::open(&data, &config.storage, Arc::new(|_| {})).map_err(err)?;
    let rules_clock = clock.clone();
    let rules = Arc::new(
        Rules::open(dirs, Box::new(move || format_time(rules_clock.now())))
            .map_err(|errors| parleyd::rules::error_lines(&errors))?,
    );
    let engine = Arc::new(
        Engine::new(store.clone(), rules.clone(), clock.clone())
            .with_channels(Enabled::from_config(&config.notify)),
    );
    let outbox = Outbox::new(
        store.clone(),
        clock.clone(),
        rules.clone(),
        &config.notify,
        engine.outbox_wakers(),
    )?;
    let app = Arc::new(
        App::new(
            config,
            store.clone(),
            Arc::new(Hub::default()),
            rules,
            clock,
        )
        .with_automation(engine.clone(), None),
    );

    let service = caller("marketplace", Role::Service);
    let mut conversations = Vec::new();
    for c in 0..args.conversations.max(1) {
        let provider = format!("p{c}");
        let customer = format!("u{c}");
        for (id, name) in [(&provider, "Provider"), (&customer, "Customer")] {
            let user: UserInput =
                serde_json::from_value(serde_json::json!({"name": format!("{name} {c}")}))
                    .map_err(err)?;
            app.put_user(service.clone(), id, user).map_err(err)?;
        }
        let listing: ListingInput = serde_json::from_value(serde_json::json!({
            "title": format!("Loft {c}"), "provider_id": provider,
        }))
        .map_err(err)?;
        app.put_listing(service.clone(), &format!("l{c}"), listing)
            .map_err(err)?;
        let (view, _) = app
            .open_conversation(caller(&customer, Role::Customer), &format!("l{c}"))
            .await
            .map_err(err)?;
        conversations.push((view.id, provider));
    }
    engine.drain().await.map_err(err)?;
    let automation = tokio::spawn(engine.clone().run());
    let outbox = Arc::new(outbox);
    let mut delivery = (!args.backlog).then(|| tokio::spawn(outbox.clone().run()));

    println!(
        "{} messages over {} conversations, rate {} /s (0 = at once), concurrency {}, {}",
        args.messages,
        conversations.len(),
        args.rate,
        args.concurrency,
        args.durability
    );
    let sent: Arc<Mutex<HashMap<usize, Instant>>> = Arc::default();
    let in_flight = Arc::new(Semaphore::new(256));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..args.messages {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = in_flight.clone().acquire_owned().await.map_err(err)?;
        let (conversation, provider) = conversations[n % conversations.len()].clone();
        let (app, sent) = (app.clone(), sent.clone());
        tasks.spawn(async move {
            let at = Instant::now();
            let input = SendInput {
                client_id: format!("bench-{n}"),
                content: format!("#{n} is the kayak free on Friday?"),
                quick_reply_id: None,
            };
            let ok = app
                .send(caller(&provider, Role::Provider), &conversation, input)
                .await
                .is_ok();
            if ok {
                if let Ok(mut sent) = sent.lock() {
                    sent.insert(n, at);
                }
            }
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    let accepted = sent.lock().map(|s| s.len()).unwrap_or(0);
    let mut drained_at = started;
    if args.backlog {
        engine.drain().await.map_err(err)?;
        println!(
            "backlog: {} push deliveries queued in {:.2} s",
            store.queued_in(parleyd::model::notification::Lane::Push),
            started.elapsed().as_secs_f64()
        );
        drained_at = Instant::now();
        delivery = Some(tokio::spawn(outbox.clone().run()));
    }
    // Wait for the stragglers (at most 30 s without progress).
    let mut last = (0, Instant::now());
    loop {
        let arrived = arrivals.lock().map(|a| a.len()).unwrap_or(0);
        if arrived >= accepted {
            break;
        }
        if arrived != last.0 {
            last = (arrived, Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(30) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    automation.abort();
    if let Some(delivery) = delivery {
        delivery.abort();
    }

    let sent = sent.lock().map_err(err)?.clone();
    let arrivals = arrivals.lock().map_err(err)?.clone();
    let mut latencies: Vec<f64> = sent
        .iter()
        .filter_map(|(n, at)| Some(arrivals.get(n)?.duration_since(*at).as_secs_f64() * 1000.0))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let first = if args.backlog {
        drained_at
    } else {
        sent.values().min().copied().unwrap_or(started)
    };
    let last_arrival = arrivals.values().max().copied().unwrap_or(first);
    let span = last_arrival.duration_since(first).as_secs_f64();
    println!(
        "sent {accepted}, delivered {}, lost {}",
        latencies.len(),
        accepted - latencies.len()
    );
    println!(
        "trigger-to-push latency ms: p50 {:.1}  p99 {:.1}  max {:.1}",
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "deliveries/s: {:.0} ({} in {:.2} s, from the first send (backlog: the outbox's start) to the last arrival)",
        latencies.len() as f64 / span.max(1e-9),
        latencies.len(),
        span
    );
    Ok(())
}
