//! Automation end to end: the daemon runs the shipped rules (or an edited copy)
//! with a manual clock that the test moves through `POST /v1/admin/clock`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

async fn start(data_dir: Option<&Path>, rules: Option<&Path>) -> Daemon {
    let mut config = vec![("clock", "manual".to_owned())];
    if let Some(dir) = rules {
        config.extend(copy_rules(dir));
    }
    Daemon::launch(Launch {
        data_dir: data_dir.map(Path::to_owned),
        config,
        automation: true,
        ..Launch::default()
    })
    .await
}

fn time_of(message: &Value) -> jiff::Timestamp {
    message["created_at"].as_str().unwrap().parse().unwrap()
}

fn hours(h: i64) -> jiff::SignedDuration {
    jiff::SignedDuration::from_hours(h)
}

fn sent_by_template<'a>(messages: &'a [Value], template: &str) -> Vec<&'a Value> {
    messages
        .iter()
        .filter(|m| m["automation"]["template"] == template)
        .collect()
}

/// Waits until the conversation holds an automated message from `template`.
async fn automated(d: &Daemon, who: &Person, conversation: &str, template: &str) -> Value {
    guard(&format!("an automated {template} message"), async {
        loop {
            let messages = d.messages(who, conversation).await;
            if let Some(m) = sent_by_template(&messages, template).first() {
                return (*m).clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

async fn give_open_dates(d: &Daemon, p: &Pair, dates: &[&str]) {
    d.put(
        &format!("/v1/listings/{}", p.listing_id),
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "provider_id": p.provider.id,
               "response_time": "within an hour", "availability": dates}),
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn a_sequence_fires_at_its_virtual_times_and_stops_when_the_provider_replies() {
    let d = start(None, None).await;
    let p = pair(&d).await;
    give_open_dates(&d, &p, &["2031-05-01", "2031-05-02"]).await;
    let asked = d
        .send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await;
    asked.expect(201);
    let t0 = time_of(&asked.body["message"]);

    let ack = automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    assert_eq!(time_of(&ack), t0);
    assert_eq!(ack["type"], "nudge");
    assert_eq!(ack["sender_id"], "system");
    assert_eq!(ack["automation"]["rule"], "inquiry_follow_up");
    assert_eq!(ack["automation"]["recipient_id"], p.customer.id);
    assert!(
        ack["content"]
            .as_str()
            .unwrap()
            .starts_with("Thanks Carla! Pablo has your question about Sunset kayak tour"),
        "{ack}"
    );

    advance(&d, "4h").await;
    let reminder = automated(&d, &p.provider, &p.conversation, "provider_reply_reminder").await;
    assert_eq!(time_of(&reminder), t0 + hours(4));
    assert_eq!(reminder["automation"]["recipient_id"], p.provider.id);
    let labels: Vec<&str> = reminder["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["Yes, it's available", "Sorry, not available"]);

    advance(&d, "20h").await;
    let follow_up = automated(&d, &p.customer, &p.conversation, "inquiry_follow_up").await;
    assert_eq!(time_of(&follow_up), t0 + hours(24));
    assert!(
        follow_up["content"]
            .as_str()
            .unwrap()
            .contains("2 open dates"),
        "{follow_up}"
    );
    assert_eq!(follow_up["actions"][0]["type"], "book_now");

    d.send(&p.provider, &p.conversation, "r-1", "Yes, both days!")
        .await
        .expect(201);
    advance(&d, "48h").await;
    settled(&d).await;
    let messages = d.messages(&p.customer, &p.conversation).await;
    assert!(
        sent_by_template(&messages, "inquiry_final").is_empty(),
        "the provider replied: no final nudge"
    );
    // Each side's unread count grew only with what was addressed to it.
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["unread_count"],
        3
    );
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        2
    );
}

/// A step whose condition is false is skipped, not sent, and counted as
/// skipped (README, "Skipped steps"): the follow-up offers open dates, and
/// this listing has none.
#[tokio::test]
async fn a_step_whose_condition_is_false_is_skipped_and_counted() {
    let d = start(None, None).await;
    let p = pair(&d).await;
    give_open_dates(&d, &p, &[]).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);
    automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    advance(&d, "24h").await;
    settled(&d).await;

    let messages = d.messages(&p.customer, &p.conversation).await;
    assert!(sent_by_template(&messages, "inquiry_follow_up").is_empty());
    assert_eq!(
        sent_by_template(&messages, "provider_reply_reminder").len(),
        1
    );
    let steps = |result: &str| format!("parleyd_automation_steps_total{{result=\"{result}\"}}");
    assert_eq!(
        d.metric(&steps("sent")).await,
        2.0,
        "acknowledge and remind_provider"
    );
    assert_eq!(d.metric(&steps("skipped")).await, 1.0, "follow_up");
}

#[tokio::test]
async fn rescheduling_a_booking_moves_its_milestones_and_the_confirmation_has_an_invite() {
    let d = start(None, None).await;
    let p = pair(&d).await;
    let t0 = advance(&d, "0s").await;
    let at = |h: i64| (t0 + hours(h)).to_string();
    let booked = d
        .post(
            "/v1/bookings",
            SERVICE_KEY,
            json!({"conversation_id": p.conversation, "start": at(72), "end": at(80)}),
        )
        .await;
    booked.expect(201);
    let booking_id = booked.body["id"].as_str().unwrap().to_owned();

    let confirmation = automated(&d, &p.customer, &p.conversation, "booking_confirmation").await;
    assert_eq!(confirmation["type"], "automated");
    let invite = &confirmation["attachments"][0];
    assert_eq!(invite["filename"], "booking.ics");
    let ics = invite["content"].as_str().unwrap();
    let start_72h = (t0 + hours(72)).strftime("%Y%m%dT%H%M%SZ").to_string();
    assert!(ics.contains(&format!("DTSTART:{start_72h}")), "{ics}");

    d.patch(
        &format!("/v1/bookings/{booking_id}"),
        SERVICE_KEY,
        json!({"start": at(120), "end": at(128)}),
    )
    .await
    .expect(200);
    // Past the old day-before time (48h), then to the new one (96h).
    advance(&d, "48h").await;
    settled(&d).await;
    advance(&d, "48h").await;
    let reminder = automated(&d, &p.customer, &p.conversation, "booking_day_before").await;
    assert_eq!(time_of(&reminder), t0 + hours(96), "{reminder}");
    let messages = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(sent_by_template(&messages, "booking_day_before").len(), 1);
    assert!(sent_by_template(&messages, "booking_started").is_empty());

    advance(&d, "24h").await;
    let started = automated(&d, &p.customer, &p.conversation, "booking_started").await;
    assert_eq!(time_of(&started), t0 + hours(120));
}

#[tokio::test]
async fn automated_messages_show_times_on_each_readers_clock() {
    let d = start(None, None).await;
    let p = pair(&d).await;
    // The customer lives in New York; the provider gave no zone, so they read
    // the listing's (Paris).
    for (who, user) in [
        (
            &p.customer,
            json!({"name": "Carla", "timezone": "America/New_York"}),
        ),
        (&p.provider, json!({"name": "Pablo"})),
    ] {
        d.put(&format!("/v1/users/{}", who.id), SERVICE_KEY, user)
            .await
            .expect(200);
    }
    d.put(
        &format!("/v1/listings/{}", p.listing_id),
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "provider_id": p.provider.id,
               "timezone": "Europe/Paris"}),
    )
    .await
    .expect(200);
    // Booked on Friday 28 March 2031, when Paris is on CET, for Monday the
    // 31st, after Paris moved to CEST (New York did on the 9th).
    let ops = operator();
    let clock_to = |to: &str| d.post("/v1/admin/clock", &ops.token, json!({ "to": to }));
    clock_to("2031-03-28T09:00:00Z").await.expect(200);
    d.post(
        "/v1/bookings",
        SERVICE_KEY,
        json!({"conversation_id": p.conversation,
               "start": "2031-03-31T16:00:00Z", "end": "2031-03-31T18:00:00Z"}),
    )
    .await
    .expect(201);
    let confirmation = automated(&d, &p.customer, &p.conversation, "booking_confirmation").await;
    let text = confirmation["content"].as_str().unwrap();
    assert!(
        text.contains("confirmed for Mon 31 Mar, 12:00 EDT."),
        "{text}"
    );

    clock_to("2031-03-30T16:00:00Z").await.expect(200);
    let reminder = automated(&d, &p.provider, &p.conversation, "provider_day_before").await;
    let text = reminder["content"].as_str().unwrap();
    assert!(text.contains("(Mon 31 Mar, 18:00 CEST)"), "{text}");

    // A zone the tz database does not know is refused, as for users.
    d.put(
        &format!("/v1/listings/{}", p.listing_id),
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "provider_id": p.provider.id,
               "timezone": "Mars/Olympus"}),
    )
    .await
    .expect_error(422);
}

#[tokio::test]
async fn a_step_scheduled_before_a_crash_fires_once_after_the_restart() {
    let data = tempfile::tempdir().unwrap();
    let p = {
        let d = start(Some(data.path()), None).await;
        let p = pair(&d).await;
        d.send(&p.customer, &p.conversation, "q-1", "Hello?")
            .await
            .expect(201);
        automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
        // Killed with the reminder still pending.
        d.crash().await;
        p
    };
    let d = start(Some(data.path()), None).await;
    advance(&d, "4h").await;
    automated(&d, &p.provider, &p.conversation, "provider_reply_reminder").await;
    advance(&d, "1h").await;
    settled(&d).await;
    let messages = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(sent_by_template(&messages, "inquiry_ack").len(), 1);
    assert_eq!(
        sent_by_template(&messages, "provider_reply_reminder").len(),
        1
    );
}

#[tokio::test]
async fn a_broken_rule_edit_is_rejected_while_the_old_rules_serve_and_the_fix_goes_live() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(None, Some(dir.path())).await;
    d.expect_log_errors("rule reload rejected");
    let rules = dir.path().join("rules/inquiry.yaml");
    let shipped = std::fs::read_to_string(&rules).unwrap();
    std::fs::write(
        &rules,
        shipped.replacen("after: 24h", "after: a day or so", 1),
    )
    .unwrap();
    let status = rules_after(&d, |s| !s["last_failure"].is_null()).await;
    let error = &status["last_failure"]["errors"][0];
    assert!(
        error["file"].as_str().unwrap().ends_with("inquiry.yaml"),
        "{error}"
    );
    let line = shipped
        .lines()
        .position(|l| l.contains("after: 24h"))
        .unwrap()
        + 1;
    assert_eq!(error["line"], line, "{error}");
    assert_eq!(status["version"], 1);

    // The old rules still acknowledge an inquiry.
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi")
        .await
        .expect(201);
    automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;

    // The fix, with a new acknowledgement text, is live for the next inquiry.
    std::fs::write(&rules, &shipped).unwrap();
    let templates = dir.path().join("templates/inquiry.yaml");
    let text = std::fs::read_to_string(&templates).unwrap();
    std::fs::write(
        &templates,
        text.replacen("Thanks {customer.name}!", "Welcome {customer.name}!", 1),
    )
    .unwrap();
    let status = rules_after(&d, |s| {
        s["version"].as_u64() > Some(1) && s["last_failure"].is_null()
    })
    .await;
    assert!(status["files"].as_array().unwrap().len() >= 5, "{status}");
    let (other, conversation) = dora_asks(&d, &p, "cust-2").await;
    let ack = automated(&d, &other, &conversation, "inquiry_ack").await;
    assert!(
        ack["content"]
            .as_str()
            .unwrap()
            .starts_with("Welcome Dora!"),
        "{ack}"
    );
}

/// A plugin whose `on_event` fails fails the event, like a rule's condition:
/// tried again, then dead-lettered naming the plugin, and re-drivable once the
/// plugin is fixed; chat and the daemon go on meanwhile.
#[tokio::test]
async fn a_runaway_plugin_is_stopped_by_its_budget_and_its_events_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("plugins")).unwrap();
    let d = start(None, Some(dir.path())).await;
    d.expect_log_errors("stopped after 100000 operations");
    d.expect_log_errors("moved to the dead-letter list");
    let spin = dir.path().join("plugins/spin.rhai");
    std::fs::write(
        &spin,
        "// Never returns.\nfn on_event(event) {\n    loop { }\n}\n",
    )
    .unwrap();
    rules_after(&d, |s| s["version"].as_u64() > Some(1)).await;

    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi")
        .await
        .expect(201);
    // The conversation's opening and the message.
    let dead = dead_reaches(&d, 2).await;
    let entry = dead
        .iter()
        .find(|e| e["event"]["name"] == "message_sent")
        .unwrap_or_else(|| panic!("{dead:?}"));
    assert_eq!(entry["rule"], "plugin/spin", "{entry}");
    assert!(
        entry["error"].as_str().unwrap().contains("budget"),
        "{entry}"
    );
    let metrics = d.metrics().await;
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("parleyd_plugin_errors_total{plugin=\"spin\"}"))
        .unwrap_or_else(|| panic!("no plugin error counted:\n{metrics}"));
    let count: f64 = errors.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{errors}");
    let log = d.log();
    assert!(
        log.contains("spin.rhai") && log.contains("budget"),
        "the log names the plugin and why: {log}"
    );
    d.call(reqwest::Method::GET, "/healthz", None, None)
        .await
        .expect(200);

    // Without the plugin, the re-driven message gets its acknowledgement.
    std::fs::remove_file(&spin).unwrap();
    rules_after(&d, |s| s["version"].as_u64() > Some(2)).await;
    let id = entry["id"].as_str().unwrap();
    redrive(&d, id, &operator()).await.expect(200);
    automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
}

/// The value of the Prometheus series that starts with `series`, if any.
fn series(metrics: &str, series: &str) -> Option<f64> {
    let line = metrics.lines().find(|l| l.starts_with(series))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// The shipped rules in `dir`, the provider reminder's template computing its
/// hours with `source`; returns where that var is written (line, column).
fn reminder_var(dir: &Path, source: &str) -> (usize, usize) {
    let path = dir.join("templates/inquiry.yaml");
    let shipped = "hours: hours_between(conversation.inquiry_at, now)";
    let text =
        std::fs::read_to_string(&path)
            .unwrap()
            .replacen(shipped, &format!("hours: {source}"), 1);
    std::fs::write(&path, &text).unwrap();
    text.lines()
        .enumerate()
        .find_map(|(i, l)| Some((i + 1, l.find(source)? + 1)))
        .unwrap()
}

const OVERFLOW: &str = "add_hours(now, 9223372036854775807)";

#[tokio::test]
async fn a_failing_template_helper_is_counted_while_other_conversations_keep_their_acknowledgements(
) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = copy_rules(dir.path());
    let (line, column) = reminder_var(dir.path(), OVERFLOW);
    config.push(("clock", "manual".to_owned()));
    let d = Daemon::launch(Launch {
        config,
        automation: true,
        ..Launch::default()
    })
    .await;
    d.expect_log_errors("the time is out of range");
    d.expect_log_errors("moved to the dead-letter list");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi")
        .await
        .expect(201);
    automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;

    // The provider reminder is due: its template's var fails.
    advance(&d, "4h").await;
    let counted = guard("the template's error to be counted", async {
        loop {
            let metrics = d.metrics().await;
            let rule = "parleyd_rule_errors_total{rule=\"template/provider_reply_reminder\"}";
            if let Some(count) = series(&metrics, rule) {
                return count;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(counted >= 1.0, "{counted}");
    let log = d.log();
    assert!(
        log.contains(&format!("inquiry.yaml:{line}:{column}: ")) && log.contains("out of range"),
        "the log names the var's place and the reason: {log}"
    );
    let messages = d.messages(&p.provider, &p.conversation).await;
    assert!(
        sent_by_template(&messages, "provider_reply_reminder").is_empty(),
        "nothing is sent from a template that failed"
    );

    // The engine goes on: another conversation gets its acknowledgement.
    let (other, conversation) = dora_asks(&d, &p, "cust-2").await;
    let ack = automated(&d, &other, &conversation, "inquiry_ack").await;
    assert!(
        ack["content"].as_str().unwrap().starts_with("Thanks Dora!"),
        "{ack}"
    );
    d.call(reqwest::Method::GET, "/healthz", None, None)
        .await
        .expect(200);
}

#[tokio::test]
async fn the_clock_only_moves_for_operators_and_only_when_manual() {
    let d = Daemon::start().await;
    let refused = d
        .post(
            "/v1/admin/clock",
            &operator().token,
            json!({"advance": "1h"}),
        )
        .await;
    refused.expect_error(409);
    let d = start(None, None).await;
    let customer = Person::new("c", "customer");
    d.post("/v1/admin/clock", &customer.token, json!({"advance": "1h"}))
        .await
        .expect_error(403);
    d.post(
        "/v1/admin/clock",
        &operator().token,
        json!({"advance": "-1h"}),
    )
    .await
    .expect_error(422);
}

#[test]
fn the_shipped_rule_tests_pass_and_a_broken_set_fails_check() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_parleyd"))
            .args(args)
            .current_dir(repo)
            .output()
            .unwrap()
    };
    let tests = run(&["test-rules", "."]);
    let out = String::from_utf8_lossy(&tests.stdout);
    assert!(tests.status.success(), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    let template = dir.path().join("templates/booking.yaml");
    let text = std::fs::read_to_string(&template)
        .unwrap()
        .replacen("{listing.title}", "{listing.titel}", 1)
        .replacen("{booking.start}", "{booking.start|utcc}", 1);
    std::fs::write(&template, &text).unwrap();
    let check = run(&["check", dir.path().to_str().unwrap()]);
    let err = String::from_utf8_lossy(&check.stderr);
    assert!(!check.status.success());
    assert!(
        err.contains("booking.yaml:") && err.contains("{listing.titel}"),
        "{err}"
    );
    // An unknown time format, at the placeholder's line and column.
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| Some((i + 1, l.find("{booking.start|utcc}")? + 1)))
        .unwrap();
    assert!(
        err.contains(&format!("booking.yaml:{line}:{column}: "))
            && err.contains("unknown format \"utcc\""),
        "{err}"
    );
}

fn parleyd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_parleyd"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn test_rules_reports_a_failing_helper_at_its_place_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    let tests = dir.path().join("rules/tests");
    std::fs::create_dir(&tests).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/tests/inquiry.yaml");
    std::fs::copy(shipped, tests.join("inquiry.yaml")).unwrap();
    let (line, column) = reminder_var(dir.path(), OVERFLOW);
    let root = dir.path().to_str().unwrap();
    // Nothing is wrong until the var runs.
    assert!(parleyd(&["check", root]).status.success());
    let tests = parleyd(&["test-rules", root]);
    let out = String::from_utf8_lossy(&tests.stdout);
    let err = String::from_utf8_lossy(&tests.stderr);
    assert_eq!(tests.status.code(), Some(1), "{out}{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        out.contains(&format!(
            "templates/inquiry.yaml:{line}:{column}: add_hours("
        )) && out.contains("out of range"),
        "{out}"
    );
    assert!(out.contains("FAIL") && out.contains(" failed"), "{out}");
}

#[test]
fn check_refuses_the_wall_clock_and_sleep_at_the_call() {
    for (source, name) in [
        (
            "hours_between(conversation.inquiry_at, timestamp())",
            "timestamp",
        ),
        ("4 + sleep(1)", "sleep"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        copy_rules(dir.path());
        let (line, column) = reminder_var(dir.path(), source);
        let check = parleyd(&["check", dir.path().to_str().unwrap()]);
        let err = String::from_utf8_lossy(&check.stderr);
        assert_eq!(check.status.code(), Some(1), "{source}: {err}");
        let call = column + source.find(name).unwrap();
        assert!(
            err.contains(&format!("templates/inquiry.yaml:{line}:{call}: "))
                && err.contains(&format!("`{name}` is not available")),
            "{source}: {err}"
        );
    }
}

/// Asserts that each side's unread count is the number of messages for them
/// (an automated message is for its recipient, a person's for the other side)
/// that have no `read_at`, and that nobody's read marks landed on a message
/// that was not for them.
async fn assert_counts_follow_audience(d: &Daemon, p: &Pair) {
    let history = d.messages(&p.customer, &p.conversation).await;
    for who in [&p.customer, &p.provider] {
        let for_me = |m: &&Value| match m["automation"]["recipient_id"].as_str() {
            Some(recipient) => recipient == who.id,
            None => m["sender_id"] != who.id.as_str(),
        };
        let unread = history
            .iter()
            .filter(for_me)
            .filter(|m| m["read_at"].is_null())
            .count();
        assert_eq!(
            d.listed(who, &p.conversation).await["unread_count"],
            unread,
            "{}'s unread count against {history:#?}",
            who.id
        );
    }
    for m in &history {
        assert_eq!(
            m["status"] == "read",
            m["read_at"].is_string(),
            "status and read_at agree: {m}"
        );
    }
}

#[tokio::test]
async fn an_automated_message_is_read_only_by_the_person_it_is_for() {
    let data = tempfile::tempdir().unwrap();
    let d = start(Some(data.path()), None).await;
    let p = pair(&d).await;
    let mut customer = d.ws(&p.customer, None).await;
    let mut provider = d.ws(&p.provider, None).await;

    // seq 1: the inquiry; seq 2: its acknowledgement, for the customer; seq 3:
    // the customer's follow-up.
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);
    let ack = automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    assert_eq!(ack["seq"], 2);
    d.send(
        &p.customer,
        &p.conversation,
        "q-2",
        "Two adults, by the way",
    )
    .await
    .expect(201);
    assert_eq!(
        d.listed(&p.provider, &p.conversation).await["unread_count"],
        2
    );

    let read = d.read(&p.provider, &p.conversation, 2).await;
    read.expect(200);
    assert_eq!(
        read.body["unread_count"], 1,
        "the follow-up is still unread"
    );
    let history = d.messages(&p.provider, &p.conversation).await;
    assert_eq!(history[0]["status"], "read");
    assert_eq!(
        history[1]["status"], "sent",
        "the ack is the customer's to read"
    );
    assert!(history[1]["read_at"].is_null());
    assert_counts_follow_audience(&d, &p).await;
    // The customer hears that their inquiry was read.
    let receipt = customer.next_of("receipt").await;
    assert_eq!(receipt["reader_id"], p.provider.id.as_str());
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["peer_read_seq"],
        2
    );

    // The mirror: seq 4 is the reminder for the provider; seq 5 their reply.
    advance(&d, "4h").await;
    let reminder = automated(&d, &p.provider, &p.conversation, "provider_reply_reminder").await;
    assert_eq!(reminder["seq"], 4);
    d.send(&p.provider, &p.conversation, "r-1", "Yes, both days!")
        .await
        .expect(201);
    assert_eq!(
        d.listed(&p.customer, &p.conversation).await["unread_count"],
        2
    );
    let read = d.read(&p.customer, &p.conversation, 4).await;
    read.expect(200);
    assert_eq!(
        read.body["unread_count"], 1,
        "the provider's reply is unread"
    );
    let history = d.messages(&p.customer, &p.conversation).await;
    assert_eq!(history[1]["status"], "read", "the ack was for the customer");
    assert_eq!(
        history[3]["status"], "sent",
        "the reminder is the provider's"
    );
    assert_counts_follow_audience(&d, &p).await;
    // Nothing of the provider's was read: no receipt reaches them. The next
    // frame they see is the customer's message sent after the read.
    d.send(&p.customer, &p.conversation, "q-3", "Great!")
        .await
        .expect(201);
    let next = provider
        .next_where("the receipt of seq 2 or the message q-3", |f| {
            (f["type"] == "receipt" && f["seq"] != 2) || f["message"]["client_id"] == "q-3"
        })
        .await;
    assert_eq!(next["type"], "message", "{next}");

    // The counts are the same after a crash.
    d.crash().await;
    let d = start(Some(data.path()), None).await;
    assert_counts_follow_audience(&d, &p).await;
    d.stop().await;
}

/// Replaces the first `from` in `file` under `dir` with `to`; the old text.
fn edit(dir: &Path, file: &str, from: &str, to: &str) -> String {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
    text
}

/// A second customer, Dora, asking about the pair's listing; her conversation.
async fn dora_asks(d: &Daemon, p: &Pair, id: &str) -> (Person, String) {
    let dora = Person::new(id, "customer");
    d.put(
        &format!("/v1/users/{id}"),
        SERVICE_KEY,
        json!({"name": "Dora"}),
    )
    .await
    .expect(200);
    let opened = d
        .post(
            "/v1/conversations",
            &dora.token,
            json!({"listing_id": p.listing_id}),
        )
        .await;
    opened.expect(201);
    let conversation = opened.body["id"].as_str().unwrap().to_owned();
    d.send(&dora, &conversation, "d-1", "Hello")
        .await
        .expect(201);
    (dora, conversation)
}

/// `POST /v1/admin/pipeline/dead/{id}/redrive` as `who`.
async fn redrive(d: &Daemon, id: &str, who: &Person) -> Reply {
    d.post(
        &format!("/v1/admin/pipeline/dead/{id}/redrive"),
        &who.token,
        json!({}),
    )
    .await
}

async fn dead_list(d: &Daemon) -> Vec<Value> {
    let reply = d.get("/v1/admin/pipeline/dead", &operator().token).await;
    reply.expect(200);
    reply.body.as_array().unwrap().clone()
}

/// Polls the pipeline's dead-letter list until it holds `n` entries.
async fn dead_reaches(d: &Daemon, n: usize) -> Vec<Value> {
    guard(&format!("{n} dead letters"), async {
        loop {
            let dead = dead_list(d).await;
            if dead.len() == n {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test]
async fn an_event_the_rules_fail_on_is_dead_lettered_and_redriven_after_the_fix() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    // Carla's inquiries make the sequence's condition raise an error.
    let shipped = edit(
        dir.path(),
        "rules/inquiry.yaml",
        "    trigger: inquiry_received\n",
        "    trigger: inquiry_received\n    when: 'if customer.name == \"Carla\" { boom() } else { true }'\n",
    );
    let d = automation_on(data.path(), dir.path()).await;
    d.expect_log_errors("Function not found: boom");
    d.expect_log_errors("moved to the dead-letter list");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);
    // The event behind the poisoned one is processed.
    let (dora, dora_conversation) = dora_asks(&d, &p, "cust-2").await;
    automated(&d, &dora, &dora_conversation, "inquiry_ack").await;
    // Queued before Dora's, Carla's event was given up on first.
    let dead = dead_list(&d).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!(entry["kind"], "event", "{entry}");
    assert_eq!(entry["event"]["name"], "message_sent", "{entry}");
    assert_eq!(entry["event"]["conversation_id"], p.conversation, "{entry}");
    assert_eq!(entry["rule"], "inquiry_follow_up", "{entry}");
    assert!(entry["error"].as_str().unwrap().contains("boom"), "{entry}");
    assert_eq!(entry["attempts"], 3, "automation.max_attempts: {entry}");
    let id = entry["id"].as_str().unwrap().to_owned();
    let messages = d.messages(&p.customer, &p.conversation).await;
    assert!(sent_by_template(&messages, "inquiry_ack").is_empty());
    assert_eq!(d.metric("parleyd_dead_letters{list=\"events\"}").await, 1.0);
    // The pipeline's report counts it, and no waiting event for it once the
    // engine has caught up.
    let report = guard("the pipeline report to settle", async {
        loop {
            let report = d.get("/v1/admin/pipeline", &operator().token).await;
            report.expect(200);
            if report.body["events"]["waiting"] == 0 {
                return report.body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(report["dead_letters"]["events"], 1, "{report}");

    // Only operators see and re-drive the list.
    d.get("/v1/admin/pipeline/dead", &p.customer.token)
        .await
        .expect_error(403);
    redrive(&d, &id, &p.customer).await.expect_error(403);

    // A restart keeps the list, and does not try the event again.
    d.crash().await;
    let d = automation_on(data.path(), dir.path()).await;
    let (eve, eve_conversation) = dora_asks(&d, &p, "cust-3").await;
    automated(&d, &eve, &eve_conversation, "inquiry_ack").await;
    let dead = dead_list(&d).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], id);
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(d.metric("parleyd_dead_letters{list=\"events\"}").await, 1.0);

    // Fixed four days later, the rules take it: Carla gets her
    // acknowledgement, and the sequence runs from the re-drive rather than
    // firing four days of nudges at once.
    advance(&d, "96h").await;
    std::fs::write(dir.path().join("rules/inquiry.yaml"), &shipped).unwrap();
    rules_after(&d, |s| {
        s["version"].as_u64() > Some(1) && s["last_failure"].is_null()
    })
    .await;
    let redriven = redrive(&d, &id, &operator()).await;
    redriven.expect(200);
    assert_eq!(redriven.body["id"], id);
    let ack = automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    assert!(
        ack["content"]
            .as_str()
            .unwrap()
            .starts_with("Thanks Carla!"),
        "{ack}"
    );
    assert!(dead_list(&d).await.is_empty());
    d.metric_reaches("parleyd_dead_letters{list=\"events\"}", 0.0)
        .await;
    settled(&d).await;
    let messages = d.messages(&p.customer, &p.conversation).await;
    for later in [
        "inquiry_follow_up",
        "inquiry_final",
        "provider_reply_reminder",
    ] {
        assert!(
            sent_by_template(&messages, later).is_empty(),
            "{later} fired at the re-drive"
        );
    }
    advance(&d, "4h").await;
    automated(&d, &p.provider, &p.conversation, "provider_reply_reminder").await;
    // Re-driven once: it is no longer dead.
    redrive(&d, &id, &operator()).await.expect_error(404);
    d.stop().await;
}

#[tokio::test]
async fn a_step_whose_template_fails_is_dead_lettered_and_the_other_steps_go_on() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    // Carla's acknowledgement cannot be rendered: a helper given a typo'd
    // constant panics (or, once helpers check their arithmetic, errs).
    let response = "    response: 'if listing.response_time";
    let shipped = edit(
        dir.path(),
        "templates/inquiry.yaml",
        response,
        "    response: 'if customer.name == \"Carla\" { add_hours(now, 9223372036854775807) } else if listing.response_time",
    );
    let d = automation_on(data.path(), dir.path()).await;
    d.expect_log_errors("the time is out of range");
    d.expect_log_errors("moved to the dead-letter list");
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi! Free in May?")
        .await
        .expect(201);
    let (dora, dora_conversation) = dora_asks(&d, &p, "cust-2").await;
    automated(&d, &dora, &dora_conversation, "inquiry_ack").await;
    let dead = dead_reaches(&d, 1).await;
    let entry = &dead[0];
    assert_eq!(entry["kind"], "timer", "{entry}");
    assert_eq!(entry["rule"], "inquiry_follow_up.acknowledge", "{entry}");
    assert_eq!(entry["timer"]["step"], "acknowledge", "{entry}");
    assert_eq!(entry["event"]["conversation_id"], p.conversation, "{entry}");
    assert!(!entry["error"].as_str().unwrap().is_empty(), "{entry}");
    assert_eq!(entry["attempts"], 3, "{entry}");
    let id = entry["id"].as_str().unwrap().to_owned();
    // Carla's sequence goes on: the provider is reminded four hours later.
    advance(&d, "4h").await;
    automated(&d, &p.provider, &p.conversation, "provider_reply_reminder").await;
    let messages = d.messages(&p.customer, &p.conversation).await;
    assert!(sent_by_template(&messages, "inquiry_ack").is_empty());

    std::fs::write(dir.path().join("templates/inquiry.yaml"), &shipped).unwrap();
    rules_after(&d, |s| {
        s["version"].as_u64() > Some(1) && s["last_failure"].is_null()
    })
    .await;
    redrive(&d, &id, &operator()).await.expect(200);
    let ack = automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    assert!(
        ack["content"]
            .as_str()
            .unwrap()
            .starts_with("Thanks Carla!"),
        "{ack}"
    );
    assert!(dead_list(&d).await.is_empty());
    d.post(
        "/v1/admin/pipeline/dead/no-such-entry/redrive",
        &operator().token,
        json!({}),
    )
    .await
    .expect_error(404);
    d.stop().await;
}

#[tokio::test]
async fn an_event_a_notification_route_fails_on_is_dead_lettered_and_redriven_after_the_fix() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    let shipped = edit(
        dir.path(),
        "rules/routing.yaml",
        "    on: [promotion]\n",
        "    on: [promotion]\n    when: 'boom()'\n",
    );
    let d = automation_on(data.path(), dir.path()).await;
    d.expect_log_errors("Function not found: boom");
    d.expect_log_errors("moved to the dead-letter list");
    let p = pair(&d).await;
    promote(
        &d,
        &p.customer.id,
        json!({"title": "Spring sale", "text": "10% off"}),
    )
    .await;
    // The inquiry behind the promotion is acknowledged.
    d.send(&p.customer, &p.conversation, "q-1", "Hi")
        .await
        .expect(201);
    automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    let dead = dead_list(&d).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    let entry = &dead[0];
    assert_eq!(
        (&entry["kind"], &entry["event"]["name"], &entry["rule"]),
        (&json!("event"), &json!("promotion"), &json!("promotion")),
        "{entry}"
    );
    assert!(entry["error"].as_str().unwrap().contains("boom"), "{entry}");
    let notifications = format!("/v1/admin/users/{}/notifications", p.customer.id);
    let raised = d.get(&notifications, &operator().token).await;
    raised.expect(200);
    assert_eq!(raised.body, json!([]));

    std::fs::write(dir.path().join("rules/routing.yaml"), &shipped).unwrap();
    rules_after(&d, |s| {
        s["version"].as_u64() > Some(1) && s["last_failure"].is_null()
    })
    .await;
    d.post(
        &format!(
            "/v1/admin/pipeline/dead/{}/redrive",
            entry["id"].as_str().unwrap()
        ),
        &operator().token,
        json!({}),
    )
    .await
    .expect(200);
    guard("the promotion to be raised", async {
        loop {
            let raised = d.get(&notifications, &operator().token).await;
            if raised.body.as_array().is_some_and(|n| !n.is_empty()) {
                assert_eq!(raised.body[0]["type"], "promotion", "{}", raised.body);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(dead_list(&d).await.is_empty());
    d.stop().await;
}

#[tokio::test]
async fn a_misspelt_stop_event_is_rejected_at_its_place_and_the_old_rules_keep_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = start(None, Some(dir.path())).await;
    d.expect_log_errors("rule reload rejected");
    let rules = dir.path().join("rules/inquiry.yaml");
    let shipped = std::fs::read_to_string(&rules).unwrap();
    let edited = shipped.replacen("- provider_replied", "- provider_replyed", 1);
    std::fs::write(&rules, &edited).unwrap();
    let status = rules_after(&d, |s| !s["last_failure"].is_null()).await;
    let errors = status["last_failure"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{status}");
    let (line, column) = edited
        .lines()
        .enumerate()
        .find_map(|(i, l)| Some((i + 1, l.find("provider_replyed")? + 1)))
        .unwrap();
    assert_eq!(errors[0]["line"], line, "{status}");
    assert_eq!(errors[0]["column"], column, "{status}");
    let message = errors[0]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown event \"provider_replyed\"")
            && message.contains("did you mean provider_replied?"),
        "{message}"
    );
    assert_eq!(status["version"], 1);

    // The old rules serve: the provider's reply still stops the follow-up, so
    // no reminder goes to the provider 4 hours later.
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "q-1", "Hi")
        .await
        .expect(201);
    automated(&d, &p.customer, &p.conversation, "inquiry_ack").await;
    d.send(&p.provider, &p.conversation, "a-1", "Hello!")
        .await
        .expect(201);
    advance(&d, "5h").await;
    settled(&d).await;
    let messages = d.messages(&p.provider, &p.conversation).await;
    assert!(
        sent_by_template(&messages, "provider_reply_reminder").is_empty(),
        "{messages:?}"
    );
}

/// Each folder of `tests/fixtures/invalid_rules` (see its README) against the
/// real `parleyd check`: exactly the expected `file:line:col: message` lines.
#[test]
fn invalid_rule_fixtures_fail_check_where_expected() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = repo.join("tests/fixtures/invalid_rules");
    let mut cases: Vec<_> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "{cases:?}");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
        }
    };
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("rules")).unwrap();
        std::fs::copy(
            repo.join("rules/contact.yaml"),
            dir.path().join("rules/contact.yaml"),
        )
        .unwrap();
        copy(&repo.join("templates"), &dir.path().join("templates"));
        copy(&case.join("rules"), &dir.path().join("rules"));
        let expected = std::fs::read_to_string(case.join("expected")).unwrap();
        let check = std::process::Command::new(env!("CARGO_BIN_EXE_parleyd"))
            .args(["check", "."])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&check.stderr);
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(stderr.trim_end(), expected.trim_end(), "case {name}");
        assert_eq!(
            check.status.success(),
            expected.trim().is_empty(),
            "case {name}"
        );
    }
}

/// Catches: a manual clock that does not start at the wall-clock time, a
/// `to` that does not land where asked, or one in the past that moves the
/// clock back (steps already fired would be due again).
#[tokio::test]
async fn the_manual_clock_moves_to_a_time_asked_and_never_back() {
    let d = Daemon::with_config(vec![("clock", "manual".to_owned())]).await;
    let start = advance(&d, "0s").await;
    assert!(
        (start.as_second() - now()).abs() < 60,
        "starts at the wall clock: {start}"
    );
    let ops = operator();
    let to =
        |at: jiff::Timestamp| d.post("/v1/admin/clock", &ops.token, json!({"to": at.to_string()}));
    let later = start + jiff::SignedDuration::from_hours(48);
    let moved = to(later).await;
    moved.expect(200);
    assert_eq!(
        moved.body["now"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap(),
        later
    );
    let back = to(start).await;
    back.expect(200);
    assert_eq!(
        back.body["now"]
            .as_str()
            .unwrap()
            .parse::<jiff::Timestamp>()
            .unwrap(),
        later
    );
    assert_eq!(
        advance(&d, "1h").await,
        later + jiff::SignedDuration::from_hours(1)
    );
    d.stop().await;
}
