//! Conversation metrics end to end: a daemon on the manual clock running the
//! shipped rules (so automated messages are part of the story), a scripted
//! few days of conversations, and `GET /v1/conversations/{id}/metrics`
//! checked against figures the test computes from the messages themselves;
//! then a restart and `parleyd analytics rebuild` must give the same numbers.

mod common;

use common::*;
use serde_json::{json, Value};

async fn metrics(d: &Daemon, who: &Person, conversation: &str) -> Value {
    let reply = d
        .get(
            &format!("/v1/conversations/{conversation}/metrics"),
            &who.token,
        )
        .await;
    reply.expect(200);
    reply.body
}

fn time(value: &Value) -> jiff::Timestamp {
    value
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {value}"))
        .parse()
        .unwrap()
}

async fn send_quick(d: &Daemon, who: &Person, conversation: &str, id: &str, text: &str, qr: &str) {
    d.post(
        &format!("/v1/conversations/{conversation}/messages"),
        &who.token,
        json!({"client_id": id, "content": text, "quick_reply_id": qr}),
    )
    .await
    .expect(201);
}

/// A `quick_reply_id` that is no id is refused, and nothing is stored.
#[tokio::test]
async fn a_malformed_quick_reply_id_is_refused() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let reply = d
        .post(
            &format!("/v1/conversations/{}/messages", p.conversation),
            &p.customer.token,
            json!({"client_id": "c-1", "content": "Hi", "quick_reply_id": "not an id"}),
        )
        .await;
    assert_eq!(reply.expect_error(422), "invalid", "{:?}", reply.body);
    let message = reply.body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("quick_reply_id"), "{message}");
    assert!(d.messages(&p.customer, &p.conversation).await.is_empty());
    d.stop().await;
}

/// The figures of one conversation, computed from its messages by the
/// definitions in README.md ("Conversation metrics"), independently of the
/// daemon's fold.
struct Expected {
    total: u64,
    provider: u64,
    customer: u64,
    automated: u64,
    quick: u64,
    chars: u64,
    responses: Vec<i64>,
    answered: u64,
    to_customer: (u64, u64),
    to_provider: (u64, u64),
}

fn expected(messages: &[Value], customer: &str, provider: &str) -> Expected {
    let mut e = Expected {
        total: 0,
        provider: 0,
        customer: 0,
        automated: 0,
        quick: 0,
        chars: 0,
        responses: Vec::new(),
        answered: 0,
        to_customer: (0, 0),
        to_provider: (0, 0),
    };
    let mut waiting: Option<(jiff::Timestamp, u64)> = None;
    for m in messages {
        e.total += 1;
        let sender = m["sender_id"].as_str().unwrap();
        let at = time(&m["created_at"]);
        let recipient = if m["type"] != "text" {
            e.automated += 1;
            m["automation"]["recipient_id"].as_str().unwrap().to_owned()
        } else {
            e.chars += m["content"].as_str().unwrap().chars().count() as u64;
            e.quick += u64::from(m.get("quick_reply_id").is_some());
            if sender == customer {
                e.customer += 1;
                let (since, n) = waiting.unwrap_or((at, 0));
                waiting = Some((since, n + 1));
                provider.to_owned()
            } else {
                e.provider += 1;
                if let Some((since, n)) = waiting.take() {
                    e.responses.push(at.duration_since(since).as_secs());
                    e.answered += n;
                }
                customer.to_owned()
            }
        };
        let read = u64::from(!m["read_at"].is_null());
        let tally = if recipient == customer {
            &mut e.to_customer
        } else {
            &mut e.to_provider
        };
        tally.0 += 1;
        tally.1 += read;
    }
    e
}

fn rate(part: u64, whole: u64) -> Value {
    if whole == 0 {
        Value::Null
    } else {
        json!(part as f64 / whole as f64)
    }
}

fn check(m: &Value, e: &Expected) {
    assert_eq!(m["messages"]["total"], e.total, "{m}");
    assert_eq!(m["messages"]["provider"], e.provider, "{m}");
    assert_eq!(m["messages"]["customer"], e.customer, "{m}");
    assert_eq!(m["messages"]["automated"], e.automated, "{m}");
    let people = e.provider + e.customer;
    assert_eq!(m["quick_replies"]["part"], e.quick, "{m}");
    assert_eq!(m["quick_replies"]["rate"], rate(e.quick, people), "{m}");
    assert_eq!(
        m["average_message_length"],
        json!(e.chars as f64 / people as f64),
        "{m}"
    );
    assert_eq!(
        m["first_response_seconds"],
        json!(e.responses.first()),
        "{m}"
    );
    assert_eq!(m["response_time"]["count"], e.responses.len(), "{m}");
    if !e.responses.is_empty() {
        let sum: i64 = e.responses.iter().sum();
        assert_eq!(
            m["response_time"]["average_seconds"],
            json!(sum as f64 / e.responses.len() as f64),
            "{m}"
        );
    }
    assert_eq!(m["reply_rate"]["part"], e.answered, "{m}");
    assert_eq!(m["reply_rate"]["rate"], rate(e.answered, e.customer), "{m}");
    let (c, p) = (e.to_customer, e.to_provider);
    assert_eq!(m["read_rate"]["customer"]["whole"], c.0, "{m}");
    assert_eq!(m["read_rate"]["customer"]["part"], c.1, "{m}");
    assert_eq!(m["read_rate"]["provider"]["whole"], p.0, "{m}");
    assert_eq!(m["read_rate"]["provider"]["part"], p.1, "{m}");
    assert_eq!(
        m["read_rate"]["overall"]["rate"],
        rate(c.1 + p.1, c.0 + p.0),
        "{m}"
    );
}

/// A few simulated days of two conversations: a view before the inquiry,
/// messages both ways and automated ones, reads, a quick reply, a price, a
/// booking and its completion; and an inquiry nobody answers. The metrics
/// match the test's own figures, survive a restart, and `parleyd analytics
/// rebuild` (daemon stopped) reproduces every one of them.
#[tokio::test]
async fn metrics_match_the_conversation_survive_a_restart_and_a_rebuild() {
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    copy_rules(rules.path());
    let d = automation_on(data.path(), rules.path()).await;
    let t0 = pin_to_midsummer(&d).await;
    let (carla, pablo) = (
        Person::new("cust-1", "customer"),
        Person::new("prov-1", "provider"),
    );
    let dora = Person::new("cust-2", "customer");
    for (who, name) in [(&carla, "Carla"), (&pablo, "Pablo"), (&dora, "Dora")] {
        d.put(
            &format!("/v1/users/{}", who.id),
            SERVICE_KEY,
            json!({"name": name, "timezone": "Europe/Paris"}),
        )
        .await
        .expect(200);
    }
    d.put(
        "/v1/listings/kayak",
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "price": 80.0, "currency": "EUR",
               "provider_id": pablo.id}),
    )
    .await
    .expect(200);
    // Carla looks at the listing an hour before she asks.
    d.post(
        "/v1/signals",
        SERVICE_KEY,
        json!({"type": "listing_viewed", "user_id": carla.id, "listing_id": "kayak"}),
    )
    .await
    .expect(202);
    advance(&d, "1h").await;
    let c = d.open(&carla, "kayak").await;
    d.send(&carla, &c, "c-1", "Hi! Is Friday evening free?")
        .await
        .expect(201);
    advance(&d, "3h").await;
    d.send(&carla, &c, "c-2", "Hello? Two people.")
        .await
        .expect(201);
    let quoted_at = advance(&d, "1h").await;
    d.send(&pablo, &c, "p-1", "Yes! It's €80 per person.")
        .await
        .expect(201);
    advance(&d, "1h").await;
    settled(&d).await;
    let last = d.messages(&carla, &c).await.len() as u64;
    d.read(&carla, &c, last).await.expect(200);
    advance(&d, "23h").await;
    send_quick(&d, &carla, &c, "c-3", "Great, we'll book it.", "qr-book").await;
    advance(&d, "30m").await;
    // Over the stream this time.
    let mut ws = d.ws(&pablo, None).await;
    ws.send_json(
        json!({"type": "send", "conversation_id": c, "client_id": "p-2",
        "content": "Thanks, see you Friday!", "quick_reply_id": "qr-thanks"}),
    )
    .await;
    let ack = ws.answer("p-2").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["message"]["quick_reply_id"], "qr-thanks", "{ack}");
    ws.close().await;
    settled(&d).await;
    let last = d.messages(&pablo, &c).await.len() as u64;
    d.read(&pablo, &c, last).await.expect(200);
    let booked_at = advance(&d, "1h").await;
    let booking = book(&d, &c, "2030-07-05T17:00:00Z", "2030-07-05T19:00:00Z").await;
    // Dora asks on the second day; nobody answers.
    let d_conv = d.open(&dora, "kayak").await;
    d.send(&dora, &d_conv, "d-1", "Do you rent single kayaks?")
        .await
        .expect(201);
    let completed_at = advance(&d, "48h").await;
    d.patch(
        &format!("/v1/bookings/{booking}"),
        SERVICE_KEY,
        json!({"stage": "completed"}),
    )
    .await
    .expect(200);
    advance(&d, "2h").await;
    settled(&d).await;

    let messages = d.messages(&carla, &c).await;
    let e = expected(&messages, &carla.id, &pablo.id);
    assert!(
        e.automated > 0,
        "the shipped rules sent nothing: {messages:?}"
    );
    assert_eq!((e.customer, e.provider, e.quick), (3, 2, 2));
    assert_eq!(e.responses, [4 * 3600, 1800]);
    let m = metrics(&d, &carla, &c).await;
    check(&m, &e);
    assert_eq!(m["response_time"]["median_seconds"], json!(8100.0), "{m}");
    assert_eq!(
        time(&m["first_message_at"]),
        time(&messages[0]["created_at"])
    );
    assert_eq!(
        time(&m["last_message_at"]),
        time(&messages[messages.len() - 1]["created_at"])
    );
    let funnel = &m["funnel"];
    for stage in ["viewed", "messaged", "quoted", "booked"] {
        assert_eq!(funnel[stage], true, "{stage}: {m}");
    }
    assert_eq!(time(&funnel["viewed_at"]), t0);
    assert_eq!(time(&funnel["quoted_at"]), quoted_at);
    assert_eq!(time(&m["booking_created_at"]), booked_at);
    assert_eq!(time(&m["service_completed_at"]), completed_at);
    assert_eq!(m["booking_id"], booking.as_str());

    let unanswered = metrics(&d, &dora, &d_conv).await;
    let dora_messages = d.messages(&dora, &d_conv).await;
    check(&unanswered, &expected(&dora_messages, &dora.id, &pablo.id));
    assert_eq!(unanswered["reply_rate"]["rate"], 0.0, "{unanswered}");
    assert!(unanswered["first_response_seconds"].is_null());
    assert_eq!(unanswered["funnel"]["viewed"], false, "{unanswered}");
    assert_eq!(unanswered["funnel"]["booked"], false, "{unanswered}");

    // The provider and operators see the same; another person nothing.
    assert_eq!(metrics(&d, &pablo, &c).await, m);
    assert_eq!(metrics(&d, &operator(), &c).await, m);
    d.get(&format!("/v1/conversations/{c}/metrics"), &dora.token)
        .await
        .expect_error(404);

    // A restart keeps them.
    d.stop().await;
    let d = automation_on(data.path(), rules.path()).await;
    settled(&d).await;
    assert_eq!(metrics(&d, &carla, &c).await, m);
    assert_eq!(metrics(&d, &dora, &d_conv).await, unanswered);
    d.stop().await;

    // A rebuild from the stored history gives every figure back.
    let stdout = rebuild_analytics(data.path());
    assert!(stdout.contains("2 conversations"), "{stdout}");
    let d = automation_on(data.path(), rules.path()).await;
    settled(&d).await;
    assert_eq!(metrics(&d, &carla, &c).await, m);
    assert_eq!(metrics(&d, &dora, &d_conv).await, unanswered);
    // And the live path goes on from there, without counting anything twice.
    d.send(&dora, &d_conv, "d-2", "Anyone?").await.expect(201);
    settled(&d).await;
    let after = metrics(&d, &dora, &d_conv).await;
    let dora_messages = d.messages(&dora, &d_conv).await;
    check(&after, &expected(&dora_messages, &dora.id, &pablo.id));
    d.stop().await;
}

/// Rules failing on an event never lose its analytics, and do not count it
/// twice: the event is tried until it is dead-lettered, then re-driven once
/// the rules are fixed; its message counts once throughout.
#[tokio::test]
async fn an_event_the_rules_fail_on_counts_once_through_retries_and_a_redrive() {
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    copy_rules(rules.path());
    let inquiry = rules.path().join("rules/inquiry.yaml");
    let shipped = std::fs::read_to_string(&inquiry).unwrap();
    let from = "    trigger: inquiry_received\n";
    assert!(shipped.contains(from));
    std::fs::write(
        &inquiry,
        shipped.replacen(from, &format!("{from}    when: 'boom()'\n"), 1),
    )
    .unwrap();
    let d = automation_on(data.path(), rules.path()).await;
    d.expect_log_errors("Function not found: boom");
    d.expect_log_errors("moved to the dead-letter list");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);
    let dead = guard("the event to be dead-lettered", async {
        loop {
            let reply = d.get("/v1/admin/pipeline/dead", &operator().token).await;
            let dead = reply.body.as_array().cloned().unwrap_or_default();
            if !dead.is_empty() {
                return dead;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(dead[0]["attempts"], 3, "{dead:?}");
    settled(&d).await;
    let m = metrics(&d, &p.customer, &p.conversation).await;
    assert_eq!(m["messages"]["customer"], 1, "{m}");
    assert_eq!(m["funnel"]["messaged"], true, "{m}");

    std::fs::write(&inquiry, &shipped).unwrap();
    rules_after(&d, |s| {
        s["version"].as_u64() > Some(1) && s["last_failure"].is_null()
    })
    .await;
    let id = dead[0]["id"].as_str().unwrap();
    d.post(
        &format!("/v1/admin/pipeline/dead/{id}/redrive"),
        &operator().token,
        json!({}),
    )
    .await
    .expect(200);
    settled(&d).await;
    let messages = d.messages(&p.customer, &p.conversation).await;
    assert!(
        messages.iter().any(|m| m["type"] != "text"),
        "the re-driven inquiry was acknowledged: {messages:?}"
    );
    let m = metrics(&d, &p.customer, &p.conversation).await;
    check(&m, &expected(&messages, &p.customer.id, &p.provider.id));
    assert_eq!(m["messages"]["customer"], 1, "{m}");
    d.stop().await;
}

/// Analytics kept by an older fold format (here: records the old fold did
/// not write, and its format key lowered or, as before formats, absent) are
/// rebuilt when the daemon starts, before it serves them; a start on current
/// analytics rebuilds nothing.
#[tokio::test]
async fn analytics_kept_by_an_older_format_are_rebuilt_at_start_once() {
    let data = tempfile::tempdir().unwrap();
    let rules = tempfile::tempdir().unwrap();
    copy_rules(rules.path());
    let d = automation_on(data.path(), rules.path()).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "Free on Friday?")
        .await
        .expect(201);
    advance(&d, "2h").await;
    d.send(&p.provider, &p.conversation, "p-1", "Yes!")
        .await
        .expect(201);
    settled(&d).await;
    let mut m = metrics(&d, &p.customer, &p.conversation).await;
    assert_eq!(m["first_response_seconds"], 7200, "{m}");
    d.stop().await;

    // `None`: a build from before formats were recorded; `Some(0)`: an older one.
    for old_format in [None, Some(0u64)] {
        {
            let db = sled::open(data.path()).unwrap();
            let meta = db.open_tree("analytics_meta").unwrap();
            match old_format {
                None => meta.remove("format").unwrap(),
                Some(v) => meta.insert("format", &v.to_be_bytes()).unwrap(),
            };
            // What the old fold did not keep.
            db.open_tree("analytics_conversations")
                .unwrap()
                .clear()
                .unwrap();
            db.flush().unwrap();
        }
        let d = automation_on(data.path(), rules.path()).await;
        let log = d.log();
        assert!(
            log.contains("rebuilding the analytics") && log.contains("analytics rebuilt"),
            "{old_format:?}: the start says it rebuilt the analytics:\n{log}"
        );
        assert_eq!(metrics(&d, &p.customer, &p.conversation).await, m);
        d.stop().await;

        let d = automation_on(data.path(), rules.path()).await;
        assert!(
            !d.log().contains("rebuilding the analytics"),
            "{old_format:?}: a second start rebuilds nothing:\n{}",
            d.log()
        );
        assert_eq!(metrics(&d, &p.customer, &p.conversation).await, m);
        // The live path goes on from the rebuilt figures (the manual clock
        // starts at the wall clock's time again: past the messages so far).
        advance(&d, "3h").await;
        let client_id = format!("c-2-{old_format:?}");
        d.send(&p.customer, &p.conversation, &client_id, "Great, booking.")
            .await
            .expect(201);
        settled(&d).await;
        let after = metrics(&d, &p.customer, &p.conversation).await;
        assert_eq!(
            after["messages"]["customer"],
            m["messages"]["customer"].as_u64().unwrap() + 1,
            "{after}"
        );
        assert_eq!(after["first_response_seconds"], 7200, "{after}");
        m = after;
        d.stop().await;
    }
}
