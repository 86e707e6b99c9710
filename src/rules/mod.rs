//! Rules are data: the files under `rules/`, `templates/` and `plugins/` are
//! loaded and validated as one immutable [`RuleSet`]. A reload builds a whole new
//! set and swaps it in atomically; a set with any error never replaces the
//! running one, and its errors (file, line, column, message) stay visible until
//! a good set loads.
//!
//! Start-up, `parleyd check`, a file change and SIGHUP all go through [`load`].

pub mod context;
pub mod experiments;
pub mod plugins;
pub mod recommendations;
mod reload;
pub mod routing;
pub mod script;
pub mod sequences;
pub mod templates;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::contact::policy::{ContactPolicy, PolicyError};
use experiments::Experiment;
use plugins::Plugin;
use routing::{Routing, RoutingSpec, ROUTING_FILE};
use sequences::{KnownEvents, RuleFile, Sequence, SpecError};
use templates::{Template, TemplateSpec};

pub use reload::Reloader;

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

/// Errors one per line, as `parleyd check` prints them.
pub fn error_lines(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("\n")
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

    /// An error about `near`, located at its first occurrence in the file's
    /// text (see [`locate`]); `offset` is a position inside `near` (a script
    /// error's line and column).
    fn near(
        file: &Path,
        text: &str,
        near: &str,
        offset: Option<(usize, usize)>,
        message: String,
    ) -> RuleError {
        RuleError::near_from(file, text, 0, near, offset, message)
    }

    /// A sequence's or a notification rule's error, located by its `near`
    /// after its `within` texts (else as [`RuleError::near`]).
    fn spec(file: &Path, text: &str, e: SpecError) -> RuleError {
        let mut start = 0;
        for w in &e.within {
            if let Some(at) = find_word(text, start, w) {
                start = at + w.len();
            }
        }
        RuleError::near_from(file, text, start, &e.near, e.offset, e.message)
    }

    /// [`RuleError::near`], looking for `near` from byte `start` on first
    /// (the part of the file the error is about).
    fn near_from(
        file: &Path,
        text: &str,
        start: usize,
        near: &str,
        offset: Option<(usize, usize)>,
        message: String,
    ) -> RuleError {
        let (mut line, mut column) = locate_from(text, start, near);
        if let Some((l, c)) = offset {
            if l > 1 {
                (line, column) = (line + l - 1, c);
            } else {
                column += c - 1;
            }
        }
        RuleError {
            file: file.display().to_string(),
            line,
            column,
            message,
        }
    }

    fn yaml(file: &Path, e: &serde_yaml::Error) -> RuleError {
        let (line, column) = e.location().map_or((1, 1), |l| (l.line(), l.column()));
        RuleError {
            file: file.display().to_string(),
            line,
            column,
            message: e.to_string(),
        }
    }
}

/// 1-based line and column of the first line of `needle` in `text` (the start
/// of the text if it is not found). See [`find_word`] for what counts.
fn locate(text: &str, needle: &str) -> (usize, usize) {
    locate_from(text, 0, needle)
}

/// [`locate`], looking from byte `start` on first, then from the start.
fn locate_from(text: &str, start: usize, needle: &str) -> (usize, usize) {
    let first_line = needle.lines().next().unwrap_or(needle).trim();
    let Some(at) = find_word(text, start, first_line).or_else(|| find_word(text, 0, first_line))
    else {
        return (1, 1);
    };
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let column = at - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Tells each expression where it is written, so its run-time errors name
/// the file's line and column.
fn place<'a>(exprs: impl Iterator<Item = &'a mut script::Expr>, file: &Path, text: &str) {
    let file = file.display().to_string();
    for expr in exprs {
        expr.place(&file, text);
    }
}

/// The byte offset of the first occurrence of `needle` in `text` at or after
/// `start` that is not part of a longer name (so `booking` is not found inside
/// `booking_created`) and not in a YAML comment. `None` for an empty needle.
fn find_word(text: &str, start: usize, needle: &str) -> Option<usize> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    if needle.is_empty() {
        return None;
    }
    let from = text.get(start..).map_or(0, |_| start);
    text[from..]
        .match_indices(needle)
        .map(|(i, _)| from + i)
        .find(|&at| {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let before = &text[line_start..at];
            let in_comment = before.trim_start().starts_with('#') || before.contains(" #");
            let joined_before = needle.starts_with(word) && before.ends_with(word);
            let joined_after =
                needle.ends_with(word) && text[at + needle.len()..].starts_with(word);
            !(in_comment || joined_before || joined_after)
        })
}

/// Where the three kinds of rule files live.
#[derive(Debug, Clone)]
pub struct RuleDirs {
    pub rules: PathBuf,
    pub templates: PathBuf,
    pub plugins: PathBuf,
}

impl RuleDirs {
    /// `rules/`, `templates/` and `plugins/` under one directory.
    pub fn under(root: &Path) -> RuleDirs {
        RuleDirs {
            rules: root.join("rules"),
            templates: root.join("templates"),
            plugins: root.join("plugins"),
        }
    }

    /// The directories a config names (`rules_dir`, `templates_dir`, `plugins_dir`).
    pub fn of(config: &crate::config::Config) -> RuleDirs {
        RuleDirs {
            rules: config.rules_dir.clone(),
            templates: config.templates_dir.clone(),
            plugins: config.plugins_dir.clone(),
        }
    }
}

/// Everything loaded from the rule directories.
#[derive(Debug)]
pub struct RuleSet {
    pub contact: ContactPolicy,
    pub sequences: Vec<Sequence>,
    pub templates: BTreeMap<String, Template>,
    pub plugins: Vec<Plugin>,
    pub routing: Routing,
    /// A/B experiments on sequence steps (`experiments:` in rule files).
    pub experiments: Vec<Experiment>,
    /// The provider reports' recommendations (`templates/reports.yaml`).
    pub recommendations: Vec<recommendations::Recommendation>,
    /// The files the set was built from.
    pub files: Vec<String>,
}

impl RuleSet {
    pub fn sequence(&self, name: &str) -> Option<&Sequence> {
        self.sequences.iter().find(|s| s.name == name)
    }

    pub fn experiment(&self, name: &str) -> Option<&Experiment> {
        self.experiments.iter().find(|e| e.name == name)
    }

    /// The experiments on `sequence`.
    pub fn experiments_on<'a>(&'a self, sequence: &'a str) -> impl Iterator<Item = &'a Experiment> {
        self.experiments
            .iter()
            .filter(move |e| e.sequence == sequence)
    }
}

/// The files in `dir` with extension `ext`, sorted; a missing directory is
/// empty when `optional`.
fn files_in(dir: &Path, exts: &[&str], optional: bool) -> Result<Vec<PathBuf>, RuleError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(RuleError::whole_file(
                dir,
                format!("cannot read the directory: {e}"),
            ))
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| exts.iter().any(|e| x == *e)))
        .collect();
    paths.sort();
    Ok(paths)
}

/// Reads the files of one kind, recording unreadable ones.
fn read_all(
    dir: &Path,
    exts: &[&str],
    optional: bool,
    files: &mut Vec<String>,
    errors: &mut Vec<RuleError>,
) -> Vec<(PathBuf, String)> {
    let paths = match files_in(dir, exts, optional) {
        Ok(paths) => paths,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    let mut read = Vec::new();
    for path in paths {
        files.push(path.display().to_string());
        match std::fs::read_to_string(&path) {
            Ok(text) => read.push((path, text)),
            Err(e) => errors.push(RuleError::whole_file(&path, format!("cannot read: {e}"))),
        }
    }
    read
}

const YAML: &[&str] = &["yaml", "yml"];

/// The templates that compiled, and the ids of all defined (so a step naming
/// one with an error is not also reported as naming a missing one).
fn load_templates(
    dir: &Path,
    files: &mut Vec<String>,
    errors: &mut Vec<RuleError>,
) -> (BTreeMap<String, Template>, BTreeSet<String>) {
    let mut templates = BTreeMap::new();
    let mut defined = BTreeSet::new();
    for (path, text) in read_all(dir, YAML, true, files, errors) {
        if path
            .file_name()
            .is_some_and(|n| n == recommendations::REPORTS_FILE)
        {
            continue;
        }
        let specs: BTreeMap<String, TemplateSpec> = match serde_yaml::from_str(&text) {
            Ok(specs) => specs,
            Err(e) => {
                errors.push(RuleError::yaml(&path, &e));
                continue;
            }
        };
        for (id, spec) in specs {
            if !defined.insert(id.clone()) {
                errors.push(RuleError::near(
                    &path,
                    &text,
                    &format!("{id}:"),
                    None,
                    format!("template {id} is defined twice"),
                ));
                continue;
            }
            match Template::compile(&id, &spec) {
                Ok(mut t) => {
                    place(t.scripts_mut(), &path, &text);
                    templates.insert(id, t);
                }
                Err(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|p| RuleError::near(&path, &text, &p.near, p.offset, p.message)),
                ),
            }
        }
    }
    (templates, defined)
}

/// What `rules/` holds: the contact policy, routing, and sequence files.
struct RuleFiles {
    contact: Option<ContactPolicy>,
    sequences: Vec<Sequence>,
    experiments: Vec<Experiment>,
    routing: Routing,
}

fn load_rule_files(
    dir: &Path,
    templates: &BTreeSet<String>,
    files: &mut Vec<String>,
    errors: &mut Vec<RuleError>,
) -> RuleFiles {
    let mut contact = None;
    let mut routing_file = None;
    let mut rule_files = Vec::new();
    for (path, text) in read_all(dir, YAML, false, files, errors) {
        if path.file_name().is_some_and(|n| n == CONTACT_POLICY_FILE) {
            match ContactPolicy::from_yaml(&text) {
                Ok(policy) => contact = Some(policy),
                Err(e) => errors.push(policy_error(&path, e)),
            }
        } else if path.file_name().is_some_and(|n| n == ROUTING_FILE) {
            match serde_yaml::from_str::<RoutingSpec>(&text) {
                Ok(spec) => routing_file = Some((path, text, spec)),
                Err(e) => errors.push(RuleError::yaml(&path, &e)),
            }
        } else {
            match serde_yaml::from_str::<RuleFile>(&text) {
                Ok(file) => rule_files.push((path, text, file)),
                Err(e) => errors.push(RuleError::yaml(&path, &e)),
            }
        }
    }
    // Signals declared in any file count for all, so every file is read
    // before any name is checked.
    let declared = rule_files
        .iter()
        .map(|(path, text, file)| (path, text, &file.signals))
        .chain(
            routing_file
                .iter()
                .map(|(path, text, spec)| (path, text, &spec.signals)),
        );
    let mut signals = Vec::new();
    for (path, text, declared) in declared {
        signals.extend(declared.iter().map(String::as_str));
        for signal in declared.iter().filter(|s| !sequences::is_name(s)) {
            errors.push(RuleError::near(
                path,
                text,
                signal,
                None,
                format!("signals: {signal:?} is not a signal type (lower_snake_case, at most 64 characters)"),
            ));
        }
    }
    let events = KnownEvents::new(signals);
    let mut routing = Routing::default();
    if let Some((path, text, spec)) = routing_file {
        match Routing::compile(spec, |t| templates.contains(t), &events) {
            Ok(mut compiled) => {
                place(compiled.scripts_mut(), &path, &text);
                routing = compiled;
            }
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|p| RuleError::spec(&path, &text, p)),
            ),
        }
    }
    let mut sequences: Vec<Sequence> = Vec::new();
    let mut experiment_specs = Vec::new();
    for (path, text, file) in rule_files {
        let shown = path.display().to_string();
        if !file.experiments.is_empty() {
            experiment_specs.push((path.clone(), text.clone(), file.experiments));
        }
        for spec in file.sequences {
            let name = spec.name.clone();
            match Sequence::compile(spec, &shown, |t| templates.contains(t), &events) {
                Ok(sequence) if sequences.iter().any(|s| s.name == name) => {
                    errors.push(defined_twice(
                        &path,
                        &text,
                        "sequence",
                        &name,
                        &sequence.file,
                    ));
                }
                Ok(mut sequence) => {
                    place(sequence.scripts_mut(), &path, &text);
                    sequences.push(sequence);
                }
                Err(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|p| RuleError::spec(&path, &text, p)),
                ),
            }
        }
    }
    let experiments = load_experiments(experiment_specs, &sequences, templates, errors);
    if contact.is_none() && !errors.iter().any(|e| e.file.ends_with(CONTACT_POLICY_FILE)) {
        errors.push(RuleError::whole_file(
            &dir.join(CONTACT_POLICY_FILE),
            "the contact policy is missing",
        ));
    }
    RuleFiles {
        contact,
        sequences,
        experiments,
        routing,
    }
}

/// `{kind} {name} is defined twice`, placed at its `name:` in `path`, naming
/// the file that defined it first.
fn defined_twice(path: &Path, text: &str, kind: &str, name: &str, first: &str) -> RuleError {
    RuleError::near(
        path,
        text,
        &format!("name: {name}"),
        None,
        format!("{kind} {name} is defined twice (also in {first})"),
    )
}

/// Compiles the experiments of every rule file (after every sequence, which
/// they swap steps of): names unique across files, one experiment per step.
fn load_experiments(
    specs: Vec<(PathBuf, String, Vec<experiments::ExperimentSpec>)>,
    sequences: &[Sequence],
    templates: &BTreeSet<String>,
    errors: &mut Vec<RuleError>,
) -> Vec<Experiment> {
    let mut compiled: Vec<(Experiment, PathBuf, String)> = Vec::new();
    for (path, text, file_specs) in specs {
        let shown = path.display().to_string();
        for spec in file_specs {
            let name = spec.name.clone();
            match Experiment::compile(spec, &shown, sequences, |t| templates.contains(t)) {
                Ok(experiment) => {
                    if let Some((other, _, _)) = compiled.iter().find(|(e, _, _)| e.name == name) {
                        errors.push(defined_twice(
                            &path,
                            &text,
                            "experiment",
                            &name,
                            &other.file,
                        ));
                        continue;
                    }
                    compiled.push((experiment, path.clone(), text.clone()));
                }
                Err(problems) => errors.extend(
                    problems
                        .into_iter()
                        .map(|p| RuleError::spec(&path, &text, p)),
                ),
            }
        }
    }
    let (experiments, places): (Vec<Experiment>, Vec<(PathBuf, String)>) = compiled
        .into_iter()
        .map(|(e, path, text)| (e, (path, text)))
        .unzip();
    for (i, step) in experiments::overlapping(&experiments) {
        let experiment = &experiments[i];
        let (path, text) = &places[i];
        errors.push(RuleError::spec(
            path,
            text,
            SpecError {
                within: vec![format!("name: {}", experiment.name)],
                ..SpecError::at(
                    format!("step: {step}"),
                    format!(
                        "experiment {}: another experiment already swaps step {step} of sequence {}",
                        experiment.name, experiment.sequence
                    ),
                )
            },
        ));
    }
    experiments
}

fn load_plugins(dir: &Path, files: &mut Vec<String>, errors: &mut Vec<RuleError>) -> Vec<Plugin> {
    let mut plugins = Vec::new();
    for (path, text) in read_all(dir, &["rhai"], true, files, errors) {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        match Plugin::compile(&name, &path.display().to_string(), &text) {
            Ok(plugin) => plugins.push(plugin),
            Err(e) => errors.push(RuleError {
                file: path.display().to_string(),
                line: e.line.max(1),
                column: e.column.max(1),
                message: e.message,
            }),
        }
    }
    plugins
}

/// Loads and validates every rule, template and plugin file, collecting all
/// errors rather than stopping at the first.
pub fn load(dirs: &RuleDirs) -> Result<RuleSet, Vec<RuleError>> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    let (templates, defined) = load_templates(&dirs.templates, &mut files, &mut errors);
    let recommendations = recommendations::load(&dirs.templates, &mut errors);
    let loaded = load_rule_files(&dirs.rules, &defined, &mut files, &mut errors);
    let plugins = load_plugins(&dirs.plugins, &mut files, &mut errors);
    match loaded.contact {
        Some(contact) if errors.is_empty() => Ok(RuleSet {
            contact,
            sequences: loaded.sequences,
            routing: loaded.routing,
            experiments: loaded.experiments,
            recommendations,
            templates,
            plugins,
            files,
        }),
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
    dirs: RuleDirs,
    current: ArcSwap<RuleSet>,
    status: ArcSwap<RulesStatus>,
    version: AtomicU64,
    now: Box<dyn Fn() -> String + Send + Sync>,
}

impl Rules {
    /// Loads the set for start-up; any error refuses to start.
    pub fn open(
        dirs: RuleDirs,
        now: Box<dyn Fn() -> String + Send + Sync>,
    ) -> Result<Rules, Vec<RuleError>> {
        let set = load(&dirs)?;
        let status = RulesStatus {
            version: 1,
            loaded_at: now(),
            files: set.files.clone(),
            last_failure: None,
        };
        Ok(Rules {
            dirs,
            current: ArcSwap::from_pointee(set),
            status: ArcSwap::from_pointee(status),
            version: AtomicU64::new(1),
            now,
        })
    }

    pub fn dirs(&self) -> &RuleDirs {
        &self.dirs
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
        match load(&self.dirs) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_found_whole_and_outside_comments() {
        let text =
            "# booking_canceled is a typo\nstop_on: [booking_canceled_x, booking_canceled]\n";
        assert_eq!(locate(text, "booking_canceled"), (2, 31));
        // From a later start; else from the top; else the top.
        assert_eq!(locate_from(text, text.len(), "stop_on:"), (2, 1));
        assert_eq!(locate(text, "booking"), (1, 1));
    }
}
