//! Provider reports: a provider's figures for a period of days in their
//! time zone, the previous period of equal length, a performance score
//! against the `benchmarks:` bands with the provider's percentile among
//! providers, recommendations from `templates/reports.yaml`, and the
//! conversations every figure counted. README.md ("Provider reports")
//! defines each figure; this module is their one implementation.
//!
//! One rule for every figure: a period's figures are over the conversations
//! whose inquiry (the customer's first message) arrived in it (a cohort), as
//! they stand now. The provider's own figures are computed from those
//! conversations' records, which the report lists ([`Row`]); other
//! providers' (for the percentile) and the platform's (for the
//! recommendations) from the same counts summed by inquiry day
//! (`DailyAggregate`, `DailyAggregate::cohort`), which the fold keeps
//! equal to the sum of the rows ([`cohort_counts`]). Reads: one range of
//! the provider's inquiry index per period, one key per conversation, and
//! one range of days per provider; nothing is scanned.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::Serialize;
use utoipa::ToSchema;

use super::metrics::{add_daily, bucket, median};
use super::period::{self, PeriodError};
use crate::config::{BenchmarksConfig, RateBands};
use crate::model::analytics::{ConversationMetrics, DailyAggregate};
use crate::model::report::CohortCounts;
use crate::rules::recommendations::Recommendation;
use crate::rules::script::Context;
use crate::store::{Store, StoreError};

/// A first response counts for the response rate up to this many seconds.
const DAY_SECS: i64 = 86_400;
/// Inquiries first answered within this many seconds are "within 1 hour"
/// in the platform comparison (the end of a `FIRST_RESPONSE_BOUNDS` bucket).
const FAST_SECS: i64 = 3_600;

/// The provider reports' counts of one conversation, zero until it has an
/// inquiry (what `DailyAggregate::cohort` sums by inquiry day).
pub fn cohort_counts(m: &ConversationMetrics) -> CohortCounts {
    if m.inquiry_at.is_none() {
        return CohortCounts::default();
    }
    let mut booked_by_first_response = [0; 8];
    if let (Some(secs), true) = (first_response_secs(m), m.booked_at.is_some()) {
        booked_by_first_response[bucket(secs)] = 1;
    }
    CohortCounts {
        customer_messages: m.messages.customer,
        answered_messages: m.answered,
        provider_messages: m.messages.provider,
        provider_quick_replies: m.provider_quick_replies,
        to_provider: m.to_provider,
        booked_by_first_response,
    }
}

fn first_response_secs(m: &ConversationMetrics) -> Option<i64> {
    m.first_response_at
        .as_ref()
        .and(m.response_secs.first().copied())
}

/// Days `from..=to` in a provider's time zone.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Period {
    /// First day, `YYYY-MM-DD`.
    #[schema(value_type = String)]
    #[serde(serialize_with = "as_text")]
    pub from: Date,
    /// Last day (included).
    #[schema(value_type = String)]
    #[serde(serialize_with = "as_text")]
    pub to: Date,
    pub days: i64,
    /// The instants it covers, RFC 3339: `from` 00:00 in the zone, up to
    /// (not including) the day after `to` 00:00.
    pub start: String,
    pub end: String,
}

fn as_text<S: serde::Serializer>(date: &Date, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(date)
}

/// 00:00 of `day` in `zone` (the first instant of the day when a
/// daylight-saving change skips midnight).
fn midnight(day: Date, zone: &TimeZone) -> Option<Timestamp> {
    let at = day.to_datetime(jiff::civil::Time::midnight());
    zone.to_ambiguous_timestamp(at).compatible().ok()
}

impl Period {
    /// The period `from..=to` (`YYYY-MM-DD`, either absent; see
    /// [`period::days`]) in `zone`.
    pub fn parse(
        from: Option<&str>,
        to: Option<&str>,
        today: Date,
        zone: &TimeZone,
    ) -> Result<Period, PeriodError> {
        let (from, to) = period::days(from, to, today)?;
        Period::new(from, to, zone).ok_or_else(|| PeriodError::NotADate(to.to_string()))
    }

    fn new(from: Date, to: Date, zone: &TimeZone) -> Option<Period> {
        let start = midnight(from, zone)?;
        let end = midnight(to.tomorrow().ok()?, zone)?;
        Some(Period {
            from,
            to,
            days: (to - from).get_days() as i64 + 1,
            start: start.to_string(),
            end: end.to_string(),
        })
    }

    /// The period of equal length ending the day before this one.
    pub fn previous(&self, zone: &TimeZone) -> Option<Period> {
        let to = self.from.yesterday().ok()?;
        let from = to.checked_sub((self.days - 1).days()).ok()?;
        Period::new(from, to, zone)
    }

    /// Its bounds in Unix milliseconds, `[start, end)`.
    fn millis(&self) -> (i64, i64) {
        let ms = |t: &str| t.parse::<Timestamp>().map_or(0, |t| t.as_millisecond());
        (ms(&self.start), ms(&self.end))
    }
}

/// One conversation a report counted: its inquiry in the period, and what
/// each figure took from it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Row {
    pub conversation_id: String,
    pub listing_id: String,
    pub customer_id: String,
    /// The inquiry: the customer's first message, its time and `seq`.
    pub inquiry_at: String,
    pub inquiry_seq: Option<u64>,
    /// The provider's first reply after it.
    pub first_response_at: Option<String>,
    pub first_response_seq: Option<u64>,
    pub first_response_seconds: Option<i64>,
    /// `first_response_seconds` <= 86,400.
    pub answered_within_24h: bool,
    pub booked: bool,
    pub booking_id: Option<String>,
    /// Customer messages, and those a provider reply came after.
    pub customer_messages: u64,
    pub answered_messages: u64,
    /// Provider messages, and those sent with a quick reply.
    pub provider_messages: u64,
    pub provider_quick_replies: u64,
    /// Messages addressed to the provider, and those they read.
    pub messages_to_provider: u64,
    pub read_by_provider: u64,
}

/// A period's figures (README.md, "Provider reports"): counts, and rates
/// between 0 and 1 (`null` when there was nothing to count), durations in
/// seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Figures {
    /// Conversations whose inquiry arrived in the period.
    pub conversations: u64,
    /// Of those, booked; `booking_rate` = booked / conversations.
    pub booked: u64,
    pub booking_rate: Option<f64>,
    /// Of those, first answered, and within 24 hours; `response_rate` =
    /// answered_within_24h / conversations.
    pub answered: u64,
    pub answered_within_24h: u64,
    pub response_rate: Option<f64>,
    /// Over the answered ones' first response times (the median of an even
    /// count is the mean of the middle two). Only the provider's own report
    /// gives the median; the percentile's figures of other providers have
    /// only the average.
    pub median_first_response_seconds: Option<f64>,
    pub average_first_response_seconds: Option<f64>,
    /// read_by_provider / messages_to_provider.
    pub messages_to_provider: u64,
    pub read_by_provider: u64,
    pub read_rate: Option<f64>,
    /// answered_messages / customer_messages.
    pub customer_messages: u64,
    pub answered_messages: u64,
    pub reply_rate: Option<f64>,
    /// provider_quick_replies / provider_messages.
    pub provider_messages: u64,
    pub provider_quick_replies: u64,
    pub quick_reply_rate: Option<f64>,
}

fn rate(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

impl Figures {
    /// The figures of the conversations `rows`.
    pub fn of_rows(rows: &[Row]) -> Figures {
        let count = |f: fn(&Row) -> bool| rows.iter().filter(|r| f(r)).count() as u64;
        let sum = |f: fn(&Row) -> u64| rows.iter().map(f).sum::<u64>();
        let firsts: Vec<i64> = rows
            .iter()
            .filter_map(|r| r.first_response_seconds)
            .collect();
        let mut figures = Figures::from_counts(
            rows.len() as u64,
            count(|r| r.booked),
            firsts.len() as u64,
            count(|r| r.answered_within_24h),
            firsts.iter().sum(),
            &CohortCounts {
                customer_messages: sum(|r| r.customer_messages),
                answered_messages: sum(|r| r.answered_messages),
                provider_messages: sum(|r| r.provider_messages),
                provider_quick_replies: sum(|r| r.provider_quick_replies),
                to_provider: crate::model::analytics::ReadTally {
                    addressed: sum(|r| r.messages_to_provider),
                    read: sum(|r| r.read_by_provider),
                },
                booked_by_first_response: [0; 8],
            },
        );
        figures.median_first_response_seconds = median(&firsts);
        figures
    }

    /// The figures of days summed into `days` (no median: the days keep
    /// sums, not each time).
    pub fn of_days(days: &DailyAggregate) -> Figures {
        Figures::from_counts(
            days.inquiries,
            days.booked,
            days.answered,
            days.answered_within_24h,
            days.first_response_secs,
            &days.cohort,
        )
    }

    fn from_counts(
        conversations: u64,
        booked: u64,
        answered: u64,
        answered_within_24h: u64,
        first_response_secs: i64,
        c: &CohortCounts,
    ) -> Figures {
        Figures {
            conversations,
            booked,
            booking_rate: rate(booked, conversations),
            answered,
            answered_within_24h,
            response_rate: rate(answered_within_24h, conversations),
            median_first_response_seconds: None,
            average_first_response_seconds: (answered > 0)
                .then(|| first_response_secs as f64 / answered as f64),
            messages_to_provider: c.to_provider.addressed,
            read_by_provider: c.to_provider.read,
            read_rate: rate(c.to_provider.read, c.to_provider.addressed),
            customer_messages: c.customer_messages,
            answered_messages: c.answered_messages,
            reply_rate: rate(c.answered_messages, c.customer_messages),
            provider_messages: c.provider_messages,
            provider_quick_replies: c.provider_quick_replies,
            quick_reply_rate: rate(c.provider_quick_replies, c.provider_messages),
        }
    }
}

/// The trend: this period's figure minus the previous period's (`null`
/// when either is).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Change {
    pub conversations: i64,
    pub booking_rate: Option<f64>,
    pub response_rate: Option<f64>,
    pub median_first_response_seconds: Option<f64>,
    pub average_first_response_seconds: Option<f64>,
    pub read_rate: Option<f64>,
    pub reply_rate: Option<f64>,
    pub quick_reply_rate: Option<f64>,
}

impl Change {
    pub fn between(now: &Figures, before: &Figures) -> Change {
        let minus = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        Change {
            conversations: now.conversations as i64 - before.conversations as i64,
            booking_rate: minus(now.booking_rate, before.booking_rate),
            response_rate: minus(now.response_rate, before.response_rate),
            median_first_response_seconds: minus(
                now.median_first_response_seconds,
                before.median_first_response_seconds,
            ),
            average_first_response_seconds: minus(
                now.average_first_response_seconds,
                before.average_first_response_seconds,
            ),
            read_rate: minus(now.read_rate, before.read_rate),
            reply_rate: minus(now.reply_rate, before.reply_rate),
            quick_reply_rate: minus(now.quick_reply_rate, before.quick_reply_rate),
        }
    }
}

/// A band of the performance score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    Excellent,
    Good,
    Average,
    Poor,
}

impl Band {
    /// Its points in the overall score.
    fn points(self) -> f64 {
        match self {
            Band::Excellent => 100.0,
            Band::Good => 75.0,
            Band::Average => 50.0,
            Band::Poor => 25.0,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Band::Excellent => "excellent",
            Band::Good => "good",
            Band::Average => "average",
            Band::Poor => "poor",
        }
    }

    fn of_rate(value: f64, bands: &RateBands) -> Band {
        if value >= bands.excellent {
            Band::Excellent
        } else if value >= bands.good {
            Band::Good
        } else if value >= bands.average {
            Band::Average
        } else {
            Band::Poor
        }
    }
}

/// One metric of the score: its value and band (`null` without a value).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Scored {
    pub value: Option<f64>,
    pub band: Option<Band>,
}

/// The performance score (README.md, "Provider reports").
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Score {
    /// Average first response time, seconds.
    pub first_response: Scored,
    pub booking_rate: Scored,
    pub read_rate: Scored,
    pub reply_rate: Scored,
    /// The mean of the metrics' points (excellent 100, good 75, average 50,
    /// poor 25) over those with a value; `null` with none.
    pub overall: Option<f64>,
    /// The percentile rank of `overall` among the providers with inquiries
    /// in the period (this one included): 100 × (those scoring lower + half
    /// of those scoring the same) / all; `null` without inquiries.
    pub percentile: Option<f64>,
    /// How many providers that is.
    pub providers: u64,
}

/// The score of `figures` against `benchmarks` (no percentile yet).
pub fn score(figures: &Figures, benchmarks: &BenchmarksConfig) -> Score {
    let time = &benchmarks.first_response;
    let first = figures.average_first_response_seconds.map(|secs| {
        let within = |bound: jiff::SignedDuration| secs <= bound.as_secs_f64();
        if within(time.excellent) {
            Band::Excellent
        } else if within(time.good) {
            Band::Good
        } else if within(time.average) {
            Band::Average
        } else {
            Band::Poor
        }
    });
    let scored = |value: Option<f64>, bands: &RateBands| Scored {
        value,
        band: value.map(|v| Band::of_rate(v, bands)),
    };
    let metrics = [
        Scored {
            value: figures.average_first_response_seconds,
            band: first,
        },
        scored(figures.booking_rate, &benchmarks.booking_rate),
        scored(figures.read_rate, &benchmarks.read_rate),
        scored(figures.reply_rate, &benchmarks.reply_rate),
    ];
    let points: Vec<f64> = metrics
        .iter()
        .filter_map(|m| m.band.map(Band::points))
        .collect();
    let overall = (!points.is_empty()).then(|| points.iter().sum::<f64>() / points.len() as f64);
    let [first_response, booking_rate, read_rate, reply_rate] = metrics;
    Score {
        first_response,
        booking_rate,
        read_rate,
        reply_rate,
        overall,
        percentile: None,
        providers: 0,
    }
}

/// The percentile rank of `value` in `population` (which includes it):
/// 100 × (B + E/2) / N with B the values below and E those equal
/// (the "percentile rank" of descriptive statistics, e.g. Crocker &
/// Algina, *Introduction to Classical and Modern Test Theory*, 1986).
pub fn percentile_rank(value: f64, population: &[f64]) -> Option<f64> {
    if population.is_empty() {
        return None;
    }
    let below = population.iter().filter(|&&v| v < value).count() as f64;
    let equal = population.iter().filter(|&&v| v == value).count() as f64;
    Some(100.0 * (below + equal / 2.0) / population.len() as f64)
}

/// The platform comparison the recommendations quote: over every
/// provider's inquiries in the period, the booking rate of those first
/// answered within 1 hour and of those answered later.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Platform {
    pub answered_within_1h: u64,
    pub booked_answered_within_1h: u64,
    pub booking_rate_answered_within_1h: Option<f64>,
    pub answered_later: u64,
    pub booked_answered_later: u64,
    pub booking_rate_answered_later: Option<f64>,
    /// The first rate over the second.
    pub booking_multiple: Option<f64>,
}

impl Platform {
    /// From every provider's days summed into `all`.
    pub fn of(all: &DailyAggregate) -> Platform {
        let fast = bucket(FAST_SECS) + 1;
        let (answered, booked) = (
            &all.first_response_buckets,
            &all.cohort.booked_by_first_response,
        );
        let within = answered[..fast].iter().sum();
        let booked_within = booked[..fast].iter().sum();
        let later = answered[fast..].iter().sum();
        let booked_later = booked[fast..].iter().sum();
        let (fast_rate, later_rate) = (rate(booked_within, within), rate(booked_later, later));
        Platform {
            answered_within_1h: within,
            booked_answered_within_1h: booked_within,
            booking_rate_answered_within_1h: fast_rate,
            answered_later: later,
            booked_answered_later: booked_later,
            booking_rate_answered_later: later_rate,
            booking_multiple: fast_rate
                .zip(later_rate)
                .filter(|(_, later)| *later > 0.0)
                .map(|(fast, later)| fast / later),
        }
    }
}

/// A recommendation shown in a report.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Advice {
    pub id: String,
    pub text: String,
}

/// `GET /v1/providers/{id}/report` (README.md, "Provider reports").
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct Report {
    pub provider_id: String,
    /// The IANA zone whose days the periods are.
    pub time_zone: String,
    pub period: Period,
    pub previous_period: Period,
    pub figures: Figures,
    pub previous: Figures,
    pub change: Change,
    pub score: Score,
    pub platform: Platform,
    pub recommendations: Vec<Advice>,
    /// The conversations `figures` counted, in inquiry order.
    pub conversations: Vec<Row>,
}

/// What a report is made from (see [`gather`]).
pub struct Inputs<'a> {
    pub benchmarks: &'a BenchmarksConfig,
    pub recommendations: &'a [Recommendation],
}

/// What a row takes of a stored `ConversationMetrics`: decoding these
/// fields alone (strings borrowed, the rest skipped) is what keeps a report
/// of thousands of conversations fast.
#[derive(serde::Deserialize)]
struct Kept<'a> {
    #[serde(borrow)]
    conversation_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    listing_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    customer_id: std::borrow::Cow<'a, str>,
    #[serde(default, borrow)]
    inquiry_at: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    inquiry_seq: Option<u64>,
    #[serde(default, borrow)]
    first_response_at: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    first_response_seq: Option<u64>,
    #[serde(default)]
    response_secs: Vec<i64>,
    #[serde(default)]
    booked_at: Option<serde::de::IgnoredAny>,
    #[serde(default, borrow)]
    booking_id: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    messages: KeptCounts,
    #[serde(default)]
    answered: u64,
    #[serde(default)]
    to_provider: crate::model::analytics::ReadTally,
    #[serde(default)]
    provider_quick_replies: u64,
}

#[derive(Default, serde::Deserialize)]
struct KeptCounts {
    #[serde(default)]
    provider: u64,
    #[serde(default)]
    customer: u64,
}

impl Row {
    /// The row of a stored `ConversationMetrics` (JSON), `None` for a
    /// conversation without an inquiry.
    pub fn decode(bytes: &[u8]) -> Result<Option<Row>, serde_json::Error> {
        Ok(serde_json::from_slice::<Kept<'_>>(bytes)?.row())
    }
}

impl Kept<'_> {
    fn row(&self) -> Option<Row> {
        let secs = self
            .first_response_at
            .as_ref()
            .and(self.response_secs.first().copied());
        Some(Row {
            conversation_id: self.conversation_id.to_string(),
            listing_id: self.listing_id.to_string(),
            customer_id: self.customer_id.to_string(),
            inquiry_at: self.inquiry_at.as_ref()?.to_string(),
            inquiry_seq: self.inquiry_seq,
            first_response_at: self.first_response_at.as_ref().map(|t| t.to_string()),
            first_response_seq: self.first_response_seq,
            first_response_seconds: secs,
            answered_within_24h: secs.is_some_and(|s| s <= DAY_SECS),
            booked: self.booked_at.is_some(),
            booking_id: self.booking_id.as_ref().map(|b| b.to_string()),
            customer_messages: self.messages.customer,
            answered_messages: self.answered,
            provider_messages: self.messages.provider,
            provider_quick_replies: self.provider_quick_replies,
            messages_to_provider: self.to_provider.addressed,
            read_by_provider: self.to_provider.read,
        })
    }
}

/// The provider's conversations with an inquiry in `period`, in inquiry
/// order. A record that cannot be decoded is an error (as every store read).
fn rows(store: &Store, provider_id: &str, period: &Period) -> Result<Vec<Row>, StoreError> {
    let (start, end) = period.millis();
    let mut rows = Vec::new();
    for id in store.provider_conversations(provider_id, start, end)? {
        let Some(bytes) = store.conversation_metrics_bytes(&id)? else {
            continue;
        };
        let row = Row::decode(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("metrics of {id}: {e}")))?;
        rows.extend(row);
    }
    Ok(rows)
}

/// Every provider's days of `from..=to` summed (the platform), and the
/// overall scores of those with inquiries then but `provider_id`.
fn others(
    store: &Store,
    provider_id: &str,
    period: &Period,
    benchmarks: &BenchmarksConfig,
) -> Result<(DailyAggregate, Vec<f64>), StoreError> {
    let (from, to) = (period.from.to_string(), period.to.to_string());
    let mut all = DailyAggregate::default();
    let mut population = Vec::new();
    for (provider, _) in store.report_providers()? {
        let mut sum = DailyAggregate::default();
        for (_, day) in store.provider_days(&provider, &from, &to)? {
            add_daily(&mut sum, &day);
        }
        add_daily(&mut all, &sum);
        if provider != provider_id && sum.inquiries > 0 {
            population.extend(score(&Figures::of_days(&sum), benchmarks).overall);
        }
    }
    Ok((all, population))
}

/// Reads what `provider_id`'s report over `period` (days in `zone`) needs
/// and makes it.
pub fn gather(
    store: &Store,
    provider_id: &str,
    zone: &TimeZone,
    period: Period,
    inputs: &Inputs<'_>,
) -> Result<Report, StoreError> {
    let previous_period = period.previous(zone).unwrap_or_else(|| period.clone());
    // The period's rows on this thread, the rest on another: a report over
    // thousands of conversations is mostly decoding, and it splits evenly.
    let (conversations, rest) = std::thread::scope(|scope| {
        let rest = scope.spawn(|| {
            let previous = Figures::of_rows(&rows(store, provider_id, &previous_period)?);
            let (all, population) = others(store, provider_id, &period, inputs.benchmarks)?;
            Ok::<_, StoreError>((previous, all, population))
        });
        let conversations = rows(store, provider_id, &period);
        let rest = rest
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (conversations, rest)
    });
    let conversations = conversations?;
    let (previous, all, mut population) = rest?;
    let figures = Figures::of_rows(&conversations);
    let mut score = score(&figures, inputs.benchmarks);
    if let (Some(own), true) = (score.overall, figures.conversations > 0) {
        population.push(own);
        score.percentile = percentile_rank(own, &population);
        score.providers = population.len() as u64;
    }
    let mut report = Report {
        provider_id: provider_id.to_owned(),
        time_zone: zone.iana_name().unwrap_or("UTC").to_owned(),
        change: Change::between(&figures, &previous),
        period,
        previous_period,
        figures,
        previous,
        score,
        platform: Platform::of(&all),
        recommendations: Vec::new(),
        conversations,
    };
    report.recommendations = advise(&report, inputs.recommendations);
    Ok(report)
}

/// The recommendations whose condition holds for `report`, in file order;
/// one that fails is left out and logged.
pub fn advise(report: &Report, recommendations: &[Recommendation]) -> Vec<Advice> {
    let context = context(report);
    recommendations
        .iter()
        .filter_map(|r| match r.render(&context) {
            Ok(text) => text.map(|text| Advice {
                id: r.id.clone(),
                text,
            }),
            Err(e) => {
                tracing::warn!(recommendation = %r.id, error = %e, "recommendation left out");
                None
            }
        })
        .collect()
}

/// The recommendations' context (the roots and fields of
/// `rules::recommendations`).
pub fn context(report: &Report) -> Context {
    let score = &report.score;
    let band = |s: &Scored| s.band.map(Band::name);
    let platform = &report.platform;
    Context::default()
        .with("figures", &figures_context(&report.figures))
        .with("previous", &figures_context(&report.previous))
        .with(
            "score",
            &serde_json::json!({
                "overall": score.overall,
                "percentile": score.percentile,
                "first_response_band": band(&score.first_response),
                "booking_rate_band": band(&score.booking_rate),
                "read_rate_band": band(&score.read_rate),
                "reply_rate_band": band(&score.reply_rate),
            }),
        )
        .with(
            "platform",
            &serde_json::json!({
                "booking_rate_answered_within_1h": platform.booking_rate_answered_within_1h,
                "booking_rate_answered_later": platform.booking_rate_answered_later,
                "booking_multiple": platform.booking_multiple,
                "booking_multiple_text": platform.booking_multiple.map(|m| format!("{m:.1}")),
            }),
        )
}

fn figures_context(f: &Figures) -> serde_json::Value {
    let percent = |r: Option<f64>| r.map(|r| format!("{:.0}%", r * 100.0));
    let duration = |s: Option<f64>| s.map(duration_text);
    serde_json::json!({
        "conversations": f.conversations,
        "booked": f.booked,
        "booking_rate": f.booking_rate,
        "answered_within_24h": f.answered_within_24h,
        "response_rate": f.response_rate,
        "answered": f.answered,
        "median_first_response_seconds": f.median_first_response_seconds,
        "average_first_response_seconds": f.average_first_response_seconds,
        "read_rate": f.read_rate,
        "reply_rate": f.reply_rate,
        "quick_reply_rate": f.quick_reply_rate,
        "booking_rate_percent": percent(f.booking_rate),
        "response_rate_percent": percent(f.response_rate),
        "read_rate_percent": percent(f.read_rate),
        "reply_rate_percent": percent(f.reply_rate),
        "quick_reply_rate_percent": percent(f.quick_reply_rate),
        "median_first_response": duration(f.median_first_response_seconds),
        "average_first_response": duration(f.average_first_response_seconds),
    })
}

/// A duration for people, to the minute: "45 s", "12 min", "3 h 10 min",
/// "2 d 4 h".
pub fn duration_text(seconds: f64) -> String {
    let secs = seconds.round().max(0.0) as i64;
    let minutes = (secs + 30) / 60;
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3_570 => format!("{minutes} min"),
        s if s < 86_370 => match (minutes / 60, minutes % 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        },
        // Rounded to the hour first, so 1 d 23 h 59 min reads "2 d".
        _ => match ((secs + 1_800) / 3_600 / 24, (secs + 1_800) / 3_600 % 24) {
            (d, 0) => format!("{d} d"),
            (d, h) => format!("{d} d {h} h"),
        },
    }
}

/// The CSV header of [`csv`].
pub const CSV_HEADER: [&str; 17] = [
    "conversation_id",
    "listing_id",
    "customer_id",
    "inquiry_at",
    "inquiry_seq",
    "first_response_at",
    "first_response_seq",
    "first_response_seconds",
    "answered_within_24h",
    "booked",
    "booking_id",
    "customer_messages",
    "answered_messages",
    "provider_messages",
    "provider_quick_replies",
    "messages_to_provider",
    "read_by_provider",
];

/// The report's rows as CSV (RFC 4180: one header line, one line per
/// conversation, fields quoted when they hold commas, quotes or line
/// breaks; empty for an absent value).
pub fn csv(rows: &[Row]) -> Result<String, csv::Error> {
    let mut out = csv::Writer::from_writer(Vec::new());
    out.write_record(CSV_HEADER)?;
    let opt = |v: Option<String>| v.unwrap_or_default();
    for r in rows {
        out.write_record([
            r.conversation_id.clone(),
            r.listing_id.clone(),
            r.customer_id.clone(),
            r.inquiry_at.clone(),
            opt(r.inquiry_seq.map(|s| s.to_string())),
            opt(r.first_response_at.clone()),
            opt(r.first_response_seq.map(|s| s.to_string())),
            opt(r.first_response_seconds.map(|s| s.to_string())),
            r.answered_within_24h.to_string(),
            r.booked.to_string(),
            opt(r.booking_id.clone()),
            r.customer_messages.to_string(),
            r.answered_messages.to_string(),
            r.provider_messages.to_string(),
            r.provider_quick_replies.to_string(),
            r.messages_to_provider.to_string(),
            r.read_by_provider.to_string(),
        ])?;
    }
    let bytes = out.into_inner().map_err(|e| e.into_error())?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The report for people (`parleyd report`'s default).
pub fn text(report: &Report) -> String {
    use std::fmt::Write;
    let f = &report.figures;
    let p = &report.previous;
    let percent = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let time = |s: Option<f64>| s.map_or("-".to_owned(), duration_text);
    let mut out = String::new();
    let period = &report.period;
    let _ = writeln!(
        out,
        "Provider {} — {} to {} ({} days, {})",
        report.provider_id, period.from, period.to, period.days, report.time_zone
    );
    let prev = &report.previous_period;
    let _ = writeln!(out, "previous period: {} to {}\n", prev.from, prev.to);
    let _ = writeln!(out, "{:<28} {:>12} {:>12}", "", "period", "previous");
    let mut line = |name: &str, now: String, before: String| {
        let _ = writeln!(out, "{name:<28} {now:>12} {before:>12}");
    };
    line(
        "conversations",
        f.conversations.to_string(),
        p.conversations.to_string(),
    );
    line(
        "booking rate",
        percent(f.booking_rate),
        percent(p.booking_rate),
    );
    line(
        "response rate (24 h)",
        percent(f.response_rate),
        percent(p.response_rate),
    );
    line(
        "median first response",
        time(f.median_first_response_seconds),
        time(p.median_first_response_seconds),
    );
    line(
        "average first response",
        time(f.average_first_response_seconds),
        time(p.average_first_response_seconds),
    );
    line("read rate", percent(f.read_rate), percent(p.read_rate));
    line("reply rate", percent(f.reply_rate), percent(p.reply_rate));
    line(
        "quick-reply usage",
        percent(f.quick_reply_rate),
        percent(p.quick_reply_rate),
    );
    let s = &report.score;
    let band = |m: &Scored| m.band.map_or("-", Band::name);
    let _ = writeln!(
        out,
        "\nscore {} (first response {}, booking {}, read {}, reply {}); percentile {} of {} providers",
        s.overall.map_or("-".to_owned(), |o| format!("{o:.0}")),
        band(&s.first_response),
        band(&s.booking_rate),
        band(&s.read_rate),
        band(&s.reply_rate),
        s.percentile.map_or("-".to_owned(), |p| format!("{p:.0}")),
        s.providers
    );
    if !report.recommendations.is_empty() {
        let _ = writeln!(out, "\nrecommendations:");
        for advice in &report.recommendations {
            let _ = writeln!(out, "- {}", advice.text);
        }
    }
    let _ = writeln!(
        out,
        "\n{} conversations listed (--format csv or json for the rows)",
        report.conversations.len()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::metrics::{fold, Fact, MessageFact};
    use crate::domain::Stage;

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn day(text: &str) -> Date {
        text.parse().unwrap()
    }

    #[test]
    fn periods_start_and_end_at_midnight_in_the_zone() {
        let paris = zone("Europe/Paris");
        let today = day("2030-07-31");
        let p = Period::parse(None, None, today, &paris).unwrap();
        assert_eq!((p.from, p.to, p.days), (day("2030-07-02"), today, 30));
        // Midnight in Paris (summer: UTC+2).
        assert_eq!(p.start, "2030-07-01T22:00:00Z");
        assert_eq!(p.end, "2030-07-31T22:00:00Z");
        let prev = p.previous(&paris).unwrap();
        assert_eq!(
            (prev.from, prev.to, prev.days),
            (day("2030-06-02"), day("2030-07-01"), 30)
        );
        // A day of 23 hours: the spring change in Paris.
        let spring = Period::parse(Some("2030-03-31"), Some("2030-03-31"), today, &paris).unwrap();
        assert_eq!(spring.start, "2030-03-30T23:00:00Z");
        assert_eq!(spring.end, "2030-03-31T22:00:00Z");
    }

    #[test]
    fn percentile_rank_counts_half_the_ties() {
        assert_eq!(percentile_rank(50.0, &[]), None);
        assert_eq!(
            percentile_rank(75.0, &[25.0, 50.0, 75.0, 100.0]),
            Some(62.5)
        );
        assert_eq!(percentile_rank(50.0, &[50.0, 50.0]), Some(50.0));
        assert_eq!(percentile_rank(100.0, &[100.0]), Some(50.0));
    }

    #[test]
    fn each_metric_gets_its_band_and_the_overall_score_averages_them() {
        let benchmarks = BenchmarksConfig::default();
        let figures = Figures {
            average_first_response_seconds: Some(3_600.0),
            booking_rate: Some(0.2),
            read_rate: Some(0.5),
            reply_rate: None,
            ..Figures::default()
        };
        let s = score(&figures, &benchmarks);
        assert_eq!(
            s.first_response.band,
            Some(Band::Excellent),
            "1 h is within 1 h"
        );
        assert_eq!(s.booking_rate.band, Some(Band::Good));
        assert_eq!(s.read_rate.band, Some(Band::Poor));
        assert_eq!(s.reply_rate.band, None);
        assert_eq!(s.overall, Some((100.0 + 75.0 + 25.0) / 3.0));
        assert_eq!(score(&Figures::default(), &benchmarks).overall, None);
    }

    #[test]
    fn durations_read_to_the_minute() {
        assert_eq!(duration_text(45.0), "45 s");
        assert_eq!(duration_text(600.0), "10 min");
        assert_eq!(duration_text(11_400.0), "3 h 10 min");
        assert_eq!(duration_text(3_600.0), "1 h");
        assert_eq!(duration_text(3_590.0), "1 h");
        assert_eq!(duration_text(187_200.0), "2 d 4 h");
        // 1 d 23 h 59 min: no "1 d 24 h".
        assert_eq!(duration_text(172_740.0), "2 d");
        assert_eq!(duration_text(86_400.0 + 5_370.0), "1 d 1 h");
    }

    fn row(id: &str) -> Row {
        Row {
            conversation_id: id.into(),
            listing_id: "l".into(),
            customer_id: "c".into(),
            inquiry_at: "2030-07-01T10:00:00Z".into(),
            inquiry_seq: Some(1),
            first_response_at: None,
            first_response_seq: None,
            first_response_seconds: None,
            answered_within_24h: false,
            booked: false,
            booking_id: None,
            customer_messages: 1,
            answered_messages: 0,
            provider_messages: 0,
            provider_quick_replies: 0,
            messages_to_provider: 1,
            read_by_provider: 0,
        }
    }

    #[test]
    fn csv_quotes_fields_with_commas_and_quotes() {
        let text = csv(&[row("a,b"), row("say \"hi\"")]).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER.join(","));
        assert!(lines[1].starts_with("\"a,b\",l,c,"), "{}", lines[1]);
        assert!(
            lines[2].starts_with("\"say \"\"hi\"\"\",l,c,"),
            "{}",
            lines[2]
        );
        assert!(lines[1].ends_with(",1,0,0,0,1,0"), "{}", lines[1]);
    }

    fn says(sender: &str, seq: u64, quick_reply: bool) -> Fact {
        Fact::Message(MessageFact {
            sender: sender.into(),
            automated: false,
            recipient: None,
            chars: 2,
            quick_reply,
            priced: false,
            seq: Some(seq),
        })
    }

    fn read(reader: &str, count: u64) -> Fact {
        Fact::Read {
            reader: reader.into(),
            count,
        }
    }

    /// The days' cohort counts, summed, give the same figures as the rows of
    /// the same conversations (the percentile's figures of other providers
    /// are the ones their own report shows), whenever activity happens.
    #[test]
    fn summed_days_give_the_figures_of_the_rows() {
        let mut days = DailyAggregate::default();
        let mut rows = Vec::new();
        let conversation = |id: &str| ConversationMetrics {
            conversation_id: id.into(),
            customer_id: "cust".into(),
            provider_id: "prov".into(),
            zone: "UTC".into(),
            ..ConversationMetrics::default()
        };
        let scripts: Vec<Vec<(Fact, &str)>> = vec![
            // Provider writes first; the inquiry brings it along; a quick
            // reply answers after 2 h, the booking a week later.
            vec![
                (says("prov", 1, false), "2030-07-01T08:00:00Z"),
                (says("cust", 2, false), "2030-07-01T09:00:00Z"),
                (read("prov", 1), "2030-07-01T10:00:00Z"),
                (says("prov", 3, true), "2030-07-01T11:00:00Z"),
                (
                    Fact::Booked {
                        booking_id: "b".into(),
                        stage: Stage::Confirmed,
                    },
                    "2030-07-08T11:00:00Z",
                ),
            ],
            // Answered after two days, a follow-up never answered or read.
            vec![
                (says("cust", 1, false), "2030-07-02T09:00:00Z"),
                (says("prov", 2, false), "2030-07-04T10:00:00Z"),
                (says("cust", 3, false), "2030-07-04T11:00:00Z"),
            ],
            // Never answered, booked before the inquiry.
            vec![
                (
                    Fact::Booked {
                        booking_id: "b3".into(),
                        stage: Stage::Confirmed,
                    },
                    "2030-07-03T08:00:00Z",
                ),
                (says("cust", 1, false), "2030-07-03T09:00:00Z"),
                (read("prov", 1), "2030-07-09T09:00:00Z"),
            ],
        ];
        for (i, script) in scripts.iter().enumerate() {
            let mut m = conversation(&format!("c{i}"));
            for (fact, at) in script {
                for (_, delta) in fold(&mut m, fact, at).days {
                    add_daily(&mut days, &delta);
                }
            }
            rows.extend(Row::decode(&serde_json::to_vec(&m).unwrap()).unwrap());
        }
        let from_rows = Figures::of_rows(&rows);
        let from_days = Figures::of_days(&days);
        assert_eq!(
            Figures {
                median_first_response_seconds: None,
                ..from_rows.clone()
            },
            from_days
        );
        assert_eq!(from_rows.conversations, 3);
        assert_eq!(
            (
                from_rows.booked,
                from_rows.answered,
                from_rows.answered_within_24h
            ),
            (2, 2, 1)
        );
        assert_eq!(
            from_rows.median_first_response_seconds,
            Some((7_200.0 + 176_400.0) / 2.0)
        );
        assert_eq!(
            (from_rows.read_by_provider, from_rows.messages_to_provider),
            (2, 4)
        );
        assert_eq!(
            (from_rows.answered_messages, from_rows.customer_messages),
            (2, 4)
        );
        assert_eq!(
            (
                from_rows.provider_quick_replies,
                from_rows.provider_messages
            ),
            (1, 3)
        );
        assert_eq!(rows[0].inquiry_seq, Some(2));
        assert_eq!(rows[0].first_response_seq, Some(3));
        // Booked and answered within 1 h? No: 2 h, the fourth bucket.
        assert_eq!(days.cohort.booked_by_first_response[3], 1);
        let platform = Platform::of(&days);
        assert_eq!(
            (platform.answered_within_1h, platform.answered_later),
            (0, 2)
        );
        assert_eq!(platform.booking_rate_answered_later, Some(0.5));
        assert_eq!(platform.booking_multiple, None);
    }

    /// The context gives exactly the fields `rules::recommendations`
    /// declares (which `parleyd check` validates placeholders against).
    #[test]
    fn the_recommendations_context_has_the_declared_fields() {
        use crate::rules::recommendations::ROOTS;
        let report = Report {
            provider_id: "p".into(),
            time_zone: "UTC".into(),
            period: Period::parse(None, None, day("2030-07-31"), &TimeZone::UTC).unwrap(),
            previous_period: Period::parse(None, None, day("2030-07-01"), &TimeZone::UTC).unwrap(),
            figures: Figures::default(),
            previous: Figures::default(),
            change: Change::between(&Figures::default(), &Figures::default()),
            score: score(&Figures::default(), &BenchmarksConfig::default()),
            platform: Platform::of(&DailyAggregate::default()),
            recommendations: Vec::new(),
            conversations: Vec::new(),
        };
        let context = context(&report);
        for (root, fields) in ROOTS {
            let value = context.lookup(&[root.to_string()]).unwrap();
            let mut given: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(|k| k.as_str())
                .collect();
            let mut declared: Vec<&str> = fields.unwrap().to_vec();
            given.sort_unstable();
            declared.sort_unstable();
            assert_eq!(given, declared, "{root}");
        }
    }
}
