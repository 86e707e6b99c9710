//! Customers and providers talking: stream and HTTP sends, long-poll, idempotent
//! retries, read receipts, bookings and signals.

mod common;

use common::*;
use serde_json::{json, Value};

const MESSAGE_FIELDS: [&str; 10] = [
    "id",
    "seq",
    "conversation_id",
    "sender_id",
    "client_id",
    "content",
    "type",
    "status",
    "created_at",
    "read_at",
];

fn assert_message_shape(m: &Value) {
    for field in MESSAGE_FIELDS {
        assert!(m.get(field).is_some(), "message lacks {field}: {m}");
    }
}

#[tokio::test]
async fn customer_and_provider_converse_over_the_stream() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;

    let turns = [
        (
            &p.customer,
            "c-1",
            "Hi! Is the tour on Saturday still open?",
        ),
        (&p.provider, "p-1", "Yes, two seats left."),
        (&p.customer, "c-2", "Great, I'll book."),
    ];
    for (i, (who, client_id, text)) in turns.into_iter().enumerate() {
        let seq = i as u64 + 1;
        let from_customer = who.id == p.customer.id;
        let (me, other) = if from_customer {
            (&mut customer, &mut provider)
        } else {
            (&mut provider, &mut customer)
        };
        let ack = me.send_acked(&p.conversation, client_id, text).await;
        let stored = &ack["message"];
        assert_message_shape(stored);
        assert_eq!(stored["seq"], seq, "{ack}");
        assert_eq!(stored["sender_id"], who.id.as_str());
        assert_eq!(stored["client_id"], client_id);
        assert_eq!(stored["content"], text);
        assert_eq!(stored["conversation_id"], p.conversation.as_str());
        assert_eq!(stored["type"], "text");
        assert_eq!(stored["status"], "sent");

        let received = other.message_event(seq).await;
        cursor(&received);
        assert_eq!(
            &received["message"], stored,
            "the recipient sees the stored message"
        );
        // The sender's own devices see it too.
        let echoed = me.message_event(seq).await;
        assert_eq!(&echoed["message"], stored);
    }

    let history = d.messages(&p.customer, &p.conversation).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(history[1]["sender_id"], p.provider.id.as_str());
    assert_eq!(history[1]["content"], "Yes, two seats left.");
    assert_eq!(d.messages(&p.provider, &p.conversation).await, history);
    let listed = d.listed(&p.provider, &p.conversation).await;
    assert_eq!(listed["last_seq"], 3);
    assert_eq!(listed["last_message"]["content"], "Great, I'll book.");
    assert_eq!(listed["unread_count"], 2);
    assert_eq!(listed["phase"], "pre_booking");
    assert_eq!(listed["listing"]["title"], "Sunset kayak tour");
    d.stop().await;
}

#[tokio::test]
async fn http_send_reaches_the_stream_and_long_poll() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut provider = d.ws(&p.provider, None).await;

    let sent = d
        .send(&p.customer, &p.conversation, "c-1", "Hello there")
        .await;
    sent.expect(201);
    assert_eq!(sent.body["message"]["seq"], 1);
    assert_message_shape(&sent.body["message"]);

    let live = provider.message_event(1).await;
    assert_eq!(live["message"], sent.body["message"]);

    // Long-poll reads the same log: the conversation opening, then the message.
    let (events, head) = d.poll(&p.provider, 0, 0).await;
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["conversation", "message"]);
    assert_consecutive(&events, 1);
    assert_eq!(head, cursor(&events[1]));
    assert_eq!(
        cursor(&live),
        head,
        "stream and long-poll agree on the cursor"
    );
    assert_eq!(events[1]["message"], sent.body["message"]);

    // Nothing new: an empty answer that keeps the cursor.
    let (none, same) = d.poll(&p.provider, head, 0).await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(same, head);

    // A waiting long-poll answers with the event sent while it waits (the
    // token may also travel in the query string).
    let waiting = tokio::spawn({
        let (http, url) = (
            d.http.clone(),
            d.url(&format!(
                "/v1/events?since={head}&wait=30&token={}",
                p.provider.token
            )),
        );
        async move {
            let r = http.get(url).send().await.expect("long-poll");
            assert_eq!(r.status().as_u16(), 200);
            r.json::<Value>().await.expect("JSON")
        }
    });
    // Sent once the poll waits, so that the answer comes from the wake-up.
    d.metric_reaches("parleyd_long_polls_waiting", 1.0).await;
    d.send(&p.customer, &p.conversation, "c-2", "Are you there?")
        .await
        .expect(201);
    let answer = guard("the long-poll answer", waiting).await.unwrap();
    let events = answer["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{answer}");
    assert_eq!(events[0]["type"], "message");
    assert_eq!(events[0]["message"]["seq"], 2);
    assert_eq!(events[0]["message"]["content"], "Are you there?");
    assert_eq!(cursor(&events[0]), head + 1);
    assert_eq!(answer["cursor"], head + 1);
    d.stop().await;
}

#[tokio::test]
async fn a_client_id_is_stored_once_over_http_and_the_stream() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let path = format!("/v1/conversations/{}/messages", p.conversation);

    // HTTP, then HTTP again.
    let first = d
        .send(&p.customer, &p.conversation, "retry-1", "Hello")
        .await;
    first.expect(201);
    assert_eq!(first.body["created"], true);
    let again = d
        .send(&p.customer, &p.conversation, "retry-1", "Hello")
        .await;
    again.expect(200);
    assert_eq!(again.body["created"], false);
    assert_eq!(again.body["message"], first.body["message"]);

    // HTTP, then the stream.
    let mut ws = d.ws(&p.customer, None).await;
    ws.send_message(&p.conversation, "retry-1", "Hello").await;
    let ack = ws.answer("retry-1").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    assert_eq!(ack["message"], first.body["message"]);

    // The stream, then HTTP.
    let ack = ws.send_acked(&p.conversation, "retry-2", "Anyone?").await;
    assert_eq!(ack["message"]["seq"], 2);
    let over_http = d
        .post(
            &path,
            &p.customer.token,
            json!({"client_id": "retry-2", "content": "Anyone?"}),
        )
        .await;
    over_http.expect(200);
    assert_eq!(over_http.body["message"], ack["message"]);

    // A client_id is per sender: the provider may use the same one.
    let theirs = d
        .send(&p.provider, &p.conversation, "retry-1", "Yes!")
        .await;
    theirs.expect(201);
    assert_eq!(theirs.body["message"]["seq"], 3);
    assert_ne!(theirs.body["message"]["id"], first.body["message"]["id"]);

    let history = d.messages(&p.customer, &p.conversation).await;
    let summary: Vec<(u64, &str, &str)> = history
        .iter()
        .map(|m| {
            (
                m["seq"].as_u64().unwrap(),
                m["sender_id"].as_str().unwrap(),
                m["client_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "cust-1", "retry-1"),
            (2, "cust-1", "retry-2"),
            (3, "prov-1", "retry-1")
        ]
    );
    // The retries were not delivered again, nor counted unread again.
    let (events, _) = d.poll(&p.provider, 0, 0).await;
    assert_eq!(message_seqs(&events), [1, 2, 3]);
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        2
    );
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["unread_count"],
        1
    );
    d.stop().await;
}

#[tokio::test]
async fn a_client_id_reused_for_another_message_is_a_conflict_naming_its_conversation() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    // A second conversation of the same customer, about another listing.
    d.put(
        "/v1/listings/listing-2",
        SERVICE_KEY,
        json!({"title": "Night kayak tour", "provider_id": p.provider.id}),
    )
    .await
    .expect(200);
    let other = d
        .post(
            "/v1/conversations",
            &p.customer.token,
            json!({"listing_id": "listing-2"}),
        )
        .await;
    other.expect(201);
    let other = other.body["id"].as_str().unwrap().to_owned();

    let first = d.send(&p.customer, &p.conversation, "x1", "Hello").await;
    first.expect(201);
    // Another conversation, then other content: both refused, naming where
    // the client id lives; a true retry still gets the first answer.
    let elsewhere = d.send(&p.customer, &other, "x1", "Hello").await;
    assert_eq!(elsewhere.expect_error(409), "client_id_conflict");
    let message = elsewhere.body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&p.conversation), "{message}");
    let edited = d.send(&p.customer, &p.conversation, "x1", "Hello?").await;
    assert_eq!(edited.expect_error(409), "client_id_conflict");
    let retry = d.send(&p.customer, &p.conversation, "x1", "Hello").await;
    retry.expect(200);
    assert_eq!(retry.body["message"], first.body["message"]);

    // The same over the stream: an error frame with the code.
    let mut ws = d.ws(&p.customer, None).await;
    ws.send_message(&other, "x1", "Hello").await;
    let answer = ws.answer("x1").await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["error"]["code"], "client_id_conflict");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains(&p.conversation),
        "{answer}"
    );

    // A blocked message's client id follows the same rule (the shipped
    // pre-booking policy blocks a phone number).
    let blocked = d
        .send(&p.customer, &p.conversation, "b1", "call me on 0612345678")
        .await;
    blocked.expect_error(422);
    let blocked_again = d
        .send(&p.customer, &p.conversation, "b1", "call me on 0612345678")
        .await;
    assert_eq!(blocked_again.status, 422, "{:?}", blocked_again.body);
    let reused = d.send(&p.customer, &p.conversation, "b1", "see you").await;
    assert_eq!(reused.expect_error(409), "client_id_conflict");

    assert!(
        d.messages(&p.customer, &other).await.is_empty(),
        "nothing stored in B"
    );
    assert_eq!(d.messages(&p.customer, &p.conversation).await.len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn reading_sends_receipts_and_clears_unread_counts() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;
    for i in 1..=3 {
        d.send(
            &p.customer,
            &p.conversation,
            &format!("c-{i}"),
            &format!("question {i}"),
        )
        .await
        .expect(201);
    }
    d.send(&p.provider, &p.conversation, "p-1", "answer")
        .await
        .expect(201);
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        3
    );
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["unread_count"],
        1
    );

    // Over HTTP, up to seq 2.
    let read = d.read(&p.provider, &p.conversation, 2).await;
    read.expect(200);
    assert_eq!(read.body["last_read_seq"], 2);
    assert_eq!(read.body["unread_count"], 1);
    let receipt = customer.next_of("receipt").await;
    cursor(&receipt);
    assert_eq!(receipt["conversation_id"], p.conversation.as_str());
    assert_eq!(receipt["reader_id"], p.provider.id.as_str());
    assert_eq!(receipt["seq"], 2);
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        1
    );

    let history = d.messages(&p.customer, &p.conversation).await;
    for m in &history[..2] {
        assert_eq!(m["status"], "read", "{m}");
        assert!(m["read_at"].is_string(), "{m}");
    }
    assert_eq!(history[2]["status"], "sent");
    assert!(history[2]["read_at"].is_null());

    // Over the stream, the rest (seq 4 is the provider's own message).
    provider
        .send_json(json!({"type": "read", "conversation_id": p.conversation, "seq": 4}))
        .await;
    let receipt = customer.next_of("receipt").await;
    assert_eq!(receipt["reader_id"], p.provider.id.as_str());
    assert_eq!(receipt["seq"], 4);
    assert_eq!(receipt["unread_count"], 0);
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        0
    );
    // The customer's own count is untouched by the provider reading.
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["unread_count"],
        1
    );

    let history = d.messages(&p.provider, &p.conversation).await;
    for m in &history[..3] {
        assert_eq!(m["status"], "read", "{m}");
        assert!(m["read_at"].is_string(), "{m}");
    }
    assert_eq!(history[3]["sender_id"], p.provider.id.as_str());
    assert_eq!(
        history[3]["status"], "sent",
        "the reader's own message is not read by them"
    );
    assert!(history[3]["read_at"].is_null());
    d.stop().await;
}

#[tokio::test]
async fn a_booking_moves_the_conversation_to_post_booking() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;

    let booking = d
        .post(
            "/v1/bookings",
            SERVICE_KEY,
            json!({"id": "booking-1", "conversation_id": p.conversation,
                   "start": "2030-06-01T09:00:00Z", "end": "2030-06-01T12:00:00Z",
                   "stage": "confirmed"}),
        )
        .await;
    booking.expect(201);
    assert_eq!(booking.body["id"], "booking-1");
    assert_eq!(booking.body["conversation_id"], p.conversation.as_str());
    for ws in [&mut customer, &mut provider] {
        let event = ws.next_of("conversation").await;
        cursor(&event);
        assert_eq!(event["conversation"]["id"], p.conversation.as_str());
        assert_eq!(event["conversation"]["phase"], "post_booking");
        assert_eq!(event["conversation"]["stage"], "confirmed");
    }
    let seen = d
        .get(
            &format!("/v1/conversations/{}", p.conversation),
            &p.customer.token,
        )
        .await;
    seen.expect(200);
    assert_eq!(seen.body["phase"], "post_booking");
    assert_eq!(seen.body["stage"], "confirmed");
    assert_eq!(seen.body["booking_id"], "booking-1");

    let moved = d
        .patch(
            "/v1/bookings/booking-1",
            SERVICE_KEY,
            json!({"stage": "active"}),
        )
        .await;
    moved.expect(200);
    assert_eq!(moved.body["stage"], "active");
    for ws in [&mut customer, &mut provider] {
        let event = ws.next_of("conversation").await;
        assert_eq!(event["conversation"]["stage"], "active");
    }
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["stage"],
        "active"
    );

    // Invalid bookings.
    let booking_with = |body: Value| d.post("/v1/bookings", SERVICE_KEY, body);
    booking_with(json!({"conversation_id": p.conversation,
                        "start": "2030-06-01T12:00:00Z", "end": "2030-06-01T09:00:00Z"}))
    .await
    .expect_error(422);
    booking_with(json!({"conversation_id": p.conversation,
                        "start": "next tuesday", "end": "2030-06-01T09:00:00Z"}))
    .await
    .expect_error(422);
    booking_with(
        json!({"conversation_id": p.conversation, "stage": "teleported",
                        "start": "2030-06-01T09:00:00Z", "end": "2030-06-01T12:00:00Z"}),
    )
    .await
    .expect_error(422);
    booking_with(json!({"start": "2030-06-01T09:00:00Z", "end": "2030-06-01T12:00:00Z"}))
        .await
        .expect_error(422);
    d.patch(
        "/v1/bookings/booking-1",
        SERVICE_KEY,
        json!({"stage": "teleported"}),
    )
    .await
    .expect_error(422);
    d.patch(
        "/v1/bookings/no-such-booking",
        SERVICE_KEY,
        json!({"stage": "active"}),
    )
    .await
    .expect_error(404);
    // Only the service books.
    d.post(
        "/v1/bookings",
        &p.customer.token,
        json!({"conversation_id": p.conversation,
               "start": "2030-06-01T09:00:00Z", "end": "2030-06-01T12:00:00Z"}),
    )
    .await
    .expect_error(403);
    // Nothing invalid changed the conversation.
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["stage"],
        "active"
    );
    d.stop().await;
}

#[tokio::test]
async fn signals_are_accepted_and_invalid_ones_refused() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    for kind in [
        "listing_viewed",
        "checkout_abandoned",
        "provider_unavailable",
    ] {
        let r = d
            .post(
                "/v1/signals",
                SERVICE_KEY,
                json!({"type": kind, "user_id": p.customer.id, "listing_id": p.listing_id,
                       "data": {"source": "test"}}),
            )
            .await;
        r.expect(202);
        assert_eq!(r.body["type"], kind);
    }
    for bad in [
        json!({"type": "Listing Viewed"}),
        json!({"type": ""}),
        json!({"type": "listing_viewed", "data": [1, 2]}),
        json!({"type": "listing_viewed", "user_id": "has space"}),
        json!({"user_id": p.customer.id}),
    ] {
        let code = d
            .post("/v1/signals", SERVICE_KEY, bad.clone())
            .await
            .expect_error(422);
        assert_eq!(code, "invalid", "{bad}");
    }
    d.post(
        "/v1/signals",
        &p.customer.token,
        json!({"type": "listing_viewed"}),
    )
    .await
    .expect_error(403);
    d.stop().await;
}

#[tokio::test]
async fn delivery_receipts_reach_the_sender_and_reading_implies_delivery() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;
    for i in 1..=3 {
        customer
            .send_acked(&p.conversation, &format!("c-{i}"), "hello")
            .await;
    }
    // The provider's device confirms it received up to seq 2, over the stream.
    provider.message_event(2).await;
    provider
        .send_json(json!({"type": "delivered", "conversation_id": p.conversation, "seq": 2}))
        .await;
    let receipt = customer
        .next_where("a delivery receipt", |f| {
            f["type"] == "receipt" && f["status"] == "delivered"
        })
        .await;
    assert_eq!(receipt["recipient_id"], p.provider.id);
    assert_eq!(receipt["seq"], 2);
    let seen = d.listed(&p.customer, &p.conversation).await;
    assert_eq!(seen["peer_delivered_seq"], 2);
    assert_eq!(seen["peer_read_seq"], 0);

    // Going backwards changes nothing; reading up to 3 implies delivery up to 3.
    let reply = d
        .post(
            &format!("/v1/conversations/{}/delivered", p.conversation),
            &p.provider.token,
            json!({"seq": 1}),
        )
        .await;
    reply.expect(200);
    assert_eq!(reply.body["delivered_seq"], 2);
    d.read(&p.provider, &p.conversation, 3).await.expect(200);
    let seen = d.listed(&p.customer, &p.conversation).await;
    assert_eq!(seen["peer_delivered_seq"], 3);
    assert_eq!(seen["peer_read_seq"], 3);
    // A stranger cannot confirm anything.
    let stranger = Person::new("eve", "customer");
    d.post(
        &format!("/v1/conversations/{}/delivered", p.conversation),
        &stranger.token,
        json!({"seq": 1}),
    )
    .await
    .expect_error(404);
}

#[tokio::test]
async fn retried_backend_writes_with_an_idempotency_key_happen_once() {
    let d = Daemon::with_config(vec![("clock", "manual".to_owned())]).await;
    let p = pair(&d).await;
    let booking = format!(
        r#"{{"conversation_id": "{}", "start": "2031-05-01T09:00:00Z", "end": "2031-05-01T12:00:00Z"}}"#,
        p.conversation
    );
    // The same body, reformatted and reordered, is the same request.
    let reformatted = format!(
        r#"{{"end":"2031-05-01T12:00:00Z","start":"2031-05-01T09:00:00Z","conversation_id":"{}"}}"#,
        p.conversation
    );
    let (first, replayed) = d
        .call_keyed(
            Method::POST,
            "/v1/bookings",
            SERVICE_KEY,
            "book-1",
            &booking,
        )
        .await;
    first.expect(201);
    assert!(!replayed);
    let (again, replayed) = d
        .call_keyed(
            Method::POST,
            "/v1/bookings",
            SERVICE_KEY,
            "book-1",
            &reformatted,
        )
        .await;
    again.expect(201);
    assert!(replayed, "a retry is marked Idempotent-Replayed");
    assert_eq!(again.body, first.body);
    // One booking: the conversation moved to post-booking once.
    let (events, _) = d.poll(&p.customer, 0, 0).await;
    let moves = events
        .iter()
        .filter(|e| e["type"] == "conversation")
        .count();
    assert_eq!(moves, 2, "opened, then booked once: {events:#?}");

    // The same key with another request is refused, whatever the route.
    let other = booking.replace("12:00", "13:00");
    let (reused, _) = d
        .call_keyed(Method::POST, "/v1/bookings", SERVICE_KEY, "book-1", &other)
        .await;
    assert_eq!(reused.expect_error(422), "idempotency_key_reused");
    let (reused, _) = d
        .call_keyed(
            Method::POST,
            "/v1/signals",
            SERVICE_KEY,
            "book-1",
            r#"{"type":"listing_viewed"}"#,
        )
        .await;
    assert_eq!(reused.expect_error(422), "idempotency_key_reused");
    // Keys are the caller's own, and must be sensible.
    let (theirs, _) = d
        .call_keyed(
            Method::POST,
            "/v1/signals",
            SERVICE_KEY,
            &"k".repeat(256),
            r#"{"type":"listing_viewed"}"#,
        )
        .await;
    theirs.expect_error(400);

    // A signal under a key is recorded once and keeps its id.
    let signal = format!(
        r#"{{"type": "listing_viewed", "listing_id": "{}"}}"#,
        p.listing_id
    );
    let (s1, _) = d
        .call_keyed(Method::POST, "/v1/signals", SERVICE_KEY, "view-1", &signal)
        .await;
    s1.expect(202);
    let (s2, replayed) = d
        .call_keyed(Method::POST, "/v1/signals", SERVICE_KEY, "view-1", &signal)
        .await;
    s2.expect(202);
    assert!(replayed);
    assert_eq!(s2.body["id"], s1.body["id"]);
    // The same signal under another key is another signal, with its own id.
    let (s3, replayed) = d
        .call_keyed(Method::POST, "/v1/signals", SERVICE_KEY, "view-2", &signal)
        .await;
    s3.expect(202);
    assert!(!replayed);
    assert_ne!(s3.body["id"], s1.body["id"], "another key, another signal");

    // A PATCH too: the stage moves once, and a retry replays 200.
    let path = format!("/v1/bookings/{}", first.body["id"].as_str().unwrap());
    for expect_replay in [false, true] {
        let (patched, replayed) = d
            .call_keyed(
                Method::PATCH,
                &path,
                SERVICE_KEY,
                "stage-1",
                r#"{"stage":"preparation"}"#,
            )
            .await;
        patched.expect(200);
        assert_eq!(replayed, expect_replay);
        assert_eq!(patched.body["stage"], "preparation");
    }

    // Six days later the key is still remembered (the default keeps 7).
    advance(&d, "144h").await;
    let (late, _) = d
        .call_keyed(Method::POST, "/v1/bookings", SERVICE_KEY, "book-1", &other)
        .await;
    assert_eq!(late.expect_error(422), "idempotency_key_reused");
    d.stop().await;
}

#[tokio::test]
async fn a_booking_posted_again_with_its_id_and_body_is_the_same_booking() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let body = json!({"id": "b-7", "conversation_id": p.conversation,
                      "start": "2031-05-01T09:00:00Z", "end": "2031-05-01T12:00:00Z"});
    let first = d.post("/v1/bookings", SERVICE_KEY, body.clone()).await;
    first.expect(201);
    let again = d.post("/v1/bookings", SERVICE_KEY, body.clone()).await;
    again.expect(201);
    assert_eq!(again.body, first.body);
    let mut changed = body;
    changed["end"] = json!("2031-05-01T13:00:00Z");
    let conflict = d.post("/v1/bookings", SERVICE_KEY, changed).await;
    assert_eq!(conflict.expect_error(409), "conflict");
    let (events, _) = d.poll(&p.customer, 0, 0).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["type"] == "conversation")
            .count(),
        2
    );
    d.stop().await;
}

#[tokio::test]
async fn concurrent_creations_of_one_booking_are_one() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let body = |id: Option<&str>| {
        let mut body = json!({"conversation_id": p.conversation,
                              "start": "2031-05-01T09:00:00Z", "end": "2031-05-01T12:00:00Z"});
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        body.to_string()
    };
    // Twenty at once with the same id, then twenty with the same key.
    let same_id = body(Some("b-race"));
    let keys: Vec<String> = (0..20).map(|i| format!("k-{i}")).collect();
    let by_id = keys
        .iter()
        .map(|key| d.call_keyed(Method::POST, "/v1/bookings", SERVICE_KEY, key, &same_id));
    let same_key = body(None);
    let by_key =
        (0..20).map(|_| d.call_keyed(Method::POST, "/v1/bookings", SERVICE_KEY, "race", &same_key));
    let (by_id, by_key) = tokio::join!(
        futures_util::future::join_all(by_id),
        futures_util::future::join_all(by_key)
    );
    for answers in [&by_id, &by_key] {
        let first = &answers[0].0;
        for (reply, _) in answers {
            reply.expect(201);
            assert_eq!(reply.body, first.body, "every answer is the one booking");
        }
    }
    assert_eq!(by_key.iter().filter(|(_, replayed)| !*replayed).count(), 1);
    // Two bookings in all, each announced once: the conversation was opened,
    // then moved by each booking.
    let (events, _) = d.poll(&p.customer, 0, 0).await;
    let moves = events
        .iter()
        .filter(|e| e["type"] == "conversation")
        .count();
    assert_eq!(moves, 3, "{events:#?}");
    d.stop().await;
}

/// Catches: opening a conversation twice making a second one (or answering
/// 201, so a client cannot tell it found the old one), or another customer
/// being handed the first customer's conversation.
#[tokio::test]
async fn opening_a_conversation_again_returns_the_same_one_with_200() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "Hello")
        .await
        .expect(201);
    let again = d
        .post(
            "/v1/conversations",
            &p.customer.token,
            json!({"listing_id": p.listing_id}),
        )
        .await;
    again.expect(200);
    assert_eq!(again.body["id"], p.conversation.as_str());
    assert_eq!(again.body["listing"]["title"], "Sunset kayak tour");
    let mine = d.get("/v1/conversations", &p.customer.token).await;
    assert_eq!(mine.expect(200).body.as_array().unwrap().len(), 1);
    assert_eq!(d.messages(&p.customer, &p.conversation).await.len(), 1);

    // Another customer about the same listing gets a conversation of their own.
    let dora = Person::new("dora", "customer");
    let hers = d
        .post(
            "/v1/conversations",
            &dora.token,
            json!({"listing_id": p.listing_id}),
        )
        .await;
    hers.expect(201);
    assert_ne!(hers.body["id"], p.conversation.as_str());
    assert_eq!(hers.body["provider_id"], p.provider.id.as_str());
    // A listing that does not exist opens nothing.
    d.post(
        "/v1/conversations",
        &dora.token,
        json!({"listing_id": "no-such-listing"}),
    )
    .await
    .expect_error(404);
    d.stop().await;
}

/// Catches: `after` ignored or off by one, `limit` not applied, or the
/// default page not being 100, so a client paging a long history would
/// skip or repeat messages.
#[tokio::test]
async fn messages_are_paged_with_after_and_limit() {
    let d = Daemon::with_config(vec![("send_burst", "1000".to_owned())]).await;
    let p = pair(&d).await;
    for i in 1..=105 {
        d.send(&p.customer, &p.conversation, format!("c-{i}"), "hello")
            .await
            .expect(201);
    }
    let page = |query: String| {
        let d = &d;
        let who = &p.provider;
        let path = format!("/v1/conversations/{}/messages{query}", p.conversation);
        async move {
            let reply = d.get(&path, &who.token).await;
            reply.expect(200);
            reply
                .body
                .as_array()
                .expect("a list")
                .iter()
                .map(|m| m["seq"].as_u64().unwrap())
                .collect::<Vec<u64>>()
        }
    };
    // Without parameters: the first 100.
    assert_eq!(page(String::new()).await, (1..=100).collect::<Vec<_>>());
    // Following the last seq of each page reads every message once.
    let mut after = 0;
    let mut seen = Vec::new();
    // Three pages of 40 at most (a bound, so a broken `after` fails rather
    // than pages forever).
    for _ in 0..4 {
        let seqs = page(format!("?after={after}&limit=40")).await;
        assert!(seqs.len() <= 40);
        let Some(&last) = seqs.last() else { break };
        assert_eq!(seqs[0], after + 1, "a page starts right after `after`");
        seen.extend(seqs);
        after = last;
    }
    assert_eq!(seen, (1..=105).collect::<Vec<_>>());
    assert_eq!(page("?after=103".into()).await, [104, 105]);
    assert_eq!(page("?after=500".into()).await, Vec::<u64>::new());
    d.stop().await;
}

/// Catches: a booking given `listing_id` + `customer_id` (no
/// `conversation_id`) not finding the customer's conversation about the
/// listing, or not opening one when there is none, so the booking's
/// messages would have nowhere to go.
#[tokio::test]
async fn a_booking_by_listing_and_customer_uses_or_opens_their_conversation() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let by_listing = |customer: &str| {
        json!({"listing_id": p.listing_id, "customer_id": customer,
               "start": "2030-06-01T09:00:00Z", "end": "2030-06-01T12:00:00Z"})
    };
    let booked = d
        .post("/v1/bookings", SERVICE_KEY, by_listing(&p.customer.id))
        .await;
    booked.expect(201);
    assert_eq!(booked.body["conversation_id"], p.conversation.as_str());
    let listed = d.listed(&p.customer, &p.conversation).await;
    assert_eq!(listed["phase"], "post_booking");
    assert_eq!(listed["stage"], "confirmed");

    // A customer who never wrote gets the conversation opened, booked.
    let eve = Person::new("eve", "customer");
    let booked = d
        .post("/v1/bookings", SERVICE_KEY, by_listing(&eve.id))
        .await;
    booked.expect(201);
    let theirs = booked.body["conversation_id"].as_str().unwrap().to_owned();
    assert_ne!(theirs, p.conversation);
    let listed = d.listed(&eve, &theirs).await;
    assert_eq!(listed["phase"], "post_booking");
    assert_eq!(listed["provider_id"], p.provider.id.as_str());
    // Opening it now returns it.
    let opened = d
        .post(
            "/v1/conversations",
            &eve.token,
            json!({"listing_id": p.listing_id}),
        )
        .await;
    opened.expect(200);
    assert_eq!(opened.body["id"], theirs.as_str());

    // A listing that does not exist books nothing; half of the pair is 422.
    let mut unknown = by_listing(&eve.id);
    unknown["listing_id"] = json!("no-such-listing");
    d.post("/v1/bookings", SERVICE_KEY, unknown)
        .await
        .expect_error(404);
    let mut half = by_listing(&eve.id);
    half.as_object_mut().unwrap().remove("customer_id");
    d.post("/v1/bookings", SERVICE_KEY, half)
        .await
        .expect_error(422);
    d.stop().await;
}

/// Catches: an Idempotency-Key outside 1-255 visible ASCII characters being
/// taken (and remembered) instead of refused with 400 before anything is
/// written.
#[tokio::test]
async fn an_idempotency_key_that_is_not_1_to_255_visible_characters_is_400() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let signal = json!({"type": "listing_viewed", "user_id": p.customer.id,
                        "listing_id": p.listing_id})
    .to_string();
    for key in [
        "k".repeat(256),
        "two words".to_owned(),
        "tab\there".to_owned(),
    ] {
        let (reply, _) = d
            .call_keyed(Method::POST, "/v1/signals", SERVICE_KEY, &key, &signal)
            .await;
        assert_eq!(reply.expect_error(400), "bad_request", "{key:?}");
    }
    let longest = "k".repeat(255);
    let (first, _) = d
        .call_keyed(Method::POST, "/v1/signals", SERVICE_KEY, &longest, &signal)
        .await;
    assert!(first.status < 300, "{}", first.body);
    let (again, replayed) = d
        .call_keyed(Method::POST, "/v1/signals", SERVICE_KEY, &longest, &signal)
        .await;
    assert!(replayed, "a 255-character key is remembered");
    assert_eq!(again.body, first.body);
    d.stop().await;
}

/// Catches: the backend's user and listing records taking values README
/// rules out (a time zone that is not IANA, quiet hours that are not
/// `HH:MM`, an availability date that is not `YYYY-MM-DD`, an unknown field)
/// instead of refusing them with 422, which would surface later as
/// notifications at the wrong hour or a listing card that cannot be shown.
#[tokio::test]
async fn users_and_listings_with_invalid_fields_are_refused_with_422() {
    let d = Daemon::start().await;
    let user = |body: Value| d.put("/v1/users/ann", SERVICE_KEY, body);
    user(json!({"name": "Ann", "timezone": "Europe/Paris",
                "quiet_hours": {"start": "22:00", "end": "07:30"},
                "channels": {"email": false}}))
    .await
    .expect(200);
    for bad in [
        json!({"name": "Ann", "timezone": "Paris"}),
        json!({"name": "Ann", "quiet_hours": {"start": "25:00", "end": "07:00"}}),
        json!({"name": "Ann", "quiet_hours": {"start": "10pm", "end": "07:00"}}),
        json!({"name": "Ann", "channels": {"pigeon": true}}),
        json!({"name": "Ann", "colour": "blue"}),
    ] {
        assert_eq!(
            user(bad.clone()).await.expect_error(422),
            "invalid",
            "{bad}"
        );
    }

    let listing = |body: Value| d.put("/v1/listings/kayak", SERVICE_KEY, body);
    listing(json!({"title": "Kayak", "provider_id": "bob",
                   "availability": ["2030-12-01"], "timezone": "Europe/Lisbon"}))
    .await
    .expect(200);
    for bad in [
        json!({"title": "Kayak", "provider_id": "bob", "availability": ["2030-13-01"]}),
        json!({"title": "Kayak", "provider_id": "bob", "availability": ["1 December"]}),
        json!({"title": "Kayak", "provider_id": "bob", "timezone": "Lisbon"}),
        json!({"title": "Kayak", "provider_id": "bob", "colour": "blue"}),
    ] {
        assert_eq!(
            listing(bad.clone()).await.expect_error(422),
            "invalid",
            "{bad}"
        );
    }
    d.stop().await;
}

/// A person whose id is the platform's own sender id (`system`) is still a
/// person: they write only into conversations they take part in, never into
/// someone else's as automation does.
#[tokio::test]
async fn a_person_whose_id_is_system_writes_only_where_they_take_part() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let impostor = Person::new("system", "customer");
    d.send(&impostor, &p.conversation, "x-1", "hello from the platform")
        .await
        .expect_error(404);
    settled(&d).await;
    assert!(d.messages(&p.customer, &p.conversation).await.is_empty());
}
