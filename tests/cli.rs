//! The command line and the configuration as README documents them: `check`,
//! `test-rules`, `detect`, `token`, `analytics rebuild` and `report` as commands, and what `serve` refuses to
//! start with (the example secrets or `clock: manual` without `--dev`, invalid
//! rules, an unknown config key), with the `PARLEYD_*` secrets from the
//! environment.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::*;
use serde_json::{json, Value};

/// Runs the real `parleyd` with `args` in the repository (so the default
/// `config.yaml` is the shipped one), feeding it `stdin`.
fn parleyd_in_repo(args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    parleyd_at(Path::new(env!("CARGO_MANIFEST_DIR")), args, env, stdin)
}

/// Runs the real `parleyd` with `args` in `cwd` with `env` (and no secrets
/// from the test's own environment), feeding it `stdin`.
fn parleyd_at(cwd: &Path, args: &[&str], env: &[(&str, &str)], stdin: &str) -> Output {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_parleyd"))
        .args(args)
        .env_remove("PARLEYD_JWT_SECRET")
        .env_remove("PARLEYD_SERVICE_KEY")
        .envs(env.iter().copied())
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn parleyd");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.as_bytes()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("wait for parleyd")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Catches: `check` failing or printing nothing on a valid set, or the
/// README's example line no longer being what it prints for the shipped rules.
#[test]
fn check_on_the_shipped_rules_exits_0_and_prints_the_counts_readme_shows() {
    let check = parleyd_in_repo(&["check", "."], &[], "");
    let (out, err) = (text(&check.stdout), text(&check.stderr));
    assert_eq!(check.status.code(), Some(0), "{out}{err}");
    assert!(err.is_empty(), "a valid set prints no errors: {err}");
    let line = out.trim_end();
    assert!(
        line.starts_with("./rules: ") && line.contains(" files valid ("),
        "{out}"
    );
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("(`{line}`)")),
        "README's example of a valid check should be what it prints: {line}"
    );
    // Without DIR the config's directories are checked: the same set.
    let default = parleyd_in_repo(&["check"], &[], "");
    assert_eq!(default.status.code(), Some(0), "{}", text(&default.stderr));
    assert_eq!(text(&default.stdout), out);
}

/// Catches: `check` without DIR ignoring `--config`, or the config's relative
/// `rules_dir` not being taken relative to the config file.
#[test]
fn check_without_dir_checks_the_directories_of_the_config_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    let config =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.yaml")).unwrap();
    std::fs::write(dir.path().join("config.yaml"), config).unwrap();
    let template = dir.path().join("templates/checkout.yaml");
    let broken = std::fs::read_to_string(&template).unwrap().replacen(
        "{listing.title}",
        "{listing.colour}",
        1,
    );
    std::fs::write(&template, &broken).unwrap();
    let line = broken
        .lines()
        .position(|l| l.contains("{listing.colour}"))
        .unwrap()
        + 1;

    let config = dir.path().join("config.yaml");
    let check = parleyd_in_repo(&["check", "--config", config.to_str().unwrap()], &[], "");
    let err = text(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("templates/checkout.yaml:{line}:")) && err.contains("colour"),
        "{err}"
    );
}

/// Catches: `test-rules` exiting 0 (or crashing) when an expectation is not
/// met, or not naming the failing test.
#[test]
fn test_rules_exits_1_when_an_expectation_is_not_met() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    let tests = dir.path().join("rules/tests");
    std::fs::create_dir_all(&tests).unwrap();
    std::fs::write(
        tests.join("recovery.yaml"),
        "tests:
  - name: recovery after an hour
    timeline:
      - { at: 0h, signal: { type: checkout_abandoned } }
    expect:
      - { template: checkout_recovery, to: customer, at: 1h }
  - name: recovery after two hours
    timeline:
      - { at: 0h, signal: { type: checkout_abandoned } }
    expect:
      - { template: checkout_recovery, to: customer, at: 2h }
",
    )
    .unwrap();
    let run = parleyd_in_repo(&["test-rules", dir.path().to_str().unwrap()], &[], "");
    let (out, err) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{out}{err}");
    assert!(
        out.contains("ok   ") && out.contains("recovery after an hour"),
        "{out}"
    );
    assert!(
        out.contains("FAIL ") && out.contains("recovery after two hours"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");

    // The same file with the right time passes.
    std::fs::write(
        tests.join("recovery.yaml"),
        std::fs::read_to_string(tests.join("recovery.yaml"))
            .unwrap()
            .replace("at: 2h", "at: 1h"),
    )
    .unwrap();
    let run = parleyd_in_repo(&["test-rules", dir.path().to_str().unwrap()], &[], "");
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stdout));
}

/// Catches: `test-rules` ignoring a pinned variant (the hash choosing
/// instead), a variant's delay not used when its sequence is planned, a pin
/// naming an unknown variant passing, `variant:` in an expectation not
/// matched against the message's provenance.
#[test]
fn test_rules_pins_experiment_variants() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    std::fs::write(
        dir.path().join("templates/experiment.yaml"),
        "inquiry_ack_brief:\n  text: \"Got it, {customer.name}.\"\n",
    )
    .unwrap();
    // Stopped long before the rule tests' virtual time: only a pin applies it.
    std::fs::write(
        dir.path().join("rules/experiments.yaml"),
        "experiments:
  - name: ack_wording
    sequence: inquiry_follow_up
    unit: customer
    stop: 2020-01-01T00:00:00Z
    metric: { booked_within: 7d }
    variants:
      - { name: control, weight: 1 }
      - name: brief
        weight: 1
        swap: [{ step: acknowledge, template: inquiry_ack_brief }]
  - name: reminder_timing
    sequence: inquiry_follow_up
    unit: provider
    stop: 2020-01-01T00:00:00Z
    metric: { replied_within: 24h }
    variants:
      - { name: control, weight: 1 }
      - { name: early, weight: 1, swap: [{ step: remind_provider, after: 2h }] }
",
    )
    .unwrap();
    let tests = dir.path().join("rules/tests");
    std::fs::create_dir_all(&tests).unwrap();
    let file = |pin: &str| {
        format!(
            "tests:
  - name: pinned to {pin}
    variants: {{ ack_wording: {pin}, reminder_timing: early }}
    timeline:
      - {{ at: 0h, message: {{ from: customer, text: \"Free on Saturday?\" }} }}
    expect:
      - {{ template: inquiry_ack_brief, variant: brief, to: customer, at: 0h, contains: \"Got it, Ana.\" }}
      - {{ template: provider_reply_reminder, variant: early, to: provider, at: 2h }}
  - name: unpinned, the stopped experiment gives control
    timeline:
      - {{ at: 0h, message: {{ from: customer, text: \"Free on Saturday?\" }} }}
    expect:
      - {{ template: inquiry_ack, to: customer, at: 0h }}
      - {{ template: provider_reply_reminder, to: provider, at: 4h }}
    forbid:
      - {{ variant: brief }}
      - {{ variant: early }}
"
        )
    };
    std::fs::write(tests.join("experiment.yaml"), file("brief")).unwrap();
    let run = parleyd_in_repo(&["test-rules", dir.path().to_str().unwrap()], &[], "");
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{out}{}", text(&run.stderr));

    std::fs::write(tests.join("experiment.yaml"), file("control")).unwrap();
    let run = parleyd_in_repo(&["test-rules", dir.path().to_str().unwrap()], &[], "");
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(
        out.contains("FAIL ") && out.contains("pinned to control"),
        "{out}"
    );
    assert!(out.contains("1 passed, 1 failed"), "{out}");

    std::fs::write(tests.join("experiment.yaml"), file("shortest")).unwrap();
    let run = parleyd_in_repo(&["test-rules", dir.path().to_str().unwrap()], &[], "");
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{out}");
    assert!(
        out.contains("experiment ack_wording has no variant \"shortest\""),
        "{out}"
    );
}

/// Catches: a rule-test file that does not parse (or misspells a field)
/// being skipped or passing, instead of stopping the run at its place.
#[test]
fn test_rules_stops_at_a_test_file_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    copy_rules(dir.path());
    let tests = dir.path().join("rules/tests");
    std::fs::create_dir_all(&tests).unwrap();
    for (file, place) in [
        ("tests:\n  - name: typo\n    timelime: []\n", "3:5: "),
        ("tests:\n  - { name: unclosed\n", "3:1: "),
    ] {
        std::fs::write(tests.join("broken.yaml"), file).unwrap();
        let run = parleyd_at(dir.path(), &["test-rules", "."], &[], "");
        let err = text(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("./rules/tests/broken.yaml:{place}")),
            "{err}"
        );
    }
}

/// Catches: `detect` dropping, merging or reordering lines, a bad line
/// stopping the run, or `--stage` not adding the policy's action.
#[test]
fn detect_answers_each_jsonl_line_in_order() {
    let input = [
        json!({"id": "phone", "text": "call me at +33 6 12 34 56 78"}),
        json!({"id": "clean", "text": "Is the tour still on tomorrow?"}),
        json!({"id": "email", "text": "write to jane at gmail dot com"}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n")
        + "\nnot json\n"
        + &json!({"id": 7, "text": "ok"}).to_string()
        + "\n";
    let lines = |stage: &[&str]| -> Vec<Value> {
        let run = parleyd_in_repo(&[&["detect"], stage].concat(), &[], &input);
        assert!(run.status.success(), "{}", text(&run.stderr));
        text(&run.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect()
    };

    let plain = lines(&[]);
    let ids: Vec<&Value> = plain.iter().map(|l| &l["id"]).collect();
    assert_eq!(
        ids,
        [
            &json!("phone"),
            &json!("clean"),
            &json!("email"),
            &Value::Null,
            &json!(7)
        ],
        "{plain:?}"
    );
    let has: Vec<&Value> = plain.iter().map(|l| &l["has_contact"]).collect();
    assert_eq!(
        has,
        [
            &json!(true),
            &json!(false),
            &json!(true),
            &Value::Null,
            &json!(false)
        ]
    );
    assert_eq!(plain[0]["detections"][0]["type"], "phone", "{}", plain[0]);
    assert_eq!(plain[2]["detections"][0]["type"], "email", "{}", plain[2]);
    assert_eq!(plain[1]["risk"], "none");
    assert!(
        plain[3]["error"].is_string(),
        "a bad line is answered: {}",
        plain[3]
    );
    assert!(plain.iter().all(|l| l.get("action").is_none()));

    // --stage adds what the shipped policy does in that phase: concrete
    // details are blocked before booking, not after.
    let before = lines(&["--stage", "pre_booking"]);
    assert_eq!(before[0]["action"], "block", "{}", before[0]);
    assert_eq!(before[1]["action"], "allow", "{}", before[1]);
    let after = lines(&["--stage", "post_booking"]);
    assert_ne!(after[0]["action"], "block", "{}", after[0]);
    assert_eq!(after[1]["action"], "allow", "{}", after[1]);
}

/// The claims of a token `parleyd token` printed, checked against `secret`.
fn claims(token: &str, secret: &str) -> Value {
    use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
    decode::<Value>(
        token,
        &DecodingKey::from_secret(secret.as_bytes()),
        &Validation::new(Algorithm::HS256),
    )
    .expect("a valid HS256 token")
    .claims
}

/// Prints a token with `parleyd token` (the shipped config's secret unless
/// `env` overrides it).
fn minted(args: &[&str], env: &[(&str, &str)]) -> String {
    let run = parleyd_in_repo(&[&["token"], args].concat(), env, "");
    assert!(run.status.success(), "{}", text(&run.stderr));
    text(&run.stdout).trim().to_owned()
}

/// Catches: `token` signing with another secret, the wrong `sub`/`role`, a
/// `--ttl` ignored (or `auth.default_token_ttl` not the default), or a bad
/// role or id accepted.
#[tokio::test]
async fn token_prints_a_jwt_the_daemon_accepts_for_that_user_and_role() {
    let d = Daemon::start().await;
    let p = pair(&d).await;

    let customer = minted(
        &["--sub", &p.customer.id, "--role", "customer", "--ttl", "2h"],
        &[],
    );
    let claims_now = claims(&customer, JWT_SECRET);
    assert_eq!(claims_now["sub"], p.customer.id.as_str());
    assert_eq!(claims_now["role"], "customer");
    let exp = claims_now["exp"].as_i64().unwrap();
    assert!((exp - (now() + 7200)).abs() < 120, "--ttl 2h: exp {exp}");
    let listed = d.get("/v1/conversations", &customer).await;
    listed.expect(200);
    assert_eq!(listed.body[0]["id"], p.conversation.as_str());
    // The role is the one asked for: a customer is no operator.
    d.get("/v1/admin/rules", &customer).await.expect_error(403);

    let ops = minted(&["--sub", "ops", "--role", "operator"], &[]);
    let exp = claims(&ops, JWT_SECRET)["exp"].as_i64().unwrap();
    assert!((exp - (now() + 3600)).abs() < 120, "default 1h: exp {exp}");
    d.get("/v1/admin/rules", &ops).await.expect(200);

    let bad_role = parleyd_in_repo(&["token", "--sub", "x", "--role", "boss"], &[], "");
    assert!(!bad_role.status.success());
    assert!(text(&bad_role.stdout).is_empty());
    let bad_sub = parleyd_in_repo(&["token", "--sub", "a b", "--role", "customer"], &[], "");
    assert_eq!(bad_sub.status.code(), Some(1));
    assert!(
        text(&bad_sub.stderr).contains("--sub"),
        "{}",
        text(&bad_sub.stderr)
    );
    let bad_ttl = parleyd_in_repo(
        &["token", "--sub", "x", "--role", "customer", "--ttl", "soon"],
        &[],
        "",
    );
    assert_eq!(bad_ttl.status.code(), Some(1));
    assert!(
        text(&bad_ttl.stderr).contains("--ttl"),
        "{}",
        text(&bad_ttl.stderr)
    );
    d.stop().await;
}

/// Catches: `analytics rebuild` touching a data directory the daemon holds
/// (or failing without saying why), or not rebuilding once it is stopped.
/// (That a rebuild gives the live figures back: tests/analytics.rs.)
#[tokio::test]
async fn analytics_rebuild_refuses_a_running_daemons_directory_and_rebuilds_a_stopped_one() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(data.path()).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "Hi!")
        .await
        .expect(201);
    settled(&d).await;
    let dir = data.path().display().to_string();
    let env = [("PARLEYD_DATA_DIR", dir.as_str())];
    let refused = parleyd_in_repo(&["analytics", "rebuild"], &env, "");
    assert_eq!(refused.status.code(), Some(1));
    let stderr = text(&refused.stderr);
    assert!(stderr.contains("stop it first"), "{stderr}");
    d.stop().await;
    let rebuilt = parleyd_in_repo(
        &["analytics", "rebuild", "--config", "config.yaml"],
        &env,
        "",
    );
    assert!(rebuilt.status.success(), "{}", text(&rebuilt.stderr));
    let stdout = text(&rebuilt.stdout);
    assert!(
        stdout.contains("analytics rebuilt: 1 conversations"),
        "{stdout}"
    );

    // A rebuild that dies after clearing leaves partial figures: the daemon
    // refuses to start on them until a rebuild finishes.
    let crash = [
        ("PARLEYD_DATA_DIR", dir.as_str()),
        ("FAILPOINTS", "rebuild::after_clear=return"),
    ];
    let died = parleyd_in_repo(&["analytics", "rebuild"], &crash, "");
    assert!(!died.status.success(), "the fault point aborts the rebuild");
    let (status, err) = serve_refused(Launch {
        data_dir: Some(data.path().to_owned()),
        ..Launch::default()
    })
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("analytics rebuild") && err.contains("did not finish"),
        "{err}"
    );
    let again = parleyd_in_repo(&["analytics", "rebuild"], &env, "");
    assert!(again.status.success(), "{}", text(&again.stderr));
    let d = Daemon::start_in(data.path()).await;
    let metrics = d
        .get(
            &format!("/v1/conversations/{}/metrics", p.conversation),
            &operator().token,
        )
        .await;
    metrics.expect(200);
    assert_eq!(metrics.body["messages"]["customer"], 1, "{}", metrics.body);
}

/// `parleyd report` prints, from a stopped daemon's data directory, the
/// report the API gives (JSON and CSV alike) and a text one for people; it
/// refuses a running daemon's directory, an unknown provider and a bad
/// date with exit 1 and a message.
#[tokio::test]
async fn report_prints_the_apis_report_offline_and_refuses_clearly() {
    let data = tempfile::tempdir().unwrap();
    let d = Daemon::start_in(data.path()).await;
    let p = pair(&d).await;
    d.send(&p.customer, &p.conversation, "c-1", "Hi, free on Friday?")
        .await
        .expect(201);
    d.send(&p.provider, &p.conversation, "p-1", "Yes!")
        .await
        .expect(201);
    settled(&d).await;
    let today = jiff::Timestamp::now().in_tz("Europe/Paris").unwrap().date();
    let (from, to) = (today.yesterday().unwrap().to_string(), today.to_string());
    let query = format!("/v1/providers/{}/report?from={from}&to={to}", p.provider.id);
    let api = d.get(&query, &operator().token).await;
    api.expect(200);
    let api_csv = d
        .http
        .get(d.url(&query))
        .bearer_auth(&operator().token)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dir = data.path().display().to_string();
    let env = [("PARLEYD_DATA_DIR", dir.as_str())];
    let args = |format: &'static str| {
        vec![
            "report",
            "--provider",
            "prov-1",
            "--from",
            from.as_str(),
            "--to",
            to.as_str(),
            "--format",
            format,
        ]
    };
    let refused = parleyd_in_repo(&args("json"), &env, "");
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("stop it first"),
        "{}",
        text(&refused.stderr)
    );
    d.stop().await;

    let json_out = parleyd_in_repo(&args("json"), &env, "");
    assert!(json_out.status.success(), "{}", text(&json_out.stderr));
    let offline: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(offline, api.body);
    let csv_out = parleyd_in_repo(&args("csv"), &env, "");
    assert!(csv_out.status.success(), "{}", text(&csv_out.stderr));
    assert_eq!(text(&csv_out.stdout), api_csv);
    assert_eq!(api_csv.lines().count(), 2, "{api_csv}");
    let text_out = parleyd_in_repo(&args("text"), &env, "");
    assert!(text_out.status.success(), "{}", text(&text_out.stderr));
    let shown = text(&text_out.stdout);
    assert!(
        shown.contains("Provider prov-1") && shown.contains("Europe/Paris"),
        "{shown}"
    );
    assert!(
        shown.contains("response rate (24 h)") && shown.contains("100.0%"),
        "{shown}"
    );

    let unknown = parleyd_in_repo(&["report", "--provider", "nobody"], &env, "");
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        text(&unknown.stderr).contains("provider not found"),
        "{}",
        text(&unknown.stderr)
    );
    let bad = parleyd_in_repo(
        &["report", "--provider", "prov-1", "--from", "soon"],
        &env,
        "",
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("soon: not a date"),
        "{}",
        text(&bad.stderr)
    );
    let usage = parleyd_in_repo(&["report"], &env, "");
    assert_eq!(usage.status.code(), Some(2), "--provider is required");
}

const OWN_JWT_SECRET: &str = "a-secret-of-our-own-0123456789";
const OWN_SERVICE_KEY: &str = "a-service-key-of-our-own-0123456789";

fn own_secrets() -> Vec<(String, String)> {
    vec![
        ("PARLEYD_JWT_SECRET".into(), OWN_JWT_SECRET.into()),
        ("PARLEYD_SERVICE_KEY".into(), OWN_SERVICE_KEY.into()),
    ]
}

/// Catches: the daemon starting in production with a published secret or a
/// stopped clock, and the `PARLEYD_JWT_SECRET` / `PARLEYD_SERVICE_KEY`
/// overrides not being what it then verifies with.
#[tokio::test]
async fn without_dev_the_example_secrets_and_the_manual_clock_are_refused() {
    let (status, err) = serve_refused(Launch {
        no_dev: true,
        ..Launch::default()
    })
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("example secrets") && err.contains("--dev"),
        "{err}"
    );

    // One secret of our own is not enough: the other is still published.
    let (status, err) = serve_refused(Launch {
        no_dev: true,
        env: own_secrets().into_iter().take(1).collect(),
        ..Launch::default()
    })
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("example secrets"), "{err}");

    let (status, err) = serve_refused(Launch {
        no_dev: true,
        env: own_secrets(),
        config: vec![("clock", "manual".into())],
        ..Launch::default()
    })
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("clock: manual") && err.contains("--dev"),
        "{err}"
    );

    // With secrets of its own from the environment it starts, and those are
    // the secrets: the example ones no longer open anything.
    let d = Daemon::launch(Launch {
        no_dev: true,
        env: own_secrets(),
        ..Launch::default()
    })
    .await;
    d.put("/v1/users/ann", SERVICE_KEY, json!({"name": "Ann"}))
        .await
        .expect_error(401);
    d.put("/v1/users/ann", OWN_SERVICE_KEY, json!({"name": "Ann"}))
        .await
        .expect(200);
    d.get("/v1/conversations", &token("ann", "customer"))
        .await
        .expect_error(401);
    let own = jwt("ann", "customer", now() + 600, OWN_JWT_SECRET);
    d.get("/v1/conversations", &own).await.expect(200);
    // `parleyd token` reads the same override.
    let minted = minted(
        &["--sub", "ann", "--role", "customer"],
        &[("PARLEYD_JWT_SECRET", OWN_JWT_SECRET)],
    );
    d.get("/v1/conversations", &minted).await.expect(200);
    // The fault route is development-only.
    d.call(
        Method::PUT,
        "/v1/admin/pipeline/components/engine/fault",
        Some(&jwt("ops", "operator", now() + 600, OWN_JWT_SECRET)),
        Some(&json!({"fail": true})),
    )
    .await
    .expect_error(404);
    d.stop().await;
}

/// Catches: a daemon starting (or crashing) on invalid rules instead of
/// refusing with the error at its place, and an unknown config key (a typo)
/// being silently ignored.
#[tokio::test]
async fn invalid_rules_or_an_unknown_config_key_stop_the_daemon_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let config = copy_rules(dir.path());
    let file = dir.path().join("rules/checkout.yaml");
    let broken = std::fs::read_to_string(&file).unwrap().replacen(
        "stop_on: [booking_created, checkout_completed",
        "stop_on: [booking_created, checkout_complete",
        1,
    );
    std::fs::write(&file, &broken).unwrap();
    let (line, column) = broken
        .lines()
        .enumerate()
        .find_map(|(i, l)| Some((i + 1, l.find("checkout_complete,")? + 1)))
        .unwrap();
    let (status, err) = serve_refused(Launch {
        config,
        automation: true,
        ..Launch::default()
    })
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("rules/checkout.yaml:{line}:{column}: "))
            && err.contains("\"checkout_complete\""),
        "{err}"
    );

    // A misspelt key under storage: (the line is `  flush_every_ms: 500`).
    let (status, err) = serve_refused(Launch {
        config: vec![("flush_every_ms", "500\n  flush_evry_ms: 500".into())],
        ..Launch::default()
    })
    .await;
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("flush_evry_ms"), "{err}");
}
