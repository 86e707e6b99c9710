//! Rules are data: the files under `rules/` are loaded and validated as one
//! immutable [`RuleSet`]. A reload builds a whole new set and swaps it in
//! atomically; a set with any error never replaces the running one, and its errors
//! (file, line, column, message) stay visible until a good set loads.
//!
//! Start-up, `parleyd check`, a file change and SIGHUP all go through [`load`].

mod watch;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::contact::policy::{ContactPolicy, PolicyError};

pub use watch::Watcher;

/// The contact moderation policy file, relative to the rules directory.
pub const CONTACT_POLICY_FILE: &str = "contact.yaml";

/// One problem in one file, reported as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl RuleError {
    fn whole_file(file: &Path, message: impl Into<String>) -> RuleError {
        RuleError {
            file: file.display().to_string(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

/// Everything loaded from the rules directory.
#[derive(Debug)]
pub struct RuleSet {
    pub contact: ContactPolicy,
    /// The files the set was built from.
    pub files: Vec<String>,
}

/// Loads and validates every rule file under `dir`, collecting all errors rather
/// than stopping at the first.
pub fn load(dir: &Path) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![RuleError::whole_file(
            dir,
            format!("cannot read the rules directory: {e}"),
        )]
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    paths.sort();
    for path in &paths {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name != CONTACT_POLICY_FILE {
            errors.push(RuleError::whole_file(
                path,
                format!("unknown rule file; expected {CONTACT_POLICY_FILE}"),
            ));
        }
        files.push(path.display().to_string());
    }
    let contact_path = dir.join(CONTACT_POLICY_FILE);
    let contact = match std::fs::read_to_string(&contact_path) {
        Ok(text) => ContactPolicy::from_yaml(&text)
            .map_err(|e| errors.push(policy_error(&contact_path, e)))
            .ok(),
        Err(e) => {
            errors.push(RuleError::whole_file(
                &contact_path,
                format!("cannot read the contact policy: {e}"),
            ));
            None
        }
    };
    match contact {
        Some(contact) if errors.is_empty() => Ok(RuleSet { contact, files }),
        _ => Err(errors),
    }
}

fn policy_error(file: &Path, e: PolicyError) -> RuleError {
    match e {
        PolicyError::Syntax {
            line,
            column,
            message,
        } => RuleError {
            file: file.display().to_string(),
            line,
            column,
            message,
        },
        other => RuleError::whole_file(file, other.to_string()),
    }
}

/// The last reload that failed, shown until a good set loads.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ReloadFailure {
    pub at: String,
    pub errors: Vec<RuleError>,
}

/// What `GET /v1/admin/rules` shows.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RulesStatus {
    /// Increments with every successful load.
    pub version: u64,
    pub loaded_at: String,
    pub files: Vec<String>,
    pub last_failure: Option<ReloadFailure>,
}

/// The running rule set and its reload history.
pub struct Rules {
    dir: PathBuf,
    current: ArcSwap<RuleSet>,
    status: ArcSwap<RulesStatus>,
    version: AtomicU64,
    now: Box<dyn Fn() -> String + Send + Sync>,
}

impl Rules {
    /// Loads the set for start-up; any error refuses to start.
    pub fn open(
        dir: &Path,
        now: Box<dyn Fn() -> String + Send + Sync>,
    ) -> Result<Rules, Vec<RuleError>> {
        let set = load(dir)?;
        let status = RulesStatus {
            version: 1,
            loaded_at: now(),
            files: set.files.clone(),
            last_failure: None,
        };
        Ok(Rules {
            dir: dir.to_owned(),
            current: ArcSwap::from_pointee(set),
            status: ArcSwap::from_pointee(status),
            version: AtomicU64::new(1),
            now,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The set in force now; cheap, and stable for as long as it is held.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    pub fn status(&self) -> RulesStatus {
        (*self.status.load_full()).clone()
    }

    /// Loads the directory again; swaps the new set in only if it is valid.
    pub fn reload(&self) -> Result<u64, Vec<RuleError>> {
        match load(&self.dir) {
            Ok(set) => {
                let version = self.version.fetch_add(1, Ordering::AcqRel) + 1;
                let status = RulesStatus {
                    version,
                    loaded_at: (self.now)(),
                    files: set.files.clone(),
                    last_failure: None,
                };
                self.current.store(Arc::new(set));
                self.status.store(Arc::new(status));
                metrics::counter!("parleyd_rule_reloads_total", "result" => "ok").increment(1);
                tracing::info!(version, "rules reloaded");
                Ok(version)
            }
            Err(errors) => {
                let mut status = self.status();
                status.last_failure = Some(ReloadFailure {
                    at: (self.now)(),
                    errors: errors.clone(),
                });
                self.status.store(Arc::new(status));
                metrics::counter!("parleyd_rule_reloads_total", "result" => "error").increment(1);
                for e in &errors {
                    tracing::error!(error = %e, "rule reload rejected; the previous rules stay in force");
                }
                Err(errors)
            }
        }
    }
}
