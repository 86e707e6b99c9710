//! `parleyd-report-bench`: the cost of a provider report (README.md,
//! "Provider reports"; the target: under 50 ms over 10,000
//! conversations).
//!
//! Builds a data directory with `--conversations` conversations for one
//! provider in each of two periods of `--days` days (the report's and the
//! previous one, which the trend reads too), plus `--others` providers with
//! `--other-conversations` each per period (the percentile and the platform
//! comparison read every provider's days), by folding synthetic domain events with
//! `analytics::fold` in writer transactions (what the engine and a rebuild
//! do, without the HTTP and rule work in front of it). Then times, over
//! `--runs` runs, `App::provider_report` (the service function the API and
//! `parleyd report` call: the period, every read, the figures, the score,
//! the recommendations) and the JSON encoding of its answer apart, and
//! prints p50 / p99 / max in milliseconds.
//!
//! `cargo run --release -p parleyd-tools --bin parleyd-report-bench`

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

use parleyd::auth::{Caller, Role};
use parleyd::clock::{Clock, ManualClock};
use parleyd::config::Config;
use parleyd::domain::{DomainEvent, Emitted, Stage, Subject};
use parleyd::hub::Hub;
use parleyd::model::format_time;
use parleyd::rules::{RuleDirs, Rules};
use parleyd::service::App;
use parleyd::store::Store;

/// The first day of the generated history.
const EPOCH: &str = "2030-06-01T00:00:00Z";
/// The provider whose report is timed.
const PROVIDER: &str = "bench-provider";
/// Events per writer transaction while building.
const BATCH: usize = 2_000;

#[derive(Parser, Debug)]
#[command(
    name = "parleyd-report-bench",
    about = "Time a provider report over many conversations"
)]
struct Args {
    /// Conversations of the provider whose report is timed, per period.
    #[arg(long, default_value_t = 10_000)]
    conversations: usize,
    /// Days their inquiries are spread over (the report's period).
    #[arg(long, default_value_t = 30)]
    days: usize,
    /// Other providers (for the percentile).
    #[arg(long, default_value_t = 200)]
    others: usize,
    /// Conversations of each other provider, per period.
    #[arg(long, default_value_t = 20)]
    other_conversations: usize,
    /// Timed reports.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// The repository (for its rules and templates).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn event(
    name: Emitted,
    at: jiff::Timestamp,
    subject: Subject,
    data: serde_json::Value,
) -> DomainEvent {
    DomainEvent {
        seq: 0,
        name: name.to_string(),
        aliases: Vec::new(),
        at: format_time(at),
        redriven_at: None,
        subject,
        data,
    }
}

/// One conversation's events: the inquiry, the provider's reply after a
/// varying delay (some never), a read, sometimes a quick reply and a
/// booking.
fn conversation(
    provider: &str,
    n: usize,
    span_secs: i64,
    start: jiff::Timestamp,
) -> Vec<DomainEvent> {
    let id = format!("{provider}-c{n}");
    let customer = format!("{provider}-cust{n}");
    let subject = |user: &str| Subject {
        conversation_id: Some(id.clone()),
        listing_id: Some(format!("{provider}-listing")),
        booking_id: None,
        customer_id: Some(customer.clone()),
        provider_id: Some(provider.to_owned()),
        user_id: Some(user.to_owned()),
    };
    let message = |seq: u64, quick: bool| {
        serde_json::json!({"seq": seq, "content": "Is it free on Friday?", "type": "text",
                           "quick_reply_id": quick.then_some("qr-dates")})
    };
    // Spread evenly over the span, with a deterministic scatter.
    let inquiry = start + jiff::SignedDuration::from_secs((n as i64 * 7_919) % span_secs.max(1));
    let mut events = vec![event(
        Emitted::MessageSent,
        inquiry,
        subject(&customer),
        message(1, false),
    )];
    let delays = [300, 2_400, 9_000, 50_000, 100_000];
    if n % 7 != 6 {
        let replied = inquiry + jiff::SignedDuration::from_secs(delays[n % delays.len()]);
        if n % 3 != 0 {
            let read = replied - jiff::SignedDuration::from_secs(60);
            events.push(event(
                Emitted::MessageRead,
                read,
                subject(provider),
                serde_json::json!({"seq": 1, "count": 1}),
            ));
        }
        events.push(event(
            Emitted::MessageSent,
            replied,
            subject(provider),
            message(2, n % 4 == 0),
        ));
        if n % 5 == 0 {
            let booked = replied + jiff::SignedDuration::from_hours(2);
            let booking = Subject {
                booking_id: Some(format!("{id}-b")),
                ..subject("marketplace")
            };
            events.push(event(
                Emitted::BookingCreated,
                booked,
                booking,
                serde_json::json!({"stage": Stage::Confirmed}),
            ));
        }
    }
    events
}

async fn fold(store: &Store, mut events: Vec<DomainEvent>) -> Result<usize, String> {
    events.sort_by(|a, b| a.at.cmp(&b.at));
    let count = events.len();
    for batch in events.chunks(BATCH) {
        let batch = batch.to_vec();
        store
            .transact("bench", move |tx| {
                let analytics = tx.analytics();
                batch
                    .iter()
                    .try_for_each(|e| parleyd::analytics::fold(&analytics, e))
            })
            .await
            .map_err(err)?;
    }
    Ok(count)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

fn summary(name: &str, mut ms: Vec<f64>) {
    ms.sort_by(f64::total_cmp);
    println!(
        "  {name:<22} p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        percentile(&ms, 0.5),
        percentile(&ms, 0.99),
        ms.last().copied().unwrap_or(f64::NAN)
    );
}

async fn run(args: Args) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(err)?;
    let data = tmp.path().join("data");
    let repo = args.repo.canonicalize().map_err(err)?;
    let dirs = RuleDirs::under(&repo);
    let config = Config::parse(
        &format!(
            "listen: 127.0.0.1:0\ndata_dir: {data:?}\nrules_dir: {:?}\ntemplates_dir: {:?}\nplugins_dir: {:?}\n\
             auth:\n  jwt_secret: bench-only-secret\n  service_key: bench-only-key\n",
            dirs.rules, dirs.templates, dirs.plugins
        ),
        Path::new("bench"),
    )
    .map_err(err)?;
    let start: jiff::Timestamp = EPOCH.parse().map_err(err)?;
    // Two periods: the previous one, then the report's.
    let span = 2 * args.days as i64 * 86_400;
    let store = Store::open(&data, &config.storage, Arc::new(|_| {})).map_err(err)?;

    let built = Instant::now();
    let mut events = Vec::new();
    for n in 0..2 * args.conversations {
        events.extend(conversation(PROVIDER, n, span, start));
    }
    for other in 0..args.others {
        for n in 0..2 * args.other_conversations {
            events.extend(conversation(&format!("other-{other}"), n, span, start));
        }
    }
    let folded = fold(&store, events).await?;
    println!(
        "built: {} conversations per period for {PROVIDER}, {} other providers x {}, {folded} events folded in {:.1} s",
        args.conversations,
        args.others,
        args.other_conversations,
        built.elapsed().as_secs_f64()
    );

    let clock = Arc::new(ManualClock::starting_at(
        start + jiff::SignedDuration::from_secs(span),
    ));
    let rules_clock = clock.clone();
    let rules = Rules::open(dirs, Box::new(move || format_time(rules_clock.now())))
        .map_err(|errors| parleyd::rules::error_lines(&errors))?;
    let app = App::new(
        config,
        store,
        Arc::new(Hub::default()),
        Arc::new(rules),
        clock,
    );
    let from = start
        .in_tz("UTC")
        .map_err(err)?
        .date()
        .checked_add(jiff::Span::new().days(args.days as i64))
        .map_err(err)?;
    let to = from
        .checked_add(jiff::Span::new().days(args.days as i64 - 1))
        .map_err(err)?;
    let (from, to) = (from.to_string(), to.to_string());
    let operator = || Caller {
        user_id: "bench".into(),
        role: Role::Operator,
    };
    let (mut service, mut encode, mut total) = (Vec::new(), Vec::new(), Vec::new());
    let mut listed = 0;
    for _ in 0..args.runs {
        let began = Instant::now();
        let report = app
            .provider_report(operator(), PROVIDER, Some(&from), Some(&to))
            .map_err(err)?;
        let served = began.elapsed();
        let json = serde_json::to_vec(&report).map_err(err)?;
        let done = began.elapsed();
        listed = report.conversations.len();
        std::hint::black_box(json);
        service.push(served.as_secs_f64() * 1e3);
        encode.push((done - served).as_secs_f64() * 1e3);
        total.push(done.as_secs_f64() * 1e3);
    }
    println!(
        "report of {PROVIDER} {from}..{to}: {listed} conversations listed, {} runs",
        args.runs
    );
    summary("App::provider_report", service);
    summary("JSON encoding", encode);
    summary("total", total);
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parleyd-report-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
