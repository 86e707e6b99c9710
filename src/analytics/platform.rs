//! The platform view (`GET /v1/admin/analytics`): the funnel, first response
//! times, off-platform attempts and per-step nudge performance of the whole
//! platform, kept per day (UTC) as the events are folded, and summed over a
//! period on read. README.md ("Platform analytics") defines every figure;
//! this is its implementation.
//!
//! Write path (inside [`super::fold`], no scans): a conversation's facts go
//! through [`fold`], called by `metrics::record` with the conversation's
//! record before and after the metrics' own fold, so the funnel is the
//! conversation metrics' funnel, counted once per conversation when a stage
//! is first reached; [`record`] counts what has no conversation record: a
//! first view of a listing and a blocked message. Each touches one day's
//! record and, for step messages, one step-day record.
//!
//! Attribution (last touch): the conversation keeps its latest step message
//! (`ConversationMetrics::touches`); the addressee's next message is that
//! message's reply and the conversation's first booking its booking, each
//! counted once, on the message's send day, by the hours (replies) or days
//! (bookings) it took, rounded up. The windows (`analytics.reply_window_hours`,
//! `analytics.attribution_days`) apply on read, so a config change needs no
//! rebuild and restarts or rebuilds cannot count differently.

use jiff::civil::Date;
use serde::Serialize;
use utoipa::ToSchema;

use crate::contact::Action;
use crate::domain::{DomainEvent, Emitted};
use crate::model::analytics::{ConversationMetrics, FIRST_RESPONSE_BOUNDS};
use crate::model::platform::{ContactTally, PlatformDay, StepDay, StepKey, Touch};
use crate::model::{Automation, Moderation};
use crate::store::{AnalyticsTx, TxError};

use super::metrics::{bucket, day_of, seconds_between, Fact, Share, LISTING_VIEWED};
use super::period::PeriodError;

/// The time zone of the platform's days: the config names no default zone,
/// so the platform counts in UTC.
pub const PLATFORM_ZONE: &str = "UTC";

const MINUTE: i64 = 60;
const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

/// `at` (RFC 3339) as a time; `None` (before any time) if unreadable.
fn instant(at: &str) -> Option<jiff::Timestamp> {
    at.parse().ok()
}

/// `secs / unit`, rounded up (0 stays 0).
fn ceil_units(secs: i64, unit: i64) -> u64 {
    u64::try_from((secs.max(0) + unit - 1) / unit).unwrap_or(0)
}

/// Where a conversation stands in the platform funnel (see
/// [`PlatformDay`]): every stage counts only once the inquiry is there.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cohort {
    messaged: bool,
    viewed_messaged: bool,
    quoted: bool,
    booked: bool,
    quoted_booked: bool,
    answered: bool,
    /// A booking was recorded (with or without an inquiry).
    has_booking: bool,
}

impl Cohort {
    pub fn of(m: &ConversationMetrics) -> Cohort {
        let inquiry = m.inquiry_at.is_some();
        let at = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
        let viewed_first = matches!(
            (at(&m.viewed_at), at(&m.inquiry_at)),
            (Some(view), Some(inquiry)) if view <= inquiry
        );
        Cohort {
            messaged: inquiry,
            viewed_messaged: viewed_first,
            quoted: inquiry && m.quoted_at.is_some(),
            booked: inquiry && m.booked_at.is_some(),
            quoted_booked: inquiry && m.quoted_at.is_some() && m.booked_at.is_some(),
            answered: inquiry && m.first_response_at.is_some(),
            has_booking: m.booked_at.is_some(),
        }
    }
}

/// What one event adds to the platform's records.
#[derive(Debug, Default, PartialEq)]
pub struct Deltas {
    /// By day (`YYYY-MM-DD`, UTC).
    pub days: Vec<(String, PlatformDay)>,
    /// By send day and step.
    pub steps: Vec<(String, StepKey, StepDay)>,
}

impl Deltas {
    fn day(&mut self, at: &str, change: impl FnOnce(&mut PlatformDay)) {
        let Some(day) = day_of(at, PLATFORM_ZONE) else {
            return;
        };
        let mut delta = PlatformDay::default();
        change(&mut delta);
        if delta == PlatformDay::default() {
            return;
        }
        match self.days.iter_mut().find(|(d, _)| *d == day) {
            Some((_, existing)) => add_day(existing, &delta),
            None => self.days.push((day, delta)),
        }
    }

    fn step(&mut self, touch: &Touch, change: impl FnOnce(&mut StepDay)) {
        let mut delta = StepDay::default();
        change(&mut delta);
        self.steps
            .push((touch.day.clone(), touch.key.clone(), delta));
    }
}

/// `a += b`, figure by figure.
pub fn add_day(a: &mut PlatformDay, b: &PlatformDay) {
    a.viewed += b.viewed;
    a.viewed_messaged += b.viewed_messaged;
    a.messaged += b.messaged;
    a.quoted += b.quoted;
    a.booked += b.booked;
    a.quoted_booked += b.quoted_booked;
    for (minutes, count) in &b.first_response_minutes {
        *a.first_response_minutes.entry(*minutes).or_default() += count;
    }
    add_contact(&mut a.contact, &b.contact);
}

fn add_contact(a: &mut ContactTally, b: &ContactTally) {
    a.detections += b.detections;
    a.allowed += b.allowed;
    a.warned += b.warned;
    a.masked += b.masked;
    a.blocked += b.blocked;
    a.flagged += b.flagged;
}

/// `a += b`, figure by figure.
pub fn add_step(a: &mut StepDay, b: &StepDay) {
    a.sent += b.sent;
    a.read += b.read;
    for (into, from) in [(&mut a.replies, &b.replies), (&mut a.bookings, &b.bookings)] {
        for (units, count) in from {
            *into.entry(*units).or_default() += count;
        }
    }
}

/// One detection under `moderation`.
fn detection(moderation: &Moderation) -> ContactTally {
    let is = |action| u64::from(moderation.action == action);
    ContactTally {
        detections: 1,
        allowed: is(Action::Allow),
        warned: is(Action::Warn),
        masked: is(Action::Mask),
        blocked: is(Action::Block),
        flagged: u64::from(moderation.flagged),
    }
}

fn moderation_of(event: &DomainEvent) -> Option<Moderation> {
    let note = event.data.get("moderation")?;
    serde_json::from_value(note.clone()).ok()
}

/// Folds a conversation's `fact` for the platform view: `before` is where
/// the conversation stood before the metrics folded it, `m` its record
/// after (whose step messages this updates). Returns what to add to the
/// platform's days and steps ([`write`] adds it).
pub fn fold(
    before: &Cohort,
    m: &mut ConversationMetrics,
    fact: &Fact,
    event: &DomainEvent,
) -> Deltas {
    let mut deltas = Deltas::default();
    let after = Cohort::of(m);
    // Most events move no stage: they touch no day record.
    if let (Some(inquiry), true) = (m.inquiry_at.clone(), after != *before) {
        let new = |stage: fn(&Cohort) -> bool| u64::from(stage(&after) && !stage(before));
        let first_response = m.response_secs.first().copied();
        deltas.day(&inquiry, |d| {
            d.messaged = new(|c| c.messaged);
            d.quoted = new(|c| c.quoted);
            d.booked = new(|c| c.booked);
            d.quoted_booked = new(|c| c.quoted_booked);
            if let (1, Some(secs)) = (new(|c| c.answered), first_response) {
                d.first_response_minutes.insert(ceil_units(secs, MINUTE), 1);
            }
        });
        if let (Some(viewed), true) = (
            &m.viewed_at,
            after.viewed_messaged && !before.viewed_messaged,
        ) {
            deltas.day(viewed, |d| d.viewed_messaged = 1);
        }
    }
    let at = event.at.as_str();
    match fact {
        Fact::Message(message) if message.automated => {
            let automation: Option<Automation> = event
                .data
                .get("automation")
                .and_then(|a| serde_json::from_value(a.clone()).ok());
            let (Some(automation), Some(seq), Some(day)) =
                (automation, message.seq, day_of(at, PLATFORM_ZONE))
            else {
                return deltas;
            };
            let touch = Touch {
                key: StepKey {
                    sequence: automation.rule,
                    step: automation.step,
                    experiment: automation.experiment,
                    variant: automation.variant,
                },
                day,
                at: at.to_owned(),
                seq,
                recipient: automation.recipient_id,
                replied: false,
                booked: false,
            };
            deltas.step(&touch, |s| s.sent = 1);
            m.touches.unread.push(touch.clone());
            let last = m.touches.last.replace(touch);
            // The latest touch from an earlier instant, for a booking at
            // this one (see below).
            if last.as_ref().is_some_and(|l| instant(&l.at) < instant(at)) {
                m.touches.earlier = last;
            }
        }
        Fact::Message(message) => {
            if let Some(moderation) = moderation_of(event) {
                deltas.day(at, |d| d.contact = detection(&moderation));
            }
            if let Some(last) = m
                .touches
                .last
                .as_mut()
                .filter(|t| !t.replied && t.recipient == message.sender)
            {
                last.replied = true;
                let hours = ceil_units(seconds_between(&last.at, at), HOUR);
                deltas.step(last, |s| {
                    s.replies.insert(hours, 1);
                });
            }
        }
        Fact::Read { reader, .. } => {
            let upto = event.data.get("seq").and_then(|s| s.as_u64()).unwrap_or(0);
            let (read, unread) = std::mem::take(&mut m.touches.unread)
                .into_iter()
                .partition(|t| t.recipient == *reader && t.seq <= upto);
            m.touches.unread = unread;
            for touch in read {
                deltas.step(&touch, |s| s.read = 1);
            }
        }
        Fact::Booked { .. } if !before.has_booking => {
            // Only a step message sent strictly before the booking can have
            // led to it: one sent at its very instant (on the manual clock,
            // the booking's own confirmation) may come first in the history
            // a rebuild reads, so it is passed over for the touch before.
            let touches = &mut m.touches;
            let before_booking = |t: &Touch| instant(&t.at) < instant(at);
            let touch = match touches.last.as_mut().filter(|t| before_booking(t)) {
                Some(last) => Some(last),
                None => touches.earlier.as_mut().filter(|t| before_booking(t)),
            };
            if let Some(last) = touch.filter(|t| !t.booked) {
                last.booked = true;
                let days = ceil_units(seconds_between(&last.at, at), DAY);
                deltas.step(last, |s| {
                    s.bookings.insert(days, 1);
                });
            }
        }
        _ => {}
    }
    deltas
}

/// Counts what has no conversation record to fold into: a customer's
/// first view of a listing (on the view's day) and a message the contact
/// policy blocked (a detection on its day). Call before the metrics fold
/// the event (they record the view).
pub fn record(tx: &AnalyticsTx<'_, '_>, event: &DomainEvent) -> Result<(), TxError> {
    let mut deltas = Deltas::default();
    if event.name == LISTING_VIEWED {
        let (Some(listing), Some(customer)) = (&event.subject.listing_id, &event.subject.user_id)
        else {
            return Ok(());
        };
        if tx.viewed(listing, customer)?.is_none() {
            deltas.day(&event.at, |d| d.viewed = 1);
        }
    } else if event.name == Emitted::MessageBlocked.to_string() {
        if let Some(moderation) = moderation_of(event) {
            deltas.day(&event.at, |d| d.contact = detection(&moderation));
        }
    }
    write(tx, deltas)
}

/// Adds `deltas` to the records they concern: one read and one write each.
pub fn write(tx: &AnalyticsTx<'_, '_>, deltas: Deltas) -> Result<(), TxError> {
    for (day, delta) in deltas.days {
        let mut figures = tx.platform_day(&day)?;
        add_day(&mut figures, &delta);
        tx.put_platform_day(&day, &figures)?;
    }
    for (day, key, delta) in deltas.steps {
        let mut figures = tx.step_day(&day, &key)?;
        add_step(&mut figures, &delta);
        tx.put_step_day(&day, &key, &figures)?;
    }
    Ok(())
}

/// The reply and attribution windows figures are read with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// A reply counts when it came within this many hours of the message.
    pub reply_hours: u64,
    /// A booking counts when it came within this many days of the message.
    pub attribution_days: u64,
}

/// A period of whole days, both ends included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: Date,
    pub to: Date,
}

/// The period asked for (see [`super::period::days`]), in UTC days.
pub fn period(from: Option<&str>, to: Option<&str>, today: Date) -> Result<Period, PeriodError> {
    let (from, to) = super::period::days(from, to, today)?;
    Ok(Period { from, to })
}

/// `GET /v1/admin/analytics`: the platform's figures over a period. Days
/// are UTC; durations seconds; rates between 0 and 1 (`null` when there was
/// nothing to count). README.md ("Platform analytics") defines each.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlatformView {
    /// The period, `YYYY-MM-DD`, both included.
    pub from: String,
    pub to: String,
    /// The zone of the days (`UTC`).
    pub zone: String,
    pub funnel: PlatformFunnel,
    pub first_response: FirstResponses,
    pub off_platform: OffPlatform,
    /// Per step (and experiment variant), sorted by sequence and step.
    pub steps: Vec<StepFigures>,
    /// The windows the step figures were read with (config `analytics:`).
    pub reply_window_hours: u64,
    pub attribution_days: u64,
}

/// The funnel of the conversation metrics, counted over the platform.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PlatformFunnel {
    /// Customer–listing pairs first viewed in the period.
    pub viewed: u64,
    /// Inquiries received in the period.
    pub messaged: u64,
    /// Of those inquiries, the conversations quoted and booked.
    pub quoted: u64,
    pub booked: u64,
    /// Of the pairs viewed, those that went on to message.
    pub viewed_to_messaged: Share,
    /// Of the inquiries, those quoted.
    pub messaged_to_quoted: Share,
    /// Of the quoted, those booked.
    pub quoted_to_booked: Share,
    /// Of the inquiries, those booked.
    pub messaged_to_booked: Share,
}

/// One bucket of the first response times.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Bucket {
    /// Above the previous bucket's bound (0 for the first), up to this many
    /// seconds included; `null` for the last (slower than 24 h).
    pub up_to_seconds: Option<i64>,
    pub count: u64,
}

/// The first response times of the period's inquiries that were answered.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FirstResponses {
    pub answered: u64,
    pub buckets: Vec<Bucket>,
    /// Nearest rank over the times kept to the minute (rounded up): the
    /// ⌈p·n⌉-th smallest, in seconds.
    pub median_seconds: Option<i64>,
    pub p90_seconds: Option<i64>,
}

/// People's messages in which contact details were found.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OffPlatform {
    pub detections: u64,
    pub allowed: u64,
    pub warned: u64,
    pub masked: u64,
    pub blocked: u64,
    /// Queued for an operator's review (any action).
    pub flagged: u64,
    /// Blocked or masked, of the detections.
    pub stopped: Share,
}

/// One step's messages sent in the period and what followed them.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct StepFigures {
    /// The sequence (or milestone) and step.
    pub sequence: String,
    pub step: String,
    pub experiment: Option<String>,
    pub variant: Option<String>,
    pub sent: u64,
    /// Read by their addressee, of those sent.
    pub read: Share,
    /// Replied to within `reply_window_hours`, of those sent.
    pub replied: Share,
    /// Followed by the conversation's booking within `attribution_days`
    /// (last touch), of those sent.
    pub booked: Share,
}

/// The ⌈p·n⌉-th smallest of the times in `minutes` (minutes → count), in
/// seconds; `None` when empty.
fn percentile(minutes: &std::collections::BTreeMap<u64, u64>, p: f64) -> Option<i64> {
    let n: u64 = minutes.values().sum();
    let rank = ((p * n as f64).ceil() as u64).max(1);
    let mut seen = 0;
    minutes.iter().find_map(|(m, count)| {
        seen += count;
        (seen >= rank).then(|| i64::try_from(*m).unwrap_or(i64::MAX).saturating_mul(MINUTE))
    })
}

/// The figures of `period` from its days' records and its steps' (read
/// with [`crate::store::Store::platform_days`] and `step_days`).
pub fn view(
    period: Period,
    days: &[PlatformDay],
    steps: &[(StepKey, StepDay)],
    windows: Windows,
) -> PlatformView {
    let mut sum = PlatformDay::default();
    days.iter().for_each(|d| add_day(&mut sum, d));
    let mut buckets = vec![0; FIRST_RESPONSE_BOUNDS.len() + 1];
    for (minutes, count) in &sum.first_response_minutes {
        let secs = i64::try_from(*minutes)
            .unwrap_or(i64::MAX)
            .saturating_mul(MINUTE);
        buckets[bucket(secs)] += count;
    }
    let mut by_step: std::collections::BTreeMap<StepKey, StepDay> = Default::default();
    for (key, figures) in steps {
        add_step(by_step.entry(key.clone()).or_default(), figures);
    }
    let within = |counts: &std::collections::BTreeMap<u64, u64>, limit: u64| -> u64 {
        counts.range(..=limit).map(|(_, c)| c).sum()
    };
    let c = &sum.contact;
    PlatformView {
        from: period.from.to_string(),
        to: period.to.to_string(),
        zone: PLATFORM_ZONE.into(),
        funnel: PlatformFunnel {
            viewed: sum.viewed,
            messaged: sum.messaged,
            quoted: sum.quoted,
            booked: sum.booked,
            viewed_to_messaged: Share::of(sum.viewed_messaged, sum.viewed),
            messaged_to_quoted: Share::of(sum.quoted, sum.messaged),
            quoted_to_booked: Share::of(sum.quoted_booked, sum.quoted),
            messaged_to_booked: Share::of(sum.booked, sum.messaged),
        },
        first_response: FirstResponses {
            answered: sum.first_response_minutes.values().sum(),
            buckets: buckets
                .into_iter()
                .enumerate()
                .map(|(i, count)| Bucket {
                    up_to_seconds: FIRST_RESPONSE_BOUNDS.get(i).copied(),
                    count,
                })
                .collect(),
            median_seconds: percentile(&sum.first_response_minutes, 0.5),
            p90_seconds: percentile(&sum.first_response_minutes, 0.9),
        },
        off_platform: OffPlatform {
            detections: c.detections,
            allowed: c.allowed,
            warned: c.warned,
            masked: c.masked,
            blocked: c.blocked,
            flagged: c.flagged,
            stopped: Share::of(c.blocked + c.masked, c.detections),
        },
        steps: by_step
            .into_iter()
            .map(|(key, s)| StepFigures {
                read: Share::of(s.read, s.sent),
                replied: Share::of(within(&s.replies, windows.reply_hours), s.sent),
                booked: Share::of(within(&s.bookings, windows.attribution_days), s.sent),
                sent: s.sent,
                sequence: key.sequence,
                step: key.step,
                experiment: key.experiment,
                variant: key.variant,
            })
            .collect(),
        reply_window_hours: windows.reply_hours,
        attribution_days: windows.attribution_days,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::metrics::tests::record;
    use crate::analytics::metrics::{self, MessageFact};
    use crate::domain::{Stage, Subject};

    fn event(at: &str, data: serde_json::Value) -> DomainEvent {
        DomainEvent {
            seq: 0,
            name: String::new(),
            aliases: Vec::new(),
            at: at.into(),
            redriven_at: None,
            subject: Subject::default(),
            data,
        }
    }

    /// Folds `fact` as `metrics::record` does: the metrics, then the
    /// platform view with the cohort from before.
    fn fold_both(m: &mut ConversationMetrics, fact: &Fact, e: &DomainEvent) -> Deltas {
        let before = Cohort::of(m);
        metrics::fold(m, fact, &e.at);
        fold(&before, m, fact, e)
    }

    fn says(who: &str, text: &str) -> Fact {
        Fact::Message(MessageFact {
            sender: who.into(),
            automated: false,
            recipient: None,
            chars: text.chars().count() as u64,
            quick_reply: false,
            priced: metrics::names_price(text),
            seq: None,
        })
    }

    fn nudge(m: &mut ConversationMetrics, step: &str, seq: u64, at: &str) -> Deltas {
        let fact = Fact::Message(MessageFact {
            sender: "system".into(),
            automated: true,
            recipient: Some("cust".into()),
            chars: 5,
            quick_reply: false,
            priced: false,
            seq: Some(seq),
        });
        let data = serde_json::json!({"seq": seq, "automation": {
            "rule": "inquiry", "step": step, "template": "t", "recipient_id": "cust"}});
        fold_both(m, &fact, &event(at, data))
    }

    fn key(step: &str) -> StepKey {
        StepKey {
            sequence: "inquiry".into(),
            step: step.into(),
            experiment: None,
            variant: None,
        }
    }

    fn days(deltas: &Deltas) -> Vec<(&str, &PlatformDay)> {
        deltas.days.iter().map(|(d, f)| (d.as_str(), f)).collect()
    }

    /// Each stage counts once, on the inquiry's day (a booking made before
    /// the inquiry comes with it), and a view before the inquiry counts as
    /// viewed-then-messaged on the view's day.
    #[test]
    fn the_funnel_counts_each_stage_once_on_its_cohort_day() {
        let mut m = record();
        m.viewed_at = Some("2030-06-30T10:00:00Z".into());
        let none = serde_json::Value::Null;
        let booked = Fact::Booked {
            booking_id: "b1".into(),
            stage: Stage::Confirmed,
        };
        let early = fold_both(
            &mut m,
            &booked,
            &event("2030-07-01T08:00:00Z", none.clone()),
        );
        assert!(early.days.is_empty(), "no inquiry yet: {early:?}");
        let inquiry = fold_both(
            &mut m,
            &says("cust", "Hi"),
            &event("2030-07-01T09:00:00Z", none.clone()),
        );
        let got = days(&inquiry);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].0, "2030-07-01");
        assert_eq!(
            (got[0].1.messaged, got[0].1.booked, got[0].1.quoted),
            (1, 1, 0)
        );
        assert_eq!((got[1].0, got[1].1.viewed_messaged), ("2030-06-30", 1));
        // The quote a day later counts on the inquiry's day, with the
        // first response (26 h 1 s: 1,561 minutes, rounded up).
        let quote = fold_both(
            &mut m,
            &says("prov", "$80"),
            &event("2030-07-02T11:00:01Z", none.clone()),
        );
        let got = days(&quote);
        assert_eq!(got[0].0, "2030-07-01");
        assert_eq!((got[0].1.quoted, got[0].1.quoted_booked), (1, 1));
        assert_eq!(
            got[0].1.first_response_minutes.get(&1561),
            Some(&1),
            "26 h 1 s"
        );
        let again = fold_both(
            &mut m,
            &says("prov", "€90"),
            &event("2030-07-02T12:00:00Z", none),
        );
        assert!(again
            .days
            .iter()
            .all(|(_, d)| d.quoted == 0 && d.first_response_minutes.is_empty()));
    }

    /// A reply and a booking count for the conversation's latest step
    /// message, once each, by the hours or days they took (rounded up);
    /// a read counts for every step message up to the read seq.
    #[test]
    fn replies_and_bookings_count_for_the_last_touch_once() {
        let mut m = record();
        let none = serde_json::Value::Null;
        nudge(&mut m, "first", 1, "2030-07-01T10:00:00Z");
        let sent = nudge(&mut m, "second", 2, "2030-07-02T10:00:00Z");
        assert_eq!(sent.steps[0].0, "2030-07-02");
        assert_eq!(
            (sent.steps[0].1.clone(), sent.steps[0].2.sent),
            (key("second"), 1)
        );
        let read = Fact::Read {
            reader: "cust".into(),
            count: 2,
        };
        let reads = fold_both(
            &mut m,
            &read,
            &event("2030-07-02T11:00:00Z", serde_json::json!({"seq": 2})),
        );
        let read_steps: Vec<(&str, &str)> = reads
            .steps
            .iter()
            .map(|(d, k, s)| {
                assert_eq!(s.read, 1);
                (d.as_str(), k.step.as_str())
            })
            .collect();
        assert_eq!(
            read_steps,
            [("2030-07-01", "first"), ("2030-07-02", "second")]
        );
        assert!(m.touches.unread.is_empty());
        let provider = fold_both(
            &mut m,
            &says("prov", "Hello"),
            &event("2030-07-02T12:00:00Z", none.clone()),
        );
        assert!(provider.steps.is_empty(), "not the addressee");
        let reply = fold_both(
            &mut m,
            &says("cust", "Yes"),
            &event("2030-07-03T10:00:01Z", none.clone()),
        );
        let [(day, k, s)] = &reply.steps[..] else {
            panic!("{reply:?}")
        };
        assert_eq!((day.as_str(), k.step.as_str()), ("2030-07-02", "second"));
        assert_eq!(
            s.replies.get(&25),
            Some(&1),
            "24 h 1 s is 25 hours rounded up"
        );
        let twice = fold_both(
            &mut m,
            &says("cust", "Hello?"),
            &event("2030-07-03T11:00:00Z", none.clone()),
        );
        assert!(twice.steps.is_empty(), "one reply per message");
        let booked = Fact::Booked {
            booking_id: "b1".into(),
            stage: Stage::Confirmed,
        };
        let booking = fold_both(
            &mut m,
            &booked,
            &event("2030-07-09T10:00:00Z", none.clone()),
        );
        let [(_, k, s)] = &booking.steps[..] else {
            panic!("{booking:?}")
        };
        assert_eq!((k.step.as_str(), s.bookings.get(&7)), ("second", Some(&1)));
        let rebooked = Fact::Booked {
            booking_id: "b2".into(),
            stage: Stage::Confirmed,
        };
        assert!(
            fold_both(&mut m, &rebooked, &event("2030-07-09T11:00:00Z", none))
                .steps
                .is_empty()
        );
    }

    /// A step message at the booking's very instant folded before it (the
    /// rebuild's order for a tie) does not take it: the touch before does,
    /// as on the live path, where the booking comes first.
    #[test]
    fn a_booking_counts_for_the_touch_strictly_before_it() {
        let none = serde_json::Value::Null;
        let booked = Fact::Booked {
            booking_id: "b1".into(),
            stage: Stage::Confirmed,
        };
        let booked_at = "2030-07-03T10:00:00Z";
        let mut tie_first = record();
        nudge(&mut tie_first, "remind", 1, "2030-07-01T10:00:00Z");
        nudge(&mut tie_first, "confirmation", 2, booked_at);
        let rebuilt = fold_both(&mut tie_first, &booked, &event(booked_at, none.clone()));
        let mut booking_first = record();
        nudge(&mut booking_first, "remind", 1, "2030-07-01T10:00:00Z");
        let live = fold_both(&mut booking_first, &booked, &event(booked_at, none));
        nudge(&mut booking_first, "confirmation", 2, booked_at);
        for deltas in [rebuilt, live] {
            let [(day, k, s)] = &deltas.steps[..] else {
                panic!("{deltas:?}")
            };
            assert_eq!((day.as_str(), k.step.as_str()), ("2030-07-01", "remind"));
            assert_eq!(s.bookings.get(&2), Some(&1));
        }
    }

    /// Buckets and percentiles over the minutes; the windows cut replies
    /// and bookings on read.
    #[test]
    fn figures_sum_days_and_read_windows() {
        let a = PlatformDay {
            first_response_minutes: [(5, 2), (6, 1)].into(),
            contact: ContactTally {
                detections: 4,
                blocked: 2,
                masked: 1,
                warned: 1,
                ..ContactTally::default()
            },
            ..PlatformDay::default()
        };
        let b = PlatformDay {
            first_response_minutes: [(5, 1), (2000, 1)].into(),
            ..PlatformDay::default()
        };
        let step = StepDay {
            sent: 4,
            read: 3,
            replies: [(1, 1), (24, 1), (25, 1)].into(),
            bookings: [(7, 1), (8, 1)].into(),
        };
        let period = period(
            Some("2030-07-01"),
            Some("2030-07-02"),
            "2030-07-02".parse().unwrap(),
        )
        .unwrap();
        let windows = Windows {
            reply_hours: 24,
            attribution_days: 7,
        };
        let v = view(
            period,
            &[a, b],
            &[(key("s"), step.clone()), (key("s"), step)],
            windows,
        );
        let counts: Vec<u64> = v.first_response.buckets.iter().map(|b| b.count).collect();
        assert_eq!(counts, [3, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(v.first_response.median_seconds, Some(300), "3rd of 5");
        assert_eq!(v.first_response.p90_seconds, Some(120_000), "5th of 5");
        assert_eq!(v.off_platform.stopped.rate, Some(0.75));
        let [s] = &v.steps[..] else {
            panic!("{:?}", v.steps)
        };
        assert_eq!(
            (s.sent, s.read.part, s.replied.part, s.booked.part),
            (8, 6, 4, 2)
        );
    }
}
