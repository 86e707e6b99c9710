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

fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|rest| rest.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// File descriptors the daemon holds right now.
fn open_files(d: &Daemon) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", d.pid()))
        .expect("the daemon's /proc fd directory")
        .count()
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
    // 300 sockets that never say anything, from one address: more than the
    // daemon could hold with 256 descriptors. 256 less the 128 reserved
    // leaves 128 connections, of which one address may hold half.
    let per_address = 64;
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
    assert!(
        open_files(&d) < 256,
        "the daemon holds {} descriptors of 256",
        open_files(&d)
    );

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
    let metrics = d.metrics().await;
    assert!(
        counter(
            &metrics,
            "parleyd_limit_refusals_total{limit=\"connections_per_address\"}"
        ) >= (300 - per_address) as u64,
        "{metrics}"
    );
    drop(silent);
}

#[tokio::test]
async fn a_full_daemon_refuses_new_connections_cleanly_and_recovers() {
    let d = Daemon::launch(Launch {
        config: vec![
            ("reserved_file_descriptors", "64".into()),
            ("header_read_timeout", "5m".into()),
        ],
        open_files: Some(256),
        ..Launch::default()
    })
    .await;
    // 256 - 64 = 192 connections fit. Hold them all from several addresses.
    let mut held = Vec::new();
    for i in 0..192 {
        held.push(connect_from(&d, &format!("127.0.1.{}", 1 + i % 8)).await);
    }
    let held_files = open_files(&d);
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
    assert!(
        open_files(&d) < 256,
        "{held_files} with every slot taken, now {}",
        open_files(&d)
    );
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
    let metrics = d.metrics().await;
    assert!(
        counter(
            &metrics,
            "parleyd_limit_refusals_total{limit=\"connections\"}"
        ) >= 1,
        "{metrics}"
    );
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

    let metrics = guard("the dropped connection to be counted", async {
        loop {
            let metrics = d.metrics().await;
            if counter(
                &metrics,
                "parleyd_connection_errors_total{kind=\"incomplete\"}",
            ) >= 1
            {
                break metrics;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        counter(
            &metrics,
            "parleyd_connection_errors_total{kind=\"header_timeout\"}"
        ) >= 2,
        "{metrics}"
    );
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
    let healthz = |forwarded: &'static str| {
        http.get(d.url("/healthz"))
            .header("x-forwarded-for", forwarded)
            .send()
    };
    // Requests without credentials: three at once per forwarded address.
    for _ in 0..3 {
        assert_eq!(healthz("198.51.100.1").await.unwrap().status(), 200);
    }
    let refused = healthz("198.51.100.1").await.unwrap();
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(healthz("198.51.100.2").await.unwrap().status(), 200);
    // Authenticated requests do not pay for it.
    let customer = Person::new("cus-proxied", "customer");
    d.get("/v1/conversations", &customer.token)
        .await
        .expect(200);

    // A peer that is not trusted cannot choose its address: it is itself.
    let mut untrusted = connect_from(&d, "127.0.0.2").await;
    let answer = request_and_close(
        &mut untrusted,
        "GET /healthz HTTP/1.1\r\nHost: parleyd\r\nX-Forwarded-For: 198.51.100.1\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

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
    let metrics = d.metrics().await;
    for limit in ["connections_per_address", "anonymous_requests_per_address"] {
        let series = format!("parleyd_limit_refusals_total{{limit=\"{limit}\"}}");
        assert!(counter(&metrics, &series) >= 1, "{series}:\n{metrics}");
    }
}
