//! The outbox worker: one loop per lane reads the lane's due entries in order
//! and dispatches each in its own task, at most `concurrency` at a time per
//! lane (in-app: one at a time, in order), so a channel that is down (slow
//! timeouts, errors) never holds back the others.
//!
//! An attempt is recorded (and flushed) before it is made; its queue entry
//! moves to the end of its lease, so a crash mid-attempt retries it then, with
//! the same idempotency key. Failures retry with exponential backoff and
//! jitter; after `max_attempts`, or on a permanent refusal, the delivery is
//! dead: listed for operators and re-drivable.

use std::collections::HashSet;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::channels::{Channels, SendError};
use super::outbox;
use super::quiet;
use super::Wakers;
use crate::clock::Clock;
use crate::config::NotifyConfig;
use crate::model::format_time;
use crate::model::notification::{ChannelDelivery, DeliveryState, Lane, Notification, Outcome};
use crate::model::notification::{Priority, Unless};
use crate::rules::context::{person_value, reader_zone};
use crate::rules::script::{off_the_workers, Context};
use crate::rules::templates::escape_html;
use crate::rules::Rules;
use crate::store::{Due, Store, StoreError};

/// The longest a lane sleeps without looking (a manual clock's moves are
/// also signalled, but a missed wake-up costs at most this).
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How often finished notifications past their retention are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Notifications looked at per prune transaction.
const PRUNE_BATCH: usize = 1000;
/// In-app deliveries one task takes at a time (in order, finished together).
const IN_APP_GROUP: usize = 64;

/// A due entry taken by a lane: in its in-flight set, holding one of its
/// permits. Dropping it (done, failed or panicked) frees both and wakes the
/// lane, so an entry is never left in flight for good.
struct Taken {
    entry: Due,
    in_flight: Arc<Mutex<HashSet<String>>>,
    _permit: OwnedSemaphorePermit,
    wakers: Arc<Wakers>,
    lane: Lane,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Ok(mut s) = self.in_flight.lock() {
            s.remove(&self.entry.id);
        }
        self.wakers.lane(self.lane).notify_one();
    }
}

/// Whether an outcome was recorded, or why not (shared by its batch).
type Reply = oneshot::Sender<Result<bool, Arc<StoreError>>>;

/// What a due entry needs.
enum Plan {
    /// No attempt: record this outcome (suppressed, held, or an in-app
    /// delivery, which is its own record).
    Finish(Outcome),
    /// An attempt, leased until `lease`.
    Attempt {
        user: Option<Box<crate::model::User>>,
        attempt: u32,
        lease: Timestamp,
    },
}

/// A lane's outcomes waiting to be recorded, and whether a task is recording
/// some: whoever finds no recording under way records everything waiting in
/// one writer round trip (a group commit), so outcomes that arrive together
/// cost one transaction.
#[derive(Default)]
struct Finisher {
    waiting: Mutex<Vec<(Due, Outcome, Reply)>>,
    recording: tokio::sync::Mutex<()>,
}

impl Finisher {
    /// Records each outcome for its entry, in order (see [`outbox::finish`]);
    /// answers, in the same order, `true` if it was recorded, `false` if the
    /// delivery was not pending any more.
    async fn finish(
        &self,
        outbox: &Outbox,
        lane: Lane,
        outcomes: Vec<(Due, Outcome)>,
    ) -> Vec<Result<bool, Arc<StoreError>>> {
        let mut answers = Vec::with_capacity(outcomes.len());
        if let Ok(mut waiting) = self.waiting.lock() {
            for (entry, outcome) in outcomes {
                let (reply, answer) = oneshot::channel();
                waiting.push((entry, outcome, reply));
                answers.push(answer);
            }
        }
        {
            let _recording = self.recording.lock().await;
            let batch = self
                .waiting
                .lock()
                .map(|mut w| std::mem::take(&mut *w))
                .unwrap_or_default();
            if !batch.is_empty() {
                let (outcomes, replies): (Vec<_>, Vec<_>) =
                    batch.into_iter().map(|(e, o, r)| ((e, o), r)).unzip();
                let at = format_time(outbox.clock.now());
                match outbox::finish(&outbox.store, lane, outcomes, at).await {
                    Ok(recorded) => {
                        for (reply, recorded) in replies.into_iter().zip(recorded) {
                            let _ = reply.send(Ok(recorded));
                        }
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        for reply in replies {
                            let _ = reply.send(Err(Arc::clone(&e)));
                        }
                    }
                }
            }
        }
        let mut recorded = Vec::with_capacity(answers.len());
        for answer in answers {
            recorded.push(answer.await.unwrap_or_else(|_| {
                Err(Arc::new(StoreError::Flush("outcome not recorded".into())))
            }));
        }
        recorded
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub base: SignedDuration,
    pub max: SignedDuration,
    pub timeout: SignedDuration,
}

impl Retry {
    pub fn from_config(config: &NotifyConfig) -> Result<Retry, String> {
        Ok(Retry {
            max_attempts: config.max_attempts,
            base: crate::clock::parse_duration(&config.retry_base)?,
            max: crate::clock::parse_duration(&config.retry_max)?,
            timeout: crate::clock::parse_duration(&config.timeout)?,
        })
    }

    /// The wait before retry number `attempt` (1 = the first retry): the base
    /// doubled each time, capped, less up to 20% at random so that a burst
    /// of failures does not retry in lockstep.
    pub fn backoff(&self, attempt: u32) -> SignedDuration {
        let doubled = self
            .base
            .checked_mul(1i32 << attempt.saturating_sub(1).min(20))
            .unwrap_or(self.max)
            .min(self.max);
        let random = std::collections::hash_map::RandomState::new().hash_one(attempt);
        let jitter = (random % 1000) as f64 / 1000.0 * 0.2;
        doubled.mul_f64(1.0 - jitter)
    }
}

pub struct Outbox {
    store: Store,
    clock: Arc<dyn Clock>,
    rules: Arc<Rules>,
    channels: Channels,
    retry: Retry,
    concurrency: usize,
    retention: SignedDuration,
    wakers: Arc<Wakers>,
}

impl Outbox {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        rules: Arc<Rules>,
        config: &NotifyConfig,
        wakers: Arc<Wakers>,
    ) -> Result<Outbox, String> {
        Ok(Outbox {
            store,
            clock,
            rules,
            channels: Channels::new(config)?,
            retry: Retry::from_config(config)?,
            concurrency: config.concurrency,
            retention: crate::clock::parse_duration(&config.retention)?,
            wakers,
        })
    }

    /// Runs every lane, and the retention sweep, until the task is dropped
    /// (which stops them all).
    pub async fn run(self: Arc<Self>) {
        let mut tasks = tokio::task::JoinSet::new();
        for lane in Lane::ALL {
            tasks.spawn(Arc::clone(&self).run_lane(lane));
        }
        tasks.spawn(self.run_retention());
        while tasks.join_next().await.is_some() {}
    }

    /// Forgets finished notifications past their retention every
    /// [`PRUNE_EVERY`], until the task is dropped.
    pub async fn run_retention(self: Arc<Self>) {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            every.tick().await;
            if let Err(e) = self.prune().await {
                tracing::error!(error = %e, "notification retention sweep");
            }
        }
    }

    /// Forgets finished notifications older than the retention period.
    pub async fn prune(&self) -> Result<usize, StoreError> {
        let cutoff = self
            .clock
            .now()
            .checked_sub(self.retention)
            .unwrap_or(Timestamp::MIN);
        let cutoff = format_time(cutoff);
        let (mut total, mut after) = (0, None);
        loop {
            let (forgotten, next) =
                outbox::prune(&self.store, &cutoff, after.as_deref(), PRUNE_BATCH).await?;
            total += forgotten;
            match next {
                Some(id) => after = Some(id),
                None => return Ok(total),
            }
        }
    }

    /// Delivers `lane`'s due entries until the task is dropped (the
    /// component `outbox.<lane>`). Each round takes the due entries there are
    /// free permits for, records all their attempts in one writer round trip,
    /// then sends each in its own task; outcomes are recorded together by
    /// the lane's [`Finisher`].
    pub async fn run_lane(self: Arc<Self>, lane: Lane) {
        // In-app deliveries are appended to the user's event log, where the app
        // shows them in log order: one task at a time, delivering its group in
        // order, keeps that the order they were raised in. They are local
        // writes, so there is no wait to overlap.
        let (permits, group) = match lane {
            Lane::InApp => (IN_APP_GROUP, IN_APP_GROUP),
            // One group: its attempts recorded together, its sends side by side.
            _ => (self.concurrency, self.concurrency),
        };
        let permits = Arc::new(Semaphore::new(permits));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let finisher = Arc::new(Finisher::default());
        let wake = self.wakers.lane(lane);
        loop {
            let now = self.clock.now().as_millisecond();
            let free = permits.available_permits();
            let busy = in_flight.lock().map(|s| s.len()).unwrap_or(0);
            let due = match self.store.due_in(lane, now, free + busy) {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(lane = lane.name(), error = %e, "outbox");
                    Vec::new()
                }
            };
            let mut fresh = Vec::new();
            for entry in due {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    break;
                };
                let inserted = in_flight
                    .lock()
                    .map(|mut s| s.insert(entry.id.clone()))
                    .unwrap_or(false);
                if inserted {
                    fresh.push(Taken {
                        entry,
                        in_flight: Arc::clone(&in_flight),
                        _permit: permit,
                        wakers: Arc::clone(&self.wakers),
                        lane,
                    });
                }
            }
            if fresh.is_empty() {
                let sleep = match self.store.next_due_in(lane) {
                    Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now).max(20) as u64),
                    _ => MAX_SLEEP,
                };
                let _ = tokio::time::timeout(sleep.min(MAX_SLEEP), wake.notified()).await;
                continue;
            }
            let mut fresh = fresh.into_iter().peekable();
            while fresh.peek().is_some() {
                let group: Vec<Taken> = fresh.by_ref().take(group).collect();
                let dispatch =
                    Arc::clone(&self).dispatch_caught(lane, group, Arc::clone(&finisher));
                if lane == Lane::InApp {
                    // In order: the next group waits for this one.
                    dispatch.await;
                } else {
                    tokio::spawn(dispatch);
                }
            }
        }
    }

    /// [`Outbox::dispatch`], with a panic logged rather than lost: each
    /// entry's [`Taken`] leaves the in-flight set when dropped, panic or not.
    async fn dispatch_caught(
        self: Arc<Self>,
        lane: Lane,
        group: Vec<Taken>,
        finisher: Arc<Finisher>,
    ) {
        let ids: Vec<String> = group.iter().map(|t| t.entry.id.clone()).collect();
        let dispatched = std::panic::AssertUnwindSafe(self.dispatch(lane, group, &finisher))
            .catch_unwind()
            .await;
        if let Err(panic) = dispatched {
            let message = crate::supervisor::panic_message(&*panic);
            tracing::error!(
                lane = lane.name(),
                ?ids,
                "outbox delivery panicked: {message}"
            );
        }
    }

    /// Delivers a group of due entries of `lane`: decides what each needs
    /// (nothing any more, a hold, an attempt), records every attempt in one
    /// writer round trip, makes the attempts side by side, and records the
    /// outcomes through `finisher`.
    async fn dispatch(self: Arc<Self>, lane: Lane, group: Vec<Taken>, finisher: &Arc<Finisher>) {
        if lane == Lane::Digest {
            for taken in group {
                let entry = &taken.entry;
                if let Err(e) = self.send_digest(&entry.id, entry.due_ms).await {
                    tracing::error!(lane = lane.name(), id = %entry.id, error = %e, "outbox delivery");
                }
            }
            return;
        }
        let now = self.clock.now();
        let mut attempts = Vec::new();
        let mut outcomes = Vec::new();
        for taken in group {
            match self.prepare(lane, &taken.entry, now) {
                Ok(Plan::Finish(outcome)) => outcomes.push((taken, outcome)),
                Ok(Plan::Attempt {
                    user,
                    attempt,
                    lease,
                }) => attempts.push((taken, user, attempt, lease)),
                Err(e) => {
                    tracing::error!(lane = lane.name(), id = %taken.entry.id, error = %e, "outbox delivery");
                }
            }
        }
        let leases = attempts
            .iter()
            .map(|(taken, _, _, lease)| (taken.entry.id.clone(), lease.as_millisecond()))
            .collect();
        let begun = if attempts.is_empty() {
            Vec::new()
        } else {
            match outbox::begin_attempts(&self.store, lane, leases).await {
                Ok(begun) => begun,
                Err(e) => {
                    tracing::error!(lane = lane.name(), error = %e, "outbox: attempts not recorded");
                    return;
                }
            }
        };
        let mut sends = tokio::task::JoinSet::new();
        for ((taken, user, attempt, lease), notification) in attempts.into_iter().zip(begun) {
            let Some(notification) = notification else {
                // Answered meanwhile (a re-drive raced it): just drop this entry.
                outcomes.push((taken, Outcome::Suppressed("no longer pending".into())));
                continue;
            };
            let leased = Due {
                due_ms: lease.as_millisecond(),
                id: taken.entry.id.clone(),
            };
            let (outbox, finisher) = (Arc::clone(&self), Arc::clone(finisher));
            sends.spawn(async move {
                let outcome = outbox
                    .attempt(lane, &notification, user, attempt, now)
                    .await;
                outbox
                    .finish(lane, &finisher, vec![(leased, outcome, taken)])
                    .await;
            });
        }
        let outcomes = outcomes
            .into_iter()
            .map(|(taken, outcome)| (taken.entry.clone(), outcome, taken))
            .collect();
        self.finish(lane, finisher, outcomes).await;
        while let Some(sent) = sends.join_next().await {
            if let Err(e) = sent {
                if e.is_panic() {
                    let panic = e.into_panic();
                    let message = crate::supervisor::panic_message(&*panic);
                    tracing::error!(lane = lane.name(), "outbox delivery panicked: {message}");
                }
            }
        }
    }

    /// What a due entry needs, read from its record as it is now.
    fn prepare(&self, lane: Lane, entry: &Due, now: Timestamp) -> Result<Plan, StoreError> {
        let notification = match self.store.notification(&entry.id) {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(Plan::Finish(Outcome::Suppressed("gone".into()))),
            Err(StoreError::Corrupt(e)) => {
                tracing::error!(id = %entry.id, error = %e, "unreadable notification dropped");
                return Ok(Plan::Finish(Outcome::Dead(e)));
            }
            Err(e) => return Err(e),
        };
        let Some(delivery) = notification.delivery(lane).cloned() else {
            return Ok(Plan::Finish(Outcome::Suppressed("gone".into())));
        };
        if let Some(reason) = self.not_needed(&notification, &delivery)? {
            return Ok(Plan::Finish(Outcome::Suppressed(reason)));
        }
        if lane == Lane::InApp {
            self.record_latency(lane, &notification, now);
            return Ok(Plan::Finish(Outcome::Delivered));
        }
        // Read now, not when routed: quiet hours and addresses may have changed.
        let user = match &notification.user_id {
            Some(id) => self.store.user(id)?.map(Box::new),
            None => None,
        };
        if let (true, Some(user)) = (delivery.quiet_hours, &user) {
            let release = quiet::release(now, user);
            if release > now {
                let until_ms = release.as_millisecond();
                return Ok(Plan::Finish(Outcome::Hold { until_ms }));
            }
        }
        let attempt = delivery.attempts + 1;
        let lease = now
            .checked_add(self.retry.timeout + self.retry.backoff(attempt))
            .unwrap_or(now);
        Ok(Plan::Attempt {
            user,
            attempt,
            lease,
        })
    }

    /// Makes attempt number `attempt` and says how it went.
    async fn attempt(
        &self,
        lane: Lane,
        notification: &Notification,
        user: Option<Box<crate::model::User>>,
        attempt: u32,
        now: Timestamp,
    ) -> Outcome {
        let result = self
            .channels
            .send(lane, notification, user.as_deref(), now)
            .await;
        let now = self.clock.now();
        match result {
            Ok(()) => {
                self.record_latency(lane, notification, now);
                Outcome::Delivered
            }
            Err(SendError::Permanent(e)) => Outcome::Dead(e),
            Err(SendError::Transient(e)) if attempt >= self.retry.max_attempts => {
                Outcome::Dead(format!("{e} (gave up after {attempt} attempts)"))
            }
            Err(SendError::Transient(error)) => {
                let at = now.checked_add(self.retry.backoff(attempt)).unwrap_or(now);
                Outcome::Retry {
                    at_ms: at.as_millisecond(),
                    error,
                }
            }
        }
    }

    /// Why a delivery need not be made any more, if it need not.
    fn not_needed(
        &self,
        notification: &Notification,
        delivery: &ChannelDelivery,
    ) -> Result<Option<String>, StoreError> {
        if delivery.suppress_if_read && self.read(notification)? {
            return Ok(Some("read in the app within the grace period".into()));
        }
        Ok(match delivery.unless {
            Some(Unless::Read) if self.read(notification)? => {
                Some("read before the fallback was due".into())
            }
            Some(Unless::Delivered) if notification.delivered_elsewhere(delivery.channel) => {
                Some("delivered on another channel".into())
            }
            _ => None,
        })
    }

    /// Whether the recipient has read the message the notification is about.
    fn read(&self, notification: &Notification) -> Result<bool, StoreError> {
        let (Some(conversation_id), Some(seq), Some(user)) = (
            &notification.conversation_id,
            notification.message_seq,
            &notification.user_id,
        ) else {
            return Ok(false);
        };
        Ok(self
            .store
            .conversation(conversation_id)?
            .and_then(|c| {
                c.participants
                    .iter()
                    .find(|p| &p.user_id == user)
                    .map(|p| p.last_read_seq >= seq)
            })
            .unwrap_or(false))
    }

    /// Records each outcome for its queue entry, in order (with the other
    /// outcomes waiting, in one writer round trip), then lets the entries go.
    async fn finish(&self, lane: Lane, finisher: &Finisher, outcomes: Vec<(Due, Outcome, Taken)>) {
        let mut results = Vec::with_capacity(outcomes.len());
        let mut taken = Vec::with_capacity(outcomes.len());
        let mut records = Vec::with_capacity(outcomes.len());
        for (entry, outcome, t) in outcomes {
            results.push(match &outcome {
                Outcome::Delivered => "delivered",
                Outcome::Retry { .. } => "retry",
                Outcome::Dead(_) => "dead",
                Outcome::Suppressed(_) => "suppressed",
                Outcome::Hold { .. } => "held",
            });
            if let Outcome::Dead(error) = &outcome {
                tracing::warn!(lane = lane.name(), id = %entry.id, %error, "delivery moved to the dead-letter list");
            }
            taken.push(t);
            records.push((entry, outcome));
        }
        let recorded = finisher.finish(self, lane, records).await;
        for ((recorded, result), t) in recorded.into_iter().zip(results).zip(&taken) {
            match recorded {
                Ok(true) => {
                    metrics::counter!("parleyd_deliveries_total", "channel" => lane.name(), "result" => result)
                        .increment(1);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(lane = lane.name(), id = %t.entry.id, error = %e, "outbox delivery")
                }
            }
        }
    }

    /// Time from the notification's creation (its event) to its delivery.
    fn record_latency(&self, lane: Lane, notification: &Notification, now: Timestamp) {
        if let Ok(created) = notification.created_at.parse::<Timestamp>() {
            let seconds = now.duration_since(created).as_secs_f64().max(0.0);
            metrics::histogram!("parleyd_notification_delivery_seconds", "channel" => lane.name())
                .record(seconds);
        }
    }

    /// Sends `user_id`'s digest: everything waiting for it, grouped by
    /// conversation and type, rendered from the digest template and queued on
    /// the channels its items were routed to. Held while the user is in quiet
    /// hours (if any item respects them).
    async fn send_digest(&self, user_id: &str, due_ms: i64) -> Result<(), StoreError> {
        let now = self.clock.now();
        // Opened before the read: an item batched after it gets its own digest.
        outbox::open_digest(&self.store, user_id, due_ms).await?;
        let items = self.store.batched(user_id)?;
        let user = self.store.user(user_id)?;
        let respects_quiet = items
            .iter()
            .flat_map(|n| &n.deliveries)
            .any(|d| d.state == DeliveryState::Batched && d.quiet_hours);
        if let (true, Some(user)) = (respects_quiet, &user) {
            let release = quiet::release(now, user);
            if release > now {
                return outbox::postpone_digest(
                    &self.store,
                    user_id,
                    due_ms,
                    release.as_millisecond(),
                )
                .await;
            }
        }
        let ids: Vec<String> = items.iter().map(|n| n.id.clone()).collect();
        let digest = match off_the_workers(|| self.digest(user_id, user.as_ref(), &items, now)) {
            Ok(digest) => digest,
            Err(reason) => {
                // The items stay batched and the digest is tried again once
                // the rules may have been fixed: never dropped.
                let again = now.checked_add(self.retry.max).unwrap_or(now);
                tracing::error!(user = %user_id, %reason, retry_at = %again,
                    "digest not rendered; its items wait for the next try");
                metrics::counter!("parleyd_notifications_total",
                    "type" => "digest", "result" => "failed")
                .increment(1);
                return outbox::postpone_digest(
                    &self.store,
                    user_id,
                    due_ms,
                    again.as_millisecond(),
                )
                .await;
            }
        };
        outbox::flush_digest(&self.store, user_id, due_ms, ids, digest, None).await?;
        self.wakers.wake_all();
        Ok(())
    }

    fn digest(
        &self,
        user_id: &str,
        user: Option<&crate::model::User>,
        items: &[Notification],
        now: Timestamp,
    ) -> Result<Option<Notification>, String> {
        let mut lanes: Vec<Lane> = Vec::new();
        for item in items {
            for d in &item.deliveries {
                if d.state == DeliveryState::Batched && !lanes.contains(&d.channel) {
                    lanes.push(d.channel);
                }
            }
        }
        if lanes.is_empty() {
            return Ok(None);
        }
        let rules = self.rules.current();
        let template_id = rules
            .routing
            .digest_template
            .clone()
            .ok_or("routing.yaml has no digest template any more")?;
        let template = rules
            .templates
            .get(&template_id)
            .ok_or_else(|| format!("no template {template_id}"))?;
        let digest = digest_value(items);
        let context = Context::default()
            .with(
                "recipient",
                &user.map_or_else(|| json!({"id": user_id}), person_value),
            )
            .with("digest", &digest)
            .with("now", &json!(format_time(now)));
        let rendered = template.render_all(&context, &reader_zone(user, None))?;
        let id = uuid::Uuid::now_v7().to_string();
        Ok(Some(Notification {
            id,
            kind: "digest".into(),
            priority: items
                .iter()
                .map(|n| n.priority)
                .max()
                .unwrap_or(Priority::Low),
            user_id: Some(user_id.to_owned()),
            created_at: format_time(now),
            event: "digest".into(),
            conversation_id: None,
            message_seq: None,
            title: rendered.subject.unwrap_or_else(|| "Your digest".into()),
            text: rendered.text,
            html: rendered.html,
            attachments: Vec::new(),
            payload: json!({"items": items.iter().map(|n| &n.id).collect::<Vec<_>>()}),
            deliveries: lanes
                .into_iter()
                .map(|lane| ChannelDelivery::new(lane, now.as_millisecond()))
                .collect(),
        }))
    }
}

/// What a digest template reads: `{digest.count}`, the items grouped by
/// conversation and type as text (`{digest.items_text}`) and HTML
/// (`{digest.items_html}`), and the groups themselves for Rhai `vars`.
fn digest_value(items: &[Notification]) -> serde_json::Value {
    let mut groups: Vec<(Option<String>, String, Vec<&Notification>)> = Vec::new();
    for item in items {
        match groups
            .iter_mut()
            .find(|(c, k, _)| *c == item.conversation_id && *k == item.kind)
        {
            Some((_, _, members)) => members.push(item),
            None => groups.push((item.conversation_id.clone(), item.kind.clone(), vec![item])),
        }
    }
    let heading = |kind: &str, conversation: &Option<String>, count: usize| {
        let kind = kind.replace('_', " ");
        match conversation {
            Some(c) => format!("{kind} in conversation {c} ({count})"),
            None => format!("{kind} ({count})"),
        }
    };
    let mut text = String::new();
    let mut html = String::new();
    for (conversation, kind, members) in &groups {
        let title = heading(kind, conversation, members.len());
        text.push_str(&format!("{title}\n"));
        html.push_str(&format!("<h3>{}</h3><ul>", escape_html(&title)));
        for m in members {
            text.push_str(&format!("  - {}: {}\n", m.title, m.text));
            html.push_str(&format!(
                "<li><strong>{}</strong>: {}</li>",
                escape_html(&m.title),
                escape_html(&m.text)
            ));
        }
        html.push_str("</ul>");
    }
    json!({
        "count": items.len(),
        "items_text": text.trim_end(),
        "items_html": html,
        "groups": groups.iter().map(|(conversation, kind, members)| json!({
            "conversation_id": conversation,
            "type": kind,
            "items": members.iter().map(|m| json!({"title": m.title, "text": m.text})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let retry = Retry {
            max_attempts: 5,
            base: SignedDuration::from_secs(2),
            max: SignedDuration::from_secs(60),
            timeout: SignedDuration::from_secs(10),
        };
        for (attempt, full) in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 60.0), (30, 60.0)] {
            let wait = retry.backoff(attempt).as_secs_f64();
            assert!(
                wait <= full && wait >= full * 0.8,
                "attempt {attempt}: {wait}"
            );
        }
    }
}
