//! What waits in the automation pipeline: the gauges of `/metrics` and the
//! backlog part of `GET /v1/admin/pipeline`, the probes by which the
//! supervisor tells a stuck component from an idle one, and whether the
//! pipeline has settled (`GET /v1/admin/pipeline/settled`).
//!
//! Ages and lags are measured on the daemon's clock (the injected one: a
//! manual clock's moves count), in seconds.

use std::collections::BTreeMap;
use std::sync::Arc;

use jiff::Timestamp;

use crate::clock::Clock;
use crate::model::notification::Lane;
use crate::notifications::Wakers;
use crate::store::{Store, StoreError};
use crate::supervisor::Probe;

/// `GET /v1/admin/pipeline`: what waits, and for how long.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Backlog {
    pub events: EventBacklog,
    pub writer: WriterBacklog,
    pub timers: TimerBacklog,
    /// Per channel (`in_app`, `push`, `email`, `sms`, `webhook`, `digest`).
    pub outbox: BTreeMap<String, LaneBacklog>,
    pub dead_letters: DeadLetters,
}

/// Domain events committed and not yet processed by the engine.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct EventBacklog {
    pub waiting: u64,
    /// Seconds since the oldest waiting event happened; absent when none waits.
    pub oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct WriterBacklog {
    /// Write operations queued and not yet taken into a transaction.
    pub queue_depth: usize,
}

/// Sequence steps due and not yet fired.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct TimerBacklog {
    pub due: usize,
    /// Seconds since the earliest due step fell due; absent when none is due.
    pub lag_seconds: Option<f64>,
}

/// Outbox entries of one channel that are due.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct LaneBacklog {
    pub due: usize,
    /// Seconds since the earliest due entry fell due; absent when none is due.
    pub oldest_age_seconds: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    /// Notification deliveries given up on (`GET /v1/admin/outbox`).
    pub notifications: usize,
    /// Domain events and due steps the rules failed on
    /// (`GET /v1/admin/pipeline/dead`).
    pub events: usize,
}

fn seconds_since(then_ms: i64, now: Timestamp) -> f64 {
    (now.as_millisecond().saturating_sub(then_ms) as f64 / 1000.0).max(0.0)
}

impl Backlog {
    /// Reads the backlog at `now`. Counting due timers, due outbox entries
    /// and dead letters scans them (the rest are first-key reads), so this
    /// runs in the upkeep tick and on an operator's request, never per scrape.
    pub fn observe(store: &Store, now: Timestamp) -> Result<Backlog, StoreError> {
        let now_ms = now.as_millisecond();
        let events = match store.domain_backlog()? {
            Some((oldest, waiting)) => EventBacklog {
                waiting,
                oldest_age_seconds: oldest
                    .at
                    .parse::<Timestamp>()
                    .ok()
                    .map(|at| seconds_since(at.as_millisecond(), now)),
            },
            None => EventBacklog {
                waiting: 0,
                oldest_age_seconds: None,
            },
        };
        let timers = TimerBacklog {
            due: store.due_timer_count(now_ms),
            lag_seconds: store
                .earliest_timer()?
                .filter(|t| t.due_ms <= now_ms)
                .map(|t| seconds_since(t.due_ms, now)),
        };
        let mut outbox = BTreeMap::new();
        for lane in Lane::ALL {
            let oldest_age_seconds = store
                .earliest_in(lane)?
                .filter(|d| d.due_ms <= now_ms)
                .map(|d| seconds_since(d.due_ms, now));
            let due = store.due_count_in(lane, now_ms);
            outbox.insert(
                lane.name().to_owned(),
                LaneBacklog {
                    due,
                    oldest_age_seconds,
                },
            );
        }
        Ok(Backlog {
            events,
            writer: WriterBacklog {
                queue_depth: store.write_queue_depth(),
            },
            timers,
            outbox,
            dead_letters: DeadLetters {
                notifications: store.dead_letter_count(),
                events: store.dead_count(),
            },
        })
    }

    /// Sets the pipeline gauges of `/metrics` (ages are 0 when nothing waits).
    pub fn record(&self) {
        let age = |a: Option<f64>| a.unwrap_or(0.0);
        metrics::gauge!("parleyd_domain_events_waiting").set(self.events.waiting as f64);
        metrics::gauge!("parleyd_domain_event_oldest_age_seconds")
            .set(age(self.events.oldest_age_seconds));
        metrics::gauge!("parleyd_writer_queue_depth").set(self.writer.queue_depth as f64);
        metrics::gauge!("parleyd_timers_due").set(self.timers.due as f64);
        metrics::gauge!("parleyd_timers_due_lag_seconds").set(age(self.timers.lag_seconds));
        for (channel, lane) in &self.outbox {
            metrics::gauge!("parleyd_outbox_due", "channel" => channel.clone())
                .set(lane.due as f64);
            metrics::gauge!("parleyd_outbox_due_oldest_age_seconds", "channel" => channel.clone())
                .set(age(lane.oldest_age_seconds));
        }
        metrics::gauge!("parleyd_dead_letters", "list" => "notifications")
            .set(self.dead_letters.notifications as f64);
        metrics::gauge!("parleyd_dead_letters", "list" => "events")
            .set(self.dead_letters.events as f64);
    }
}

/// The oldest unprocessed domain event, if one waits.
fn waiting_event(store: &Store) -> Result<Option<String>, StoreError> {
    Ok(store
        .domain_backlog()?
        .map(|(oldest, _)| format!("event {}", oldest.seq)))
}

/// The earliest timer, if it is due at `now_ms`.
fn due_timer(store: &Store, now_ms: i64) -> Result<Option<String>, StoreError> {
    Ok(store
        .earliest_timer()?
        .filter(|t| t.due_ms <= now_ms)
        .map(|t| format!("timer {} {} {}", t.due_ms, t.instance, t.step)))
}

/// `lane`'s earliest entry, if it is due at `now_ms`.
fn due_entry(store: &Store, lane: Lane, now_ms: i64) -> Result<Option<String>, StoreError> {
    Ok(store
        .earliest_in(lane)?
        .filter(|d| d.due_ms <= now_ms)
        .map(|d| format!("entry {} {}", d.due_ms, d.id)))
}

/// The engine's probe: the oldest unprocessed domain event.
pub fn events_probe(store: Store) -> Probe {
    Box::new(move || waiting_event(&store).ok()?)
}

/// The scheduler's probe: the earliest timer, once due.
pub fn timers_probe(store: Store, clock: Arc<dyn Clock>) -> Probe {
    Box::new(move || due_timer(&store, clock.now().as_millisecond()).ok()?)
}

/// An outbox lane's probe: its earliest entry, once due.
pub fn lane_probe(store: Store, clock: Arc<dyn Clock>, lane: Lane) -> Probe {
    Box::new(move || due_entry(&store, lane, clock.now().as_millisecond()).ok()?)
}

/// What still keeps the pipeline busy at `now`, if anything: a domain event
/// not yet processed, a timer due and not fired, an outbox entry due and not
/// attempted, a delivery in flight (`wakers`' counts; none without an
/// outbox), or a write that landed while it looked. `None` means settled:
/// everything committed before this call that was due by `now` has had its
/// effect (dead letters count as done: they wait for an operator).
/// First-key reads only, so it can be polled.
///
/// Work moves between the reads (a step fires after the events were read,
/// leaving a new event and no timer; a lane leases an entry after its
/// in-flight count was read), and every such move is a writer batch: the
/// reads count only if the writer's generation was even and unchanged
/// across them (`Store::write_generation`).
pub fn unsettled(
    store: &Store,
    wakers: Option<&Wakers>,
    now: Timestamp,
) -> Result<Option<String>, StoreError> {
    let generation = store.write_generation();
    let waiting = busy(store, wakers, now.as_millisecond())?;
    if waiting.is_none() && (generation % 2 == 1 || store.write_generation() != generation) {
        return Ok(Some("writer: a batch landed while looking".into()));
    }
    Ok(waiting)
}

/// The first thing [`unsettled`] finds waiting, read by read.
fn busy(store: &Store, wakers: Option<&Wakers>, now_ms: i64) -> Result<Option<String>, StoreError> {
    if let Some(what) = waiting_event(store)? {
        return Ok(Some(what));
    }
    if let Some(what) = due_timer(store, now_ms)? {
        return Ok(Some(what));
    }
    for lane in Lane::ALL {
        let in_flight = wakers.map_or(0, |w| w.in_flight(lane));
        if in_flight > 0 {
            return Ok(Some(format!("{}: {in_flight} in flight", lane.name())));
        }
        if let Some(what) = due_entry(store, lane, now_ms)? {
            return Ok(Some(what));
        }
    }
    Ok(None)
}
