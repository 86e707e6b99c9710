//! Supervision of the daemon's background components (the writer thread, the
//! automation engine and scheduler, each outbox lane, upkeep, the rule
//! watcher, SIGHUP reload).
//!
//! [`Supervisor::spawn`] runs an async component from a factory: when a run
//! ends or panics, the cause is logged, `parleyd_component_restarts_total
//! {component}` counts it, `parleyd_component_up{component}` drops to 0, and a
//! new run starts after an exponential backoff ([`Backoff`]). A thread that
//! supervises itself (the writer) reports through the same [`Component`]
//! handle, registered with [`Supervisor::adopt`].
//!
//! "Stuck" is judged from outside the component, so a component that hangs
//! cannot hide it: each component has a probe that names the oldest piece of
//! work waiting for it (the first unacknowledged domain event's key, the
//! earliest due timer, the earliest due outbox entry, a writer batch count),
//! or nothing when none waits. A component is stuck when its probe has named
//! the same piece of work for `pipeline.stuck_after` (real time): work waits
//! and none of it moved. A component with no probe is never stuck, only down.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Names the oldest piece of work waiting for a component, `None` when none
/// waits. Called by health checks: it must be cheap (a first-key read).
pub type Probe = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// The wait before each restart: `initial`, doubled after each failure in a
/// row, capped at `max`. A run that lasted at least `max` counts as healthy,
/// and the next failure starts again from `initial`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 = the first).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// What a component is doing, as `/healthz` and `GET /v1/admin/pipeline` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Running, and not stuck.
    Up,
    /// Not running: it ended or panicked and waits for its restart (or, for
    /// the writer thread, cannot be restarted: see `store::writer`).
    Down,
    /// Running, but the same piece of work has waited for it for longer than
    /// `pipeline.stuck_after`.
    Stuck,
}

/// One supervised component's health, shared by its runs, the supervisor and
/// the health checks.
pub struct Component {
    name: String,
    up: AtomicBool,
    restarts: AtomicU64,
    last_error: Mutex<Option<String>>,
    probe: Option<Probe>,
    /// The work the probe last named, and since when it has named it.
    waiting: Mutex<Option<(String, Instant)>>,
    /// Fault injection (dev only): ends the current run as a failure …
    kill: Notify,
    /// … and, while set, fails every restart at once.
    held_down: AtomicBool,
    /// Cuts a backoff short (when a held-down fault is lifted).
    wake: Notify,
}

impl Component {
    /// A component named `name` (also its metrics label), down until it starts.
    pub fn new(name: impl Into<String>, probe: Option<Probe>) -> Arc<Component> {
        let component = Arc::new(Component {
            name: name.into(),
            up: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            last_error: Mutex::new(None),
            probe,
            waiting: Mutex::new(None),
            kill: Notify::new(),
            held_down: AtomicBool::new(false),
            wake: Notify::new(),
        });
        // Present from the start, so a dashboard sees 0 rather than no series.
        metrics::counter!("parleyd_component_restarts_total", "component" => component.name.clone())
            .absolute(0);
        component.set_up(false);
        component
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Marks a run as started.
    pub fn started(&self) {
        self.set_up(true);
    }

    /// Marks a run as ended by `cause`: logged, counted as a restart to come.
    pub fn failed(&self, cause: &str) {
        self.set_up(false);
        self.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("parleyd_component_restarts_total", "component" => self.name.clone())
            .increment(1);
        tracing::error!(component = %self.name, %cause, "component stopped; restarting it");
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cause.to_owned());
    }

    /// Marks the component down for good (a thread that cannot be
    /// restarted); said once, however often called.
    pub fn died(&self, cause: &str) {
        if !self.up.load(Ordering::Relaxed) {
            return;
        }
        self.set_up(false);
        tracing::error!(component = %self.name, %cause, "component stopped and cannot be restarted");
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(cause.to_owned());
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        metrics::gauge!("parleyd_component_up", "component" => self.name.clone())
            .set(f64::from(u8::from(up)));
    }

    /// The component's state now; `stuck_after` is `pipeline.stuck_after`.
    /// Runs the probe (and remembers what it named, to see whether it moves).
    pub fn state(&self, stuck_after: Duration) -> State {
        let oldest = self.probe.as_ref().and_then(|probe| probe());
        let now = Instant::now();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let since = match (oldest, waiting.take()) {
            (None, _) => None,
            (Some(work), Some((seen, since))) if seen == work => Some((work, since)),
            (Some(work), _) => Some((work, now)),
        };
        let stuck = since
            .as_ref()
            .is_some_and(|(_, since)| now.duration_since(*since) >= stuck_after);
        *waiting = since;
        match (self.up.load(Ordering::Relaxed), stuck) {
            (false, _) => State::Down,
            (true, true) => State::Stuck,
            (true, false) => State::Up,
        }
    }

    /// A summary for operators.
    pub fn report(&self, stuck_after: Duration) -> ComponentReport {
        let state = self.state(stuck_after);
        let waiting_seconds = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(_, since)| since.elapsed().as_secs_f64());
        ComponentReport {
            name: self.name.clone(),
            state,
            restarts: self.restarts.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            waiting_seconds,
        }
    }

    /// Dev fault injection: `fail` ends the current run as a failure and fails
    /// every restart until called again with `false`. A component that runs
    /// elsewhere reads [`Component::fault_injected`] instead (the writer
    /// stalls while it is set).
    pub fn inject_fault(&self, fail: bool) {
        self.held_down.store(fail, Ordering::Relaxed);
        if fail {
            // Only a run in progress: no permit is kept for a later run.
            self.kill.notify_waiters();
        } else {
            self.wake.notify_one();
        }
    }

    /// Whether a dev fault is injected now (see [`Component::inject_fault`]).
    pub fn fault_injected(&self) -> bool {
        self.held_down.load(Ordering::Relaxed)
    }
}

/// `GET /v1/admin/pipeline`: one component.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ComponentReport {
    /// e.g. `engine`, `scheduler`, `outbox.email`, `writer`.
    pub name: String,
    pub state: State,
    /// Runs that ended or panicked since the daemon started.
    pub restarts: u64,
    /// The cause of the last failure.
    pub last_error: Option<String>,
    /// Seconds (real time) the oldest piece of work has waited for the
    /// component without moving; absent when none waits.
    pub waiting_seconds: Option<f64>,
}

/// Every supervised component of the daemon.
pub struct Supervisor {
    backoff: Backoff,
    stuck_after: Duration,
    components: Mutex<BTreeMap<String, Arc<Component>>>,
    /// The components [`Supervisor::spawn`] runs, by name.
    tasks: Mutex<BTreeMap<String, tokio::task::AbortHandle>>,
}

impl Supervisor {
    pub fn new(backoff: Backoff, stuck_after: Duration) -> Supervisor {
        Supervisor {
            backoff,
            stuck_after,
            components: Mutex::default(),
            tasks: Mutex::default(),
        }
    }

    /// Registers a component that runs elsewhere and reports on its own.
    pub fn adopt(&self, component: Arc<Component>) {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(component.name.clone(), component);
    }

    /// Runs `factory()`'s future as the component `name`, and again (after
    /// [`Backoff`]) whenever it ends or panics, until [`Supervisor::shutdown`].
    /// `probe` names the oldest work waiting for it (see the module doc).
    pub fn spawn<F, Fut>(&self, name: &str, probe: Option<Probe>, factory: F) -> Arc<Component>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let component = Component::new(name, probe);
        // Up from here: its first run is about to start.
        component.started();
        self.adopt(Arc::clone(&component));
        let task = tokio::spawn(supervise(Arc::clone(&component), self.backoff, factory));
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), task.abort_handle());
        component
    }

    /// The component `name`, spawned or adopted.
    pub fn component(&self, name: &str) -> Option<Arc<Component>> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// Every component's report, by name.
    pub fn report(&self) -> Vec<ComponentReport> {
        self.all()
            .iter()
            .map(|c| c.report(self.stuck_after))
            .collect()
    }

    /// The components that are down or stuck, by name, with their state.
    pub fn unhealthy(&self) -> Vec<(String, State)> {
        self.all()
            .iter()
            .map(|c| (c.name.clone(), c.state(self.stuck_after)))
            .filter(|(_, state)| *state != State::Up)
            .collect()
    }

    fn all(&self) -> Vec<Arc<Component>> {
        self.components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }

    /// Stops every spawned component.
    pub fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks.into_values() {
            task.abort();
        }
    }
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor::new(Backoff::default(), Duration::from_secs(60))
    }
}

async fn supervise<F, Fut>(component: Arc<Component>, backoff: Backoff, mut factory: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let cause = if component.fault_injected() {
            "fault injected by an operator (dev)".to_owned()
        } else {
            component.started();
            let run = AssertUnwindSafe(factory()).catch_unwind();
            tokio::select! {
                outcome = run => match outcome {
                    Ok(()) => "ended".to_owned(),
                    Err(panic) => format!("panicked: {}", panic_message(&*panic)),
                },
                () = component.kill.notified() => "killed by an operator (dev)".to_owned(),
            }
        };
        component.failed(&cause);
        failures = if started.elapsed() >= backoff.max {
            1
        } else {
            failures.saturating_add(1)
        };
        tokio::select! {
            () = tokio::time::sleep(backoff.delay(failures)) => {}
            () = component.wake.notified() => {}
        }
    }
}

/// The text a panic was raised with.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=6).map(|n| backoff.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(backoff.delay(u32::MAX), Duration::from_secs(1));
    }

    /// A component that panics on its first three runs and then keeps running.
    #[tokio::test(start_paused = true)]
    async fn a_panicking_component_is_restarted_with_backoff_and_counted() {
        let supervisor = Supervisor::new(
            Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            Duration::from_secs(60),
        );
        let runs = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let component = supervisor.spawn("flaky", None, {
            let runs = Arc::clone(&runs);
            move || {
                let runs = Arc::clone(&runs);
                async move {
                    let n = {
                        let mut runs = runs.lock().unwrap();
                        runs.push(started.elapsed().as_secs());
                        runs.len()
                    };
                    if n <= 3 {
                        panic!("run {n} fails");
                    }
                    std::future::pending::<()>().await;
                }
            }
        });
        tokio::time::sleep(Duration::from_secs(100)).await;
        // Restarted after 1, then 2, then 4 seconds.
        assert_eq!(*runs.lock().unwrap(), [0, 1, 3, 7]);
        let report = component.report(Duration::from_secs(60));
        assert_eq!(report.state, State::Up);
        assert_eq!(report.restarts, 3);
        assert_eq!(report.last_error.as_deref(), Some("panicked: run 3 fails"));
        assert!(supervisor.unhealthy().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_ends_is_restarted_and_a_healthy_run_resets_the_backoff() {
        let backoff = Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        };
        let supervisor = Supervisor::new(backoff, Duration::from_secs(60));
        let runs = Arc::new(AtomicU32::new(0));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        supervisor.spawn("ending", None, {
            let (runs, starts) = (Arc::clone(&runs), Arc::clone(&starts));
            move || {
                let n = runs.fetch_add(1, Ordering::Relaxed);
                starts.lock().unwrap().push(t0.elapsed().as_secs());
                // The third run lasts longer than the backoff's cap.
                let lasts = if n == 2 { 20 } else { 0 };
                tokio::time::sleep(Duration::from_secs(lasts))
            }
        });
        tokio::time::sleep(Duration::from_secs(30)).await;
        // 0 ends, +1 s; 1 ends, +2 s; 3 runs 20 s, ends: healthy, so +1 s again.
        assert_eq!(starts.lock().unwrap()[..4], [0, 1, 3, 24]);
        supervisor.shutdown();
    }

    #[tokio::test(start_paused = true)]
    async fn an_injected_fault_holds_the_component_down_until_lifted() {
        let supervisor = Supervisor::new(Backoff::default(), Duration::from_secs(60));
        let component = supervisor.spawn("engine", None, std::future::pending::<()>);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(supervisor.unhealthy().is_empty());
        component.inject_fault(true);
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(supervisor.unhealthy(), [("engine".to_owned(), State::Down)]);
        let restarts = component.report(Duration::from_secs(60)).restarts;
        assert!(restarts > 3, "restarted {restarts} times");
        component.inject_fault(false);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(supervisor.unhealthy().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_does_not_move_for_stuck_after_makes_a_component_stuck() {
        let oldest: Arc<Mutex<Option<String>>> = Arc::default();
        let probe: Probe = Box::new({
            let oldest = Arc::clone(&oldest);
            move || oldest.lock().unwrap().clone()
        });
        let component = Component::new("scheduler", Some(probe));
        component.started();
        let after = Duration::from_secs(60);
        assert_eq!(component.state(after), State::Up);
        *oldest.lock().unwrap() = Some("timer 1".into());
        assert_eq!(component.state(after), State::Up);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(component.state(after), State::Up);
        // Work moved on: the clock starts again for the new oldest item.
        *oldest.lock().unwrap() = Some("timer 2".into());
        assert_eq!(component.state(after), State::Up);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(component.state(after), State::Up);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(component.state(after), State::Stuck);
        // Nothing waits: not stuck, however long since the last progress.
        *oldest.lock().unwrap() = None;
        assert_eq!(component.state(after), State::Up);
    }
}
