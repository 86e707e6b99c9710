//! The daemon's life: open the store, serve until told to stop, then stop
//! accepting, close streams with "going away", flush and return.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::api::{self, Streams};
use crate::clock::SystemClock;
use crate::config::Config;
use crate::service::App;
use crate::store::{Store, StoreError};

/// How long shutdown waits for open streams to say goodbye.
const STREAM_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves on `listener` until `shutdown` resolves; `ready` runs once the store is
/// open and connections are being accepted.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> Result<(), StoreError> {
    let store = Store::open(&config.data_dir, &config.storage)?;
    let app = Arc::new(App::new(config, store, Arc::new(SystemClock)));
    let streams = Arc::new(Streams::default());
    let metrics = crate::telemetry::metrics();
    let upkeep = tokio::spawn({
        let (app, metrics) = (app.clone(), metrics.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                app.prune_rate_limits();
                metrics.run_upkeep();
            }
        }
    });
    let routes = api::routes(app.clone(), streams.clone(), metrics);
    let stopping = streams.clone();
    let server = warp::serve(routes).incoming(listener).graceful(async move {
        shutdown.await;
        tracing::info!("shutting down: no new connections, closing streams");
        stopping.begin_shutdown();
    });
    ready();
    server.run().await;
    streams.closed(STREAM_CLOSE_TIMEOUT).await;
    upkeep.abort();
    app.store.flush()?;
    tracing::info!("stopped cleanly");
    Ok(())
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
