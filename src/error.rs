//! The one place where failures become HTTP statuses and the JSON error body
//! `{"error": {"code": "...", "message": "..."}}` (also used by stream `error` frames).

use std::time::Duration;

use serde::Serialize;
use warp::http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    /// A `client_id` the sender already used for another message.
    #[error("{0}")]
    ClientIdConflict(String),
    /// An `Idempotency-Key` whose first request is still being answered.
    #[error("{0}")]
    IdempotencyKeyInFlight(String),
    /// An `Idempotency-Key` used before for another request.
    #[error("{0}")]
    IdempotencyKeyReused(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unprocessable(String),
    /// Too many requests; the caller may try again after `retry_after` (sent as
    /// the `Retry-After` header, in whole seconds rounded up).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    /// Contact moderation refused to deliver a message.
    #[error("{0}")]
    Blocked(String),
    #[error("{0}")]
    Unavailable(String),
    /// More writes wait to be stored than `storage.writer_queue` allows:
    /// nothing was written; the same request may be sent again after
    /// `retry_after` (the `Retry-After` header, as for `RateLimited`).
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: Duration,
    },
    /// A request body did not arrive within `connections.body_read_timeout`.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Internal(String),
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code, e.g. `not_found`, `rate_limited`.
    pub code: &'static str,
    pub message: String,
    /// With `rate_limited` and `overloaded`: milliseconds until the same
    /// request may be tried again (the stream's `error` frames have no
    /// `Retry-After` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_)
            | ApiError::ClientIdConflict(_)
            | ApiError::IdempotencyKeyInFlight(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unprocessable(_) | ApiError::IdempotencyKeyReused(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Blocked(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) | ApiError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not_found",
            ApiError::MethodNotAllowed(_) => "method_not_allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::ClientIdConflict(_) => "client_id_conflict",
            ApiError::IdempotencyKeyInFlight(_) => "idempotency_key_in_flight",
            ApiError::IdempotencyKeyReused(_) => "idempotency_key_reused",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::Unprocessable(_) => "invalid",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Blocked(_) => "blocked",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Overloaded { .. } => "overloaded",
            ApiError::RequestTimeout(_) => "request_timeout",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                // Internal details stay in the log, not in the reply.
                message: match self {
                    ApiError::Internal(_) => "internal error".to_owned(),
                    other => other.to_string(),
                },
                retry_after_ms: self
                    .retry_after()
                    .map(|wait| u64::try_from(wait.as_millis()).unwrap_or(u64::MAX)),
            },
        }
    }

    /// How long the caller should wait before trying again, if it should.
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. }
            | ApiError::Overloaded { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::NotFound(format!("{what} not found"))
    }
}

/// `Retry-After` in delay-seconds (RFC 9110 section 10.2.3): whole seconds,
/// rounded up so a client that waits that long is let through, and at least 1.
fn retry_after_seconds(wait: Duration) -> u64 {
    let rounded_up = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    rounded_up.max(1)
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> ApiError {
        match e {
            crate::store::StoreError::NotFound(what) => ApiError::not_found(what),
            e @ crate::store::StoreError::ClientIdConflict { .. } => {
                ApiError::ClientIdConflict(e.to_string())
            }
            e @ crate::store::StoreError::BookingExists(_) => ApiError::Conflict(e.to_string()),
            e @ crate::store::StoreError::Overloaded { retry_after, .. } => ApiError::Overloaded {
                message: e.to_string(),
                retry_after,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<crate::model::Invalid> for ApiError {
    fn from(e: crate::model::Invalid) -> ApiError {
        ApiError::Unprocessable(e.0)
    }
}

impl warp::Reply for ApiError {
    fn into_response(self) -> warp::reply::Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut response = warp::reply::with_status(warp::reply::json(&self.body()), self.status())
            .into_response();
        if let Some(wait) = self.retry_after() {
            response.headers_mut().insert(
                warp::http::header::RETRY_AFTER,
                warp::http::HeaderValue::from(retry_after_seconds(wait)),
            );
        }
        if let ApiError::PayloadTooLarge(_) = self {
            // The rest of the body is left unread, so the connection cannot carry
            // another request: say so, or a keep-alive client writes into a dead socket.
            response.headers_mut().insert(
                warp::http::header::CONNECTION,
                warp::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        assert_eq!(retry_after_seconds(Duration::ZERO), 1);
        assert_eq!(retry_after_seconds(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_seconds(Duration::from_secs(2)), 2);
        assert_eq!(retry_after_seconds(Duration::from_millis(2001)), 3);
    }
}
