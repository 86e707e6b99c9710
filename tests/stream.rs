//! The stream: resuming with `since` (one device and two), bad frames, and
//! limits that keep one participant from knocking another offline (rates per
//! connection, streams and long-polls per user).

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn reconnecting_with_since_gets_exactly_what_was_missed() {
    let d = Daemon::start().await;
    let p = pair(&d).await;

    // Device A of the customer, from the start of the log.
    let mut phone = d.ws(&p.customer, Some(0)).await;
    assert_eq!(phone.replayed.len(), 1, "the conversation opening");
    assert_eq!(phone.replayed[0]["type"], "conversation");
    assert_consecutive(&phone.replayed, 1);
    assert_eq!(phone.ready_cursor, 1);
    // Device B stays connected throughout.
    let mut laptop = d.ws(&p.customer, None).await;
    assert_eq!(laptop.ready_cursor, 1);
    assert!(laptop.replayed.is_empty(), "no since: nothing replayed");

    for i in 1..=2 {
        d.send(&p.provider, &p.conversation, &format!("p-{i}"), "before")
            .await
            .expect(201);
    }
    let a = phone.message_event(1).await;
    let b = phone.message_event(2).await;
    assert_eq!((cursor(&a), cursor(&b)), (2, 3));
    let last_seen = cursor(&b);
    phone.close().await;

    // Missed while the phone was away: three from the provider, one sent by the
    // customer's other device.
    for i in 3..=5 {
        d.send(
            &p.provider,
            &p.conversation,
            &format!("p-{i}"),
            "while away",
        )
        .await
        .expect(201);
    }
    laptop
        .send_acked(&p.conversation, "from-laptop", "typed on the laptop")
        .await;

    let mut phone = d.ws(&p.customer, Some(last_seen)).await;
    assert_consecutive(&phone.replayed, last_seen + 1);
    assert_eq!(message_seqs(&phone.replayed), [3, 4, 5, 6]);
    assert_eq!(phone.replayed.len(), 4, "{:?}", phone.replayed);
    assert_eq!(phone.replayed[3]["message"]["client_id"], "from-laptop");
    assert_eq!(phone.ready_cursor, last_seen + 4);

    // Long-poll from the same cursor reads the same log.
    let (polled, head) = d.poll(&p.customer, last_seen, 0).await;
    assert_eq!(polled, phone.replayed);
    assert_eq!(head, phone.ready_cursor);

    // Live again: both devices get the next event with the same cursor.
    d.send(&p.provider, &p.conversation, "p-7", "welcome back")
        .await
        .expect(201);
    let on_phone = phone.message_event(7).await;
    assert_eq!(cursor(&on_phone), head + 1);
    phone.ping().await;
    assert!(
        phone.take_pending().is_empty(),
        "nothing but the new message arrives after the replay"
    );

    // The laptop saw everything, in order, once.
    laptop.ping().await;
    let mut seen = laptop.take_pending();
    seen.retain(|f| f["type"] != "ack");
    assert_consecutive(&seen, 2);
    assert_eq!(message_seqs(&seen), [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(seen.last().unwrap(), &on_phone);
    d.stop().await;
}

#[tokio::test]
async fn a_device_that_reconnects_from_zero_gets_the_whole_log_once() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    for i in 1..=5 {
        d.send(&p.customer, &p.conversation, &format!("c-{i}"), "hello")
            .await
            .expect(201);
    }
    d.post(
        &format!("/v1/conversations/{}/read", p.conversation),
        &p.provider.token,
        json!({"seq": 5}),
    )
    .await
    .expect(200);
    let ws = d.ws(&p.provider, Some(0)).await;
    assert_consecutive(&ws.replayed, 1);
    assert_eq!(message_seqs(&ws.replayed), [1, 2, 3, 4, 5]);
    let types: Vec<&str> = ws
        .replayed
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(types.first(), Some(&"conversation"));
    assert_eq!(types.last(), Some(&"receipt"));
    assert_eq!(ws.ready_cursor, 7);
    // A cursor from the future (e.g. a reset deployment) starts at the head.
    let ahead = d.ws(&p.provider, Some(1000)).await;
    assert!(ahead.replayed.is_empty());
    assert_eq!(ahead.ready_cursor, 7);
    d.stop().await;
}

#[tokio::test]
async fn garbage_frames_get_errors_and_the_connection_keeps_working() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut ws = d.ws(&p.customer, None).await;

    let garbage = [
        WsMessage::text("this is not JSON"),
        WsMessage::text("{\"type\": \"dance\"}"),
        WsMessage::text("[1, 2, 3]"),
        WsMessage::binary(vec![0u8, 159, 146, 150]),
        WsMessage::text(json!({"type": "send", "conversation_id": p.conversation}).to_string()),
        WsMessage::text(json!({"type": "read", "conversation_id": p.conversation}).to_string()),
    ];
    for frame in garbage {
        let shown = format!("{frame:?}");
        ws.send_raw(frame).await;
        let error = ws.next().await;
        assert_eq!(error["type"], "error", "answer to {shown}: {error}");
        assert!(error["error"]["code"].is_string(), "{error}");
        assert!(error["error"]["message"].is_string(), "{error}");
    }
    // Invalid sends name the client_id they answer.
    ws.send_message(&p.conversation, "blank", "   ").await;
    let error = ws.answer("blank").await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "invalid");
    ws.send_message("no-such-conversation", "lost", "hello")
        .await;
    let error = ws.answer("lost").await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["code"], "not_found", "{error}");

    ws.ping().await;
    assert!(ws.take_pending().is_empty());
    let ack = ws.send_acked(&p.conversation, "c-1", "still here").await;
    assert_eq!(ack["message"]["seq"], 1, "the failed sends stored nothing");

    // Malformed HTTP bodies are client errors, and the daemon keeps serving.
    let path = format!("/v1/conversations/{}/messages", p.conversation);
    let token = Some(p.customer.token.as_str());
    d.call_raw(Method::POST, &path, token, "{\"client_id\": ")
        .await
        .expect_error(400);
    d.call_raw(Method::POST, &path, token, "not json at all")
        .await
        .expect_error(400);
    d.call_raw(Method::POST, &path, token, "\"a string\"")
        .await
        .expect_error(422);
    d.call_raw(Method::POST, &path, token, vec![0xffu8, 0xfe, 0x00])
        .await
        .expect_error(400);
    d.call_raw(Method::POST, "/v1/conversations", token, "")
        .await
        .expect_error(400);
    d.call(Method::GET, "/healthz", None, None)
        .await
        .expect(200);
    assert_eq!(d.messages(&p.customer, &p.conversation).await.len(), 1);
    d.stop().await;
}

#[tokio::test]
async fn typing_reaches_the_other_side_only() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;
    d.call(
        Method::POST,
        &format!("/v1/conversations/{}/typing", p.conversation),
        Some(&p.customer.token),
        None,
    )
    .await
    .expect(202);
    let typing = provider.next_of("typing").await;
    assert_eq!(typing["conversation_id"], p.conversation.as_str());
    assert_eq!(typing["user_id"], p.customer.id.as_str());
    assert!(
        typing.get("cursor").is_none(),
        "typing is ephemeral: {typing}"
    );

    provider
        .send_json(json!({"type": "typing", "conversation_id": p.conversation}))
        .await;
    let typing = customer.next_of("typing").await;
    assert_eq!(typing["user_id"], p.provider.id.as_str());
    customer.ping().await;
    provider.ping().await;
    assert!(
        customer.take_pending().is_empty(),
        "no echo of one's own typing"
    );
    assert!(
        provider.take_pending().is_empty(),
        "no echo of one's own typing"
    );
    // Ephemeral: not in the log.
    let (events, _) = d.poll(&p.provider, 0, 0).await;
    assert!(events.iter().all(|e| e["type"] != "typing"));
    d.stop().await;
}

/// Typing frames the customer sends in a flood: enough to fill the provider's
/// socket buffers and its queue many times over had each one been delivered.
const FLOOD: usize = 40_000;

#[tokio::test]
async fn a_typing_flood_does_not_knock_the_other_side_offline() {
    let d = Daemon::start().await;
    // The longest id makes each typing frame as large as one can be.
    let customer = Person::new(&format!("cust-{}", "c".repeat(123)), "customer");
    let p = pair_of(&d, customer, Person::new("prov-1", "provider")).await;

    // The provider's phone reads nothing meanwhile, through a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(d.addr.parse().unwrap()).await.unwrap();
    let mut provider = d.ws_over(&p.provider, tcp).await;

    // The customer sends typing frames as fast as its socket allows, reading
    // the answers as they come, then pings until a pong says all were handled.
    let url = format!("ws://{}/v1/stream?token={}", d.addr, p.customer.token);
    let (socket, _) = guard("the handshake", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    let (mut tx, mut rx) = socket.split();
    let answers = async {
        let mut limited = 0usize;
        while let Some(msg) = rx.next().await {
            let WsMessage::Text(text) = msg.expect("the customer's stream") else {
                continue;
            };
            let frame: Value = serde_json::from_str(text.as_str()).unwrap();
            match frame["type"].as_str() {
                Some("pong") => return limited,
                Some("error") => {
                    assert_eq!(frame["error"]["code"], "rate_limited", "{frame}");
                    limited += 1;
                }
                _ => {}
            }
        }
        panic!("the customer's stream ended");
    };
    let typing = json!({"type": "typing", "conversation_id": p.conversation}).to_string();
    let flood = async {
        for _ in 0..FLOOD {
            tx.feed(WsMessage::text(typing.clone())).await.unwrap();
        }
        tx.flush().await.unwrap();
        // A ping is a frame too: refused while the flood keeps the connection
        // over its frame limit, so ask again until one is answered.
        loop {
            tx.send(WsMessage::text(r#"{"type":"ping"}"#))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let limited = guard("the flood to be handled", async {
        tokio::select! {
            limited = answers => limited,
            () = flood => unreachable!(),
        }
    })
    .await;

    // A real message after the flood reaches the provider on the same connection.
    d.send(
        &p.customer,
        &p.conversation,
        "after-the-flood",
        "still there?",
    )
    .await
    .expect(201);
    let message = provider.message_event(1).await;
    assert_eq!(message["message"]["client_id"], "after-the-flood");
    let typing_seen = provider
        .take_pending()
        .iter()
        .filter(|f| f["type"] == "typing")
        .count();
    assert!(
        typing_seen >= 1,
        "the provider never saw the customer typing"
    );
    assert!(
        typing_seen * 100 < FLOOD,
        "{typing_seen} of {FLOOD} typing frames reached the provider"
    );
    assert!(limited > 0, "no typing frame of the flood was rate limited");
    d.stop().await;
}

#[tokio::test]
async fn every_kind_of_frame_is_rate_limited_per_connection() {
    let d = Daemon::with_config(tight_limits(&[
        "typing_rate",
        "read_rate",
        "delivered_rate",
        "ping_rate",
    ]))
    .await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "hello")
        .await
        .expect(201);
    let mut ws = d.ws(&p.provider, None).await;
    let frames = [
        (
            "typing",
            json!({"type": "typing", "conversation_id": p.conversation}),
        ),
        (
            "read",
            json!({"type": "read", "conversation_id": p.conversation, "seq": 1}),
        ),
        (
            "delivered",
            json!({"type": "delivered", "conversation_id": p.conversation, "seq": 1}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    for (kind, frame) in frames {
        for _ in 0..10 {
            ws.send_json(frame.clone()).await;
        }
        let error = ws
            .next_where(&format!("{kind} to be rate limited"), |f| {
                f["type"] == "error"
                    && f["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains(&format!(" {kind} requests")))
            })
            .await;
        assert_eq!(error["error"]["code"], "rate_limited", "{error}");
        assert!(
            error["error"]["retry_after_ms"].as_u64().is_some(),
            "{error}"
        );
    }
    // The connection stays open, and the other kinds have their own budgets.
    let ack = ws.send_acked(&p.conversation, "p-1", "hi").await;
    assert_eq!(ack["message"]["seq"], 2);
    // Each refusal is counted by kind in /metrics.
    for kind in ["typing", "read", "delivered", "ping"] {
        let series = format!("parleyd_client_rate_limited_total{{action=\"{kind}\"}}");
        assert!(d.metric(&series).await >= 1.0, "{series}");
    }
    d.stop().await;
}

#[tokio::test]
async fn a_frame_that_breaks_the_protocol_closes_the_stream_with_the_code_that_says_why() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let frame = |opcode: OpCode, payload: &[u8]| {
        WsMessage::Frame(Frame::message(payload.to_vec(), opcode, true))
    };
    let cases = [
        // Over limits.max_body_bytes (64 KiB): 1009, message too big.
        (
            "oversized",
            Some(WsMessage::text("x".repeat(100_000))),
            1009,
        ),
        // Opcode 3 is reserved: 1002, protocol error.
        (
            "bad opcode",
            Some(frame(OpCode::Data(Data::Reserved(3)), b"hi")),
            1002,
        ),
        // A text frame that is not UTF-8: 1007 (RFC 6455 §7.4.1).
        (
            "not UTF-8",
            Some(frame(OpCode::Data(Data::Text), &[0xc3, 0x28])),
            1007,
        ),
        // Written below as raw bytes: a client frame must be masked. 1002.
        ("unmasked", None, 1002),
    ];
    for (what, message, code) in cases {
        let mut ws = d.ws(&p.customer, None).await;
        match message {
            Some(message) => ws.send_raw(message).await,
            None => ws.tcp().write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap(),
        }
        let close = ws.close_frame().await;
        let got = close.as_ref().map(|c| u16::from(c.code));
        assert_eq!(got, Some(code), "{what}: {close:?}");
    }
    // The daemon serves on.
    d.ws(&p.customer, None).await.ping().await;
    d.stop().await;
}

#[tokio::test]
async fn a_stream_ends_with_its_token_and_a_long_poll_never_outwaits_it() {
    let d = Daemon::with_config(vec![("long_poll_max_wait_seconds", "600".to_owned())]).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "hello")
        .await
        .expect(201);
    // A provider whose token expires in 3 seconds.
    let short = Person {
        id: p.provider.id.clone(),
        token: jwt(&p.provider.id, "provider", now() + 3, JWT_SECRET),
    };
    let (_, head) = d.poll(&p.provider, 0, 0).await;
    let mut ws = d.ws(&short, Some(0)).await;
    let frame = ws.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(frame.code), 4002, "{frame:?}");
    assert!(frame.reason.contains(&format!("since={head}")), "{frame:?}");

    // A long-poll that would wait ten minutes ends when its token does (the
    // guard fails the test after 30 s).
    let short = jwt(&p.provider.id, "provider", now() + 3, JWT_SECRET);
    let reply = guard(
        "the long-poll to end with its token",
        d.get(&format!("/v1/events?since={head}&wait=600"), &short),
    )
    .await;
    reply.expect(200);
    assert_eq!(reply.body["events"], json!([]));
    d.stop().await;
}

#[tokio::test]
async fn a_users_extra_stream_replaces_their_oldest_and_leaves_room_for_others() {
    // Room for four streams in all, two per user.
    let d = Daemon::with_config(vec![
        ("max_connections", "4".to_owned()),
        ("max_streams_per_user", "2".to_owned()),
    ])
    .await;
    let p = pair(&d).await;
    let live = "parleyd_stream_connections";
    let mut phone = d.ws(&p.customer, Some(0)).await;
    let mut laptop = d.ws(&p.customer, None).await;
    d.send(&p.provider, &p.conversation, "p-1", "one")
        .await
        .expect(201);
    let seen = cursor(&phone.message_event(1).await);

    // A third device: the oldest (the phone) is closed, saying how to resume.
    let mut tablet = d.ws(&p.customer, None).await;
    let close = phone.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    assert_eq!(
        close.reason.as_str(),
        format!("replaced by a newer stream of the same user; resume with since={seen}")
    );
    d.metric_reaches(live, 2.0).await;

    // While the phone is away two more messages arrive; it comes back from its
    // cursor, replacing the laptop (now the oldest), and misses nothing.
    for i in 2..=3 {
        d.send(
            &p.provider,
            &p.conversation,
            &format!("p-{i}"),
            "while away",
        )
        .await
        .expect(201);
    }
    let phone = d.ws(&p.customer, Some(seen)).await;
    assert_eq!(message_seqs(&phone.replayed), [2, 3]);
    assert_consecutive(&phone.replayed, seen + 1);
    let close = laptop.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4008, "{close:?}");
    tablet.ping().await;
    d.metric_reaches(live, 2.0).await;

    // The customer never holds more than two, so another user still gets the
    // remaining room.
    let mut provider_phone = d.ws(&p.provider, None).await;
    let mut provider_laptop = d.ws(&p.provider, None).await;
    provider_phone.ping().await;
    provider_laptop.ping().await;
    assert_eq!(
        d.metric("parleyd_limit_refusals_total{limit=\"streams_per_user\"}")
            .await,
        2.0
    );
    // All four places taken: the next upgrade of a new user is 503.
    let stranger = Person::new("cust-2", "customer");
    let refused = d.try_ws(&stranger.token, None).await;
    assert!(
        matches!(&refused, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 503),
        "{:?}",
        refused.err()
    );
    assert_eq!(
        d.metric("parleyd_limit_refusals_total{limit=\"streams\"}")
            .await,
        1.0
    );
    drop(phone);
    d.stop().await;
}

#[tokio::test]
async fn a_user_past_their_long_poll_cap_gets_429_and_others_still_poll() {
    let d = Daemon::with_config(vec![("max_long_polls_per_user", "2".to_owned())]).await;
    let p = pair(&d).await;
    let waiting = "parleyd_long_polls_waiting";
    let (_, head) = d.poll(&p.customer, 0, 0).await;
    let poll = |who: &Person| {
        let request = d
            .http
            .get(d.url(&format!("/v1/events?since={head}&wait=30")))
            .bearer_auth(&who.token);
        tokio::spawn(async move { request.send().await.expect("long-poll") })
    };
    let held = [poll(&p.customer), poll(&p.customer)];
    d.metric_reaches(waiting, 2.0).await;

    // A third waiting poll of the same user is refused at once...
    let refused = d
        .get(
            &format!("/v1/events?since={head}&wait=30"),
            &p.customer.token,
        )
        .await;
    assert_eq!(refused.expect_error(429), "rate_limited");
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("max_long_polls_per_user"), "{message}");
    let retry: u64 = refused
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "Retry-After: {retry}");
    // ... one that answers at once needs no slot ...
    let (events, _) = d.poll(&p.customer, 0, 30).await;
    assert!(!events.is_empty());
    // ... and another user's poll is admitted.
    let other = poll(&p.provider);
    d.metric_reaches(waiting, 3.0).await;
    assert_eq!(
        d.metric("parleyd_limit_refusals_total{limit=\"long_polls_per_user\"}")
            .await,
        1.0
    );

    // A message answers every waiting poll, and the slots are free again.
    d.send(&p.customer, &p.conversation, "c-1", "hello")
        .await
        .expect(201);
    for poll in held.into_iter().chain([other]) {
        let reply = guard("a long-poll to answer", poll).await.unwrap();
        assert_eq!(reply.status(), 200);
        let body: Value = reply.json().await.unwrap();
        assert_eq!(message_seqs(body["events"].as_array().unwrap()), [1]);
    }
    d.metric_reaches(waiting, 0.0).await;
    d.stop().await;
}

/// Reads the server's frames straight off the socket, so that no pong answers
/// its heartbeats, until its close frame: the close code and reason.
async fn close_unanswered(ws: &mut Ws) -> (u16, String) {
    use tokio::io::AsyncReadExt;
    let tcp = ws.tcp();
    let mut buf = Vec::new();
    guard("the close frame", async {
        loop {
            // Server frames are unmasked: opcode, length (7 bits, or 126 and
            // 16 bits), payload.
            let mut at = 0;
            while buf.len() >= at + 2 {
                let (len, head) = match buf[at + 1] & 0x7f {
                    126 if buf.len() >= at + 4 => {
                        (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
                    }
                    126 => break,
                    127 => panic!("no 64-bit frame is expected here"),
                    n => (n as usize, 2),
                };
                if buf.len() < at + head + len {
                    break;
                }
                let payload = &buf[at + head..at + head + len];
                if buf[at] & 0x0f == 0x8 {
                    let code = u16::from_be_bytes([payload[0], payload[1]]);
                    return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
                }
                at += head + len;
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await.expect("read the socket");
            assert!(n > 0, "the connection ended without a close frame");
            buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await
}

/// Catches: idle connections never closed (4001), heartbeats not sent, or a
/// client's pongs not counting as hearing from it (a quiet but live device
/// would be dropped every `idle_timeout_seconds`).
#[tokio::test]
async fn a_silent_stream_is_closed_with_4001_and_one_answering_heartbeats_stays_open() {
    let d = Daemon::with_config(vec![
        ("heartbeat_seconds", "1".to_owned()),
        ("idle_timeout_seconds", "2".to_owned()),
    ])
    .await;
    let p = pair(&d).await;
    let mut silent = d.ws(&p.provider, None).await;
    let (code, reason) = close_unanswered(&mut silent).await;
    assert_eq!(code, 4001, "{reason}");
    assert_eq!(reason, "idle timeout");

    // Opened now and read from the start, so its pongs go out from the
    // first heartbeat. Three heartbeats a second apart span more than the
    // idle timeout; the client's automatic pongs keep it open without a
    // frame of its own.
    let mut live = d.ws(&p.customer, None).await;
    for _ in 0..3 {
        live.heartbeat().await;
    }
    live.ping().await;
    d.send(&p.provider, &p.conversation, "p-1", "still there?")
        .await
        .expect(201);
    live.message_event(1).await;
    d.stop().await;
}

/// Catches: a consumer that falls behind being dropped silently (no 4000),
/// with a wrong cursor in the reason, or losing events across the resume.
#[tokio::test]
async fn a_stream_that_falls_behind_is_closed_with_4000_and_resumes_without_loss() {
    let d = Daemon::with_config(vec![
        ("queue_capacity", "16".to_owned()),
        ("send_burst", "1000".to_owned()),
        ("max_message_chars", "60000".to_owned()),
    ])
    .await;
    let p = pair(&d).await;
    // The provider's device stops reading behind a small receive buffer, so
    // the daemon's writes to it stall and its queue fills.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(d.addr.parse().unwrap()).await.unwrap();
    let mut slow = d.ws_over(&p.provider, tcp).await;
    let text = "x".repeat(60_000);
    let mut sent = 0u64;
    guard("the stream's queue to overflow", async {
        while d.metric("parleyd_stream_overflows_total").await < 1.0 {
            sent += 1;
            d.send(&p.customer, &p.conversation, format!("m{sent}"), &text)
                .await
                .expect(201);
        }
    })
    .await;

    // It reads again: what was written, then 4000 naming its cursor.
    let close = slow.close_frame().await.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000, "{close:?}");
    let got = slow.take_pending();
    assert_consecutive(&got, slow.ready_cursor + 1);
    let last = got.last().map_or(slow.ready_cursor, cursor);
    assert_eq!(
        close.reason.as_str(),
        format!("fell behind; resume with since={last}")
    );
    assert!((message_seqs(&got).len() as u64) < sent, "it fell behind");

    // Resuming from that cursor gets the rest, nothing twice.
    let resumed = d.ws(&p.provider, Some(last)).await;
    assert_consecutive(&resumed.replayed, last + 1);
    let seqs: Vec<u64> = message_seqs(&got)
        .into_iter()
        .chain(message_seqs(&resumed.replayed))
        .collect();
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>());
    d.stop().await;
}

/// Catches: a replay or a long-poll that stops after one page
/// (`stream.replay_page`), or repeats or skips an event at a page boundary.
#[tokio::test]
async fn replay_and_long_poll_go_past_one_page() {
    let d = Daemon::with_config(vec![("replay_page", "3".to_owned())]).await;
    let p = pair(&d).await;
    for i in 1..=10 {
        d.send(&p.customer, &p.conversation, format!("c-{i}"), "hello")
            .await
            .expect(201);
    }
    // The stream replays the whole log (the conversation, ten messages) in
    // pages of three before `ready`.
    let ws = d.ws(&p.provider, Some(0)).await;
    assert_consecutive(&ws.replayed, 1);
    assert_eq!(message_seqs(&ws.replayed), (1..=10).collect::<Vec<_>>());
    assert_eq!(ws.ready_cursor, 11);

    // A long-poll answers one page at a time; following its cursor reads the
    // same log.
    let mut since = 0;
    let mut polled = Vec::new();
    loop {
        let (events, cursor) = d.poll(&p.provider, since, 0).await;
        if events.is_empty() {
            assert_eq!(cursor, since);
            break;
        }
        assert!(events.len() <= 3, "one page: {events:?}");
        polled.extend(events);
        since = cursor;
    }
    assert_eq!(polled, ws.replayed);
    assert_eq!(since, 11);
    d.stop().await;
}

/// Catches: `wait` above `stream.long_poll_max_wait_seconds` being honoured
/// (a client could hold a connection for as long as it asks): with a cap of
/// one second, a poll asking for an hour answers, empty, well within the
/// guard.
#[tokio::test]
async fn a_long_poll_waits_no_longer_than_the_cap() {
    let d = Daemon::with_config(vec![("long_poll_max_wait_seconds", "1".to_owned())]).await;
    let p = pair(&d).await;
    let (_, head) = d.poll(&p.customer, 0, 0).await;
    // Ten times the cap, and a third of the shipped cap (30 s), which a
    // daemon ignoring the configured one would wait.
    let (events, cursor) =
        tokio::time::timeout(Duration::from_secs(10), d.poll(&p.customer, head, 3600))
            .await
            .expect("a long-poll asking for an hour answers at the 1 s cap, not later");
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(cursor, head);
    d.stop().await;
}

/// Catches: a replay that shows messages as they were logged (`sent`, no
/// `read_at`) when they have been read since, so a reconnecting device would
/// show stale ticks.
#[tokio::test]
async fn a_replayed_message_shows_its_status_and_read_at_as_they_are_now() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    for i in 1..=2 {
        d.send(&p.customer, &p.conversation, format!("c-{i}"), "hello")
            .await
            .expect(201);
    }
    let (logged, _) = d.poll(&p.customer, 0, 0).await;
    assert!(message_seqs(&logged).len() == 2);
    d.read(&p.provider, &p.conversation, 1).await.expect(200);

    // The messages of a replay's `message` events.
    let messages_in = |frames: &[Value]| -> Vec<Value> {
        frames
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["message"].clone())
            .collect()
    };
    let ws = d.ws(&p.customer, Some(0)).await;
    let messages = messages_in(&ws.replayed);
    let now = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(messages[0]["status"], "read", "{}", messages[0]);
    assert!(messages[0]["read_at"].is_string(), "{}", messages[0]);
    assert_eq!(messages[1]["status"], "sent", "{}", messages[1]);
    assert_eq!(messages, now);
    // The long-poll replays the same way.
    let (polled, _) = d.poll(&p.customer, 0, 0).await;
    assert_eq!(messages_in(&polled), messages);
    d.stop().await;
}

/// Catches: typing indicators waking or filling a long-poll (README: its
/// frames are the stream's, typing excluded): a poll waiting when the other
/// side types, then writes, answers with the message alone.
#[tokio::test]
async fn a_waiting_long_poll_is_answered_by_the_message_not_the_typing_before_it() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let (_, head) = d.poll(&p.provider, 0, 0).await;
    let request = d
        .http
        .get(d.url(&format!("/v1/events?since={head}&wait=30")))
        .bearer_auth(&p.provider.token);
    let waiting = tokio::spawn(async move { request.send().await.expect("long-poll") });
    d.metric_reaches("parleyd_long_polls_waiting", 1.0).await;
    d.post(
        &format!("/v1/conversations/{}/typing", p.conversation),
        &p.customer.token,
        json!({}),
    )
    .await
    .expect(202);
    d.send(&p.customer, &p.conversation, "c-1", "typed it")
        .await
        .expect(201);
    let reply = guard("the long-poll to answer", waiting).await.unwrap();
    assert_eq!(reply.status(), 200);
    let body: Value = reply.json().await.unwrap();
    let events = body["events"].as_array().unwrap();
    assert_eq!(message_seqs(events), [1], "{body}");
    assert!(events.iter().all(|e| e["type"] != "typing"), "{body}");
    d.stop().await;
}
