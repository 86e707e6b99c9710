//! Notifications end to end: the daemon runs the shipped rules (routing.yaml
//! included) on a manual clock, and delivers to real servers on loopback: an
//! SMTP server (Python's aiosmtpd, installed on first use) and an HTTP
//! receiver standing in for the push service, the SMS provider and the
//! marketplace backend's webhook.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::python::{python3, python_packages};
use common::receiver::*;
use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WEBHOOK_SECRET: &str = "test-webhook-secret-0123456789";

/// An SMTP endpoint nothing answers (the discard port): the email channel is
/// on, and its deliveries are looked at, never awaited.
const UNANSWERED_SMTP: &str = "smtp://127.0.0.1:9";

/// aiosmtpd's version, pinned so every run tests against the same server.
const AIOSMTPD: &str = "aiosmtpd==1.4.6";

/// A real SMTP server; the emails it accepted are in `mails`.
struct SmtpSink {
    port: u16,
    mails: Arc<Mutex<Vec<Value>>>,
    /// The server's stdin (it stops when it closes) and the answers to
    /// [`SmtpSink::synced`].
    sync: tokio::sync::Mutex<(
        tokio::process::ChildStdin,
        tokio::sync::mpsc::UnboundedReceiver<()>,
    )>,
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
        let (synced, answers) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "synced" {
                    let _ = synced.send(());
                    continue;
                }
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_str(&line).unwrap());
            }
        });
        SmtpSink {
            port,
            mails,
            sync: tokio::sync::Mutex::new((child.stdin.take().unwrap(), answers)),
            _child: child,
        }
    }

    /// Returns once every email the server accepted so far is in `mails`:
    /// the server answers a `sync` line on stdin after the lines of the
    /// emails before it. After `settled` (the daemon was answered 250), this
    /// makes "no email" mean none was sent.
    async fn synced(&self) {
        let mut sync = self.sync.lock().await;
        let (stdin, answers) = &mut *sync;
        stdin
            .write_all(b"sync\n")
            .await
            .expect("write to the SMTP server");
        stdin.flush().await.expect("flush to the SMTP server");
        guard("the SMTP server to sync", answers.recv())
            .await
            .expect("the SMTP server answers");
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
    let mut config = endpoints(http);
    config.push(("smtp_url", format!("smtp://127.0.0.1:{smtp_port}")));
    Daemon::launch(Launch {
        data_dir,
        automation: true,
        config,
        ..Launch::default()
    })
    .await
}

/// Config edits: a manual clock, push, SMS and webhooks to `http`, four
/// attempts 10 s apart doubling up to a minute.
fn endpoints(http: &Receiver) -> Vec<(&'static str, String)> {
    vec![
        ("clock", "manual".into()),
        ("push_url", http.url("/push")),
        ("sms_url", http.url("/sms")),
        ("webhook_url", http.url("/webhook")),
        ("webhook_secret", WEBHOOK_SECRET.into()),
        ("max_attempts", "4".into()),
        ("retry_base", "10s".into()),
        ("retry_max", "1m".into()),
    ]
}

/// The shipped routing.
fn shipped_routing() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/routing.yaml")).unwrap()
}

/// A lighter world: no SMTP server; the clock pinned to midsummer
/// ([`pin_to_midsummer`]: noon UTC, 14:00 in Paris), at `t0`.
struct Lite {
    d: Daemon,
    http: Receiver,
    p: Pair,
    t0: jiff::Timestamp,
    _rules: Option<tempfile::TempDir>,
}

impl Lite {
    /// `t0` plus `minutes`, in milliseconds since the epoch (as `due_ms`).
    fn ms(&self, minutes: i64) -> i64 {
        (self.t0 + jiff::SignedDuration::from_mins(minutes)).as_millisecond()
    }

    /// `t0` plus `hours`, as RFC 3339.
    fn at(&self, hours: i64) -> String {
        (self.t0 + jiff::SignedDuration::from_hours(hours)).to_string()
    }
}

/// A [`Lite`] world without automation sequences: `routing` and the shipped
/// contact policy are the only rules.
async fn lite(routing: &str, extra: Vec<(&'static str, String)>) -> Lite {
    let rules = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/rules/contact.yaml"),
        rules.path().join("contact.yaml"),
    )
    .unwrap();
    std::fs::write(rules.path().join("routing.yaml"), routing).unwrap();
    let mut config = vec![("rules_dir", rules.path().display().to_string())];
    config.extend(extra);
    lite_in(Some(rules), config).await
}

/// A [`Lite`] world with every shipped rule (sequences included).
async fn lite_shipped() -> Lite {
    lite_in(None, Vec::new()).await
}

async fn lite_in(rules: Option<tempfile::TempDir>, extra: Vec<(&'static str, String)>) -> Lite {
    let http = Receiver::start().await;
    let mut config = endpoints(&http);
    config.extend(extra);
    let d = Daemon::launch(Launch {
        automation: rules.is_none(),
        config,
        ..Launch::default()
    })
    .await;
    let t0 = pin_to_midsummer(&d).await;
    let p = pair(&d).await;
    set_customer(&d, &p, json!({})).await;
    Lite {
        d,
        http,
        p,
        t0,
        _rules: rules,
    }
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

/// The in-app `notification` events of type `kind` on `who`'s event log.
async fn in_app(d: &Daemon, who: &Person, kind: &str) -> Vec<Value> {
    let (events, _) = d.poll(who, 0, 0).await;
    events
        .into_iter()
        .filter(|e| e["type"] == "notification" && e["notification"]["type"] == kind)
        .map(|e| e["notification"].clone())
        .collect()
}

/// Waits until the outcome of an attempt at the `channel` delivery is
/// recorded (no longer pending, or pending with the error of a retry).
async fn attempt_outcome(d: &Daemon, id: &str, channel: &str) -> Value {
    let n = delivery_where(d, id, channel, "an attempt's outcome", |c| {
        c["state"] != "pending" || !c["note"].is_null()
    })
    .await;
    delivery(&n, channel).clone()
}

/// Sends `text` from the pair's provider and returns the id of the
/// customer's notification about it.
async fn provider_says(d: &Daemon, p: &Pair, client_id: &str, text: &str) -> String {
    let sent = d.send(&p.provider, &p.conversation, client_id, text).await;
    sent.expect(201);
    let seq = sent.body["message"]["seq"].clone();
    let what = format!("the notification about message {seq}");
    let n = notification_where(d, &p.customer, &what, |n| n["message_seq"] == seq).await;
    n["id"].as_str().unwrap().to_owned()
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
    settled(&w.d).await;
    assert!(w.http.hits("/sms").is_empty());
    let sms = eventually("the SMS fallback", &w.d, Some("5m"), || {
        w.http.hits("/sms").into_iter().next()
    })
    .await;
    assert_eq!(sms.body["to"], CUSTOMER_PHONE);
    advance(&w.d, "1h").await;
    let n = notification_for(&w.d, &w.p.customer, "booking_confirmation").await;
    let record = delivery_state(&w.d, n["id"].as_str().unwrap(), "sms", "delivered").await;
    settled(&w.d).await;
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
            ("smtp_url", UNANSWERED_SMTP.into()),
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
    settled(&d).await;
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
    // Quiet from an hour ago until three hours from now, in New York, in
    // July (no daylight-saving change in those hours).
    let now = pin_to_midsummer(&w.d).await;
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
    settled(&w.d).await;
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
    settled(&w.d).await;
    w.smtp.synced().await;
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
        let offer = json!({"title": title, "text": format!("Offer number {i}")});
        promote(&w.d, &w.p.customer.id, offer).await;
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
    promote(&w.d, "other", json!({"title": "x", "text": "y"})).await;

    advance(&w.d, "12h").await;
    settled(&w.d).await;
    w.smtp.synced().await;
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
    settled(&w.d).await;
    w.smtp.synced().await;
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
    settled(&w.d).await;
    w.smtp.synced().await;
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
    d.expect_log_errors("rule reload rejected");
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
    d.expect_log_errors("Function not found: no_such_function");
    d.expect_log_errors("digest not rendered");
    let p = pair(&d).await;
    set_customer(&d, &p, json!({})).await;
    promote(
        &d,
        &p.customer.id,
        json!({"title": "Spring sale", "text": "10% off"}),
    )
    .await;
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
    settled(&d).await;
    smtp.synced().await;
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

/// Breakage caught: a 4xx other than 408/429 treated as worth retrying (the
/// delivery would stay pending with a retry, attempts going up).
#[tokio::test]
async fn a_permanent_refusal_is_dead_at_the_first_attempt() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    for status in [400, 401, 404, 410, 422] {
        w.http.answer("/push", &[status]);
        let id = provider_says(&w.d, &w.p, &format!("m{status}"), "Still free?").await;
        advance(&w.d, "2m").await; // the read grace
        let push = attempt_outcome(&w.d, &id, "push").await;
        assert_eq!(push["state"], "dead", "HTTP {status}: {push}");
        assert_eq!(push["attempts"], 1, "HTTP {status}: {push}");
        assert!(
            push["note"].as_str().unwrap().contains(&status.to_string()),
            "{push}"
        );
        let key = format!("{id}:push");
        let tries = w
            .http
            .hits_for("/push", |h| h.headers["idempotency-key"] == key);
        assert_eq!(tries.len(), 1, "HTTP {status}: {tries:?}");
    }
    let outbox = w.d.get("/v1/admin/outbox", &operator().token).await;
    outbox.expect(200);
    assert_eq!(
        outbox.body["dead"].as_array().unwrap().len(),
        5,
        "{}",
        outbox.body
    );
}

/// Breakage caught: 408 or 429 treated as permanent (dead at the first
/// attempt), or a retry under a new idempotency key.
#[tokio::test]
async fn a_timeout_throttling_and_a_server_error_are_retried_under_the_same_key() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    w.http.answer("/push", &[408, 429, 503]);
    let id = provider_says(&w.d, &w.p, "m1", "See you at the pier").await;
    advance(&w.d, "2m").await;
    for (attempt, status) in [(1, 408), (2, 429), (3, 503)] {
        let record = delivery_where(
            &w.d,
            &id,
            "push",
            &format!("the outcome of HTTP {status}"),
            |c| {
                c["note"]
                    .as_str()
                    .is_some_and(|n| n.contains(&status.to_string()))
            },
        )
        .await;
        let push = delivery(&record, "push");
        assert_eq!(push["state"], "pending", "after HTTP {status}: {push}");
        assert_eq!(push["attempts"], attempt, "{push}");
        assert!(
            push["note"].as_str().unwrap().contains(&status.to_string()),
            "{push}"
        );
        if status != 503 {
            // Wait for the retry to be made before looking again.
            eventually("the next attempt", &w.d, Some("20s"), || {
                (w.http.hits("/push").len() > attempt as usize).then_some(())
            })
            .await;
        }
    }
    eventually("the fourth attempt", &w.d, Some("20s"), || {
        (w.http.hits("/push").len() == 4).then_some(())
    })
    .await;
    let record = delivery_state(&w.d, &id, "push", "delivered").await;
    assert_eq!(delivery(&record, "push")["attempts"], 4);
    let hits = w.http.hits("/push");
    let statuses: Vec<u16> = hits.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [408, 429, 503, 200]);
    for (result, count) in [("retry", 3.0), ("delivered", 1.0)] {
        let series = format!("parleyd_deliveries_total{{channel=\"push\",result=\"{result}\"}}");
        w.d.metric_reaches(&series, count).await;
    }
    // From the message (at the pinned time) to the push service's 200.
    let seconds = "parleyd_notification_delivery_seconds_count{channel=\"push\"}";
    w.d.metric_reaches(seconds, 1.0).await;
    let key = format!("{id}:push");
    for hit in &hits {
        assert_eq!(hit.headers["idempotency-key"], key);
        assert_eq!(hit.body["id"], key.as_str(), "the body's id is the key");
    }
    // The documented push body.
    let body = &hits[3].body;
    let mut fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "body",
            "conversation_id",
            "created_at",
            "id",
            "message_seq",
            "notification_id",
            "priority",
            "title",
            "type",
            "user_id"
        ],
        "{body}"
    );
    assert_eq!(body["notification_id"], id.as_str());
    assert_eq!(body["user_id"], w.p.customer.id);
    assert_eq!(body["conversation_id"], w.p.conversation);
    assert_eq!(body["title"], "New message from Pablo");
    assert_eq!(body["body"], "Pablo: See you at the pier");
}

/// Breakage caught: a re-drive that keeps the attempts used up (the
/// delivery would die again after one more try, not four).
#[tokio::test]
async fn a_redriven_delivery_gets_its_full_attempts_again() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    w.http.fail("/push", 1000, 503);
    let id = provider_says(&w.d, &w.p, "m1", "Are you still interested?").await;
    eventually("four failed attempts", &w.d, Some("1m"), || {
        (w.http.hits("/push").len() == 4).then_some(())
    })
    .await;
    let record = delivery_state(&w.d, &id, "push", "dead").await;
    assert_eq!(delivery(&record, "push")["attempts"], 4);

    w.d.post(
        &format!("/v1/admin/outbox/dead/{id}/push/redrive"),
        &operator().token,
        json!({}),
    )
    .await
    .expect(200);
    let record = guard("the re-driven delivery to die again", async {
        loop {
            advance(&w.d, "1m").await;
            let n = admin_notification(&w.d, &id).await;
            if delivery(&n, "push")["state"] == "dead" {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(delivery(&record, "push")["attempts"], 4, "{record}");
    assert_eq!(w.http.hits("/push").len(), 8);
}

/// `fallback: {unless: delivered}`. Breakage caught: the condition ignored
/// (an SMS although the push arrived), or a dead push counted as delivered.
#[tokio::test]
async fn a_fallback_unless_delivered_goes_out_only_when_nothing_was_delivered() {
    let routing = "\
notifications:
  - name: new_message
    on: [message_sent]
    to: recipient
    priority: high
    channels: [push]
    template: notify_new_message
    fallback: {after: 15m, unless: delivered, channels: [sms]}
";
    let w = lite(routing, Vec::new()).await;

    let delivered = provider_says(&w.d, &w.p, "m1", "The push will arrive").await;
    delivery_state(&w.d, &delivered, "push", "delivered").await;
    advance(&w.d, "16m").await;
    let record = delivery_state(&w.d, &delivered, "sms", "suppressed").await;
    assert!(
        delivery(&record, "sms")["note"]
            .as_str()
            .unwrap()
            .contains("delivered"),
        "{record}"
    );

    w.http.answer("/push", &[400]);
    let refused = provider_says(&w.d, &w.p, "m2", "The push will be refused").await;
    delivery_state(&w.d, &refused, "push", "dead").await;
    advance(&w.d, "16m").await;
    let record = delivery_where(&w.d, &refused, "sms", "decided", |c| {
        c["state"] != "pending"
    })
    .await;
    assert_eq!(delivery(&record, "sms")["state"], "delivered", "{record}");
    let sms = w.http.hits("/sms");
    assert_eq!(sms.len(), 1, "only the refused push escalates: {sms:?}");
    assert_eq!(sms[0].body["to"], CUSTOMER_PHONE);
    assert_eq!(sms[0].headers["idempotency-key"], format!("{refused}:sms"));
    assert_eq!(sms[0].body["id"], format!("{refused}:sms"));
    assert_eq!(sms[0].body["priority"], "high");
    assert!(sms[0].body["text"]
        .as_str()
        .unwrap()
        .contains("The push will be refused"));
}

/// What a receiver checks on every webhook, as README says to: the event's
/// name in `Parleyd-Event` and the body, the signature over the raw body,
/// a fresh timestamp, the idempotency key. Returns the body.
fn assert_webhook(hit: &Hit, event: &str, now: jiff::Timestamp) -> Value {
    let body = &hit.body;
    assert_eq!(hit.headers["parleyd-event"], body["type"].as_str().unwrap());
    let named = body["type"] == event
        || body["aliases"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == event);
    assert!(named, "{event} in {body}");
    assert!(verify_signature(hit), "{event}: {:?}", hit.headers);
    let mut forged = hit.clone();
    forged.raw.push(b' ');
    assert!(!verify_signature(&forged), "a changed body must not verify");
    let stamp: i64 = hit.headers["parleyd-timestamp"].parse().unwrap();
    assert!(
        (stamp - now.as_second()).abs() <= 300,
        "{event}: timestamp {stamp} is not the daemon's now ({now})"
    );
    let id = body["id"].as_str().unwrap();
    assert_eq!(hit.headers["idempotency-key"], format!("{id}:webhook"));
    assert_eq!(hit.headers["content-type"], "application/json");
    for field in ["occurred_at", "subject", "data"] {
        assert!(body.get(field).is_some(), "{event}: no {field} in {body}");
    }
    body.clone()
}

/// Every event of the shipped `webhooks:` list. Breakage caught: an event
/// left out, a header missing, a signature over anything but the raw body.
#[tokio::test]
async fn every_shipped_webhook_event_is_posted_signed_with_its_headers() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    let now = advance(&w.d, "0s").await;
    let webhook = |event: &'static str| {
        let http = w.http.clone();
        move || {
            http.hits_for("/webhook", |h| {
                h.body["type"] == event
                    || h.body["aliases"]
                        .as_array()
                        .is_some_and(|a| a.contains(&json!(event)))
            })
            .into_iter()
            .next()
        }
    };

    w.d.send(&w.p.customer, &w.p.conversation, "c1", "Is Friday free?")
        .await
        .expect(201);
    let hit = eventually("inquiry_received", &w.d, None, webhook("inquiry_received")).await;
    let body = assert_webhook(&hit, "inquiry_received", now);
    assert_eq!(body["subject"]["conversation_id"], w.p.conversation);
    assert_eq!(body["subject"]["user_id"], w.p.customer.id, "the sender");

    let booking = common::book(&w.d, &w.p.conversation, &w.at(240), &w.at(243)).await;
    let hit = eventually("booking_created", &w.d, None, webhook("booking_created")).await;
    assert_webhook(&hit, "booking_created", now);
    w.d.patch(
        &format!("/v1/bookings/{booking}"),
        SERVICE_KEY,
        json!({"stage": "preparation"}),
    )
    .await
    .expect(200);
    let hit = eventually("booking_updated", &w.d, None, webhook("booking_updated")).await;
    let body = assert_webhook(&hit, "booking_updated", now);
    assert!(
        body["aliases"]
            .as_array()
            .unwrap()
            .contains(&json!("booking_preparation")),
        "{body}"
    );

    for signal in ["explicit_decline", "provider_unavailable"] {
        w.d.post(
            "/v1/signals",
            SERVICE_KEY,
            json!({"type": signal, "user_id": w.p.customer.id,
                   "conversation_id": w.p.conversation, "data": {"reason": "a test"}}),
        )
        .await
        .expect(202);
        let hit = eventually(signal, &w.d, None, webhook(signal)).await;
        let body = assert_webhook(&hit, signal, now);
        assert_eq!(body["data"]["reason"], "a test", "{body}");
    }
}

/// A webhook on `conversation_opened` names who opened it, so a receiver
/// can tell the customer's inquiries apart. Breakage caught: the opener
/// missing from the event's subject.
#[tokio::test]
async fn a_conversation_opened_webhook_names_the_customer_who_opened_it() {
    let routing = shipped_routing().replace(
        "webhooks: [booking_created,",
        "webhooks: [conversation_opened, booking_created,",
    );
    let w = lite(&routing, Vec::new()).await;
    let now = advance(&w.d, "0s").await;
    let second = Person::new("cust-2", "customer");
    let conversation = w.d.open(&second, "listing-1").await;
    let hit = eventually("conversation_opened", &w.d, None, || {
        w.http
            .hits_for("/webhook", |h| {
                h.body["type"] == "conversation_opened"
                    && h.body["subject"]["conversation_id"] == conversation.as_str()
            })
            .into_iter()
            .next()
    })
    .await;
    let body = assert_webhook(&hit, "conversation_opened", now);
    assert_eq!(body["subject"]["user_id"], "cust-2", "{body}");
    assert_eq!(body["subject"]["customer_id"], "cust-2", "{body}");
}

/// Quiet hours are read when a delivery falls due, not when it was routed.
/// Breakage caught: preferences captured at routing time (the push would go
/// out when the grace ends, or at the first window's end).
#[tokio::test]
async fn quiet_hours_set_or_moved_after_routing_apply_to_the_waiting_delivery() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    let id = provider_says(&w.d, &w.p, "m1", "Two seats left").await;
    // In the read grace, the customer turns on quiet hours around now
    // (14:00 in Paris): until 17:00 Paris, 15:00 UTC.
    set_customer(
        &w.d,
        &w.p,
        json!({"quiet_hours": {"start": "13:00", "end": "17:00"}}),
    )
    .await;
    advance(&w.d, "5m").await;
    let record = delivery_where(&w.d, &id, "push", "held", |c| c["due_ms"] != w.ms(2)).await;
    let push = delivery(&record, "push");
    assert_eq!(push["state"], "pending", "{push}");
    assert_eq!(push["attempts"], 0, "{push}");
    assert_eq!(push["due_ms"], w.ms(180), "held until 17:00 Paris: {push}");

    // While it waits, the window is stretched to 18:00: when 17:00 comes,
    // it is held again.
    set_customer(
        &w.d,
        &w.p,
        json!({"quiet_hours": {"start": "13:00", "end": "18:00"}}),
    )
    .await;
    advance(&w.d, "175m").await;
    let record = delivery_where(&w.d, &id, "push", "held again", |c| {
        c["due_ms"] != w.ms(180)
    })
    .await;
    let push = delivery(&record, "push");
    assert_eq!(push["state"], "pending", "{push}");
    assert_eq!(push["due_ms"], w.ms(240), "held until 18:00 Paris: {push}");
    assert!(w.http.hits("/push").is_empty());

    advance(&w.d, "60m").await;
    let record = delivery_where(&w.d, &id, "push", "decided", |c| c["state"] != "pending").await;
    assert_eq!(delivery(&record, "push")["state"], "delivered", "{record}");
    assert_eq!(w.http.hits("/push").len(), 1);
    let held = "parleyd_deliveries_total{channel=\"push\",result=\"held\"}";
    w.d.metric_reaches(held, 2.0).await; // held twice
}

/// The in-app channel: a `notification` frame on the recipient's stream at
/// once, even in quiet hours, and the same event on long-poll; a channel
/// without an endpoint (no SMTP here) is left out. Breakage caught: in-app
/// held by quiet hours, a frame missing a documented field, email routed
/// without an endpoint.
#[tokio::test]
async fn an_in_app_notification_reaches_the_stream_at_once_even_in_quiet_hours() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    set_customer(
        &w.d,
        &w.p,
        json!({"quiet_hours": {"start": "13:00", "end": "17:00"}}),
    )
    .await;
    let mut ws = w.d.ws(&w.p.customer, None).await;
    promote(
        &w.d,
        &w.p.customer.id,
        json!({"title": "Kayak week", "text": "Two tours for one"}),
    )
    .await;
    let frame = ws.next_of("notification").await;
    let shown = &frame["notification"];
    assert_eq!(shown["type"], "promotion", "{frame}");
    assert_eq!(shown["priority"], "low", "{frame}");
    assert_eq!(shown["title"], "Kayak week", "{frame}");
    assert_eq!(shown["body"], "Two tours for one", "{frame}");
    for field in ["id", "conversation_id", "message_seq", "created_at"] {
        assert!(shown.get(field).is_some(), "no {field} in {frame}");
    }
    let at = cursor(&frame);
    let (events, _) = w.d.poll(&w.p.customer, at - 1, 0).await;
    assert_eq!(
        events.first(),
        Some(&frame),
        "long-poll carries the same event"
    );

    let record = admin_notification(&w.d, shown["id"].as_str().unwrap()).await;
    let channels: Vec<&Value> = record["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["channel"])
        .collect();
    assert_eq!(channels, [&json!("in_app")], "{record}");
    assert_eq!(delivery(&record, "in_app")["state"], "delivered");
}

/// Per-user channel preferences and addresses, read at routing time.
/// Breakage caught: an opted-out channel or one without an address routed.
#[tokio::test]
async fn a_person_opted_out_of_push_or_without_an_email_is_not_routed_there() {
    // An SMTP endpoint no one answers: the email channel is on, and these
    // deliveries are only looked at, never awaited.
    let w = lite(
        &shipped_routing(),
        vec![("smtp_url", UNANSWERED_SMTP.to_owned())],
    )
    .await;
    let channels = |record: &Value| -> Vec<String> {
        record["deliveries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["channel"].as_str().unwrap().to_owned())
            .collect()
    };
    let both = provider_says(&w.d, &w.p, "m1", "Both channels").await;
    assert_eq!(
        channels(&admin_notification(&w.d, &both).await),
        ["push", "email"]
    );

    set_customer(&w.d, &w.p, json!({"channels": {"push": false}})).await;
    let email = provider_says(&w.d, &w.p, "m2", "Email only").await;
    assert_eq!(channels(&admin_notification(&w.d, &email).await), ["email"]);

    w.d.put(
        &format!("/v1/users/{}", w.p.customer.id),
        SERVICE_KEY,
        json!({"name": "Carla", "timezone": "Europe/Paris"}),
    )
    .await
    .expect(200);
    let push = provider_says(&w.d, &w.p, "m3", "Push only").await;
    assert_eq!(channels(&admin_notification(&w.d, &push).await), ["push"]);
}

/// The shipped routing of automated messages. Breakage caught: a nudge
/// routed as a person's message (high, with email) or sent before its
/// grace; a confirmation escalated to SMS although it was read in time.
#[tokio::test]
async fn a_nudge_is_a_medium_push_after_the_grace_and_a_confirmation_read_in_time_does_not_escalate(
) {
    let w = lite_shipped().await;
    w.d.send(&w.p.customer, &w.p.conversation, "c1", "Is Friday free?")
        .await
        .expect(201);
    // inquiry_follow_up answers the customer at once; its notification:
    let n = notification_for(&w.d, &w.p.customer, "automated").await;
    assert_eq!(n["priority"], "medium", "{n}");
    let id = n["id"].as_str().unwrap();
    let record = admin_notification(&w.d, id).await;
    let push = delivery(&record, "push");
    assert_eq!(
        record["deliveries"].as_array().unwrap().len(),
        1,
        "{record}"
    );
    assert_eq!(push["due_ms"], w.ms(2), "after the read grace: {push}");
    advance(&w.d, "2m").await;
    let sent = eventually("the nudge's push", &w.d, None, || {
        w.http
            .hits_for("/push", |h| h.body["notification_id"] == id)
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(sent.body["priority"], "medium");
    assert_eq!(sent.body["title"], "Sunset kayak tour");
    assert!(
        sent.body["body"]
            .as_str()
            .unwrap()
            .starts_with("Thanks Carla!"),
        "{}",
        sent.body
    );

    common::book(&w.d, &w.p.conversation, &w.at(240), &w.at(243)).await;
    let n = notification_for(&w.d, &w.p.customer, "booking_confirmation").await;
    let id = n["id"].as_str().unwrap();
    // The first matching rule decides: the confirmation, also an automated
    // message, is not notified a second time as one.
    settled(&w.d).await;
    let listed =
        w.d.get(
            &format!("/v1/admin/users/{}/notifications", w.p.customer.id),
            &operator().token,
        )
        .await;
    let about: Vec<&Value> = listed
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["message_seq"] == n["message_seq"])
        .collect();
    assert_eq!(about.len(), 1, "{about:?}");
    w.d.read(
        &w.p.customer,
        &w.p.conversation,
        n["message_seq"].as_u64().unwrap(),
    )
    .await
    .expect(200);
    advance(&w.d, "16m").await;
    let record = delivery_where(&w.d, id, "sms", "decided", |c| c["state"] != "pending").await;
    let sms = delivery(&record, "sms");
    assert_eq!(sms["state"], "suppressed", "{record}");
    assert!(sms["note"].as_str().unwrap().contains("read"), "{sms}");
    settled(&w.d).await;
    assert!(w.http.hits("/sms").is_empty());
    let suppressed = "parleyd_deliveries_total{channel=\"sms\",result=\"suppressed\"}";
    w.d.metric_reaches(suppressed, 1.0).await;
}

/// Breakage caught: a network error (no HTTP answer at all) taken as
/// permanent, or as delivered.
#[tokio::test]
async fn a_network_error_is_retried() {
    // A "push service" that accepts connections and closes them unanswered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let w = lite(&shipped_routing(), vec![("push_url", url)]).await;
    let id = provider_says(&w.d, &w.p, "m1", "Anyone there?").await;
    advance(&w.d, "2m").await;
    let push = attempt_outcome(&w.d, &id, "push").await;
    assert_eq!(push["state"], "pending", "{push}");
    assert_eq!(push["attempts"], 1, "{push}");
    let record = guard("a second attempt", async {
        loop {
            advance(&w.d, "20s").await;
            let n = admin_notification(&w.d, &id).await;
            if delivery(&n, "push")["attempts"].as_u64() >= Some(2) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_ne!(delivery(&record, "push")["state"], "delivered", "{record}");
}

/// A template with a gap raises nothing, and says so. Breakage caught: a
/// notification sent with the gap in it, or dropped without a trace.
#[tokio::test]
async fn a_notification_whose_template_has_a_gap_is_not_raised_but_counted_and_logged() {
    let w = lite(&shipped_routing(), Vec::new()).await;
    let mut ws = w.d.ws(&w.p.customer, None).await;
    // notify_promotion reads event.data.title: absent here.
    promote(&w.d, &w.p.customer.id, json!({"text": "no title"})).await;
    w.d.metric_reaches(
        "parleyd_notifications_total{type=\"promotion\",result=\"skipped\"}",
        1.0,
    )
    .await;
    assert!(
        w.d.log().contains("notification not raised"),
        "{}",
        w.d.log()
    );
    settled(&w.d).await;
    let listed =
        w.d.get(
            &format!("/v1/admin/users/{}/notifications", w.p.customer.id),
            &operator().token,
        )
        .await;
    assert_eq!(listed.body, json!([]), "nothing raised");
    // The next, complete one is the first notification the app gets.
    promote(
        &w.d,
        &w.p.customer.id,
        json!({"title": "Kayak week", "text": "Two for one"}),
    )
    .await;
    let frame = ws.next_of("notification").await;
    assert_eq!(frame["notification"]["title"], "Kayak week", "{frame}");
}

/// The email of a person's message. Breakage caught: the message's text
/// unescaped in the HTML part (markup injected into the recipient's mail),
/// a Message-ID that is not the documented idempotency key.
#[tokio::test]
async fn a_message_email_escapes_its_html_part_and_carries_its_message_id() {
    let w = world().await;
    let text = "Bring <b>sunscreen</b> & a hat";
    w.d.send(&w.p.provider, &w.p.conversation, "m1", text)
        .await
        .expect(201);
    let n = notification_for(&w.d, &w.p.customer, "new_message").await;
    let mail = eventually("the email", &w.d, Some("1m"), || {
        w.smtp.mails_to(CUSTOMER_EMAIL).into_iter().next()
    })
    .await;
    let raw = mail["data"].as_str().unwrap();
    let message_id = format!("<{}.email@parleyd>", n["id"].as_str().unwrap());
    assert!(
        raw.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("Message-ID: {message_id}"))),
        "{raw}"
    );
    let part = |kind: &str| {
        mail["parts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["content_type"] == kind)
            .and_then(|p| p["text"].as_str())
            .unwrap_or_else(|| panic!("no {kind} part: {mail}"))
            .to_owned()
    };
    let html = part("text/html");
    assert!(
        html.contains("Bring &lt;b&gt;sunscreen&lt;/b&gt; &amp; a hat"),
        "{html}"
    );
    assert!(
        html.contains("<strong>Pablo</strong>"),
        "the template's own markup: {html}"
    );
    assert!(part("text/plain").contains(text));
}

/// Waits until `who`'s app has shown the in-app notification titled `title`.
async fn in_app_shown(d: &Daemon, who: &Person, title: &str) {
    guard(&format!("the in-app notification {title}"), async {
        while !in_app(d, who, "promotion")
            .await
            .iter()
            .any(|n| n["title"] == title)
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// A digest falling due in quiet hours set after its items were routed
/// waits for their end. Breakage caught: quiet hours read only when the
/// items were routed, the digest raised in the middle of the day's quiet.
#[tokio::test]
async fn a_digest_due_in_quiet_hours_goes_out_when_they_end() {
    // Nothing answers SMTP here: the digest's raising is what is looked at.
    let w = lite(
        &shipped_routing(),
        vec![("smtp_url", UNANSWERED_SMTP.to_owned())],
    )
    .await;
    promote(
        &w.d,
        &w.p.customer.id,
        json!({"title": "Kayak week", "text": "Two for one"}),
    )
    .await;
    in_app_shown(&w.d, &w.p.customer, "Kayak week").await;
    // Only then quiet hours, from 13:00 to 17:00 in Paris: the digest, due
    // 24 hours after the promotion (14:00 Paris tomorrow), falls inside.
    set_customer(
        &w.d,
        &w.p,
        json!({"quiet_hours": {"start": "13:00", "end": "17:00"}}),
    )
    .await;
    advance(&w.d, "24h").await;
    let digest = guard("the digest", async {
        loop {
            let listed =
                w.d.get(
                    &format!("/v1/admin/users/{}/notifications", w.p.customer.id),
                    &operator().token,
                )
                .await;
            if let Some(n) = listed
                .body
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["type"] == "digest")
            {
                return n.clone();
            }
            advance(&w.d, "30m").await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let raised: jiff::Timestamp = digest["created_at"].as_str().unwrap().parse().unwrap();
    let end = w.ms(24 * 60 + 180); // 17:00 Paris tomorrow
    assert!(
        raised.as_millisecond() >= end,
        "raised at {raised}, before the quiet hours ended"
    );
}
