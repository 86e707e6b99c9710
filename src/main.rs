//! The command line: `serve`, `check`, `test-rules`, `detect`, `analytics
//! rebuild`, `report`, `token`. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use parleyd::auth::{Authenticator, Role};
use parleyd::clock::parse_ttl;
use parleyd::config::Config;
use parleyd::contact::{detect_jsonl, Detector};
use parleyd::rules::RuleDirs;

#[derive(Parser)]
#[command(
    name = "parleyd",
    version,
    about = "Messaging engine for two-sided marketplaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Serve {
        /// Configuration file.
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
        /// Allow the example secrets shipped in config.yaml (development only).
        #[arg(long)]
        dev: bool,
    },
    /// Validate DIR/rules, DIR/templates and DIR/plugins (default: the config's
    /// directories).
    Check {
        dir: Option<PathBuf>,
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Run the rule tests in DIR/rules/tests (default: the config's rules_dir/tests)
    /// on a virtual clock, printing what each test's timeline sent.
    TestRules {
        dir: Option<PathBuf>,
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Read JSONL {"id","text"} on stdin, write one detection line per input line.
    Detect {
        /// Also report the action of rules/contact.yaml in this phase.
        #[arg(long, value_parser = ["pre_booking", "post_booking"])]
        stage: Option<String>,
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Analytics kept from the data directory (the daemon stopped).
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
    /// Print a provider's report, offline from the data directory (the
    /// daemon stopped: it holds the directory). Exit 0 with the report, 1
    /// when the provider is unknown, a date is bad or the directory cannot
    /// be opened, 2 on a usage error.
    Report {
        /// The provider's id.
        #[arg(long)]
        provider: String,
        /// First day, YYYY-MM-DD in the provider's time zone (default: 29
        /// days before --to).
        #[arg(long)]
        from: Option<String>,
        /// Last day, included (default: today).
        #[arg(long)]
        to: Option<String>,
        /// `text` for people, `json` as GET /v1/providers/{id}/report, `csv`
        /// its conversations.
        #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
        format: ReportFormat,
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
    /// Print a signed JWT for a user and role.
    Token {
        /// The user id (the token's `sub`).
        #[arg(long)]
        sub: String,
        #[arg(long, value_enum)]
        role: Role,
        /// Lifetime, e.g. 30m, 1h, 7d (default: auth.default_token_ttl).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ReportFormat {
    Text,
    Json,
    Csv,
}

#[derive(Subcommand)]
enum AnalyticsCommand {
    /// Recompute every metric from the stored history (conversations,
    /// messages and their reads, bookings, signals). The daemon must be
    /// stopped: it holds the data directory.
    Rebuild {
        #[arg(long, default_value = "config.yaml")]
        config: PathBuf,
    },
}

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Serve { config, dev } => serve(config, dev),
        Command::Check { dir, config } => check(dir, &config),
        Command::TestRules { dir, config } => test_rules(dir, &config),
        Command::Detect { stage, config } => detect(stage.as_deref(), &config),
        Command::Analytics {
            command: AnalyticsCommand::Rebuild { config },
        } => rebuild_analytics(&config),
        Command::Report {
            provider,
            from,
            to,
            format,
            config,
        } => report(&provider, from.as_deref(), to.as_deref(), format, &config),
        Command::Token {
            sub,
            role,
            ttl,
            config,
        } => token(&sub, role, ttl.as_deref(), &config),
    }
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("parleyd: {message}");
    ExitCode::FAILURE
}

fn serve(path: PathBuf, dev: bool) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if config.uses_example_secrets() && !dev {
        return fail(format!(
            "{} uses the example secrets; set auth.jwt_secret and auth.service_key (or PARLEYD_JWT_SECRET and PARLEYD_SERVICE_KEY), or pass --dev for a local trial",
            path.display()
        ));
    }
    if config.clock == parleyd::config::ClockMode::Manual && !dev {
        return fail(format!(
            "{}: clock: manual stops time for everything; it is for tests and demos and needs --dev",
            path.display()
        ));
    }
    parleyd::telemetry::init_logging(&config.logging);
    if cfg!(feature = "failpoints") {
        // `cargo test --workspace` builds the daemon with them; a binary from
        // such a build must not be the one deployed.
        tracing::warn!("built with fault points (cargo feature failpoints): for tests only");
    }
    match parleyd::faults::arm() {
        Ok(armed) if !armed.is_empty() => tracing::warn!(?armed, "fault points armed"),
        Ok(_) => {}
        Err(e) => return fail(e),
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(async move {
        let listener = match parleyd::server::bind(config.listen) {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot listen on {}: {e}", config.listen)),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(e) => return fail(e),
        };
        tracing::info!(%addr, data_dir = %config.data_dir.display(), "starting");
        let shutdown = parleyd::server::termination_signal();
        let served = parleyd::server::run(config, listener, shutdown, move || {
            // Scripts wait for this line to know the daemon accepts connections.
            println!("listening on http://{addr}");
        });
        match served.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(e),
        }
    })
}

fn test_rules(dir: Option<PathBuf>, config: &std::path::Path) -> ExitCode {
    let dirs = match rule_dirs(dir, config) {
        Ok(dirs) => dirs,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let tests = dirs.rules.join("tests");
    match runtime.block_on(parleyd::ruletest::run_all(&dirs, &tests)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => fail(e),
    }
}

/// The rule directories under DIR, or the config's.
fn rule_dirs(dir: Option<PathBuf>, config: &std::path::Path) -> Result<RuleDirs, ExitCode> {
    match dir {
        Some(dir) => Ok(RuleDirs::under(&dir)),
        None => Config::load(config).map(|c| RuleDirs::of(&c)).map_err(fail),
    }
}

fn check(dir: Option<PathBuf>, config: &std::path::Path) -> ExitCode {
    let dirs = match rule_dirs(dir, config) {
        Ok(dirs) => dirs,
        Err(code) => return code,
    };
    match parleyd::rules::load(&dirs) {
        Ok(set) => {
            println!(
                "{}: {} files valid ({} sequences, {} notification rules, {} templates, {} report recommendations, {} plugins)",
                dirs.rules.display(),
                set.files.len(),
                set.sequences.len(),
                set.routing.routes.len(),
                set.templates.len(),
                set.recommendations.len(),
                set.plugins.len()
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in errors {
                eprintln!("{e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Detection with the deployment's settings when its config is readable (the
/// platform's own domains matter), the defaults otherwise.
fn detect(stage: Option<&str>, config_path: &std::path::Path) -> ExitCode {
    let config = Config::load(config_path).ok();
    let contact = config
        .as_ref()
        .map(|c| c.contact.clone())
        .unwrap_or_default();
    let detector = Detector::new(&contact.detector());
    let rules = match (stage, &config) {
        (None, _) => None,
        (Some(_), Some(config)) => match parleyd::rules::load(&RuleDirs::of(config)) {
            Ok(rules) => Some(rules),
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                return fail("--stage needs a valid rules/contact.yaml");
            }
        },
        (Some(_), None) => {
            return fail(format!(
                "--stage needs the config ({}) to find rules/contact.yaml",
                config_path.display()
            ))
        }
    };
    let policy = rules.as_ref().zip(stage).map(|(r, s)| (&r.contact, s));
    let stdin = std::io::stdin().lock();
    let stdout = std::io::BufWriter::new(std::io::stdout().lock());
    match detect_jsonl(&detector, policy, stdin, stdout) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn rebuild_analytics(path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if let Err(e) = parleyd::faults::arm() {
        return fail(e);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let store = match open_store(&config) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match runtime.block_on(parleyd::analytics::rebuild::rebuild(&store)) {
        Ok(rebuilt) => {
            println!(
                "analytics rebuilt: {} conversations, {} events folded",
                rebuilt.conversations, rebuilt.events
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("rebuild failed: {e}")),
    }
}

/// The data directory, for a command that runs with the daemon stopped.
fn open_store(config: &Config) -> Result<parleyd::store::Store, ExitCode> {
    parleyd::store::Store::open(
        &config.data_dir,
        &config.storage,
        std::sync::Arc::new(|_| {}),
    )
    .map_err(|e| {
        fail(format!(
            "cannot open the data directory {} (is the daemon still running? stop it first): {e}",
            config.data_dir.display()
        ))
    })
}

fn report(
    provider: &str,
    from: Option<&str>,
    to: Option<&str>,
    format: ReportFormat,
    path: &std::path::Path,
) -> ExitCode {
    use parleyd::analytics::report;
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    let store = match open_store(&config) {
        Ok(store) => store,
        Err(code) => return code,
    };
    match store.rebuild_unfinished() {
        Ok(false) => {}
        Ok(true) => {
            return fail(
                "an analytics rebuild was cut short: run `parleyd analytics rebuild` again",
            )
        }
        Err(e) => return fail(e),
    }
    match parleyd::analytics::rebuild::staleness(&store) {
        Ok(None) => {}
        Ok(Some(stale)) => {
            return fail(format!(
            "{stale}: start the daemon (it rebuilds them) or run `parleyd analytics rebuild` first"
        ))
        }
        Err(e) => return fail(e),
    }
    let clock: std::sync::Arc<dyn parleyd::clock::Clock> =
        std::sync::Arc::new(parleyd::clock::SystemClock);
    let rules_clock = clock.clone();
    let rules = match parleyd::rules::Rules::open(
        RuleDirs::of(&config),
        Box::new(move || parleyd::model::format_time(rules_clock.now())),
    ) {
        Ok(rules) => rules,
        Err(errors) => return fail(parleyd::rules::error_lines(&errors)),
    };
    let app = parleyd::service::App::new(
        config,
        store,
        std::sync::Arc::new(parleyd::hub::Hub::default()),
        std::sync::Arc::new(rules),
        clock,
    );
    let operator = parleyd::auth::Caller {
        user_id: "parleyd-report".into(),
        role: Role::Operator,
    };
    let made = match app.provider_report(operator, provider, from, to) {
        Ok(made) => made,
        Err(e) => return fail(e),
    };
    let printed = match format {
        ReportFormat::Text => Ok(report::text(&made)),
        ReportFormat::Json => serde_json::to_string_pretty(&made)
            .map(|json| json + "\n")
            .map_err(|e| e.to_string()),
        ReportFormat::Csv => report::csv(&made.conversations).map_err(|e| e.to_string()),
    };
    match printed {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}

fn token(sub: &str, role: Role, ttl: Option<&str>, path: &std::path::Path) -> ExitCode {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    if let Err(e) = parleyd::model::validate_id("--sub", sub) {
        return fail(e);
    }
    let ttl = match parse_ttl(ttl.unwrap_or(&config.auth.default_token_ttl)) {
        Ok(ttl) => ttl,
        Err(e) => return fail(format!("--ttl: {e}")),
    };
    let auth = Authenticator::new(&config.auth.jwt_secret, &config.auth.service_key);
    match auth.mint(sub, role, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(e),
    }
}
