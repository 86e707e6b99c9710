//! The OpenAPI document at `/openapi.json` against the daemon that serves it.
//! openapi-spec-validator checks that it is valid OpenAPI, so generated clients
//! build the right requests; schemathesis sends generated requests, valid and
//! invalid, as a customer, as the service and as an operator, and fails on any
//! status, header, content type or body the document does not declare, and on
//! any 5xx. Both are installed into `target/tmp` on first use.

mod common;

use std::path::Path;

use common::python::{python3, python_packages};
use common::*;

/// Pinned so a new release cannot change what passes.
const CHECKERS: [&str; 2] = ["openapi-spec-validator==0.9.0", "schemathesis==4.32.5"];

/// The daemon under test, with limits that let a short run reach them: the
/// send limit (429) after one message, and long-polls that return within the
/// checker's request timeout.
async fn daemon() -> Daemon {
    Daemon::launch(Launch {
        config: vec![
            ("send_rate_per_second", "1".into()),
            ("send_burst", "1".into()),
            ("long_poll_max_wait_seconds", "1".into()),
        ],
        ..Launch::default()
    })
    .await
}

/// Runs a checker (`python3 -m module args…`) in `dir`, failing with its
/// output unless it exits 0.
async fn check(dir: &Path, module: &str, args: &[&str]) {
    let output = python3(&python_packages(&CHECKERS))
        .current_dir(dir)
        .arg("-m")
        .arg(module)
        .args(args)
        .output()
        .await
        .expect("run python3");
    assert!(
        output.status.success(),
        "{module} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn the_document_is_valid_openapi() {
    let d = daemon().await;
    let document = d.call(Method::GET, "/openapi.json", None, None).await;
    document.expect(200);
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("openapi.json");
    std::fs::write(&file, document.body.to_string()).unwrap();
    check(
        scratch.path(),
        "openapi_spec_validator",
        &["--validation-errors", "all", file.to_str().unwrap()],
    )
    .await;
    d.stop().await;
}

#[tokio::test]
async fn every_operation_answers_as_the_document_says() {
    let d = daemon().await;
    // Real data for the path parameters, so operations get past their 404s
    // and the document's success bodies are checked too.
    let p = pair(&d).await;
    d.send(
        &p.customer,
        &p.conversation,
        "seed-1",
        "Is it open on Monday?",
    )
    .await
    .expect(201);
    let booking = book(
        &d,
        &p.conversation,
        "2030-06-01T09:00:00Z",
        "2030-06-01T12:00:00Z",
    )
    .await;
    let scratch = tempfile::tempdir().unwrap();
    let config = scratch.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[operations]]
include-path-regex = "^/v1/conversations/\\{{id\\}}"
parameters = {{ "path.id" = "{conversation}" }}

[[operations]]
include-path = "/v1/bookings/{{id}}"
parameters = {{ "path.id" = "{booking}" }}

[[operations]]
include-path = "/v1/admin/users/{{id}}/notifications"
parameters = {{ "path.id" = "{customer}" }}
"#,
            conversation = p.conversation,
            customer = p.customer.id,
        ),
    )
    .unwrap();
    let schema = d.url("/openapi.json");
    for token in [p.customer.token.as_str(), SERVICE_KEY, &operator().token] {
        let auth = format!("Authorization: Bearer {token}");
        check(
            scratch.path(),
            "schemathesis.cli",
            &[
                "--config-file",
                config.to_str().unwrap(),
                "--no-color",
                "run",
                &schema,
                "--header",
                &auth,
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_schema_conformance,response_headers_conformance",
                // Bounded: a few generated requests per operation and phase,
                // and reproducible from run to run.
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--no-shrink",
                // One worker: hypothesis parses lambdas with `ast`, which CPython
                // before 3.11.8 and 3.12.1 may fail on in concurrent threads.
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ],
        )
        .await;
    }
    d.stop().await;
}
