//! Hot reload: a debounced file watcher over the rule, template and plugin
//! directories. An editor's
//! save is several file events; the debouncer folds them into one reload.
//!
//! The debouncer's thread only signals a change; [`Watcher::run`], a task the
//! supervisor restarts, does the reload. A reload that panics, or a watcher
//! thread that dies, ends that task, so it is seen, counted and restarted
//! rather than leaving the rules silently unwatched.

use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use super::Rules;

/// How long the files must be quiet before a reload: long enough to fold one
/// save into one reload, short enough that the change is live well under 500 ms.
const QUIET: Duration = Duration::from_millis(100);

/// Watches while it is alive; [`Watcher::run`] applies the changes.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    rules: Arc<Rules>,
    changes: tokio::sync::mpsc::Receiver<()>,
}

impl Watcher {
    pub fn start(rules: Arc<Rules>) -> notify::Result<Watcher> {
        let dirs = rules.dirs().clone();
        // One slot: changes that arrive during a reload fold into one more.
        let (changed, changes) = tokio::sync::mpsc::channel(1);
        let mut debouncer =
            new_debouncer(
                QUIET,
                None,
                move |result: DebounceEventResult| match result {
                    Ok(events) if events.iter().any(|e| !e.kind.is_access()) => {
                        let _ = changed.try_send(());
                    }
                    Ok(_) => {}
                    Err(errors) => {
                        for e in errors {
                            tracing::warn!(error = %e, "watching the rules directory");
                        }
                    }
                },
            )?;
        debouncer.watch(&dirs.rules, RecursiveMode::Recursive)?;
        // Templates and plugins are optional directories.
        for dir in [&dirs.templates, &dirs.plugins] {
            if dir.is_dir() {
                debouncer.watch(dir, RecursiveMode::Recursive)?;
            }
        }
        Ok(Watcher {
            _debouncer: debouncer,
            rules,
            changes,
        })
    }

    /// Reloads the rules after each change, off the async workers, until the
    /// watch ends; a reload that panics ends it with that panic.
    pub async fn run(mut self) {
        while self.changes.recv().await.is_some() {
            let rules = Arc::clone(&self.rules);
            // Errors are logged and kept for /v1/admin/rules by reload().
            if let Err(e) = tokio::task::spawn_blocking(move || rules.reload()).await {
                if let Ok(panic) = e.try_into_panic() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
        tracing::error!("the rules directory watch ended");
    }
}
