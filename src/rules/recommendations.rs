//! Recommendations for the provider reports (`templates/reports.yaml`):
//! each has a Rhai condition on the report's figures and a text with
//! placeholders, like the message templates, reloaded with them and checked
//! by `parleyd check`. `analytics::report` fills the context; the roots and
//! fields below are what it gives (a unit test there holds it to them).
//!
//! ```yaml
//! recommendations:
//!   - id: answer_within_an_hour
//!     when: figures.median_first_response_seconds > 3600
//!     text: "Your median first response is {figures.median_first_response}; ..."
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use jiff::tz::TimeZone;
use serde::Deserialize;

use super::script::{Context, Expr};
use super::templates::{Roots, Template, TemplateSpec};
use super::{place, RuleError};

/// The file in `templates_dir` that holds the recommendations.
pub const REPORTS_FILE: &str = "reports.yaml";

/// The fields of a period's figures (roots `figures` and `previous`):
/// numbers (`()` in conditions when unknown, e.g. a rate of nothing), and
/// the same as text for people (`*_percent`: "25%", durations: "3 h 10 min").
pub const FIGURES: &[&str] = &[
    "conversations",
    "booked",
    "booking_rate",
    "answered_within_24h",
    "response_rate",
    "answered",
    "median_first_response_seconds",
    "average_first_response_seconds",
    "read_rate",
    "reply_rate",
    "quick_reply_rate",
    "booking_rate_percent",
    "response_rate_percent",
    "read_rate_percent",
    "reply_rate_percent",
    "quick_reply_rate_percent",
    "median_first_response",
    "average_first_response",
];

/// The fields of `score`: the overall score (0-100), the percentile, and
/// each metric's band (`excellent`, `good`, `average`, `poor`).
pub const SCORE: &[&str] = &[
    "overall",
    "percentile",
    "first_response_band",
    "booking_rate_band",
    "read_rate_band",
    "reply_rate_band",
];

/// The fields of `platform`: the booking rate of inquiries first answered
/// within an hour and later, their ratio, and the ratio as text ("2.1").
pub const PLATFORM: &[&str] = &[
    "booking_rate_answered_within_1h",
    "booking_rate_answered_later",
    "booking_multiple",
    "booking_multiple_text",
];

/// Every root a recommendation may name.
pub const ROOTS: Roots<'static> = &[
    ("figures", Some(FIGURES)),
    ("previous", Some(FIGURES)),
    ("score", Some(SCORE)),
    ("platform", Some(PLATFORM)),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportsFile {
    #[serde(default)]
    recommendations: Vec<RecommendationSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RecommendationSpec {
    id: String,
    /// Rhai; `true` shows the recommendation.
    when: String,
    text: String,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    #[serde(default)]
    description: Option<String>,
}

/// One compiled recommendation.
#[derive(Debug, Clone)]
pub struct Recommendation {
    pub id: String,
    when: Expr,
    text: Template,
}

impl Recommendation {
    /// Its text for `context` when its condition holds; `Ok(None)` when it
    /// does not; an error (a condition that fails, e.g. comparing a figure
    /// that is unknown, or a placeholder without a value) says why.
    pub fn render(&self, context: &Context) -> Result<Option<String>, String> {
        let applies = self
            .when
            .test(context)
            .map_err(|e| format!("recommendation {}: {e}", self.id))?;
        if !applies {
            return Ok(None);
        }
        self.text
            .render(context, &TimeZone::UTC)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The recommendations of `dir`/`reports.yaml` (none when it is absent),
/// each error recorded in `errors`.
/// (`load_templates` lists the file among the set's files.)
pub(super) fn load(dir: &Path, errors: &mut Vec<RuleError>) -> Vec<Recommendation> {
    let path = dir.join(REPORTS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            errors.push(RuleError::whole_file(&path, format!("cannot read: {e}")));
            return Vec::new();
        }
    };
    let file: ReportsFile = match serde_yaml::from_str(&text) {
        Ok(file) => file,
        Err(e) => {
            errors.push(RuleError::yaml(&path, &e));
            return Vec::new();
        }
    };
    let mut compiled: Vec<Recommendation> = Vec::new();
    for spec in file.recommendations {
        let at = |near: &str, offset, message: String| {
            RuleError::near(&path, &text, near, offset, message)
        };
        if compiled.iter().any(|r| r.id == spec.id) {
            let message = format!("recommendation {} is defined twice", spec.id);
            errors.push(at(&format!("id: {}", spec.id), None, message));
            continue;
        }
        let when = Expr::compile(&spec.when).map_err(|e| {
            let message = format!("recommendation {}, when: {}", spec.id, e.message);
            at(&spec.when, Some((e.line.max(1), e.column.max(1))), message)
        });
        let template = TemplateSpec {
            text: spec.text,
            subject: None,
            html: None,
            vars: spec.vars,
            description: spec.description,
        };
        let id = format!("recommendation {}", spec.id);
        let text_compiled = Template::compile_with(&id, &template, ROOTS).map_err(|problems| {
            problems
                .into_iter()
                .map(|p| at(&p.near, p.offset, p.message))
                .collect::<Vec<_>>()
        });
        match (when, text_compiled) {
            (Ok(mut when), Ok(mut text_template)) => {
                place(
                    std::iter::once(&mut when).chain(text_template.scripts_mut()),
                    &path,
                    &text,
                );
                compiled.push(Recommendation {
                    id: spec.id,
                    when,
                    text: text_template,
                });
            }
            (when, text_compiled) => {
                errors.extend(when.err());
                errors.extend(text_compiled.err().into_iter().flatten());
            }
        }
    }
    compiled
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(yaml: &str) -> (Vec<Recommendation>, Vec<RuleError>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REPORTS_FILE), yaml).unwrap();
        let mut errors = Vec::new();
        let loaded = load(dir.path(), &mut errors);
        (loaded, errors)
    }

    #[test]
    fn the_shipped_recommendations_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
        let mut errors = Vec::new();
        let loaded = load(&dir, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert!(loaded.len() >= 3);
    }

    #[test]
    fn unknown_fields_bad_conditions_and_twice_defined_ids_are_errors() {
        let (_, errors) = load_text(
            "recommendations:\n  - id: a\n    when: figures.reply_rate < 0.5\n    text: \"{figures.nope}\"\n  - id: b\n    when: \"figures.reply_rate <\"\n    text: ok\n  - id: c\n    when: \"true\"\n    text: ok\n  - id: c\n    when: \"true\"\n    text: ok\n",
        );
        let messages: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{messages:?}");
        assert!(
            messages[0].contains("figures has the fields"),
            "{messages:?}"
        );
        assert!(
            messages[1].contains("recommendation b, when"),
            "{messages:?}"
        );
        assert!(messages[2].contains("defined twice"), "{messages:?}");
        assert!(errors.iter().all(|e| e.line > 1), "{messages:?}");
    }

    #[test]
    fn a_recommendation_shows_when_its_condition_holds() {
        let (loaded, errors) = load_text(
            "recommendations:\n  - id: fast\n    when: figures.median_first_response_seconds > 3600\n    text: \"Median {figures.median_first_response}; {platform.booking_multiple_text}x\"\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        let context = |secs: i64| {
            Context::default()
                .with(
                    "figures",
                    &serde_json::json!({"median_first_response_seconds": secs, "median_first_response": "3 h 10 min"}),
                )
                .with("platform", &serde_json::json!({"booking_multiple_text": "2.1"}))
        };
        assert_eq!(
            loaded[0].render(&context(11_400)).unwrap().as_deref(),
            Some("Median 3 h 10 min; 2.1x")
        );
        assert_eq!(loaded[0].render(&context(60)).unwrap(), None);
    }
}
