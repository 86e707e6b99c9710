//! `GET /v1/stream` (WebSocket) and `GET /v1/events` (long-poll), two views of the
//! same per-user event log.
//!
//! A connection subscribes to the hub *before* it reads the log, so an event is
//! either already in the log it replays or arrives live; `position` (the last
//! cursor written to the client) drops duplicates, and a live frame that skips
//! ahead (two commits published out of order) is preceded by the missing events
//! read from the log. Hence: no gap, no duplicate.
//!
//! The upgrade is done here rather than with `warp::ws` so the socket runs with
//! small tungstenite buffers (warp's keeps ~133 KB per idle connection).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tracing::Instrument;
use warp::filters::BoxedFilter;
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use super::limits::{count_refusal, Action, ConnectionLimits};
use super::{RequestGuard, Response};
use crate::auth::Caller;
use crate::config::StreamConfig;
use crate::error::ApiError;
use crate::feed::Frame;
use crate::hub::TypingSlots;
use crate::model::SendInput;
use crate::service::App;

/// Close code telling a client it fell behind: reconnect with `since=` its cursor.
pub const CLOSE_RESUME: u16 = 4000;
/// Close code for a connection from which nothing arrived within the idle timeout.
pub const CLOSE_IDLE: u16 = 4001;
/// Close code for a connection whose token expired: reconnect with a fresh
/// token and `since=` the cursor the reason names (nothing is lost).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;
/// Close code for a user's oldest stream when they open one more than
/// `stream.max_streams_per_user`: the reason says to resume with `since=` the
/// cursor it names (nothing is lost). 4008 echoes 1008, "policy violation".
pub const CLOSE_REPLACED: u16 = 4008;
/// Close code for a stream opened while the writer's queue is full
/// (`storage.writer_queue`): reconnect a little later with the same `since`.
/// 1013 is "Try Again Later" in the IANA WebSocket close code registry.
pub const CLOSE_TRY_AGAIN: u16 = 1013;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// Live WebSocket connections and waiting long-polls: the caps (all users
/// together, and per user), the count, and the way to stop them all.
pub struct Streams {
    live: AtomicUsize,
    shutdown: watch::Sender<bool>,
    /// What each user holds now; a user holding nothing has no entry.
    users: Mutex<HashMap<String, Held>>,
    /// Tells one admission from another within a user's [`Held`].
    next_id: AtomicU64,
}

/// One user's open streams and waiting long-polls.
#[derive(Default)]
struct Held {
    /// Open streams, oldest first, each with the way to tell it it was replaced.
    streams: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Waiting long-polls, each with the time it answers at the latest.
    long_polls: Vec<(u64, Instant)>,
}

/// Held by each connection; dropping it counts the connection out.
struct Admitted {
    streams: Arc<Streams>,
    user: String,
    id: u64,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let id = self.id;
        self.streams
            .release(&self.user, |held| held.streams.retain(|(s, _)| *s != id));
        self.streams.live.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("parleyd_stream_connections").decrement(1.0);
    }
}

/// Held by a waiting long-poll; dropping it (on any way out) frees the slot.
struct Polling {
    streams: Arc<Streams>,
    user: String,
    id: u64,
}

impl Drop for Polling {
    fn drop(&mut self) {
        let id = self.id;
        self.streams
            .release(&self.user, |held| held.long_polls.retain(|(p, _)| *p != id));
        metrics::gauge!("parleyd_long_polls_waiting").decrement(1.0);
    }
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            live: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
            users: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Streams {
    /// Admits a stream of `user`: refused (503) at `max_connections` for all
    /// users together or while shutting down; at `max_streams_per_user`, the
    /// user's oldest stream is told to close (it resolves its receiver) and
    /// this one takes its place. The receiver resolves when a newer stream of
    /// the same user replaces this one.
    fn admit(
        self: &Arc<Self>,
        user: &str,
        config: &StreamConfig,
    ) -> Result<(Admitted, oneshot::Receiver<()>), ApiError> {
        if *self.shutdown.borrow() {
            return Err(ApiError::Unavailable("shutting down; retry later".into()));
        }
        self.live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < config.max_connections).then_some(n + 1)
            })
            .map_err(|_| {
                count_refusal("streams");
                ApiError::Unavailable(
                    "the server holds as many streams as it may (stream.max_connections); retry later"
                        .into(),
                )
            })?;
        metrics::gauge!("parleyd_stream_connections").increment(1.0);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (replace, replaced) = oneshot::channel();
        {
            let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
            let held = users.entry(user.to_owned()).or_default();
            while held.streams.len() >= config.max_streams_per_user {
                let Some((_, oldest)) = held.streams.pop_front() else {
                    break;
                };
                count_refusal("streams_per_user");
                // A stream that already ended has dropped its receiver: nothing to tell.
                let _ = oldest.send(());
            }
            held.streams.push_back((id, replace));
        }
        let admitted = Admitted {
            streams: Arc::clone(self),
            user: user.to_owned(),
            id,
        };
        Ok((admitted, replaced))
    }

    /// Takes one of `user`'s `max` long-poll slots until the returned guard
    /// drops; a poll of `wait` answers by `now + wait` at the latest. Full:
    /// 429 `rate_limited`, retrying after the user's earliest poll answers.
    fn hold_long_poll(
        self: &Arc<Self>,
        user: &str,
        max: usize,
        wait: Duration,
    ) -> Result<Polling, ApiError> {
        let now = Instant::now();
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let held = users.entry(user.to_owned()).or_default();
        if held.long_polls.len() >= max {
            let first_free = held.long_polls.iter().map(|(_, by)| *by).min();
            drop(users);
            count_refusal("long_polls_per_user");
            return Err(ApiError::RateLimited {
                message: format!(
                    "{max} long-polls of this user are already waiting (stream.max_long_polls_per_user); \
                     retry when one answers, or use the stream"
                ),
                retry_after: first_free.map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
            });
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        held.long_polls.push((id, now + wait));
        metrics::gauge!("parleyd_long_polls_waiting").increment(1.0);
        Ok(Polling {
            streams: Arc::clone(self),
            user: user.to_owned(),
            id,
        })
    }

    /// Applies `release` to `user`'s entry, forgetting the user once they hold nothing.
    fn release(&self, user: &str, release: impl FnOnce(&mut Held)) {
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = users.get_mut(user) {
            release(held);
            if held.streams.is_empty() && held.long_polls.is_empty() {
                users.remove(user);
            }
        }
    }

    /// Tells every connection (and waiting long-poll) to finish: streams close
    /// with "going away", and no new ones are admitted.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    since: Option<u64>,
    token: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Return events after this cursor (default 0: from the start).
    since: Option<u64>,
    /// Wait up to this many seconds for an event when there is none (default 0;
    /// more than `stream.long_poll_max_wait_seconds`, 30 as shipped, waits that long).
    wait: Option<u64>,
    /// The bearer token, for clients that cannot set headers.
    token: Option<String>,
}

pub fn routes(app: Arc<App>, streams: Arc<Streams>) -> BoxedFilter<(Response,)> {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let auth_header = warp::header::optional::<String>("authorization");
    let stream = warp::path!("v1" / "stream")
        .and(warp::get())
        .and(with_app.clone())
        .and(warp::any().map({
            let streams = streams.clone();
            move || streams.clone()
        }))
        .and(auth_header)
        .and(warp::query::<StreamQuery>())
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .and(warp::ext::optional::<RequestGuard>())
        .map(upgrade);
    let events = warp::path!("v1" / "events")
        .and(warp::get())
        .and(with_app)
        .and(warp::any().map(move || streams.clone()))
        .and(auth_header)
        .and(warp::query::<EventsQuery>())
        .then(long_poll);
    stream.or(events).unify().boxed()
}

/// The person a stream or long-poll is for, and when their token expires.
fn authenticate(
    app: &App,
    header: Option<&str>,
    token: Option<&str>,
) -> Result<(Caller, Option<i64>), ApiError> {
    let (caller, expires) = app.authenticate_until(header, token)?;
    Ok((caller.require_person()?, expires))
}

/// How long until `expires` (Unix seconds), from now; zero once past.
fn until(expires: i64) -> Duration {
    let now = jiff::Timestamp::now().as_second();
    Duration::from_secs(u64::try_from(expires.saturating_sub(now)).unwrap_or(0))
}

/// Resolves when the connection's token expires (never for no expiry).
async fn token_expiry(expires: Option<i64>) {
    match expires {
        Some(at) => tokio::time::sleep(until(at)).await,
        None => std::future::pending().await,
    }
}

fn header_has(headers: &HeaderMap, name: &str, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        })
    })
}

/// Answers the WebSocket handshake (after authenticating, so a bad token is a
/// plain 401) and runs the connection once hyper hands over the socket.
fn upgrade(
    app: Arc<App>,
    streams: Arc<Streams>,
    auth_header: Option<String>,
    query: StreamQuery,
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
    request_guard: Option<RequestGuard>,
) -> Response {
    let (caller, expires) = match authenticate(&app, auth_header.as_deref(), query.token.as_deref())
    {
        Ok(authenticated) => authenticated,
        Err(e) => return e.into_response(),
    };
    let key = headers.get("sec-websocket-key");
    let is_upgrade = header_has(&headers, "connection", "upgrade")
        && header_has(&headers, "upgrade", "websocket")
        && headers
            .get("sec-websocket-version")
            .is_some_and(|v| v == "13");
    let (Some(key), true, Some(on_upgrade)) = (key, is_upgrade, on_upgrade) else {
        return ApiError::BadRequest(
            "this endpoint speaks WebSocket (version 13); use GET /v1/events for long-poll".into(),
        )
        .into_response();
    };
    let (admitted, replaced) = match streams.admit(&caller.user_id, &app.config().stream) {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let accept = derive_accept_key(key.as_bytes());
    let max_frame = app.config().limits.max_body_bytes as usize;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(1024 * 1024)
        .max_message_size(Some(max_frame))
        .max_frame_size(Some(max_frame));
    let shutdown = streams.shutdown.subscribe();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                let span = tracing::info_span!("stream", user = %caller.user_id);
                Connection::new(app, caller, expires, shutdown)
                    .run(socket, query.since, replaced)
                    .instrument(span)
                    .await;
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
        drop((admitted, request_guard));
    });
    let mut response =
        warp::reply::with_status(warp::reply(), StatusCode::SWITCHING_PROTOCOLS).into_response();
    let h = response.headers_mut();
    h.insert(
        "connection",
        warp::http::HeaderValue::from_static("upgrade"),
    );
    h.insert("upgrade", warp::http::HeaderValue::from_static("websocket"));
    if let Ok(v) = warp::http::HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    response
}

/// Frames a client may send.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientFrame {
    Send {
        conversation_id: String,
        client_id: String,
        content: String,
        #[serde(default)]
        quick_reply_id: Option<String>,
    },
    Read {
        conversation_id: String,
        seq: u64,
    },
    Delivered {
        conversation_id: String,
        seq: u64,
    },
    Typing {
        conversation_id: String,
    },
    Ping,
}

fn error_frame(client_id: Option<&str>, e: &ApiError) -> String {
    serde_json::json!({"type": "error", "client_id": client_id, "error": e.body().error})
        .to_string()
}

/// Why a connection ended, and the close frame that says so.
enum Ending {
    ClientLeft,
    Close(u16, String),
}

struct Connection {
    app: Arc<App>,
    caller: Caller,
    /// When the token that opened the connection expires (Unix seconds).
    expires: Option<i64>,
    limits: ConnectionLimits,
    shutdown: watch::Receiver<bool>,
    /// The last cursor written to the client.
    position: u64,
}

impl Connection {
    fn new(
        app: Arc<App>,
        caller: Caller,
        expires: Option<i64>,
        shutdown: watch::Receiver<bool>,
    ) -> Connection {
        Connection {
            limits: ConnectionLimits::new(&app.config().limits),
            app,
            caller,
            expires,
            shutdown,
            position: 0,
        }
    }

    async fn run(mut self, socket: Socket, since: Option<u64>, replaced: oneshot::Receiver<()>) {
        let (mut sink, mut source) = socket.split();
        let ending = self.serve(&mut sink, &mut source, since, replaced).await;
        if let Ending::Close(code, reason) = ending {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                sink.send(WsMessage::Close(Some(frame))),
            )
            .await;
        }
        let _ = sink.close().await;
    }

    async fn serve<S, R>(
        &mut self,
        sink: &mut S,
        source: &mut R,
        since: Option<u64>,
        replaced: oneshot::Receiver<()>,
    ) -> Ending
    where
        S: futures_util::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
        R: futures_util::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        let cfg = self.app.config().stream.clone();
        let mut subscription = self.app.subscribe(&self.caller.user_id, cfg.queue_capacity);
        let head = match self.app.durable_cursor(&self.caller.user_id).await {
            Ok(head) => head,
            Err(e) => {
                return match ApiError::from(e) {
                    ApiError::Overloaded { .. } => Ending::Close(
                        CLOSE_TRY_AGAIN,
                        "overloaded; reconnect shortly with the same since".into(),
                    ),
                    e => internal(e),
                }
            }
        };
        // A cursor beyond the log (e.g. a client of a reset deployment) is the head.
        self.position = since.unwrap_or(head).min(head);
        if let Err(ending) = self.catch_up(sink, head).await {
            return ending;
        }
        let ready = serde_json::json!({"type": "ready", "cursor": self.position}).to_string();
        if sink.send(WsMessage::text(ready)).await.is_err() {
            return Ending::ClientLeft;
        }

        let (replies_tx, mut replies) = mpsc::channel::<String>(cfg.max_inflight_per_connection);
        let inflight = Arc::new(Semaphore::new(cfg.max_inflight_per_connection));
        let mut heartbeat = tokio::time::interval(Duration::from_secs(cfg.heartbeat_seconds));
        heartbeat.tick().await;
        let idle_timeout = Duration::from_secs(cfg.idle_timeout_seconds);
        let mut last_heard = Instant::now();
        let mut shutdown = self.shutdown.clone();
        let typing = Arc::clone(&subscription.typing);
        // When a held typing indicator may be written.
        let mut typing_due: Option<Instant> = None;
        // Resolves only when a newer stream of the same user takes this one's place.
        let replaced = async {
            if replaced.await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::pin!(replaced);

        loop {
            // Biased: answers to the client's own sends go out before more of its
            // frames are taken in, and deliveries before both.
            tokio::select! {
                biased;
                _ = stopping(&mut shutdown) => {
                    return Ending::Close(1001, "server shutting down".into());
                }
                _ = &mut replaced => {
                    return Ending::Close(
                        CLOSE_REPLACED,
                        format!(
                            "replaced by a newer stream of the same user; resume with since={}",
                            self.position
                        ),
                    );
                }
                _ = token_expiry(self.expires) => {
                    return Ending::Close(
                        CLOSE_TOKEN_EXPIRED,
                        format!("token expired; reconnect with a new one and since={}", self.position),
                    );
                }
                frame = subscription.frames.recv() => {
                    let Some(frame) = frame else {
                        return Ending::Close(
                            CLOSE_RESUME,
                            format!("fell behind; resume with since={}", self.position),
                        );
                    };
                    let mut batch = vec![frame];
                    while batch.len() < 64 {
                        match subscription.frames.try_recv() {
                            Ok(f) => batch.push(f),
                            Err(_) => break,
                        }
                    }
                    if let Err(ending) = self.deliver(sink, batch).await {
                        return ending;
                    }
                }
                _ = typing_wakeup(&typing, typing_due) => {
                    match write_typing(sink, &typing).await {
                        Ok(next) => typing_due = next,
                        Err(ending) => return ending,
                    }
                }
                Some(reply) = replies.recv() => {
                    if sink.send(WsMessage::text(reply)).await.is_err() {
                        return Ending::ClientLeft;
                    }
                }
                incoming = source.next() => {
                    last_heard = Instant::now();
                    match incoming {
                        None => return Ending::ClientLeft,
                        Some(Err(e)) => return read_failure(e),
                        Some(Ok(WsMessage::Text(text))) => {
                            if let Some(reply) = self.handle(text.as_str(), &replies_tx, &inflight).await {
                                if sink.send(WsMessage::text(reply)).await.is_err() {
                                    return Ending::ClientLeft;
                                }
                            }
                        }
                        Some(Ok(WsMessage::Binary(_))) => {
                            let e = ApiError::BadRequest("binary frames are not supported; send JSON text".into());
                            if sink.send(WsMessage::text(error_frame(None, &e))).await.is_err() {
                                return Ending::ClientLeft;
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) => return Ending::ClientLeft,
                        Some(Ok(_)) => {} // ping (answered by tungstenite) or pong
                    }
                }
                _ = heartbeat.tick() => {
                    if last_heard.elapsed() >= idle_timeout {
                        return Ending::Close(CLOSE_IDLE, "idle timeout".into());
                    }
                    if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                        return Ending::ClientLeft;
                    }
                }
            }
        }
    }

    /// Replays logged events in `(position, until]` from the store, page by page.
    async fn catch_up<S>(&mut self, sink: &mut S, until: u64) -> Result<(), Ending>
    where
        S: futures_util::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        let page = self.app.config().stream.replay_page;
        while self.position < until {
            let frames = self
                .app
                .events_between(&self.caller.user_id, self.position, until, page)
                .map_err(|e| internal(e.into()))?;
            let Some(last) = frames.last().and_then(|f| f.cursor) else {
                // The log has nothing more up to `until`: nothing to replay.
                self.position = until;
                break;
            };
            for frame in frames {
                sink.feed(WsMessage::text(frame.json.to_string()))
                    .await
                    .map_err(|_| Ending::ClientLeft)?;
            }
            sink.flush().await.map_err(|_| Ending::ClientLeft)?;
            self.position = last;
        }
        Ok(())
    }

    /// Writes live frames in cursor order, filling any gap from the log and
    /// skipping what the client already has.
    async fn deliver<S>(&mut self, sink: &mut S, batch: Vec<Arc<Frame>>) -> Result<(), Ending>
    where
        S: futures_util::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
    {
        for frame in batch {
            match frame.cursor {
                Some(c) if c <= self.position => continue,
                Some(c) if c > self.position + 1 => self.catch_up(sink, c - 1).await?,
                _ => {}
            }
            sink.feed(WsMessage::text(frame.json.to_string()))
                .await
                .map_err(|_| Ending::ClientLeft)?;
            if let Some(c) = frame.cursor {
                self.position = c;
            }
        }
        sink.flush().await.map_err(|_| Ending::ClientLeft)
    }

    /// Handles one client frame. Sends and reads run concurrently (bounded by
    /// `inflight`) and answer through `replies`; the rest answer directly.
    async fn handle(
        &self,
        text: &str,
        replies: &mpsc::Sender<String>,
        inflight: &Arc<Semaphore>,
    ) -> Option<String> {
        let parsed = serde_json::from_str::<ClientFrame>(text);
        // Every frame counts, a malformed one too; sends are further held to
        // the per-user send limit by the service.
        let action = match &parsed {
            Ok(ClientFrame::Typing { .. }) => Action::Typing,
            Ok(ClientFrame::Read { .. }) => Action::Read,
            Ok(ClientFrame::Delivered { .. }) => Action::Delivered,
            Ok(ClientFrame::Ping) => Action::Ping,
            Ok(ClientFrame::Send { .. }) | Err(_) => Action::Frame,
        };
        let (client_id, e) = match (parsed, self.limits.check(action)) {
            (Ok(frame), Ok(())) => return self.dispatch(frame, replies, inflight).await,
            (Ok(ClientFrame::Send { client_id, .. }), Err(limited)) => {
                (Some(client_id), limited.error())
            }
            (Ok(_), Err(limited)) => (None, limited.error()),
            (Err(e), limited) => {
                let client_id = serde_json::from_str::<serde_json::Value>(text)
                    .ok()
                    .and_then(|v| v.get("client_id")?.as_str().map(str::to_owned));
                let e = match limited {
                    Ok(()) => ApiError::BadRequest(format!(
                        "not a valid frame ({e}); expected send, read, delivered, typing or ping"
                    )),
                    Err(limited) => limited.error(),
                };
                (client_id, e)
            }
        };
        Some(error_frame(client_id.as_deref(), &e))
    }

    /// Carries out a frame within its limits.
    async fn dispatch(
        &self,
        frame: ClientFrame,
        replies: &mpsc::Sender<String>,
        inflight: &Arc<Semaphore>,
    ) -> Option<String> {
        match frame {
            ClientFrame::Ping => Some(serde_json::json!({"type": "pong"}).to_string()),
            ClientFrame::Typing { conversation_id } => self
                .app
                .typing(self.caller.clone(), &conversation_id)
                .err()
                .map(|e| error_frame(None, &e)),
            ClientFrame::Send {
                conversation_id,
                client_id,
                content,
                quick_reply_id,
            } => {
                let permit = inflight.clone().acquire_owned().await.ok()?;
                let (app, caller, replies) =
                    (self.app.clone(), self.caller.clone(), replies.clone());
                tokio::spawn(async move {
                    let input = SendInput {
                        client_id: client_id.clone(),
                        content,
                        quick_reply_id,
                    };
                    let reply = match app.send(caller, &conversation_id, input).await {
                        Ok(sent) => serde_json::json!({
                            "type": "ack",
                            "client_id": client_id,
                            "message": sent.message,
                            "created": sent.created,
                        })
                        .to_string(),
                        Err(e) => error_frame(Some(&client_id), &e),
                    };
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
                None
            }
            ClientFrame::Read {
                conversation_id,
                seq,
            } => {
                self.spawn_receipt(inflight, replies, move |app, caller| async move {
                    app.read(caller, &conversation_id, seq).await.map(drop)
                })
                .await
            }
            ClientFrame::Delivered {
                conversation_id,
                seq,
            } => {
                self.spawn_receipt(inflight, replies, move |app, caller| async move {
                    app.delivered(caller, &conversation_id, seq).await.map(drop)
                })
                .await
            }
        }
    }

    /// Runs a read or delivery receipt beside the connection (bounded by
    /// `inflight`); only a failure is answered, with an `error` frame.
    async fn spawn_receipt<F, Fut>(
        &self,
        inflight: &Arc<Semaphore>,
        replies: &mpsc::Sender<String>,
        receipt: F,
    ) -> Option<String>
    where
        F: FnOnce(Arc<App>, Caller) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(), ApiError>> + Send,
    {
        let permit = inflight.clone().acquire_owned().await.ok()?;
        let (app, caller, replies) = (self.app.clone(), self.caller.clone(), replies.clone());
        tokio::spawn(async move {
            if let Err(e) = receipt(app, caller).await {
                let _ = replies.send(error_frame(None, &e)).await;
            }
            drop(permit);
        });
        None
    }
}

/// Resolves when a typing indicator arrives, or when a held one falls `due`.
async fn typing_wakeup(slots: &TypingSlots, due: Option<Instant>) {
    match due {
        Some(due) => tokio::select! {
            _ = slots.changed() => {}
            _ = tokio::time::sleep_until(due) => {}
        },
        None => slots.changed().await,
    }
}

/// Writes the typing indicators that are due; returns when the next held one is.
async fn write_typing<S>(sink: &mut S, slots: &TypingSlots) -> Result<Option<Instant>, Ending>
where
    S: futures_util::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    let (due, next) = slots.take_due(Instant::now());
    if !due.is_empty() {
        for frame in due {
            sink.feed(WsMessage::text(frame.json.to_string()))
                .await
                .map_err(|_| Ending::ClientLeft)?;
        }
        sink.flush().await.map_err(|_| Ending::ClientLeft)?;
    }
    Ok(next)
}

/// Resolves once shutdown has begun (at once if it already has).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: drop it here, not across an await.
    let _ = shutdown.wait_for(|stopping| *stopping).await.map(drop);
}

/// How a failed read ends the connection: a client that broke the protocol is
/// told why with the RFC 6455 §7.4.1 close code (1009 message too big, 1007 text
/// that is not UTF-8, 1002 any other protocol violation: a bad opcode, an
/// unmasked frame…); one that vanished is just gone.
fn read_failure(e: WsError) -> Ending {
    // A close reason must fit a control frame (123 bytes): short fixed texts.
    let (code, reason) = match &e {
        WsError::Capacity(CapacityError::MessageTooLong { max_size, .. }) => (
            CloseCode::Size,
            format!("message too big: the limit is {max_size} bytes"),
        ),
        WsError::Capacity(_) => (CloseCode::Size, "message too big".to_owned()),
        WsError::Utf8(_) => (CloseCode::Invalid, "text frame is not UTF-8".to_owned()),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            return Ending::ClientLeft
        }
        WsError::Protocol(_) => (CloseCode::Protocol, "WebSocket protocol error".to_owned()),
        _ => return Ending::ClientLeft,
    };
    tracing::debug!(error = %e, "closing a stream that broke the protocol");
    Ending::Close(code.into(), reason)
}

fn internal(e: ApiError) -> Ending {
    tracing::error!(error = %e, "stream failed");
    Ending::Close(1011, "internal error; resume from your cursor".into())
}

/// The reply of `GET /v1/events`.
// Documentation only: `long_poll` splices the stored frames into the reply
// text rather than building this.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct EventsPage {
    /// Event frames, as on the stream (see README.md), oldest first.
    events: Vec<serde_json::Value>,
    /// The cursor of the last event (or `since` when there is none): the next `since`.
    cursor: u64,
}

/// `GET /v1/events`: the events after `since`, at once if there are any, else
/// after waiting up to `wait` seconds for one.
#[utoipa::path(get, path = "/v1/events", tag = "stream", params(EventsQuery),
    responses((status = 200, body = EventsPage),
              (status = 429, description = "the caller already has `stream.max_long_polls_per_user` long-polls waiting (code `rate_limited`); Retry-After says when the earliest answers")),
    security(("bearer" = [])))]
pub async fn long_poll(
    app: Arc<App>,
    streams: Arc<Streams>,
    auth_header: Option<String>,
    query: EventsQuery,
) -> Response {
    match poll_events(&app, &streams, auth_header.as_deref(), &query).await {
        Ok((frames, cursor)) => {
            // Frames are stored as JSON text: splice them in without re-parsing.
            let mut body = String::from("{\"events\":[");
            for (i, frame) in frames.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&frame.json);
            }
            body.push_str(&format!("],\"cursor\":{cursor}}}"));
            warp::reply::with_header(body, "content-type", "application/json").into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn poll_events(
    app: &Arc<App>,
    streams: &Arc<Streams>,
    auth_header: Option<&str>,
    query: &EventsQuery,
) -> Result<(Vec<Frame>, u64), ApiError> {
    let (caller, expires) = authenticate(app, auth_header, query.token.as_deref())?;
    let user = &caller.user_id;
    let page = app.config().stream.replay_page;
    // Never past the token's expiry: the next poll needs a valid one.
    let wait = query
        .wait
        .unwrap_or(0)
        .min(app.config().stream.long_poll_max_wait_seconds)
        .min(expires.map_or(u64::MAX, |at| until(at).as_secs()));
    // Subscribe before reading so an event committed in between still wakes us.
    let mut subscription = app.subscribe(user, 16);
    let head = app.durable_cursor(user).await?;
    let since = query.since.unwrap_or(0).min(head);
    if head == since && wait > 0 {
        let wait = Duration::from_secs(wait);
        let _slot =
            streams.hold_long_poll(user, app.config().stream.max_long_polls_per_user, wait)?;
        let mut shutdown = streams.shutdown.subscribe();
        let logged = async {
            while let Some(frame) = subscription.frames.recv().await {
                if frame.cursor.is_some() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = logged => {}
            _ = stopping(&mut shutdown) => {}
        }
    }
    drop(subscription);
    let head = app.durable_cursor(user).await?;
    let frames = app.events_between(user, since, head, page)?;
    let cursor = frames.last().and_then(|f| f.cursor).unwrap_or(since);
    Ok((frames, cursor))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> StreamConfig {
        StreamConfig {
            max_connections: 3,
            max_streams_per_user: 2,
            ..StreamConfig::default()
        }
    }

    fn users(streams: &Streams) -> usize {
        streams.users.lock().unwrap().len()
    }

    #[test]
    fn a_users_extra_stream_replaces_their_oldest_within_the_global_cap() {
        let streams = Arc::new(Streams::default());
        let (first, mut first_replaced) = streams.admit("ann", &config()).unwrap();
        let (_second, mut second_replaced) = streams.admit("ann", &config()).unwrap();
        let (_third, _) = streams.admit("ann", &config()).unwrap();
        assert_eq!(first_replaced.try_recv(), Ok(()));
        assert!(second_replaced.try_recv().is_err(), "only the oldest goes");
        // The replaced stream holds its place until it has closed.
        assert_eq!(
            streams.admit("bob", &config()).err().map(|e| e.code()),
            Some("unavailable")
        );
        drop(first);
        let (bob, _) = streams.admit("bob", &config()).unwrap();
        drop(bob);
        assert_eq!(users(&streams), 1, "a user holding nothing is forgotten");
    }

    #[test]
    fn a_long_poll_slot_is_held_until_its_guard_drops() {
        let streams = Arc::new(Streams::default());
        let wait = Duration::from_secs(30);
        let held = [
            streams.hold_long_poll("ann", 2, wait).unwrap(),
            streams.hold_long_poll("ann", 2, wait).unwrap(),
        ];
        match streams.hold_long_poll("ann", 2, wait) {
            Err(ApiError::RateLimited { retry_after, .. }) => assert!(retry_after <= wait),
            other => panic!("expected rate_limited, got {:?}", other.err()),
        }
        let bob = streams.hold_long_poll("bob", 2, wait).unwrap();
        drop(held);
        let again = streams.hold_long_poll("ann", 2, wait).unwrap();
        drop((bob, again));
        assert_eq!(users(&streams), 0);
    }
}
