//! Conversation metrics: what each domain event counts for, as plain
//! functions over the records ([`fold`]), and the one place that reads and
//! writes them for an event ([`record`]). README.md ("Conversation metrics")
//! defines every figure; this is its implementation.
//!
//! Per event: one read and one write of the conversation's record, and of
//! the provider's day (two days when a reply counts for an inquiry received
//! on another day), plus the watermark (`analytics::record`; within one
//! batch's transaction sled serves it from the transaction's cache, so it
//! reaches the disk once a batch); `listing_viewed` reads one more key (the
//! customer's conversation about the listing, if any). Nothing is scanned.

use std::sync::LazyLock;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use regex::Regex;
use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{DomainEvent, Emitted, Stage};
use crate::model::analytics::{
    ConversationMetrics, DailyAggregate, MessageCounts, ReadTally, FIRST_RESPONSE_BOUNDS,
};
use crate::model::{MessageType, SYSTEM_SENDER};
use crate::rules::context::reader_zone;
use crate::store::{AnalyticsTx, TxError};

/// The marketplace signal saying the customer looked at a listing.
pub const LISTING_VIEWED: &str = "listing_viewed";
/// The marketplace signal saying the provider sent a quote.
pub const QUOTE: &str = "quote";

/// A provider reply counts as answering within a day up to this many seconds.
const DAY_SECS: i64 = 86_400;

/// A price in a message: a currency symbol or ISO code next to an amount
/// (`$120`, `€ 80`, `80,50 €`, `EUR 95`, `95 usd`, `120 dollars`). A bare
/// number (a date, a head count) is no price.
static PRICE: LazyLock<Regex> = LazyLock::new(|| {
    let amount = r"\d[\d.,' ]*\d|\d";
    let symbol = r"[$€£¥₹₽₩₪₺]";
    let code = r"(?:usd|eur|gbp|chf|cad|aud|nzd|jpy|cny|inr|sek|nok|dkk|pln|czk|huf|brl|mxn|zar|dollars?|euros?|pounds?|francs?)";
    Regex::new(&format!(
        r"(?i)(?:{symbol}\s?(?:{amount})|(?:{amount})\s?{symbol}|\b{code}\s?(?:{amount})|(?:{amount})\s?{code}\b)"
    ))
    .unwrap_or_else(|e| unreachable!("the price pattern is valid: {e}"))
});

/// Whether `text` names a price (see [`PRICE`]).
pub fn names_price(text: &str) -> bool {
    PRICE.is_match(text)
}

/// What an event means for the metrics, read from its name and data.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    /// A conversation was opened.
    Opened,
    /// A message was stored.
    Message(MessageFact),
    /// `reader` read `count` messages addressed to them.
    Read { reader: String, count: u64 },
    /// A booking was created, at `stage`.
    Booked { booking_id: String, stage: Stage },
    /// A booking moved from `from` to `to`.
    Staged { from: Option<Stage>, to: Stage },
    /// The customer viewed the listing.
    Viewed,
    /// A `quote` signal for the conversation.
    Quoted,
}

/// A message as the metrics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageFact {
    pub sender: String,
    /// Sent by automation; then `recipient` is whom it speaks to.
    pub automated: bool,
    pub recipient: Option<String>,
    /// Characters (Unicode scalar values).
    pub chars: u64,
    pub quick_reply: bool,
    pub priced: bool,
    /// Its `seq` in the conversation.
    pub seq: Option<u64>,
}

impl Fact {
    /// What `event` means for the metrics; `None` for an event they ignore.
    pub fn of(event: &DomainEvent) -> Option<Fact> {
        let data = &event.data;
        let text = |field: &str| data.get(field).and_then(|v| v.as_str());
        let stage = |v: Option<&serde_json::Value>| {
            v.and_then(|s| serde_json::from_value::<Stage>(s.clone()).ok())
        };
        let name = event.name.as_str();
        Some(if name == Emitted::ConversationOpened.to_string() {
            Fact::Opened
        } else if name == Emitted::MessageSent.to_string()
            || name == Emitted::AutomatedMessageSent.to_string()
        {
            let content = text("content").unwrap_or_default();
            let kind: Option<MessageType> = data
                .get("type")
                .and_then(|t| serde_json::from_value(t.clone()).ok());
            let automated = kind.is_some_and(|k| k != MessageType::Text);
            Fact::Message(MessageFact {
                sender: event.subject.user_id.clone()?,
                automated,
                recipient: data
                    .get("automation")
                    .and_then(|a| a.get("recipient_id"))
                    .and_then(|r| r.as_str())
                    .map(str::to_owned),
                chars: content.chars().count() as u64,
                quick_reply: text("quick_reply_id").is_some(),
                priced: !automated && names_price(content),
                seq: data.get("seq").and_then(|s| s.as_u64()),
            })
        } else if name == Emitted::MessageRead.to_string() {
            Fact::Read {
                reader: event.subject.user_id.clone()?,
                count: data.get("count").and_then(|c| c.as_u64())?,
            }
        } else if name == Emitted::BookingCreated.to_string() {
            Fact::Booked {
                booking_id: event.subject.booking_id.clone()?,
                stage: stage(data.get("stage"))?,
            }
        } else if name == Emitted::BookingUpdated.to_string() {
            Fact::Staged {
                from: stage(data.get("previous").and_then(|p| p.get("stage"))),
                to: stage(data.get("stage"))?,
            }
        } else if name == LISTING_VIEWED {
            Fact::Viewed
        } else if name == QUOTE {
            Fact::Quoted
        } else {
            return None;
        })
    }
}

/// What a fold adds to the provider's days: figures to add to the day of
/// the time given (in the conversation's zone).
#[derive(Debug, Default, PartialEq)]
pub struct Deltas {
    pub days: Vec<(String, DailyAggregate)>,
    /// The fact was the conversation's inquiry (to index it by provider).
    pub inquiry: bool,
}

impl Deltas {
    fn add(&mut self, at: &str, change: impl FnOnce(&mut DailyAggregate)) {
        let mut delta = DailyAggregate::default();
        change(&mut delta);
        match self.days.iter_mut().find(|(day, _)| day == at) {
            Some((_, existing)) => add_daily(existing, &delta),
            None => self.days.push((at.to_owned(), delta)),
        }
    }
}

fn add_counts(a: &mut MessageCounts, b: &MessageCounts) {
    a.total += b.total;
    a.provider += b.provider;
    a.customer += b.customer;
    a.automated += b.automated;
    a.quick_replies += b.quick_replies;
    a.characters += b.characters;
}

fn add_tally(a: &mut ReadTally, b: &ReadTally) {
    a.addressed += b.addressed;
    a.read += b.read;
}

/// `a += b`, figure by figure.
pub fn add_daily(a: &mut DailyAggregate, b: &DailyAggregate) {
    a.inquiries += b.inquiries;
    a.answered += b.answered;
    a.answered_within_24h += b.answered_within_24h;
    a.first_response_secs += b.first_response_secs;
    for (x, y) in a
        .first_response_buckets
        .iter_mut()
        .zip(b.first_response_buckets)
    {
        *x += y;
    }
    a.quoted += b.quoted;
    a.booked += b.booked;
    a.completed += b.completed;
    add_counts(&mut a.messages, &b.messages);
    a.responses += b.responses;
    a.response_secs += b.response_secs;
    a.answered_messages += b.answered_messages;
    add_tally(&mut a.to_customers, &b.to_customers);
    add_tally(&mut a.to_provider, &b.to_provider);
    a.cohort.add(&b.cohort);
}

/// The bucket of [`FIRST_RESPONSE_BOUNDS`] a first response time falls in.
pub fn bucket(secs: i64) -> usize {
    FIRST_RESPONSE_BOUNDS
        .iter()
        .position(|&bound| secs <= bound)
        .unwrap_or(FIRST_RESPONSE_BOUNDS.len())
}

/// Whole seconds from `from` to `to` (RFC 3339); 0 if either is unreadable
/// or `to` is earlier.
pub fn seconds_between(from: &str, to: &str) -> i64 {
    match (from.parse::<Timestamp>(), to.parse::<Timestamp>()) {
        (Ok(from), Ok(to)) => (to.as_second() - from.as_second()).max(0),
        _ => 0,
    }
}

/// Folds `fact`, which happened at `at` (RFC 3339), into the conversation's
/// metrics; returns what it adds to the provider's days, keyed by the time
/// whose day they count on ([`record`] turns times into days). Outcomes
/// (first response, quote, booking, completion) count on the day of the
/// inquiry, and only for conversations with one; an inquiry arriving after
/// an outcome brings it along. Activity counts on the day it happened.
pub fn fold(m: &mut ConversationMetrics, fact: &Fact, at: &str) -> Deltas {
    let mut deltas = Deltas::default();
    let inquiry = m.inquiry_at.clone();
    let cohort_before = super::report::cohort_counts(m);
    match fact {
        Fact::Opened => {}
        Fact::Viewed => {
            m.viewed_at.get_or_insert_with(|| at.to_owned());
        }
        Fact::Message(message) => fold_message(m, message, at, &mut deltas),
        Fact::Read { reader, count } => {
            if *reader == m.customer_id {
                let count = read_now(&mut m.to_customer, *count);
                deltas.add(at, |d| d.to_customers.read += count);
            } else if *reader == m.provider_id {
                let count = read_now(&mut m.to_provider, *count);
                deltas.add(at, |d| d.to_provider.read += count);
            }
        }
        Fact::Quoted => {
            if m.quoted_at.is_none() {
                m.quoted_at = Some(at.to_owned());
                if let Some(inquiry) = &inquiry {
                    deltas.add(inquiry, |d| d.quoted += 1);
                }
            }
        }
        Fact::Booked { booking_id, stage } => {
            if m.booked_at.is_none() {
                m.booked_at = Some(at.to_owned());
                m.booking_id = Some(booking_id.clone());
                if let Some(inquiry) = &inquiry {
                    deltas.add(inquiry, |d| d.booked += 1);
                }
            }
            fold_stage(m, None, *stage, at, &mut deltas);
        }
        Fact::Staged { from, to } => fold_stage(m, *from, *to, at, &mut deltas),
    }
    // The provider reports' counts go to the inquiry's day as they change.
    let cohort = super::report::cohort_counts(m).since(&cohort_before);
    if let Some(inquiry) = m.inquiry_at.as_deref() {
        if cohort != Default::default() {
            deltas.add(inquiry, |d| d.cohort = cohort);
        }
    }
    deltas
}

/// Counts `count` more messages read on `tally` and returns how many it
/// counted: never more than are addressed and still unread, so the read rate
/// stays at most 1. Reads of messages sent before the metrics were kept (not
/// in `addressed` until a rebuild folds them) are not counted.
fn read_now(tally: &mut ReadTally, count: u64) -> u64 {
    let count = count.min(tally.addressed.saturating_sub(tally.read));
    tally.read += count;
    count
}

fn fold_stage(
    m: &mut ConversationMetrics,
    from: Option<Stage>,
    to: Stage,
    at: &str,
    deltas: &mut Deltas,
) {
    if to == Stage::Completed && from != Some(Stage::Completed) && m.completed_at.is_none() {
        m.completed_at = Some(at.to_owned());
        if let Some(inquiry) = &m.inquiry_at {
            deltas.add(inquiry, |d| d.completed += 1);
        }
    }
}

fn fold_message(m: &mut ConversationMetrics, message: &MessageFact, at: &str, deltas: &mut Deltas) {
    m.messages.total += 1;
    m.first_message_at.get_or_insert_with(|| at.to_owned());
    m.last_message_at = Some(at.to_owned());
    let mut counted = MessageCounts {
        total: 1,
        ..MessageCounts::default()
    };
    // Whom the message speaks to: an automated one to its recipient, a
    // person's to the other side.
    let to = if message.automated {
        counted.automated = 1;
        message.recipient.as_deref()
    } else if message.sender == m.provider_id {
        counted.provider = 1;
        Some(m.customer_id.as_str())
    } else if message.sender == m.customer_id {
        counted.customer = 1;
        Some(m.provider_id.as_str())
    } else {
        None
    };
    let person = counted.provider + counted.customer == 1;
    if person {
        counted.characters = message.chars;
        counted.quick_replies = u64::from(message.quick_reply);
    }
    m.provider_quick_replies += counted.provider * counted.quick_replies;
    add_counts(
        &mut m.messages,
        &MessageCounts {
            total: 0,
            ..counted
        },
    );
    let to_customer = to == Some(m.customer_id.as_str());
    let to_provider = to == Some(m.provider_id.as_str());
    m.to_customer.addressed += u64::from(to_customer);
    m.to_provider.addressed += u64::from(to_provider);
    deltas.add(at, |d| {
        d.messages = counted;
        d.to_customers.addressed = u64::from(to_customer);
        d.to_provider.addressed = u64::from(to_provider);
    });
    if counted.customer == 1 {
        fold_customer_message(m, message, at, deltas);
    } else if counted.provider == 1 {
        fold_provider_message(m, message, at, deltas);
    }
}

fn fold_customer_message(
    m: &mut ConversationMetrics,
    message: &MessageFact,
    at: &str,
    deltas: &mut Deltas,
) {
    if m.inquiry_at.is_none() {
        m.inquiry_at = Some(at.to_owned());
        m.inquiry_seq = message.seq;
        deltas.inquiry = true;
        // Outcomes reached before the inquiry count with it.
        let (quoted, booked, completed) = (
            m.quoted_at.is_some(),
            m.booked_at.is_some(),
            m.completed_at.is_some(),
        );
        deltas.add(at, |d| {
            d.inquiries = 1;
            d.quoted = u64::from(quoted);
            d.booked = u64::from(booked);
            d.completed = u64::from(completed);
        });
    }
    m.unanswered_since.get_or_insert_with(|| at.to_owned());
    m.unanswered += 1;
}

fn fold_provider_message(
    m: &mut ConversationMetrics,
    message: &MessageFact,
    at: &str,
    deltas: &mut Deltas,
) {
    if let Some(since) = m.unanswered_since.take() {
        let secs = seconds_between(&since, at);
        let answered = std::mem::take(&mut m.unanswered);
        m.response_secs.push(secs);
        m.answered += answered;
        deltas.add(at, |d| {
            d.responses = 1;
            d.response_secs = secs;
            d.answered_messages = answered;
        });
        if m.first_response_at.is_none() {
            m.first_response_at = Some(at.to_owned());
            m.first_response_seq = message.seq;
            if let Some(inquiry) = &m.inquiry_at {
                deltas.add(inquiry, |d| {
                    d.answered = 1;
                    d.answered_within_24h = u64::from(secs <= DAY_SECS);
                    d.first_response_secs = secs;
                    d.first_response_buckets[bucket(secs)] = 1;
                });
            }
        }
    }
    if message.priced && m.quoted_at.is_none() {
        m.quoted_at = Some(at.to_owned());
        if let Some(inquiry) = &m.inquiry_at {
            deltas.add(inquiry, |d| d.quoted += 1);
        }
    }
}

/// The day (`YYYY-MM-DD`) of `at` (RFC 3339) in `zone` (an IANA name;
/// unknown names count as UTC); `None` if `at` is unreadable.
pub fn day_of(at: &str, zone: &str) -> Option<String> {
    let zone = TimeZone::get(zone).unwrap_or(TimeZone::UTC);
    let at: Timestamp = at.parse().ok()?;
    Some(zone.to_datetime(at).date().to_string())
}

/// Folds one event into the records it concerns (see the module doc).
pub fn record(tx: &AnalyticsTx<'_, '_>, event: &DomainEvent) -> Result<(), TxError> {
    let Some(fact) = Fact::of(event) else {
        return Ok(());
    };
    let subject = &event.subject;
    let conversation_id = match (&fact, &subject.conversation_id) {
        (Fact::Viewed, _) => {
            // A view may come before the conversation: kept by listing and
            // customer, and taken into the conversation when it opens.
            let (Some(listing), Some(customer)) = (&subject.listing_id, &subject.user_id) else {
                return Ok(());
            };
            if tx.viewed(listing, customer)?.is_some() {
                return Ok(());
            }
            tx.put_viewed(listing, customer, &event.at)?;
            match tx.conversation_between(listing, customer)? {
                Some(id) => id,
                None => return Ok(()),
            }
        }
        (_, Some(id)) => id.clone(),
        (_, None) => return Ok(()),
    };
    let mut metrics = match tx.conversation(&conversation_id)? {
        Some(metrics) => metrics,
        None => match opened(tx, &conversation_id, event)? {
            Some(metrics) => metrics,
            None => return Ok(()),
        },
    };
    let before = super::platform::Cohort::of(&metrics);
    let deltas = fold(&mut metrics, &fact, &event.at);
    let platform = super::platform::fold(&before, &mut metrics, &fact, event);
    tx.put_conversation(&metrics)?;
    super::platform::write(tx, platform)?;
    // The deltas come by time (an event's own, its inquiry's for the
    // cohort counts); most fall on one day, which is then read and written
    // once.
    let mut days: Vec<(String, DailyAggregate)> = Vec::with_capacity(deltas.days.len());
    for (at, delta) in deltas.days {
        let Some(day) = day_of(&at, &metrics.zone) else {
            continue;
        };
        match days.iter_mut().find(|(d, _)| *d == day) {
            Some((_, sum)) => add_daily(sum, &delta),
            None => days.push((day, delta)),
        }
    }
    for (day, delta) in days {
        let mut daily = tx.daily(&metrics.provider_id, &day)?.unwrap_or_default();
        add_daily(&mut daily, &delta);
        tx.put_daily(&metrics.provider_id, &day, &daily)?;
    }
    if deltas.inquiry {
        let ms = event
            .at
            .parse::<Timestamp>()
            .map_or(0, |t| t.as_millisecond());
        tx.index_inquiry(&metrics.provider_id, ms, &conversation_id)?;
        tx.index_provider(&metrics.provider_id, &metrics.zone)?;
    }
    Ok(())
}

/// A new conversation's record, from the first event about it: its people
/// from the event, the provider's time zone (theirs, else the listing's,
/// else UTC) and a view of the listing the customer made before it opened.
/// `None` when the event does not name both people and the listing.
fn opened(
    tx: &AnalyticsTx<'_, '_>,
    conversation_id: &str,
    event: &DomainEvent,
) -> Result<Option<ConversationMetrics>, TxError> {
    let subject = &event.subject;
    let (Some(listing_id), Some(customer_id), Some(provider_id)) = (
        &subject.listing_id,
        &subject.customer_id,
        &subject.provider_id,
    ) else {
        return Ok(None);
    };
    if customer_id == SYSTEM_SENDER {
        return Ok(None);
    }
    let provider = tx.user(provider_id)?;
    let listing = tx.listing(listing_id)?;
    let zone = reader_zone(provider.as_ref(), listing.as_ref());
    Ok(Some(ConversationMetrics {
        conversation_id: conversation_id.to_owned(),
        listing_id: listing_id.clone(),
        customer_id: customer_id.clone(),
        provider_id: provider_id.clone(),
        zone: zone.iana_name().unwrap_or("UTC").to_owned(),
        viewed_at: tx.viewed(listing_id, customer_id)?,
        ..ConversationMetrics::default()
    }))
}

/// A share of a whole, `part / whole`, with both counts; `rate` is `null`
/// when `whole` is 0.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Share {
    pub part: u64,
    pub whole: u64,
    /// `part / whole`, between 0 and 1.
    pub rate: Option<f64>,
}

impl Share {
    pub fn of(part: u64, whole: u64) -> Share {
        Share {
            part,
            whole,
            rate: (whole > 0).then(|| part as f64 / whole as f64),
        }
    }
}

/// Provider response times, seconds (see README.md, "Conversation metrics").
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ResponseTimes {
    /// Provider replies that answered customer messages.
    pub count: u64,
    pub average_seconds: Option<f64>,
    pub median_seconds: Option<f64>,
}

/// The funnel: whether and when the conversation reached each stage.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Funnel {
    pub viewed: bool,
    pub messaged: bool,
    pub quoted: bool,
    pub booked: bool,
    pub viewed_at: Option<String>,
    /// The customer's first message.
    pub messaged_at: Option<String>,
    pub quoted_at: Option<String>,
    pub booked_at: Option<String>,
}

/// Message counts.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Counts {
    /// Every message, people's and automation's.
    pub total: u64,
    pub provider: u64,
    pub customer: u64,
    /// Sent by automation (not in `provider` or `customer`).
    pub automated: u64,
}

/// Read rates: of the messages addressed to each side, the share read.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ReadRates {
    pub overall: Share,
    pub customer: Share,
    pub provider: Share,
}

/// `GET /v1/conversations/{id}/metrics`: one conversation's metrics. Times
/// RFC 3339, durations seconds, rates between 0 and 1 (`null` when nothing
/// was there to count). README.md ("Conversation metrics") defines each.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ConversationMetricsView {
    pub conversation_id: String,
    pub listing_id: String,
    pub customer_id: String,
    pub provider_id: String,
    pub first_message_at: Option<String>,
    pub last_message_at: Option<String>,
    /// From the customer's first message to the provider's first reply.
    pub first_response_seconds: Option<i64>,
    pub first_response_at: Option<String>,
    pub response_time: ResponseTimes,
    pub messages: Counts,
    pub funnel: Funnel,
    pub read_rate: ReadRates,
    /// Customer messages a provider reply came after, of all customer
    /// messages.
    pub reply_rate: Share,
    /// People's messages sent with a quick reply, of all people's messages.
    pub quick_replies: Share,
    /// Characters per message written by a person.
    pub average_message_length: Option<f64>,
    pub booking_id: Option<String>,
    pub booking_created_at: Option<String>,
    /// When the booking reached the stage `completed`.
    pub service_completed_at: Option<String>,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[i64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2] as f64),
        _ => Some((sorted[n / 2 - 1] as f64 + sorted[n / 2] as f64) / 2.0),
    }
}

/// What callers see of `m`.
pub fn view(m: &ConversationMetrics) -> ConversationMetricsView {
    let responses = &m.response_secs;
    let people = m.messages.provider + m.messages.customer;
    ConversationMetricsView {
        conversation_id: m.conversation_id.clone(),
        listing_id: m.listing_id.clone(),
        customer_id: m.customer_id.clone(),
        provider_id: m.provider_id.clone(),
        first_message_at: m.first_message_at.clone(),
        last_message_at: m.last_message_at.clone(),
        first_response_seconds: m.first_response_at.as_ref().and(responses.first().copied()),
        first_response_at: m.first_response_at.clone(),
        response_time: ResponseTimes {
            count: responses.len() as u64,
            average_seconds: (!responses.is_empty())
                .then(|| responses.iter().sum::<i64>() as f64 / responses.len() as f64),
            median_seconds: median(responses),
        },
        messages: Counts {
            total: m.messages.total,
            provider: m.messages.provider,
            customer: m.messages.customer,
            automated: m.messages.automated,
        },
        funnel: Funnel {
            viewed: m.viewed_at.is_some(),
            messaged: m.inquiry_at.is_some(),
            quoted: m.quoted_at.is_some(),
            booked: m.booked_at.is_some(),
            viewed_at: m.viewed_at.clone(),
            messaged_at: m.inquiry_at.clone(),
            quoted_at: m.quoted_at.clone(),
            booked_at: m.booked_at.clone(),
        },
        read_rate: ReadRates {
            overall: Share::of(
                m.to_customer.read + m.to_provider.read,
                m.to_customer.addressed + m.to_provider.addressed,
            ),
            customer: Share::of(m.to_customer.read, m.to_customer.addressed),
            provider: Share::of(m.to_provider.read, m.to_provider.addressed),
        },
        reply_rate: Share::of(m.answered, m.messages.customer),
        quick_replies: Share::of(m.messages.quick_replies, people),
        average_message_length: (people > 0).then(|| m.messages.characters as f64 / people as f64),
        booking_id: m.booking_id.clone(),
        booking_created_at: m.booked_at.clone(),
        service_completed_at: m.completed_at.clone(),
    }
}

/// The record of a conversation nothing has been folded into yet.
pub fn empty(conversation: &crate::model::Conversation) -> ConversationMetrics {
    ConversationMetrics {
        conversation_id: conversation.id.clone(),
        listing_id: conversation.listing_id.clone(),
        customer_id: conversation.customer_id.clone(),
        provider_id: conversation.provider_id.clone(),
        zone: "UTC".into(),
        ..ConversationMetrics::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A conversation's record before any fact (Paris), for the folds'
    /// unit tests here and in `platform`.
    pub(crate) fn record() -> ConversationMetrics {
        ConversationMetrics {
            conversation_id: "c1".into(),
            listing_id: "l1".into(),
            customer_id: "cust".into(),
            provider_id: "prov".into(),
            zone: "Europe/Paris".into(),
            ..ConversationMetrics::default()
        }
    }

    fn says(sender: &str, text: &str) -> Fact {
        Fact::Message(MessageFact {
            sender: sender.into(),
            automated: false,
            recipient: None,
            chars: text.chars().count() as u64,
            quick_reply: false,
            priced: names_price(text),
            seq: None,
        })
    }

    fn automated(to: &str) -> Fact {
        Fact::Message(MessageFact {
            sender: SYSTEM_SENDER.into(),
            automated: true,
            recipient: Some(to.into()),
            chars: 10,
            quick_reply: false,
            priced: false,
            seq: None,
        })
    }

    #[test]
    fn prices_are_amounts_with_a_currency() {
        for priced in [
            "It's €80 per person",
            "$120",
            "80,50 €",
            "EUR 95 for two",
            "95 usd",
            "120 dollars all in",
            "£1,200.00",
        ] {
            assert!(names_price(priced), "{priced}");
        }
        for plain in [
            "See you at 5",
            "We are 2 people on 12/07",
            "Room 101",
            "europe is nice",
            "",
        ] {
            assert!(!names_price(plain), "{plain}");
        }
    }

    /// Each provider reply is measured from the earliest customer message
    /// it answers; automated messages answer nothing.
    #[test]
    fn replies_are_measured_from_the_earliest_unanswered_customer_message() {
        let mut m = record();
        fold(&mut m, &says("cust", "Hi"), "2030-07-01T10:00:00Z");
        fold(&mut m, &automated("cust"), "2030-07-01T10:00:01Z");
        fold(&mut m, &says("cust", "Hello?"), "2030-07-01T11:00:00Z");
        fold(&mut m, &says("prov", "Yes!"), "2030-07-01T12:00:00Z");
        fold(&mut m, &says("prov", "Also..."), "2030-07-01T12:05:00Z");
        fold(&mut m, &says("cust", "Thanks"), "2030-07-01T13:00:00Z");
        fold(&mut m, &says("prov", "Welcome"), "2030-07-01T13:10:00Z");
        assert_eq!(m.response_secs, [7200, 600]);
        assert_eq!(m.first_response_at.as_deref(), Some("2030-07-01T12:00:00Z"));
        assert_eq!(m.answered, 3);
        assert_eq!(m.messages.customer, 3);
        assert_eq!(m.messages.provider, 3);
        assert_eq!(m.messages.automated, 1);
        assert_eq!(m.messages.total, 7);
        assert_eq!(
            m.to_customer.addressed, 4,
            "3 replies and the automated one"
        );
        assert_eq!(m.to_provider.addressed, 3);
        let v = view(&m);
        assert_eq!(v.first_response_seconds, Some(7200));
        assert_eq!(v.response_time.median_seconds, Some(3900.0));
        assert_eq!(v.reply_rate.rate, Some(1.0));
    }

    /// Reads of messages the metrics never counted as addressed (sent
    /// before the upgrade) do not count: the read rate stays at most 1.
    #[test]
    fn reads_never_exceed_the_messages_addressed() {
        let mut m = record();
        fold(&mut m, &says("prov", "Hi"), "2030-07-01T10:00:00Z");
        let read = |count| Fact::Read {
            reader: "cust".into(),
            count,
        };
        let deltas = fold(&mut m, &read(3), "2030-07-01T10:05:00Z");
        assert_eq!((m.to_customer.addressed, m.to_customer.read), (1, 1));
        let [(_, day)] = &deltas.days[..] else {
            panic!("{deltas:?}")
        };
        assert_eq!(day.to_customers.read, 1, "the day counts what was counted");
        let deltas = fold(&mut m, &read(1), "2030-07-01T10:06:00Z");
        assert_eq!(m.to_customer.read, 1);
        assert!(deltas.days.iter().all(|(_, d)| d.to_customers.read == 0));
    }

    #[test]
    fn a_provider_message_before_any_inquiry_is_no_response() {
        let mut m = record();
        fold(&mut m, &says("prov", "Welcome!"), "2030-07-01T09:00:00Z");
        fold(&mut m, &says("cust", "Hi"), "2030-07-01T10:00:00Z");
        assert!(m.response_secs.is_empty());
        assert_eq!(m.inquiry_at.as_deref(), Some("2030-07-01T10:00:00Z"));
        let v = view(&m);
        assert_eq!(v.first_response_seconds, None);
        assert_eq!(v.reply_rate.rate, Some(0.0));
    }

    /// Outcomes count on the inquiry's day; activity on its own day; an
    /// inquiry after the booking brings it along; a completion counts once.
    #[test]
    fn daily_figures_go_to_the_inquiry_day_or_the_activity_day() {
        let mut m = record();
        let booked = fold(
            &mut m,
            &Fact::Booked {
                booking_id: "b1".into(),
                stage: Stage::Confirmed,
            },
            "2030-07-01T08:00:00Z",
        );
        assert!(booked.days.is_empty(), "no inquiry yet: {booked:?}");
        let inquiry = fold(&mut m, &says("cust", "Hi"), "2030-07-01T21:30:00Z");
        assert!(inquiry.inquiry);
        let [(at, day)] = &inquiry.days[..] else {
            panic!("{inquiry:?}")
        };
        assert_eq!(at, "2030-07-01T21:30:00Z");
        assert_eq!((day.inquiries, day.booked), (1, 1));
        let reply = fold(&mut m, &says("prov", "It's $80"), "2030-07-02T23:30:00Z");
        let days: Vec<&str> = reply.days.iter().map(|(at, _)| at.as_str()).collect();
        assert_eq!(days, ["2030-07-02T23:30:00Z", "2030-07-01T21:30:00Z"]);
        let cohort = &reply.days[1].1;
        assert_eq!(cohort.answered, 1);
        assert_eq!(cohort.answered_within_24h, 0, "26 hours");
        assert_eq!(cohort.first_response_secs, 26 * 3600);
        assert_eq!(cohort.first_response_buckets[7], 1);
        assert_eq!(cohort.quoted, 1);
        let activity = &reply.days[0].1;
        assert_eq!((activity.responses, activity.messages.provider), (1, 1));
        let done = Fact::Staged {
            from: Some(Stage::Active),
            to: Stage::Completed,
        };
        let completed = fold(&mut m, &done, "2030-07-05T10:00:00Z");
        assert_eq!(completed.days[0].1.completed, 1);
        assert!(fold(&mut m, &done, "2030-07-06T10:00:00Z").days.is_empty());
        // The inquiry's day in the provider's zone: 21:30 UTC is 23:30 in
        // Paris, 26 h later is 01:30 two days on.
        assert_eq!(
            day_of("2030-07-01T21:30:00Z", &m.zone).as_deref(),
            Some("2030-07-01")
        );
        assert_eq!(
            day_of("2030-07-02T23:30:00Z", &m.zone).as_deref(),
            Some("2030-07-03")
        );
    }

    #[test]
    fn reads_count_for_the_reader_side() {
        let mut m = record();
        fold(&mut m, &says("prov", "Hello"), "2030-07-01T09:00:00Z");
        fold(&mut m, &automated("cust"), "2030-07-01T09:00:00Z");
        let read = Fact::Read {
            reader: "cust".into(),
            count: 2,
        };
        let deltas = fold(&mut m, &read, "2030-07-01T10:00:00Z");
        assert_eq!(
            m.to_customer,
            ReadTally {
                addressed: 2,
                read: 2
            }
        );
        assert_eq!(deltas.days[0].1.to_customers.read, 2);
        let stranger = Fact::Read {
            reader: "someone".into(),
            count: 5,
        };
        assert!(fold(&mut m, &stranger, "2030-07-01T10:00:00Z")
            .days
            .is_empty());
    }

    #[test]
    fn buckets_and_medians() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(300), 0);
        assert_eq!(bucket(301), 1);
        assert_eq!(bucket(86_400), 6);
        assert_eq!(bucket(86_401), 7);
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[5, 1, 3]), Some(3.0));
        assert_eq!(median(&[4, 1, 3, 2]), Some(2.5));
    }
}
