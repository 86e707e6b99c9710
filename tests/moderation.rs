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
    // Over four messages: the last two alone are no phone number, the last
    // three (contact.history_messages) with this one are.
    for (id, part) in [("f-1", "call me"), ("f-2", "4155"), ("f-3", "52")] {
        customer_sends(&d, &p, id, part).await.expect(201);
    }
    assert_eq!(
        customer_sends(&d, &p, "f-4", "0144")
            .await
            .expect_error(422),
        "blocked"
    );
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

// ------------------------------------------------- the policy, row by row

/// One contact detail of one kind, as a customer would write it.
#[derive(Clone, Copy, Debug)]
struct Probe {
    kind: &'static str,
    text: &'static str,
    /// The part that must not reach the recipient when it is masked.
    detail: &'static str,
    /// How the sender's notice names it.
    named: &'static str,
}

const PHONE_PROBE: Probe = Probe {
    kind: "phone",
    text: PHONE,
    detail: "867 2671",
    named: "a phone number",
};
const EMAIL_PROBE: Probe = Probe {
    kind: "email",
    text: "my email is carla.rossi@gmail.com",
    detail: "carla.rossi",
    named: "an email address",
};
const URL_PROBE: Probe = Probe {
    kind: "url",
    text: "all the photos are on https://carlasfotos.com/album",
    detail: "carlasfotos",
    named: "a link",
};
const SOCIAL_PROBE: Probe = Probe {
    kind: "social",
    text: "follow me on insta @carla.paddles",
    detail: "carla.paddles",
    named: "a social media account",
};
/// Medium risk: a proposal to move off-platform, no handle.
const APP_PROBE: Probe = Probe {
    kind: "messaging_app",
    text: "are you on Telegram? simpler to chat there",
    detail: "Telegram",
    named: "a messaging app",
};
const PAYMENT_PROBE: Probe = Probe {
    kind: "payment",
    text: "my venmo is @carla-rossi-7",
    detail: "carla-rossi-7",
    named: "a payment account",
};
/// Low risk: a bare number with no context.
const LOW_PROBE: Probe = Probe {
    kind: "phone",
    text: "4158672671",
    detail: "4158672671",
    named: "a phone number",
};

/// Disguised numbers: spelled out in Spanish, and in full-width digits.
const SPELLED_PROBE: Probe = Probe {
    text: "llámame al seis uno dos, tres cuatro cinco, seis siete ocho",
    detail: "seis uno dos",
    ..PHONE_PROBE
};
const LOOKALIKE_PROBE: Probe = Probe {
    text: "my number is ４１５ ８６７ ２６７１",
    detail: "４１５",
    ..PHONE_PROBE
};

/// What a policy row does with a message.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fate {
    Allow,
    Warn,
    Mask,
    Block,
}

/// The notice README and the sender's `moderation` event give for `fate`.
fn notice(fate: Fate, named: &str) -> Option<String> {
    match fate {
        Fate::Allow => None,
        Fate::Warn => Some(format!(
            "Your message mentions {named}. For your protection, keep conversations and payments on the platform."
        )),
        Fate::Mask => Some(format!(
            "Your message was delivered with {named} hidden: contact details can't be shared at this stage."
        )),
        Fate::Block => Some(format!(
            "Your message was not delivered: it contains {named}, which can't be shared at this stage."
        )),
    }
}

/// Opens a conversation of a new customer `customer` with the pair's
/// provider about its listing, booked at `stage` unless it is `None`.
async fn conversation_at(d: &Daemon, customer: &str, stage: Option<&str>) -> Pair {
    let p = pair_of(
        d,
        Person::new(customer, "customer"),
        Person::new("prov-1", "provider"),
    )
    .await;
    if let Some(stage) = stage {
        d.post(
            "/v1/bookings",
            SERVICE_KEY,
            json!({"conversation_id": p.conversation, "start": "2026-12-01T10:00:00Z",
                   "end": "2026-12-01T12:00:00Z", "stage": stage}),
        )
        .await
        .expect(201);
    }
    p
}

/// The `moderation` events of `who`'s log about `client_id`.
async fn moderation_events(d: &Daemon, who: &Person, client_id: &str) -> Vec<Value> {
    let (events, _) = d.poll(who, 0, 0).await;
    events
        .into_iter()
        .filter(|e| e["type"] == "moderation" && e["client_id"] == client_id)
        .collect()
}

/// Sends `probe` from the customer of a fresh conversation at `stage` and
/// asserts what the sender, the recipient and operators see.
async fn expect_fate(d: &Daemon, stage: Option<&str>, probe: Probe, fate: Fate, review: bool) {
    let row = format!("{} {:?} -> {fate:?}", stage.unwrap_or("pre_booking"), probe);
    let customer = format!(
        "{}-{}-{}",
        stage.unwrap_or("pre"),
        probe.kind,
        probe.text.len()
    );
    let p = conversation_at(d, &customer, stage).await;
    let client_id = format!("{customer}-1");
    let reply = d
        .send(&p.customer, &p.conversation, &client_id, probe.text)
        .await;

    // The sender: the reply, and a `moderation` event with the notice.
    let received = d.messages(&p.provider, &p.conversation).await;
    if fate == Fate::Block {
        assert_eq!(reply.expect_error(422), "blocked", "{row}");
        assert!(received.is_empty(), "{row}: delivered {received:?}");
    } else {
        assert_eq!(reply.status, 201, "{row}: {}", reply.body);
        let moderation = &reply.body["message"]["moderation"];
        let action = moderation["action"].as_str().unwrap_or("allow");
        assert_eq!(
            action,
            format!("{fate:?}").to_lowercase(),
            "{row}: {moderation}"
        );
        assert_eq!(received.len(), 1, "{row}");
        let content = received[0]["content"].as_str().unwrap();
        if fate == Fate::Mask {
            assert!(content.contains("[contact hidden]"), "{row}: {content}");
            assert!(!content.contains(probe.detail), "{row}: {content}");
            assert_eq!(received[0]["moderation"]["action"], "mask", "{row}");
        } else {
            assert_eq!(content, probe.text, "{row}");
        }
    }
    let told = moderation_events(d, &p.customer, &client_id).await;
    match notice(fate, probe.named) {
        None => assert!(told.is_empty(), "{row}: {told:?}"),
        Some(text) => {
            assert_eq!(told.len(), 1, "{row}: {told:?}");
            assert_eq!(told[0]["notice"], text.as_str(), "{row}");
            assert_eq!(
                told[0]["action"],
                format!("{fate:?}").to_lowercase(),
                "{row}"
            );
            assert!(
                told[0]["types"]
                    .as_array()
                    .unwrap()
                    .contains(&json!(probe.kind)),
                "{row}: {told:?}"
            );
        }
    }
    // The recipient is never told about the sender's moderation.
    assert!(
        moderation_events(d, &p.provider, &client_id)
            .await
            .is_empty(),
        "{row}"
    );

    // Operators: the original of what was masked, blocked or flagged.
    let flags = d.get("/v1/admin/flags?limit=500", &operator().token).await;
    flags.expect(200);
    let kept: Vec<&Value> = flags
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["client_id"] == client_id.as_str())
        .collect();
    if review || matches!(fate, Fate::Mask | Fate::Block) {
        assert_eq!(kept.len(), 1, "{row}: {kept:?}");
        assert_eq!(kept[0]["original"], probe.text, "{row}");
        assert_eq!(kept[0]["review"], review, "{row}");
        assert_eq!(
            kept[0]["action"],
            format!("{fate:?}").to_lowercase(),
            "{row}"
        );
    } else {
        assert!(kept.is_empty(), "{row}: {kept:?}");
    }
}

/// The shipped policy before a booking. Breakage caught: any row of
/// rules/contact.yaml's `pre_booking` not applied as written, a wrong notice.
#[tokio::test]
async fn before_booking_concrete_details_are_blocked_and_flagged_and_proposals_masked() {
    let d = Daemon::start().await;
    for probe in [
        PHONE_PROBE,
        EMAIL_PROBE,
        URL_PROBE,
        SOCIAL_PROBE,
        PAYMENT_PROBE,
        SPELLED_PROBE,
        LOOKALIKE_PROBE,
    ] {
        expect_fate(&d, None, probe, Fate::Block, true).await;
    }
    expect_fate(&d, None, APP_PROBE, Fate::Mask, false).await;
    expect_fate(&d, None, LOW_PROBE, Fate::Mask, false).await;

    // Counted under the names the API and the policy use.
    for (series, count) in [
        ("parleyd_contact_actions_total{action=\"block\"}", 7.0),
        ("parleyd_contact_actions_total{action=\"mask\"}", 2.0),
        ("parleyd_contact_detections_total{type=\"phone\"}", 4.0),
        (
            "parleyd_contact_detections_total{type=\"messaging_app\"}",
            1.0,
        ),
        ("parleyd_contact_detections_total{type=\"payment\"}", 1.0),
    ] {
        assert_eq!(d.metric(series).await, count, "{series}");
    }
}

/// The shipped policy at every booking stage. Breakage caught: the stage not
/// passed to the policy, a stage's `types` not beating the phase's `risk`,
/// `review`'s payment block missing, `cancelled` (no rule of its own) not
/// falling back to the phase rules.
#[tokio::test]
async fn after_booking_each_stage_applies_its_own_rules() {
    let d = Daemon::start().await;
    for stage in ["confirmed", "preparation", "active", "completed", "review"] {
        let stage = Some(stage);
        expect_fate(&d, stage, PHONE_PROBE, Fate::Allow, false).await;
        expect_fate(&d, stage, EMAIL_PROBE, Fate::Allow, false).await;
        expect_fate(&d, stage, LOW_PROBE, Fate::Allow, false).await;
        for probe in [URL_PROBE, SOCIAL_PROBE, APP_PROBE] {
            expect_fate(&d, stage, probe, Fate::Mask, false).await;
        }
    }
    for stage in ["confirmed", "preparation", "active", "completed"] {
        expect_fate(&d, Some(stage), PAYMENT_PROBE, Fate::Mask, false).await;
    }
    expect_fate(&d, Some("review"), PAYMENT_PROBE, Fate::Block, true).await;
    let all = [
        PHONE_PROBE,
        EMAIL_PROBE,
        URL_PROBE,
        SOCIAL_PROBE,
        APP_PROBE,
        PAYMENT_PROBE,
        LOW_PROBE,
    ];
    for probe in all {
        expect_fate(&d, Some("cancelled"), probe, Fate::Mask, false).await;
    }

    // Only the details whose own rule masks are hidden: the phone stays.
    let p = conversation_at(&d, "mixed", Some("confirmed")).await;
    let sent = d
        .send(
            &p.customer,
            &p.conversation,
            "mixed-1",
            "call 415 867 2671 or see https://carlasfotos.com/album",
        )
        .await;
    sent.expect(201);
    let content = sent.body["message"]["content"].as_str().unwrap();
    assert!(content.contains("415 867 2671"), "{content}");
    assert!(!content.contains("carlasfotos"), "{content}");
}

/// The shipped policy with `(old, new)` replacements (each made once), for a
/// daemon whose rules directory is `dir`.
fn policy_with(dir: &std::path::Path, edits: &[(&str, &str)]) -> Vec<(&'static str, String)> {
    let mut policy =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/contact.yaml"))
            .unwrap();
    for (old, new) in edits {
        assert!(policy.contains(old), "the shipped policy has no {old:?}");
        policy = policy.replacen(old, new, 1);
    }
    std::fs::write(dir.join("contact.yaml"), policy).unwrap();
    vec![("rules_dir", dir.display().to_string())]
}

/// `warn` and `flag` on actions the shipped policy does not combine them
/// with. Breakage caught: warn blocking or masking, no reminder, flag ignored
/// unless the message is blocked.
#[tokio::test]
async fn warn_delivers_with_a_reminder_and_flag_queues_for_review_whatever_the_action() {
    let rules = tempfile::tempdir().unwrap();
    let d = Daemon::with_config(policy_with(
        rules.path(),
        &[
            (
                "high: { action: block, flag: true }",
                "high: { action: mask, flag: true }",
            ),
            (
                "medium: { action: mask }",
                "medium: { action: warn, flag: true }",
            ),
            ("low: { action: mask }", "low: { action: warn }"),
        ],
    ))
    .await;
    expect_fate(&d, None, PHONE_PROBE, Fate::Mask, true).await;
    expect_fate(&d, None, APP_PROBE, Fate::Warn, true).await;
    expect_fate(&d, None, LOW_PROBE, Fate::Warn, false).await;
}

/// `contact.platform_domains` and the listing's own address. Breakage
/// caught: the configured domains ignored (or the built-in default used),
/// the listing's address taken for a phone number.
#[tokio::test]
async fn platform_links_and_the_listings_own_address_are_not_contact_details() {
    let d = Daemon::with_config(vec![("platform_domains", "[kayak-market.test]".to_owned())]).await;
    let platform = Probe {
        kind: "url",
        text: "book it at https://www.kayak-market.test/listings/42 or ask help@kayak-market.test",
        detail: "",
        named: "",
    };
    expect_fate(&d, None, platform, Fate::Allow, false).await;
    // The shipped config's domain is not the platform's here: a link like any other.
    let elsewhere = Probe {
        text: "book it at https://www.example-market.com/listings/42",
        ..URL_PROBE
    };
    expect_fate(&d, None, elsewhere, Fate::Block, true).await;

    let p = pair(&d).await;
    let address = "Rua das Flores 1234 567 890, Lisboa";
    let meet = format!("meet me at {address}");
    let analyzed = d
        .post(
            "/v1/contact/analyze",
            &p.customer.token,
            json!({"content": meet, "conversation_id": p.conversation}),
        )
        .await;
    assert_eq!(analyzed.body["action"], "mask", "{}", analyzed.body);
    d.put(
        &format!("/v1/listings/{}", p.listing_id),
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "price": 80.0, "currency": "EUR",
               "provider_id": p.provider.id, "address": address}),
    )
    .await
    .expect(200);
    let sent = d.send(&p.customer, &p.conversation, "addr-1", &meet).await;
    sent.expect(201);
    assert!(
        sent.body["message"]["moderation"].is_null(),
        "{}",
        sent.body
    );
    assert_eq!(sent.body["message"]["content"], meet.as_str());
}

/// `GET /v1/admin/flags?after=ID&limit=N` pages through the operators'
/// records in order. Breakage caught: `after` ignored or inclusive, a limit
/// outside 1-500 clamped instead of refused.
#[tokio::test]
async fn operators_page_through_flagged_messages() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    for i in 0..3 {
        let text = format!("{PHONE} ({i})");
        customer_sends(&d, &p, &format!("f-{i}"), &text)
            .await
            .expect_error(422);
    }
    let page = |query: String| {
        let d = &d;
        async move {
            let reply = d
                .get(&format!("/v1/admin/flags?{query}"), &operator().token)
                .await;
            reply.expect(200);
            reply.body.as_array().unwrap().clone()
        }
    };
    let first = page("limit=2".into()).await;
    let ids: Vec<&Value> = first.iter().map(|f| &f["client_id"]).collect();
    assert_eq!(ids, [&json!("f-0"), &json!("f-1")]);
    let after = first[1]["id"].as_str().unwrap();
    let rest = page(format!("after={after}&limit=2")).await;
    let ids: Vec<&Value> = rest.iter().map(|f| &f["client_id"]).collect();
    assert_eq!(ids, [&json!("f-2")]);
    assert!(page(format!("after={}", rest[0]["id"].as_str().unwrap()))
        .await
        .is_empty());
    for limit in ["0", "501"] {
        d.get(&format!("/v1/admin/flags?limit={limit}"), &operator().token)
            .await
            .expect_error(422);
    }
}
