//! Supervision and observability end to end: every background component is
//! restarted when it fails and counted, `/healthz` names what is down, and
//! `GET /v1/admin/pipeline` and `/metrics` show what waits. Components are
//! failed through the dev-only fault route (the daemon runs `--dev` on the
//! manual clock).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

async fn start() -> Daemon {
    Daemon::launch(Launch {
        config: vec![("clock", "manual".to_owned())],
        automation: true,
        ..Launch::default()
    })
    .await
}

async fn health(d: &Daemon) -> (u16, Value) {
    let reply = d.http.get(d.url("/healthz")).send().await.unwrap();
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap())
}

/// Polls `/healthz` until `accept` holds for its status and body.
async fn health_until(d: &Daemon, what: &str, accept: impl Fn(u16, &Value) -> bool) -> Value {
    guard(what, async {
        loop {
            let (status, body) = health(d).await;
            if accept(status, &body) {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

async fn fault(d: &Daemon, component: &str, fail: bool) -> Reply {
    d.put(
        &format!("/v1/admin/pipeline/components/{component}/fault"),
        &operator().token,
        json!({ "fail": fail }),
    )
    .await
}

async fn pipeline(d: &Daemon) -> Value {
    let reply = d.get("/v1/admin/pipeline", &operator().token).await;
    reply.expect(200);
    reply.body.clone()
}

fn component<'a>(pipeline: &'a Value, name: &str) -> &'a Value {
    pipeline["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no component {name} in {pipeline}"))
}

fn automated(messages: &[Value], template: &str) -> usize {
    messages
        .iter()
        .filter(|m| m["automation"]["template"] == template)
        .count()
}

#[tokio::test]
async fn in_normal_operation_health_is_ok_and_the_pipeline_is_reported() {
    let d = start().await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);
    guard("the inquiry's acknowledgement", async {
        while automated(
            &d.messages(&p.customer, &p.conversation).await,
            "inquiry_ack",
        ) == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    assert_eq!(health(&d).await, (200, json!({"status": "ok"})));

    let report = pipeline(&d).await;
    let names: Vec<&str> = report["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "engine",
        "scheduler",
        "writer",
        "upkeep",
        "rules.reload",
        "outbox.retention",
        "outbox.in_app",
        "outbox.email",
        "outbox.push",
        "outbox.sms",
        "outbox.webhook",
        "outbox.digest",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
        let c = component(&report, name);
        assert_eq!(c["state"], "up", "{c}");
        assert_eq!(c["restarts"], 0, "{c}");
    }
    // The acknowledgement is sent; the sequence's later steps wait for their time.
    assert_eq!(report["timers"]["due"], 0, "{report}");
    assert!(report["timers"]["lag_seconds"].is_null(), "{report}");
    assert!(report["writer"]["queue_depth"].is_u64(), "{report}");
    assert!(report["events"]["waiting"].is_u64(), "{report}");
    assert_eq!(report["outbox"]["email"]["due"], 0, "{report}");
    assert_eq!(report["dead_letters"]["notifications"], 0, "{report}");
    assert_eq!(report["dead_letters"]["events"], 0, "{report}");

    // Operators only.
    d.get("/v1/admin/pipeline", &p.customer.token)
        .await
        .expect(403);

    let metrics = d.metrics().await;
    for series in [
        "parleyd_component_up{component=\"engine\"} 1",
        "parleyd_component_up{component=\"writer\"} 1",
        "parleyd_component_restarts_total{component=\"scheduler\"} 0",
        "parleyd_domain_events_waiting ",
        "parleyd_domain_event_oldest_age_seconds ",
        "parleyd_writer_queue_depth ",
        "parleyd_timers_due ",
        "parleyd_timers_due_lag_seconds ",
        "parleyd_outbox_due{channel=\"email\"} ",
        "parleyd_outbox_due_oldest_age_seconds{channel=\"webhook\"} ",
        "parleyd_dead_letters{list=\"notifications\"} ",
    ] {
        assert!(
            metrics.lines().any(|l| l.starts_with(series)),
            "{series} missing from /metrics"
        );
    }
}

/// The scheduler is killed: while it is down `/healthz` names it and the
/// pipeline shows the step that fell due waiting; restarted, it sends the
/// step, the restart is counted and health is ok again.
#[tokio::test]
async fn a_killed_scheduler_is_named_while_down_then_restarted_and_counted() {
    let d = start().await;
    d.expect_log_errors("component stopped; restarting it");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);

    fault(&d, "scheduler", true).await.expect(200);
    let down = health_until(&d, "/healthz to name the scheduler", |status, _| {
        status == 503
    })
    .await;
    assert_eq!(
        down,
        json!({"status": "unhealthy", "components": [{"name": "scheduler", "state": "down"}]})
    );

    // The provider's reminder falls due four hours after the inquiry; an
    // hour later it is late, and nothing sends it.
    advance(&d, "5h").await;
    let report = pipeline(&d).await;
    assert_eq!(component(&report, "scheduler")["state"], "down");
    assert!(report["timers"]["due"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["timers"]["lag_seconds"].as_f64().unwrap() >= 3600.0,
        "{report}"
    );
    let gauges = d.metrics().await;
    assert!(
        gauges
            .lines()
            .any(|l| l == "parleyd_component_up{component=\"scheduler\"} 0"),
        "{gauges}"
    );
    assert_eq!(
        automated(
            &d.messages(&p.provider, &p.conversation).await,
            "provider_reply_reminder"
        ),
        0
    );

    fault(&d, "scheduler", false).await.expect(200);
    guard("the reminder, once the scheduler is back", async {
        loop {
            let messages = d.messages(&p.provider, &p.conversation).await;
            if automated(&messages, "provider_reply_reminder") == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    health_until(&d, "/healthz to be ok again", |status, _| status == 200).await;
    assert!(
        d.metric("parleyd_component_restarts_total{component=\"scheduler\"}")
            .await
            >= 1.0
    );
    let report = pipeline(&d).await;
    let scheduler = component(&report, "scheduler");
    assert_eq!(scheduler["state"], "up");
    assert!(scheduler["restarts"].as_u64().unwrap() >= 1, "{scheduler}");
    assert!(
        scheduler["last_error"]
            .as_str()
            .unwrap()
            .contains("operator"),
        "{scheduler}"
    );
    assert_eq!(report["timers"]["due"], 0, "{report}");
}

/// A killed engine task is restarted. The scheduler also processes queued
/// events before firing steps, so both are killed to see events wait.
#[tokio::test]
async fn a_killed_engine_is_restarted_and_counted_and_waiting_events_are_shown() {
    let d = start().await;
    d.expect_log_errors("component stopped; restarting it");
    let p = pair(&d).await;
    fault(&d, "engine", true).await.expect(200);
    fault(&d, "scheduler", true).await.expect(200);
    health_until(&d, "/healthz to name the engine and the scheduler", |status, body| {
        status == 503
            && body["components"]
                == json!([{"name": "engine", "state": "down"}, {"name": "scheduler", "state": "down"}])
    })
    .await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi!")
        .await
        .expect(201);
    advance(&d, "1m").await;
    let report = pipeline(&d).await;
    assert!(
        report["events"]["waiting"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["events"]["oldest_age_seconds"].as_f64().unwrap() >= 60.0,
        "{report}"
    );
    // Not settled while the event waits, even after a wait: what waits is named.
    let unsettled = d
        .get("/v1/admin/pipeline/settled?wait=1", &operator().token)
        .await;
    unsettled.expect(200);
    assert_eq!(unsettled.body["settled"], false, "{}", unsettled.body);
    assert!(
        unsettled.body["waiting"]
            .as_str()
            .is_some_and(|w| w.starts_with("event ")),
        "{}",
        unsettled.body
    );

    fault(&d, "engine", false).await.expect(200);
    fault(&d, "scheduler", false).await.expect(200);
    health_until(&d, "/healthz to be ok again", |status, body| {
        status == 200 && *body == json!({"status": "ok"})
    })
    .await;
    for component in ["engine", "scheduler"] {
        let restarts = d
            .metric(&format!(
                "parleyd_component_restarts_total{{component=\"{component}\"}}"
            ))
            .await;
        assert!(restarts >= 1.0, "{component}: {restarts}");
    }
    assert_eq!(
        d.metric("parleyd_component_restarts_total{component=\"outbox.in_app\"}")
            .await,
        0.0
    );
    // The restarted engine works: the inquiry is acknowledged.
    guard("the acknowledgement from the restarted engine", async {
        while automated(
            &d.messages(&p.customer, &p.conversation).await,
            "inquiry_ack",
        ) == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    settled(&d).await;
    assert_eq!(pipeline(&d).await["events"]["waiting"], 0);
}

#[tokio::test]
async fn the_fault_route_is_for_operators_and_known_components_only() {
    let d = start().await;
    let customer = Person::new("c", "customer");
    d.put(
        "/v1/admin/pipeline/components/engine/fault",
        &customer.token,
        json!({"fail": true}),
    )
    .await
    .expect(403);
    fault(&d, "no-such-thing", true).await.expect(404);
    assert_eq!(health(&d).await.0, 200);
}

/// One task reloads the rules, on file changes and on SIGHUP. Restarted
/// after a failure, it reloads at once: an edit made while it was down goes
/// live without waiting for another edit.
#[tokio::test]
async fn the_restarted_rule_reloader_catches_up_on_edits_and_sighup_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = vec![("clock", "manual".to_owned())];
    config.extend(copy_rules(dir.path()));
    let d = Daemon::launch(Launch {
        config,
        automation: true,
        ..Launch::default()
    })
    .await;
    d.expect_log_errors("component stopped; restarting it");

    fault(&d, "rules.reload", true).await.expect(200);
    health_until(&d, "/healthz to name the reloader", |status, body| {
        status == 503 && body["components"] == json!([{"name": "rules.reload", "state": "down"}])
    })
    .await;
    let templates = dir.path().join("templates/inquiry.yaml");
    let text = std::fs::read_to_string(&templates).unwrap();
    assert!(text.contains("Thanks {customer.name}!"));
    std::fs::write(
        &templates,
        text.replacen("Thanks {customer.name}!", "Welcome {customer.name}!", 1),
    )
    .unwrap();

    fault(&d, "rules.reload", false).await.expect(200);
    let status = rules_after(&d, |s| s["version"].as_u64() >= Some(2)).await;
    assert!(status["last_failure"].is_null(), "{status}");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi")
        .await
        .expect(201);
    guard("the acknowledgement with the edited text", async {
        loop {
            let messages = d.messages(&p.customer, &p.conversation).await;
            if let Some(ack) = messages
                .iter()
                .find(|m| m["automation"]["template"] == "inquiry_ack")
            {
                assert!(
                    ack["content"].as_str().unwrap().starts_with("Welcome"),
                    "{ack}"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let version = status["version"].as_u64().unwrap();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &d.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    rules_after(&d, |s| s["version"].as_u64() > Some(version)).await;
    health_until(&d, "/healthz to be ok", |status, _| status == 200).await;
}

/// A webhook receiver that reads every request and answers none until it is
/// released; then it answers each with 200.
struct Hanging {
    url: String,
    release: Arc<watch::Sender<bool>>,
}

impl Hanging {
    async fn start() -> Hanging {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/webhook", listener.local_addr().unwrap());
        let release = Arc::new(watch::channel(false).0);
        let released = Arc::clone(&release);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut released = released.subscribe();
                tokio::spawn(async move {
                    // The whole request first: answering before it is read
                    // would reset the connection under the client.
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !complete(&request) {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => request.extend_from_slice(&buf[..n]),
                        }
                    }
                    if released.wait_for(|r| *r).await.is_err() {
                        return;
                    }
                    let _ = socket
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Hanging { url, release }
    }
}

/// A channel whose endpoint never answers holds its lane's queue: the
/// component is up but makes no progress, and `/healthz` names it stuck
/// after `pipeline.stuck_after`, until the endpoint answers again.
#[tokio::test]
async fn a_lane_whose_endpoint_hangs_is_named_stuck_until_it_moves_again() {
    let webhook = Hanging::start().await;
    let d = Daemon::launch(Launch {
        config: vec![
            ("clock", "manual".to_owned()),
            ("webhook_url", webhook.url.clone()),
            (
                "webhook_secret",
                "test-webhook-secret-0123456789".to_owned(),
            ),
            ("timeout", "1h".to_owned()),
            ("concurrency", "1".to_owned()),
            ("stuck_after", "1s".to_owned()),
        ],
        automation: true,
        ..Launch::default()
    })
    .await;
    let first = pair(&d).await;
    let second = pair_of(
        &d,
        Person::new("cust-2", "customer"),
        Person::new("prov-1", "provider"),
    )
    .await;
    // Two inquiries: two `inquiry_received` webhooks, one at a time.
    for p in [&first, &second] {
        d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
            .await
            .expect(201);
    }

    let stuck = health_until(
        &d,
        "/healthz to name the webhook lane stuck",
        |status, _| status == 503,
    )
    .await;
    assert_eq!(
        stuck,
        json!({"status": "unhealthy", "components": [{"name": "outbox.webhook", "state": "stuck"}]})
    );
    let report = pipeline(&d).await;
    let lane = component(&report, "outbox.webhook");
    assert_eq!(lane["state"], "stuck", "{lane}");
    assert!(lane["waiting_seconds"].as_f64().unwrap() >= 1.0, "{lane}");
    assert_eq!(lane["restarts"], 0, "{lane}");
    // The hanging attempt has moved its entry to the end of its lease: only
    // the count of deliveries in flight keeps the pipeline from settling.
    let unsettled = d.get("/v1/admin/pipeline/settled", &operator().token).await;
    assert_eq!(
        unsettled.body,
        json!({"settled": false, "now": unsettled.body["now"], "waiting": "webhook: 1 in flight"})
    );

    webhook.release.send_replace(true);
    health_until(
        &d,
        "/healthz to be ok once the endpoint answers",
        |status, body| status == 200 && *body == json!({"status": "ok"}),
    )
    .await;
    guard("both webhooks delivered", async {
        loop {
            let outbox = d.get("/v1/admin/outbox", &operator().token).await;
            outbox.expect(200);
            if outbox.body["queued"]["webhook"].as_u64().unwrap_or(0) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// Whether `request` holds a whole HTTP/1.1 request: its head and as many body
/// bytes as its `content-length` says.
fn complete(request: &[u8]) -> bool {
    let Some(end) = request.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&request[..end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    request.len() >= end + 4 + length
}
