//! Message templates (`templates/*.yaml`): text with `{path}` placeholders
//! filled from the context (`{customer.name}`, `{listing.open_dates}`,
//! `{vars.promo}`), plus values computed in Rhai (`vars:`). `{{` and `}}` are
//! literal braces.
//!
//! A placeholder that can never be filled (an unknown root or field, an
//! undeclared var, an unknown format) fails validation. One that is empty when
//! the step fires (a customer without a name) makes the step skip, recorded
//! with the reason: a message is never sent with a raw `{name}` in it.
//!
//! Times are shown on the reader's clock: the caller gives the time zone of
//! whoever reads the rendering, and `{booking.start}` reads "Sat 5 Dec, 14:00
//! CET" in it (daylight saving from the tz database). `{path|utc}` shows the
//! same in UTC, `{path|iso}` an instant as RFC 3339 UTC, and `{path|local}`
//! asks for the reader's zone for a free-form value (`{plugin.expires|local}`).

use std::collections::BTreeMap;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;

use super::script::{report, to_json, Context, Expr};

/// The roots a template may name, each with its fields (`None`: free-form).
pub type Roots<'a> = &'a [(&'a str, Option<&'a [&'a str]>)];

/// The fields the engine puts in each context root; `event` and `plugin` are
/// free-form (`None`).
const ROOTS: Roots<'static> = &[
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
            "timezone",
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

/// Which part of an instant a time field shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// "Sat 5 Dec, 14:00 CET"
    Instant,
    /// "Sat 5 Dec"
    Date,
    /// "14:00 CET"
    Time,
}

/// The fields that hold times: the placeholder, the RFC 3339 value it is read
/// from, and what it shows.
const TIMES: &[(&[&str], &[&str], Shape)] = &[
    (&["booking", "start"], &["booking", "start"], Shape::Instant),
    (
        &["booking", "start_date"],
        &["booking", "start"],
        Shape::Date,
    ),
    (
        &["booking", "start_time"],
        &["booking", "start"],
        Shape::Time,
    ),
    (&["booking", "end"], &["booking", "end"], Shape::Instant),
    (&["booking", "end_date"], &["booking", "end"], Shape::Date),
    (&["booking", "end_time"], &["booking", "end"], Shape::Time),
    (
        &["conversation", "inquiry_at"],
        &["conversation", "inquiry_at"],
        Shape::Instant,
    ),
    (&["now"], &["now"], Shape::Instant),
];

/// The time field a placeholder names, if it names one.
fn time_field(path: &[String]) -> Option<(&'static [&'static str], Shape)> {
    TIMES
        .iter()
        .find(|(p, _, _)| p.iter().eq(path.iter()))
        .map(|&(_, source, shape)| (source, shape))
}

/// How a placeholder shows a time: `{path}`, `{path|utc}`, `{path|iso}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// In the reader's time zone (the default for time fields).
    Local,
    /// As `Local`, in UTC.
    Utc,
    /// RFC 3339 in UTC (`2030-12-05T13:00:00Z`); instants only.
    Iso,
}

const FORMATS: &[(&str, Format)] = &[
    ("local", Format::Local),
    ("utc", Format::Utc),
    ("iso", Format::Iso),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Value {
        path: Vec<String>,
        format: Option<Format>,
        /// As written, braces included (to locate an error in the file).
        written: String,
    },
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
    /// Line and column inside `near` (for script errors), 1-based.
    pub offset: Option<(usize, usize)>,
    pub message: String,
}

/// The parts of a template text. A malformed placeholder is left out and
/// added to `problems` (near it), so the rest is still checked; a brace never
/// closed or opened fails the whole text.
fn parse(text: &str, problems: &mut Vec<TemplateError>) -> Result<Vec<Part>, TemplateError> {
    let whole = |message: String| TemplateError {
        near: text.to_owned(),
        offset: None,
        message,
    };
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
                        None => return Err(whole(format!("unclosed placeholder {{{name}"))),
                    }
                }
                let at_placeholder = |message: String| TemplateError {
                    near: format!("{{{name}}}"),
                    offset: None,
                    message,
                };
                let (path, format) = match name.split_once('|') {
                    Some((path, format)) => (path, Some(format.trim())),
                    None => (name.as_str(), None),
                };
                let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
                if path.iter().any(|p| {
                    p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                }) {
                    problems.push(at_placeholder(format!(
                        "{{{name}}} is not a placeholder like {{customer.name}} or {{booking.start|utc}}"
                    )));
                    continue;
                }
                let format = match format {
                    None => None,
                    Some(f) => match FORMATS.iter().find(|(n, _)| *n == f) {
                        Some(&(_, format)) => Some(format),
                        None => {
                            let known: Vec<&str> = FORMATS.iter().map(|(n, _)| *n).collect();
                            problems.push(at_placeholder(format!(
                                "{{{name}}}: unknown format {f:?}; use one of {}",
                                known.join(", ")
                            )));
                            continue;
                        }
                    },
                };
                if !literal.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut literal)));
                }
                parts.push(Part::Value {
                    path,
                    format,
                    written: format!("{{{name}}}"),
                });
            }
            '}' => return Err(whole("a lone `}`; write `}}` for a literal brace".into())),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Text(literal));
    }
    Ok(parts)
}

/// Why a template could not be filled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unfilled {
    /// A var's Rhai expression raised an error: the rules are at fault.
    #[error("{0}")]
    Failed(String),
    /// A placeholder has no value here (a customer without a name): the data is.
    #[error("{0}")]
    NoValue(String),
}

impl Template {
    pub fn compile(id: &str, spec: &TemplateSpec) -> Result<Template, Vec<TemplateError>> {
        Template::compile_with(id, spec, ROOTS)
    }

    /// [`Template::compile`] for a context with other `roots` (the
    /// provider reports' recommendations).
    pub fn compile_with(
        id: &str,
        spec: &TemplateSpec,
        roots: Roots<'_>,
    ) -> Result<Template, Vec<TemplateError>> {
        let mut errors = Vec::new();
        let mut parse_field = |text: &str| {
            let mut problems = Vec::new();
            let parts = parse(text, &mut problems)
                .map_err(|e| problems.push(e))
                .ok();
            errors.extend(problems.into_iter().map(|e| TemplateError {
                near: e.near,
                offset: e.offset,
                message: format!("template {id}: {}", e.message),
            }));
            parts
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
                    offset: Some((e.line.max(1), e.column.max(1))),
                    message: format!("template {id}, var {name}: {}", e.message),
                }),
            }
        }
        let every_part = parts
            .iter()
            .chain(subject.iter().flatten())
            .chain(html.iter().flatten());
        for part in every_part {
            let Part::Value {
                path,
                format,
                written,
            } = part
            else {
                continue;
            };
            let checked = check_path(path, &spec.vars, roots)
                .and_then(|free_form| check_format(path, *format, free_form));
            if let Err(message) = checked {
                errors.push(TemplateError {
                    near: written.clone(),
                    offset: None,
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

    /// Its Rhai expressions (the vars), to place them in their file.
    pub fn scripts_mut(&mut self) -> impl Iterator<Item = &mut Expr> {
        self.vars.iter_mut().map(|(_, expr)| expr)
    }

    /// The text with every placeholder filled, times shown in `zone` (the
    /// reader's), or why it cannot be.
    pub fn render(&self, context: &Context, zone: &TimeZone) -> Result<String, Unfilled> {
        let context = self.with_vars(context).map_err(Unfilled::Failed)?;
        self.fill(&self.parts, &context, zone, false)
            .map_err(Unfilled::NoValue)
    }

    /// Text, subject and HTML, each with every placeholder filled, times
    /// shown in `zone` (the reader's).
    pub fn render_all(&self, context: &Context, zone: &TimeZone) -> Result<Rendered, String> {
        let context = self.with_vars(context)?;
        Ok(Rendered {
            text: self.fill(&self.parts, &context, zone, false)?,
            subject: self
                .subject
                .as_ref()
                .map(|p| self.fill(p, &context, zone, false))
                .transpose()?,
            html: self
                .html
                .as_ref()
                .map(|p| self.fill(p, &context, zone, true))
                .transpose()?,
        })
    }

    fn with_vars(&self, context: &Context) -> Result<Context, String> {
        let mut computed = serde_json::Map::new();
        for (name, expr) in &self.vars {
            let value = expr.eval(context).and_then(|v| to_json(&v)).map_err(|e| {
                report(&format!("template/{}", self.id), &e);
                format!("template {}: var {name}: {e}", self.id)
            })?;
            computed.insert(name.clone(), value);
        }
        Ok(context.clone().with("vars", &computed.into()))
    }

    fn fill(
        &self,
        parts: &[Part],
        context: &Context,
        zone: &TimeZone,
        html: bool,
    ) -> Result<String, String> {
        let mut text = String::new();
        for part in parts {
            match part {
                Part::Text(t) => text.push_str(t),
                Part::Value {
                    path,
                    format,
                    written,
                } => {
                    let shown = show(context, path, *format, zone).ok_or_else(|| {
                        format!("template {}: {written} has no value here", self.id)
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

/// Whether a placeholder names something the context can hold; `Ok(true)`
/// when it is free-form (under `event`, `plugin`, `digest`, or a var), so
/// only its value when sent tells what it is.
fn check_path(
    path: &[String],
    vars: &BTreeMap<String, String>,
    roots: Roots<'_>,
) -> Result<bool, String> {
    let shown = path.join(".");
    let root = path[0].as_str();
    if root == "vars" {
        return match path.get(1) {
            Some(name) if vars.contains_key(name) && path.len() == 2 => Ok(true),
            _ => Err(format!("{{{shown}}} is not one of this template's vars")),
        };
    }
    let Some((_, fields)) = roots.iter().find(|(r, _)| *r == root) else {
        let roots: Vec<&str> = roots.iter().map(|(r, _)| *r).collect();
        return Err(format!(
            "{{{shown}}}: unknown root {root:?}; use one of {}, vars",
            roots.join(", ")
        ));
    };
    match (fields, path.get(1)) {
        (None, _) => Ok(true),
        (Some([]), None) => Ok(false),
        (Some(fields), Some(field)) if fields.contains(&field.as_str()) && path.len() == 2 => {
            Ok(false)
        }
        (Some(fields), _) => Err(format!(
            "{{{shown}}}: {root} has the fields {}",
            fields.join(", ")
        )),
    }
}

/// Whether a placeholder's format suits what it names: a time field takes
/// any (but `iso` only for a whole instant), another known field none, and a
/// free-form one any (its value must then be an RFC 3339 time when sent).
fn check_format(path: &[String], format: Option<Format>, free_form: bool) -> Result<(), String> {
    let shown = path.join(".");
    match (format, time_field(path)) {
        (None, _) => Ok(()),
        (Some(Format::Iso), Some((source, Shape::Date | Shape::Time))) => Err(format!(
            "{{{shown}|iso}}: iso shows a whole instant; use {{{}|iso}}",
            source.join(".")
        )),
        (Some(_), Some(_)) => Ok(()),
        (Some(_), None) if free_form => Ok(()),
        (Some(_), None) => {
            let times: Vec<String> = TIMES.iter().map(|(p, _, _)| p.join(".")).collect();
            Err(format!(
                "{{{shown}}} is not a time; formats apply to {}, and to free-form values",
                times.join(", ")
            ))
        }
    }
}

/// A placeholder's text in a rendering, `None` for a gap (no value, or a
/// format on a value that is not an RFC 3339 time).
fn show(
    context: &Context,
    path: &[String],
    format: Option<Format>,
    zone: &TimeZone,
) -> Option<String> {
    let (source, shape) = match time_field(path) {
        Some((source, shape)) => (source.iter().map(|s| s.to_string()).collect(), shape),
        None if format.is_some() => (path.to_vec(), Shape::Instant),
        None => return context.lookup(path).and_then(display),
    };
    let at: Timestamp = context.lookup(&source)?.as_str()?.parse().ok()?;
    let now = context
        .lookup(&["now".to_owned()])
        .and_then(|v| v.as_str()?.parse().ok());
    let zone = match format.unwrap_or(Format::Local) {
        Format::Local => zone.clone(),
        Format::Utc => TimeZone::UTC,
        Format::Iso => return Some(at.to_string()),
    };
    Some(clock_text(at, now, zone, shape))
}

/// An instant as people read it on a clock in `zone`: "Sat 5 Dec, 14:00 CET"
/// (the year appears when it is not now's), or its date or time of day. The
/// zone is named by its tz database abbreviation, or as "UTC+5:30" for a zone
/// that has none (the database then gives a bare offset such as "+0530").
fn clock_text(at: Timestamp, now: Option<Timestamp>, zone: TimeZone, shape: Shape) -> String {
    let local = at.to_zoned_datetime(zone.clone());
    let this_year = now.map(|n| n.to_zoned_datetime(zone).year());
    let date = if this_year == Some(local.year()) {
        local.strftime("%a %-d %b").to_string()
    } else {
        local.strftime("%a %-d %b %Y").to_string()
    };
    let abbreviation = local.strftime("%Z").to_string();
    let zone_name = if abbreviation.starts_with(['+', '-']) {
        let seconds = local.offset().seconds();
        let (sign, seconds) = if seconds < 0 {
            ('-', -seconds)
        } else {
            ('+', seconds)
        };
        match (seconds / 3600, seconds % 3600 / 60) {
            (h, 0) => format!("UTC{sign}{h}"),
            (h, m) => format!("UTC{sign}{h}:{m:02}"),
        }
    } else {
        abbreviation
    };
    let time = format!("{} {zone_name}", local.strftime("%H:%M"));
    match shape {
        Shape::Instant => format!("{date}, {time}"),
        Shape::Date => date,
        Shape::Time => time,
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
            t.render(&context, &TimeZone::UTC).unwrap(),
            "Hi Ana, 4 dates {left}: book Loft"
        );
    }

    #[test]
    fn a_gap_is_an_error_never_a_raw_placeholder() {
        let t = Template::compile("t", &spec("Hi {customer.name}", &[])).unwrap();
        let context = Context::default().with("customer", &serde_json::json!({"name": null}));
        let err = t.render(&context, &TimeZone::UTC).unwrap_err();
        assert!(
            matches!(&err, Unfilled::NoValue(e) if e.contains("{customer.name}")),
            "{err}"
        );
    }

    #[test]
    fn static_gaps_fail_validation() {
        for bad in [
            "{customr.name}",
            "{listing.colour}",
            "{vars.undeclared}",
            "{oops",
            "a } b",
            "{booking.start|local_time}",
            "{booking.start_date|iso}",
            "{listing.title|utc}",
            "{customer.name|}",
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
        let r = t.render_all(&context, &TimeZone::UTC).unwrap();
        assert_eq!(r.subject.as_deref(), Some("New from Ana"));
        assert_eq!(r.text, "a <b> & c");
        assert_eq!(
            r.html.as_deref(),
            Some("<p>a &lt;b&gt; &amp; c</p><ul></ul>")
        );
    }

    fn booking_at(start: &str, now: &str) -> Context {
        Context::default()
            .with(
                "booking",
                &serde_json::json!({"start": start, "end": "2030-07-01T12:00:00Z"}),
            )
            .with("now", &serde_json::json!(now))
    }

    fn render(text: &str, context: &Context, zone: &str) -> String {
        Template::compile("t", &spec(text, &[]))
            .unwrap()
            .render(context, &TimeZone::get(zone).unwrap())
            .unwrap()
    }

    #[test]
    fn times_show_on_the_readers_clock_with_daylight_saving() {
        let text = "{booking.start} | {booking.start_date} at {booking.start_time}";
        // 13:00Z is 14:00 in Paris in winter (CET), 15:00 in summer (CEST).
        let winter = booking_at("2030-12-07T13:00:00Z", "2030-11-30T09:00:00Z");
        assert_eq!(
            render(text, &winter, "Europe/Paris"),
            "Sat 7 Dec, 14:00 CET | Sat 7 Dec at 14:00 CET"
        );
        let summer = booking_at("2030-06-01T13:00:00Z", "2030-05-30T09:00:00Z");
        assert_eq!(
            render(text, &summer, "Europe/Paris"),
            "Sat 1 Jun, 15:00 CEST | Sat 1 Jun at 15:00 CEST"
        );
        // The reader's date, not UTC's: 02:00Z on the 8th is the 7th in New York.
        let late = booking_at("2030-12-08T02:00:00Z", "2030-11-30T09:00:00Z");
        assert_eq!(
            render(text, &late, "America/New_York"),
            "Sat 7 Dec, 21:00 EST | Sat 7 Dec at 21:00 EST"
        );
        // Another year than now's shows the year.
        let next_year = booking_at("2031-01-04T13:00:00Z", "2030-12-20T09:00:00Z");
        assert_eq!(
            render("{booking.start}", &next_year, "Europe/Paris"),
            "Sat 4 Jan 2031, 14:00 CET"
        );
        // A zone the tz database names by its offset only.
        assert_eq!(
            render("{booking.start_time}", &winter, "Asia/Kathmandu"),
            "18:45 UTC+5:45"
        );
        assert_eq!(
            render("{booking.start_time}", &winter, "America/Sao_Paulo"),
            "10:00 UTC-3"
        );
    }

    #[test]
    fn templates_can_ask_for_utc_or_iso() {
        let context = booking_at("2030-12-07T13:00:00Z", "2030-11-30T09:00:00Z").with(
            "plugin",
            &serde_json::json!({"expires": "2030-12-09T23:30:00Z", "code": "X"}),
        );
        assert_eq!(
            render(
                "{booking.start|utc} / {booking.start_time|utc} / {booking.start|iso} / {now|iso}",
                &context,
                "Europe/Paris"
            ),
            "Sat 7 Dec, 13:00 UTC / 13:00 UTC / 2030-12-07T13:00:00Z / 2030-11-30T09:00:00Z"
        );
        // A free-form value is shown as a time only when asked.
        assert_eq!(
            render(
                "{plugin.expires} / {plugin.expires|local}",
                &context,
                "Europe/Paris"
            ),
            "2030-12-09T23:30:00Z / Tue 10 Dec, 00:30 CET"
        );
        // A format on a free-form value that is not a time is a gap.
        let t = Template::compile("t", &spec("{plugin.code|local}", &[])).unwrap();
        assert!(t.render(&context, &TimeZone::UTC).is_err());
    }

    #[test]
    fn format_errors_point_at_the_placeholder() {
        for (text, near, says) in [
            (
                "On {booking.start|utcc}!",
                "{booking.start|utcc}",
                "unknown format",
            ),
            (
                "On {booking.start_date|iso}!",
                "{booking.start_date|iso}",
                "use {booking.start|iso}",
            ),
            (
                "For {listing.title|utc}",
                "{listing.title|utc}",
                "not a time",
            ),
        ] {
            let errors = Template::compile("t", &spec(text, &[])).unwrap_err();
            assert_eq!(errors[0].near, near, "{text}");
            assert!(errors[0].message.contains(says), "{}", errors[0].message);
        }
    }
}
