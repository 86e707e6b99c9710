//! The accept loop. Each TCP connection is admitted (or refused with an HTTP
//! answer), then served by hyper with a header-read timeout through a [`Gate`]
//! that applies the per-address limits to each request. A connection's slot
//! travels inside its socket, so a WebSocket upgraded from it keeps the slot
//! until the stream closes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use warp::http::Request;

use super::admission::{Admission, Slot};
use super::forwarded::TrustedProxies;
use crate::api::{RequestGuard, Response, PUBLIC_PATHS};

/// Refused connections answered at once: each holds its socket while it reads
/// the request and answers, so they are bounded to stay inside the reserve of
/// file descriptors. Past it, a refused connection is closed without an answer.
pub(super) const REFUSALS_IN_FLIGHT: usize = 32;

/// The largest request head, in bytes (hyper's read buffer; its default is
/// about 400 KB, which 20,000 slow senders would turn into 8 GB). A larger
/// head gets 431.
const MAX_HEAD_BYTES: usize = 32 * 1024;

/// How long a refused connection may take to send its request head.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the accept loop needs besides the routes.
pub struct Settings {
    pub admission: Arc<Admission>,
    pub proxies: TrustedProxies,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
    /// How long shutdown waits for open connections (streams included) to end.
    pub drain_timeout: Duration,
}

/// Serves `routes` on `listener` until `shutdown` resolves, then stops
/// accepting, lets each connection finish its request, and waits (up to
/// `drain_timeout`) for every connection to close.
pub async fn serve<S>(
    listener: TcpListener,
    settings: Settings,
    routes: S,
    shutdown: impl Future<Output = ()>,
) where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let mut refusing = http1::Builder::new();
    refusing
        .timer(TokioTimer::new())
        .header_read_timeout(REFUSAL_TIMEOUT)
        .keep_alive(false);
    let refusals = Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT));
    let shared = Arc::new(settings);
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let peer = peer.ip().to_canonical();
        let behind_proxy = shared.proxies.contains(peer);
        match shared.admission.connection((!behind_proxy).then_some(peer)) {
            Ok(slot) => {
                let gate = Gate {
                    routes: routes.clone(),
                    peer,
                    behind_proxy,
                    shared: shared.clone(),
                };
                let io = TokioIo::new(Admitted::new(tcp, slot, shared.write_timeout));
                let connection = http.serve_connection(io, gate).with_upgrades();
                tokio::spawn(finish(connection, stopped.clone()));
            }
            Err(refusal) => {
                // Past the bound, closing unanswered is the only thing left.
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    let answer = hyper::service::service_fn(move |_: Request<Incoming>| {
                        std::future::ready(Ok::<_, Infallible>(refusal.response()))
                    });
                    let connection = refusing.serve_connection(TokioIo::new(tcp), answer);
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REFUSAL_TIMEOUT * 2, connection).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    stop.send_replace(true);
    shared.admission.drained(shared.drain_timeout).await;
}

/// Runs a connection to its end; on shutdown, lets its current request finish
/// and then closes it.
async fn finish<C>(connection: C, mut stopped: watch::Receiver<bool>)
where
    C: Future<Output = hyper::Result<()>> + GracefulShutdown,
{
    let mut connection = std::pin::pin!(connection);
    let ended = tokio::select! {
        result = connection.as_mut() => Some(result),
        _ = stopped.wait_for(|stop| *stop) => None,
    };
    let result = match ended {
        Some(result) => result,
        None => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        connection_failed(&e);
    }
}

/// hyper's connections each have `graceful_shutdown`, but no trait for it.
trait GracefulShutdown {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> GracefulShutdown for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// A connection that ended without a clean close. Clients cause these
/// (dropping mid-request, sending garbage, going silent), so they are counted
/// and logged at debug: an error line per event would let a client fill the log.
fn connection_failed(e: &hyper::Error) {
    let kind = if e.is_timeout() {
        "header_timeout"
    } else if e.is_incomplete_message() {
        "incomplete"
    } else if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
        "malformed"
    } else {
        "io"
    };
    metrics::counter!("parleyd_connection_errors_total", "kind" => kind).increment(1);
    tracing::debug!(error = %e, kind, "connection ended with an error");
}

/// An accept that failed. Aborted handshakes are the client's business; running
/// out of file descriptors means the reserve was too small, so it is a warning,
/// and the loop pauses so it does not spin while nothing can be accepted.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    metrics::counter!("parleyd_accept_errors_total").increment(1);
    tracing::warn!(
        error = %e,
        "cannot accept a connection (raise the open-files limit or \
         connections.reserved_file_descriptors)"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The per-request limits: the client's address (behind a trusted proxy, the
/// forwarded one) pays for requests without credentials, and behind a proxy
/// holds an address slot for as long as its request.
#[derive(Clone)]
struct Gate<S> {
    routes: S,
    peer: IpAddr,
    behind_proxy: bool,
    shared: Arc<Settings>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Gate<S>
where
    S: tower_service::Service<Request<Incoming>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let admission = &self.shared.admission;
        let client = if self.behind_proxy {
            self.shared.proxies.client(self.peer, request.headers())
        } else {
            self.peer
        };
        let admitted = (|| {
            if is_anonymous(&request) {
                admission.anonymous_request(client)?;
            }
            self.behind_proxy
                .then(|| admission.forwarded_request(client))
                .transpose()
        })();
        let held = match admitted {
            Ok(held) => held,
            Err(refusal) => return Box::pin(std::future::ready(Ok(refusal.response()))),
        };
        let guard = held.map(RequestGuard::new);
        if let Some(guard) = &guard {
            request.extensions_mut().insert(guard.clone());
        }
        let answer = self.routes.clone().call(request);
        Box::pin(async move {
            let response = answer.await;
            drop(guard);
            response
        })
    }
}

/// Whether the request pays the anonymous rate: it is for a public route
/// (whatever it carries, so a made-up `Authorization` header does not exempt
/// it), or it carries no token at all (neither header nor `token=` query).
fn is_anonymous(request: &Request<Incoming>) -> bool {
    let has_token = request
        .headers()
        .get(warp::http::header::AUTHORIZATION)
        .is_some_and(|value| !value.is_empty())
        || request.uri().query().is_some_and(|query| {
            query
                .split('&')
                .any(|pair| pair.strip_prefix("token=").is_some_and(|t| !t.is_empty()))
        });
    !has_token || PUBLIC_PATHS.contains(&request.uri().path())
}

/// A TCP stream with the slot it was admitted on: the slot goes back when the
/// socket closes, whether hyper or an upgraded WebSocket holds it last. A write
/// that can make no progress for `write_timeout` fails with `TimedOut`: a client
/// that stops reading (its receive window full) must not hold the connection,
/// or the stream task writing to it, forever.
struct Admitted {
    tcp: TcpStream,
    _slot: Slot,
    write_timeout: Duration,
    /// Armed while a write waits for the socket; disarmed by any progress.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Admitted {
    fn new(tcp: TcpStream, slot: Slot, write_timeout: Duration) -> Admitted {
        Admitted {
            tcp,
            _slot: slot,
            write_timeout,
            stalled: None,
        }
    }

    /// Passes a write's progress on, failing it once it has waited too long.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {timeout:?}"),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Admitted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Admitted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.bounded(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.bounded(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.tcp).poll_flush(cx);
        self.bounded(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.tcp).poll_shutdown(cx);
        self.bounded(cx, poll)
    }
}
