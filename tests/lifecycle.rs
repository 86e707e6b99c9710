//! The daemon's life: restarts, SIGTERM with open streams, foreign data
//! directories, and the operational endpoints.

mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn a_restart_keeps_history_cursors_and_unread_counts() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(data.path()).await;
    let p = pair(&d).await;
    for i in 1..=3 {
        d.send(
            &p.customer,
            &p.conversation,
            &format!("c-{i}"),
            &format!("before {i}"),
        )
        .await
        .expect(201);
    }
    d.send(&p.provider, &p.conversation, "p-1", "reply before")
        .await
        .expect(201);
    d.post(
        &format!("/v1/conversations/{}/read", p.conversation),
        &p.provider.token,
        json!({"seq": 1}),
    )
    .await
    .expect(200);
    let history = d.messages(&p.customer, &p.conversation).await;
    let customer_view = d.listed(&p.customer, &p.conversation).await;
    let provider_view = d.listed(&p.provider, &p.conversation).await;
    assert_eq!(provider_view["unread_count"], 2);
    assert_eq!(customer_view["unread_count"], 1);
    let (customer_log, customer_head) = d.poll(&p.customer, 0, 0).await;
    let (_, provider_head) = d.poll(&p.provider, 0, 0).await;
    d.stop().await;

    let d = Daemon::start_in(data.path()).await;
    assert_eq!(d.messages(&p.customer, &p.conversation).await, history);
    assert_eq!(d.listed(&p.customer, &p.conversation).await, customer_view);
    assert_eq!(d.listed(&p.provider, &p.conversation).await, provider_view);
    let (log_after, head_after) = d.poll(&p.customer, 0, 0).await;
    assert_eq!(log_after, customer_log, "the event log survived");
    assert_eq!(head_after, customer_head);

    // Resuming from the old cursor replays nothing; new events continue it.
    let mut provider = d.ws(&p.provider, Some(provider_head)).await;
    assert!(provider.replayed.is_empty(), "{:?}", provider.replayed);
    assert_eq!(provider.ready_cursor, provider_head);
    let sent = d
        .send(&p.customer, &p.conversation, "c-4", "after the restart")
        .await;
    sent.expect(201);
    assert_eq!(
        sent.body["message"]["seq"], 5,
        "seq continues after a restart"
    );
    let event = provider.message_event(5).await;
    assert_eq!(cursor(&event), provider_head + 1);
    // A client_id used before the restart is still known.
    let retry = d
        .send(&p.customer, &p.conversation, "c-1", "before 1")
        .await;
    retry.expect(200);
    assert_eq!(retry.body["message"], history[0]);
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        3
    );
    d.stop().await;
}

/// `storage.durability: periodic` acknowledges once a write is committed in
/// memory and leaves the fsync to sled's background flush every
/// `flush_every_ms`: a machine crash may lose that window, but a clean stop
/// (SIGTERM) flushes, so everything acknowledged survives a restart. With the
/// flush a minute apart, only the shutdown's flush can have written these.
/// Catches: a periodic daemon that exits without flushing, or acks that are
/// not committed.
#[tokio::test]
async fn under_periodic_durability_everything_acknowledged_survives_a_clean_restart() {
    let data = tempfile::tempdir().unwrap();
    let launch = || Launch {
        data_dir: Some(data.path().to_owned()),
        config: vec![
            ("durability", "periodic".to_owned()),
            ("flush_every_ms", "60000".to_owned()),
        ],
        ..Launch::default()
    };
    let d = Daemon::launch(launch()).await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    for i in 1..=3 {
        customer
            .send_acked(&p.conversation, &format!("c-{i}"), "over the stream")
            .await;
    }
    d.send(&p.provider, &p.conversation, "p-1", "over HTTP")
        .await
        .expect(201);
    d.read(&p.provider, &p.conversation, 2).await.expect(200);
    let history = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(history.len(), 4);
    let provider_view = d.listed(&p.provider, &p.conversation).await;
    assert_eq!(provider_view["unread_count"], 1);
    let (log, head) = d.poll(&p.customer, 0, 0).await;
    customer.close().await;
    d.stop().await;

    let d = Daemon::launch(launch()).await;
    assert_eq!(d.messages(&p.customer, &p.conversation).await, history);
    assert_eq!(d.listed(&p.provider, &p.conversation).await, provider_view);
    assert_eq!(d.poll(&p.customer, 0, 0).await, (log, head));
    // A retry of an acknowledged send finds it.
    d.send(&p.customer, &p.conversation, "c-1", "over the stream")
        .await
        .expect(200);
    d.stop().await;
}

/// Catches: `logging.format: json` not writing one JSON object per line,
/// `logging.level` ignored, or `RUST_LOG` not overriding it. Each log is read
/// after the daemon has exited, so it is complete.
#[tokio::test]
async fn logs_are_json_lines_at_the_configured_level_and_rust_log_overrides_it() {
    let run = |env: Vec<(String, String)>| async move {
        let mut d = Daemon::launch(Launch {
            config: vec![("format", "json".to_owned()), ("level", "error".to_owned())],
            env,
            ..Launch::default()
        })
        .await;
        d.get("/v1/conversations", &token("ann", "customer"))
            .await
            .expect(200);
        d.terminate();
        assert!(d.wait().await.success());
        d.log()
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect::<Vec<_>>()
    };
    let info = |lines: &[serde_json::Value]| lines.iter().filter(|l| l["level"] == "INFO").count();
    let quiet = run(Vec::new()).await;
    assert_eq!(info(&quiet), 0, "level error: {quiet:?}");
    let chatty = run(vec![("RUST_LOG".to_owned(), "info".to_owned())]).await;
    assert!(info(&chatty) > 0, "RUST_LOG=info: {chatty:?}");
    let starting = chatty
        .iter()
        .find(|l| l["fields"]["message"] == "starting")
        .unwrap_or_else(|| panic!("no starting line: {chatty:?}"));
    assert!(starting["fields"]["addr"].is_string(), "{starting}");
}

#[tokio::test]
async fn sigterm_closes_streams_with_going_away_and_exits_zero() {
    let mut d = Daemon::start().await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;
    customer.ping().await;
    d.terminate();
    for ws in [&mut customer, &mut provider] {
        let frame = ws.close_frame().await.expect("a close frame with a code");
        assert_eq!(u16::from(frame.code), 1001, "{frame:?}");
    }
    let status = d.wait().await;
    assert!(status.success(), "exit status {status}; log:\n{}", d.log());
}

#[tokio::test]
async fn a_data_directory_of_another_schema_version_is_refused() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(data.path()).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "keep me")
        .await
        .expect(201);
    d.stop().await;

    // Pretend a newer parleyd wrote it: the version is the `schema_version` key of
    // the `meta` tree, a big-endian u32 (see the layout in src/store/mod.rs).
    let current = {
        let db = sled::open(data.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        let current = meta.get("schema_version").unwrap().expect("a version");
        assert_eq!(current.len(), 4);
        meta.insert("schema_version", &999u32.to_be_bytes())
            .unwrap();
        db.flush().unwrap();
        current
    };
    let (status, stderr) = serve_expecting_refusal(data.path()).await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("schema version 999"),
        "the message names the version found: {stderr}"
    );

    // Put the version back: the data was not touched by the refused start.
    // (Upgrades from older versions: tests/upgrade.rs, on real old data.)
    {
        let db = sled::open(data.path()).unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert("schema_version", &current).unwrap();
        db.flush().unwrap();
    }
    let d = Daemon::start_in(data.path()).await;
    let history = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["content"], "keep me");
    d.stop().await;
}

#[tokio::test]
async fn a_data_directory_not_written_by_parleyd_is_refused() {
    let data = tempfile::tempdir().unwrap();
    {
        let db = sled::open(data.path()).unwrap();
        db.open_tree("orders")
            .unwrap()
            .insert("order-1", "someone else's data")
            .unwrap();
        db.flush().unwrap();
    }
    let (status, stderr) = serve_expecting_refusal(data.path()).await;
    assert!(!status.success(), "exit status {status}");
    assert!(
        stderr.contains("without a parleyd schema version"),
        "a clear message: {stderr}"
    );
    // And it was left alone.
    let db = sled::open(data.path()).unwrap();
    assert!(db.open_tree("meta").unwrap().is_empty());
    assert_eq!(
        db.open_tree("orders")
            .unwrap()
            .get("order-1")
            .unwrap()
            .as_deref(),
        Some(&b"someone else's data"[..])
    );
}

#[tokio::test]
async fn health_metrics_and_openapi_are_served() {
    let d = Daemon::start().await;
    let health = d.call(Method::GET, "/healthz", None, None).await;
    health.expect(200);
    assert_eq!(health.body["status"], "ok");

    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "count me")
        .await
        .expect(201);
    let metrics = d.http.get(d.url("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("parleyd_http_requests_total"), "{text}");
    assert!(text.contains("parleyd_messages_stored_total"), "{text}");
    // Prometheus text: every sample line is `name{labels} value`.
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let value = line.rsplit(' ').next().unwrap();
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
    }

    let doc = d.call(Method::GET, "/openapi.json", None, None).await;
    doc.expect(200);
    assert!(
        doc.body["openapi"].as_str().unwrap_or("").starts_with("3."),
        "an OpenAPI 3 document"
    );
    let paths = doc.body["paths"].as_object().expect("paths");
    let routes = [
        ("put", "/v1/users/{id}"),
        ("put", "/v1/listings/{id}"),
        ("post", "/v1/conversations"),
        ("get", "/v1/conversations"),
        ("get", "/v1/conversations/{id}"),
        ("get", "/v1/conversations/{id}/messages"),
        ("post", "/v1/conversations/{id}/messages"),
        ("post", "/v1/conversations/{id}/read"),
        ("post", "/v1/conversations/{id}/typing"),
        ("post", "/v1/bookings"),
        ("patch", "/v1/bookings/{id}"),
        ("post", "/v1/signals"),
        ("get", "/v1/events"),
        ("get", "/v1/stream"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
    ];
    for (method, path) in routes {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "the document lacks {} {path}",
            method.to_uppercase()
        );
    }

    // And every documented route is really served (none is "no such route").
    for (path, item) in paths {
        let concrete = path.replace("{id}", "some-id");
        for method in item.as_object().unwrap().keys() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else {
                continue;
            };
            let body = matches!(m, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            let reply = d
                .call(m, &concrete, Some(&p.customer.token), body.as_ref())
                .await;
            let no_route = reply.status == 405
                || (reply.status == 404 && reply.body["error"]["message"] == "no such route");
            assert!(
                !no_route,
                "{method} {path} is documented but not served: {} {}",
                reply.status, reply.body
            );
        }
    }
    d.stop().await;
}

#[tokio::test]
async fn a_made_up_http_method_does_not_become_a_metrics_label() {
    let d = Daemon::start().await;
    for method in ["FOOBAR", "BREW"] {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let reply = d.call(m, "/healthz", None, None).await;
        assert!((400..500).contains(&reply.status), "{method}: {reply:?}");
    }
    let text = d.metrics().await;
    let methods: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("parleyd_http_requests_total{"))
        .filter_map(|l| l.split("method=\"").nth(1)?.split('"').next())
        .collect();
    assert!(methods.contains("other"), "{text}");
    assert!(
        methods.iter().all(|m| [
            "GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "other"
        ]
        .contains(m)),
        "a method label outside the closed set: {methods:?}"
    );
    d.stop().await;
}

#[tokio::test]
async fn a_huge_request_path_does_not_make_a_huge_log_line() {
    // The access log (one line per request) is at debug.
    let d = Daemon::with_config(vec![("level", "\"info,parleyd::access=debug\"".into())]).await;
    // A request head over 32 KiB is refused before any route: 431.
    let huge = format!("/{}", "a".repeat(60_000));
    let reply = d.call(Method::GET, &huge, None, None).await;
    assert_eq!(reply.status, 431);
    // One just under it is routed, and logged in the access log.
    let path = format!("/{}", "a".repeat(30_000));
    let reply = d.call(Method::GET, &path, None, None).await;
    assert_eq!(reply.status, 404);
    // The daemon logged the request, with its path cut short.
    let log = guard("the request to be logged", async {
        loop {
            let log = d.log();
            if log.contains("aaaa…") {
                return log;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 2_000, "a log line of {longest} bytes");
    d.stop().await;
}
