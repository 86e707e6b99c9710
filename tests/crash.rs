//! Crashes at the moments that matter: the daemon is started with one fault
//! point armed (`FAILPOINTS`, see src/faults.rs and README's "Testing"), driven
//! to it, dies there (SIGABRT: nothing flushed, no goodbye, like `kill -9`),
//! and is started again without it on the same data directory; each test then
//! checks what README promises across such a crash.
//!
//! The fault points exist only in a build with the `failpoints` feature, which
//! `cargo test --workspace` turns on (see tools/Cargo.toml); a daemon without
//! them refuses `FAILPOINTS`, and these tests say so.

mod common;

use std::path::Path;

use common::receiver::*;
use common::*;
use serde_json::{json, Value};

/// A daemon on the data directory `data`, with `failpoints` armed when
/// given.
fn crashable(data: &Path, failpoints: Option<&str>, config: Vec<(&'static str, String)>) -> Launch {
    Launch {
        data_dir: Some(data.to_owned()),
        config,
        env: failpoints
            .map(|f| vec![("FAILPOINTS".to_owned(), f.to_owned())])
            .unwrap_or_default(),
        ..Launch::default()
    }
}

/// A [`crashable`] daemon with the shipped rules on a manual clock, its push
/// notifications going to `push` when given.
async fn launch(
    data: &Path,
    failpoints: Option<&str>,
    push: Option<&Receiver>,
    mut config: Vec<(&'static str, String)>,
) -> Daemon {
    config.push(("clock", "manual".into()));
    if let Some(receiver) = push {
        config.push(("push_url", receiver.url("/push")));
    }
    Daemon::launch(Launch {
        automation: true,
        ..crashable(data, failpoints, config)
    })
    .await
}

/// Moves the manual clock by `by` without waiting for the answer: the move
/// may be what makes the daemon reach its fault point and die.
async fn nudge_clock(d: &Daemon, by: &str) {
    let _ = d
        .http
        .post(d.url("/v1/admin/clock"))
        .bearer_auth(&operator().token)
        .json(&json!({ "advance": by }))
        .send()
        .await;
}

/// Sets the manual clock of a restarted daemon to `at` (a restart starts it
/// from the wall clock).
async fn clock_to(d: &Daemon, at: jiff::Timestamp) {
    d.post(
        "/v1/admin/clock",
        &operator().token,
        json!({"to": at.to_string()}),
    )
    .await
    .expect(200);
}

/// The conversation's automated messages rendered from `template`.
fn of_step<'a>(messages: &'a [Value], template: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["automation"]["template"] == template)
        .collect()
}

/// Asserts the conversation's messages have seqs 1..=n, and no step's
/// message is there twice.
fn assert_each_once(messages: &[Value]) {
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=messages.len() as u64).collect();
    assert_eq!(seqs, expected, "seqs without gaps");
    let mut steps: Vec<String> = messages
        .iter()
        .filter(|m| !m["automation"].is_null())
        .map(|m| format!("{}.{}", m["automation"]["rule"], m["automation"]["step"]))
        .collect();
    let all = steps.len();
    steps.sort();
    steps.dedup();
    assert_eq!(steps.len(), all, "a step's message twice: {messages:#?}");
}

/// Polls the conversation until it holds a message from `template`.
async fn sent_from(d: &Daemon, who: &Person, conversation: &str, template: &str) -> Vec<Value> {
    guard(&format!("a {template} message"), async {
        loop {
            let messages = d.messages(who, conversation).await;
            if !of_step(&messages, template).is_empty() {
                return messages;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}

/// README, "Exactly once": "A due step's message and the removal of its timer
/// are written in one transaction, so a step is sent exactly once, across
/// crashes and restarts; steps that fell due while the daemon was down are
/// sent when it starts again."
///
/// The inquiry's acknowledgement falls due as the customer writes; the daemon
/// dies at `point` while firing it. Restarted, the acknowledgement is there
/// once: a scheduler that fired the step again after the crash (its timer
/// removed in a later transaction than its message), or one that lost a step
/// whose transaction had not reached the disk, fails this.
async fn a_step_is_sent_exactly_once_across_a_crash_at(point: &str) {
    let data = tempfile::tempdir().unwrap();
    let d = launch(data.path(), Some(&format!("{point}=return")), None, vec![]).await;
    let p = pair(&d).await;
    d.send(
        &p.customer,
        &p.conversation,
        "q-1",
        "Hello, free on Friday?",
    )
    .await
    .expect(201);
    d.aborted_at(point).await;

    let d = launch(data.path(), None, None, vec![]).await;
    // The provider's reminder falls due 4 hours on. The scheduler fires due
    // steps earliest first, so once the reminder is there, an
    // acknowledgement whose timer had survived would have fired before it.
    advance(&d, "4h").await;
    sent_from(&d, &p.provider, &p.conversation, "provider_reply_reminder").await;
    settled(&d).await;
    let messages = d.messages(&p.provider, &p.conversation).await;
    assert_eq!(of_step(&messages, "inquiry_ack").len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["client_id"], "q-1");
    assert_each_once(&messages);
    d.stop().await;
}

#[tokio::test]
async fn a_step_is_sent_once_when_the_daemon_dies_right_after_its_transaction() {
    a_step_is_sent_exactly_once_across_a_crash_at("scheduler::after_fire").await;
}

#[tokio::test]
async fn a_step_is_sent_once_when_the_daemon_dies_inside_its_group_commit() {
    a_step_is_sent_exactly_once_across_a_crash_at("writer::before_flush:step").await;
}

/// README, "Durability": "A 201/200 reply or an `ack` frame means the message
/// is on disk (`storage.durability: group_commit`, the default): it survives a
/// crash of the daemon or the machine." And "Retries and idempotency":
/// people's sends are retried with their `client_id`, which "finds the first
/// record rather than making a second".
///
/// Two sends are acknowledged (over HTTP, then the stream) and the provider
/// reads the first; the daemon dies inside the group commit of a third send,
/// before answering it. Restarted: the acknowledged sends and the read are
/// there once each, the unacknowledged send, retried with its client id, is
/// there once, and unread counts and the event log agree with the history.
/// A writer that answered before flushing, or a restart that replayed or
/// lost part of a batch, fails this.
#[tokio::test]
async fn nothing_acknowledged_is_lost_when_the_daemon_dies_inside_a_group_commit() {
    let data = tempfile::tempdir().unwrap();
    let plain = |failpoints| Daemon::launch(crashable(data.path(), failpoints, vec![]));
    // The third batch holding a send dies before its flush.
    let d = plain(Some("writer::before_flush:send=2*off->return")).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "Is the kayak free?")
        .await
        .expect(201);
    d.read(&p.provider, &p.conversation, 1).await.expect(200);
    let mut customer = d.ws(&p.customer, None).await;
    customer
        .send_acked(&p.conversation, "c-2", "On Friday, I mean")
        .await;
    customer
        .send_message(&p.conversation, "c-3", "Two people")
        .await;
    d.aborted_at("writer::before_flush:send").await;

    let d = plain(None).await;
    let retried = d
        .send(&p.customer, &p.conversation, "c-3", "Two people")
        .await;
    assert!(
        retried.status == 201 || retried.status == 200,
        "{}",
        retried.body
    );
    assert_eq!(retried.body["message"]["seq"], 3);
    let history = d.messages(&p.customer, &p.conversation).await;
    let ids: Vec<&str> = history
        .iter()
        .map(|m| m["client_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-1", "c-2", "c-3"]);
    assert_each_once(&history);
    assert!(!history[0]["read_at"].is_null(), "the acknowledged read");
    assert!(history[1]["read_at"].is_null());
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        2
    );
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["unread_count"],
        0
    );
    // The provider's log holds each message once, in order.
    let (events, _) = d.poll(&p.provider, 0, 0).await;
    assert_eq!(message_seqs(&events), [1, 2, 3]);
    assert_consecutive(&events, 1);
    d.stop().await;
}

/// README, "Channels": "Every POST carries `Idempotency-Key: {notification
/// id}:{channel}` (also the body's `id`): a retry after a crash may repeat a
/// request, never under a new key." And "The outbox": "an attempt cut short by
/// a crash is retried when its lease (timeout + backoff) ends, with the same
/// idempotency key."
///
/// The push service accepts the customer's new-message notification and the
/// daemon dies before recording it. Restarted, the push is made again (at
/// least once) under the same key, and then recorded delivered. An outbox
/// that dropped the leased attempt, or made a new key for the retry, fails
/// this.
#[tokio::test]
async fn a_push_accepted_just_before_a_crash_is_sent_again_with_the_same_key() {
    let data = tempfile::tempdir().unwrap();
    let push = Receiver::start().await;
    let d = launch(
        data.path(),
        Some("outbox::after_send:new_message=return"),
        Some(&push),
        vec![],
    )
    .await;
    let p = pair(&d).await;
    let t0 = advance(&d, "0s").await;
    d.send(&p.provider, &p.conversation, "m-1", "Yes, Friday is free")
        .await
        .expect(201);
    let n = notification_for(&d, &p.customer, "new_message").await;
    let id = n["id"].as_str().unwrap().to_owned();
    // Past the read grace (2 minutes), unread: the push goes out.
    nudge_clock(&d, "3m").await;
    d.aborted_at("outbox::after_send:new_message").await;
    let pushed = |push: &Receiver| push.hits_for("/push", |h| h.body["type"] == "new_message");
    let accepted = pushed(&push);
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].status, 200);

    let d = launch(data.path(), None, Some(&push), vec![]).await;
    clock_to(&d, t0 + jiff::SignedDuration::from_mins(3)).await;
    eventually("the push again", &d, Some("10s"), || {
        (pushed(&push).len() >= 2).then_some(())
    })
    .await;
    let record = delivery_state(&d, &id, "push", "delivered").await;
    settled(&d).await;
    let hits = pushed(&push);
    assert_eq!(hits.len(), 2, "not again once recorded: {hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.headers["idempotency-key"] == format!("{id}:push")
                && h.body["id"] == format!("{id}:push")),
        "{hits:?}"
    );
    assert_eq!(delivery(&record, "push")["attempts"], 2);
    d.stop().await;
}

/// README, "Digests": "A batched notification waits in its recipient's
/// digest. The digest goes out when the oldest item's `max_delay` has passed
/// … as one notification on the channels its items were routed to"; and, as
/// for every delivery, a retry after a crash repeats it "never under a new
/// key".
///
/// Two promotions wait in the customer's digest (routed to push here, so
/// the receiver sees it). The daemon dies twice: once with the digest
/// rendered but not yet queued, once when the push service has accepted it
/// but before it is recorded. Restarted, the digest arrives, every copy under
/// one key, holding both promotions. A digest lost between its opening and
/// its flush, items dropped from it, or a new digest (a new key) for the
/// retry, fail this.
#[tokio::test]
async fn a_digest_cut_short_by_crashes_still_arrives_with_its_items_under_one_key() {
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    let mut config = copy_rules(rules.path());
    let routing = rules.path().join("rules/routing.yaml");
    let text = std::fs::read_to_string(&routing).unwrap();
    let batched = "channels: [in_app, email]\n    batch: true";
    assert!(
        text.contains(batched),
        "routing.yaml batches promotions by email"
    );
    std::fs::write(
        &routing,
        text.replace(batched, "channels: [in_app, push]\n    batch: true"),
    )
    .unwrap();
    config.push(("max_attempts", "4".into()));
    let push = Receiver::start().await;
    let start = |failpoints: Option<&'static str>| {
        launch(data.path(), failpoints, Some(&push), config.clone())
    };

    let d = start(Some("digest::before_flush=return")).await;
    let customer = Person::new("cust-1", "customer");
    d.put(
        &format!("/v1/users/{}", customer.id),
        SERVICE_KEY,
        json!({"name": "Carla", "timezone": "UTC"}),
    )
    .await
    .expect(200);
    let t0 = advance(&d, "0s").await;
    for title in ["Spring sale", "Kayak week"] {
        promote(
            &d,
            &customer.id,
            json!({"title": title, "text": "Offers inside"}),
        )
        .await;
    }
    notification_for(&d, &customer, "promotion").await;
    // Past the digest window (24 hours).
    nudge_clock(&d, "25h").await;
    d.aborted_at("digest::before_flush").await;
    let pushed = |push: &Receiver| push.hits_for("/push", |h| h.body["type"] == "digest");
    assert!(pushed(&push).is_empty(), "nothing sent yet");

    let after_window = t0 + jiff::SignedDuration::from_hours(25);
    let d = start(Some("outbox::after_send:digest=return")).await;
    clock_to(&d, after_window).await;
    d.aborted_at("outbox::after_send:digest").await;
    assert_eq!(pushed(&push).len(), 1, "accepted once before the crash");

    let d = start(None).await;
    clock_to(&d, after_window).await;
    eventually("the digest again", &d, Some("10s"), || {
        (pushed(&push).len() >= 2).then_some(())
    })
    .await;
    let digest = notification_for(&d, &customer, "digest").await;
    let id = digest["id"].as_str().unwrap();
    delivery_state(&d, id, "push", "delivered").await;
    settled(&d).await;
    let hits = pushed(&push);
    assert_eq!(hits.len(), 2, "not again once recorded: {hits:?}");
    assert!(
        hits.iter()
            .all(|h| h.headers["idempotency-key"] == format!("{id}:push")),
        "one digest, one key: {hits:?}"
    );
    let body = hits[0].body["body"].as_str().unwrap_or_default();
    for title in ["Spring sale", "Kayak week"] {
        assert!(body.contains(title), "{title} in {body}");
    }
    d.stop().await;
}
