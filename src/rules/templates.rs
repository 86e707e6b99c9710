//! Message templates (`templates/*.yaml`): text with `{path}` placeholders
//! filled from the context (`{customer.name}`, `{listing.open_dates}`,
//! `{vars.promo}`), plus values computed in Rhai (`vars:`). `{{` and `}}` are
//! literal braces.
//!
//! A placeholder that can never be filled (an unknown root or field, an
//! undeclared var) fails validation. One that is empty when the step fires (a
//! customer without a name) makes the step skip, recorded with the reason: a
//! message is never sent with a raw `{name}` in it.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::script::{to_json, Context, Expr};

/// The fields the engine puts in each context root; `event` and `plugin` are
/// free-form (`None`).
const ROOTS: &[(&str, Option<&[&str]>)] = &[
    ("customer", Some(PERSON)),
    ("provider", Some(PERSON)),
    (
        "listing",
        Some(&[
            "id",
            "title",
            "price",
            "currency",
            "response_time",
            "open_dates",
            "address",
            "availability",
        ]),
    ),
    (
        "booking",
        Some(&[
            "id",
            "start",
            "end",
            "stage",
            "start_date",
            "start_time",
            "end_date",
            "end_time",
            "duration_hours",
        ]),
    ),
    (
        "conversation",
        Some(&["id", "phase", "stage", "inquiry_at", "last_seq"]),
    ),
    ("event", None),
    ("plugin", None),
    ("now", Some(&[])),
    // Notification templates only: whom it is for, the message it is about,
    // and (the digest) what it gathers.
    ("recipient", Some(PERSON)),
    ("message", Some(&["content", "seq", "sender_name"])),
    ("notification", Some(&["type", "priority"])),
    ("digest", None),
];

const PERSON: &[&str] = &["id", "name", "email", "timezone"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Template {
    pub id: String,
    parts: Vec<Part>,
    subject: Option<Vec<Part>>,
    html: Option<Vec<Part>>,
    vars: Vec<(String, Expr)>,
}

/// A notification's rendering: the text, and an email's subject and HTML body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub text: String,
    pub html: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub text: String,
    /// Notifications: the email subject and push title.
    #[serde(default)]
    pub subject: Option<String>,
    /// Notifications: the email's HTML part. Placeholders are HTML-escaped,
    /// except those whose name ends in `_html` (e.g. `{digest.items_html}`).
    #[serde(default)]
    pub html: Option<String>,
    /// Values computed in Rhai from the context, read as `{vars.NAME}`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// For the people who edit templates; not sent.
    #[serde(default)]
    pub description: Option<String>,
}

/// A problem in a template, with the text it concerns (to locate it in the file).
#[derive(Debug)]
pub struct TemplateError {
    pub near: String,
    pub message: String,
}

fn parse(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed placeholder {{{name}")),
                    }
                }
                let path: Vec<String> = name.trim().split('.').map(str::to_owned).collect();
                if path.iter().any(|p| {
                    p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                }) {
                    return Err(format!(
                        "{{{name}}} is not a placeholder like {{customer.name}}"
                    ));
                }
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Value(path));
            }
            '}' => return Err("a lone `}`; write `}}` for a literal brace".into()),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

impl Template {
    pub fn compile(id: &str, spec: &TemplateSpec) -> Result<Template, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let mut parse_field = |text: &str| {
            parse(text)
                .map_err(|message| {
                    errors.push(TemplateError {
                        near: text.to_owned(),
                        message: format!("template {id}: {message}"),
                    })
                })
                .ok()
        };
        let parts = parse_field(&spec.text);
        let subject = spec.subject.as_deref().map(&mut parse_field);
        let html = spec.html.as_deref().map(&mut parse_field);
        let (Some(parts), Some(subject), Some(html)) = (
            parts,
            subject.map_or(Some(None), |s| s.map(Some)),
            html.map_or(Some(None), |h| h.map(Some)),
        ) else {
            return Err(errors);
        };
        let mut vars = Vec::new();
        for (name, source) in &spec.vars {
            match Expr::compile(source) {
                Ok(expr) => vars.push((name.clone(), expr)),
                Err(e) => errors.push(TemplateError {
                    near: source.clone(),
                    message: format!("template {id}, var {name}: {}", e.message),
                }),
            }
        }
        let every_part = parts
            .iter()
            .chain(subject.iter().flatten())
            .chain(html.iter().flatten());
        for part in every_part {
            let Part::Value(path) = part else { continue };
            if let Err(message) = check_path(path, &spec.vars) {
                errors.push(TemplateError {
                    near: format!("{{{}}}", path.join(".")),
                    message: format!("template {id}: {message}"),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Template {
            id: id.to_owned(),
            parts,
            subject,
            html,
            vars,
        })
    }

    /// The text with every placeholder filled, or why it cannot be.
    pub fn render(&self, context: &Context) -> Result<String, String> {
        let context = self.with_vars(context)?;
        self.fill(&self.parts, &context, false)
    }

    /// Text, subject and HTML, each with every placeholder filled.
    pub fn render_all(&self, context: &Context) -> Result<Rendered, String> {
        let context = self.with_vars(context)?;
        Ok(Rendered {
            text: self.fill(&self.parts, &context, false)?,
            subject: self
                .subject
                .as_ref()
                .map(|p| self.fill(p, &context, false))
                .transpose()?,
            html: self
                .html
                .as_ref()
                .map(|p| self.fill(p, &context, true))
                .transpose()?,
        })
    }

    fn with_vars(&self, context: &Context) -> Result<Context, String> {
        let mut computed = serde_json::Map::new();
        for (name, expr) in &self.vars {
            let value = expr
                .eval(context)
                .and_then(|v| to_json(&v))
                .map_err(|e| format!("template {}: var {name}: {}", self.id, e.message))?;
            computed.insert(name.clone(), value);
        }
        Ok(context.clone().with("vars", &computed.into()))
    }

    fn fill(&self, parts: &[Part], context: &Context, html: bool) -> Result<String, String> {
        let mut text = String::new();
        for part in parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Value(path) => {
                    let shown = context.lookup(path).and_then(display).ok_or_else(|| {
                        format!(
                            "template {}: {{{}}} has no value here",
                            self.id,
                            path.join(".")
                        )
                    })?;
                    let raw = path.last().is_some_and(|p| p.ends_with("_html"));
                    if html && !raw {
                        text.push_str(&escape_html(&shown));
                    } else {
                        text.push_str(&shown);
                    }
                }
            }
        }
        Ok(text)
    }
}

/// Whether a placeholder names something the context can hold.
fn check_path(path: &[String], vars: &BTreeMap<String, String>) -> Result<(), String> {
    let shown = path.join(".");
    let root = path[0].as_str();
    if root == "vars" {
        return match path.get(1) {
            Some(name) if vars.contains_key(name) && path.len() == 2 => Ok(()),
            _ => Err(format!("{{{shown}}} is not one of this template's vars")),
        };
    }
    let Some((_, fields)) = ROOTS.iter().find(|(r, _)| *r == root) else {
        let roots: Vec<&str> = ROOTS.iter().map(|(r, _)| *r).collect();
        return Err(format!(
            "{{{shown}}}: unknown root {root:?}; use one of {}, vars",
            roots.join(", ")
        ));
    };
    match (fields, path.get(1)) {
        (None, _) => Ok(()),
        (Some([]), None) => Ok(()),
        (Some(fields), Some(field)) if fields.contains(&field.as_str()) && path.len() == 2 => {
            Ok(())
        }
        (Some(fields), _) => Err(format!(
            "{{{shown}}}: {root} has the fields {}",
            fields.join(", ")
        )),
    }
}

pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How a value reads in a message; nothing for null (a gap).
fn display(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Array(items) => Some(
            items
                .iter()
                .filter_map(display)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        serde_json::Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str, vars: &[(&str, &str)]) -> TemplateSpec {
        TemplateSpec {
            text: text.into(),
            subject: None,
            html: None,
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            description: None,
        }
    }

    #[test]
    fn renders_paths_vars_and_braces() {
        let t = Template::compile(
            "t",
            &spec(
                "Hi {customer.name}, {listing.open_dates} dates {{left}}: {vars.pitch}",
                &[("pitch", "\"book \" + listing.title")],
            ),
        )
        .unwrap();
        let context = Context::default()
            .with("customer", &serde_json::json!({"name": "Ana"}))
            .with(
                "listing",
                &serde_json::json!({"open_dates": 4, "title": "Loft"}),
            );
        assert_eq!(
            t.render(&context).unwrap(),
            "Hi Ana, 4 dates {left}: book Loft"
        );
    }

    #[test]
    fn a_gap_is_an_error_never_a_raw_placeholder() {
        let t = Template::compile("t", &spec("Hi {customer.name}", &[])).unwrap();
        let context = Context::default().with("customer", &serde_json::json!({"name": null}));
        let err = t.render(&context).unwrap_err();
        assert!(err.contains("{customer.name}"), "{err}");
    }

    #[test]
    fn static_gaps_fail_validation() {
        for bad in [
            "{customr.name}",
            "{listing.colour}",
            "{vars.undeclared}",
            "{oops",
            "a } b",
        ] {
            assert!(Template::compile("t", &spec(bad, &[])).is_err(), "{bad}");
        }
        assert!(Template::compile("t", &spec("x", &[("v", "1 +")])).is_err());
    }

    #[test]
    fn html_parts_escape_values_except_html_ones() {
        let t = Template::compile(
            "t",
            &TemplateSpec {
                subject: Some("New from {customer.name}".into()),
                html: Some("<p>{message.content}</p>{digest.items_html}".into()),
                ..spec("{message.content}", &[])
            },
        )
        .unwrap();
        let context = Context::default()
            .with("customer", &serde_json::json!({"name": "Ana"}))
            .with("message", &serde_json::json!({"content": "a <b> & c"}))
            .with("digest", &serde_json::json!({"items_html": "<ul></ul>"}));
        let r = t.render_all(&context).unwrap();
        assert_eq!(r.subject.as_deref(), Some("New from Ana"));
        assert_eq!(r.text, "a <b> & c");
        assert_eq!(
            r.html.as_deref(),
            Some("<p>a &lt;b&gt; &amp; c</p><ul></ul>")
        );
    }
}
