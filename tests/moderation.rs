//! Off-platform contact moderation through the real daemon: the shipped policy
//! before and after booking, the live composer check, operators' records, and a
//! policy edit on disk taking effect without a restart.

mod common;

use common::*;
use serde_json::{json, Value};

const PHONE: &str = "text me on 415 867 2671 and we skip the fee";
const DIGITS: &str = "4158672671";

fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

async fn confirm_booking(d: &Daemon, p: &Pair) {
    d.post(
        "/v1/bookings",
        SERVICE_KEY,
        json!({"conversation_id": p.conversation, "start": "2026-12-01T10:00:00Z",
               "end": "2026-12-01T12:00:00Z", "stage": "confirmed"}),
    )
    .await
    .expect(201);
}

async fn customer_sends(d: &Daemon, p: &Pair, client_id: &str, text: &str) -> Reply {
    d.send(&p.customer, &p.conversation, client_id, text).await
}

#[tokio::test]
async fn a_phone_number_before_booking_is_blocked_and_kept_for_operators_only() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut provider = d.ws(&p.provider, None).await;
    let mut customer = d.ws(&p.customer, None).await;

    let code = d
        .send(&p.customer, &p.conversation, "c-1", PHONE)
        .await
        .expect_error(422);
    assert_eq!(code, "blocked");
    // A retry gets the same answer and stores nothing new.
    let again = d.send(&p.customer, &p.conversation, "c-1", PHONE).await;
    assert_eq!(again.expect_error(422), "blocked");

    let notice = customer.next_of("moderation").await;
    assert_eq!(notice["action"], "block");
    assert_eq!(notice["client_id"], "c-1");
    assert!(notice["message_seq"].is_null());
    assert!(notice["types"]
        .as_array()
        .unwrap()
        .contains(&json!("phone")));

    // The same over the stream: an error frame with the code.
    customer
        .send_message(&p.conversation, "c-2", "my number: +44 7911 123456")
        .await;
    let answer = customer.answer("c-2").await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], "blocked");

    // Then a clean message: it is the provider's first and only message.
    d.send(&p.customer, &p.conversation, "c-3", "Is Saturday free?")
        .await
        .expect(201);
    let first = provider.next_of("message").await;
    assert_eq!(first["message"]["content"], "Is Saturday free?");
    assert_eq!(first["message"]["seq"], 1);
    let seen: Vec<Value> = d.messages(&p.provider, &p.conversation).await;
    assert_eq!(seen.len(), 1);
    assert!(!seen
        .iter()
        .any(|m| digits(m["content"].as_str().unwrap()).contains(DIGITS)));

    // Operators see the original text; the people in the conversation cannot.
    let flags = d.get("/v1/admin/flags", &operator().token).await;
    flags.expect(200);
    let flags = flags.body.as_array().expect("flags").clone();
    assert_eq!(flags.len(), 2, "{flags:?}");
    assert_eq!(flags[0]["original"], PHONE);
    assert_eq!(flags[0]["action"], "block");
    assert!(flags[0]["message_seq"].is_null());
    d.get("/v1/admin/flags", &p.provider.token)
        .await
        .expect_error(403);
}

#[tokio::test]
async fn an_invitation_to_another_app_is_masked_for_the_recipient() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut provider = d.ws(&p.provider, None).await;
    let sent = d
        .send(
            &p.customer,
            &p.conversation,
            "m-1",
            "do you have WhatsApp? easier",
        )
        .await;
    sent.expect(201);
    let message = &sent.body["message"];
    assert_eq!(message["moderation"]["action"], "mask");
    assert_eq!(message["moderation"]["types"], json!(["messaging_app"]));
    let delivered = provider.next_of("message").await;
    let content = delivered["message"]["content"].as_str().unwrap().to_owned();
    assert!(content.contains("[contact hidden]"), "{content}");
    assert!(!content.to_lowercase().contains("whatsapp"), "{content}");
    // The original is kept for operators.
    let flags = d.get("/v1/admin/flags", &operator().token).await;
    assert_eq!(flags.body[0]["original"], "do you have WhatsApp? easier");
    assert_eq!(flags.body[0]["message_seq"], 1);
}

#[tokio::test]
async fn the_same_number_after_confirmation_is_delivered() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    confirm_booking(&d, &p).await;
    let mut provider = d.ws(&p.provider, None).await;
    let sent = d.send(&p.customer, &p.conversation, "p-1", PHONE).await;
    sent.expect(201);
    let delivered = provider.next_of("message").await;
    assert_eq!(delivered["message"]["content"], PHONE);
}

#[tokio::test]
async fn the_composer_check_stores_nothing() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let path = "/v1/contact/analyze";
    let reply = d
        .post(
            path,
            &p.customer.token,
            json!({"content": "jane dot doe at gmail dot com", "conversation_id": p.conversation}),
        )
        .await;
    reply.expect(200);
    assert_eq!(reply.body["action"], "block");
    assert_eq!(reply.body["analysis"]["detections"][0]["type"], "email");
    assert!(reply.body["notice"].as_str().is_some());
    let clean = d
        .post(
            path,
            &p.customer.token,
            json!({"content": "Is 3pm OK for 2 guests?"}),
        )
        .await;
    assert_eq!(clean.body["action"], "allow", "{}", clean.body);
    assert!(d.messages(&p.customer, &p.conversation).await.is_empty());
    // Someone else's conversation is not revealed.
    let stranger = Person::new("eve", "customer");
    d.post(
        path,
        &stranger.token,
        json!({"content": "hi", "conversation_id": p.conversation}),
    )
    .await
    .expect_error(404);
}

/// The shipped policy with the pre-booking high-risk rule replaced by `rule`.
fn high_risk_rule(shipped: &str, rule: &str) -> String {
    const SHIPPED_RULE: &str = "high: { action: block, flag: true }";
    assert!(
        shipped.contains(SHIPPED_RULE),
        "the shipped policy changed; update this test"
    );
    shipped.replacen(SHIPPED_RULE, &format!("high: {rule}"), 1)
}

#[tokio::test]
async fn a_policy_edit_on_disk_changes_the_outcome_without_a_restart() {
    let rules = tempfile::tempdir().unwrap();
    let policy_path = rules.path().join("contact.yaml");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/contact.yaml"))
            .unwrap();
    std::fs::write(&policy_path, &shipped).unwrap();
    let d = Daemon::launch(Launch {
        config: vec![("rules_dir", rules.path().display().to_string())],
        ..Launch::default()
    })
    .await;
    d.expect_log_errors("rule reload rejected");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "e-1", PHONE)
        .await
        .expect_error(422);

    // A broken edit is rejected with its position; the old policy keeps serving.
    std::fs::write(&policy_path, high_risk_rule(&shipped, "{ action: blok }")).unwrap();
    let status = rules_after(&d, |s| !s["last_failure"].is_null()).await;
    let error = &status["last_failure"]["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("contact.yaml"),
        "{error}"
    );
    assert!(error["line"].as_u64().unwrap() > 1, "{error}");
    assert_eq!(status["version"], 1);
    d.send(&p.customer, &p.conversation, "e-2", PHONE)
        .await
        .expect_error(422);

    // Fixing it to allow phone numbers before booking takes effect at once.
    std::fs::write(&policy_path, high_risk_rule(&shipped, "{ action: allow }")).unwrap();
    let status = rules_after(&d, |s| s["version"].as_u64() > Some(1)).await;
    assert!(status["last_failure"].is_null(), "{status}");
    let sent = d.send(&p.customer, &p.conversation, "e-3", PHONE).await;
    sent.expect(201);
    assert_eq!(sent.body["message"]["content"], PHONE);
}

/// A send to an active conversation is moderated from the daemon's memory of
/// it: a number split over three messages is still caught, a booking made
/// after the conversation was remembered still changes the policy, and after a
/// restart the history is read from disk again.
#[tokio::test]
async fn split_numbers_and_bookings_are_seen_by_sends_to_an_active_conversation() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(data.path()).await;
    let p = pair(&d).await;
    customer_sends(&d, &p, "s-1", "call me").await.expect(201);
    customer_sends(&d, &p, "s-2", "555 201").await.expect(201);
    assert_eq!(
        customer_sends(&d, &p, "s-3", "4478")
            .await
            .expect_error(422),
        "blocked"
    );
    // A clean message in between does not hide the next split number.
    customer_sends(&d, &p, "s-4", "see you at 5")
        .await
        .expect(201);
    d.stop().await;

    let d = Daemon::start_in(data.path()).await;
    customer_sends(&d, &p, "r-1", "my cell").await.expect(201);
    customer_sends(&d, &p, "r-2", "555 201").await.expect(201);
    assert_eq!(
        customer_sends(&d, &p, "r-3", "4478")
            .await
            .expect_error(422),
        "blocked"
    );

    confirm_booking(&d, &p).await;
    customer_sends(&d, &p, "b-1", PHONE).await.expect(201);
    let seen = d.messages(&p.provider, &p.conversation).await;
    assert_eq!(seen.last().unwrap()["content"], PHONE);
}
