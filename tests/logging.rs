//! Repeated warnings are rate-limited by the daemon's own log subscriber. Its
//! own test binary: the subscriber must be the process's global one (the line
//! reporting suppressed lines is written from within another event's dispatch,
//! which a thread-scoped subscriber does not allow).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use parleyd::config::LogFormat;
use parleyd::telemetry::{self, LogThrottle};
use tracing_subscriber::EnvFilter;

/// The log's lines, written by the subscriber.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// A clock the test moves by hand.
static ELAPSED_MS: AtomicU64 = AtomicU64::new(0);

fn clock() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now) + Duration::from_millis(ELAPSED_MS.load(Ordering::SeqCst))
}

fn flood(path: &str) {
    tracing::warn!(path, "request from a client went wrong");
}

#[test]
fn a_warning_repeated_by_a_client_is_written_a_few_times_a_minute_then_counted() {
    let metrics = telemetry::metrics();
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = telemetry::subscriber(
        LogFormat::Text,
        EnvFilter::new("info"),
        move || writer.clone(),
        LogThrottle::new(3, Duration::from_secs(60), clock),
        false,
    );
    tracing::subscriber::set_global_default(subscriber).unwrap();

    // Each line differs by a field the client controls: still one place in the code.
    for i in 0..25 {
        flood(&format!("/v1/{i}"));
    }
    tracing::warn!("another place in the code");
    tracing::info!("information is never throttled");
    let text = lines.text();
    assert_eq!(text.matches("went wrong").count(), 3, "{text}");
    assert!(text.contains("another place") && text.contains("never throttled"));
    assert!(
        metrics
            .render()
            .contains("parleyd_log_lines_suppressed_total 22"),
        "{}",
        metrics.render()
    );

    // A minute later the next one is written, after a line saying how many were not.
    ELAPSED_MS.store(60_000, Ordering::SeqCst);
    flood("/v1/late");
    let text = lines.text();
    let late: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.contains("never throttled"))
        .skip(1)
        .collect();
    assert_eq!(late.len(), 2, "{text}");
    assert!(
        late[0].contains("22 more lines like the next were suppressed"),
        "{text}"
    );
    assert!(
        late[1].contains("went wrong") && late[1].contains("/v1/late"),
        "{text}"
    );

    // Records forwarded from the `log` crate (as the daemon's subscriber
    // does) share one callsite per level: each origin is still its own.
    tracing_log::LogTracer::init().unwrap();
    for _ in 0..5 {
        log::warn!(target: "sled::pagecache", "slow flush");
    }
    log::warn!(target: "reqwest::connect", "dns lookup failed");
    let text = lines.text();
    assert_eq!(text.matches("slow flush").count(), 3, "{text}");
    assert!(text.contains("dns lookup failed"), "{text}");
}
