//! Notifications end to end: the daemon runs the shipped rules (routing.yaml
//! included) on a manual clock, and delivers to real servers on loopback: an
//! SMTP server (Python's aiosmtpd, installed on first use) and an HTTP
//! receiver standing in for the push service, the SMS provider and the
//! marketplace backend's webhook.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::python::{python3, python_packages};
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

// ---------------------------------------------------------------- receivers

/// One request the HTTP receiver got.
#[derive(Debug, Clone)]
struct Hit {
    headers: HashMap<String, String>,
    raw: Vec<u8>,
    body: Value,
    /// What the receiver answered.
    status: u16,
}

/// An HTTP server that records every POST, answering 200 unless told to fail.
#[derive(Clone)]
struct Receiver {
    base: String,
    hits: Arc<Mutex<HashMap<String, Vec<Hit>>>>,
    /// Per path: how many more requests to fail, and with which status.
    failing: Arc<Mutex<HashMap<String, (u32, u16)>>>,
}

impl Receiver {
    async fn start() -> Receiver {
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
                    let status = match state.failing.lock().unwrap().get_mut(&path) {
                        Some((left, status)) if *left > 0 => {
                            *left -= 1;
                            *status
                        }
                        _ => 200,
                    };
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

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The next `times` requests to `path` get `status`.
    fn fail(&self, path: &str, times: u32, status: u16) {
        self.failing
            .lock()
            .unwrap()
            .insert(path.to_owned(), (times, status));
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap()
            .get(path)
            .cloned()
            .unwrap_or_default()
    }

    fn hits_for(&self, path: &str, pred: impl Fn(&Hit) -> bool) -> Vec<Hit> {
        self.hits(path).into_iter().filter(|h| pred(h)).collect()
    }
}

/// aiosmtpd's version, pinned so every run tests against the same server.
const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// A real SMTP server; the emails it accepted are in `mails`.
struct SmtpSink {
    port: u16,
    mails: Arc<Mutex<Vec<Value>>>,
    _child: tokio::process::Child,
}

impl SmtpSink {
    async fn start() -> SmtpSink {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = python3(&python_packages(&[AIOSMTPD]))
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the SMTP server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let port = guard("the SMTP server to start", async {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("SMTP server output");
            line.strip_prefix("ready ").unwrap().parse::<u16>().unwrap()
        })
        .await;
        let mails: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = Arc::clone(&mails);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        // Keep stdin open: the server stops when it closes.
        let stdin = child.stdin.take().unwrap();
        tokio::spawn(async move {
            let mut stdin = stdin;
            let _ = stdin.flush().await;
            std::future::pending::<()>().await;
        });
        SmtpSink {
            port,
            mails,
            _child: child,
        }
    }

    /// The raw text of each email to `address`.
    fn to(&self, address: &str) -> Vec<String> {
        self.mails_to(address)
            .iter()
            .map(|m| m["data"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Each email to `address`, with its decoded `parts`.
    fn mails_to(&self, address: &str) -> Vec<Value> {
        self.mails
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m["to"].as_array().unwrap().iter().any(|t| t == address))
            .cloned()
            .collect()
    }
}

// ---------------------------------------------------------------- set-up

struct World {
    d: Daemon,
    http: Receiver,
    smtp: SmtpSink,
    p: Pair,
}

const CUSTOMER_EMAIL: &str = "carla@example.test";
const CUSTOMER_PHONE: &str = "+33600000001";

/// A daemon with the shipped rules on a manual clock, delivering to `http`
/// and the SMTP server on `smtp_port`.
async fn launch(data_dir: Option<PathBuf>, http: &Receiver, smtp_port: u16) -> Daemon {
    Daemon::launch(Launch {
        data_dir,
        automation: true,
        config: vec![
            ("clock", "manual".into()),
            ("smtp_url", format!("smtp://127.0.0.1:{smtp_port}")),
            ("push_url", http.url("/push")),
            ("sms_url", http.url("/sms")),
            ("webhook_url", http.url("/webhook")),
            ("webhook_secret", WEBHOOK_SECRET.into()),
            ("max_attempts", "4".into()),
            ("retry_base", "10s".into()),
            ("retry_max", "1m".into()),
        ],
        ..Launch::default()
    })
    .await
}

async fn world_in(data_dir: Option<PathBuf>, http: Receiver, smtp: SmtpSink) -> World {
    let d = launch(data_dir, &http, smtp.port).await;
    let p = pair(&d).await;
    set_customer(&d, &p, json!({})).await;
    d.put(
        &format!("/v1/users/{}", p.provider.id),
        SERVICE_KEY,
        json!({"name": "Pablo", "email": "pablo@example.test", "timezone": "Europe/Paris"}),
    )
    .await
    .expect(200);
    World { d, http, smtp, p }
}

async fn world() -> World {
    world_in(None, Receiver::start().await, SmtpSink::start().await).await
}

/// Registers the customer with an email, a phone and `extra` preferences.
async fn set_customer(d: &Daemon, p: &Pair, extra: Value) {
    let mut user = json!({
        "name": "Carla", "email": CUSTOMER_EMAIL, "phone": CUSTOMER_PHONE,
        "timezone": "Europe/Paris",
    });
    user.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    d.put(&format!("/v1/users/{}", p.customer.id), SERVICE_KEY, user)
        .await
        .expect(200);
}

/// Polls `check` until it gives a value, advancing the clock by `step` between
/// tries when one is given.
async fn eventually<T>(
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
async fn notification_for(d: &Daemon, who: &Person, kind: &str) -> Value {
    guard(&format!("a {kind} notification"), async {
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
                .find(|n| n["type"] == kind)
            {
                return n.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// The in-app `notification` events of type `kind` on `who`'s event log.
async fn in_app(d: &Daemon, who: &Person, kind: &str) -> Vec<Value> {
    let (events, _) = d.poll(who, 0, 0).await;
    events
        .into_iter()
        .filter(|e| e["type"] == "notification" && e["notification"]["type"] == kind)
        .map(|e| e["notification"].clone())
        .collect()
}

async fn admin_notification(d: &Daemon, id: &str) -> Value {
    let reply = d
        .get(&format!("/v1/admin/notifications/{id}"), &operator().token)
        .await;
    reply.expect(200);
    reply.body
}

fn delivery<'a>(notification: &'a Value, channel: &str) -> &'a Value {
    notification["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["channel"] == channel)
        .unwrap_or_else(|| panic!("no {channel} delivery in {notification}"))
}

/// Waits until the notification's `channel` delivery is in `state`.
async fn delivery_state(d: &Daemon, id: &str, channel: &str, state: &str) -> Value {
    guard(&format!("{channel} delivery to be {state}"), async {
        loop {
            let n = admin_notification(d, id).await;
            if delivery(&n, channel)["state"] == state {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

fn verify_signature(hit: &Hit) -> bool {
    let (Some(timestamp), Some(signature)) = (
        hit.headers.get("parleyd-timestamp"),
        hit.headers.get("parleyd-signature"),
    ) else {
        return false;
    };
    let Some(hex) = signature.strip_prefix("v1=") else {
        return false;
    };
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(WEBHOOK_SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(&hit.raw);
    bytes.is_some_and(|b| mac.verify_slice(&b).is_ok())
}

/// Books the pair's conversation 72 hours from now; returns the start.
async fn book(w: &World) -> jiff::Timestamp {
    let t0 = advance(&w.d, "0s").await;
    let at = |h: i64| t0 + jiff::SignedDuration::from_hours(h);
    w.d.post(
        "/v1/bookings",
        SERVICE_KEY,
        json!({"conversation_id": w.p.conversation, "start": at(72).to_string(), "end": at(80).to_string()}),
    )
    .await
    .expect(201);
    at(72)
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn booking_confirmation_goes_out_by_email_with_its_invite_push_and_a_signed_webhook() {
    let w = world().await;
    let start = book(&w).await;

    let email = eventually("the confirmation email", &w.d, None, || {
        w.smtp.to(CUSTOMER_EMAIL).into_iter().next()
    })
    .await;
    assert!(
        email.contains("Subject: Booking confirmed: Sunset kayak tour"),
        "{email}"
    );
    assert!(email.contains("text/html"), "an HTML part: {email}");
    // The invite as a mail client decodes it: its MIME method and the
    // calendar's METHOD agree (RFC 5545 §8.1).
    let mail = w.smtp.mails_to(CUSTOMER_EMAIL).remove(0);
    let invite = mail["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == "text/calendar")
        .unwrap_or_else(|| panic!("no invite: {mail}"))
        .clone();
    assert_eq!(invite["filename"], "booking.ics", "{invite}");
    assert_eq!(invite["method"], "PUBLISH", "{invite}");
    let ics = invite["text"].as_str().unwrap();
    assert!(ics.starts_with("BEGIN:VCALENDAR"), "{ics}");
    assert!(
        ics.lines().any(|l| l.trim_end() == "METHOD:PUBLISH"),
        "{ics}"
    );
    // The body tells the time on the customer's clock (Paris), zone named.
    let local = start.in_tz("Europe/Paris").unwrap();
    let body = mail["parts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["content_type"] == "text/plain")
        .and_then(|p| p["text"].as_str())
        .unwrap_or_else(|| panic!("no text part: {mail}"))
        .to_owned();
    for shown in [local.strftime("%a %-d %b"), local.strftime("%H:%M %Z")] {
        assert!(body.contains(&shown.to_string()), "{shown} in {body}");
    }
    assert!(!body.contains("UTC"), "{body}");

    let push = eventually("the confirmation push", &w.d, None, || {
        w.http
            .hits_for("/push", |h| h.body["type"] == "booking_confirmation")
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(push.body["user_id"], w.p.customer.id);
    assert_eq!(push.body["priority"], "critical");
    let key = &push.headers["idempotency-key"];
    assert!(key.ends_with(":push"), "{key}");

    let webhook = eventually("the booking_created webhook", &w.d, None, || {
        w.http
            .hits_for("/webhook", |h| h.body["type"] == "booking_created")
            .into_iter()
            .next()
    })
    .await;
    assert!(
        verify_signature(&webhook),
        "signature: {:?}",
        webhook.headers
    );
    let mut forged = webhook.clone();
    forged.raw.extend_from_slice(b" ");
    assert!(!verify_signature(&forged), "a changed body must not verify");
    assert_eq!(webhook.body["subject"]["conversation_id"], w.p.conversation);

    // Unread 15 minutes later: the confirmation escalates to SMS, once.
    assert!(w.http.hits("/sms").is_empty());
    let sms = eventually("the SMS fallback", &w.d, Some("5m"), || {
        w.http.hits("/sms").into_iter().next()
    })
    .await;
    assert_eq!(sms.body["to"], CUSTOMER_PHONE);
    advance(&w.d, "1h").await;
    let n = notification_for(&w.d, &w.p.customer, "booking_confirmation").await;
    let record = delivery_state(&w.d, n["id"].as_str().unwrap(), "sms", "delivered").await;
    assert_eq!(delivery(&record, "sms")["attempts"], 1);
    assert_eq!(w.http.hits("/sms").len(), 1);
}

/// Catches: a `PARLEYD_*` endpoint override (README, Configuration and
/// Channels) not reaching its channel, or the file's value winning over it.
/// The file names endpoints that would lose or misplace every delivery.
#[tokio::test]
async fn endpoints_and_the_webhook_secret_from_the_environment_override_the_file() {
    let http = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    let env = [
        (
            "PARLEYD_SMTP_URL",
            format!("smtp://127.0.0.1:{}", smtp.port),
        ),
        ("PARLEYD_PUSH_URL", http.url("/push")),
        ("PARLEYD_SMS_URL", http.url("/sms")),
        ("PARLEYD_WEBHOOK_URL", http.url("/webhook")),
        ("PARLEYD_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
    ];
    let d = Daemon::launch(Launch {
        automation: true,
        config: vec![
            ("clock", "manual".into()),
            ("smtp_url", "smtp://127.0.0.1:9".into()),
            ("push_url", http.url("/file/push")),
            ("sms_url", http.url("/file/sms")),
            ("webhook_url", http.url("/file/webhook")),
            ("webhook_secret", "the-secret-in-the-file-0123".into()),
        ],
        env: env.map(|(k, v)| (k.to_owned(), v)).to_vec(),
        ..Launch::default()
    })
    .await;
    let p = pair(&d).await;
    set_customer(&d, &p, json!({})).await;
    let w = World { d, http, smtp, p };
    book(&w).await;

    eventually("the confirmation email", &w.d, None, || {
        w.smtp.to(CUSTOMER_EMAIL).into_iter().next()
    })
    .await;
    eventually("the confirmation push", &w.d, None, || {
        w.http.hits("/push").into_iter().next()
    })
    .await;
    let webhook = eventually("the booking_created webhook", &w.d, None, || {
        w.http.hits("/webhook").into_iter().next()
    })
    .await;
    assert!(
        verify_signature(&webhook),
        "signed with the environment's secret"
    );
    // Unread after 15 minutes: the SMS fallback.
    eventually("the SMS fallback", &w.d, Some("5m"), || {
        w.http.hits("/sms").into_iter().next()
    })
    .await;
    for path in ["/file/push", "/file/sms", "/file/webhook"] {
        assert!(w.http.hits(path).is_empty(), "{path} is the file's");
    }
    w.d.stop().await;
}

#[tokio::test]
async fn a_receiver_failing_three_times_gets_exactly_one_delivery_across_a_crash() {
    let http = Receiver::start().await;
    let smtp = SmtpSink::start().await;
    let data = tempfile::tempdir().unwrap();
    let w = world_in(Some(data.path().to_owned()), http.clone(), smtp).await;
    http.fail("/push", 3, 503);
    w.d.send(
        &w.p.provider,
        &w.p.conversation,
        "m1",
        "Yes, the kayak is free on Friday",
    )
    .await
    .expect(201);
    let n = notification_for(&w.d, &w.p.customer, "new_message").await;
    let id = n["id"].as_str().unwrap().to_owned();

    // Two failures, then the daemon dies with the delivery pending.
    eventually("two failed attempts", &w.d, Some("20s"), || {
        (http.hits("/push").len() >= 2).then_some(())
    })
    .await;
    let before_crash = advance(&w.d, "0s").await;
    let World { d, smtp, .. } = w;
    d.crash().await;

    let d = launch(Some(data.path().to_owned()), &http, smtp.port).await;
    d.post(
        "/v1/admin/clock",
        &operator().token,
        json!({"to": before_crash.to_string()}),
    )
    .await
    .expect(200);
    eventually("a successful attempt", &d, Some("20s"), || {
        http.hits("/push")
            .iter()
            .any(|h| h.status == 200)
            .then_some(())
    })
    .await;
    let record = delivery_state(&d, &id, "push", "delivered").await;
    // More time passes: nothing is sent again.
    advance(&d, "1h").await;
    advance(&d, "1h").await;
    let hits = http.hits("/push");
    let ok: Vec<&Hit> = hits.iter().filter(|h| h.status == 200).collect();
    assert_eq!(ok.len(), 1, "exactly one delivery: {hits:?}");
    assert_eq!(hits.len(), 4, "three failures and one success");
    assert!(hits
        .iter()
        .all(|h| h.headers["idempotency-key"] == format!("{id}:push")));
    assert_eq!(delivery(&record, "push")["attempts"], 4);
}

#[tokio::test]
async fn a_permanently_failing_receiver_ends_in_the_dead_letter_list_and_can_be_redriven() {
    let w = world().await;
    w.http.fail("/push", 1000, 503);
    w.d.send(
        &w.p.provider,
        &w.p.conversation,
        "m1",
        "Are you still interested?",
    )
    .await
    .expect(201);
    let n = notification_for(&w.d, &w.p.customer, "new_message").await;
    let id = n["id"].as_str().unwrap().to_owned();
    let dead = eventually("the dead letter", &w.d, Some("1m"), || {
        let hits = w.http.hits("/push");
        (hits.len() >= 4).then_some(hits)
    })
    .await;
    assert_eq!(dead.len(), 4, "max_attempts is 4");
    let record = delivery_state(&w.d, &id, "push", "dead").await;
    assert!(delivery(&record, "push")["note"]
        .as_str()
        .unwrap()
        .contains("503"));
    let outbox = w.d.get("/v1/admin/outbox", &operator().token).await;
    outbox.expect(200);
    let letters = outbox.body["dead"].as_array().unwrap();
    assert!(
        letters
            .iter()
            .any(|l| l["notification_id"] == id.as_str() && l["channel"] == "push"),
        "{letters:?}"
    );
    // The email went on regardless of push being down.
    assert_eq!(delivery(&record, "email")["state"], "delivered");
    let metrics = w.d.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("parleyd_deliveries_total")
                && l.contains("channel=\"push\"")
                && l.contains("result=\"dead\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // Not for a customer, and not for a delivery that is not dead.
    w.d.post(
        &format!("/v1/admin/outbox/dead/{id}/push/redrive"),
        &w.p.customer.token,
        json!({}),
    )
    .await
    .expect(403);
    w.d.post(
        &format!("/v1/admin/outbox/dead/{id}/email/redrive"),
        &operator().token,
        json!({}),
    )
    .await
    .expect(404);
    w.d.post(
        &format!("/v1/admin/outbox/dead/{id}/pigeon/redrive"),
        &operator().token,
        json!({}),
    )
    .await
    .expect(422);

    w.http.fail("/push", 0, 200);
    w.d.post(
        &format!("/v1/admin/outbox/dead/{id}/push/redrive"),
        &operator().token,
        json!({}),
    )
    .await
    .expect(200);
    delivery_state(&w.d, &id, "push", "delivered").await;
    assert_eq!(
        w.http
            .hits("/push")
            .iter()
            .filter(|h| h.status == 200)
            .count(),
        1
    );
    let outbox = w.d.get("/v1/admin/outbox", &operator().token).await;
    assert!(outbox.body["dead"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn quiet_hours_hold_a_message_until_they_end_while_a_critical_one_goes_through() {
    let w = world().await;
    // Quiet from an hour ago until three hours from now, in New York.
    let now = advance(&w.d, "0s").await;
    let local = |h: i64| {
        (now + jiff::SignedDuration::from_hours(h))
            .in_tz("America/New_York")
            .unwrap()
            .strftime("%H:%M")
            .to_string()
    };
    set_customer(
        &w.d,
        &w.p,
        json!({"timezone": "America/New_York", "quiet_hours": {"start": local(-1), "end": local(3)}}),
    )
    .await;

    // The critical confirmation is not held.
    book(&w).await;
    eventually(
        "the confirmation email during quiet hours",
        &w.d,
        None,
        || {
            w.smtp
                .to(CUSTOMER_EMAIL)
                .into_iter()
                .find(|m| m.contains("Booking confirmed"))
        },
    )
    .await;

    w.d.send(&w.p.provider, &w.p.conversation, "m1", "See you soon")
        .await
        .expect(201);
    let n = notification_for(&w.d, &w.p.customer, "new_message").await;
    let id = n["id"].as_str().unwrap();
    // Past the read grace, still quiet: held until the quiet hours end.
    advance(&w.d, "10m").await;
    let record = admin_notification(&w.d, id).await;
    let email = delivery(&record, "email");
    assert_eq!(email["state"], "pending");
    assert_eq!(email["attempts"], 0);
    let release = (now + jiff::SignedDuration::from_hours(3)).as_millisecond();
    let due = email["due_ms"].as_i64().unwrap();
    assert!(
        (release - 60_000..=release).contains(&due),
        "held until the end of quiet hours ({release}), not {due}"
    );
    advance(&w.d, "2h").await;
    assert!(!w
        .smtp
        .to(CUSTOMER_EMAIL)
        .iter()
        .any(|m| m.contains("New message")));

    advance(&w.d, "55m").await;
    eventually("the held email", &w.d, Some("1m"), || {
        w.smtp
            .to(CUSTOMER_EMAIL)
            .into_iter()
            .find(|m| m.contains("Subject: New message from Pablo"))
    })
    .await;
}

#[tokio::test]
async fn a_digest_gathers_three_promotions_into_one_email() {
    let w = world().await;
    for (i, title) in ["Spring sale", "Kayak week", "Bring a friend"]
        .iter()
        .enumerate()
    {
        w.d.post(
            "/v1/signals",
            SERVICE_KEY,
            json!({"type": "promotion", "user_id": w.p.customer.id,
                   "data": {"title": title, "text": format!("Offer number {i}")}}),
        )
        .await
        .expect(202);
        advance(&w.d, "1h").await;
    }
    // An unsubscribed user gets none.
    w.d.put(
        "/v1/users/other",
        SERVICE_KEY,
        json!({"email": "other@example.test", "unsubscribed_promotional": true}),
    )
    .await
    .expect(200);
    w.d.post(
        "/v1/signals",
        SERVICE_KEY,
        json!({"type": "promotion", "user_id": "other", "data": {"title": "x", "text": "y"}}),
    )
    .await
    .expect(202);

    advance(&w.d, "12h").await;
    assert!(
        w.smtp.to(CUSTOMER_EMAIL).is_empty(),
        "nothing before the window ends"
    );
    let digest = eventually("the digest", &w.d, Some("1h"), || {
        w.smtp.to(CUSTOMER_EMAIL).into_iter().next()
    })
    .await;
    assert!(digest.contains("Subject: Your 3 updates"), "{digest}");
    for part in ["Spring sale", "Kayak week", "Bring a friend", "Hello Carla"] {
        assert!(digest.contains(part), "{part} in {digest}");
    }
    advance(&w.d, "2d").await;
    assert_eq!(
        w.smtp.to(CUSTOMER_EMAIL).len(),
        1,
        "one email for all three"
    );
    assert!(w.smtp.to("other@example.test").is_empty());
    // In the app, each promotion showed at once, on its own.
    let shown = in_app(&w.d, &w.p.customer, "promotion").await;
    let titles: Vec<&str> = shown.iter().map(|n| n["title"].as_str().unwrap()).collect();
    assert_eq!(titles, ["Spring sale", "Kayak week", "Bring a friend"]);
}

#[tokio::test]
async fn a_message_read_in_the_app_within_the_grace_period_sends_no_email_or_push() {
    let w = world().await;
    w.d.send(
        &w.p.provider,
        &w.p.conversation,
        "m1",
        "First: read at once",
    )
    .await
    .expect(201);
    let read = notification_for(&w.d, &w.p.customer, "new_message").await;
    w.d.post(
        &format!("/v1/conversations/{}/read", w.p.conversation),
        &w.p.customer.token,
        json!({"seq": read["message_seq"]}),
    )
    .await
    .expect(200);
    w.d.send(
        &w.p.provider,
        &w.p.conversation,
        "m2",
        "Second: left unread",
    )
    .await
    .expect(201);

    eventually("the unread message's email", &w.d, Some("1m"), || {
        w.smtp
            .to(CUSTOMER_EMAIL)
            .into_iter()
            .find(|m| m.contains("Second: left unread"))
    })
    .await;
    let record = delivery_state(&w.d, read["id"].as_str().unwrap(), "email", "suppressed").await;
    assert_eq!(delivery(&record, "push")["state"], "suppressed");
    let mails = w.smtp.to(CUSTOMER_EMAIL);
    assert_eq!(mails.len(), 1, "{mails:?}");
    assert!(!mails[0].contains("First: read at once"));
    assert!(w
        .http
        .hits("/push")
        .iter()
        .all(|h| !h.body["body"].as_str().unwrap().contains("First")));
}

#[tokio::test]
async fn routing_reloads_live_and_a_broken_edit_is_rejected_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = copy_rules(dir.path());
    let smtp = SmtpSink::start().await;
    let d = Daemon::launch(Launch {
        data_dir: None,
        automation: true,
        config: [
            config,
            vec![
                ("clock", "manual".into()),
                ("smtp_url", format!("smtp://127.0.0.1:{}", smtp.port)),
            ],
        ]
        .concat(),
        ..Launch::default()
    })
    .await;
    let p = pair(&d).await;
    set_customer(&d, &p, json!({})).await;

    // A broken edit: reported at its line, the old routing stays in force.
    let routing = dir.path().join("rules/routing.yaml");
    let text = std::fs::read_to_string(&routing).unwrap();
    let broken = text.replacen("    read_grace: 2m\n", "    read_grace: soon\n", 1);
    let line = broken
        .lines()
        .position(|l| l.contains("read_grace: soon"))
        .unwrap()
        + 1;
    std::fs::write(&routing, &broken).unwrap();
    let status = rules_after(&d, |s| !s["last_failure"].is_null()).await;
    let error = &status["last_failure"]["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("routing.yaml"),
        "{error}"
    );
    assert_eq!(error["line"], line, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("read_grace"),
        "{error}"
    );

    // The fix, with a new subject in the template: both in force together.
    let templates = dir.path().join("templates/notifications.yaml");
    let t = std::fs::read_to_string(&templates).unwrap();
    std::fs::write(&templates, t.replace("New message from", "Fresh news from")).unwrap();
    std::fs::write(&routing, &text).unwrap();
    rules_after(&d, |s| {
        s["last_failure"].is_null() && s["version"].as_u64() >= Some(2)
    })
    .await;

    d.send(&p.provider, &p.conversation, "m1", "The kayak is ready")
        .await
        .expect(201);
    eventually("the email with the new subject", &d, Some("1m"), || {
        smtp.to(CUSTOMER_EMAIL)
            .into_iter()
            .find(|m| m.contains("Subject: Fresh news from Pablo"))
    })
    .await;
}

#[tokio::test]
async fn a_digest_that_cannot_be_rendered_keeps_its_items_until_the_template_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    // The digest's greeting calls a function that does not exist: it fails
    // when the digest is rendered.
    let config = copy_rules(dir.path());
    let templates = dir.path().join("templates/notifications.yaml");
    let good = std::fs::read_to_string(&templates).unwrap();
    let greeting =
        r#"    greeting: 'if recipient.name == () { "" } else { " " + recipient.name }'"#;
    assert!(good.contains(greeting));
    let broken = good.replace(greeting, "    greeting: 'no_such_function(recipient)'");
    std::fs::write(&templates, &broken).unwrap();
    let smtp = SmtpSink::start().await;
    let d = Daemon::launch(Launch {
        automation: true,
        config: [
            config,
            vec![
                ("clock", "manual".into()),
                ("smtp_url", format!("smtp://127.0.0.1:{}", smtp.port)),
                ("retry_max", "1m".into()),
            ],
        ]
        .concat(),
        ..Launch::default()
    })
    .await;
    let p = pair(&d).await;
    set_customer(&d, &p, json!({})).await;
    d.post(
        "/v1/signals",
        SERVICE_KEY,
        json!({"type": "promotion", "user_id": p.customer.id,
               "data": {"title": "Spring sale", "text": "10% off"}}),
    )
    .await
    .expect(202);
    // Past the digest window (and any quiet hours): the render fails, and
    // is counted.
    advance(&d, "12h").await;
    guard("the failed digest to be counted", async {
        while d
            .metric("parleyd_notifications_total{type=\"digest\",result=\"failed\"}")
            .await
            < 1.0
        {
            advance(&d, "30m").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(smtp.to(CUSTOMER_EMAIL).is_empty());

    // Fixed: the next try sends the digest, with the promotion in it.
    std::fs::write(&templates, &good).unwrap();
    rules_after(&d, |s| s["version"].as_u64() >= Some(2)).await;
    let digest = eventually("the digest", &d, Some("1m"), || {
        smtp.to(CUSTOMER_EMAIL).into_iter().next()
    })
    .await;
    assert!(digest.contains("Spring sale"), "{digest}");
}
