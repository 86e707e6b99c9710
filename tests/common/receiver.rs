//! Stand-ins for what parleyd delivers notifications to: an HTTP receiver
//! (the push service, the SMS provider, the marketplace's webhook), and the
//! operators' view of a notification's deliveries.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{advance, guard, operator, Daemon, Person};

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub headers: HashMap<String, String>,
    pub raw: Vec<u8>,
    pub body: Value,
    /// What the receiver answered.
    pub status: u16,
}

/// An HTTP server that records every POST, answering 200 unless told to fail.
#[derive(Clone)]
pub struct Receiver {
    base: String,
    hits: Arc<Mutex<HashMap<String, Vec<Hit>>>>,
    /// Per path: the statuses the next requests get, in order (200 after).
    failing: Arc<Mutex<HashMap<String, VecDeque<u16>>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use warp::Filter;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let receiver = Receiver {
            base,
            hits: Arc::default(),
            failing: Arc::default(),
        };
        let state = receiver.clone();
        let route = warp::post()
            .and(warp::path::full())
            .and(warp::header::headers_cloned())
            .and(warp::body::bytes())
            .map(
                move |path: warp::path::FullPath,
                      headers: warp::http::HeaderMap,
                      body: bytes::Bytes| {
                    let path = path.as_str().to_owned();
                    let status = state
                        .failing
                        .lock()
                        .unwrap()
                        .get_mut(&path)
                        .and_then(VecDeque::pop_front)
                        .unwrap_or(200);
                    let hit = Hit {
                        headers: headers
                            .iter()
                            .map(|(k, v)| {
                                (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned())
                            })
                            .collect(),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        raw: body.to_vec(),
                        status,
                    };
                    state
                        .hits
                        .lock()
                        .unwrap()
                        .entry(path)
                        .or_default()
                        .push(hit);
                    warp::reply::with_status("", warp::http::StatusCode::from_u16(status).unwrap())
                },
            );
        tokio::spawn(warp::serve(route).incoming(listener).run());
        receiver
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The next `times` requests to `path` get `status`.
    pub fn fail(&self, path: &str, times: u32, status: u16) {
        self.answer(path, &vec![status; times as usize]);
    }

    /// The next requests to `path` get `statuses`, one each, in order.
    pub fn answer(&self, path: &str, statuses: &[u16]) {
        self.failing
            .lock()
            .unwrap()
            .insert(path.to_owned(), statuses.iter().copied().collect());
    }

    pub fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    pub fn hits_for(&self, path: &str, pred: impl Fn(&Hit) -> bool) -> Vec<Hit> {
        self.hits(path).into_iter().filter(|h| pred(h)).collect()
    }
}

pub async fn admin_notification(d: &Daemon, id: &str) -> Value {
    let reply = d
        .get(&format!("/v1/admin/notifications/{id}"), &operator().token)
        .await;
    reply.expect(200);
    reply.body
}

pub fn delivery<'a>(notification: &'a Value, channel: &str) -> &'a Value {
    notification["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == channel)
        .unwrap_or_else(|| panic!("no {channel} delivery in {notification}"))
}

/// Waits until the notification's `channel` delivery is in `state`.
pub async fn delivery_state(d: &Daemon, id: &str, channel: &str, state: &str) -> Value {
    delivery_where(d, id, channel, state, |c| c["state"] == state).await
}

/// Waits until the notification's `channel` delivery satisfies `pred`;
/// returns the whole notification.
pub async fn delivery_where(
    d: &Daemon,
    id: &str,
    channel: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    guard(&format!("{channel} delivery: {what}"), async {
        loop {
            let n = admin_notification(d, id).await;
            if pred(delivery(&n, channel)) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Polls `check` until it gives a value, advancing the clock by `step` between
/// tries when one is given.
pub async fn eventually<T>(
    what: &str,
    d: &Daemon,
    step: Option<&str>,
    check: impl Fn() -> Option<T>,
) -> T {
    guard(what, async {
        loop {
            if let Some(v) = check() {
                return v;
            }
            if let Some(step) = step {
                advance(d, step).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The latest notification of type `kind` for `who` (operators' view).
pub async fn notification_for(d: &Daemon, who: &Person, kind: &str) -> Value {
    notification_where(d, who, &format!("a {kind} notification"), |n| {
        n["type"] == kind
    })
    .await
}

/// Waits for a notification of `who` that satisfies `pred` (operators'
/// view); returns the latest such.
pub async fn notification_where(
    d: &Daemon,
    who: &Person,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    guard(what, async {
        loop {
            let reply = d
                .get(
                    &format!("/v1/admin/users/{}/notifications", who.id),
                    &operator().token,
                )
                .await;
            reply.expect(200);
            if let Some(n) = reply
                .body
                .as_array()
                .unwrap()
                .iter()
                .rev()
                .find(|n| pred(n))
            {
                return n.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}
