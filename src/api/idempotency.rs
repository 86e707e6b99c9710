//! `Idempotency-Key` on the marketplace backend's writes, with the semantics of
//! the IETF httpapi draft (draft-ietf-httpapi-idempotency-key-header): a client
//! that retries a request under the same key gets the first answer again, and
//! nothing happens twice.
//!
//! - The same key with the same request (method, path and JSON body, compared
//!   after parsing, so whitespace and key order do not matter) replays the
//!   first answer's status and body, marked `Idempotent-Replayed: true`.
//! - The same key with another request is 422 `idempotency_key_reused`.
//! - The same key while its first request is still being answered waits for
//!   that answer and replays it; after 10 s of waiting it is 409
//!   `idempotency_key_in_flight`.
//! - Keys belong to the caller (role and subject) and are remembered for
//!   `storage.idempotency_retention` (7 days by default).
//! - Only successful answers are remembered: a request that failed changed
//!   nothing, so its retry runs again.
//! - The answer is remembered once the operation has committed. The operations
//!   that create a record (a booking without an `id`, a signal) name it after
//!   the key ([`derived_id`]), so a retry that follows a crash between the two
//!   finds that record instead of making a second one.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use warp::http::{HeaderValue, Method, StatusCode};
use warp::{Filter, Rejection, Reply as _};

use super::{decode_json, read_limited, BodyLimits, Response};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::service::App;

/// The longest key accepted; the draft leaves it to the server.
const MAX_KEY_LEN: usize = 255;

/// A request body with its `Idempotency-Key`: absent, valid, or why not.
pub struct Keyed<T> {
    pub key: Option<Result<RequestKey, ApiError>>,
    pub body: Result<T, ApiError>,
}

/// A valid `Idempotency-Key` and the request it came with.
pub struct RequestKey {
    key: String,
    /// Hex SHA-256 of the method, the path and the body (canonical JSON when
    /// it parses, the bytes otherwise).
    fingerprint: String,
}

/// Like `json_body`, with the `Idempotency-Key` header and the request's
/// fingerprint.
pub fn keyed_json_body<T: DeserializeOwned + Send>(
    limits: BodyLimits,
) -> impl Filter<Extract = (Keyed<T>,), Error = Rejection> + Clone {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::optional::<String>("idempotency-key"))
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .then(
            move |method: Method, path: warp::path::FullPath, key: Option<String>, length, body| async move {
                let bytes = read_limited(length, body, limits).await;
                // Only a request with a key needs its fingerprint.
                let key = key.map(|key| {
                    valid_key(&key)?;
                    let fingerprint = fingerprint(&method, path.as_str(), bytes.as_ref().ok());
                    Ok(RequestKey { key, fingerprint })
                });
                Keyed {
                    key,
                    body: bytes.and_then(|b| decode_json(&b)),
                }
            },
        )
}

/// The draft's key is a structured-field string; parleyd takes any visible
/// ASCII (quoted or not) up to [`MAX_KEY_LEN`].
fn valid_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        )));
    }
    Ok(())
}

fn fingerprint(method: &Method, path: &str, body: Option<&Bytes>) -> String {
    let mut hash = Sha256::new()
        .chain_update(method.as_str())
        .chain_update([0])
        .chain_update(path)
        .chain_update([0]);
    if let Some(body) = body {
        match serde_json::from_slice::<serde_json::Value>(body) {
            // serde_json's maps are ordered by key: one text per value.
            Ok(value) => hash.update(value.to_string()),
            Err(_) => hash.update(body),
        }
    }
    hex(&hash.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where the caller's key is remembered: role, subject and key.
fn record_key(caller: &Caller, key: &str) -> Vec<u8> {
    format!("{:?}\0{}\0{key}", caller.role, caller.user_id).into_bytes()
}

/// The id of a record that `caller`'s request (its key and fingerprint)
/// creates: a UUID (version 8) from their SHA-256, the same on every retry of
/// that request, and another for another request under the same key (once the
/// first answer is forgotten), so that one is never mistaken for the other.
fn derived_id(caller: &Caller, key: &str, fingerprint: &str) -> String {
    let digest = Sha256::new()
        .chain_update(record_key(caller, key))
        .chain_update([0])
        .chain_update(fingerprint)
        .finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).to_string()
}

/// How long a request waits for another one under the same key to be
/// answered before it is told the key is in flight (409).
const IN_FLIGHT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The keys whose request is being answered right now, each with a lock that
/// a concurrent request under the same key waits on: it then finds the first
/// answer and replays it.
#[derive(Clone, Default)]
pub struct InFlight(Arc<Mutex<KeyLocks>>);

/// Each record key in flight, with the lock its requests take in turn.
type KeyLocks = HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>;

/// Holds a key until dropped.
struct Claim<'a> {
    in_flight: &'a InFlight,
    key: Vec<u8>,
    _held: tokio::sync::OwnedMutexGuard<()>,
}

impl InFlight {
    fn keys(&self) -> std::sync::MutexGuard<'_, KeyLocks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes `key`, waiting up to [`IN_FLIGHT_WAIT`] while another request
    /// holds it; `None` if it is still held then.
    async fn claim(&self, key: &[u8]) -> Option<Claim<'_>> {
        let lock = Arc::clone(self.keys().entry(key.to_vec()).or_default());
        let held = tokio::time::timeout(IN_FLIGHT_WAIT, lock.lock_owned())
            .await
            .ok()?;
        Some(Claim {
            in_flight: self,
            key: key.to_vec(),
            _held: held,
        })
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut keys = self.in_flight.keys();
        // Forget the lock unless another request holds a handle to it (the
        // map's and this claim's lock are the only two otherwise).
        if keys
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) <= 2)
        {
            keys.remove(&self.key);
        }
    }
}

/// Answers an authenticated request by running `op` once: a retry under the
/// same key gets the first answer. `op` takes the caller, the decoded body and
/// the id a record it creates should have when the request has a key
/// ([`derived_id`]); it gives the success status and body.
pub async fn answer<T, F, Fut>(
    app: &Arc<App>,
    in_flight: &InFlight,
    who: Result<Caller, ApiError>,
    request: Keyed<T>,
    op: F,
) -> Response
where
    F: FnOnce(Caller, T, Option<String>) -> Fut,
    Fut: Future<Output = Result<(StatusCode, serde_json::Value), ApiError>>,
{
    let reply = |status: StatusCode, body: &serde_json::Value| super::json(status, body);
    let run = |caller: Caller, derived: Option<String>| async move {
        op(caller, request.body?, derived).await
    };
    let caller = match who {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let (key, fingerprint) = match request.key {
        None => {
            return match run(caller, None).await {
                Ok((status, body)) => reply(status, &body),
                Err(e) => e.into_response(),
            }
        }
        Some(Err(e)) => return e.into_response(),
        Some(Ok(RequestKey { key, fingerprint })) => (key, fingerprint),
    };
    let record = record_key(&caller, &key);
    let Some(_claim) = in_flight.claim(&record).await else {
        return ApiError::IdempotencyKeyInFlight(
            "a request with this Idempotency-Key is still being answered; retry later".into(),
        )
        .into_response();
    };
    let replayed = {
        let (app, record) = (Arc::clone(app), record.clone());
        on_blocking_pool(move || app.replay(&record)).await
    };
    match replayed {
        Ok(Some(first)) if first.fingerprint == fingerprint => {
            let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
            let mut response = reply(status, &first.body);
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            return response;
        }
        Ok(Some(_)) => {
            return ApiError::IdempotencyKeyReused(
                "this Idempotency-Key was used for another request".into(),
            )
            .into_response()
        }
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    let derived = derived_id(&caller, &key, &fingerprint);
    match run(caller, Some(derived)).await {
        Ok((status, body)) => {
            let remembered = {
                let (app, body) = (Arc::clone(app), body.clone());
                on_blocking_pool(move || {
                    app.remember(&record, &fingerprint, status.as_u16(), &body)
                })
                .await
            };
            if let Err(e) = remembered {
                // The operation committed; its retry finds the record it made.
                tracing::error!(error = %e, "cannot remember an idempotent answer");
            }
            reply(status, &body)
        }
        Err(e) => e.into_response(),
    }
}

/// Runs a sled read or write on the blocking pool: sled waits while the writer
/// commits, and must not stall an async worker (and every connection it
/// serves) meanwhile.
async fn on_blocking_pool<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("blocking task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key is held by one request at a time and forgotten once no request
    /// holds it or waits for it: the map does not grow with every key ever
    /// used, and a request arriving while another waits still waits its turn.
    #[tokio::test(start_paused = true)]
    async fn a_key_is_held_in_turn_and_forgotten_once_no_request_needs_it() {
        let in_flight = InFlight::default();
        let first = in_flight.claim(b"k").await.expect("a free key");
        drop(first);
        assert!(in_flight.keys().is_empty(), "nothing holds or waits for it");

        let first = in_flight.claim(b"k").await.expect("a free key");
        let waiting = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let second = in_flight.claim(b"k").await.expect("its turn");
                // Holds the key past a third request's whole wait.
                tokio::time::sleep(IN_FLIGHT_WAIT * 2).await;
                drop(second);
            })
        };
        tokio::task::yield_now().await;
        drop(first);
        tokio::task::yield_now().await;
        assert!(
            in_flight.claim(b"k").await.is_none(),
            "the second request holds the key: a third waits, then gives up"
        );
        waiting.await.unwrap();
        assert!(in_flight.keys().is_empty());
    }
}
