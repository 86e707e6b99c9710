//! Moderation policy for contact details: data model, parsing, validation
//! and the decision function. The daemon loads it from `rules/contact.yaml`
//! (see the documented sample there) and may reload it at any time; this
//! module does no I/O.
//!
//! Lookup for one detection, most specific first: the booking stage's rule
//! for its type, the phase's rule for its type, the stage's rule for its risk
//! level, the phase's rule for its risk level (always present). The message's
//! action is the most severe one over its detections; it is flagged if any
//! applied rule flags.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::{Analysis, ContactKind, Detection, Risk};

/// What happens to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Delivered unchanged.
    Allow,
    /// Delivered; the sender is warned.
    Warn,
    /// Delivered with the matched spans replaced.
    Mask,
    /// Not delivered.
    Block,
}

/// One rule: an action and whether to queue the message for human review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub action: Action,
    #[serde(default)]
    pub flag: bool,
}

/// Rules per risk level; complete, so every detection has a fallback.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskRules {
    pub low: Rule,
    pub medium: Rule,
    pub high: Rule,
}

/// Rules per risk level that may leave levels to the phase.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartialRiskRules {
    pub low: Option<Rule>,
    pub medium: Option<Rule>,
    pub high: Option<Rule>,
}

/// Rules per contact type; these override risk-level rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TypeRules {
    pub phone: Option<Rule>,
    pub email: Option<Rule>,
    pub url: Option<Rule>,
    pub social: Option<Rule>,
    pub messaging_app: Option<Rule>,
    pub payment: Option<Rule>,
}

/// Overrides for one booking stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRules {
    #[serde(default)]
    pub risk: PartialRiskRules,
    #[serde(default)]
    pub types: TypeRules,
}

/// Per-stage overrides, all optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stages {
    pub confirmed: Option<StageRules>,
    pub preparation: Option<StageRules>,
    pub active: Option<StageRules>,
    pub completed: Option<StageRules>,
    pub review: Option<StageRules>,
}

/// Rules for one conversation phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhaseRules {
    pub risk: RiskRules,
    #[serde(default)]
    pub types: TypeRules,
    #[serde(default)]
    pub stages: Stages,
}

/// Phases of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phases {
    pub pre_booking: PhaseRules,
    pub post_booking: PhaseRules,
}

/// The whole policy file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactPolicy {
    /// Schema version; only 1 exists.
    pub version: u32,
    /// Text that replaces a masked span.
    pub mask_replacement: String,
    pub phases: Phases,
}

/// The outcome for one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    pub action: Action,
    /// Queue for human review (independent of the action).
    pub flag: bool,
    /// One human-readable line per detection: what matched and which rule.
    pub reasons: Vec<String>,
    /// Detections whose own rule says `mask`; pass them to
    /// [`super::mask`] when `action` is [`Action::Mask`].
    pub masked: Vec<Detection>,
}

#[derive(Debug, Error, PartialEq)]
pub enum PolicyError {
    #[error("contact policy: line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("contact policy: {0}")]
    Parse(String),
    #[error("contact policy: invalid: {0}")]
    Invalid(String),
}

impl ContactPolicy {
    /// Parses and validates a policy.
    pub fn from_yaml(source: &str) -> Result<ContactPolicy, PolicyError> {
        let policy: ContactPolicy =
            serde_yaml::from_str(source).map_err(|e| match e.location() {
                Some(loc) => PolicyError::Syntax {
                    line: loc.line(),
                    column: loc.column(),
                    message: e.to_string(),
                },
                None => PolicyError::Parse(e.to_string()),
            })?;
        policy.validate()?;
        Ok(policy)
    }

    fn validate(&self) -> Result<(), PolicyError> {
        if self.version != 1 {
            return Err(PolicyError::Invalid(format!(
                "unsupported version {} (expected 1)",
                self.version
            )));
        }
        if self.mask_replacement.is_empty() || self.mask_replacement.contains(['\n', '\r']) {
            return Err(PolicyError::Invalid(
                "mask_replacement must be a non-empty single line".into(),
            ));
        }
        Ok(())
    }

    /// Decides what to do with a message in `phase` (`pre_booking` or
    /// `post_booking`) and optional booking `stage`. An unknown phase is
    /// treated as `pre_booking` (the strictest); an unknown stage is ignored.
    /// Both cases are noted in `reasons`.
    pub fn decide(&self, phase: &str, stage: Option<&str>, analysis: &Analysis) -> Decision {
        let mut reasons = Vec::new();
        let (phase_name, phase_rules) = match phase {
            "post_booking" => ("post_booking", &self.phases.post_booking),
            "pre_booking" => ("pre_booking", &self.phases.pre_booking),
            other => {
                reasons.push(format!("unknown phase {other:?}, using pre_booking"));
                ("pre_booking", &self.phases.pre_booking)
            }
        };
        let stage_rules = stage.and_then(|s| {
            let st = &phase_rules.stages;
            let found = match s {
                "confirmed" => Some(&st.confirmed),
                "preparation" => Some(&st.preparation),
                "active" => Some(&st.active),
                "completed" => Some(&st.completed),
                "review" => Some(&st.review),
                _ => None,
            };
            if found.is_none() {
                reasons.push(format!("unknown stage {s:?}, ignored"));
            }
            found.and_then(Option::as_ref).map(|r| (s, r))
        });

        let mut action = Action::Allow;
        let mut flag = false;
        let mut masked = Vec::new();
        for d in &analysis.detections {
            let level = detection_risk(d);
            let (rule, source) = lookup(phase_name, phase_rules, stage_rules, d.kind, level);
            action = action.max(rule.action);
            flag |= rule.flag;
            if rule.action == Action::Mask {
                masked.push(d.clone());
            }
            reasons.push(format!(
                "{} at {}..{} ({} risk): {} by {}{}",
                kind_name(d.kind),
                d.start,
                d.end,
                risk_name(level),
                action_name(rule.action),
                source,
                if rule.flag { ", flagged" } else { "" }
            ));
        }
        Decision {
            action,
            flag,
            reasons,
            masked,
        }
    }
}

/// Risk level of a single detection, on the same scale as [`Analysis::risk`].
fn detection_risk(d: &Detection) -> Risk {
    if d.confidence >= super::HIGH {
        Risk::High
    } else if d.confidence >= super::MEDIUM {
        Risk::Medium
    } else {
        Risk::Low
    }
}

fn lookup(
    phase_name: &str,
    phase: &PhaseRules,
    stage: Option<(&str, &StageRules)>,
    kind: ContactKind,
    level: Risk,
) -> (Rule, String) {
    if let Some((name, s)) = stage {
        if let Some(r) = type_rule(&s.types, kind) {
            return (
                r,
                format!("{phase_name}.stages.{name}.types.{}", kind_name(kind)),
            );
        }
    }
    if let Some(r) = type_rule(&phase.types, kind) {
        return (r, format!("{phase_name}.types.{}", kind_name(kind)));
    }
    if let Some((name, s)) = stage {
        let r = match level {
            Risk::High => s.risk.high,
            Risk::Medium => s.risk.medium,
            Risk::Low | Risk::None => s.risk.low,
        };
        if let Some(r) = r {
            return (
                r,
                format!("{phase_name}.stages.{name}.risk.{}", risk_name(level)),
            );
        }
    }
    let r = match level {
        Risk::High => phase.risk.high,
        Risk::Medium => phase.risk.medium,
        Risk::Low | Risk::None => phase.risk.low,
    };
    (r, format!("{phase_name}.risk.{}", risk_name(level)))
}

fn type_rule(t: &TypeRules, kind: ContactKind) -> Option<Rule> {
    match kind {
        ContactKind::Phone => t.phone,
        ContactKind::Email => t.email,
        ContactKind::Url => t.url,
        ContactKind::Social => t.social,
        ContactKind::MessagingApp => t.messaging_app,
        ContactKind::Payment => t.payment,
    }
}

fn kind_name(k: ContactKind) -> &'static str {
    match k {
        ContactKind::Phone => "phone",
        ContactKind::Email => "email",
        ContactKind::Url => "url",
        ContactKind::Social => "social",
        ContactKind::MessagingApp => "messaging_app",
        ContactKind::Payment => "payment",
    }
}

fn risk_name(r: Risk) -> &'static str {
    match r {
        Risk::None | Risk::Low => "low",
        Risk::Medium => "medium",
        Risk::High => "high",
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Warn => "warn",
        Action::Mask => "mask",
        Action::Block => "block",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../rules/contact.yaml");

    fn det(kind: ContactKind, confidence: f32) -> Detection {
        Detection {
            kind,
            start: 0,
            end: 4,
            confidence,
            obfuscated: false,
        }
    }

    fn analysis(ds: Vec<Detection>) -> Analysis {
        Analysis {
            has_contact: !ds.is_empty(),
            risk: Risk::High,
            detections: ds,
        }
    }

    #[test]
    fn sample_parses() {
        let p = ContactPolicy::from_yaml(SAMPLE);
        assert!(p.is_ok(), "{p:?}");
    }

    #[test]
    fn pre_booking_blocks_high_and_masks_rest() {
        let Ok(p) = ContactPolicy::from_yaml(SAMPLE) else {
            panic!("sample must parse")
        };
        let d = p.decide(
            "pre_booking",
            None,
            &analysis(vec![det(ContactKind::Phone, 0.95)]),
        );
        assert_eq!(d.action, Action::Block);
        assert!(d.flag);
        let d = p.decide(
            "pre_booking",
            None,
            &analysis(vec![det(ContactKind::Payment, 0.7)]),
        );
        assert_eq!(d.action, Action::Mask);
        assert_eq!(d.masked.len(), 1);
        let d = p.decide("pre_booking", None, &analysis(vec![]));
        assert_eq!(d.action, Action::Allow);
        assert!(!d.flag && d.reasons.is_empty());
    }

    #[test]
    fn confirmed_allows_phone_and_email_only() {
        let Ok(p) = ContactPolicy::from_yaml(SAMPLE) else {
            panic!("sample must parse")
        };
        let a = analysis(vec![
            det(ContactKind::Phone, 0.95),
            det(ContactKind::Email, 0.95),
        ]);
        assert_eq!(
            p.decide("post_booking", Some("confirmed"), &a).action,
            Action::Allow
        );
        let a = analysis(vec![
            det(ContactKind::Phone, 0.95),
            det(ContactKind::Social, 0.9),
        ]);
        let d = p.decide("post_booking", Some("active"), &a);
        assert_eq!(d.action, Action::Mask);
        assert_eq!(
            d.masked.iter().map(|d| d.kind).collect::<Vec<_>>(),
            vec![ContactKind::Social]
        );
    }

    #[test]
    fn stage_overrides_phase_and_type_overrides_risk() {
        let yaml = r#"
version: 1
mask_replacement: "[hidden]"
phases:
  pre_booking:
    risk: { low: { action: warn }, medium: { action: mask }, high: { action: block, flag: true } }
    types: { url: { action: warn } }
  post_booking:
    risk: { low: { action: allow }, medium: { action: allow }, high: { action: mask } }
    stages:
      review:
        risk: { high: { action: block } }
        types: { payment: { action: block, flag: true } }
"#;
        let Ok(p) = ContactPolicy::from_yaml(yaml) else {
            panic!("must parse")
        };
        // Type rule beats the high-risk block.
        let d = p.decide(
            "pre_booking",
            None,
            &analysis(vec![det(ContactKind::Url, 0.95)]),
        );
        assert_eq!((d.action, d.flag), (Action::Warn, false));
        // Stage risk rule beats phase risk rule.
        let d = p.decide(
            "post_booking",
            Some("review"),
            &analysis(vec![det(ContactKind::Phone, 0.95)]),
        );
        assert_eq!(d.action, Action::Block);
        let d = p.decide(
            "post_booking",
            Some("active"),
            &analysis(vec![det(ContactKind::Phone, 0.95)]),
        );
        assert_eq!(d.action, Action::Mask);
        let d = p.decide(
            "post_booking",
            Some("review"),
            &analysis(vec![det(ContactKind::Payment, 0.6)]),
        );
        assert_eq!((d.action, d.flag), (Action::Block, true));
        // Unknown phase falls back to the strictest and says so.
        let d = p.decide(
            "during_lunch",
            None,
            &analysis(vec![det(ContactKind::Phone, 0.95)]),
        );
        assert_eq!(d.action, Action::Block);
        assert!(d.reasons[0].contains("unknown phase"));
    }

    #[test]
    fn rejects_unknown_fields_with_location() {
        let bad = SAMPLE.replacen("mask_replacement:", "mask_replacment:", 1);
        match ContactPolicy::from_yaml(&bad) {
            Err(PolicyError::Syntax { line, .. }) => assert!(line > 0),
            other => panic!("expected a located error, got {other:?}"),
        }
        let bad = SAMPLE.replacen("action: block", "action: explode", 1);
        assert!(matches!(
            ContactPolicy::from_yaml(&bad),
            Err(PolicyError::Syntax { .. })
        ));
    }

    #[test]
    fn rejects_invalid_values() {
        let bad = SAMPLE.replacen("version: 1", "version: 2", 1);
        assert!(matches!(
            ContactPolicy::from_yaml(&bad),
            Err(PolicyError::Invalid(_))
        ));
        assert!(ContactPolicy::from_yaml("").is_err());
        assert!(ContactPolicy::from_yaml("version: 1\nmask_replacement: x\n").is_err());
    }
}
