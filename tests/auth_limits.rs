//! Who may do what, request limits, the send rate limit, and concurrent sends.

mod common;

use std::collections::BTreeSet;

use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

#[tokio::test]
async fn a_non_participant_cannot_see_or_touch_a_conversation() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "private")
        .await
        .expect(201);
    let c = &p.conversation;
    for intruder in [
        Person::new("cust-2", "customer"),
        Person::new("prov-2", "provider"),
    ] {
        let t = intruder.token.as_str();
        let replies = [
            ("get", d.get(&format!("/v1/conversations/{c}"), t).await),
            (
                "messages",
                d.get(&format!("/v1/conversations/{c}/messages"), t).await,
            ),
            (
                "send",
                d.post(
                    &format!("/v1/conversations/{c}/messages"),
                    t,
                    json!({"client_id": "x-1", "content": "let me in"}),
                )
                .await,
            ),
            (
                "read",
                d.post(&format!("/v1/conversations/{c}/read"), t, json!({"seq": 1}))
                    .await,
            ),
            (
                "typing",
                d.call(
                    Method::POST,
                    &format!("/v1/conversations/{c}/typing"),
                    Some(t),
                    None,
                )
                .await,
            ),
        ];
        for (what, reply) in replies {
            assert_eq!(
                reply.status, 404,
                "{what} by {} must be 404, got {}: {}",
                intruder.id, reply.status, reply.body
            );
            assert_eq!(reply.expect_error(404), "not_found");
        }
        let listed = d.get("/v1/conversations", t).await;
        listed.expect(200);
        assert_eq!(
            listed.body,
            json!([]),
            "{} sees no conversation",
            intruder.id
        );
    }
    // Unknown conversations look the same as other people's.
    let t = &p.customer.token;
    d.get("/v1/conversations/no-such-thing", t)
        .await
        .expect_error(404);
    // Nothing the intruders did was stored.
    let history = d.messages(&p.customer, c).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "sent", "no intruder marked it read");
    d.stop().await;
}

#[tokio::test]
async fn missing_bad_and_expired_tokens_are_401() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let path = format!("/v1/conversations/{}", p.conversation);
    let no_token = d.call(Method::GET, &path, None, None).await;
    assert_eq!(no_token.expect_error(401), "unauthorized");
    d.call(Method::GET, "/v1/events", None, None)
        .await
        .expect_error(401);

    let bad = [
        "garbage".to_owned(),
        jwt(
            &p.customer.id,
            "customer",
            now() + 3600,
            "some-other-secret-1234",
        ),
        jwt(&p.customer.id, "customer", now() - 3600, JWT_SECRET),
        jwt(&p.customer.id, "wizard", now() + 3600, JWT_SECRET),
        "example-service-key-change-meX".to_owned(),
    ];
    for token in &bad {
        let r = d.call(Method::GET, &path, Some(token), None).await;
        assert_eq!(r.expect_error(401), "unauthorized", "token {token}");
        let r = d
            .call(Method::GET, "/v1/events?since=0", Some(token), None)
            .await;
        r.expect_error(401);
        match d.try_ws(token, None).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status().as_u16(), 401)
            }
            Err(e) => panic!("expected a 401 handshake, got {e}"),
            Ok(_) => panic!("the stream accepted token {token}"),
        }
    }
    // A header that is not `Bearer …`.
    let r = d
        .http
        .get(d.url(&path))
        .header("authorization", format!("Token {}", p.customer.token))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // And the good token works.
    d.get(&path, &p.customer.token).await.expect(200);
    d.stop().await;
}

#[tokio::test]
async fn the_wrong_role_is_403() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let operator = Person::new("ops-1", "operator");
    let service_jwt = token("backend", "service");

    let customer_puts_user = d
        .put(
            "/v1/users/cust-1",
            &p.customer.token,
            json!({"name": "Evil"}),
        )
        .await;
    assert_eq!(customer_puts_user.expect_error(403), "forbidden");
    d.put(
        "/v1/listings/listing-2",
        &p.provider.token,
        json!({"title": "Mine", "provider_id": p.provider.id}),
    )
    .await
    .expect_error(403);
    d.post(
        "/v1/conversations",
        &p.provider.token,
        json!({"listing_id": p.listing_id}),
    )
    .await
    .expect_error(403);
    d.send(&operator, &p.conversation, "o-1", "hello from ops")
        .await
        .expect_error(403);
    d.get("/v1/conversations", SERVICE_KEY)
        .await
        .expect_error(403);
    d.get("/v1/events", &operator.token).await.expect_error(403);
    match d.try_ws(SERVICE_KEY, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 403)
        }
        Err(e) => panic!("expected a 403 handshake, got {e}"),
        Ok(_) => panic!("the stream accepted the service key"),
    }
    // The service may use a JWT with role service as well as the key.
    d.put("/v1/users/cust-9", &service_jwt, json!({"name": "Nina"}))
        .await
        .expect(200);
    assert!(d.messages(&p.customer, &p.conversation).await.is_empty());
    d.stop().await;
}

#[tokio::test]
async fn bodies_that_are_too_large_empty_or_malformed_are_refused() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let path = format!("/v1/conversations/{}/messages", p.conversation);
    let token = Some(p.customer.token.as_str());

    let huge = json!({"client_id": "big", "content": "x".repeat(70_000)}).to_string();
    assert_eq!(
        d.call_raw(Method::POST, &path, token, huge)
            .await
            .expect_error(413),
        "payload_too_large"
    );
    let empty = d.send(&p.customer, &p.conversation, "empty", "").await;
    assert_eq!(empty.expect_error(422), "invalid");
    d.send(&p.customer, &p.conversation, "blank", " \n\t ")
        .await
        .expect_error(422);
    // max_message_chars is 4000 characters (not bytes).
    d.send(&p.customer, &p.conversation, "long", &"é".repeat(4001))
        .await
        .expect_error(422);
    let longest = d
        .send(&p.customer, &p.conversation, "longest", &"é".repeat(4000))
        .await;
    longest.expect(201);
    d.send(&p.customer, &p.conversation, "", "no client id")
        .await
        .expect_error(422);
    d.call_raw(Method::POST, &path, token, "{\"client_id\":\"c\",")
        .await
        .expect_error(400);
    d.post(
        &path,
        &p.customer.token,
        json!({"client_id": "c", "content": "hi", "surprise": true}),
    )
    .await
    .expect_error(422);
    d.post(&path, &p.customer.token, json!({"content": "no client id"}))
        .await
        .expect_error(422);

    // Errors from routing itself have the same shape.
    d.get("/v1/nowhere", &p.customer.token)
        .await
        .expect_error(404);
    d.call(Method::DELETE, &path, token, None)
        .await
        .expect_error(405);

    let history = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(history.len(), 1, "only the valid message was stored");
    assert_eq!(history[0]["client_id"], "longest");
    d.stop().await;
}

#[tokio::test]
async fn the_default_send_limit_answers_429_and_rate_limited_frames() {
    let d = Daemon::start().await;
    let p = pair(&d).await;

    // The burst of 20 is allowed at once…
    let burst =
        join_all((0..20).map(|i| d.send(&p.customer, &p.conversation, format!("b-{i}"), "burst")))
            .await;
    for r in &burst {
        r.expect(201);
    }
    // …and sending on without pause is refused before long.
    let mut refused = None;
    for round in 0..20 {
        let replies = join_all((0..30).map(|i| {
            d.send(
                &p.customer,
                &p.conversation,
                format!("more-{round}-{i}"),
                "more",
            )
        }))
        .await;
        if let Some(r) = replies.iter().find(|r| r.status != 201) {
            refused = Some(r.clone());
            break;
        }
    }
    let refused = refused.expect("no send was ever rate limited");
    assert_eq!(refused.expect_error(429), "rate_limited");
    // …saying when to try again: Retry-After, in whole seconds.
    let retry_after = refused
        .header("retry-after")
        .expect("429 without Retry-After");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s >= 1),
        "Retry-After: {retry_after}"
    );

    // The same over the stream, for the other participant.
    let mut ws = d.ws(&p.provider, None).await;
    let mut limited = None;
    'rounds: for round in 0..20 {
        let ids: Vec<String> = (0..30).map(|i| format!("ws-{round}-{i}")).collect();
        for id in &ids {
            ws.send_message(&p.conversation, id, "fast").await;
        }
        for id in &ids {
            let answer = ws.answer(id).await;
            if answer["type"] == "error" {
                limited = Some(answer);
                break 'rounds;
            }
        }
    }
    let limited = limited.expect("no stream send was ever rate limited");
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    assert!(limited["error"]["message"].is_string());

    // A retry of a stored client_id is not a new send: it is answered even now.
    d.send(&p.customer, &p.conversation, "b-0", "burst")
        .await
        .expect(200);
    // Refused sends stored nothing: seqs stay gapless.
    let history = d.messages(&p.customer, &p.conversation).await;
    let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=history.len() as u64).collect::<Vec<_>>());
    d.stop().await;
}

#[tokio::test]
async fn two_hundred_concurrent_sends_get_gapless_seqs() {
    let d = Daemon::launch(Launch {
        config: vec![
            ("send_rate_per_second", "10000".into()),
            ("send_burst", "10000".into()),
        ],
        ..Launch::default()
    })
    .await;
    let p = pair(&d).await;
    let conv = p.conversation.clone();
    let mut customer_ws = d.ws(&p.customer, None).await;
    let mut provider_ws = d.ws(&p.provider, None).await;

    // Each side: 50 over HTTP (concurrently) and 50 over its stream (pipelined).
    let http_sends = join_all(
        [&p.customer, &p.provider]
            .into_iter()
            .flat_map(|who| (0..50).map(move |i| (who, format!("{}-http-{i}", who.id))))
            .map(|(who, id)| {
                let d = &d;
                let conv = &conv;
                async move {
                    (
                        id.clone(),
                        d.send(who, conv, &id, &format!("via http {id}")).await,
                    )
                }
            }),
    );
    let ws_sends = async {
        for ws in [&mut customer_ws, &mut provider_ws] {
            for i in 0..50 {
                ws.send_message(&conv, &format!("ws-{i}"), "via the stream")
                    .await;
            }
        }
    };
    let (http_replies, ()) = tokio::join!(http_sends, ws_sends);

    let mut seqs = Vec::new();
    for (id, reply) in &http_replies {
        assert_eq!(reply.status, 201, "{id}: {}", reply.body);
        seqs.push(reply.body["message"]["seq"].as_u64().unwrap());
    }
    for ws in [&mut customer_ws, &mut provider_ws] {
        for i in 0..50 {
            let ack = ws.answer(&format!("ws-{i}")).await;
            assert_eq!(ack["type"], "ack", "{ack}");
            seqs.push(ack["message"]["seq"].as_u64().unwrap());
        }
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<u64>>(),
        "seqs have a gap or a duplicate"
    );

    let history = d.messages(&p.customer, &conv).await;
    let stored: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(stored, (1..=200).collect::<Vec<u64>>());
    let client_ids: BTreeSet<(String, String)> = history
        .iter()
        .map(|m| {
            (
                m["sender_id"].as_str().unwrap().to_owned(),
                m["client_id"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(client_ids.len(), 200, "every send stored exactly once");

    for who in [&p.customer, &p.provider] {
        let listed = d.listed(who, &conv).await;
        assert_eq!(listed["last_seq"], 200);
        assert_eq!(listed["unread_count"], 100, "{}: {listed}", who.id);
    }

    // Each side's stream carried every message once, with gapless cursors.
    for ws in [&mut customer_ws, &mut provider_ws] {
        let mut events: Vec<Value> = Vec::new();
        while events.len() < 200 {
            events.push(ws.next_of("message").await);
        }
        ws.ping().await;
        assert!(
            ws.take_pending().iter().all(|f| f["type"] != "message"),
            "more than 200 message events"
        );
        assert_consecutive(&events, 2);
        let mut seen = message_seqs(&events);
        seen.sort_unstable();
        assert_eq!(seen, (1..=200).collect::<Vec<u64>>());
    }
    d.stop().await;
}

#[tokio::test]
async fn a_refused_body_does_not_break_the_next_request() {
    // A keep-alive client (browsers, SDKs) sends an oversized body and gets its
    // 413. Either the reply says `connection: close`, or the connection must
    // still answer the next request; silently dropping it makes the client's
    // next request fail.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let d = Daemon::start().await;
    let body = format!("{{\"name\": \"{}\"}}", "x".repeat(70_000));
    let mut socket = tokio::net::TcpStream::connect(&d.addr).await.unwrap();
    let request = format!(
        "PUT /v1/users/u-1 HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {SERVICE_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        d.addr,
        body.len()
    );
    // The server may answer before reading it all; what it leaves unread is
    // its business.
    let _ = socket.write_all(request.as_bytes()).await;
    let head = guard("the 413 reply", read_reply(&mut socket)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    if head.to_ascii_lowercase().contains("\r\nconnection: close") {
        return d.stop().await;
    }
    let next = format!("GET /healthz HTTP/1.1\r\nhost: {}\r\n\r\n", d.addr);
    let wrote = socket.write_all(next.as_bytes()).await;
    let mut reply = vec![0u8; 4096];
    let read = guard("the reply after a 413", socket.read(&mut reply)).await;
    let reply = match (&wrote, read) {
        (Ok(()), Ok(n)) => String::from_utf8_lossy(&reply[..n]).into_owned(),
        (_, other) => format!("write {wrote:?}, read {other:?}"),
    };
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "the 413 kept the connection open (no `connection: close`) but it no \
         longer answers: {reply:?}; 413 head: {head}"
    );
    d.stop().await;
}

/// Reads one HTTP/1.1 reply with a content-length: its head and body as text.
async fn read_reply(socket: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = socket.read(&mut chunk).await.expect("read the reply");
        assert!(n > 0, "connection closed before a full reply: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                return text;
            }
        }
    }
}

#[tokio::test]
async fn an_invalid_query_string_is_400() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let t = &p.customer.token;
    let messages = format!("/v1/conversations/{}/messages", p.conversation);
    for path in [
        format!("{messages}?limit=many"),
        format!("{messages}?after=-1"),
        format!("{messages}?colour=blue"),
        "/v1/events?since=yesterday".to_owned(),
    ] {
        let reply = d.get(&path, t).await;
        assert_eq!(
            reply.status, 400,
            "GET {path}: {} {}",
            reply.status, reply.body
        );
        assert_eq!(reply.expect_error(400), "bad_request");
    }
    d.get(&format!("{messages}?after=0&limit=10"), t)
        .await
        .expect(200);
    d.stop().await;
}

#[tokio::test]
async fn a_token_used_before_its_nbf_is_401() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let signed = |nbf: i64| {
        let claims = json!({"sub": p.customer.id, "role": "customer",
                            "exp": now() + 7200, "nbf": nbf});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
        )
        .unwrap()
    };
    // Valid from an hour from now: far beyond any clock-skew leeway.
    let early = signed(now() + 3600);
    let r = d
        .call(Method::GET, "/v1/conversations", Some(&early), None)
        .await;
    assert_eq!(r.expect_error(401), "unauthorized");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not valid yet")),
        "{}",
        r.body
    );
    match d.try_ws(&early, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        Err(e) => panic!("expected a 401 handshake, got {e}"),
        Ok(_) => panic!("the stream accepted a token before its nbf"),
    }
    // Once its nbf has passed, the same kind of token is fine.
    let valid = signed(now() - 60);
    d.call(Method::GET, "/v1/conversations", Some(&valid), None)
        .await
        .expect(200);
    d.try_ws(&valid, None).await.expect("the stream takes it");
    d.stop().await;
}

#[tokio::test]
async fn http_typing_and_receipts_are_rate_limited_per_user_with_retry_after() {
    let d = Daemon::with_config(tight_limits(&[
        "typing_rate",
        "read_rate",
        "delivered_rate",
    ]))
    .await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "hello")
        .await
        .expect(201);
    let routes = [
        ("typing", None),
        ("read", Some(json!({"seq": 1}))),
        ("delivered", Some(json!({"seq": 1}))),
    ];
    for (route, body) in routes {
        let url = d.url(&format!("/v1/conversations/{}/{route}", p.conversation));
        let mut refused = None;
        for _ in 0..10 {
            let mut req = d.http.post(&url).bearer_auth(&p.provider.token);
            if let Some(body) = &body {
                req = req.json(body);
            }
            let reply = req.send().await.unwrap();
            if reply.status().as_u16() == 429 {
                refused = Some(reply);
                break;
            }
            assert!(reply.status().is_success(), "{route}: {}", reply.status());
        }
        let reply = refused.unwrap_or_else(|| panic!("{route} was never rate limited"));
        let retry_after: u64 = reply.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1, "{route}: Retry-After {retry_after}");
        let body: Value = reply.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited", "{route}: {body}");
    }
    // The limit is the provider's: the customer is not held back by it.
    d.call(
        Method::POST,
        &format!("/v1/conversations/{}/typing", p.conversation),
        Some(&p.customer.token),
        None,
    )
    .await
    .expect(202);
    d.stop().await;
}

#[tokio::test]
async fn a_limit_outside_1_to_500_is_422_on_every_list() {
    let d = Daemon::start().await;
    let p = pair(&d).await;
    let ops = operator();
    let lists = [
        (
            format!("/v1/conversations/{}/messages", p.conversation),
            &p.customer.token,
        ),
        ("/v1/admin/flags".to_owned(), &ops.token),
        (
            format!("/v1/admin/users/{}/notifications", p.customer.id),
            &ops.token,
        ),
    ];
    for (list, token) in &lists {
        for limit in [0, 501, 100_000] {
            let reply = d.get(&format!("{list}?limit={limit}"), token).await;
            assert_eq!(reply.expect_error(422), "invalid", "{list}?limit={limit}");
        }
        for limit in [1, 500] {
            d.get(&format!("{list}?limit={limit}"), token)
                .await
                .expect(200);
        }
    }
    d.stop().await;
}
