//! A/B experiments on sequence steps, written in any `rules/*.yaml` file under
//! `experiments:`:
//!
//! ```yaml
//! experiments:
//!   - name: follow_up_wording
//!     sequence: inquiry_follow_up
//!     unit: customer                  # customer, provider or conversation
//!     start: 2026-01-01T00:00:00Z     # optional; outside start..stop everyone
//!     stop: 2026-03-01T00:00:00Z      # gets control and nothing is logged
//!     metric: { booked_within: 7d }   # or { replied_within: 24h }
//!     guardrails: [unsubscribes, blocked_messages]
//!     min_sample: 200                 # per variant
//!     variants:
//!       - { name: control, weight: 50 }            # the first is control
//!       - name: short
//!         weight: 50
//!         swap:
//!           - { step: follow_up, template: inquiry_follow_up_short }
//!           - { step: final_nudge, after: 48h }
//! ```
//!
//! A swap names a step of the experiment's sequence and gives it another
//! `template`, another delay (`after`), or replaces it whole (`replace:`, a
//! step as in a sequence, with the same name). Validation: names unique
//! lower_snake_case, weights positive, the sequence, steps and templates
//! exist, at most one experiment swaps a given step.

use std::collections::BTreeSet;

use serde::Deserialize;

use super::sequences::{is_name, Sequence, SpecError, Step, StepSpec};
use crate::model::experiment::{Metric, MetricKind, UnitKind};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The sequence whose steps the variants swap.
    pub sequence: String,
    pub unit: UnitKind,
    pub variants: Vec<VariantSpec>,
    /// RFC 3339; absent: from the start.
    #[serde(default)]
    pub start: Option<String>,
    /// RFC 3339; absent: no end.
    #[serde(default)]
    pub stop: Option<String>,
    pub metric: MetricSpec,
    #[serde(default)]
    pub guardrails: Vec<Guardrail>,
    /// Exposures per variant under which results carry a note.
    #[serde(default)]
    pub min_sample: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricSpec {
    #[serde(default)]
    pub booked_within: Option<String>,
    #[serde(default)]
    pub replied_within: Option<String>,
}

/// Figures watched for harm besides the primary metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Guardrail {
    /// Exposed units that unsubscribed afterwards (`unsubscribed` signals).
    Unsubscribes,
    /// Messages of exposed units that moderation blocked afterwards.
    BlockedMessages,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    pub weight: f64,
    #[serde(default)]
    pub swap: Vec<SwapSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapSpec {
    /// A step of the experiment's sequence.
    pub step: String,
    #[serde(default)]
    pub template: Option<String>,
    #[serde(default)]
    pub after: Option<String>,
    #[serde(default)]
    pub replace: Option<StepSpec>,
}

/// A compiled experiment.
#[derive(Debug)]
pub struct Experiment {
    pub name: String,
    pub description: Option<String>,
    pub file: String,
    pub sequence: String,
    pub unit: UnitKind,
    /// The first is control.
    pub variants: Vec<Variant>,
    pub start: Option<jiff::Timestamp>,
    pub stop: Option<jiff::Timestamp>,
    pub metric: Metric,
    pub guardrails: Vec<Guardrail>,
    pub min_sample: u64,
}

#[derive(Debug)]
pub struct Variant {
    pub name: String,
    pub weight: f64,
    /// The steps this variant swaps, whole: the sequence's step with the
    /// swap applied.
    pub steps: Vec<Step>,
}

impl Experiment {
    /// Whether the experiment runs at `now`: between `start` (included) and
    /// `stop` (excluded).
    pub fn running(&self, now: jiff::Timestamp) -> bool {
        self.start.is_none_or(|s| now >= s) && self.stop.is_none_or(|s| now < s)
    }

    /// Whether any variant swaps step `name`.
    pub fn swaps(&self, name: &str) -> bool {
        self.variants
            .iter()
            .any(|v| v.steps.iter().any(|s| s.name == name))
    }

    /// Whether a variant moves a step in time (a delay or an anchor): its
    /// units are then exposed when the sequence starts, not when a step fires.
    pub fn changes_timing(&self, sequence: &Sequence) -> bool {
        self.variants.iter().flat_map(|v| &v.steps).any(|swapped| {
            sequence
                .step(&swapped.name)
                .is_some_and(|base| base.offset != swapped.offset || base.at != swapped.at)
        })
    }

    pub fn variant(&self, name: &str) -> Option<usize> {
        self.variants.iter().position(|v| v.name == name)
    }

    pub fn weights(&self) -> Vec<f64> {
        self.variants.iter().map(|v| v.weight).collect()
    }

    /// Compiles an experiment against the sequences loaded; `template_exists`
    /// checks swapped templates.
    pub fn compile(
        spec: ExperimentSpec,
        file: &str,
        sequences: &[Sequence],
        template_exists: impl Fn(&str) -> bool,
    ) -> Result<Experiment, Vec<SpecError>> {
        let mut errors = Vec::new();
        let what = format!("experiment {}", spec.name);
        let at_name = |message: String| SpecError::at(format!("name: {}", spec.name), message);
        if !is_name(&spec.name) {
            errors.push(at_name(format!(
                "{what}: the name must be lower_snake_case"
            )));
        }
        let time = |text: &Option<String>, key: &str, errors: &mut Vec<SpecError>| {
            let text = text.as_ref()?;
            text.parse::<jiff::Timestamp>()
                .map_err(|e| {
                    errors.push(SpecError::at(
                        format!("{key}: {text}"),
                        format!("{what}: {key}: {text:?} is not an RFC 3339 time: {e}"),
                    ))
                })
                .ok()
        };
        let start = time(&spec.start, "start", &mut errors);
        let stop = time(&spec.stop, "stop", &mut errors);
        if let (Some(start), Some(stop)) = (start, stop) {
            if stop <= start {
                errors.push(SpecError::at(
                    "stop:",
                    format!("{what}: stop must come after start"),
                ));
            }
        }
        let metric = match (&spec.metric.booked_within, &spec.metric.replied_within) {
            (Some(window), None) => Some((MetricKind::Booked, "booked_within", window)),
            (None, Some(window)) => Some((MetricKind::Replied, "replied_within", window)),
            _ => {
                errors.push(SpecError::at(
                    "metric:",
                    format!("{what}: metric is one of booked_within: DURATION or replied_within: DURATION"),
                ));
                None
            }
        };
        let metric =
            metric.and_then(
                |(kind, key, window)| match crate::clock::parse_duration(window) {
                    Ok(d) if d.is_positive() => Some(Metric {
                        kind,
                        window_ms: d.as_millis() as i64,
                    }),
                    Ok(_) => {
                        errors.push(SpecError::at(
                            format!("{key}: {window}"),
                            format!("{what}: {key} must be a positive duration"),
                        ));
                        None
                    }
                    Err(e) => {
                        errors.push(SpecError::at(
                            format!("{key}: {window}"),
                            format!("{what}: {e}"),
                        ));
                        None
                    }
                },
            );
        let sequence = sequences.iter().find(|s| s.name == spec.sequence);
        if sequence.is_none() {
            errors.push(SpecError::at(
                format!("sequence: {}", spec.sequence),
                format!("{what}: no sequence {:?} in the rules", spec.sequence),
            ));
        }
        if spec.variants.len() < 2 {
            errors.push(at_name(format!(
                "{what}: an experiment needs at least two variants (the first is control)"
            )));
        }
        let mut variants: Vec<Variant> = Vec::new();
        for variant in spec.variants {
            let what = format!("{what}, variant {}", variant.name);
            let near = format!("name: {}", variant.name);
            let message = format!("{what}: variant names must be unique lower_snake_case");
            if variants.iter().any(|v| v.name == variant.name) {
                // Pointed at the second one: looked for after the first.
                errors.push(SpecError {
                    within: vec![near.clone()],
                    ..SpecError::at(near.clone(), message)
                });
            } else if !is_name(&variant.name) {
                errors.push(SpecError::at(near.clone(), message));
            }
            if !(variant.weight.is_finite() && variant.weight > 0.0) {
                errors.push(SpecError::at(
                    format!("weight: {}", variant.weight),
                    format!("{what}: weight must be a positive number"),
                ));
            }
            let mut steps: Vec<Step> = Vec::new();
            for swap in variant.swap {
                if let Some(step) = swap_step(swap, &what, sequence, &template_exists, &mut errors)
                {
                    if steps.iter().any(|s| s.name == step.name) {
                        errors.push(SpecError::at(
                            format!("step: {}", step.name),
                            format!("{what}: step {} is swapped twice", step.name),
                        ));
                    }
                    steps.push(step);
                }
            }
            variants.push(Variant {
                name: variant.name,
                weight: variant.weight,
                steps,
            });
        }
        let (Some(metric), true) = (metric, errors.is_empty()) else {
            SpecError::scope(&mut errors, &spec.name);
            return Err(errors);
        };
        Ok(Experiment {
            name: spec.name,
            description: spec.description,
            file: file.to_owned(),
            sequence: spec.sequence,
            unit: spec.unit,
            variants,
            start,
            stop,
            metric,
            guardrails: spec.guardrails,
            min_sample: spec.min_sample,
        })
    }
}

/// The step a swap makes of the sequence's step; `None` (and an error) when
/// the step or what it swaps in is wrong.
fn swap_step(
    swap: SwapSpec,
    what: &str,
    sequence: Option<&Sequence>,
    template_exists: impl Fn(&str) -> bool,
    errors: &mut Vec<SpecError>,
) -> Option<Step> {
    let sequence = sequence?;
    let near = format!("step: {}", swap.step);
    let Some(base) = sequence.step(&swap.step) else {
        errors.push(SpecError::at(
            near,
            format!(
                "{what}: sequence {} has no step {:?}",
                sequence.name, swap.step
            ),
        ));
        return None;
    };
    match (swap.template, swap.after, swap.replace) {
        (None, None, Some(replace)) => {
            if replace.name != base.name {
                errors.push(SpecError::at(
                    format!("name: {}", replace.name),
                    format!(
                        "{what}: a replacement step keeps the name of the step it replaces ({})",
                        base.name
                    ),
                ));
            }
            let before = errors.len();
            let step = Step::compile(replace, &sequence.name, template_exists, errors);
            (errors.len() == before).then_some(step)
        }
        (template, after, None) if template.is_some() || after.is_some() => {
            let mut step = base.clone();
            if let Some(template) = template {
                if !template_exists(&template) {
                    errors.push(SpecError::at(
                        format!("template: {template}"),
                        format!("{what}: no template {template:?} in templates/"),
                    ));
                }
                step.template = template;
            }
            if let Some(after) = after {
                match crate::clock::parse_duration(&after) {
                    Ok(d) if d.is_negative() && step.at == super::sequences::Anchor::Trigger => {
                        errors.push(SpecError::at(
                            format!("after: {after}"),
                            format!("{what}: a step cannot come before its trigger"),
                        ));
                    }
                    Ok(d) => step.offset = d,
                    Err(e) => errors.push(SpecError::at(
                        format!("after: {after}"),
                        format!("{what}: {e}"),
                    )),
                }
            }
            Some(step)
        }
        _ => {
            errors.push(SpecError::at(
                near,
                format!("{what}: a swap gives a step another template and/or after, or replaces it whole (replace:), not both"),
            ));
            None
        }
    }
}

/// Checks that no two experiments swap the same step of the same sequence:
/// a unit would otherwise get whichever came first, and neither result would
/// mean what it says.
pub fn overlapping(experiments: &[Experiment]) -> Vec<(usize, String)> {
    let mut seen = BTreeSet::new();
    let mut clashes = Vec::new();
    for (i, experiment) in experiments.iter().enumerate() {
        let steps: BTreeSet<&str> = experiment
            .variants
            .iter()
            .flat_map(|v| v.steps.iter().map(|s| s.name.as_str()))
            .collect();
        for step in steps {
            if !seen.insert((experiment.sequence.as_str(), step)) {
                clashes.push((i, step.to_owned()));
            }
        }
    }
    clashes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::sequences::{KnownEvents, Party, SequenceSpec};

    fn sequence() -> Sequence {
        let spec: SequenceSpec = serde_yaml::from_str(
            "{ name: s, trigger: inquiry_received, steps: [
               { name: a, template: t, to: customer },
               { name: b, after: 4h, template: t, to: provider } ] }",
        )
        .unwrap();
        Sequence::compile(spec, "f", |_| true, &KnownEvents::new([])).unwrap()
    }

    fn compile(variants: &str, metric: &str) -> Result<Experiment, Vec<String>> {
        let spec: ExperimentSpec = serde_yaml::from_str(&format!(
            "{{ name: e, sequence: s, unit: customer, metric: {metric}, variants: {variants} }}"
        ))
        .unwrap();
        Experiment::compile(spec, "f", &[sequence()], |t| t == "t" || t == "t2")
            .map_err(|errors| errors.into_iter().map(|e| e.message).collect())
    }

    #[test]
    fn swaps_make_whole_steps_and_timing_swaps_are_known() {
        let e = compile(
            "[{ name: control, weight: 1 }, { name: v, weight: 2, swap: [
               { step: a, template: t2 }, { step: b, after: 2h } ] }]",
            "{ booked_within: 7d }",
        )
        .unwrap();
        let v = &e.variants[1];
        assert_eq!(
            (v.steps[0].template.as_str(), v.steps[0].to),
            ("t2", Party::Customer)
        );
        assert_eq!(v.steps[1].offset, jiff::SignedDuration::from_hours(2));
        assert!(e.swaps("a") && e.swaps("b") && e.changes_timing(&sequence()));
        assert_eq!(e.metric.window_ms, 7 * 86_400_000);
        assert_eq!(e.weights(), [1.0, 2.0]);
    }

    #[test]
    fn wrong_metrics_swaps_and_variant_counts_are_errors() {
        let two = "[{ name: control, weight: 1 }, { name: v, weight: 1 }]";
        let both = compile(two, "{ booked_within: 7d, replied_within: 1h }").unwrap_err();
        assert!(both[0].contains("metric is one of"), "{both:?}");
        let negative = compile(two, "{ replied_within: -1h }").unwrap_err();
        assert!(negative[0].contains("positive duration"), "{negative:?}");
        let one = compile("[{ name: control, weight: 1 }]", "{ booked_within: 7d }").unwrap_err();
        assert!(one[0].contains("at least two variants"), "{one:?}");
        let renamed = compile(
            "[{ name: control, weight: 1 }, { name: v, weight: 1, swap: [
               { step: a, replace: { name: z, template: t, to: customer } } ] }]",
            "{ booked_within: 7d }",
        )
        .unwrap_err();
        assert!(renamed[0].contains("keeps the name"), "{renamed:?}");
        let both_ways = compile(
            "[{ name: control, weight: 1 }, { name: v, weight: 1, swap: [
               { step: a, template: t2, replace: { name: a, template: t, to: customer } } ] }]",
            "{ booked_within: 7d }",
        )
        .unwrap_err();
        assert!(both_ways[0].contains("not both"), "{both_ways:?}");
    }

    #[test]
    fn two_experiments_may_not_swap_the_same_step() {
        let swap_a = "[{ name: control, weight: 1 }, { name: v, weight: 1, swap: [{ step: a, template: t2 }] }]";
        let first = compile(swap_a, "{ booked_within: 7d }").unwrap();
        let mut second = compile(swap_a, "{ booked_within: 7d }").unwrap();
        second.name = "other".into();
        assert_eq!(overlapping(&[first, second]), [(1, "a".to_owned())]);
    }
}
