//! Back-pressure end to end: past `storage.writer_queue` writes waiting for
//! the writer, sends over HTTP and the stream are refused at once (503
//! `overloaded` with `Retry-After`, or an `error` frame `overloaded`), nothing
//! refused is stored, nothing acknowledged is lost, and sends succeed again
//! once the queue drains, without a restart. The writer is held still with the
//! dev fault route (as a stalled disk would), so the queue fills
//! deterministically.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Writes the test lets queue up before the writer refuses requests.
const BOUND: u64 = 4;

async fn start() -> Daemon {
    Daemon::with_config(vec![
        ("clock", "manual".to_owned()),
        ("writer_queue", BOUND.to_string()),
    ])
    .await
}

/// Stalls the writer (it takes no batch) or lets it go on.
async fn stall_writer(d: &Daemon, stalled: bool) {
    d.put(
        "/v1/admin/pipeline/components/writer/fault",
        &operator().token,
        json!({ "fail": stalled }),
    )
    .await
    .expect(200);
}

/// Waits until `GET /v1/admin/pipeline` satisfies `done`.
async fn pipeline_until(d: &Daemon, what: &str, done: impl Fn(&Value) -> bool) {
    guard(what, async {
        loop {
            let reply = d.get("/v1/admin/pipeline", &operator().token).await;
            if done(&reply.expect(200).body) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Waits until `n` writes are queued.
async fn queue_reaches(d: &Daemon, n: u64) {
    pipeline_until(d, &format!("{n} writes to queue up"), |p| {
        p["writer"]["queue_depth"] == n
    })
    .await;
}

/// Stalls the writer once the engine has written what it had to (it writes
/// for each domain event, e.g. the conversation's opening), so that the
/// queue holds only what the test sends.
async fn stall_when_settled(d: &Daemon) {
    pipeline_until(d, "the engine to settle", |p| {
        p["events"]["waiting"] == 0 && p["writer"]["queue_depth"] == 0
    })
    .await;
    stall_writer(d, true).await;
}

fn assert_overloaded_reply(reply: &Reply) {
    assert_eq!(reply.expect_error(503), "overloaded", "{}", reply.body);
    assert_eq!(
        reply.header("retry-after"),
        Some("1"),
        "{:?}",
        reply.headers
    );
    assert_eq!(
        reply.body["error"]["retry_after_ms"], 1000,
        "{}",
        reply.body
    );
}

fn assert_overloaded_frame(frame: &Value, client_id: &str) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["client_id"], client_id, "{frame}");
    assert_eq!(frame["error"]["code"], "overloaded", "{frame}");
    assert_eq!(frame["error"]["retry_after_ms"], 1000, "{frame}");
}

#[tokio::test]
async fn past_the_writer_queue_sends_are_refused_and_nothing_acknowledged_is_lost() {
    let d = start().await;
    let p = pair(&d).await;
    let conversation = p.conversation.as_str();
    let mut ws = d.ws(&p.provider, None).await;

    stall_when_settled(&d).await;
    // Two sends over the stream and two over HTTP take the queue's places.
    ws.send_message(conversation, "ws-queued-1", "Morning, yes that works")
        .await;
    ws.send_message(conversation, "ws-queued-2", "Bring a hat")
        .await;
    queue_reaches(&d, 2).await;
    let queued = async {
        tokio::join!(
            d.send(&p.customer, conversation, "http-queued-1", "Great, thanks"),
            d.send(&p.customer, conversation, "http-queued-2", "See you then"),
        )
    };
    let refused = async {
        queue_reaches(&d, BOUND).await;
        for client_id in ["http-refused-1", "http-refused-2", "http-refused-3"] {
            assert_overloaded_reply(&d.send(&p.customer, conversation, client_id, "Hello?").await);
        }
        for client_id in ["ws-refused-1", "ws-refused-2"] {
            ws.send_message(conversation, client_id, "Still there?")
                .await;
            assert_overloaded_frame(&ws.answer(client_id).await, client_id);
        }
        assert_eq!(
            d.metric("parleyd_limit_refusals_total{limit=\"writer_queue\"}")
                .await,
            5.0
        );
        // The refusals took nothing from the queue.
        queue_reaches(&d, BOUND).await;
        stall_writer(&d, false).await;
    };
    let ((first, second), ()) = tokio::join!(queued, refused);
    first.expect(201);
    second.expect(201);
    for client_id in ["ws-queued-1", "ws-queued-2"] {
        let answer = ws.answer(client_id).await;
        assert_eq!(answer["type"], "ack", "{answer}");
    }

    // Recovered without a restart: new sends, and a refused one sent again,
    // are stored (201: the refused one had left nothing behind).
    d.send(&p.customer, conversation, "http-after", "Perfect")
        .await
        .expect(201);
    d.send(&p.customer, conversation, "http-refused-1", "Hello?")
        .await
        .expect(201);
    ws.send_acked(conversation, "ws-after", "Booked you in")
        .await;

    let messages = d.messages(&p.customer, conversation).await;
    let stored: BTreeSet<&str> = messages
        .iter()
        .map(|m| m["client_id"].as_str().unwrap_or_default())
        .collect();
    let acknowledged: BTreeSet<&str> = [
        "ws-queued-1",
        "ws-queued-2",
        "http-queued-1",
        "http-queued-2",
        "http-after",
        "http-refused-1",
        "ws-after",
    ]
    .into();
    assert_eq!(stored, acknowledged, "{messages:?}");
    let seqs: Vec<u64> = messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_stream_opened_while_the_queue_is_full_is_told_to_try_again() {
    let d = start().await;
    let p = pair(&d).await;
    stall_when_settled(&d).await;
    let fill = async {
        let sends = (1..=BOUND).map(|i| {
            d.send(
                &p.customer,
                &p.conversation,
                format!("queued-{i}"),
                "Hello there",
            )
        });
        futures_util::future::join_all(sends).await
    };
    let refused = async {
        queue_reaches(&d, BOUND).await;
        let url = d.url(&format!("/v1/stream?since=0&token={}", p.provider.token));
        let (mut socket, _) = tokio_tungstenite::connect_async(url.replacen("http", "ws", 1))
            .await
            .expect("the WebSocket handshake");
        let close = guard("the close frame", async {
            loop {
                match socket.next().await {
                    Some(Ok(WsMessage::Close(frame))) => return frame,
                    Some(Ok(_)) => {}
                    other => panic!("the stream ended without a close frame: {other:?}"),
                }
            }
        })
        .await
        .expect("a close frame with a code");
        assert_eq!(u16::from(close.code), 1013, "{close:?}");
        // A long poll is refused the same way.
        let polled = d.get("/v1/events?since=0", &p.provider.token).await;
        assert_overloaded_reply(&polled);
        stall_writer(&d, false).await;
    };
    let (sent, ()) = tokio::join!(fill, refused);
    for reply in sent {
        reply.expect(201);
    }
    // Once the queue drains, a stream opens (it reads to its `ready` frame)
    // and everything acknowledged is there.
    d.ws(&p.provider, Some(0)).await;
    assert_eq!(
        d.messages(&p.provider, &p.conversation).await.len(),
        BOUND as usize
    );
}
