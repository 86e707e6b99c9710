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
use tokio::sync::Semaphore;

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
    /// component `outbox.<lane>`).
    pub async fn run_lane(self: Arc<Self>, lane: Lane) {
        // In-app deliveries are appended to the user's event log, where the app
        // shows them in log order: one at a time keeps that the order they were
        // raised in. They are local writes, so there is no wait to overlap.
        let concurrency = match lane {
            Lane::InApp => 1,
            _ => self.concurrency,
        };
        let permits = Arc::new(Semaphore::new(concurrency));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
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
            let mut started = 0;
            for entry in due {
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    break;
                };
                let fresh = in_flight
                    .lock()
                    .map(|mut s| s.insert(entry.id.clone()))
                    .unwrap_or(false);
                if !fresh {
                    continue;
                }
                started += 1;
                let (outbox, in_flight) = (Arc::clone(&self), Arc::clone(&in_flight));
                tokio::spawn(async move {
                    let dispatching = outbox.wakers.dispatching(lane);
                    // A panic must not skip the cleanup below: the entry
                    // would stay in flight, never to be dispatched again.
                    let dispatched = std::panic::AssertUnwindSafe(outbox.dispatch(lane, &entry))
                        .catch_unwind()
                        .await;
                    match dispatched {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::error!(lane = lane.name(), id = %entry.id, error = %e, "outbox delivery");
                        }
                        Err(panic) => {
                            let message = crate::supervisor::panic_message(&*panic);
                            tracing::error!(lane = lane.name(), id = %entry.id, "outbox delivery panicked: {message}");
                        }
                    }
                    if let Ok(mut s) = in_flight.lock() {
                        s.remove(&entry.id);
                    }
                    drop(dispatching);
                    drop(permit);
                    outbox.wakers.lane(lane).notify_one();
                });
            }
            if started > 0 {
                continue;
            }
            let sleep = match self.store.next_due_in(lane) {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now).max(20) as u64),
                _ => MAX_SLEEP,
            };
            let _ = tokio::time::timeout(sleep.min(MAX_SLEEP), wake.notified()).await;
        }
    }

    async fn dispatch(&self, lane: Lane, entry: &Due) -> Result<(), StoreError> {
        if lane == Lane::Digest {
            return self.send_digest(&entry.id, entry.due_ms).await;
        }
        let now = self.clock.now();
        let notification = match self.store.notification(&entry.id) {
            Ok(Some(n)) => n,
            Ok(None) => {
                return self
                    .finish(lane, entry, Outcome::Suppressed("gone".into()))
                    .await
            }
            Err(StoreError::Corrupt(e)) => {
                tracing::error!(id = %entry.id, error = %e, "unreadable notification dropped");
                return self.finish(lane, entry, Outcome::Dead(e)).await;
            }
            Err(e) => return Err(e),
        };
        let Some(delivery) = notification.delivery(lane).cloned() else {
            return self
                .finish(lane, entry, Outcome::Suppressed("gone".into()))
                .await;
        };
        if let Some(reason) = self.not_needed(&notification, &delivery)? {
            return self.finish(lane, entry, Outcome::Suppressed(reason)).await;
        }
        if lane == Lane::InApp {
            self.record_latency(lane, &notification, now);
            return self.finish(lane, entry, Outcome::Delivered).await;
        }
        // Read now, not when routed: quiet hours and addresses may have changed.
        let user = match &notification.user_id {
            Some(id) => self.store.user(id)?,
            None => None,
        };
        if let (true, Some(user)) = (delivery.quiet_hours, &user) {
            let release = quiet::release(now, user);
            if release > now {
                let until_ms = release.as_millisecond();
                return self.finish(lane, entry, Outcome::Hold { until_ms }).await;
            }
        }
        let attempt = delivery.attempts + 1;
        let lease = now
            .checked_add(self.retry.timeout + self.retry.backoff(attempt))
            .unwrap_or(now);
        let begun = outbox::begin_attempts(
            &self.store,
            lane,
            vec![(entry.id.clone(), lease.as_millisecond())],
        )
        .await?;
        let Some(notification) = begun.into_iter().next().flatten() else {
            // Answered meanwhile (a re-drive raced it): just drop this entry.
            return self
                .finish(lane, entry, Outcome::Suppressed("no longer pending".into()))
                .await;
        };
        let leased = Due {
            due_ms: lease.as_millisecond(),
            id: entry.id.clone(),
        };
        let result = self
            .channels
            .send(lane, &notification, user.as_ref(), now)
            .await;
        if result.is_ok() {
            // Accepted by the channel, not yet recorded as delivered.
            let names = [lane.name(), notification.kind.as_str()];
            crate::faults::crash_point("outbox::after_send", names);
        }
        let now = self.clock.now();
        let outcome = match result {
            Ok(()) => {
                self.record_latency(lane, &notification, now);
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
        };
        self.finish(lane, &leased, outcome).await
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

    async fn finish(&self, lane: Lane, entry: &Due, outcome: Outcome) -> Result<(), StoreError> {
        let result = match &outcome {
            Outcome::Delivered => "delivered",
            Outcome::Retry { .. } => "retry",
            Outcome::Dead(_) => "dead",
            Outcome::Suppressed(_) => "suppressed",
            Outcome::Hold { .. } => "held",
        };
        if let Outcome::Dead(error) = &outcome {
            tracing::warn!(lane = lane.name(), id = %entry.id, %error, "delivery moved to the dead-letter list");
        }
        let at = format_time(self.clock.now());
        let recorded =
            outbox::finish(&self.store, lane, vec![(entry.clone(), outcome)], at).await?;
        if recorded.first() == Some(&true) {
            metrics::counter!("parleyd_deliveries_total", "channel" => lane.name(), "result" => result)
                .increment(1);
        }
        Ok(())
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
        crate::faults::crash_point("digest::before_flush", std::iter::empty());
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
