//! The warp layer: routes, request decoding and replies. It holds no business
//! logic: each route authenticates, decodes, calls the service layer and turns the
//! result into a reply.

mod http;
mod idempotency;
mod limits;
pub mod openapi;
mod stream;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::service::App;

pub use limits::{count_refusal, UserLimits};
pub use stream::Streams;

pub type Response = warp::reply::Response;

/// Something the connection layer holds for as long as a request is served
/// (an address slot of a request forwarded by a proxy). A WebSocket route
/// keeps it for the stream's life; dropping the last clone releases it.
#[derive(Clone)]
pub struct RequestGuard {
    _held: Arc<dyn std::any::Any + Send + Sync>,
}

impl RequestGuard {
    pub fn new(held: impl std::any::Any + Send + Sync) -> RequestGuard {
        RequestGuard {
            _held: Arc::new(held),
        }
    }
}

/// How much of a request body is read, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `limits.max_body_bytes`: larger bodies get 413.
    pub max_bytes: u64,
    /// `connections.body_read_timeout`: a body still arriving after it gets 408.
    pub read_timeout: std::time::Duration,
}

impl BodyLimits {
    pub fn of(config: &crate::config::Config) -> BodyLimits {
        BodyLimits {
            max_bytes: config.limits.max_body_bytes,
            read_timeout: config.connections.body_read_timeout,
        }
    }
}

/// The routes anyone may call without a token (defined in [`routes`]). The
/// connection layer rates them per client address whatever headers they carry.
pub const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/metrics", "/openapi.json"];

/// Every route of the daemon, with JSON errors for whatever no route accepted.
pub fn routes(
    app: Arc<App>,
    streams: Arc<Streams>,
    user_limits: Arc<UserLimits>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let health = app.clone();
    let ops = warp::path!("healthz")
        .and(warp::get())
        .map(move || healthz(&health))
        .or(warp::path!("metrics").and(warp::get()).map(move || {
            warp::reply::with_header(
                metrics.render(),
                "content-type",
                "text/plain; version=0.0.4",
            )
            .into_response()
        }))
        .unify()
        .or(warp::path!("openapi.json")
            .and(warp::get())
            .map(|| json(StatusCode::OK, &openapi::document())))
        .unify()
        .boxed();

    ops.or(http::routes(app.clone(), user_limits))
        .unify()
        .or(stream::routes(app, streams))
        .unify()
        .recover(recover)
        .unify()
        .with(warp::log::custom(|info| {
            metrics::counter!(
                "parleyd_http_requests_total",
                "method" => method_label(info.method()),
                "status" => info.status().as_u16().to_string()
            )
            .increment(1);
            metrics::histogram!("parleyd_http_request_seconds")
                .record(info.elapsed().as_secs_f64());
            // The access log, off at the shipped level: inside the `request`
            // span below, which carries the method and the bounded path.
            tracing::debug!(
                target: "parleyd::access",
                status = info.status().as_u16(),
                ms = info.elapsed().as_secs_f64() * 1000.0,
                "answered"
            );
        }))
        .with(warp::trace(|info| {
            tracing::info_span!(
                "request",
                method = method_label(info.method()),
                path = %bounded(info.path()),
            )
        }))
}

/// The `method` label of the request metrics: one of the standard methods, or
/// `other`. A client may send any token as its method; labelling by it would let
/// clients grow the set of series without bound.
fn method_label(method: &warp::http::Method) -> &'static str {
    use warp::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The longest request path a log line carries: a client must not be able to
/// make the daemon write 60 KB lines.
const LOGGED_PATH_CHARS: usize = 200;

/// `path` cut to [`LOGGED_PATH_CHARS`] characters, marked `…` when cut.
fn bounded(path: &str) -> std::borrow::Cow<'_, str> {
    match path.char_indices().nth(LOGGED_PATH_CHARS) {
        Some((at, _)) => format!("{}…", &path[..at]).into(),
        None => path.into(),
    }
}

/// `{"status": "..."}`: the reply of a route with nothing more to say.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusReply {
    /// What happened, e.g. `ok` or `sent`.
    pub status: &'static str,
}

/// A JSON reply with a status.
/// `GET /healthz` when a component is down or stuck (503).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnhealthyReply {
    /// Always `unhealthy`.
    pub status: &'static str,
    /// The components down or stuck, by name.
    pub components: Vec<UnhealthyComponent>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UnhealthyComponent {
    /// e.g. `engine`, `writer`, `outbox.email` (see `GET /v1/admin/pipeline`).
    pub name: String,
    /// `down` or `stuck`.
    pub state: crate::supervisor::State,
}

/// 200 `{"status":"ok"}`, or 503 naming the components down or stuck.
fn healthz(app: &App) -> Response {
    let unhealthy = app.unhealthy();
    if unhealthy.is_empty() {
        return json(StatusCode::OK, &StatusReply { status: "ok" });
    }
    let components = unhealthy
        .into_iter()
        .map(|(name, state)| UnhealthyComponent { name, state })
        .collect();
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &UnhealthyReply {
            status: "unhealthy",
            components,
        },
    )
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    warp::reply::with_status(warp::reply::json(body), status).into_response()
}

/// A service result as a reply: `ok` status on success, the error's otherwise.
fn respond<T: Serialize>(ok: StatusCode, result: Result<T, ApiError>) -> Response {
    match result {
        Ok(body) => json(ok, &body),
        Err(e) => e.into_response(),
    }
}

/// The caller from `Authorization: Bearer`. Never rejects: a missing or bad token
/// is an error the handler returns, so it cannot send warp trying other routes.
fn caller(
    app: Arc<App>,
) -> impl Filter<Extract = (Result<Caller, ApiError>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
        .map(move |header: Option<String>| app.authenticate(header.as_deref(), None))
}

/// The request body, read within `limits` whether or not a Content-Length is
/// given, and decoded as JSON: malformed JSON is 400, a well-formed body of the
/// wrong shape is 422, a larger body is 413, a body too slow to arrive is 408.
fn json_body<T: DeserializeOwned + Send>(
    limits: BodyLimits,
) -> impl Filter<Extract = (Result<T, ApiError>,), Error = Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and(warp::body::stream())
        .then(move |length: Option<u64>, body| async move {
            let bytes = read_limited(length, body, limits).await?;
            decode_json(&bytes)
        })
}

async fn read_limited<S, B>(
    length: Option<u64>,
    body: S,
    limits: BodyLimits,
) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let timeout = limits.read_timeout;
    tokio::time::timeout(timeout, read_body(length, body, limits.max_bytes))
        .await
        .unwrap_or_else(|_| {
            Err(ApiError::RequestTimeout(format!(
                "the request body did not arrive within {timeout:?}"
            )))
        })
}

async fn read_body<S, B>(length: Option<u64>, body: S, limit: u64) -> Result<Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let too_large =
        || ApiError::PayloadTooLarge(format!("request body is larger than {limit} bytes"));
    if length.is_some_and(|l| l > limit) {
        return Err(too_large());
    }
    let mut body = std::pin::pin!(body);
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("cannot read the body: {e}")))?;
        if bytes.len() as u64 + chunk.remaining() as u64 > limit {
            return Err(too_large());
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            bytes.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(bytes.freeze())
}

fn decode_json<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
        _ => ApiError::BadRequest(format!("malformed JSON: {e}")),
    })
}

/// What warp itself rejected (no route, wrong method, bad query string…) as a
/// JSON error.
async fn recover(rejection: Rejection) -> Result<Response, Infallible> {
    // A route that matched the path but not the method (POST beside GET) rejects
    // with MethodNotAllowed too; the more specific query or header problem wins.
    let error = if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::BadRequest(format!("invalid query string: {e}"))
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::BadRequest(e.to_string())
    } else if rejection.is_not_found() {
        ApiError::NotFound("no such route".into())
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed("method not allowed on this route".into())
    } else {
        tracing::debug!(?rejection, "unhandled rejection");
        ApiError::BadRequest("the request could not be understood".into())
    };
    Ok(error.into_response())
}
