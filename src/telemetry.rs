//! Logs (tracing, text or JSON on stderr) and the Prometheus metrics recorder.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing::callsite::Identifier;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Warnings and errors let through from one place in the code per
/// [`LOG_REPEAT_WINDOW`]; the rest of that window's are suppressed.
pub const LOG_REPEATS: u32 = 10;
pub const LOG_REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// The target of the line that reports suppressed lines (never itself throttled).
const SUPPRESSED_TARGET: &str = "parleyd::log_throttle";

/// Installs the log subscriber; `RUST_LOG` overrides the configured level.
pub fn init_logging(config: &LoggingConfig) {
    // `RUST_LOG` is taken as given (it can turn warp's request tracing back
    // on). The configured level leaves that tracing off: it writes every
    // request at INFO, every 4xx at WARN and every 5xx as an "internal error"
    // at ERROR (a 503 `overloaded` under load, an unhealthy `/healthz`), noise
    // at the rate of requests. Internal errors are logged where they happen
    // (`error::ApiError`), every answer is counted by status in
    // `parleyd_http_requests_total`, and the access log is `parleyd::access`.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::try_new(&config.level)
            .unwrap_or_else(|_| EnvFilter::new("info"))
            .add_directive(
                "warp::filters::trace=off"
                    .parse()
                    .expect("a constant, valid directive"),
            )
    });
    let throttle = LogThrottle::new(LOG_REPEATS, LOG_REPEAT_WINDOW, Instant::now);
    // Colours only on a terminal: a log file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if let Err(e) = subscriber(config.format, filter, std::io::stderr, throttle, ansi).try_init() {
        eprintln!("logging already initialised: {e}");
    }
}

/// The daemon's subscriber: events that pass `filter` and `throttle` are
/// written to `writer` as text (with ANSI colours if `ansi`) or JSON lines.
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    throttle: LogThrottle,
    ansi: bool,
) -> impl Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(ansi);
    let lines = match format {
        LogFormat::Json => lines.json().boxed(),
        LogFormat::Text => lines.boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(throttle)
        .with(lines)
}

/// A [`Layer`] that lets at most `limit` WARN and ERROR events from one
/// callsite (one place in the code) through per `window`, so a client that can
/// provoke a warning cannot make the daemon write it without end. Keyed by
/// callsite, not by text: varying a field a client controls does not make a
/// line new, and the state is bounded by the number of callsites. The first
/// line let through after some were suppressed is preceded by a line (target
/// `parleyd::log_throttle`) saying how many; each suppressed line counts in
/// `parleyd_log_lines_suppressed_total`. INFO and below pass untouched.
///
/// Written here rather than taken from `tracing-throttle`, whose signature
/// includes every field value by default (a client-varied field defeats it)
/// and whose summaries need a background task.
pub struct LogThrottle {
    windows: Windows<Origin>,
    clock: fn() -> Instant,
}

impl LogThrottle {
    /// `clock` is `Instant::now` but in tests.
    pub fn new(limit: u32, window: Duration, clock: fn() -> Instant) -> LogThrottle {
        LogThrottle {
            windows: Windows::new(limit, window),
            clock,
        }
    }
}

impl<S: Subscriber> Layer<S> for LogThrottle {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        // Levels order by verbosity: INFO and below are "greater" than WARN.
        if *meta.level() > Level::WARN || meta.target() == SUPPRESSED_TARGET {
            return true;
        }
        match self.windows.judge(Origin::of(event), (self.clock)()) {
            Verdict::Pass { suppressed: 0 } => true,
            Verdict::Pass { suppressed } => {
                // Dispatched from within this event's dispatch: it is written
                // first, so it stands just before the line it speaks of.
                tracing::warn!(
                    target: SUPPRESSED_TARGET,
                    suppressed,
                    of = meta.name(),
                    "{suppressed} more lines like the next were suppressed (at most {} per {} s from one place)",
                    self.windows.limit,
                    self.windows.window.as_secs(),
                );
                true
            }
            Verdict::Suppress => {
                metrics::counter!("parleyd_log_lines_suppressed_total").increment(1);
                false
            }
        }
    }
}

/// Where an event comes from: its callsite, and for a record forwarded from
/// the `log` crate (all of one level share a callsite) its real target, file
/// and line, so one noisy dependency does not silence the others.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Origin {
    callsite: Identifier,
    forwarded: Option<(String, Option<String>, Option<u32>)>,
}

impl Origin {
    fn of(event: &Event<'_>) -> Origin {
        use tracing_log::NormalizeEvent;
        Origin {
            callsite: event.metadata().callsite(),
            forwarded: event.normalized_metadata().map(|meta| {
                (
                    meta.target().to_owned(),
                    meta.file().map(str::to_owned),
                    meta.line(),
                )
            }),
        }
    }
}

/// A fixed window per key: `limit` passes from its first event, then
/// suppression until `window` has gone by.
struct Windows<K> {
    limit: u32,
    window: Duration,
    by_key: Mutex<HashMap<K, Window>>,
}

struct Window {
    started: Instant,
    passed: u32,
    suppressed: u64,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Let the event through; `suppressed` were held back since the last one.
    Pass {
        suppressed: u64,
    },
    Suppress,
}

impl<K: Hash + Eq> Windows<K> {
    fn new(limit: u32, window: Duration) -> Self {
        Windows {
            limit,
            window,
            by_key: Mutex::new(HashMap::new()),
        }
    }

    fn judge(&self, key: K, now: Instant) -> Verdict {
        let mut by_key = self.by_key.lock().unwrap_or_else(PoisonError::into_inner);
        let w = by_key.entry(key).or_insert(Window {
            started: now,
            passed: 0,
            suppressed: 0,
        });
        if now.saturating_duration_since(w.started) >= self.window {
            let suppressed = w.suppressed;
            *w = Window {
                started: now,
                passed: 1,
                suppressed: 0,
            };
            return Verdict::Pass { suppressed };
        }
        if w.passed < self.limit {
            w.passed += 1;
            Verdict::Pass { suppressed: 0 }
        } else {
            w.suppressed += 1;
            Verdict::Suppress
        }
    }
}

/// Counts one refusal by a capacity limit in `parleyd_limit_refusals_total{limit}`:
/// a request or connection turned away, or a stream closed to make room. The
/// `limit` label names what was full: `streams` (`stream.max_connections`),
/// `streams_per_user` (`stream.max_streams_per_user`, counted per oldest stream
/// closed), `long_polls_per_user` (`stream.max_long_polls_per_user`), and the
/// connection layer's `connections` (`connections.max_open`),
/// `connections_per_address` and `anonymous_requests_per_address`, and the
/// store's `writer_queue` (`storage.writer_queue`, a write refused as
/// `overloaded`).
pub fn count_refusal(limit: &'static str) {
    metrics::counter!("parleyd_limit_refusals_total", "limit" => limit).increment(1);
}

/// The process-wide metrics recorder (installed on first use).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_gets_its_limit_per_window_and_hears_what_was_suppressed() {
        let windows = Windows::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let pass = Verdict::Pass { suppressed: 0 };
        assert_eq!(windows.judge("a", t0), pass);
        assert_eq!(windows.judge("a", t0), pass);
        for _ in 0..5 {
            assert_eq!(
                windows.judge("a", t0 + Duration::from_secs(59)),
                Verdict::Suppress
            );
        }
        // Another place in the code has its own budget.
        assert_eq!(windows.judge("b", t0 + Duration::from_secs(1)), pass);
        // A new window: the first line through says five were held back.
        let t1 = t0 + Duration::from_secs(60);
        assert_eq!(windows.judge("a", t1), Verdict::Pass { suppressed: 5 });
        assert_eq!(windows.judge("a", t1), pass);
        assert_eq!(windows.judge("a", t1), Verdict::Suppress);
        // A quiet window reports nothing.
        let t2 = t1 + Duration::from_secs(600);
        assert_eq!(windows.judge("a", t2), Verdict::Pass { suppressed: 1 });
        assert_eq!(windows.judge("a", t2 + Duration::from_secs(60)), pass);
    }
}
