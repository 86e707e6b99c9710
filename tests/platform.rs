//! The platform view end to end (`GET /v1/admin/analytics`): a daemon on the
//! manual clock running the shipped rules (with the pre-booking `low` risk
//! warned instead of masked, so every action of the contact policy occurs),
//! three customers over two weeks, and the figures compared with what the
//! test computes itself from the messages, the send replies and its own
//! script (README.md, "Platform analytics"); then a restart and `parleyd
//! analytics rebuild` must give the same response.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{json, Value};

const PHONE: &str = "text me on 415 867 2671 and we skip the fee";
const APP: &str = "do you have WhatsApp? easier";
const LOW: &str = "4158672671";

fn time(value: &Value) -> jiff::Timestamp {
    value.as_str().unwrap().parse().unwrap()
}

fn day(at: jiff::Timestamp) -> String {
    at.in_tz("UTC").unwrap().date().to_string()
}

async fn analytics(d: &Daemon, query: &str) -> Value {
    let reply = d
        .get(&format!("/v1/admin/analytics{query}"), &operator().token)
        .await;
    reply.expect(200);
    reply.body
}

/// Every message of a conversation, both sides' (a step message to the
/// provider is not in the customer's list), by seq.
async fn all_messages(d: &Daemon, customer: &Person, provider: &Person, c: &str) -> Vec<Value> {
    let mut by_seq = BTreeMap::new();
    for who in [customer, provider] {
        for m in d.messages(who, c).await {
            by_seq.insert(m["seq"].as_u64().unwrap(), m);
        }
    }
    by_seq.into_values().collect()
}

/// What the test tallies of the contact policy from the send replies.
#[derive(Default)]
struct Contact {
    detections: u64,
    by_action: BTreeMap<String, u64>,
}

/// Sends and tallies what the contact policy did with the message.
async fn send(d: &Daemon, who: &Person, c: &str, id: &str, text: &str, contact: &mut Contact) {
    let reply = d.send(who, c, id, text).await;
    let action = if reply.status == 422 {
        assert_eq!(reply.expect_error(422), "blocked");
        Some("block".to_owned())
    } else {
        reply.expect(201);
        reply.body["message"]["moderation"]["action"]
            .as_str()
            .map(str::to_owned)
    };
    if let Some(action) = action {
        contact.detections += 1;
        *contact.by_action.entry(action).or_default() += 1;
    }
}

/// One conversation as the test scripted it.
struct Story {
    messages: Vec<Value>,
    customer: String,
    provider: String,
    booked_at: Option<jiff::Timestamp>,
    viewed_at: Option<jiff::Timestamp>,
}

/// Per step: sent, read, replied within 24 h, booked within 7 days.
type Steps = BTreeMap<(String, String), [u64; 4]>;

/// The figures README.md defines, from the stories alone.
fn expected(stories: &[Story], contact: &Contact) -> Value {
    let mut steps: Steps = BTreeMap::new();
    let (mut viewed, mut viewed_messaged) = (0, 0);
    let (mut messaged, mut quoted, mut booked, mut quoted_booked) = (0, 0, 0, 0);
    let mut first_responses: Vec<i64> = Vec::new();
    for s in stories {
        viewed += u64::from(s.viewed_at.is_some());
        let texts = |who: &String| -> Vec<&Value> {
            s.messages
                .iter()
                .filter(|m| m["type"] == "text" && m["sender_id"] == who.as_str())
                .collect()
        };
        let inquiry = texts(&s.customer).first().map(|m| time(&m["created_at"]));
        if let Some(inquiry) = inquiry {
            messaged += 1;
            viewed_messaged += u64::from(s.viewed_at.is_some_and(|v| v <= inquiry));
            let priced = texts(&s.provider)
                .into_iter()
                .any(|m| m["content"].as_str().unwrap().contains('€'));
            quoted += u64::from(priced);
            booked += u64::from(s.booked_at.is_some());
            quoted_booked += u64::from(priced && s.booked_at.is_some());
            if let Some(reply) = texts(&s.provider)
                .into_iter()
                .find(|m| time(&m["created_at"]) > inquiry)
            {
                first_responses.push(time(&reply["created_at"]).duration_since(inquiry).as_secs());
            }
        }
        // Last touch: the latest step message takes the addressee's next
        // message and the booking.
        let mut last: Option<(&Value, bool)> = None;
        let mut booking = s.booked_at;
        for m in &s.messages {
            let at = time(&m["created_at"]);
            if let Some(b) = booking.filter(|b| at >= *b) {
                if let Some((touch, _)) = last {
                    let days = b.duration_since(time(&touch["created_at"])).as_secs();
                    steps.get_mut(&key(touch)).unwrap()[3] += u64::from(days <= 7 * 86_400);
                }
                booking = None;
            }
            if m["type"] != "text" {
                let counts = steps.entry(key(m)).or_default();
                counts[0] += 1;
                counts[1] += u64::from(!m["read_at"].is_null());
                last = Some((m, false));
            } else if let Some((touch, replied)) = &mut last {
                if !*replied && m["sender_id"] == touch["automation"]["recipient_id"] {
                    *replied = true;
                    let secs = at.duration_since(time(&touch["created_at"])).as_secs();
                    steps.get_mut(&key(touch)).unwrap()[2] += u64::from(secs <= 24 * 3600);
                }
            }
        }
        if let (Some(b), Some((touch, _))) = (booking, last) {
            let days = b.duration_since(time(&touch["created_at"])).as_secs();
            steps.get_mut(&key(touch)).unwrap()[3] += u64::from(days <= 7 * 86_400);
        }
    }
    first_responses.sort_unstable();
    let minutes: Vec<i64> = first_responses.iter().map(|s| (s + 59) / 60).collect();
    let rank = |p: f64| {
        let n = minutes.len();
        (n > 0).then(|| minutes[((p * n as f64).ceil() as usize).max(1) - 1] * 60)
    };
    let bounds = [300, 900, 3_600, 10_800, 21_600, 43_200, 86_400];
    let mut buckets = [0u64; 8];
    for m in &minutes {
        buckets[bounds.iter().position(|b| m * 60 <= *b).unwrap_or(7)] += 1;
    }
    let share = |part: u64, whole: u64| {
        json!({"part": part, "whole": whole,
               "rate": (whole > 0).then(|| part as f64 / whole as f64)})
    };
    let action = |a: &str| contact.by_action.get(a).copied().unwrap_or(0);
    json!({
        "funnel": {
            "viewed": viewed, "messaged": messaged, "quoted": quoted, "booked": booked,
            "viewed_to_messaged": share(viewed_messaged, viewed),
            "messaged_to_quoted": share(quoted, messaged),
            "quoted_to_booked": share(quoted_booked, quoted),
            "messaged_to_booked": share(booked, messaged),
        },
        "first_response": {
            "answered": minutes.len(),
            "buckets": buckets.iter().enumerate().map(|(i, count)| json!({
                "up_to_seconds": bounds.get(i), "count": count})).collect::<Vec<_>>(),
            "median_seconds": rank(0.5),
            "p90_seconds": rank(0.9),
        },
        "off_platform": {
            "detections": contact.detections,
            "allowed": action("allow"), "warned": action("warn"),
            "masked": action("mask"), "blocked": action("block"),
            "flagged": action("block"),
            "stopped": share(action("block") + action("mask"), contact.detections),
        },
        "steps": steps.into_iter().map(|((sequence, step), [sent, read, replied, booked])| json!({
            "sequence": sequence, "step": step, "experiment": null, "variant": null,
            "sent": sent, "read": share(read, sent), "replied": share(replied, sent),
            "booked": share(booked, sent),
        })).collect::<Vec<_>>(),
    })
}

fn key(m: &Value) -> (String, String) {
    let a = &m["automation"];
    (
        a["rule"].as_str().unwrap().to_owned(),
        a["step"].as_str().unwrap().to_owned(),
    )
}

/// The parts of the response the test computes (the period and windows
/// are checked apart).
fn figures(v: &Value) -> Value {
    json!({
        "funnel": v["funnel"], "first_response": v["first_response"],
        "off_platform": v["off_platform"], "steps": v["steps"],
    })
}

async fn register(d: &Daemon, people: &[&Person]) {
    for who in people {
        d.put(
            &format!("/v1/users/{}", who.id),
            SERVICE_KEY,
            json!({"name": who.id, "timezone": "Europe/Paris"}),
        )
        .await
        .expect(200);
    }
    d.put(
        "/v1/listings/kayak",
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "price": 80.0, "currency": "EUR",
               "provider_id": people[0].id}),
    )
    .await
    .expect(200);
}

async fn view(d: &Daemon, who: &Person) {
    d.post(
        "/v1/signals",
        SERVICE_KEY,
        json!({"type": "listing_viewed", "user_id": who.id, "listing_id": "kayak"}),
    )
    .await
    .expect(202);
}

/// `who` reads everything addressed to them so far.
async fn read_all(d: &Daemon, who: &Person, c: &str) {
    settled(d).await;
    let messages = d.messages(who, c).await;
    let last = messages.last().expect("a message")["seq"].as_u64().unwrap();
    d.read(who, c, last).await.expect(200);
}

/// Three customers of one provider over two weeks:
/// - Carla views, asks, reads the acknowledgement; the provider, reminded
///   4 h later, quotes within the hour (a reply inside 24 h); she books two
///   days later (inside the 7-day window);
/// - Dora asks without viewing: a phone number (blocked), WhatsApp (masked),
///   a bare number (warned); nobody answers; she replies 30 h after the last
///   nudge (outside 24 h) and books 10 days after it (outside the window);
///   once booked, her phone number is allowed or masked as the policy says;
/// - Emma views and does not write: the shipped rules open the
///   conversation with a question two hours later; she answers within the
///   hour and gets a quote.
///
/// The response matches the test's own figures, survives a restart, and
/// `parleyd analytics rebuild` gives it back.
#[tokio::test]
async fn the_platform_view_matches_the_conversations_survives_a_restart_and_a_rebuild() {
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    copy_rules(rules.path());
    let contact_rules = rules.path().join("rules/contact.yaml");
    let shipped = std::fs::read_to_string(&contact_rules).unwrap();
    let low = "      low: { action: mask }\n";
    assert!(shipped.contains(low));
    std::fs::write(
        &contact_rules,
        shipped.replacen(low, "      low: { action: warn }\n", 1),
    )
    .unwrap();
    let d = automation_on(data.path(), rules.path()).await;
    let t0 = pin_to_midsummer(&d).await;
    let pablo = Person::new("prov-1", "provider");
    let (carla, dora, emma) = (
        Person::new("cust-1", "customer"),
        Person::new("cust-2", "customer"),
        Person::new("cust-3", "customer"),
    );
    register(&d, &[&pablo, &carla, &dora, &emma]).await;
    let mut contact = Contact::default();

    view(&d, &carla).await;
    advance(&d, "1h").await;
    let carla_c = d.open(&carla, "kayak").await;
    send(
        &d,
        &carla,
        &carla_c,
        "c-1",
        "Hi! Is Friday free?",
        &mut contact,
    )
    .await;
    advance(&d, "30m").await;
    read_all(&d, &carla, &carla_c).await;
    let dora_c = d.open(&dora, "kayak").await;
    send(&d, &dora, &dora_c, "d-1", PHONE, &mut contact).await;
    send(&d, &dora, &dora_c, "d-2", APP, &mut contact).await;
    send(&d, &dora, &dora_c, "d-3", LOW, &mut contact).await;
    view(&d, &emma).await;
    advance(&d, "4h").await;
    settled(&d).await;
    send(
        &d,
        &pablo,
        &carla_c,
        "p-1",
        "Yes! €80 per person.",
        &mut contact,
    )
    .await;
    advance(&d, "1h").await;
    settled(&d).await;
    let emma_c = d.get("/v1/conversations", &emma.token).await.body[0]["id"]
        .as_str()
        .expect("the shipped rules opened Emma's conversation")
        .to_owned();
    send(
        &d,
        &emma,
        &emma_c,
        "e-1",
        "Yes, how long is the tour?",
        &mut contact,
    )
    .await;
    advance(&d, "30m").await;
    send(&d, &pablo, &emma_c, "p-2", "Two hours, €60.", &mut contact).await;
    advance(&d, "40h").await;
    let carla_booked = advance(&d, "1h").await;
    book(&d, &carla_c, "2030-08-05T17:00:00Z", "2030-08-05T19:00:00Z").await;
    // Dora's nudges run their course (the last after 72 h).
    advance(&d, "30h").await;
    settled(&d).await;
    let dora_last = all_messages(&d, &dora, &pablo, &dora_c)
        .await
        .into_iter()
        .rfind(|m| m["type"] != "text")
        .expect("Dora was nudged");
    let last_at = time(&dora_last["created_at"]);
    let now = advance(&d, "1s").await;
    let wait = 30 * 3600 - now.duration_since(last_at).as_secs();
    assert!(wait > 0, "the last nudge is recent: {dora_last}");
    advance(&d, &format!("{wait}s")).await;
    read_all(&d, &dora, &dora_c).await;
    send(&d, &dora, &dora_c, "d-4", "Still there?", &mut contact).await;
    let wait = 10 * 86_400 - 30 * 3600;
    let dora_booked = advance(&d, &format!("{wait}s")).await;
    book(&d, &dora_c, "2030-08-09T17:00:00Z", "2030-08-09T19:00:00Z").await;
    advance(&d, "1h").await;
    send(&d, &dora, &dora_c, "d-5", PHONE, &mut contact).await;
    advance(&d, "1h").await;
    settled(&d).await;

    let mut stories = Vec::new();
    for (who, c, booked_at, viewed_at) in [
        (&carla, &carla_c, Some(carla_booked), Some(t0)),
        (&dora, &dora_c, Some(dora_booked), None),
        (
            &emma,
            &emma_c,
            None,
            Some(t0 + jiff::SignedDuration::from_mins(90)),
        ),
    ] {
        stories.push(Story {
            messages: all_messages(&d, who, &pablo, c).await,
            customer: who.id.clone(),
            provider: pablo.id.clone(),
            booked_at,
            viewed_at,
        });
    }
    let e = expected(&stories, &contact);
    // The story holds what it says it does.
    assert_eq!(e["off_platform"]["blocked"], 1, "{e}");
    for action in ["warned", "masked"] {
        assert!(
            e["off_platform"][action].as_u64() >= Some(1),
            "{action}: {e}"
        );
    }
    let steps = e["steps"].as_array().unwrap();
    let total = |field: &str| -> u64 {
        steps
            .iter()
            .map(|s| s[field]["part"].as_u64().unwrap())
            .sum()
    };
    let sent: u64 = steps.iter().map(|s| s["sent"].as_u64().unwrap()).sum();
    assert!(total("replied") >= 2, "{e}");
    assert!(total("read") >= 1 && total("booked") == 1, "{e}");
    let replies = stories
        .iter()
        .flat_map(|s| &s.messages)
        .filter(|m| m["type"] == "text");
    assert!(sent > total("replied") && replies.count() > 0, "{e}");

    let period = format!(
        "?from={}&to={}",
        day(t0),
        day(now + jiff::SignedDuration::from_hours(24 * 12))
    );
    let v = analytics(&d, &period).await;
    assert_eq!(figures(&v), e, "\n got: {v:#}\nwant: {e:#}");
    assert_eq!(
        (
            v["zone"].as_str(),
            v["reply_window_hours"].as_u64(),
            v["attribution_days"].as_u64()
        ),
        (Some("UTC"), Some(24), Some(7))
    );
    // The day before it all: nothing.
    let before = day(t0 - jiff::SignedDuration::from_hours(24));
    let empty = analytics(&d, &format!("?from={before}&to={before}")).await;
    assert_eq!(empty["funnel"]["messaged"], 0, "{empty}");
    assert_eq!(empty["steps"], json!([]), "{empty}");
    assert_eq!(empty["off_platform"]["detections"], 0, "{empty}");

    d.stop().await;
    let d = automation_on(data.path(), rules.path()).await;
    settled(&d).await;
    assert_eq!(analytics(&d, &period).await, v, "after a restart");
    d.stop().await;

    rebuild_analytics(data.path());
    let d = automation_on(data.path(), rules.path()).await;
    settled(&d).await;
    assert_eq!(analytics(&d, &period).await, v, "after a rebuild");
    d.stop().await;
}

/// Bad periods get a clear 400; only operators may look.
#[tokio::test]
async fn bad_periods_are_refused_and_only_operators_see_the_platform() {
    let d = Daemon::start().await;
    let ops = operator();
    for (query, says) in [
        ("?from=2030-07-02&to=2030-07-01", "after"),
        ("?from=2030-01-01&to=2031-06-01", "366"),
        ("?from=1%20July", "date"),
        ("?to=2030-02-30", "date"),
    ] {
        let reply = d
            .get(&format!("/v1/admin/analytics{query}"), &ops.token)
            .await;
        assert_eq!(
            reply.expect_error(400),
            "bad_request",
            "{query}: {:?}",
            reply.body
        );
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says), "{query}: {message}");
    }
    let reply = d
        .get("/v1/admin/analytics?since=2030-07-01", &ops.token)
        .await;
    reply.expect(400);
    let p = pair(&d).await;
    d.get("/v1/admin/analytics", &p.customer.token)
        .await
        .expect_error(403);
    let today = analytics(&d, "").await;
    assert_eq!(today["funnel"]["messaged"], 0, "{today}");
    d.stop().await;
}
