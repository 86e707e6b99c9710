//! Hot reload: a debounced file watcher over the rule, template and plugin
//! directories. An editor's
//! save is several file events; the debouncer folds them into one reload.

use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use super::Rules;

/// How long the files must be quiet before a reload: long enough to fold one
/// save into one reload, short enough that the change is live well under 500 ms.
const QUIET: Duration = Duration::from_millis(100);

/// Keeps watching while it is alive.
pub struct Watcher {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
}

impl Watcher {
    pub fn start(rules: Arc<Rules>) -> notify::Result<Watcher> {
        let dirs = rules.dirs().clone();
        let mut debouncer = new_debouncer(QUIET, None, move |result: DebounceEventResult| {
            match result {
                Ok(events) if events.iter().any(|e| !e.kind.is_access()) => {
                    // Errors are logged and kept for /v1/admin/rules by reload().
                    let _ = rules.reload();
                }
                Ok(_) => {}
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "watching the rules directory");
                    }
                }
            }
        })?;
        debouncer.watch(&dirs.rules, RecursiveMode::Recursive)?;
        // Templates and plugins are optional directories.
        for dir in [&dirs.templates, &dirs.plugins] {
            if dir.is_dir() {
                debouncer.watch(dir, RecursiveMode::Recursive)?;
            }
        }
        Ok(Watcher {
            _debouncer: debouncer,
        })
    }
}
