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
use crate::clock::{Clock, ManualClock, SystemClock};
use crate::config::{ClockMode, Config};
use crate::engine::Engine;
use crate::hub::Hub;
use crate::notify::router::Enabled;
use crate::notify::worker::Outbox;
use crate::rules::{RuleError, Rules, Watcher};
use crate::service::App;
use crate::store::{Delivery, Store, StoreError};

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
        "the open-files limit ({limit}) leaves no connections beyond \
         connections.reserved_file_descriptors ({reserved}); raise it (ulimit -n, LimitNOFILE=)"
    )]
    OpenFiles { limit: u64, reserved: usize },
}

/// How long shutdown waits for open streams to say goodbye.
const STREAM_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves on `listener` until `shutdown` resolves; `ready` runs once the store is
/// open and connections are being accepted.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), StartError> {
    let max_open = connection_capacity(&config.connections)?;
    let hub = Arc::new(Hub::default());
    let publish_to = hub.clone();
    let store = Store::open(
        &config.data_dir,
        &config.storage,
        Arc::new(move |d: &Delivery| publish_to.publish(&d.user_id, &d.frame)),
    )?;
    // A manual clock starts at the wall clock's time and moves only when told.
    let manual_clock = (config.clock == ClockMode::Manual)
        .then(|| Arc::new(ManualClock::starting_at(jiff::Timestamp::now())));
    let clock: Arc<dyn Clock> = match &manual_clock {
        Some(manual) => manual.clone(),
        None => Arc::new(SystemClock),
    };
    let rules_clock = clock.clone();
    let rules = Rules::open(
        config.rule_dirs(),
        Box::new(move || crate::model::format_time(rules_clock.now())),
    )
    .map_err(StartError::Rules)?;
    let rules = Arc::new(rules);
    let _watcher = Watcher::start(rules.clone())?;
    let reload_on_hangup = tokio::spawn(reload_on_hangup(rules.clone()));
    let engine = Arc::new(
        Engine::new(store.clone(), rules.clone(), clock.clone())
            .with_channels(Enabled::from_config(&config.notify))
            .with_max_attempts(config.automation.max_attempts),
    );
    let automation = tokio::spawn(engine.clone().run());
    let outbox = Outbox::new(
        store.clone(),
        clock.clone(),
        rules.clone(),
        &config.notify,
        engine.outbox_wakers(),
    )
    .map_err(StartError::Notify)?;
    let delivery = tokio::spawn(Arc::new(outbox).run());
    let app =
        Arc::new(App::new(config, store, hub, rules, clock).with_automation(engine, manual_clock));
    let streams = Arc::new(Streams::default());
    let user_limits = Arc::new(UserLimits::new(&app.config.limits));
    let metrics = crate::telemetry::metrics();
    // After the recorder is installed: the dead letters of an earlier run.
    crate::engine::count_dead(&app.store);
    let admission = Arc::new(Admission::new(&app.config.connections, max_open));
    let upkeep = tokio::spawn({
        let (app, user_limits, metrics) = (app.clone(), user_limits.clone(), metrics.clone());
        let admission = admission.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            let mut hourly = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
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
    });
    let routes = api::routes(app.clone(), streams.clone(), user_limits, metrics);
    let settings = accept::Settings {
        admission,
        proxies: TrustedProxies::new(app.config.connections.trusted_proxies.clone()),
        header_read_timeout: app.config.connections.header_read_timeout,
        drain_timeout: STREAM_CLOSE_TIMEOUT,
    };
    let stopping = streams.clone();
    let server = accept::serve(listener, settings, warp::service(routes), async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, closing streams");
        stopping.begin_shutdown();
    });
    ready();
    server.await;
    streams.closed(STREAM_CLOSE_TIMEOUT).await;
    upkeep.abort();
    reload_on_hangup.abort();
    automation.abort();
    delivery.abort();
    app.store.flush()?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// How many connections may be open at once: `connections.max_open`, lowered
/// so that they and the reserve fit under the open-files limit. The soft limit
/// is first raised to the hard one, as a server that holds one descriptor per
/// client should.
fn connection_capacity(config: &crate::config::ConnectionsConfig) -> Result<usize, StartError> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-files limit; assuming 1024");
            1024
        }
    };
    let reserved = config.reserved_file_descriptors;
    let fits = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_sub(reserved);
    if fits == 0 {
        return Err(StartError::OpenFiles { limit, reserved });
    }
    if fits < config.max_open {
        tracing::warn!(
            open_files_limit = limit,
            reserved,
            "the open-files limit allows {fits} connections, fewer than connections.max_open \
             ({}); raise it (ulimit -n, LimitNOFILE=) to allow more",
            config.max_open
        );
    }
    Ok(fits.min(config.max_open))
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

/// SIGHUP reloads the rules, the same way a file change does.
async fn reload_on_hangup(rules: Arc<Rules>) {
    #[cfg(unix)]
    if let Ok(mut hangups) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    {
        while hangups.recv().await.is_some() {
            let _ = rules.reload();
        }
    }
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
