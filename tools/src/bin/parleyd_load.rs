//! `parleyd-load`: a WebSocket load generator for parleyd.
//!
//! It registers N/2 provider/customer pairs (a listing and a conversation each)
//! over HTTP, holds one stream per user, and makes every connection send at an
//! even share of the total rate. It measures send→ack and send→delivery (the
//! other party's `message` event) latency and counts acknowledged messages the
//! other party never received.
//!
//! The send time travels inside the `client_id` (`SEQ.MICROS`), so the receiving
//! connection computes delivery latency without any state shared between tasks.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

type Ws = WebSocketStream<TcpStream>;

#[derive(Parser, Debug)]
#[command(name = "parleyd-load", about = "WebSocket load generator for parleyd")]
struct Args {
    /// WebSocket connections (one per user; customers and providers in pairs).
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Total messages per second, spread evenly over the connections.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// How long to send, e.g. 30s, 2m, 500ms.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// How long to wait after the last send for outstanding acks and deliveries.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// Target a running daemon instead of starting one, e.g. http://127.0.0.1:8080.
    #[arg(long, requires = "pid")]
    url: Option<String>,
    /// Process id of the daemon at --url (for its memory and CPU figures).
    #[arg(long)]
    pid: Option<u32>,
    /// Config the started daemon is based on (stream.max_connections is raised
    /// above --connections in a temporary copy).
    #[arg(long, default_value = "config.yaml")]
    config: PathBuf,
    /// Override storage.durability in the started daemon's config.
    #[arg(long, value_parser = ["group_commit", "periodic"])]
    durability: Option<String>,
    /// Directory in which the started daemon's temporary config and data live.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    #[arg(long, default_value = "example-service-key-change-me")]
    service_key: String,
    /// HS256 secret the users' tokens are signed with (the daemon's auth.jwt_secret).
    #[arg(long, default_value = "example-jwt-secret-change-me")]
    jwt_secret: String,
    /// Worker threads of the generator's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Concurrent keep-alive HTTP connections used for setup.
    #[arg(long, default_value_t = 64)]
    setup_concurrency: usize,
    /// WebSocket handshakes in flight at once during the ramp.
    #[arg(long, default_value_t = 256)]
    ramp_concurrency: usize,
    /// Length of each message's content, in characters.
    #[arg(long, default_value_t = 80)]
    message_chars: usize,
    /// Make every Nth message of each connection carry a phone number (which
    /// the default rules block before a booking); 0 sends only neutral text.
    #[arg(long, default_value_t = 0)]
    contact_every: u64,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((text, "s"), |i| text.split_at(i));
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration such as 30s, 2m or 500ms"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("unknown unit {unit:?}; use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("cannot start the tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parleyd-load: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    if args.connections < 2 || args.rate <= 0.0 {
        return Err("--connections must be at least 2 and --rate positive".into());
    }
    check_fd_limit(args.connections);
    let mut daemon = match &args.url {
        Some(url) => Daemon::attach(url, args.pid.unwrap_or(0))?,
        None => Daemon::start(&args).await?,
    };
    let outcome = exercise(&args, &daemon).await;
    daemon.stop().await;
    outcome
}

/// Setup, ramp, measured run and report, against a daemon that is up.
async fn exercise(args: &Args, daemon: &Daemon) -> Result<(), String> {
    let pairs = args.connections / 2;
    let started = Instant::now();
    let users = setup(args, daemon.addr, pairs).await?;
    eprintln!(
        "setup: {pairs} pairs (users, listings, conversations) in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    let mut report = Report::default();
    let stats = load(args, daemon, users, &mut report).await;
    report.add_connections(&stats);
    report.daemon_end = ProcessFigures::read(daemon.pid);
    report.generator_cpu = cpu_seconds("self");
    report.print(args);
    print_daemon_metrics(daemon.addr, &report.metrics_before).await;
    Ok(())
}

/// The daemon's write-batch, flush and moderation metrics (from /metrics): the
/// lines, and each unlabelled sample by name.
async fn scrape_metrics(addr: SocketAddr) -> Option<(Vec<String>, BTreeMap<String, f64>)> {
    let mut http = HttpConn::new(addr);
    let body = match http.request("GET", "/metrics", "-", "").await {
        Ok((200, body)) => body,
        Ok((status, _)) => {
            eprintln!("GET /metrics: HTTP {status}");
            return None;
        }
        Err(e) => {
            eprintln!("GET /metrics: {e}");
            return None;
        }
    };
    let text = String::from_utf8_lossy(&body);
    let wanted = ["parleyd_write_batch", "parleyd_flush", "parleyd_contact"];
    let (mut lines, mut values) = (Vec::new(), BTreeMap::new());
    for line in text
        .lines()
        .filter(|l| wanted.iter().any(|w| l.starts_with(w)))
    {
        lines.push(line.to_owned());
        if let Some((name, value)) = line.split_once(' ') {
            values.insert(name.to_owned(), value.trim().parse::<f64>().unwrap_or(0.0));
        }
    }
    Some((lines, values))
}

/// Prints the metrics at the end of the run, and the mean write batch of the
/// measured run (the difference from the figures taken after the ramp).
async fn print_daemon_metrics(addr: SocketAddr, before: &BTreeMap<String, f64>) {
    let Some((lines, after)) = scrape_metrics(addr).await else {
        return;
    };
    for line in &lines {
        println!("metrics  {line}");
    }
    let delta =
        |n: &str| after.get(n).copied().unwrap_or(0.0) - before.get(n).copied().unwrap_or(0.0);
    let count = delta("parleyd_write_batch_size_count");
    if count > 0.0 {
        println!(
            "write batches in run {count:.0}; mean size {:.2} ops; mean batch time {:.3} ms",
            delta("parleyd_write_batch_size_sum") / count,
            1000.0 * delta("parleyd_write_batch_seconds_sum") / count
        );
    }
}

/// Warns when this process may run out of file descriptors: the limit cannot be
/// raised from here without libc, so the documented command uses `ulimit -n`.
fn check_fd_limit(connections: usize) {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<usize>().ok()
        });
    if let Some(soft) = soft.filter(|&s| s < connections + 200) {
        eprintln!("warning: open-files limit {soft} is too low for {connections} connections; run `ulimit -n <hard limit>` first");
    }
}

// ---------------------------------------------------------------------------
// The daemon under test.

struct Daemon {
    addr: SocketAddr,
    pid: u32,
    child: Option<tokio::process::Child>,
    work_dir: Option<PathBuf>,
}

impl Daemon {
    fn attach(url: &str, pid: u32) -> Result<Daemon, String> {
        let addr = url
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .map_err(|_| format!("--url {url:?} must be http://IP:PORT"))?;
        Ok(Daemon {
            addr,
            pid,
            child: None,
            work_dir: None,
        })
    }

    /// Starts `parleyd serve --dev` from next to this executable, on a free port,
    /// with a fresh data directory and a config that admits every connection.
    async fn start(args: &Args) -> Result<Daemon, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let binary = exe.with_file_name("parleyd");
        let base = args.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        let work_dir = base.join(format!("parleyd-load-{}", std::process::id()));
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| format!("cannot create {}: {e}", work_dir.display()))?;
        let config = write_config(args, &work_dir)?;
        let mut child = tokio::process::Command::new(&binary)
            .args(["serve", "--dev", "--config"])
            .arg(&config)
            .env("PARLEYD_LISTEN", "127.0.0.1:0")
            .env("PARLEYD_DATA_DIR", work_dir.join("data"))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdout = child.stdout.take().ok_or("no stdout from the daemon")?;
        let addr = tokio::time::timeout(Duration::from_secs(60), listening_addr(stdout))
            .await
            .map_err(|_| "the daemon did not print `listening on` within 60s".to_string())??;
        eprintln!("daemon: pid {pid}, {addr}, data in {}", work_dir.display());
        Ok(Daemon {
            addr,
            pid,
            child: Some(child),
            work_dir: Some(work_dir),
        })
    }

    /// SIGTERM (the daemon's clean shutdown), then removes the temporary files.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Without libc, the kill(1) utility is the way to send SIGTERM.
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => eprintln!("daemon exited with {status}"),
            _ => eprintln!("daemon did not stop within 20s; killed"),
        }
        if let Some(dir) = self.work_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Copies the config with `stream.max_connections` above the connection count
/// and, if asked, another `storage.durability`.
fn write_config(args: &Args, dir: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(&args.config)
        .map_err(|e| format!("cannot read {}: {e}", args.config.display()))?;
    let mut config: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", args.config.display()))?;
    let max = (args.connections + 1000) as u64;
    let current = config["stream"]["max_connections"].as_u64().unwrap_or(0);
    config["stream"]["max_connections"] = max.max(current).into();
    if let Some(durability) = &args.durability {
        config["storage"]["durability"] = durability.as_str().into();
    }
    // The copy lives elsewhere, so relative rule directories must be resolved
    // against the original config's directory (the daemon refuses to start
    // without rules; templates and plugins are optional).
    let base = args.config.parent().unwrap_or(Path::new("."));
    for (key, default) in [
        ("rules_dir", "./rules"),
        ("templates_dir", "./templates"),
        ("plugins_dir", "./plugins"),
    ] {
        let relative = config[key].as_str().unwrap_or(default).to_owned();
        if let Ok(resolved) = std::fs::canonicalize(base.join(&relative)) {
            config[key] = resolved.to_string_lossy().as_ref().into();
        } else if key == "rules_dir" {
            return Err(format!(
                "rules_dir {relative:?} of {} does not exist",
                args.config.display()
            ));
        }
    }
    let path = dir.join("config.yaml");
    let yaml = serde_yaml::to_string(&config).map_err(|e| e.to_string())?;
    std::fs::write(&path, yaml).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

/// Reads the daemon's stdout up to its `listening on http://ADDR` line, then keeps
/// draining it so the daemon never blocks on a full pipe.
async fn listening_addr(stdout: tokio::process::ChildStdout) -> Result<SocketAddr, String> {
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        if let Some(addr) = line.strip_prefix("listening on http://") {
            let addr = addr
                .trim()
                .parse()
                .map_err(|_| format!("bad address in {line:?}"))?;
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return Ok(addr);
        }
    }
    Err("the daemon exited before listening".into())
}

// ---------------------------------------------------------------------------
// Setup over HTTP.

/// A minimal HTTP/1.1 keep-alive client: enough for the setup calls, whose
/// replies always carry a Content-Length.
struct HttpConn {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
}

impl HttpConn {
    fn new(addr: SocketAddr) -> HttpConn {
        HttpConn { addr, stream: None }
    }

    /// Sends one request and returns the status and body; reconnects if the
    /// previous exchange closed the connection.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        bearer: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>), String> {
        if self.stream.is_none() {
            let tcp = TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            self.stream = Some(BufReader::new(tcp));
        }
        let result = self.exchange(method, path, bearer, body).await;
        if !matches!(result, Ok((_, _, true))) {
            self.stream = None;
        }
        result.map(|(status, body, _)| (status, body))
    }

    /// Returns the status, the body, and whether the connection can be reused.
    async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        bearer: &str,
        body: &str,
    ) -> Result<(u16, Vec<u8>, bool), String> {
        let stream = self.stream.as_mut().ok_or("not connected")?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {bearer}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        let io = |e: std::io::Error| e.to_string();
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        stream.read_line(&mut line).await.map_err(io)?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let (mut length, mut keep_alive) = (0usize, true);
        loop {
            line.clear();
            stream.read_line(&mut line).await.map_err(io)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap_or((header, ""));
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().map_err(|_| "bad content-length")?,
                "connection" => keep_alive = !value.eq_ignore_ascii_case("close"),
                "transfer-encoding" => return Err("chunked replies are not supported".into()),
                _ => {}
            }
        }
        let mut reply = vec![0; length];
        stream.read_exact(&mut reply).await.map_err(io)?;
        Ok((status, reply, keep_alive))
    }
}

/// A user and the conversation they send into.
struct User {
    id: String,
    token: String,
    peer_id: Arc<str>,
    conversation_id: Arc<str>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    role: &'a str,
    exp: u64,
}

fn mint(secret: &jsonwebtoken::EncodingKey, sub: &str, role: &str, exp: u64) -> String {
    let claims = Claims { sub, role, exp };
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, secret)
        .expect("HS256 signing cannot fail")
}

/// Registers `pairs` providers, customers, listings and conversations, with
/// `setup_concurrency` keep-alive connections working through the pairs.
/// Returns the users in pair order: provider then customer.
async fn setup(args: &Args, addr: SocketAddr, pairs: usize) -> Result<Vec<User>, String> {
    // A per-run prefix keeps ids fresh when the daemon is reused (--url).
    let run_id = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.setup_concurrency.clamp(1, pairs) {
        let (next, run_id, key) = (next.clone(), run_id.clone(), args.service_key.clone());
        let secret = jsonwebtoken::EncodingKey::from_secret(args.jwt_secret.as_bytes());
        let exp = unix_now() + args.duration.as_secs() + 3600;
        workers.spawn(async move {
            let mut http = HttpConn::new(addr);
            let mut done = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= pairs {
                    return Ok::<_, String>(done);
                }
                let ids = PairIds::new(&run_id, i);
                let customer_token = mint(&secret, &ids.customer, "customer", exp);
                let conversation = ids.register(&mut http, &key, &customer_token).await?;
                let provider_token = mint(&secret, &ids.provider, "provider", exp);
                done.push((i, ids, conversation, provider_token, customer_token));
            }
        });
    }
    let mut users: Vec<Option<[User; 2]>> = (0..pairs).map(|_| None).collect();
    while let Some(joined) = workers.join_next().await {
        for (i, ids, conversation, provider_token, customer_token) in
            joined.map_err(|e| e.to_string())??
        {
            let conversation: Arc<str> = conversation.into();
            let user = |id: &String, token, peer: &String| User {
                id: id.clone(),
                token,
                peer_id: peer.as_str().into(),
                conversation_id: conversation.clone(),
            };
            users[i] = Some([
                user(&ids.provider, provider_token, &ids.customer),
                user(&ids.customer, customer_token, &ids.provider),
            ]);
        }
    }
    Ok(users.into_iter().flatten().flatten().collect())
}

struct PairIds {
    provider: String,
    customer: String,
    listing: String,
}

impl PairIds {
    fn new(run_id: &str, i: usize) -> PairIds {
        PairIds {
            provider: format!("load-{run_id}-p{i}"),
            customer: format!("load-{run_id}-c{i}"),
            listing: format!("load-{run_id}-l{i}"),
        }
    }

    /// PUTs both users and the listing as the service, then opens the
    /// conversation as the customer; returns its id.
    async fn register(
        &self,
        http: &mut HttpConn,
        service_key: &str,
        customer_token: &str,
    ) -> Result<String, String> {
        for user in [&self.provider, &self.customer] {
            let body = format!(r#"{{"name":"Load user {user}"}}"#);
            expect_ok(http.request("PUT", &format!("/v1/users/{user}"), service_key, &body))
                .await?;
        }
        let body = format!(
            r#"{{"title":"Load test listing","provider_id":"{}"}}"#,
            self.provider
        );
        let path = format!("/v1/listings/{}", self.listing);
        expect_ok(http.request("PUT", &path, service_key, &body)).await?;
        let body = format!(r#"{{"listing_id":"{}"}}"#, self.listing);
        let reply =
            expect_ok(http.request("POST", "/v1/conversations", customer_token, &body)).await?;
        #[derive(Deserialize)]
        struct Opened {
            id: String,
        }
        serde_json::from_slice::<Opened>(&reply)
            .map(|o| o.id)
            .map_err(|e| format!("POST /v1/conversations reply: {e}"))
    }
}

async fn expect_ok(
    request: impl std::future::Future<Output = Result<(u16, Vec<u8>), String>>,
) -> Result<Vec<u8>, String> {
    match request.await? {
        (200 | 201, body) => Ok(body),
        (status, body) => Err(format!(
            "setup request failed with {status}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---------------------------------------------------------------------------
// The connections.

/// What every connection task shares.
struct Plan {
    addr: SocketAddr,
    /// Origin of the microsecond timestamps carried in client ids.
    epoch: Instant,
    /// Time between two sends of one connection.
    period: Duration,
    duration: Duration,
    drain: Duration,
    connections: usize,
    content: String,
    /// Every Nth message carries a phone number (0: none).
    contact_every: u64,
    handshakes: Semaphore,
}

impl Plan {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// Opens every connection (ramping up `ramp_concurrency` at a time), starts the
/// measured run once all are ready or failed, and gathers each connection's figures.
async fn load(
    args: &Args,
    daemon: &Daemon,
    users: Vec<User>,
    report: &mut Report,
) -> Vec<ConnStats> {
    let n = users.len();
    let plan = Arc::new(Plan {
        addr: daemon.addr,
        epoch: Instant::now(),
        period: Duration::from_secs_f64(n as f64 / args.rate),
        duration: args.duration,
        drain: args.drain,
        connections: n,
        content: content(args.message_chars),
        contact_every: args.contact_every,
        handshakes: Semaphore::new(args.ramp_concurrency.max(1)),
    });
    let (ready_tx, mut ready_rx) = mpsc::channel(1024);
    let (start_tx, start_rx) = watch::channel(None);
    let ramp_started = Instant::now();
    let tasks: Vec<_> = users
        .into_iter()
        .enumerate()
        .map(|(i, user)| {
            let (plan, ready, start) = (plan.clone(), ready_tx.clone(), start_rx.clone());
            tokio::spawn(connection(plan, i, user, ready, start))
        })
        .collect();
    drop(ready_tx);
    while let Some(outcome) = ready_rx.recv().await {
        match outcome {
            Ok(()) => report.held += 1,
            Err(reason) => *report.connect_failures.entry(reason).or_default() += 1,
        }
    }
    report.ramp = ramp_started.elapsed();
    report.daemon_ramped = ProcessFigures::read(daemon.pid);
    eprintln!(
        "ramp: {} of {n} connections ready in {:.1}s; sending for {:?}",
        report.held,
        report.ramp.as_secs_f64(),
        args.duration
    );
    report.metrics_before = scrape_metrics(daemon.addr)
        .await
        .map(|(_, values)| values)
        .unwrap_or_default();
    let cpu_before = cpu_seconds(&daemon.pid.to_string());
    let _ = start_tx.send(Some(Instant::now() + Duration::from_millis(200)));
    let mut stats = Vec::with_capacity(n);
    for task in tasks {
        if let Ok(Some(s)) = task.await {
            stats.push(s);
        }
    }
    report.daemon_cpu = cpu_seconds(&daemon.pid.to_string()) - cpu_before;
    stats
}

/// A message the default rules block before a booking (a phone number).
const CONTACT_CONTENT: &str = "Please call me at +31 6 1234 5678 tonight about the flat.";

/// Neutral text: no digits, so contact detection has nothing to find.
fn content(chars: usize) -> String {
    "Hello, is the flat still free next weekend? We are two adults and a dog. "
        .chars()
        .cycle()
        .take(chars.max(1))
        .collect()
}

/// One user's device: connect, report ready, then send on its schedule while
/// reading acks and events until the drain period ends.
async fn connection(
    plan: Arc<Plan>,
    index: usize,
    user: User,
    ready: mpsc::Sender<Result<(), String>>,
    start: watch::Receiver<Option<Instant>>,
) -> Option<ConnStats> {
    let ws = {
        let _permit = plan.handshakes.acquire().await.ok()?;
        open_stream(plan.addr, &user.token).await
    };
    let ws = match ws {
        Ok(ws) => {
            let _ = ready.send(Ok(())).await;
            ws
        }
        Err(reason) => {
            let _ = ready.send(Err(reason)).await;
            return None;
        }
    };
    drop(ready);
    let (sink, source) = ws.split();
    // The writer runs apart from the reader so a send blocked by TCP back-pressure
    // never stops acks and events from being read (which would deadlock both ends).
    let writer = tokio::spawn(write_loop(
        plan.clone(),
        index,
        sink,
        user.conversation_id.clone(),
        start.clone(),
    ));
    let mut stats = read_loop(&plan, &user, source, start).await;
    if let Ok(written) = writer.await {
        stats.written = written;
    }
    Some(stats)
}

/// Connects, upgrades, and waits for the `ready` frame.
async fn open_stream(addr: SocketAddr, token: &str) -> Result<Ws, String> {
    let opening = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        tcp.set_nodelay(true).map_err(|e| e.to_string())?;
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0);
        let url = format!("ws://{addr}/v1/stream?token={token}");
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config))
            .await
            .map_err(|e| match e {
                WsError::Http(reply) => format!("upgrade refused: HTTP {}", reply.status()),
                e => format!("upgrade: {e}"),
            })?;
        while let Some(frame) = ws.next().await {
            match frame.map_err(|e| format!("before ready: {e}"))? {
                WsMessage::Text(text) if text.as_str().contains(r#""type":"ready""#) => {
                    return Ok(ws)
                }
                WsMessage::Close(close) => {
                    return Err(format!("closed before ready: {:?}", close.map(|c| c.code)))
                }
                _ => {}
            }
        }
        Err("closed before ready".to_string())
    };
    tokio::time::timeout(Duration::from_secs(30), opening)
        .await
        .unwrap_or_else(|_| Err("no ready frame within 30s".into()))
}

/// What a writer did.
#[derive(Default)]
struct Written {
    sent: u64,
    /// Largest delay between a scheduled send and the send: the generator's
    /// own lag (when large, it is the bottleneck and the offered rate is not met).
    max_lag: Duration,
    failure: Option<String>,
}

/// Sends one message every `period`, offset by the connection's index so the
/// total rate is even, until the duration is over.
async fn write_loop(
    plan: Arc<Plan>,
    index: usize,
    mut sink: SplitSink<Ws, WsMessage>,
    conversation_id: Arc<str>,
    mut start: watch::Receiver<Option<Instant>>,
) -> Written {
    let mut written = Written::default();
    let Ok(start) = start
        .wait_for(Option::is_some)
        .await
        .map(|s| s.unwrap_or_else(Instant::now))
    else {
        return written;
    };
    let end = start + plan.duration;
    let offset = plan.period.mul_f64(index as f64 / plan.connections as f64);
    let mut ticks = tokio::time::interval_at(start + offset, plan.period);
    // Open loop: a late send is followed by the ones it delayed, so the offered
    // rate stays the configured one.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        let scheduled = ticks.tick().await;
        if scheduled >= end {
            break;
        }
        written.max_lag = written.max_lag.max(scheduled.elapsed());
        let with_contact = plan.contact_every > 0 && (written.sent + 1) % plan.contact_every == 0;
        let content = if with_contact {
            CONTACT_CONTENT
        } else {
            plan.content.as_str()
        };
        let frame = format!(
            r#"{{"type":"send","conversation_id":"{conversation_id}","client_id":"{}.{}","content":"{}"}}"#,
            written.sent,
            plan.micros(),
            content
        );
        if let Err(e) = sink.send(WsMessage::text(frame)).await {
            written.failure = Some(e.to_string());
            break;
        }
        written.sent += 1;
    }
    written
}

/// The parts of a server frame the generator looks at.
#[derive(Deserialize)]
struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    client_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<MessageRef<'a>>,
    #[serde(borrow)]
    error: Option<ErrorRef<'a>>,
}

#[derive(Deserialize)]
struct MessageRef<'a> {
    #[serde(borrow)]
    sender_id: Cow<'a, str>,
    #[serde(borrow)]
    client_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorRef<'a> {
    #[serde(borrow)]
    code: Cow<'a, str>,
}

/// One connection's figures.
#[derive(Default)]
struct ConnStats {
    user_id: String,
    peer_id: Arc<str>,
    written: Written,
    /// `acked[seq]`: this connection's message `seq` was acknowledged.
    acked: Vec<bool>,
    /// `delivered[seq]`: the peer's message `seq` arrived here.
    delivered: Vec<bool>,
    duplicates: u64,
    ack_micros: Vec<u32>,
    delivery_micros: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// Why the connection ended before the drain was over, if it did.
    ended: Option<String>,
}

/// Parses `SEQ.MICROS` from a client id this generator made.
fn parse_client_id(id: &str) -> Option<(usize, u64)> {
    let (seq, at) = id.split_once('.')?;
    Some((seq.parse().ok()?, at.parse().ok()?))
}

fn mark(flags: &mut Vec<bool>, seq: usize) -> bool {
    if flags.len() <= seq {
        flags.resize(seq + 1, false);
    }
    std::mem::replace(&mut flags[seq], true)
}

/// Reads until the drain period after the run is over, recording acks, the
/// peer's messages, errors and any close by the server.
async fn read_loop(
    plan: &Plan,
    user: &User,
    mut source: SplitStream<Ws>,
    mut start: watch::Receiver<Option<Instant>>,
) -> ConnStats {
    let mut stats = ConnStats {
        user_id: user.id.clone(),
        peer_id: user.peer_id.clone(),
        ..ConnStats::default()
    };
    let mut deadline = None;
    let far = Instant::now() + Duration::from_secs(365 * 86400);
    loop {
        tokio::select! {
            changed = start.changed(), if deadline.is_none() => {
                if changed.is_err() {
                    return stats;
                }
                deadline = start
                    .borrow_and_update()
                    .map(|s| s + plan.duration + plan.drain);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => return stats,
            frame = source.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => stats.record(plan, user, text.as_str()),
                Some(Ok(WsMessage::Close(close))) => {
                    stats.ended = Some(match close {
                        Some(c) => format!("closed by server: {} {}", u16::from(c.code), c.reason),
                        None => "closed by server without a code".into(),
                    });
                    return stats;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    stats.ended = Some(format!("dropped: {e}"));
                    return stats;
                }
                None => {
                    stats.ended = Some("dropped: end of stream".into());
                    return stats;
                }
            },
        }
    }
}

impl ConnStats {
    fn record(&mut self, plan: &Plan, user: &User, text: &str) {
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            *self.errors.entry("unparsable frame".into()).or_default() += 1;
            return;
        };
        let now = plan.micros();
        let latency = |at: u64| now.saturating_sub(at).min(u32::MAX as u64) as u32;
        match frame.kind.as_ref() {
            "ack" => {
                if let Some((seq, at)) = frame.client_id.as_deref().and_then(parse_client_id) {
                    if !mark(&mut self.acked, seq) {
                        self.ack_micros.push(latency(at));
                    }
                }
            }
            "message" => {
                // The sender's own copy (multi-device sync) is not a delivery.
                let Some(m) = frame.message.filter(|m| *m.sender_id == *user.peer_id) else {
                    return;
                };
                if let Some((seq, at)) = m.client_id.as_deref().and_then(parse_client_id) {
                    if mark(&mut self.delivered, seq) {
                        self.duplicates += 1;
                    } else {
                        self.delivery_micros.push(latency(at));
                    }
                }
            }
            "error" => {
                let code = frame
                    .error
                    .map_or("unknown".into(), |e| e.code.into_owned());
                *self.errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------
// Figures and the report.

/// Memory of a process, from /proc/PID/status (kB).
#[derive(Default, Clone, Copy)]
struct ProcessFigures {
    rss_kb: u64,
    peak_rss_kb: u64,
}

impl ProcessFigures {
    fn read(pid: u32) -> Option<ProcessFigures> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        };
        Some(ProcessFigures {
            rss_kb: field("VmRSS:")?,
            peak_rss_kb: field("VmHWM:")?,
        })
    }
}

/// User plus system CPU seconds of a process (`self` or a pid), 0 if unknown.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th of the line, in USER_HZ (100 per second on Linux).
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

#[derive(Default)]
struct Report {
    held: usize,
    connect_failures: BTreeMap<String, u64>,
    ramp: Duration,
    sent: u64,
    acked: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    max_lag: Duration,
    errors: BTreeMap<String, u64>,
    endings: BTreeMap<String, u64>,
    ack: Option<Histogram<u64>>,
    delivery: Option<Histogram<u64>>,
    daemon_ramped: Option<ProcessFigures>,
    daemon_end: Option<ProcessFigures>,
    daemon_cpu: f64,
    generator_cpu: f64,
    /// The daemon's metrics after the ramp, before the measured run.
    metrics_before: BTreeMap<String, f64>,
}

fn histogram(samples: &[ConnStats], pick: fn(&ConnStats) -> &[u32]) -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
    for s in samples {
        for &us in pick(s) {
            h.saturating_record(u64::from(us).max(1));
        }
    }
    h
}

impl Report {
    /// Adds up the connections, pairing each one's acks with what its peer received.
    fn add_connections(&mut self, stats: &[ConnStats]) {
        let by_user: BTreeMap<&str, &ConnStats> =
            stats.iter().map(|s| (s.user_id.as_str(), s)).collect();
        for s in stats {
            self.sent += s.written.sent;
            self.max_lag = self.max_lag.max(s.written.max_lag);
            self.acked += s.acked.iter().filter(|&&a| a).count() as u64;
            self.delivered += s.delivered.iter().filter(|&&d| d).count() as u64;
            self.duplicates += s.duplicates;
            for (code, n) in &s.errors {
                *self.errors.entry(code.clone()).or_default() += n;
            }
            if let Some(ending) = s.ended.as_ref().or(s.written.failure.as_ref()) {
                *self.endings.entry(ending.clone()).or_default() += 1;
            }
            // A peer whose connection failed received nothing: all of it is lost.
            let received = by_user
                .get(&*s.peer_id)
                .map_or(&[][..], |p| &p.delivered[..]);
            self.lost += s
                .acked
                .iter()
                .enumerate()
                .filter(|&(seq, &acked)| acked && !received.get(seq).copied().unwrap_or(false))
                .count() as u64;
        }
        self.ack = Some(histogram(stats, |s| &s.ack_micros));
        self.delivery = Some(histogram(stats, |s| &s.delivery_micros));
    }

    fn print(&self, args: &Args) {
        let secs = args.duration.as_secs_f64();
        let mib = |kb: u64| kb as f64 / 1024.0;
        println!(
            "== parleyd-load: {} connections, {} msgs/s offered, {secs}s (+{:?} drain)",
            args.connections, args.rate, args.drain
        );
        println!(
            "connections held     {} of {} (ramp {:.1}s)",
            self.held,
            args.connections / 2 * 2,
            self.ramp.as_secs_f64()
        );
        for (reason, n) in &self.connect_failures {
            println!("  failed to connect  {n:>6}  {reason}");
        }
        for (ending, n) in &self.endings {
            println!("  ended early        {n:>6}  {ending}");
        }
        println!("sent                 {}", self.sent);
        println!("acked                {}", self.acked);
        println!("delivered (to peer)  {}", self.delivered);
        println!("lost (acked, not delivered by end of drain) {}", self.lost);
        println!("duplicate deliveries {}", self.duplicates);
        if self.errors.is_empty() {
            println!("errors               0");
        }
        for (code, n) in &self.errors {
            println!("error                {n:>6}  {code}");
        }
        println!(
            "achieved             {:.0} msgs/s acked",
            self.acked as f64 / secs
        );
        for (name, h) in [
            ("ack latency", &self.ack),
            ("delivery latency", &self.delivery),
        ] {
            if let Some(h) = h.as_ref().filter(|h| !h.is_empty()) {
                let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
                println!(
                    "{name:<20} p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                    ms(0.5),
                    ms(0.99),
                    ms(0.999),
                    h.max() as f64 / 1000.0
                );
            }
        }
        if let Some(p) = self.daemon_ramped {
            println!("daemon RSS after ramp {:.1} MiB", mib(p.rss_kb));
        }
        if let Some(p) = self.daemon_end {
            println!(
                "daemon RSS at end     {:.1} MiB (peak VmHWM {:.1} MiB)",
                mib(p.rss_kb),
                mib(p.peak_rss_kb)
            );
        }
        println!(
            "daemon CPU during run {:.1}s ({:.0}% of one core)",
            self.daemon_cpu,
            100.0 * self.daemon_cpu / (secs + args.drain.as_secs_f64())
        );
        println!(
            "generator CPU total   {:.1}s; max send lag {:.1} ms",
            self.generator_cpu,
            self.max_lag.as_secs_f64() * 1000.0
        );
    }
}
