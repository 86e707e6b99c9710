//! The daemon's life: open the store, serve until told to stop, then stop
//! accepting, close streams with "going away", flush and return.

mod accept;
mod admission;
mod forwarded;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use self::admission::Admission;
use self::forwarded::TrustedProxies;
use crate::api::{self, Streams, UserLimits};
use crate::automation::Engine;
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{ClockMode, Config};
use crate::hub::Hub;
use crate::model::notification::Lane;
use crate::notifications::router::Enabled;
use crate::notifications::worker::Outbox;
use crate::pipeline;
use crate::rules::{Reloader, RuleError, Rules};
use crate::service::App;
use crate::store::{Delivery, Store, StoreError};
use crate::supervisor::{Backoff, Supervisor};
use metrics_exporter_prometheus::PrometheusHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the rules are invalid:\n{}", crate::rules::error_lines(.0))]
    Rules(Vec<RuleError>),
    #[error("cannot watch the rules directory: {0}")]
    Watch(#[from] notify::Error),
    #[error("notification channels: {0}")]
    Notify(String),
    #[error(
        "the open-files limit ({limit}) leaves no connections beside the {reserved} \
         descriptors the daemon keeps for itself; raise it (ulimit -n, LimitNOFILE=)"
    )]
    OpenFiles { limit: u64, reserved: usize },
    #[error(
        "an analytics rebuild of this data directory did not finish, so its figures are \
         partial; run `parleyd analytics rebuild` again before starting the daemon"
    )]
    RebuildUnfinished,
}

/// How long shutdown waits for open connections (streams included) to finish.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves on `listener` until `shutdown` resolves; `ready` runs once the store is
/// open and connections are being accepted.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), StartError> {
    // First: whatever the components record from their start is kept.
    let metrics = crate::telemetry::metrics();
    let open_files_limit = raise_open_files_limit();
    let hub = Arc::new(Hub::default());
    let publish_to = hub.clone();
    let store = Store::open(
        &config.data_dir,
        &config.storage,
        Arc::new(move |d: &Delivery| publish_to.publish(&d.user_id, &d.frame)),
    )?;
    if store.rebuild_unfinished()? {
        return Err(StartError::RebuildUnfinished);
    }
    // Figures kept by another fold format miss what it did not count: they
    // are rebuilt before anything reads or folds into them.
    crate::analytics::rebuild::bring_up_to_date(&store).await?;
    // A manual clock starts at the wall clock's time and moves only when told.
    let manual_clock = (config.clock == ClockMode::Manual)
        .then(|| Arc::new(ManualClock::starting_at(jiff::Timestamp::now())));
    let clock: Arc<dyn Clock> = match &manual_clock {
        Some(manual) => manual.clone(),
        None => Arc::new(SystemClock),
    };
    let rules_clock = clock.clone();
    let rules = Rules::open(
        crate::rules::RuleDirs::of(&config),
        Box::new(move || crate::model::format_time(rules_clock.now())),
    )
    .map_err(StartError::Rules)?;
    let rules = Arc::new(rules);
    let supervisor = Arc::new(Supervisor::new(
        Backoff {
            initial: config.pipeline.restart_backoff,
            max: config.pipeline.restart_backoff_max,
        },
        config.pipeline.stuck_after,
    ));
    supervisor.adopt(store.writer_health());
    // Started here so that a directory that cannot be watched stops the start;
    // a restart watches afresh and catches up on what changed meanwhile.
    let first_watch = std::sync::Mutex::new(Some(Reloader::watch(rules.clone())?));
    supervisor.spawn("rules.reload", None, {
        let rules = rules.clone();
        move || {
            let first = first_watch.lock().ok().and_then(|mut w| w.take());
            let rules = rules.clone();
            async move {
                let restarted = first.is_none();
                match first.map_or_else(|| Reloader::watch(rules), Ok) {
                    Ok(reloader) => reloader.run(restarted).await,
                    Err(e) => tracing::error!(error = %e, "cannot watch the rules directory"),
                }
            }
        }
    });
    let engine = Arc::new(
        Engine::new(store.clone(), rules.clone(), clock.clone())
            .with_channels(Enabled::from_config(&config.notify))
            .with_max_attempts(config.automation.max_attempts),
    );
    supervisor.spawn("engine", Some(pipeline::events_probe(store.clone())), {
        let engine = engine.clone();
        move || engine.clone().run_events()
    });
    supervisor.spawn(
        "scheduler",
        Some(pipeline::timers_probe(store.clone(), clock.clone())),
        {
            let engine = engine.clone();
            move || engine.clone().run_timers()
        },
    );
    let outbox = Arc::new(
        Outbox::new(
            store.clone(),
            clock.clone(),
            rules.clone(),
            &config.notify,
            engine.outbox_wakers(),
        )
        .map_err(StartError::Notify)?,
    );
    for lane in Lane::ALL {
        let probe = pipeline::lane_probe(store.clone(), clock.clone(), lane);
        let outbox = outbox.clone();
        supervisor.spawn(&format!("outbox.{}", lane.name()), Some(probe), move || {
            outbox.clone().run_lane(lane)
        });
    }
    supervisor.spawn("outbox.retention", None, {
        let outbox = outbox.clone();
        move || outbox.clone().run_retention()
    });
    let app = Arc::new(
        // Requests write through a handle that refuses past the writer's
        // bound; the components above keep the one that waits its turn.
        App::new(config, store.for_requests(), hub, rules, clock.clone())
            .with_automation(engine, manual_clock)
            .with_supervisor(supervisor.clone()),
    );
    let streams = Arc::new(Streams::default());
    let user_limits = Arc::new(UserLimits::new(&app.config().limits));
    let max_open = connection_capacity(open_files_limit, app.config())?;
    // After the recorder is installed: the dead letters of an earlier run.
    crate::automation::count_dead(&store);
    let admission = Arc::new(Admission::new(&app.config().connections, max_open));
    supervisor.spawn("upkeep", None, {
        let (app, user_limits, metrics) = (app.clone(), user_limits.clone(), metrics.clone());
        let (admission, supervisor) = (admission.clone(), supervisor.clone());
        move || {
            upkeep(
                app.clone(),
                user_limits.clone(),
                metrics.clone(),
                admission.clone(),
                supervisor.clone(),
            )
        }
    });
    let routes = api::routes(app.clone(), streams.clone(), user_limits, metrics);
    let settings = accept::Settings {
        admission,
        proxies: TrustedProxies::new(app.config().connections.trusted_proxies.clone()),
        header_read_timeout: app.config().connections.header_read_timeout,
        write_timeout: app.config().connections.write_timeout,
        drain_timeout: SHUTDOWN_DRAIN_TIMEOUT,
    };
    let stopping = streams.clone();
    let server = accept::serve(listener, settings, warp::service(routes), async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, closing streams");
        stopping.begin_shutdown();
    });
    ready();
    server.await;
    supervisor.shutdown();
    store.flush()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// How often the pipeline's gauges are read (a scan of what is due) and the
/// components' health is sampled (so that stuck is seen without a request).
const PIPELINE_EVERY: Duration = Duration::from_secs(5);

/// Periodic housekeeping (the component `upkeep`): pruning the rate limiters,
/// the metrics' upkeep, the pipeline gauges, and the idempotency key sweep.
async fn upkeep(
    app: Arc<App>,
    user_limits: Arc<UserLimits>,
    metrics: PrometheusHandle,
    admission: Arc<Admission>,
    supervisor: Arc<Supervisor>,
) {
    let mut pipeline = tokio::time::interval(PIPELINE_EVERY);
    let mut every = tokio::time::interval(Duration::from_secs(30));
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = pipeline.tick() => {
                let _ = supervisor.unhealthy();
                // Counting what is due scans it: off the async workers.
                let app = app.clone();
                match tokio::task::spawn_blocking(move || app.backlog()).await {
                    Ok(Ok(backlog)) => backlog.record(),
                    Ok(Err(e)) => tracing::error!(error = %e, "reading the pipeline backlog"),
                    Err(e) => tracing::error!(error = %e, "reading the pipeline backlog"),
                }
            }
            _ = every.tick() => {
                app.prune_rate_limits();
                user_limits.prune();
                admission.prune();
                metrics.run_upkeep();
            }
            _ = hourly.tick() => {
                // A scan of the whole tree: off the async workers.
                let app = app.clone();
                let swept = tokio::task::spawn_blocking(move || app.forget_old_replies()).await;
                match swept {
                    Ok(Ok(n)) => tracing::debug!(forgotten = n, "idempotency keys past retention"),
                    Ok(Err(e)) => tracing::error!(error = %e, "idempotency key sweep"),
                    Err(e) => tracing::error!(error = %e, "idempotency key sweep task"),
                }
            }
        }
    }
}

/// Raises the soft open-files limit to the hard one, as a server that holds one
/// descriptor per client should, and returns the limit in force.
fn raise_open_files_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            let (soft, _) = rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((1024, 1024));
            tracing::warn!(error = %e, soft, "cannot raise the open-files limit");
            soft
        }
    }
}

/// How many client connections may be open at once: `connections.max_open`,
/// lowered so that they fit under `open_files_limit` beside what the daemon
/// holds itself. Called once the store and the outbox are open, so the
/// descriptors open now count; on top of them go the refusal lane, one
/// connection per outbound delivery in flight (`notify.concurrency` per enabled
/// channel) and `connections.reserved_file_descriptors` for what grows later
/// (store segments, DNS, the rule watcher).
fn connection_capacity(open_files_limit: u64, config: &Config) -> Result<usize, StartError> {
    // Where /proc is not there to count, the reserve has to cover it.
    let open_now = std::fs::read_dir("/proc/self/fd").map_or(0, |fds| fds.count());
    let enabled = Enabled::from_config(&config.notify);
    let channels = [enabled.push, enabled.email, enabled.sms, enabled.webhook]
        .into_iter()
        .filter(|on| *on)
        .count();
    let reserved = open_now
        + accept::REFUSALS_IN_FLIGHT
        + channels * config.notify.concurrency
        + config.connections.reserved_file_descriptors;
    let limit = usize::try_from(open_files_limit).unwrap_or(usize::MAX);
    let fits = limit.saturating_sub(reserved);
    if fits == 0 {
        return Err(StartError::OpenFiles {
            limit: open_files_limit,
            reserved,
        });
    }
    let max_open = config.connections.max_open;
    if fits < max_open {
        tracing::warn!(
            open_files_limit,
            reserved,
            "the open-files limit allows {fits} connections, fewer than connections.max_open \
             ({max_open}); raise it (ulimit -n, LimitNOFILE=) to allow more"
        );
    }
    Ok(fits.min(max_open))
}

/// Binds the listener with TCP_NODELAY, which Linux copies to every accepted
/// socket: an ack written right after a message event must not wait for the
/// client's delayed ACK (Nagle), which costs up to 40 ms.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
