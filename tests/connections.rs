//! The connection layer: timeouts that release slow and silent clients, the cap
//! on all connections below the open-files limit, the cap per client address,
//! the rate of requests without credentials, and trusted proxies.

mod common;

use std::net::SocketAddr;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A TCP connection to the daemon from `source` (any 127.x.y.z works on
/// Linux), so one test can be several client addresses.
async fn connect_from(d: &Daemon, source: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    let source: SocketAddr = format!("{source}:0").parse().expect("source address");
    socket.bind(source).expect("bind the source address");
    let daemon: SocketAddr = d.addr.parse().expect("daemon address");
    guard("a TCP connection", socket.connect(daemon))
        .await
        .expect("connect")
}

/// Reads until the daemon closes the connection; returns what it sent.
async fn read_to_close(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    // A reset after the answer counts as closed too.
    let _ = guard(
        "the daemon to close the connection",
        tcp.read_to_end(&mut answer),
    )
    .await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// Sends one request head and returns the whole answer (the connection closed).
async fn request_and_close(tcp: &mut TcpStream, head: &str) -> String {
    tcp.write_all(head.as_bytes()).await.expect("write");
    read_to_close(tcp).await
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: parleyd\r\nConnection: close\r\n\r\n";

/// File descriptors the daemon holds right now.
fn open_files(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("the daemon's /proc fd directory")
        .count()
}

/// The daemon never failed to accept for want of descriptors, and holds fewer
/// than `limit`.
async fn never_ran_out_of_files(d: &Daemon, limit: usize) {
    assert_eq!(d.metric("parleyd_accept_errors_total").await, 0.0);
    let held = open_files(d);
    assert!(
        held < limit,
        "the daemon holds {held} descriptors of {limit}"
    );
}

/// How many connections the daemon admits in all, as it worked out at start.
async fn connection_limit(d: &Daemon) -> usize {
    d.metric("parleyd_connection_limit").await as usize
}

#[tokio::test]
async fn silent_sockets_from_one_address_leave_health_and_writes_answered() {
    // The shipped limits, but for a timeout long enough that the silent
    // sockets are all still held below.
    let d = Daemon::launch(Launch {
        config: vec![("header_read_timeout", "5m".into())],
        open_files: Some(256),
        ..Launch::default()
    })
    .await;
    // One address may hold half of what fits beside the daemon's reserve.
    let per_address = connection_limit(&d).await / 2;
    assert!(per_address > 0);
    // 300 sockets that never say anything, from one address: more than the
    // daemon could hold with 256 descriptors.
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(connect_from(&d, "127.0.0.2").await);
    }
    // Another address is answered, and the service and people can write.
    let health = d.call(Method::GET, "/healthz", None, None).await;
    health.expect(200);
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c1", "still here?")
        .await
        .expect(201);
    never_ran_out_of_files(&d, 256).await;

    // The daemon admitted the first 64 and closes the others (answering
    // them would take a request they never send).
    for tcp in &mut silent[per_address..] {
        read_to_close(tcp).await;
    }
    // The silent address's next connection is told why it is refused.
    let mut refused = connect_from(&d, "127.0.0.2").await;
    let answer = request_and_close(&mut refused, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("connections.max_per_address"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    let refusals = d
        .metric("parleyd_limit_refusals_total{limit=\"connections_per_address\"}")
        .await;
    assert!(refusals >= (300 - per_address) as f64, "{refusals}");
    drop(silent);
}

#[tokio::test]
async fn a_full_daemon_refuses_new_connections_cleanly_and_recovers() {
    let d = Daemon::launch(Launch {
        config: vec![("header_read_timeout", "5m".into())],
        open_files: Some(256),
        ..Launch::default()
    })
    .await;
    // Take every slot, from several addresses so none meets its own cap (the
    // harness's pooled connection may hold one already).
    let limit = connection_limit(&d).await;
    let mut held = Vec::new();
    for i in 0..limit {
        held.push(connect_from(&d, &format!("127.0.1.{}", 1 + i % 8)).await);
    }
    let mut refused = connect_from(&d, "127.0.2.1").await;
    let answer = request_and_close(&mut refused, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"unavailable\""), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("retry-after: 1"),
        "{answer}"
    );
    // Refusing more is bounded: the daemon never runs out of descriptors.
    let mut more = Vec::new();
    for _ in 0..100 {
        more.push(connect_from(&d, "127.0.2.2").await);
    }
    drop(more);

    // Once the holders go, everyone is served again.
    drop(held);
    guard("the daemon to answer again", async {
        loop {
            let mut tcp = connect_from(&d, "127.0.2.1").await;
            if request_and_close(&mut tcp, HEALTHZ)
                .await
                .starts_with("HTTP/1.1 200")
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    never_ran_out_of_files(&d, 256).await;
    assert!(
        d.metric("parleyd_limit_refusals_total{limit=\"connections\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_stream_whose_client_stops_reading_is_dropped() {
    let d = Daemon::with_config(vec![
        ("write_timeout", "1s".into()),
        ("queue_capacity", "16".into()),
        ("send_burst", "1000".into()),
        ("max_message_chars", "60000".into()),
    ])
    .await;
    let p = pair(&d).await;
    // The provider's device stops reading, behind a small receive buffer.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(d.addr.parse().unwrap()).await.unwrap();
    let _deaf = d.ws_over(&p.provider, tcp).await;
    assert_eq!(d.metric("parleyd_stream_connections").await, 1.0);
    // Messages pile up until the daemon's writes to it make no progress: past
    // the socket's send buffer (up to 4 MiB on Linux) and the WebSocket's own.
    let text = "x".repeat(60_000);
    let mut sent = 0;
    guard("the daemon to drop the stream", async {
        while d.metric("parleyd_stream_connections").await > 0.0 {
            d.send(&p.customer, &p.conversation, format!("m{sent}"), &text)
                .await
                .expect(201);
            sent += 1;
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    // Nothing is lost: the messages are all there for its next connection.
    assert_eq!(d.messages(&p.provider, &p.conversation).await.len(), sent);
}

#[tokio::test]
async fn slow_silent_and_idle_clients_are_disconnected_without_error_lines() {
    let d = Daemon::with_config(vec![
        ("header_read_timeout", "1s".into()),
        ("body_read_timeout", "1s".into()),
    ])
    .await;
    let customer = Person::new("cus-slow", "customer");

    // Silent from the start.
    let mut silent = connect_from(&d, "127.0.0.1").await;
    assert_eq!(read_to_close(&mut silent).await, "");

    // Half a request head.
    let mut half_head = connect_from(&d, "127.0.0.1").await;
    half_head
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: parleyd\r\n")
        .await
        .unwrap();
    assert_eq!(read_to_close(&mut half_head).await, "");

    // Idle after a complete exchange on a keep-alive connection.
    let mut idle = connect_from(&d, "127.0.0.1").await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: parleyd\r\n\r\n")
        .await
        .unwrap();
    let answer = read_to_close(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A body that stops arriving gets 408 and the connection closes.
    let mut half_body = connect_from(&d, "127.0.0.1").await;
    let head = format!(
        "POST /v1/conversations HTTP/1.1\r\nHost: parleyd\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"listing_id\":",
        customer.token
    );
    let answer = request_and_close(&mut half_body, &head).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");

    // A client that hangs up mid-request.
    let mut dropped = connect_from(&d, "127.0.0.1").await;
    dropped.write_all(b"POST /v1/conver").await.unwrap();
    drop(dropped);

    guard("the dropped connection to be counted", async {
        while d
            .metric("parleyd_connection_errors_total{kind=\"incomplete\"}")
            .await
            < 1.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let timeouts = d
        .metric("parleyd_connection_errors_total{kind=\"header_timeout\"}")
        .await;
    assert!(timeouts >= 2.0, "{timeouts}");
    let log = d.log();
    assert!(!log.contains("ERROR"), "clients wrote error lines:\n{log}");
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_address_is_limited() {
    let d = Daemon::with_config(vec![
        ("trusted_proxies", "[127.0.0.1]".into()),
        ("max_per_address", "2".into()),
        ("anonymous_rate", "{per_second: 1, burst: 3}".into()),
    ])
    .await;
    let http = client();
    let healthz = |forwarded: &'static str, authorization: Option<&'static str>| {
        let mut request = http
            .get(d.url("/healthz"))
            .header("x-forwarded-for", forwarded);
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        request.send()
    };
    // Requests without credentials: three at once per forwarded address, and a
    // made-up token does not exempt a public route.
    let statuses = futures_util::future::join_all([
        healthz("198.51.100.1", None),
        healthz("198.51.100.1", Some("Bearer made-up")),
        healthz("198.51.100.1", None),
        healthz("198.51.100.1", Some("Bearer made-up")),
    ])
    .await
    .into_iter()
    .map(|reply| reply.unwrap().status().as_u16())
    .collect::<Vec<_>>();
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    let refused = healthz("198.51.100.1", None).await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("198.51.100.1"));
    assert_eq!(healthz("198.51.100.2", None).await.unwrap().status(), 200);
    // The routes the connection layer rates as public are the ones that
    // answer without a token (another address, so the budget is fresh).
    for path in parleyd::api::PUBLIC_PATHS {
        let reply = http
            .get(d.url(path))
            .header("x-forwarded-for", "198.51.100.3")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 200, "{path}");
    }
    // Authenticated requests do not pay for it.
    let customer = Person::new("cus-proxied", "customer");
    d.get("/v1/conversations", &customer.token)
        .await
        .expect(200);

    // A peer that is not trusted cannot choose its address: whatever it
    // forwards, its requests are its own.
    let mut answers = Vec::new();
    for i in 0..4 {
        let mut untrusted = connect_from(&d, "127.0.0.2").await;
        let head = format!(
            "GET /healthz HTTP/1.1\r\nHost: parleyd\r\nX-Forwarded-For: 198.51.100.{}\r\n\
             Connection: close\r\n\r\n",
            10 + i
        );
        untrusted.write_all(head.as_bytes()).await.unwrap();
        answers.push(untrusted);
    }
    let mut refusals = Vec::new();
    for tcp in &mut answers {
        let answer = read_to_close(tcp).await;
        if answer.starts_with("HTTP/1.1 429") {
            refusals.push(answer);
        }
    }
    assert!(
        refusals.iter().any(|a| a.contains("127.0.0.2")),
        "four requests at once from 127.0.0.2 were not limited as its own: {refusals:?}"
    );

    // Streams hold a slot of their forwarded address for their whole life.
    let stream = |user: &str, forwarded: &str| {
        let person = Person::new(user, "customer");
        let mut request = format!("ws://{}/v1/stream?token={}", d.addr, person.token)
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("x-forwarded-for", forwarded.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let first = stream("cus-a", "203.0.113.9").await.expect("first stream");
    let _second = stream("cus-b", "203.0.113.9").await.expect("second stream");
    match stream("cus-c", "203.0.113.9").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("a third stream of one address was not refused: {other:?}"),
    }
    let _elsewhere = stream("cus-c", "203.0.113.10")
        .await
        .expect("another address");
    drop(first);
    guard("the closed stream's slot to come back", async {
        while stream("cus-c", "203.0.113.9").await.is_err() {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;

    // A direct client's stream keeps its connection slot once upgraded.
    let direct = [
        d.ws_over(
            &Person::new("cus-d", "customer"),
            connect_from(&d, "127.0.0.3").await,
        )
        .await,
        d.ws_over(
            &Person::new("cus-e", "customer"),
            connect_from(&d, "127.0.0.3").await,
        )
        .await,
    ];
    let mut third = connect_from(&d, "127.0.0.3").await;
    let answer = request_and_close(&mut third, HEALTHZ).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    drop(direct);

    for limit in ["connections_per_address", "anonymous_requests_per_address"] {
        let series = format!("parleyd_limit_refusals_total{{limit=\"{limit}\"}}");
        assert!(d.metric(&series).await >= 1.0, "{series}");
    }
}
