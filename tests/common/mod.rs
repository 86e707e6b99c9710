//! Shared harness for the end-to-end tests: runs the real `parleyd` binary as a
//! child process on a free port with its own data directory, and talks to it over
//! HTTP and WebSocket like a client would.
//!
//! Timeouts here are failure guards only (a hung daemon fails the test instead of
//! hanging it); no test asserts on how fast anything happens.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

pub mod python;
pub mod receiver;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use reqwest::Method;

/// The secrets of the shipped `config.yaml` (accepted with `--dev`).
pub const JWT_SECRET: &str = "example-jwt-secret-change-me";
pub const SERVICE_KEY: &str = "example-service-key-change-me";

/// How long any single wait may take before the test is declared hung.
pub const GUARD: Duration = Duration::from_secs(30);

fn repo_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config.yaml")
}

/// An HTTP client. reqwest is built without a default TLS provider (the
/// daemon picks ring); plain-HTTP tests still need one installed.
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// Waits for `fut`, failing the test with `what` if the guard runs out.
pub async fn guard<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(GUARD, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out (after {GUARD:?}) waiting for {what}"),
    }
}

/// How to start a daemon.
#[derive(Default)]
pub struct Launch {
    /// Data directory to use (kept by the caller); a fresh temporary one otherwise.
    pub data_dir: Option<PathBuf>,
    /// `(key, value)` replacements in config.yaml, e.g. `("send_burst", "1000")`:
    /// the first line `  key: old` becomes `  key: value`.
    pub config: Vec<(&'static str, String)>,
    /// Run the shipped automation rules. Off by default: tests of the transport
    /// count messages, and the shipped sequences add their own (an inquiry's
    /// acknowledgement); those tests run with the shipped contact policy alone.
    pub automation: bool,
    /// Environment variables for the daemon, e.g. `PARLEYD_SMTP_URL`.
    pub env: Vec<(String, String)>,
    /// The daemon's open-files limit (soft and hard), when the test needs a low one.
    pub open_files: Option<u64>,
    /// Start without `--dev`, as in production: the example secrets and
    /// `clock: manual` are then refused.
    pub no_dev: bool,
}

/// A running `parleyd serve --dev`, killed (SIGKILL) when dropped.
pub struct Daemon {
    child: Option<Child>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub data_dir: PathBuf,
    _owned_data: Option<TempDir>,
    /// Holds the daemon's stderr log and any edited config.
    scratch: TempDir,
    pub http: reqwest::Client,
    /// See [`Daemon::expect_log_errors`].
    expected_errors: std::sync::Mutex<Vec<String>>,
}

/// A copy of the repo's rules directory with only the contact policy.
fn contact_rules_only(scratch: &Path) -> PathBuf {
    let dir = scratch.join("rules");
    std::fs::create_dir_all(&dir).expect("rules dir");
    let shipped = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules/contact.yaml");
    std::fs::copy(shipped, dir.join("contact.yaml")).expect("copy contact.yaml");
    dir
}

/// A config file for the daemon: a temporary copy of the repo's with edits.
fn write_config(scratch: &Path, launch: &Launch) -> PathBuf {
    let mut edits = launch.config.clone();
    if !launch.automation && !edits.iter().any(|(k, _)| *k == "rules_dir") {
        edits.push((
            "rules_dir",
            contact_rules_only(scratch).display().to_string(),
        ));
    }
    let mut text = std::fs::read_to_string(repo_config()).expect("read config.yaml");
    // Relative paths are relative to the config file, which now lives elsewhere:
    // keep pointing at the repo's rule directories unless the test sets its own.
    let repo = |dir: &str| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(dir)
            .display()
            .to_string()
    };
    let defaults = [
        ("rules_dir", repo("rules")),
        ("templates_dir", repo("templates")),
        ("plugins_dir", repo("plugins")),
        // Tests poll /metrics from one address far faster than a scraper;
        // the tests of the anonymous rate set their own.
        (
            "anonymous_rate",
            "{per_second: 100000, burst: 100000}".to_owned(),
        ),
    ];
    let overridden = |key: &str| edits.iter().any(|(k, _)| *k == key);
    let extra: Vec<(&'static str, String)> = defaults
        .into_iter()
        .filter(|(k, _)| !overridden(k))
        .collect();
    for (key, value) in edits.iter().chain(&extra) {
        let prefix = format!("{key}:");
        let mut found = false;
        text = text
            .lines()
            .map(|line| {
                let trimmed = line.trim_start();
                // The first such key only: a section further down may
                // reuse the name (`limits.read_rate`, `benchmarks.read_rate`).
                if !found && trimmed.starts_with(&prefix) {
                    found = true;
                    let indent = &line[..line.len() - trimmed.len()];
                    format!("{indent}{key}: {value}")
                } else {
                    line.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        assert!(found, "config.yaml has no key {key}");
    }
    let path = scratch.join("config.yaml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn serve_command(config: &Path, data_dir: &Path, launch: &Launch) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_parleyd"));
    cmd.arg("serve");
    if !launch.no_dev {
        cmd.arg("--dev");
    }
    cmd.arg("--config")
        .arg(config)
        .env("PARLEYD_LISTEN", "127.0.0.1:0")
        .env("PARLEYD_DATA_DIR", data_dir)
        .env_remove("PARLEYD_JWT_SECRET")
        .env_remove("PARLEYD_SERVICE_KEY")
        .env_remove("RUST_LOG")
        // Relative paths of config.yaml (e.g. rules/) are the repo's.
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .envs(launch.env.iter().map(|(k, v)| (k, v)));
    cmd
}

impl Daemon {
    /// A daemon with the shipped config and a fresh data directory.
    pub async fn start() -> Daemon {
        Daemon::launch(Launch::default()).await
    }

    /// A daemon with the shipped config but for `config` replacements (see
    /// [`Launch::config`]), on a fresh data directory.
    pub async fn with_config(config: Vec<(&'static str, String)>) -> Daemon {
        Daemon::launch(Launch {
            config,
            ..Launch::default()
        })
        .await
    }

    /// A daemon with the shipped config on an existing data directory.
    pub async fn start_in(data_dir: &Path) -> Daemon {
        Daemon::launch(Launch {
            data_dir: Some(data_dir.to_owned()),
            ..Launch::default()
        })
        .await
    }

    pub async fn launch(launch: Launch) -> Daemon {
        let scratch = tempfile::tempdir().expect("scratch dir");
        let config = write_config(scratch.path(), &launch);
        let (data_dir, owned) = match launch.data_dir.clone() {
            Some(dir) => (dir, None),
            None => {
                let dir = tempfile::tempdir().expect("data dir");
                (dir.path().to_owned(), Some(dir))
            }
        };
        let log = std::fs::File::create(scratch.path().join("daemon.log")).expect("log file");
        let mut command = serve_command(&config, &data_dir, &launch);
        command.stdout(Stdio::piped()).stderr(log);
        if let Some(limit) = launch.open_files {
            // SAFETY: setrlimit is async-signal-safe, and the closure touches
            // nothing else of the parent between fork and exec.
            unsafe {
                command.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let mut child = command.spawn().expect("spawn parleyd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = guard("the daemon to print its address", async {
            while let Some(line) = lines.next_line().await.expect("read stdout") {
                if let Some(addr) = line.strip_prefix("listening on http://") {
                    return Some(addr.trim().to_owned());
                }
            }
            None
        })
        .await;
        let daemon = Daemon {
            child: Some(child),
            addr: addr.clone().unwrap_or_default(),
            data_dir,
            _owned_data: owned,
            scratch,
            http: client(),
            expected_errors: std::sync::Mutex::default(),
        };
        if addr.is_none() {
            panic!(
                "parleyd exited without listening; its log:\n{}",
                daemon.log()
            );
        }
        // Keep draining stdout so a later write never hits a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        daemon
    }

    /// What the daemon wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .expect("daemon is running")
    }

    /// Sends SIGTERM without waiting.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits for the process to exit (after `terminate`).
    pub async fn wait(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("daemon is running");
        let status = guard("the daemon to exit", child.wait())
            .await
            .expect("wait for parleyd");
        self.child = None;
        status
    }

    /// Announces that log lines containing `text` are errors this test
    /// provokes on purpose (a failing endpoint, a broken rule): the log scan
    /// at the end of the test lets them pass. Everything else at `ERROR`, and
    /// any panic not announced so, fails the test.
    pub fn expect_log_errors(&self, text: &str) {
        self.expected_errors
            .lock()
            .expect("expected errors")
            .push(text.to_owned());
    }

    /// Waits (blocking, for `Drop`) up to 20 s for the process to exit;
    /// kills it if it does not, and answers `None`.
    fn wait_blocking(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        for _ in 0..400 {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(_) => break,
            }
        }
        let _ = child.start_kill();
        None
    }

    /// SIGKILL (a crash: nothing flushed, no goodbye), waiting until the
    /// process is gone and its data directory free.
    pub async fn crash(mut self) {
        let child = self.child.as_mut().expect("daemon is running");
        guard("the daemon to die", child.kill())
            .await
            .expect("kill parleyd");
        self.child = None;
    }

    /// Waits for the daemon to abort itself at the armed fault point `point`
    /// (see `FAILPOINTS` in README's "Testing"), as a crash would end it:
    /// asserts that it died of SIGABRT with the point's line in its log.
    /// Fails clearly on a daemon built without fault points (which refuses
    /// `FAILPOINTS` and exits).
    pub async fn aborted_at(mut self, point: &str) {
        use std::os::unix::process::ExitStatusExt;
        let status = self.wait().await;
        let log = self.log();
        assert_eq!(
            status.signal(),
            Some(6),
            "parleyd should have aborted at {point} (run the tests with `cargo test --workspace`, which builds the fault points in), but exited with {status}; its log:\n{log}"
        );
        assert!(
            log.contains(&format!("fault point {point}: aborting")),
            "parleyd aborted, but not at {point}; its log:\n{log}"
        );
    }

    /// SIGTERM, then asserts a clean exit (status 0).
    pub async fn stop(mut self) {
        self.terminate();
        let status = self.wait().await;
        assert!(
            status.success(),
            "parleyd exited with {status} after SIGTERM; its log:\n{}",
            self.log()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Any request; a JSON body when `body` is given.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = self.http.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        Reply::from(req.send().await.expect("HTTP request")).await
    }

    /// A request with a raw body (for malformed or oversized ones), on a fresh
    /// connection.
    pub async fn call_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> Reply {
        // A client of its own: a refused body may leave the connection unusable
        // (see `a_refused_body_does_not_break_the_next_request`).
        let mut req = client()
            .request(method, self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        Reply::from(req.send().await.expect("HTTP request")).await
    }

    /// A request with an `Idempotency-Key` and a JSON body given as text (so a
    /// test can reformat it); also returns whether the daemon marked the
    /// answer `Idempotent-Replayed`.
    pub async fn call_keyed(
        &self,
        method: Method,
        path: &str,
        token: &str,
        key: &str,
        body: &str,
    ) -> (Reply, bool) {
        let response = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("HTTP request");
        let replayed = response
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        (Reply::from(response).await, replayed)
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, path, Some(token), Some(&body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PUT, path, Some(token), Some(&body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call(Method::PATCH, path, Some(token), Some(&body))
            .await
    }

    /// Sends a message over HTTP.
    pub async fn send(
        &self,
        who: &Person,
        conversation: &str,
        client_id: impl AsRef<str>,
        text: &str,
    ) -> Reply {
        self.post(
            &format!("/v1/conversations/{conversation}/messages"),
            &who.token,
            json!({"client_id": client_id.as_ref(), "content": text}),
        )
        .await
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let reply = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(reply.status(), 200, "GET /metrics");
        reply.text().await.expect("metrics text")
    }

    /// The value of one series of `GET /metrics`, named with its labels as
    /// the exporter writes them, e.g. `parleyd_limit_refusals_total{limit="streams"}`;
    /// 0 when the series is absent (a counter never incremented).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| {
                v.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("{series}: {v:?} ({e})"))
            })
    }

    /// Polls `series` (see [`Daemon::metric`]) until it equals `value`.
    pub async fn metric_reaches(&self, series: &str, value: f64) {
        guard(&format!("{series} to reach {value}"), async {
            while self.metric(series).await != value {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
    }

    /// Marks the conversation read up to `seq` over HTTP.
    pub async fn read(&self, who: &Person, conversation: &str, seq: u64) -> Reply {
        self.post(
            &format!("/v1/conversations/{conversation}/read"),
            &who.token,
            json!({ "seq": seq }),
        )
        .await
    }

    /// Opens `who`'s (a customer's) conversation about `listing`, asserting
    /// a 201 (a new one); its id.
    pub async fn open(&self, who: &Person, listing: &str) -> String {
        let opened = self
            .post(
                "/v1/conversations",
                &who.token,
                json!({ "listing_id": listing }),
            )
            .await;
        opened.expect(201);
        opened.body["id"]
            .as_str()
            .expect("conversation id")
            .to_owned()
    }

    /// The conversation's messages (up to 500), asserting a 200.
    pub async fn messages(&self, who: &Person, conversation: &str) -> Vec<Value> {
        let reply = self
            .get(
                &format!("/v1/conversations/{conversation}/messages?limit=500"),
                &who.token,
            )
            .await;
        reply.expect(200);
        reply.body.as_array().expect("a list of messages").clone()
    }

    /// The caller's view of one conversation from `GET /v1/conversations` (the
    /// list, where `unread_count` is shown), asserting it is there.
    pub async fn listed(&self, who: &Person, conversation: &str) -> Value {
        let reply = self.get("/v1/conversations", &who.token).await;
        reply.expect(200);
        reply
            .body
            .as_array()
            .expect("a list of conversations")
            .iter()
            .find(|c| c["id"] == conversation)
            .unwrap_or_else(|| panic!("{conversation} is not in {}'s list", who.id))
            .clone()
    }

    /// `GET /v1/events?since=&wait=` as `who`, asserting a 200: (events, cursor).
    pub async fn poll(&self, who: &Person, since: u64, wait: u64) -> (Vec<Value>, u64) {
        let reply = self
            .get(&format!("/v1/events?since={since}&wait={wait}"), &who.token)
            .await;
        reply.expect(200);
        let events = reply.body["events"].as_array().expect("events").clone();
        let cursor = reply.body["cursor"].as_u64().expect("cursor");
        (events, cursor)
    }

    /// Opens `who`'s WebSocket and reads up to its `ready` frame.
    pub async fn ws(&self, who: &Person, since: Option<u64>) -> Ws {
        self.try_ws(&who.token, since)
            .await
            .unwrap_or_else(|e| panic!("WebSocket for {} refused: {e}", who.id))
    }

    pub async fn try_ws(
        &self,
        token: &str,
        since: Option<u64>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut url = format!("ws://{}/v1/stream?token={token}", self.addr);
        if let Some(since) = since {
            url.push_str(&format!("&since={since}"));
        }
        let (inner, _) = guard(
            "the WebSocket handshake",
            tokio_tungstenite::connect_async(url),
        )
        .await?;
        Ok(Ws::until_ready(inner).await)
    }

    /// Opens `who`'s WebSocket over `tcp`, a socket the test set up itself (e.g.
    /// with a small receive buffer), and reads up to its `ready` frame.
    pub async fn ws_over(&self, who: &Person, tcp: TcpStream) -> Ws {
        let url = format!("ws://{}/v1/stream?token={}", self.addr, who.token);
        let (inner, _) = guard(
            "the WebSocket handshake",
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp)),
        )
        .await
        .unwrap_or_else(|e| panic!("WebSocket for {} refused: {e}", who.id));
        Ws::until_ready(inner).await
    }
}

/// Every test ends by stopping its daemon the way an operator would
/// (SIGTERM, exit status 0) and reading its log: a panic, or an `ERROR`
/// line the test did not announce with [`Daemon::expect_log_errors`], fails
/// the test even though its own assertions passed. A test already failing
/// only kills the daemon and prints the log.
impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(child) = self.child.as_mut() {
                let _ = child.start_kill();
            }
            eprintln!("--- parleyd log ({}) ---\n{}", self.addr, self.log());
            return;
        }
        if self.child.is_some() {
            self.terminate();
            let status = self.wait_blocking();
            assert!(
                status.is_some_and(|s| s.success()),
                "parleyd did not exit cleanly after SIGTERM ({status:?}); its log:\n{}",
                self.log()
            );
        }
        let log = self.log();
        let expected = self.expected_errors.lock().expect("expected errors");
        let unexpected: Vec<&str> = log
            .lines()
            .filter(|line| line.contains("panicked") || line.contains("ERROR"))
            .filter(|line| !expected.iter().any(|e| line.contains(e.as_str())))
            .collect();
        assert!(
            unexpected.is_empty(),
            "parleyd logged {} unexpected error line(s):\n{}\n--- its log ---\n{log}",
            unexpected.len(),
            unexpected.join("\n")
        );
    }
}

/// An HTTP reply: status and body (JSON, or the text as a JSON string).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(response: reqwest::Response) -> Reply {
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("read reply body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    }

    /// A header's value as text, if the reply has it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the status.
    pub fn expect(&self, status: u16) -> &Reply {
        assert_eq!(self.status, status, "unexpected reply: {}", self.body);
        self
    }

    /// Asserts the status and the error body `{"error":{"code","message"}}`;
    /// returns the code.
    pub fn expect_error(&self, status: u16) -> String {
        self.expect(status);
        let error = &self.body["error"];
        let code = error["code"]
            .as_str()
            .unwrap_or_else(|| panic!("error body without a code: {}", self.body));
        let message = error["message"]
            .as_str()
            .unwrap_or_else(|| panic!("error body without a message: {}", self.body));
        assert!(!code.is_empty() && !message.is_empty(), "{}", self.body);
        code.to_owned()
    }
}

/// Config replacements that allow one per second, in bursts of two, for each
/// of the `limits` keys (such as `typing_rate`).
pub fn tight_limits(limits: &[&'static str]) -> Vec<(&'static str, String)> {
    limits
        .iter()
        .map(|key| (*key, "{per_second: 1, burst: 2}".to_owned()))
        .collect()
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// An HS256 JWT with claims `{sub, role, exp}` signed with `secret`.
pub fn jwt(sub: &str, role: &str, exp: i64, secret: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": sub, "role": role, "exp": exp}),
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign token")
}

/// A valid one-hour token of the dev config.
pub fn token(sub: &str, role: &str) -> String {
    jwt(sub, role, now() + 3600, JWT_SECRET)
}

#[derive(Debug, Clone)]
pub struct Person {
    pub id: String,
    pub token: String,
}

impl Person {
    pub fn new(id: &str, role: &str) -> Person {
        Person {
            id: id.to_owned(),
            token: token(id, role),
        }
    }
}

/// A customer and a provider with an open conversation about a listing.
pub struct Pair {
    pub customer: Person,
    pub provider: Person,
    pub listing_id: String,
    pub conversation: String,
}

/// Registers the users and the listing (as the service) and opens the
/// conversation (as the customer).
pub async fn pair(d: &Daemon) -> Pair {
    pair_of(
        d,
        Person::new("cust-1", "customer"),
        Person::new("prov-1", "provider"),
    )
    .await
}

/// Books `conversation` (as the service) from `start` to `end`; the booking's id.
pub async fn book(d: &Daemon, conversation: &str, start: &str, end: &str) -> String {
    let booking = d
        .post(
            "/v1/bookings",
            SERVICE_KEY,
            json!({"conversation_id": conversation, "start": start, "end": end}),
        )
        .await;
    booking.expect(201);
    booking.body["id"].as_str().unwrap().to_owned()
}

/// `pair` with the given people.
pub async fn pair_of(d: &Daemon, customer: Person, provider: Person) -> Pair {
    for (who, name) in [(&customer, "Carla"), (&provider, "Pablo")] {
        d.put(
            &format!("/v1/users/{}", who.id),
            SERVICE_KEY,
            json!({"name": name, "timezone": "Europe/Paris"}),
        )
        .await
        .expect(200);
    }
    let listing_id = "listing-1".to_owned();
    d.put(
        &format!("/v1/listings/{listing_id}"),
        SERVICE_KEY,
        json!({"title": "Sunset kayak tour", "price": 80.0, "currency": "EUR",
               "provider_id": provider.id}),
    )
    .await
    .expect(200);
    let conversation = d.open(&customer, &listing_id).await;
    Pair {
        customer,
        provider,
        listing_id,
        conversation,
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A stream client. Frames read while looking for another one are kept in
/// `pending`, in order, so nothing is silently skipped.
pub struct Ws {
    inner: Socket,
    pending: VecDeque<Value>,
    /// Frames received before `ready` (the replay after `since`).
    pub replayed: Vec<Value>,
    /// The cursor announced by `ready`.
    pub ready_cursor: u64,
}

impl Ws {
    /// Wraps a connected socket, reading the replay up to `ready`.
    async fn until_ready(inner: Socket) -> Ws {
        let mut ws = Ws {
            inner,
            pending: VecDeque::new(),
            replayed: Vec::new(),
            ready_cursor: 0,
        };
        loop {
            let frame = ws.read().await;
            if frame["type"] == "ready" {
                ws.ready_cursor = frame["cursor"].as_u64().expect("ready has a cursor");
                return ws;
            }
            ws.replayed.push(frame);
        }
    }

    /// The TCP socket under the WebSocket, to write bytes no WebSocket client
    /// would (a frame that breaks the protocol).
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self.inner.get_mut() {
            MaybeTlsStream::Plain(tcp) => tcp,
            _ => panic!("the test streams are plain TCP"),
        }
    }

    /// Reads the next text frame from the socket (not from `pending`).
    async fn read(&mut self) -> Value {
        // One guard for the whole wait: the server's heartbeats (every
        // `stream.heartbeat_seconds`) must not restart it, or a frame that
        // never comes would hang the test instead of failing it.
        guard("a stream frame", async {
            loop {
                match self.inner.next().await {
                    Some(Ok(WsMessage::Text(text))) => return frame_json(text.as_str()),
                    Some(Ok(WsMessage::Close(frame))) => panic!("stream closed: {frame:?}"),
                    Some(Ok(WsMessage::Binary(_))) => panic!("the server sent a binary frame"),
                    Some(Ok(_)) => continue, // ping/pong
                    Some(Err(e)) => panic!("stream failed: {e}"),
                    None => panic!("stream ended"),
                }
            }
        })
        .await
    }

    /// The next frame, whatever it is.
    pub async fn next(&mut self) -> Value {
        match self.pending.pop_front() {
            Some(frame) => frame,
            None => self.read().await,
        }
    }

    /// The first frame (pending or new) matching `pred`; others stay pending.
    pub async fn next_where(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i).expect("pending frame");
        }
        loop {
            let frame = self.read().await;
            if pred(&frame) {
                return frame;
            }
            self.pending.push_back(frame);
            assert!(
                self.pending.len() < 10_000,
                "too many frames without {what}"
            );
        }
    }

    /// The next frame of type `ty`.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        self.next_where(ty, |f| f["type"] == ty).await
    }

    /// The `ack` or `error` frame answering `client_id`.
    pub async fn answer(&mut self, client_id: &str) -> Value {
        self.next_where(&format!("the answer to {client_id}"), |f| {
            (f["type"] == "ack" || f["type"] == "error") && f["client_id"] == client_id
        })
        .await
    }

    /// The `message` event of the message with this `seq`.
    pub async fn message_event(&mut self, seq: u64) -> Value {
        self.next_where(&format!("message {seq}"), |f| {
            f["type"] == "message" && f["message"]["seq"] == seq
        })
        .await
    }

    /// Frames already read but not yet taken.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    pub async fn send_json(&mut self, frame: Value) {
        self.send_raw(WsMessage::text(frame.to_string())).await;
    }

    pub async fn send_raw(&mut self, msg: WsMessage) {
        guard("sending a frame", self.inner.send(msg))
            .await
            .expect("send frame");
    }

    /// Sends a `send` frame.
    pub async fn send_message(&mut self, conversation: &str, client_id: &str, text: &str) {
        self.send_json(json!({"type": "send", "conversation_id": conversation,
                              "client_id": client_id, "content": text}))
            .await;
    }

    /// Sends a `send` frame and returns its `ack` (failing on an `error`).
    pub async fn send_acked(&mut self, conversation: &str, client_id: &str, text: &str) -> Value {
        self.send_message(conversation, client_id, text).await;
        let answer = self.answer(client_id).await;
        assert_eq!(answer["type"], "ack", "send {client_id} failed: {answer}");
        answer
    }

    /// Sends a ping and waits for the pong; frames before it stay pending.
    pub async fn ping(&mut self) {
        self.send_json(json!({"type": "ping"})).await;
        self.next_of("pong").await;
    }

    /// Reads until the server's close frame and returns it (frames before it are
    /// kept pending).
    pub async fn close_frame(&mut self) -> Option<CloseFrame> {
        // One guard for the whole wait, as in `read`.
        guard("the close frame", async {
            loop {
                match self.inner.next().await {
                    Some(Ok(WsMessage::Close(frame))) => return frame,
                    Some(Ok(WsMessage::Text(text))) => {
                        if let Ok(v) = serde_json::from_str(text.as_str()) {
                            self.pending.push_back(v);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("stream failed before a close frame: {e}"),
                    None => panic!("stream ended without a close frame"),
                }
            }
        })
        .await
    }

    /// Waits for the server's next heartbeat (a WebSocket ping, which the
    /// client answers with a pong as it reads); text frames before it stay
    /// pending.
    pub async fn heartbeat(&mut self) {
        loop {
            match guard("a heartbeat ping", self.inner.next()).await {
                Some(Ok(WsMessage::Ping(_))) => return,
                Some(Ok(WsMessage::Text(text))) => {
                    self.pending.push_back(frame_json(text.as_str()))
                }
                Some(Ok(WsMessage::Close(frame))) => panic!("stream closed: {frame:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("stream failed: {e}"),
                None => panic!("stream ended"),
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = guard("closing the stream", self.inner.close(None)).await;
    }
}

/// A text frame as JSON, failing the test if it is not.
fn frame_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {text}"))
}

/// The `cursor` of an event frame.
pub fn cursor(frame: &Value) -> u64 {
    frame["cursor"]
        .as_u64()
        .unwrap_or_else(|| panic!("event without a cursor: {frame}"))
}

/// Asserts the frames' cursors are exactly `from, from+1, …` (no gap, no duplicate).
pub fn assert_consecutive(frames: &[Value], from: u64) {
    let cursors: Vec<u64> = frames.iter().map(cursor).collect();
    let expected: Vec<u64> = (from..from + frames.len() as u64).collect();
    assert_eq!(cursors, expected, "cursors are not consecutive");
}

/// The `seq`s of the `message` events among `frames`, in order.
pub fn message_seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "message")
        .map(|f| f["message"]["seq"].as_u64().expect("seq"))
        .collect()
}

/// Runs `parleyd serve --dev` on `data_dir` expecting it to refuse to start:
/// returns its exit status and stderr. Fails if it starts listening instead.
pub async fn serve_expecting_refusal(data_dir: &Path) -> (ExitStatus, String) {
    refusal(serve_command(&repo_config(), data_dir, &Launch::default())).await
}

/// Runs `parleyd serve` as `launch` says (config edits, environment, with or
/// without `--dev`) expecting it to refuse to start: returns its exit status
/// and stderr. Fails if it starts listening instead.
pub async fn serve_refused(launch: Launch) -> (ExitStatus, String) {
    let scratch = tempfile::tempdir().expect("scratch dir");
    let config = write_config(scratch.path(), &launch);
    let data = tempfile::tempdir().expect("data dir");
    let data_dir = launch.data_dir.as_deref().unwrap_or(data.path());
    refusal(serve_command(&config, data_dir, &launch)).await
}

async fn refusal(mut command: Command) -> (ExitStatus, String) {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn parleyd");
    let output = guard(
        "parleyd to refuse to start and exit",
        child.wait_with_output(),
    )
    .await
    .expect("wait for parleyd");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stdout.contains("listening on"),
        "parleyd started where it should have refused"
    );
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A daemon on the manual clock, running automation on the rules, templates and plugins in `dir` (copied there by
/// `copy_rules` and edited since), with its data in `data`.
pub async fn automation_on(data: &Path, dir: &Path) -> Daemon {
    let mut config = vec![("clock", "manual".to_owned())];
    for (key, name) in [
        ("rules_dir", "rules"),
        ("templates_dir", "templates"),
        ("plugins_dir", "plugins"),
    ] {
        config.push((key, dir.join(name).display().to_string()));
    }
    Daemon::launch(Launch {
        data_dir: Some(data.to_owned()),
        config,
        automation: true,
        ..Launch::default()
    })
    .await
}

/// Copies the shipped rules, templates and plugins into `dir`, returning the
/// config edits that point the daemon at the copy.
pub fn copy_rules(dir: &Path) -> Vec<(&'static str, String)> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut edits = Vec::new();
    for (key, name) in [
        ("rules_dir", "rules"),
        ("templates_dir", "templates"),
        ("plugins_dir", "plugins"),
    ] {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(repo.join(name)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
            }
        }
        edits.push((key, to.display().to_string()));
    }
    edits
}

/// Runs `parleyd analytics rebuild` with the shipped config on the stopped
/// daemon's `data_dir`; panics with its output unless it succeeds. Returns
/// what it printed.
pub fn rebuild_analytics(data_dir: &std::path::Path) -> String {
    let rebuilt = std::process::Command::new(env!("CARGO_BIN_EXE_parleyd"))
        .args(["analytics", "rebuild", "--config", "config.yaml"])
        .env("PARLEYD_DATA_DIR", data_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run parleyd analytics rebuild");
    let stdout = String::from_utf8_lossy(&rebuilt.stdout).into_owned();
    assert!(
        rebuilt.status.success(),
        "analytics rebuild failed: {stdout}{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    stdout
}

pub fn operator() -> Person {
    Person::new("ops", "operator")
}

/// Moves the daemon's (manual) clock by `by` (e.g. `4h`); returns the time now.
pub async fn advance(d: &Daemon, by: &str) -> jiff::Timestamp {
    let reply = d
        .post("/v1/admin/clock", &operator().token, json!({"advance": by}))
        .await;
    reply.expect(200);
    reply.body["now"].as_str().unwrap().parse().unwrap()
}

/// Posts a `promotion` signal for `user_id` (the marketplace's backend),
/// with `data` (`title`, `text`).
pub async fn promote(d: &Daemon, user_id: &str, data: Value) {
    d.post(
        "/v1/signals",
        SERVICE_KEY,
        json!({"type": "promotion", "user_id": user_id, "data": data}),
    )
    .await
    .expect(202);
}

/// Moves the daemon's (manual) clock to noon UTC on the next 1 July: tests
/// of local times (quiet hours, digests) run in midsummer, hours away from
/// any daylight-saving change in the zones they use, whatever day they run.
pub async fn pin_to_midsummer(d: &Daemon) -> jiff::Timestamp {
    let today = jiff::Timestamp::now().in_tz("UTC").expect("UTC").date();
    let year = if today < jiff::civil::date(today.year(), 6, 30) {
        today.year()
    } else {
        today.year() + 1
    };
    let noon = jiff::civil::date(year, 7, 1)
        .at(12, 0, 0, 0)
        .in_tz("UTC")
        .expect("noon UTC exists")
        .timestamp();
    let reply = d
        .post(
            "/v1/admin/clock",
            &operator().token,
            json!({"to": noon.to_string()}),
        )
        .await;
    reply.expect(200);
    noon
}

/// Waits until the daemon's pipeline has settled (`GET
/// /v1/admin/pipeline/settled`): every event committed so far processed,
/// every timer due on its clock fired, every due delivery attempted and none
/// in flight. Call it before asserting that something did *not* happen.
pub async fn settled(d: &Daemon) {
    let reply = d
        .get("/v1/admin/pipeline/settled?wait=30", &operator().token)
        .await;
    reply.expect(200);
    assert_eq!(
        reply.body["settled"], true,
        "the pipeline did not settle in 30 s: {}",
        reply.body
    );
}

/// Polls `GET /v1/admin/rules` until `accept` holds, returning the status.
pub async fn rules_after(d: &Daemon, accept: impl Fn(&Value) -> bool) -> Value {
    guard("the rules to reload", async {
        loop {
            let status = d.get("/v1/admin/rules", &operator().token).await;
            status.expect(200);
            if accept(&status.body) {
                return status.body;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
}
