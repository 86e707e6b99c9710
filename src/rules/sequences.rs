//! Sequences: a trigger event starts timed steps that send templated messages,
//! until a stop event. Nudge sequences time their steps from the trigger
//! (`after: 24h`); booking milestones anchor them to the booking (`at: start`,
//! `after: -24h`). Both are the same mechanism, written in `rules/*.yaml`:
//!
//! ```yaml
//! sequences:
//!   - name: inquiry_follow_up
//!     trigger: inquiry_received
//!     stop_on: [provider_replied, booking_created]
//!     steps:
//!       - name: follow_up
//!         after: 24h
//!         template: inquiry_follow_up
//!         to: customer
//! ```
//!
//! Event names are checked against [`KnownEvents`]: what the daemon emits
//! ([`Emitted`]) and the signal types the rule files declare (`signals:`).

use std::collections::BTreeSet;

use serde::Deserialize;

use super::script::Expr;
use crate::domain::Emitted;
use crate::model::{MessageType, SuggestedAction};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Signal types (`POST /v1/signals`, field `type`) the rules may listen
    /// to; declared in any rule file, they count for all of them.
    #[serde(default)]
    pub signals: Vec<String>,
    #[serde(default)]
    pub sequences: Vec<SequenceSpec>,
    /// A/B experiments on the sequences' steps (`rules::experiments`).
    #[serde(default)]
    pub experiments: Vec<super::experiments::ExperimentSpec>,
}

/// The event names rules may name: every [`Emitted`] name and the declared
/// signal types.
#[derive(Debug, Clone)]
pub struct KnownEvents {
    names: BTreeSet<String>,
}

impl KnownEvents {
    pub fn new<'a>(signals: impl IntoIterator<Item = &'a str>) -> KnownEvents {
        let names = Emitted::all()
            .map(|e| e.to_string())
            .chain(signals.into_iter().map(str::to_owned))
            .collect();
        KnownEvents { names }
    }

    /// An error about `name` under `key` (`stop_on`), in `what` (`sequence x:
    /// `, or empty), unless it is known or not a name at all (reported as such
    /// elsewhere); suggests the closest known name within two edits
    /// (Damerau-Levenshtein distance, as `strsim` computes it: a letter
    /// added, dropped, changed, or two swapped).
    pub fn check(&self, name: &str, what: &str, key: &str) -> Option<SpecError> {
        if self.names.contains(name) || !is_name(name) {
            return None;
        }
        let closest = self
            .names
            .iter()
            .map(|known| (strsim::damerau_levenshtein(name, known), known))
            .filter(|(edits, _)| *edits <= 2)
            .min_by_key(|(edits, _)| *edits)
            .map(|(_, known)| format!(" (did you mean {known}?)"))
            .unwrap_or_default();
        Some(SpecError {
            within: vec![format!("{key}:")],
            ..SpecError::at(
                name,
                format!(
                    "{what}{key}: unknown event {name:?}: the daemon does not emit it and no \
                     rule file declares it under signals:{closest}"
                ),
            )
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SequenceSpec {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The event (or alias) that starts the sequence.
    pub trigger: String,
    /// Rhai condition on the trigger's context; the sequence starts only if true.
    #[serde(default)]
    pub when: Option<String>,
    /// `nudge` (default) or `automated`: the `type` of the messages it sends.
    #[serde(default = "nudge", rename = "type")]
    pub kind: MessageType,
    /// Events that end the sequence: its pending steps are cancelled.
    #[serde(default)]
    pub stop_on: Vec<String>,
    /// Events that re-plan the pending steps from the booking as it is now
    /// (e.g. `booking_rescheduled`).
    #[serde(default)]
    pub replan_on: Vec<String>,
    pub steps: Vec<StepSpec>,
}

fn nudge() -> MessageType {
    MessageType::Nudge
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Anchor {
    /// When the trigger happened.
    #[default]
    Trigger,
    /// The booking's start, end, or the middle of its period.
    Start,
    End,
    Midpoint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Party {
    Customer,
    Provider,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    /// The platform, shown as `system` (default).
    #[default]
    System,
    Provider,
    Customer,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub name: String,
    #[serde(default)]
    pub at: Anchor,
    /// Offset from the anchor, e.g. `24h`, `-24h`, `90m`; default 0.
    #[serde(default)]
    pub after: Option<String>,
    /// Rhai condition checked when the step is due; false skips it.
    #[serde(default)]
    pub when: Option<String>,
    pub template: String,
    pub to: Party,
    #[serde(default, rename = "as")]
    pub sender: Sender,
    #[serde(default)]
    pub actions: Vec<SuggestedAction>,
    /// Attach the booking as a calendar invite (.ics).
    #[serde(default)]
    pub invite: bool,
}

#[derive(Debug)]
pub struct Sequence {
    pub name: String,
    pub file: String,
    pub trigger: String,
    pub when: Option<Expr>,
    pub kind: MessageType,
    pub stop_on: Vec<String>,
    pub replan_on: Vec<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub at: Anchor,
    pub offset: jiff::SignedDuration,
    pub when: Option<Expr>,
    pub template: String,
    pub to: Party,
    pub sender: Sender,
    pub actions: Vec<SuggestedAction>,
    pub invite: bool,
}

/// A problem in a sequence, with the text it concerns (to locate it).
#[derive(Debug)]
pub struct SpecError {
    pub near: String,
    /// Line and column inside `near` (for script errors), 1-based.
    pub offset: Option<(usize, usize)>,
    pub message: String,
    /// Texts that lead to the part of the file the error is about, each
    /// looked for after the one before (`name: x` of its sequence or
    /// notification, then `stop_on:`): `near` is looked for after them first,
    /// so a name used elsewhere too is found where it is wrong.
    pub within: Vec<String>,
}

impl SpecError {
    /// An error about the text `near` (located in the file by it).
    pub fn at(near: impl Into<String>, message: String) -> SpecError {
        SpecError {
            near: near.into(),
            offset: None,
            message,
            within: Vec::new(),
        }
    }

    /// Marks each error as about the part of the file after `name: {name}`.
    pub fn scope(errors: &mut [SpecError], name: &str) {
        for e in errors {
            e.within.insert(0, format!("name: {name}"));
        }
    }
}

pub(super) fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

pub(super) fn condition(
    source: &Option<String>,
    what: &str,
    errors: &mut Vec<SpecError>,
) -> Option<Expr> {
    let source = source.as_ref()?;
    Expr::compile(source)
        .map_err(|e| {
            errors.push(SpecError {
                near: source.clone(),
                offset: Some((e.line.max(1), e.column.max(1))),
                message: format!("{what}: {}", e.message),
                within: Vec::new(),
            })
        })
        .ok()
}

impl Step {
    /// Compiles a step of sequence `sequence`, adding what is wrong to
    /// `errors` (the step is still returned, for the other checks).
    pub fn compile(
        step: StepSpec,
        sequence: &str,
        template_exists: impl Fn(&str) -> bool,
        errors: &mut Vec<SpecError>,
    ) -> Step {
        let what = format!("sequence {sequence}, step {}", step.name);
        let offset = match step.after.as_deref().map(crate::clock::parse_duration) {
            None => jiff::SignedDuration::ZERO,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                errors.push(SpecError::at(
                    format!("after: {}", step.after.clone().unwrap_or_default()),
                    format!("{what}: {e}"),
                ));
                jiff::SignedDuration::ZERO
            }
        };
        if step.at == Anchor::Trigger && offset.is_negative() {
            errors.push(SpecError::at(
                format!("name: {}", step.name),
                format!("{what}: a step cannot come before its trigger"),
            ));
        }
        if !template_exists(&step.template) {
            errors.push(SpecError::at(
                format!("template: {}", step.template),
                format!("{what}: no template {:?} in templates/", step.template),
            ));
        }
        Step {
            when: condition(&step.when, &what, errors),
            name: step.name,
            at: step.at,
            offset,
            template: step.template,
            to: step.to,
            sender: step.sender,
            actions: step.actions,
            invite: step.invite,
        }
    }
}

impl Sequence {
    /// Compiles a sequence; `template_exists` checks step templates, `events`
    /// the names it listens to.
    pub fn compile(
        spec: SequenceSpec,
        file: &str,
        template_exists: impl Fn(&str) -> bool,
        events: &KnownEvents,
    ) -> Result<Sequence, Vec<SpecError>> {
        let mut errors = Vec::new();
        let at_name = |message: String| SpecError::at(format!("name: {}", spec.name), message);
        if !is_name(&spec.name) {
            errors.push(at_name(format!(
                "sequence name {:?} must be lower_snake_case",
                spec.name
            )));
        }
        for event in std::iter::once(&spec.trigger)
            .chain(&spec.stop_on)
            .chain(&spec.replan_on)
        {
            if !is_name(event) {
                errors.push(SpecError::at(
                    event.clone(),
                    format!("{event:?} is not an event name (lower_snake_case)"),
                ));
            }
        }
        let listened = [
            ("trigger", std::slice::from_ref(&spec.trigger)),
            ("stop_on", &spec.stop_on[..]),
            ("replan_on", &spec.replan_on[..]),
        ];
        let what = format!("sequence {}: ", spec.name);
        for (key, names) in listened {
            errors.extend(names.iter().filter_map(|n| events.check(n, &what, key)));
        }
        if spec.kind == MessageType::Text {
            errors.push(at_name(format!(
                "sequence {}: type is nudge or automated",
                spec.name
            )));
        }
        if spec.steps.is_empty() {
            errors.push(at_name(format!("sequence {} has no steps", spec.name)));
        }
        let when = condition(&spec.when, &format!("sequence {}", spec.name), &mut errors);
        let mut steps: Vec<Step> = Vec::new();
        for step in spec.steps {
            let near = format!("name: {}", step.name);
            if !is_name(&step.name) || steps.iter().any(|s| s.name == step.name) {
                errors.push(SpecError::at(
                    near,
                    format!(
                        "sequence {}, step {}: step names must be unique lower_snake_case",
                        spec.name, step.name
                    ),
                ));
            }
            steps.push(Step::compile(
                step,
                &spec.name,
                &template_exists,
                &mut errors,
            ));
        }
        if !errors.is_empty() {
            SpecError::scope(&mut errors, &spec.name);
            return Err(errors);
        }
        Ok(Sequence {
            name: spec.name,
            file: file.to_owned(),
            trigger: spec.trigger,
            when,
            kind: spec.kind,
            stop_on: spec.stop_on,
            replan_on: spec.replan_on,
            steps,
        })
    }

    /// Its Rhai conditions (the sequence's and its steps'), to place them in
    /// their file.
    pub fn scripts_mut(&mut self) -> impl Iterator<Item = &mut Expr> {
        self.when
            .iter_mut()
            .chain(self.steps.iter_mut().flat_map(|s| s.when.iter_mut()))
    }

    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_events_are_the_emitted_ones_and_the_declared_signals() {
        let events = KnownEvents::new(["checkout_abandoned"]);
        for known in ["message_sent", "booking_cancelled", "checkout_abandoned"] {
            assert!(events.check(known, "", "trigger").is_none(), "{known}");
        }
        let typo = events.check("booking_canceled", "sequence s: ", "stop_on");
        let typo = typo.map(|e| e.message).unwrap_or_default();
        assert!(
            typo.starts_with("sequence s: stop_on: unknown event \"booking_canceled\"")
                && typo.ends_with("(did you mean booking_cancelled?)"),
            "{typo}"
        );
        let undeclared = events.check("listing_viewed", "", "trigger");
        let undeclared = undeclared.map(|e| e.message).unwrap_or_default();
        assert!(!undeclared.contains("did you mean"), "{undeclared}");
    }
}
