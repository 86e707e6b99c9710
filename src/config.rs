//! `config.yaml`: every key is documented in the shipped file. Unknown keys are
//! errors (a typo must not be silently ignored), and secrets can be overridden from
//! the environment so they never need to live in the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The secrets shipped in the example `config.yaml`. The daemon refuses to serve
/// with them unless `--dev` is given.
pub const EXAMPLE_JWT_SECRET: &str = "example-jwt-secret-change-me";
pub const EXAMPLE_SERVICE_KEY: &str = "example-service-key-change-me";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Rule files (contact.yaml, sequences…), reloaded when they change.
    pub rules_dir: PathBuf,
    /// Message templates, reloaded with the rules.
    #[serde(default = "default_templates_dir")]
    pub templates_dir: PathBuf,
    /// Rhai plugins, reloaded with the rules.
    #[serde(default = "default_plugins_dir")]
    pub plugins_dir: PathBuf,
    /// `system` (the wall clock) or `manual` (time moves only through
    /// `POST /v1/admin/clock`; for tests and demos, needs `--dev`).
    #[serde(default)]
    pub clock: ClockMode,
    pub auth: AuthConfig,
    #[serde(default)]
    pub contact: ContactConfig,
    #[serde(default)]
    pub storage: StorageConfig,
    #[serde(default)]
    pub connections: ConnectionsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub stream: StreamConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default)]
    pub notify: NotifyConfig,
    #[serde(default)]
    pub pipeline: PipelineConfig,
    #[serde(default)]
    pub automation: AutomationConfig,
    #[serde(default)]
    pub analytics: AnalyticsConfig,
    /// The provider reports' performance bands.
    #[serde(default)]
    pub benchmarks: BenchmarksConfig,
}

fn default_templates_dir() -> PathBuf {
    PathBuf::from("./templates")
}

fn default_plugins_dir() -> PathBuf {
    PathBuf::from("./plugins")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockMode {
    #[default]
    System,
    Manual,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_secret: String,
    pub service_key: String,
    #[serde(default = "default_token_ttl")]
    pub default_token_ttl: String,
}

fn default_token_ttl() -> String {
    "1h".to_owned()
}

/// Contact detection settings that belong to the deployment (the policy itself
/// is a rule file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContactConfig {
    pub platform_domains: Vec<String>,
    pub history_messages: usize,
}

impl Default for ContactConfig {
    fn default() -> Self {
        let defaults = crate::contact::DetectorConfig::default();
        ContactConfig {
            platform_domains: defaults.platform_domains,
            history_messages: defaults.history_messages,
        }
    }
}

impl ContactConfig {
    pub fn detector(&self) -> crate::contact::DetectorConfig {
        crate::contact::DetectorConfig {
            platform_domains: self.platform_domains.clone(),
            history_messages: self.history_messages,
            ..crate::contact::DetectorConfig::default()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// Acknowledge a write only after it is on disk; concurrent writes share one flush.
    GroupCommit,
    /// Acknowledge once committed in memory; sled flushes every `flush_every_ms`.
    /// Faster, but a machine crash loses up to that window of acknowledged writes.
    Periodic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub durability: Durability,
    pub flush_every_ms: u64,
    pub cache_capacity_mb: u64,
    pub hot_conversations: usize,
    /// Writes waiting for the writer past which a request's write is refused
    /// (HTTP 503 `overloaded`); background writes are never refused.
    pub writer_queue: usize,
    /// How long answers to requests with an `Idempotency-Key` are replayed.
    #[serde(deserialize_with = "duration")]
    pub idempotency_retention: jiff::SignedDuration,
}

/// A duration such as `30m`, `24h` or `7d` (see [`crate::clock::parse_duration`]).
fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<jiff::SignedDuration, D::Error> {
    let text = String::deserialize(d)?;
    crate::clock::parse_duration(&text).map_err(serde::de::Error::custom)
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            durability: Durability::GroupCommit,
            flush_every_ms: 500,
            cache_capacity_mb: 128,
            hot_conversations: 20_000,
            writer_queue: 4096,
            idempotency_retention: jiff::SignedDuration::from_hours(7 * 24),
        }
    }
}

/// What one TCP connection, and one client address, may hold of the daemon
/// (`server::accept` enforces it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Connections (HTTP and WebSocket) open at once. Lowered at start to the
    /// open-files limit minus `reserved_file_descriptors`.
    pub max_open: usize,
    /// File descriptors kept for the daemon's own work (store files, outbound
    /// channels, the rule watcher) and for refusing connections cleanly.
    pub reserved_file_descriptors: usize,
    /// Connections open at once from one client address.
    pub max_per_address: usize,
    /// How long a connection may take to deliver a complete request head,
    /// counted from when it is ready for one: after connecting, and after each
    /// response (so it also closes idle keep-alive connections).
    #[serde(deserialize_with = "positive_duration")]
    pub header_read_timeout: std::time::Duration,
    /// How long a request body may take to arrive once the handler reads it.
    #[serde(deserialize_with = "positive_duration")]
    pub body_read_timeout: std::time::Duration,
    /// How long a write to a client (a response, a stream's event) may wait
    /// for the client to read before the connection is dropped.
    #[serde(deserialize_with = "positive_duration")]
    pub write_timeout: std::time::Duration,
    /// Requests to the public routes, and requests with no token at all, per
    /// client address.
    pub anonymous_rate: Rate,
    /// Peers whose `X-Forwarded-For` names the client (addresses or CIDR
    /// blocks, e.g. `10.0.0.0/8`).
    #[serde(deserialize_with = "networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max_open: 20_000,
            reserved_file_descriptors: 128,
            max_per_address: 256,
            header_read_timeout: std::time::Duration::from_secs(30),
            body_read_timeout: std::time::Duration::from_secs(30),
            write_timeout: std::time::Duration::from_secs(30),
            anonymous_rate: Rate::new(20, 100),
            trusted_proxies: Vec::new(),
        }
    }
}

/// A duration such as `500ms`, `10s` or `1m` that is greater than zero.
fn positive_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(d)?;
    let parsed = crate::clock::parse_duration(&text).map_err(serde::de::Error::custom)?;
    match std::time::Duration::try_from(parsed) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(serde::de::Error::custom(format!(
            "{text:?}: this duration must be greater than zero"
        ))),
    }
}

/// How background components are watched (see `supervisor`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// A component is stuck (and `/healthz` answers 503) when the same piece
    /// of work has waited for it this long (real time) without moving.
    #[serde(deserialize_with = "positive_duration")]
    pub stuck_after: std::time::Duration,
    /// The wait before restarting a component that ended or panicked;
    /// doubled after each failure in a row, up to `restart_backoff_max`.
    #[serde(deserialize_with = "positive_duration")]
    pub restart_backoff: std::time::Duration,
    #[serde(deserialize_with = "positive_duration")]
    pub restart_backoff_max: std::time::Duration,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            stuck_after: std::time::Duration::from_secs(60),
            restart_backoff: std::time::Duration::from_millis(100),
            restart_backoff_max: std::time::Duration::from_secs(30),
        }
    }
}

/// Addresses (`192.0.2.7`, `::1`) and CIDR blocks (`10.0.0.0/8`).
fn networks<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ipnet::IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|text| {
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "{text:?} is neither an IP address nor a CIDR block"
                    ))
                })
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_body_bytes: u64,
    pub max_message_chars: usize,
    pub send_rate_per_second: u32,
    pub send_burst: u32,
    /// Typing indicators: per WebSocket connection, and per user over HTTP.
    pub typing_rate: Rate,
    /// Read receipts: per WebSocket connection, and per user over HTTP.
    pub read_rate: Rate,
    /// Delivery receipts: per WebSocket connection, and per user over HTTP.
    pub delivered_rate: Rate,
    /// `ping` frames, per WebSocket connection.
    pub ping_rate: Rate,
    /// Every frame of one WebSocket connection together, whatever its kind.
    pub frame_rate: Rate,
}

/// A token bucket: `burst` at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: u32,
    pub burst: u32,
}

impl Rate {
    pub const fn new(per_second: u32, burst: u32) -> Rate {
        Rate { per_second, burst }
    }

    /// The bucket as a governor quota (a zero, refused by validation, counts as 1).
    pub fn quota(self) -> governor::Quota {
        let nonzero = |n| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        governor::Quota::per_second(nonzero(self.per_second)).allow_burst(nonzero(self.burst))
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: 64 * 1024,
            max_message_chars: 4000,
            send_rate_per_second: 10,
            send_burst: 20,
            typing_rate: Rate::new(10, 20),
            read_rate: Rate::new(20, 50),
            delivered_rate: Rate::new(50, 200),
            ping_rate: Rate::new(2, 10),
            frame_rate: Rate::new(100, 300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// WebSocket connections held at once, all users together (memory bound).
    pub max_connections: usize,
    /// WebSocket connections one user holds at once; opening one more closes
    /// that user's oldest with close code 4008 (`api::stream::CLOSE_REPLACED`).
    pub max_streams_per_user: usize,
    /// `GET /v1/events` requests one user has waiting at once; past it, 429.
    pub max_long_polls_per_user: usize,
    pub queue_capacity: usize,
    pub heartbeat_seconds: u64,
    pub idle_timeout_seconds: u64,
    pub max_inflight_per_connection: usize,
    pub long_poll_max_wait_seconds: u64,
    pub replay_page: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            max_connections: 15_000,
            max_streams_per_user: 10,
            max_long_polls_per_user: 4,
            queue_capacity: 256,
            heartbeat_seconds: 20,
            idle_timeout_seconds: 60,
            max_inflight_per_connection: 8,
            long_poll_max_wait_seconds: 30,
            replay_page: 500,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

/// Where notifications go out, and how hard the outbox tries. A channel whose
/// endpoint is unset is off: notifications routed to it skip it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// `smtp://host:port` (plain, e.g. a local relay), `smtp://…?tls=required`
    /// (STARTTLS) or `smtps://user:pass@host` (TLS). `PARLEYD_SMTP_URL`.
    pub smtp_url: Option<String>,
    /// The `From` of every email.
    pub email_from: String,
    /// The marketplace's push service: JSON POSTs. `PARLEYD_PUSH_URL`.
    pub push_url: Option<String>,
    /// The SMS provider's HTTP API: JSON POSTs. `PARLEYD_SMS_URL`.
    pub sms_url: Option<String>,
    /// The marketplace backend's webhook receiver. `PARLEYD_WEBHOOK_URL`.
    pub webhook_url: Option<String>,
    /// Signs webhooks (HMAC-SHA256). `PARLEYD_WEBHOOK_SECRET`.
    pub webhook_secret: Option<String>,
    /// How long one attempt may take.
    pub timeout: String,
    /// Attempts before a delivery moves to the dead-letter list.
    pub max_attempts: u32,
    /// The first retry's delay; each later one doubles, up to `retry_max`,
    /// with up to 20% jitter.
    pub retry_base: String,
    pub retry_max: String,
    /// Deliveries in flight at once per channel.
    pub concurrency: usize,
    /// Finished notifications (every channel delivered or suppressed) are
    /// forgotten this long after they were raised; dead ones are kept.
    pub retention: String,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            smtp_url: None,
            email_from: "parleyd <notifications@localhost>".into(),
            push_url: None,
            sms_url: None,
            webhook_url: None,
            webhook_secret: None,
            timeout: "10s".into(),
            max_attempts: 5,
            retry_base: "2s".into(),
            retry_max: "15m".into(),
            concurrency: 32,
            retention: "30d".into(),
        }
    }
}

impl NotifyConfig {
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("timeout", &self.timeout),
            ("retry_base", &self.retry_base),
            ("retry_max", &self.retry_max),
            ("retention", &self.retention),
        ] {
            if let Err(e) = crate::clock::parse_duration(value) {
                problems.push(format!("notify.{key}: {e}"));
            }
        }
        for (key, url) in [
            ("push_url", &self.push_url),
            ("sms_url", &self.sms_url),
            ("webhook_url", &self.webhook_url),
        ] {
            if let Some(url) = url {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    problems.push(format!("notify.{key}: {url:?} is not an http(s) URL"));
                }
            }
        }
        if let Some(url) = &self.smtp_url {
            if !(url.starts_with("smtp://") || url.starts_with("smtps://")) {
                problems.push("notify.smtp_url must start with smtp:// or smtps://".into());
            }
        }
        if self.webhook_url.is_some() && self.webhook_secret.as_deref().unwrap_or("").len() < 16 {
            problems.push(
                "notify.webhook_secret (at least 16 bytes) is needed to sign webhooks".into(),
            );
        }
        if self.email_from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(format!(
                "notify.email_from: {:?} is not an address",
                self.email_from
            ));
        }
        if self.max_attempts == 0 || self.concurrency == 0 {
            problems.push("notify.max_attempts and notify.concurrency must be > 0".into());
        }
        problems
    }
}

/// How the automation engine treats an event or a step it cannot process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutomationConfig {
    /// Failed evaluations of one domain event (or preparations of one due
    /// step) before it moves to the dead-letter list
    /// (`GET /v1/admin/pipeline/dead`) and the events behind it go on.
    pub max_attempts: u32,
}

impl Default for AutomationConfig {
    fn default() -> Self {
        AutomationConfig { max_attempts: 3 }
    }
}

/// The windows of the platform view's per-step figures
/// (`GET /v1/admin/analytics`), applied when the figures are read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// A step message counts as replied to when its addressee wrote within
    /// this many hours (1-720).
    pub reply_window_hours: u64,
    /// A booking counts for the conversation's latest step message when it
    /// came within this many days of it (1-365).
    pub attribution_days: u64,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            reply_window_hours: 24,
            attribution_days: 7,
        }
    }
}

/// The bands of the provider reports' performance score (`benchmarks:`;
/// README.md, "Provider reports"): per metric, the bound a figure must
/// reach for `excellent`, `good` and `average`; anything else is `poor`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BenchmarksConfig {
    /// Average first response time: at most this long.
    pub first_response: TimeBands,
    /// Booked inquiries, of all inquiries: at least this share.
    pub booking_rate: RateBands,
    /// Messages to the provider they read: at least this share.
    pub read_rate: RateBands,
    /// Customer messages the provider answered: at least this share.
    pub reply_rate: RateBands,
}

/// Upper bounds of a time for each band (`excellent` < `good` < `average`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeBands {
    #[serde(deserialize_with = "duration")]
    pub excellent: jiff::SignedDuration,
    #[serde(deserialize_with = "duration")]
    pub good: jiff::SignedDuration,
    #[serde(deserialize_with = "duration")]
    pub average: jiff::SignedDuration,
}

/// Lower bounds of a rate (0 to 1) for each band (`excellent` > `good` >
/// `average`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateBands {
    pub excellent: f64,
    pub good: f64,
    pub average: f64,
}

impl Default for BenchmarksConfig {
    /// The sources of these figures are in config.yaml's comments.
    fn default() -> Self {
        let rates = |excellent, good, average| RateBands {
            excellent,
            good,
            average,
        };
        BenchmarksConfig {
            first_response: TimeBands {
                excellent: jiff::SignedDuration::from_hours(1),
                good: jiff::SignedDuration::from_hours(3),
                average: jiff::SignedDuration::from_hours(24),
            },
            booking_rate: rates(0.3, 0.2, 0.1),
            read_rate: rates(0.95, 0.85, 0.7),
            reply_rate: rates(0.9, 0.75, 0.5),
        }
    }
}

impl BenchmarksConfig {
    /// Bands out of order, or rates outside 0..=1.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let time = &self.first_response;
        if !(jiff::SignedDuration::ZERO < time.excellent
            && time.excellent < time.good
            && time.good < time.average)
        {
            problems
                .push("benchmarks.first_response: need 0 < excellent < good < average".to_owned());
        }
        for (key, rate) in [
            ("booking_rate", &self.booking_rate),
            ("read_rate", &self.read_rate),
            ("reply_rate", &self.reply_rate),
        ] {
            if !(0.0 <= rate.average
                && rate.average < rate.good
                && rate.good < rate.excellent
                && rate.excellent <= 1.0)
            {
                problems.push(format!(
                    "benchmarks.{key}: need 0 <= average < good < excellent <= 1"
                ));
            }
        }
        problems
    }
}

impl Config {
    /// Reads the file, applies `PARLEYD_*` overrides and validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Config::parse(&text, path)?;
        config.resolve_relative_to(path.parent().unwrap_or(Path::new(".")));
        config.apply_env(|name| std::env::var(name).ok())?;
        config.validate()?;
        Ok(config)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.to_string(),
            }
        })
    }

    /// Relative paths in the file are relative to the file, so the daemon finds
    /// `rules/` beside its `config.yaml` whatever directory it is started from.
    fn resolve_relative_to(&mut self, base: &Path) {
        for dir in [
            &mut self.data_dir,
            &mut self.rules_dir,
            &mut self.templates_dir,
            &mut self.plugins_dir,
        ] {
            if dir.is_relative() {
                *dir = base.join(&*dir);
            }
        }
    }

    fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(listen) = var("PARLEYD_LISTEN") {
            self.listen = listen.parse().map_err(|e| ConfigError::Env {
                name: "PARLEYD_LISTEN",
                message: format!("{listen:?} is not an address like 127.0.0.1:8080: {e}"),
            })?;
        }
        if let Some(dir) = var("PARLEYD_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(secret) = var("PARLEYD_JWT_SECRET") {
            self.auth.jwt_secret = secret;
        }
        if let Some(key) = var("PARLEYD_SERVICE_KEY") {
            self.auth.service_key = key;
        }
        let notify = &mut self.notify;
        for (name, slot) in [
            ("PARLEYD_SMTP_URL", &mut notify.smtp_url),
            ("PARLEYD_PUSH_URL", &mut notify.push_url),
            ("PARLEYD_SMS_URL", &mut notify.sms_url),
            ("PARLEYD_WEBHOOK_URL", &mut notify.webhook_url),
            ("PARLEYD_WEBHOOK_SECRET", &mut notify.webhook_secret),
        ] {
            if let Some(value) = var(name) {
                *slot = Some(value).filter(|v| !v.is_empty());
            }
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if self.auth.jwt_secret.len() < 16 {
            problems.push("auth.jwt_secret must be at least 16 bytes".to_owned());
        }
        if self.auth.service_key.len() < 16 {
            problems.push("auth.service_key must be at least 16 bytes".to_owned());
        }
        if let Err(e) = crate::clock::parse_ttl(&self.auth.default_token_ttl) {
            problems.push(format!("auth.default_token_ttl: {e}"));
        }
        problems.extend(self.notify.problems());
        if !(1..=720).contains(&self.analytics.reply_window_hours) {
            problems.push("analytics.reply_window_hours must be 1-720".into());
        }
        if !(1..=365).contains(&self.analytics.attribution_days) {
            problems.push("analytics.attribution_days must be 1-365".into());
        }
        problems.extend(self.benchmarks.problems());
        if self.automation.max_attempts == 0 {
            problems.push("automation.max_attempts must be > 0".into());
        }
        if self.storage.writer_queue == 0 {
            problems.push("storage.writer_queue must be > 0".into());
        }
        let connections = &self.connections;
        if connections.max_open == 0 || connections.max_per_address == 0 {
            problems
                .push("connections.max_open and connections.max_per_address must be > 0".into());
        }
        if connections.reserved_file_descriptors < 16 {
            problems.push("connections.reserved_file_descriptors must be at least 16".into());
        }
        if connections.anonymous_rate.per_second == 0 || connections.anonymous_rate.burst == 0 {
            problems.push("connections.anonymous_rate: per_second and burst must be > 0".into());
        }
        if self.limits.send_rate_per_second == 0 || self.limits.send_burst == 0 {
            problems.push("limits.send_rate_per_second and limits.send_burst must be > 0".into());
        }
        for (key, rate) in [
            ("typing_rate", self.limits.typing_rate),
            ("read_rate", self.limits.read_rate),
            ("delivered_rate", self.limits.delivered_rate),
            ("ping_rate", self.limits.ping_rate),
            ("frame_rate", self.limits.frame_rate),
        ] {
            if rate.per_second == 0 || rate.burst == 0 {
                problems.push(format!("limits.{key}: per_second and burst must be > 0"));
            }
        }
        if self.limits.max_message_chars == 0 || self.limits.max_body_bytes < 1024 {
            problems.push(
                "limits.max_message_chars must be > 0 and limits.max_body_bytes >= 1024".into(),
            );
        }
        if self.stream.queue_capacity == 0 || self.stream.max_inflight_per_connection == 0 {
            problems.push(
                "stream.queue_capacity and stream.max_inflight_per_connection must be > 0".into(),
            );
        }
        if self.stream.heartbeat_seconds == 0
            || self.stream.idle_timeout_seconds <= self.stream.heartbeat_seconds
        {
            problems.push(
                "stream.idle_timeout_seconds must be greater than stream.heartbeat_seconds (> 0)"
                    .into(),
            );
        }
        for (key, value) in [
            ("max_connections", self.stream.max_connections),
            ("max_streams_per_user", self.stream.max_streams_per_user),
            (
                "max_long_polls_per_user",
                self.stream.max_long_polls_per_user,
            ),
            ("replay_page", self.stream.replay_page),
        ] {
            if value == 0 {
                problems.push(format!("stream.{key} must be > 0"));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }

    /// True while either secret is the one shipped in the example config.
    pub fn uses_example_secrets(&self) -> bool {
        self.auth.jwt_secret == EXAMPLE_JWT_SECRET || self.auth.service_key == EXAMPLE_SERVICE_KEY
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "listen: 127.0.0.1:8080\ndata_dir: ./data\nrules_dir: ./rules\nauth:\n  jwt_secret: 0123456789abcdef0\n  service_key: 0123456789abcdef0\n";

    #[test]
    fn benchmark_bands_must_be_ordered() {
        let with = |benchmarks: &str| {
            let text = format!("{MINIMAL}benchmarks:\n{benchmarks}");
            Config::parse(&text, Path::new("c.yaml")).and_then(|c| c.validate())
        };
        with("  read_rate: {excellent: 0.9, good: 0.8, average: 0.5}\n").expect("ordered");
        let Err(ConfigError::Invalid(message)) =
            with("  read_rate: {excellent: 0.8, good: 0.9, average: 0.5}\n  first_response: {excellent: 3h, good: 1h, average: 1d}\n")
        else {
            panic!("out of order bands are accepted");
        };
        assert!(message.contains("benchmarks.read_rate"), "{message}");
        assert!(message.contains("benchmarks.first_response"), "{message}");
        assert!(with("  reply_rate: {excellent: 1.5, good: 0.8, average: 0.5}\n").is_err());
    }

    #[test]
    fn shipped_config_parses_and_validates() {
        let text = include_str!("../config.yaml");
        let config = Config::parse(text, Path::new("config.yaml")).expect("shipped config");
        config.validate().expect("shipped config is valid");
        assert!(config.uses_example_secrets());
        // The file lists the defaults.
        let (shipped, default) = (&config.limits, LimitsConfig::default());
        assert_eq!(
            [
                shipped.typing_rate,
                shipped.read_rate,
                shipped.delivered_rate
            ],
            [
                default.typing_rate,
                default.read_rate,
                default.delivered_rate
            ]
        );
        assert_eq!(
            [shipped.ping_rate, shipped.frame_rate],
            [default.ping_rate, default.frame_rate]
        );
        let (shipped, default) = (&config.stream, StreamConfig::default());
        assert_eq!(
            [
                shipped.max_connections,
                shipped.max_streams_per_user,
                shipped.max_long_polls_per_user
            ],
            [
                default.max_connections,
                default.max_streams_per_user,
                default.max_long_polls_per_user
            ]
        );
    }

    #[test]
    fn unknown_key_is_an_error_with_a_position() {
        let text = format!("{MINIMAL}limits:\n  max_mesage_chars: 10\n");
        match Config::parse(&text, Path::new("c.yaml")) {
            Err(ConfigError::Parse { line, message, .. }) => {
                assert_eq!(line, 8);
                assert!(message.contains("max_mesage_chars"), "{message}");
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let mut config = Config::parse(MINIMAL, Path::new("c.yaml")).unwrap();
        config.resolve_relative_to(Path::new("/etc/parleyd"));
        assert_eq!(config.rules_dir, Path::new("/etc/parleyd/./rules"));
        assert_eq!(config.data_dir, Path::new("/etc/parleyd/./data"));
    }

    #[test]
    fn environment_overrides_the_file() {
        let mut config = Config::parse(MINIMAL, Path::new("c.yaml")).unwrap();
        config
            .apply_env(|name| match name {
                "PARLEYD_LISTEN" => Some("127.0.0.1:0".into()),
                "PARLEYD_JWT_SECRET" => Some("from-the-environment".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.listen.port(), 0);
        assert_eq!(config.auth.jwt_secret, "from-the-environment");
        let bad = config.apply_env(|name| (name == "PARLEYD_LISTEN").then(|| "nope".into()));
        assert!(matches!(bad, Err(ConfigError::Env { .. })));
    }

    #[test]
    fn invalid_values_are_all_reported_together() {
        let text = MINIMAL.replace("0123456789abcdef0", "short")
            + "stream:\n  heartbeat_seconds: 30\n  idle_timeout_seconds: 10\n"
            + "  max_streams_per_user: 0\n  max_long_polls_per_user: 0\n"
            + "limits:\n  ping_rate: {per_second: 0, burst: 5}\n"
            + "storage:\n  writer_queue: 0\n";
        let err = Config::parse(&text, Path::new("c.yaml"))
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("jwt_secret") && err.contains("service_key"),
            "{err}"
        );
        assert!(err.contains("idle_timeout_seconds"), "{err}");
        assert!(err.contains("limits.ping_rate"), "{err}");
        assert!(err.contains("storage.writer_queue must be > 0"), "{err}");
        assert!(
            err.contains("stream.max_streams_per_user must be > 0"),
            "{err}"
        );
        assert!(
            err.contains("stream.max_long_polls_per_user must be > 0"),
            "{err}"
        );
    }

    #[test]
    fn bad_connection_settings_name_the_value_at_fault() {
        for (setting, expected) in [
            (
                "header_read_timeout: 0s",
                "\"0s\": this duration must be greater than zero",
            ),
            ("write_timeout: soon", "\"soon\" is not a duration"),
            (
                "trusted_proxies: [10.0.0.0/33]",
                "\"10.0.0.0/33\" is neither an IP address nor a CIDR block",
            ),
        ] {
            let text = format!("{MINIMAL}connections:\n  {setting}\n");
            let err = Config::parse(&text, Path::new("c.yaml"))
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{setting}: {err}");
        }
        let text = format!("{MINIMAL}connections:\n  trusted_proxies: [\"::1\", 10.0.0.0/8]\n");
        let config = Config::parse(&text, Path::new("c.yaml")).unwrap();
        assert_eq!(config.connections.trusted_proxies.len(), 2);
    }
}
