//! Hot reload: one task, [`Reloader::run`] (the supervised component
//! `rules.reload`), reloads the rules on a change to the rule, template or
//! plugin directories and on SIGHUP. One task, so two reloads never run at
//! once: two concurrent reloads could each read the files, and the one that
//! read the older files could install its set last.
//!
//! A debounced file watcher folds an editor's save (several file events) into
//! one reload; its thread only signals a change. A reload that panics, or a
//! watcher thread that dies, ends the task, so it is seen, counted and
//! restarted rather than leaving the rules silently unwatched; a restarted
//! task reloads once at its start, since the files may have changed while it
//! was down.

use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};

use super::Rules;

/// How long the files must be quiet before a reload: long enough to fold one
/// save into one reload, short enough that the change is live well under 500 ms.
const QUIET: Duration = Duration::from_millis(100);

/// Watches the directories while it is alive; [`Reloader::run`] applies the
/// changes.
pub struct Reloader {
    _debouncer: Debouncer<notify::RecommendedWatcher, RecommendedCache>,
    rules: Arc<Rules>,
    changes: tokio::sync::mpsc::Receiver<()>,
}

/// What asked for a reload.
enum Cause {
    Files,
    Hangup,
}

impl Reloader {
    /// Starts watching `rules`' directories (templates and plugins only if
    /// they exist). Errors: a directory that cannot be watched.
    pub fn watch(rules: Arc<Rules>) -> notify::Result<Reloader> {
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
        for dir in [&dirs.templates, &dirs.plugins] {
            if dir.is_dir() {
                debouncer.watch(dir, RecursiveMode::Recursive)?;
            }
        }
        Ok(Reloader {
            _debouncer: debouncer,
            rules,
            changes,
        })
    }

    /// Reloads the rules after each file change and each SIGHUP, one reload at
    /// a time and off the async workers, until the watch ends (or SIGHUP
    /// cannot be caught); a reload that panics ends it with that panic.
    /// `restarted`: reload once first (changes made while no task watched).
    pub async fn run(mut self, restarted: bool) {
        if restarted {
            self.reload(Cause::Files).await;
        }
        let mut hangups = match Hangups::catch() {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::error!(error = %e, "cannot catch SIGHUP");
                return;
            }
        };
        loop {
            let cause = tokio::select! {
                change = self.changes.recv() => match change {
                    Some(()) => Cause::Files,
                    None => break,
                },
                () = hangups.next() => Cause::Hangup,
            };
            self.reload(cause).await;
        }
        tracing::error!("the rules directory watch ended");
    }

    async fn reload(&self, cause: Cause) {
        if let Cause::Hangup = cause {
            tracing::info!("SIGHUP: reloading the rules");
        }
        let rules = Arc::clone(&self.rules);
        // Errors are logged and kept for /v1/admin/rules by reload().
        if let Err(e) = tokio::task::spawn_blocking(move || rules.reload()).await {
            if let Ok(panic) = e.try_into_panic() {
                std::panic::resume_unwind(panic);
            }
        }
    }
}

/// SIGHUP, where there is such a signal.
struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    fn catch() -> std::io::Result<Hangups> {
        Ok(Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// The next SIGHUP (never, where there is none).
    async fn next(&mut self) {
        #[cfg(unix)]
        if self.signal.recv().await.is_some() {
            return;
        }
        std::future::pending::<()>().await
    }
}
