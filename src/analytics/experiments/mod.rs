//! A/B experiments at run time: which variant a unit gets ([`decide`]),
//! recording its first exposure ([`expose`]), folding later domain events
//! into conversions and guardrails ([`record`]), and the results per variant
//! ([`results`]). Decisions are plain functions over records; the store
//! (`store::experiments`) keeps the records.
//!
//! Assignment: the unit id hashed with the experiment name as seed, the way
//! GrowthBook's SDKs do ([`hash`]), into buckets sized by the weights; the
//! variant a unit gets at its first exposure is stored and wins over the hash
//! from then on, so a weight change, a reload or a restart never moves a unit
//! that saw a variant. Outside its `start`..`stop` an experiment gives
//! everyone control and records nothing.

pub mod hash;
pub mod stats;

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

use crate::domain::{DomainEvent, Subject};
use crate::model::experiment::{Exposure, Metric, MetricKind, Tally, UnitExposures, UnitKind};
use crate::model::format_time;
use crate::rules::experiments::{Experiment, Guardrail};
use crate::store::{AnalyticsTx, TxError};

/// The p-value under which exposures are said not to follow the weights.
pub const SAMPLE_RATIO_ALARM_P: f64 = 0.001;

/// The id of the unit of `kind` that `subject` names.
pub fn unit_id(kind: UnitKind, subject: &Subject) -> Option<&str> {
    match kind {
        UnitKind::Customer => subject.customer_id.as_deref(),
        UnitKind::Provider => subject.provider_id.as_deref(),
        UnitKind::Conversation => subject.conversation_id.as_deref(),
    }
}

/// A unit's first exposure, to be written (see [`expose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewExposure {
    pub experiment: String,
    pub variant: String,
    pub unit: UnitKind,
    pub unit_id: String,
    pub at: String,
    pub metric: Metric,
}

/// What a unit gets in an experiment that applies to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Index into the experiment's variants.
    pub variant: usize,
    /// Its first exposure, when this is it.
    pub exposure: Option<NewExposure>,
}

/// The variant the unit `unit_id` gets in `experiment` at `now`, given its
/// stored exposures and what the batch being written exposed already
/// (`pending`: experiment name to variant name). `None` when the experiment
/// does not apply: it is not running (everyone gets control, nothing is
/// logged), or there is no such unit. `pin` (a variant name, from
/// `parleyd test-rules`) overrides the hash and the time window. A stored
/// variant that the rules no longer have gives control.
pub fn decide(
    experiment: &Experiment,
    unit_id: Option<&str>,
    stored: &UnitExposures,
    pending: Option<&str>,
    now: jiff::Timestamp,
    pin: Option<&str>,
) -> Option<Decision> {
    let pinned = pin.and_then(|p| experiment.variant(p));
    if pinned.is_none() && !experiment.running(now) {
        return None;
    }
    let unit_id = unit_id?;
    let earlier = stored
        .experiments
        .get(&experiment.name)
        .map(|e| e.variant.as_str())
        .or(pending);
    if let Some(name) = earlier {
        return Some(Decision {
            variant: experiment.variant(name).unwrap_or(0),
            exposure: None,
        });
    }
    let variant =
        pinned.unwrap_or_else(|| hash::assign(&experiment.name, unit_id, &experiment.weights()));
    Some(Decision {
        variant,
        exposure: Some(NewExposure {
            experiment: experiment.name.clone(),
            variant: experiment.variants[variant].name.clone(),
            unit: experiment.unit,
            unit_id: unit_id.to_owned(),
            at: format_time(now),
            metric: experiment.metric,
        }),
    })
}

/// Records a first exposure: the unit's variant from now on, and one more
/// exposure on its variant's tally. `false` (nothing written) if the unit was
/// exposed already: the first exposure stands.
pub fn expose(tx: &AnalyticsTx<'_, '_>, new: &NewExposure) -> Result<bool, TxError> {
    let mut record = tx.unit_exposures(new.unit, &new.unit_id)?;
    if record.experiments.contains_key(&new.experiment) {
        return Ok(false);
    }
    record.experiments.insert(
        new.experiment.clone(),
        Exposure {
            variant: new.variant.clone(),
            exposed_at: new.at.clone(),
            metric: new.metric,
            converted_at: None,
            unsubscribed: false,
        },
    );
    tx.put_unit_exposures(new.unit, &new.unit_id, &record)?;
    let mut tally = tx.tally(&new.experiment, &new.variant)?;
    tally.exposures += 1;
    tx.put_tally(&new.experiment, &new.variant, &tally)
        .map(|()| true)
}

/// What an event can count for an exposed unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counts {
    Booking,
    /// A person's message; `blocked` when moderation refused it.
    Message {
        blocked: bool,
    },
    Unsubscribe,
}

/// The units of each kind an event is about, for what it counts: a booking
/// counts for its customer, provider and conversation; a message or a block
/// for its sender as customer or provider, and for its conversation; an
/// unsubscribe for the user who sent it, as either, and for its conversation.
fn units(counts: Counts, subject: &Subject) -> Vec<(UnitKind, &str)> {
    let sender = subject.user_id.as_deref();
    let sent_as = |party: &Option<String>| sender.filter(|s| party.as_deref() == Some(*s));
    let (customer, provider) = match counts {
        Counts::Booking => (
            subject.customer_id.as_deref(),
            subject.provider_id.as_deref(),
        ),
        Counts::Message { .. } => (sent_as(&subject.customer_id), sent_as(&subject.provider_id)),
        Counts::Unsubscribe => (sender, sender),
    };
    [
        (UnitKind::Customer, customer),
        (UnitKind::Provider, provider),
        (UnitKind::Conversation, subject.conversation_id.as_deref()),
    ]
    .into_iter()
    .filter_map(|(kind, id)| Some((kind, id?)))
    .collect()
}

/// Folds one domain event into the experiments' conversions and guardrails
/// (once per event: [`crate::analytics::record`] calls it exactly once). Events that
/// count: `booking_created` (metric `booked_within`), a person's
/// `message_sent` (`replied_within`), `message_blocked` and `unsubscribed`
/// (guardrails). For each exposed unit the event is about, at or after its
/// exposure: a conversion if the metric matches, the unit has not converted
/// and the event is within the window; an unsubscribe once per unit; every
/// blocked message. Reads one record per unit named, writes only what
/// changes.
pub fn record(tx: &AnalyticsTx<'_, '_>, event: &DomainEvent) -> Result<(), TxError> {
    let counts = if event.is("booking_created") {
        Counts::Booking
    } else if event.name == "message_sent" {
        Counts::Message { blocked: false }
    } else if event.name == "message_blocked" {
        Counts::Message { blocked: true }
    } else if event.name == "unsubscribed" {
        Counts::Unsubscribe
    } else {
        return Ok(());
    };
    let Ok(at) = event.at.parse::<jiff::Timestamp>() else {
        return Ok(());
    };
    for (kind, id) in units(counts, &event.subject) {
        let mut record = tx.unit_exposures(kind, id)?;
        let mut tallies: Vec<(String, String, Tally)> = Vec::new();
        // Conversions and unsubscribes are marked on the record (counted
        // once); blocked messages only on the tally.
        let mut marked = false;
        for (experiment, exposure) in &mut record.experiments {
            let Ok(exposed_at) = exposure.exposed_at.parse::<jiff::Timestamp>() else {
                continue;
            };
            // Strictly after: an event at the exposure's very instant (the
            // manual clock gives many) may have come before it.
            if at <= exposed_at {
                continue;
            }
            let mut delta = Tally::default();
            match counts {
                Counts::Booking | Counts::Message { blocked: false } => {
                    let kind = match counts {
                        Counts::Booking => MetricKind::Booked,
                        _ => MetricKind::Replied,
                    };
                    let within = at.duration_since(exposed_at).as_millis()
                        <= i128::from(exposure.metric.window_ms);
                    if exposure.metric.kind == kind && exposure.converted_at.is_none() && within {
                        exposure.converted_at = Some(event.at.clone());
                        delta.conversions = 1;
                        marked = true;
                    }
                }
                Counts::Message { blocked: true } => delta.blocked_messages = 1,
                Counts::Unsubscribe if !exposure.unsubscribed => {
                    exposure.unsubscribed = true;
                    delta.unsubscribes = 1;
                    marked = true;
                }
                Counts::Unsubscribe => {}
            }
            if delta != Tally::default() {
                tallies.push((experiment.clone(), exposure.variant.clone(), delta));
            }
        }
        if marked {
            tx.put_unit_exposures(kind, id, &record)?;
        }
        for (experiment, variant, delta) in tallies {
            let mut tally = tx.tally(&experiment, &variant)?;
            tally.conversions += delta.conversions;
            tally.unsubscribes += delta.unsubscribes;
            tally.blocked_messages += delta.blocked_messages;
            tx.put_tally(&experiment, &variant, &tally)?;
        }
    }
    Ok(())
}

/// Forgets every conversion and guardrail count, keeping who was exposed to
/// which variant and when (that is not in the history a rebuild reads):
/// `parleyd analytics rebuild` then folds them again from the history.
pub fn reset_outcomes(store: &crate::store::Store) -> Result<(), crate::store::StoreError> {
    store.map_unit_exposures(|mut unit| {
        for exposure in unit.experiments.values_mut() {
            exposure.converted_at = None;
            exposure.unsubscribed = false;
        }
        unit
    })?;
    store.map_tallies(|t| Tally {
        exposures: t.exposures,
        ..Tally::default()
    })
}

/// Whether the experiment runs, has not started or has stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Scheduled,
    Running,
    Stopped,
}

/// One variant's results.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VariantResult {
    pub name: String,
    pub weight: f64,
    /// The first variant: what the others are compared with.
    pub control: bool,
    /// Units exposed (their first exposure fell in this variant).
    pub exposures: u64,
    /// Exposed units that converted within the metric's window.
    pub conversions: u64,
    /// conversions / exposures; null without exposures.
    pub conversion_rate: Option<f64>,
    /// The Wilson score 95% interval of the conversion rate, `[low, high]`.
    pub interval_95: Option<[f64; 2]>,
    /// (rate − control's rate) / control's rate; null for control, or when
    /// control's rate is 0 or unknown.
    pub uplift: Option<f64>,
    /// P(this variant's true rate > control's), Beta-Binomial with uniform
    /// Beta(1, 1) priors, closed form; null for control.
    pub chance_to_beat_control: Option<f64>,
    /// Exposed units that unsubscribed since (guardrail `unsubscribes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsubscribes: Option<u64>,
    /// Messages of exposed units blocked by moderation since (guardrail
    /// `blocked_messages`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blocked_messages: Option<u64>,
    /// Set while exposures are under `min_sample`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The sample-ratio check: do exposures follow the weights?
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SampleRatio {
    /// Pearson chi-squared statistic's p-value (k − 1 degrees of freedom);
    /// null without exposures.
    pub p_value: Option<f64>,
    /// p < 0.001: the split is not what the weights say (a bug in
    /// exposure, or weights changed while units were being exposed).
    pub mismatch: bool,
}

/// `GET /v1/admin/experiments/{name}`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ExperimentResults {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub file: String,
    pub sequence: String,
    pub unit: UnitKind,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<String>,
    /// The primary metric: `booked` or `replied`, within `window_ms`.
    pub metric: Metric,
    pub guardrails: Vec<Guardrail>,
    pub min_sample: u64,
    pub variants: Vec<VariantResult>,
    pub sample_ratio: SampleRatio,
}

/// The results of `experiment` at `now` from its variants' tallies (by
/// variant name; a variant without one has counted nothing).
pub fn results(
    experiment: &Experiment,
    tallies: &BTreeMap<String, Tally>,
    now: jiff::Timestamp,
) -> ExperimentResults {
    let tally = |name: &str| tallies.get(name).copied().unwrap_or_default();
    let control = experiment
        .variants
        .first()
        .map(|v| tally(&v.name))
        .unwrap_or_default();
    let rate = |t: Tally| (t.exposures > 0).then(|| t.conversions as f64 / t.exposures as f64);
    let guarded = |g: Guardrail, value: u64| experiment.guardrails.contains(&g).then_some(value);
    let variants = experiment
        .variants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let t = tally(&v.name);
            let is_control = i == 0;
            let uplift = match (is_control, rate(t), rate(control)) {
                (false, Some(r), Some(c)) if c > 0.0 => Some((r - c) / c),
                _ => None,
            };
            VariantResult {
                name: v.name.clone(),
                weight: v.weight,
                control: is_control,
                exposures: t.exposures,
                conversions: t.conversions,
                conversion_rate: rate(t),
                interval_95: stats::wilson(t.conversions, t.exposures).map(|(l, h)| [l, h]),
                uplift,
                chance_to_beat_control: (!is_control).then(|| {
                    stats::chance_to_beat(
                        (control.conversions, control.exposures),
                        (t.conversions, t.exposures),
                    )
                }),
                unsubscribes: guarded(Guardrail::Unsubscribes, t.unsubscribes),
                blocked_messages: guarded(Guardrail::BlockedMessages, t.blocked_messages),
                note: (t.exposures < experiment.min_sample).then(|| {
                    format!(
                        "{} of the {} exposures min_sample asks for: too few to conclude",
                        t.exposures, experiment.min_sample
                    )
                }),
            }
        })
        .collect::<Vec<_>>();
    let observed: Vec<u64> = variants.iter().map(|v| v.exposures).collect();
    let p_value = stats::sample_ratio_p(&observed, &experiment.weights());
    let status = if experiment.start.is_some_and(|s| now < s) {
        Status::Scheduled
    } else if experiment.running(now) {
        Status::Running
    } else {
        Status::Stopped
    };
    ExperimentResults {
        name: experiment.name.clone(),
        description: experiment.description.clone(),
        file: experiment.file.clone(),
        sequence: experiment.sequence.clone(),
        unit: experiment.unit,
        status,
        start: experiment.start.map(format_time),
        stop: experiment.stop.map(format_time),
        metric: experiment.metric,
        guardrails: experiment.guardrails.clone(),
        min_sample: experiment.min_sample,
        variants,
        sample_ratio: SampleRatio {
            p_value,
            mismatch: p_value.is_some_and(|p| p < SAMPLE_RATIO_ALARM_P),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::experiments::Variant;

    fn experiment(weights: [f64; 2]) -> Experiment {
        Experiment {
            name: "seed".into(),
            description: None,
            file: "rules/x.yaml".into(),
            sequence: "s".into(),
            unit: UnitKind::Customer,
            variants: ["control", "brief"]
                .into_iter()
                .zip(weights)
                .map(|(name, weight)| Variant {
                    name: name.into(),
                    weight,
                    steps: Vec::new(),
                })
                .collect(),
            start: Some("2030-01-01T00:00:00Z".parse().unwrap()),
            stop: Some("2030-02-01T00:00:00Z".parse().unwrap()),
            metric: Metric {
                kind: MetricKind::Booked,
                window_ms: 7 * 86_400_000,
            },
            guardrails: vec![Guardrail::Unsubscribes],
            min_sample: 100,
        }
    }

    fn at(text: &str) -> jiff::Timestamp {
        text.parse().unwrap()
    }

    fn stored(variant: &str) -> UnitExposures {
        let exposure = Exposure {
            variant: variant.into(),
            exposed_at: "2030-01-02T00:00:00Z".into(),
            metric: experiment([1.0, 1.0]).metric,
            converted_at: None,
            unsubscribed: false,
        };
        UnitExposures {
            experiments: [("seed".to_owned(), exposure)].into(),
        }
    }

    #[test]
    fn a_first_exposure_follows_the_hash_then_the_stored_variant_wins() {
        let none = UnitExposures::default();
        let now = at("2030-01-10T00:00:00Z");
        // hash_v2("seed", "a") = 0.0505 (GrowthBook's vector): control at
        // 50/50, brief when control has 5%.
        let first = decide(&experiment([1.0, 1.0]), Some("a"), &none, None, now, None).unwrap();
        assert_eq!(first.variant, 0);
        let exposure = first.exposure.unwrap();
        assert_eq!(
            (exposure.variant.as_str(), exposure.unit_id.as_str()),
            ("control", "a")
        );
        assert_eq!(exposure.at, "2030-01-10T00:00:00.000Z");
        let reweighted = experiment([5.0, 95.0]);
        assert_eq!(
            decide(&reweighted, Some("a"), &none, None, now, None)
                .unwrap()
                .variant,
            1
        );
        // Exposed to control before the weights changed: control, no new exposure.
        let kept = decide(&reweighted, Some("a"), &stored("control"), None, now, None).unwrap();
        assert_eq!((kept.variant, kept.exposure), (0, None));
        // Exposed earlier in the same batch: the same.
        let pending = decide(&reweighted, Some("a"), &none, Some("control"), now, None).unwrap();
        assert_eq!((pending.variant, pending.exposure), (0, None));
        // A stored variant the rules dropped gives control.
        let gone = decide(&reweighted, Some("a"), &stored("removed"), None, now, None).unwrap();
        assert_eq!((gone.variant, gone.exposure), (0, None));
    }

    #[test]
    fn outside_its_window_or_without_a_unit_an_experiment_does_not_apply_unless_pinned() {
        let e = experiment([1.0, 1.0]);
        let none = UnitExposures::default();
        for now in ["2029-12-31T23:59:59Z", "2030-02-01T00:00:00Z"] {
            assert_eq!(
                decide(&e, Some("a"), &none, None, at(now), None),
                None,
                "{now}"
            );
            assert_eq!(
                decide(&e, Some("a"), &stored("brief"), None, at(now), None),
                None
            );
            let pinned = decide(&e, Some("a"), &none, None, at(now), Some("brief")).unwrap();
            assert_eq!(pinned.variant, 1, "a pin applies whatever the time");
        }
        let inside = at("2030-01-01T00:00:00Z");
        assert!(
            decide(&e, Some("a"), &none, None, inside, None).is_some(),
            "start included"
        );
        assert_eq!(decide(&e, None, &none, None, inside, None), None);
        // An unknown pin is no pin.
        assert_eq!(
            decide(
                &e,
                Some("a"),
                &none,
                None,
                at("2031-01-01T00:00:00Z"),
                Some("x")
            ),
            None
        );
    }

    #[test]
    fn results_derive_rates_uplift_and_notes_from_the_tallies() {
        let e = experiment([1.0, 1.0]);
        let tally = |exposures, conversions| Tally {
            exposures,
            conversions,
            unsubscribes: 1,
            blocked_messages: 2,
        };
        let tallies = [
            ("control".to_owned(), tally(100, 10)),
            ("brief".to_owned(), tally(100, 20)),
        ]
        .into();
        let r = results(&e, &tallies, at("2030-01-10T00:00:00Z"));
        assert_eq!(r.status, Status::Running);
        let (control, brief) = (&r.variants[0], &r.variants[1]);
        assert!(control.control && !brief.control);
        assert_eq!(brief.conversion_rate, Some(0.2));
        assert!(
            (brief.uplift.unwrap() - 1.0).abs() < 1e-12,
            "20% against 10%"
        );
        assert_eq!(control.uplift, None);
        assert_eq!(control.chance_to_beat_control, None);
        assert_eq!(
            brief.chance_to_beat_control,
            Some(stats::chance_to_beat((10, 100), (20, 100)))
        );
        assert_eq!(
            brief.interval_95,
            stats::wilson(20, 100).map(|(l, h)| [l, h])
        );
        // Only the guardrails asked for are shown.
        assert_eq!(
            (brief.unsubscribes, brief.blocked_messages),
            (Some(1), None)
        );
        // 100 exposures meet min_sample 100.
        assert_eq!(brief.note, None);
        assert_eq!(r.sample_ratio.p_value, Some(1.0));
        assert!(!r.sample_ratio.mismatch);

        let r = results(&e, &BTreeMap::new(), at("2030-03-01T00:00:00Z"));
        assert_eq!(r.status, Status::Stopped);
        assert_eq!(r.variants[1].conversion_rate, None);
        assert!(r.variants[1].note.is_some(), "0 of 100");
        assert_eq!(r.sample_ratio.p_value, None);
        let r = results(&e, &BTreeMap::new(), at("2029-03-01T00:00:00Z"));
        assert_eq!(r.status, Status::Scheduled);
    }
}
