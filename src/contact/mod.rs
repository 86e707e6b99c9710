//! Off-platform contact detection.
//!
//! [`Detector::analyze`] finds phone numbers, email addresses, links, social
//! and messaging handles or mentions, and payment handles or mentions in a
//! chat message, including deliberately disguised ones, and rates the
//! message's overall [`Risk`]. [`policy`] turns an [`Analysis`] into a
//! moderation decision.
//!
//! Pipeline: the text is folded once (look-alike characters, fullwidth and
//! other-script digits, keycaps, accents; see [`normalize`]) keeping a map to
//! original byte offsets; then emails, links, phone numbers and app mentions
//! are searched in the folded text (emails and links also in a copy where
//! spaced-out letters are joined). Links and addresses at the platform's own
//! domains are found too, but only so their digits are not mistaken for phone
//! numbers.
//!
//! Dependencies: `regex` for the patterns, `unicode-normalization` for the
//! compatibility decomposition used in folding. No phone-number library is
//! used: libphonenumber ports validate well-formed numbers, but the hard part
//! here is reading disguised digits (words in five languages, look-alike
//! letters, split groups) and telling phones from the other long numbers in
//! marketplace chat by context, which they do not do; a digit-group + context
//! heuristic covers the listed national formats without the extra metadata.

mod apps;
mod email;
mod normalize;
mod pattern;
mod phone;
pub mod policy;
mod url;

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use apps::AppFinder;
use email::EmailFinder;
use normalize::Folded;
use phone::PhoneFinder;
use url::UrlFinder;

pub use policy::{Action, ContactPolicy, Decision, PolicyError};

/// Settings for a [`Detector`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// The platform's own domains; links to them (any subdomain or path) and
    /// addresses at them are not contacts.
    pub platform_domains: Vec<String>,
    /// Detections below this confidence are dropped.
    pub min_confidence: f32,
    /// How many of the sender's previous messages are joined with the current
    /// one to find a number split across messages.
    pub history_messages: usize,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        DetectorConfig {
            platform_domains: vec!["example-market.com".to_string()],
            min_confidence: 0.5,
            history_messages: 3,
        }
    }
}

/// Kind of off-platform channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactKind {
    Phone,
    Email,
    Url,
    Social,
    MessagingApp,
    Payment,
}

/// Overall risk of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    None,
    Low,
    Medium,
    High,
}

/// One contact detail found in a message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    #[serde(rename = "type")]
    pub kind: ContactKind,
    /// Byte span in the original text, on char boundaries.
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
    /// Deliberately disguised: a standard pattern for its type would miss it.
    pub obfuscated: bool,
}

/// Result of analysing one message.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub has_contact: bool,
    pub risk: Risk,
    pub detections: Vec<Detection>,
}

/// Compiled detector; build once and share (it is `Send + Sync`).
pub struct Detector {
    platform: Vec<String>,
    min_confidence: f32,
    history_messages: usize,
    phone: PhoneFinder,
    email: EmailFinder,
    url: UrlFinder,
    apps: AppFinder,
}

/// Confidence from which a detection makes a message high risk.
const HIGH: f32 = 0.85;
/// Confidence from which a detection makes a message medium risk.
const MEDIUM: f32 = 0.65;
/// History longer than this (bytes per message) is cut to its tail: a split
/// number sits at the end of the previous message.
const HISTORY_TAIL: usize = 200;

impl Detector {
    pub fn new(config: &DetectorConfig) -> Detector {
        let platform = config
            .platform_domains
            .iter()
            .map(|d| {
                d.trim()
                    .trim_start_matches("www.")
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            })
            .filter(|d| !d.is_empty())
            .collect();
        Detector {
            platform,
            min_confidence: if config.min_confidence.is_finite() {
                config.min_confidence
            } else {
                0.5
            },
            history_messages: config.history_messages,
            phone: PhoneFinder::new(),
            email: EmailFinder::new(),
            url: UrlFinder::new(),
            apps: AppFinder::new(),
        }
    }

    /// Analyses one message.
    pub fn analyze(&self, text: &str) -> Analysis {
        self.analyze_with_context(text, &[], None)
    }

    /// Analyses a message together with the sender's previous messages in the
    /// same conversation (oldest first), to catch a number split across
    /// messages. Spans always refer to `text`.
    pub fn analyze_with_history(&self, text: &str, recent_from_same_sender: &[&str]) -> Analysis {
        self.analyze_with_context(text, recent_from_same_sender, None)
    }

    /// Like [`Detector::analyze_with_history`], also ignoring numbers, links
    /// and addresses that appear in `listing_context` (the listing's own
    /// address, its house rules, ...).
    pub fn analyze_with_context(
        &self,
        text: &str,
        recent_from_same_sender: &[&str],
        listing_context: Option<&str>,
    ) -> Analysis {
        let listing = listing_context.map(Folded::new);
        let listing_digits: String = listing_context
            .map(|l| l.chars().filter(char::is_ascii_digit).collect())
            .unwrap_or_default();
        let mut detections = self.detect(text, listing.as_ref(), &listing_digits);
        let keep = self.history_messages.min(recent_from_same_sender.len());
        if keep > 0 {
            let history = &recent_from_same_sender[recent_from_same_sender.len() - keep..];
            detections.extend(self.split_across_messages(text, history, &listing_digits));
        }
        self.finish(text, detections)
    }

    fn detect(&self, text: &str, listing: Option<&Folded>, listing_digits: &str) -> Vec<Detection> {
        let folded = Folded::new(text);
        let mut out = Vec::new();
        // Folded-text ranges whose digits belong to a link or address.
        let mut blocked = Vec::new();
        let in_listing = |f: &Folded, a: usize, b: usize| {
            listing.is_some_and(|l| b > a + 3 && l.text.contains(f.text[a..b].trim()))
        };

        let squeezed = folded.squeezed(b" ", 4);
        for view in std::iter::once(&folded).chain(squeezed.as_ref()) {
            let is_main = std::ptr::eq(view, &folded);
            for e in self.email.find(view, &self.platform) {
                if is_main {
                    blocked.push((e.start, e.end));
                }
                if !e.platform && !in_listing(view, e.start, e.end) {
                    out.push(make(
                        text,
                        view,
                        e.start,
                        e.end,
                        ContactKind::Email,
                        e.confidence,
                        e.disguised || !is_main,
                    ));
                }
            }
            for u in self.url.find(view, &self.platform) {
                let inside_email = out.iter().any(|d| {
                    d.kind == ContactKind::Email && overlaps(d, view.original_span(u.start, u.end))
                });
                if is_main {
                    blocked.push((u.start, u.end));
                }
                if u.platform || inside_email || in_listing(view, u.start, u.end) {
                    continue;
                }
                out.push(make(
                    text,
                    view,
                    u.start,
                    u.end,
                    u.kind,
                    u.confidence,
                    u.disguised || !is_main,
                ));
                if u.phone_in_path {
                    out.push(make(
                        text,
                        view,
                        u.start,
                        u.end,
                        ContactKind::Phone,
                        u.confidence,
                        u.disguised || !is_main,
                    ));
                }
            }
        }
        for p in self.phone.find(&folded, &blocked, listing_digits) {
            out.push(make(
                text,
                &folded,
                p.start,
                p.end,
                ContactKind::Phone,
                p.confidence,
                p.disguised,
            ));
        }
        for a in self.apps.find(&folded) {
            out.push(make(
                text,
                &folded,
                a.start,
                a.end,
                a.kind,
                a.confidence,
                a.disguised,
            ));
        }
        out
    }

    /// Phone numbers whose digits start in earlier messages and continue in
    /// `text`; the span covers the part in `text`.
    fn split_across_messages(
        &self,
        text: &str,
        history: &[&str],
        listing_digits: &str,
    ) -> Vec<Detection> {
        let mut joined = String::new();
        for h in history {
            let tail_from = floor_boundary(h, h.len().saturating_sub(HISTORY_TAIL));
            joined.push_str(&h[tail_from..]);
            joined.push(' ');
        }
        let offset = joined.len();
        joined.push_str(text);
        let folded = Folded::new(&joined);
        self.phone
            .find(&folded, &[], listing_digits)
            .into_iter()
            .filter_map(|p| {
                let (start, end) = folded.original_span(p.start, p.end);
                (start < offset && end > offset).then(|| Detection {
                    kind: ContactKind::Phone,
                    start: 0,
                    end: end - offset,
                    confidence: p.confidence.max(0.85),
                    obfuscated: true,
                })
            })
            .collect()
    }

    fn finish(&self, text: &str, mut detections: Vec<Detection>) -> Analysis {
        detections.retain(|d| {
            d.confidence >= self.min_confidence && d.start < d.end && d.end <= text.len()
        });
        detections.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
        // The same detail seen twice (main and squeezed view, or a name inside
        // a link) is reported once, keeping the widest span.
        // Sorted by start, so per kind the kept detection reaching furthest is
        // the only one that can contain the next.
        let mut unique: Vec<Detection> = Vec::with_capacity(detections.len());
        let mut widest: [Option<usize>; 6] = [None; 6];
        for d in detections {
            let slot = &mut widest[d.kind as usize];
            match slot.map(|i| &mut unique[i]) {
                Some(u) if d.end <= u.end => {
                    u.confidence = u.confidence.max(d.confidence);
                    u.obfuscated |= d.obfuscated;
                }
                _ => {
                    *slot = Some(unique.len());
                    unique.push(d);
                }
            }
        }
        let top = unique.iter().map(|d| d.confidence).fold(0.0_f32, f32::max);
        let risk = if unique.is_empty() {
            Risk::None
        } else if top >= HIGH {
            Risk::High
        } else if top >= MEDIUM {
            Risk::Medium
        } else {
            Risk::Low
        };
        Analysis {
            has_contact: !unique.is_empty(),
            risk,
            detections: unique,
        }
    }
}

/// Builds a detection from a folded range; `obfuscated` also when folding
/// changed the characters (fullwidth, look-alikes, keycaps).
fn make(
    text: &str,
    f: &Folded,
    a: usize,
    b: usize,
    kind: ContactKind,
    confidence: f32,
    disguised: bool,
) -> Detection {
    let (start, end) = f.original_span(a, b);
    let folding_changed = match (text.get(start..end), f.text.get(a..b)) {
        (Some(original), Some(folded)) => !original.is_ascii() && original.to_lowercase() != folded,
        _ => false,
    };
    Detection {
        kind,
        start,
        end,
        confidence,
        obfuscated: disguised || folding_changed,
    }
}

fn overlaps(d: &Detection, (a, b): (usize, usize)) -> bool {
    d.start < b && a < d.end
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Replaces every detection span (overlapping or touching spans merged) with
/// `replacement`. Spans outside the text or off char boundaries are ignored.
pub fn mask(text: &str, detections: &[Detection], replacement: &str) -> String {
    let mut spans: Vec<(usize, usize)> = detections
        .iter()
        .filter(|d| {
            d.start < d.end
                && d.end <= text.len()
                && text.is_char_boundary(d.start)
                && text.is_char_boundary(d.end)
        })
        .map(|d| (d.start, d.end))
        .collect();
    spans.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (a, b) in merged {
        out.push_str(&text[pos..a]);
        out.push_str(replacement);
        pos = b;
    }
    out.push_str(&text[pos..]);
    out
}

#[derive(Deserialize)]
struct JsonlInput {
    id: serde_json::Value,
    text: String,
    #[serde(default)]
    history: Vec<String>,
    #[serde(default)]
    listing_context: Option<String>,
}

#[derive(Serialize)]
struct JsonlOutput<'a> {
    id: &'a serde_json::Value,
    has_contact: bool,
    risk: Risk,
    detections: &'a [Detection],
    /// The policy's action for the phase given to `detect_jsonl`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<Action>,
}

#[derive(Serialize)]
struct JsonlError<'a> {
    id: &'a serde_json::Value,
    error: String,
}

/// `parleyd detect`: reads `{"id","text"}` JSONL (optional `history`: the
/// sender's previous messages, oldest first, and `listing_context`), writes
/// one `{"id","has_contact","risk","detections"}` line per non-blank input
/// line, in order. A malformed line yields `{"id","error"}` (id recovered
/// when possible, else null) and the run continues.
///
/// With `policy` (a policy and a phase, `pre_booking` or `post_booking`), each
/// line also carries the `action` that policy takes in that phase.
pub fn detect_jsonl(
    detector: &Detector,
    policy: Option<(&ContactPolicy, &str)>,
    input: impl BufRead,
    mut output: impl Write,
) -> std::io::Result<()> {
    for line in input.lines() {
        let line = match line {
            Ok(l) => l,
            // Invalid UTF-8 on one line: report it and go on.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                write_line(
                    &mut output,
                    &JsonlError {
                        id: &serde_json::Value::Null,
                        error: e.to_string(),
                    },
                )?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<JsonlInput>(&line) {
            Ok(input) => {
                let history: Vec<&str> = input.history.iter().map(String::as_str).collect();
                let analysis = detector.analyze_with_context(
                    &input.text,
                    &history,
                    input.listing_context.as_deref(),
                );
                write_line(
                    &mut output,
                    &JsonlOutput {
                        id: &input.id,
                        has_contact: analysis.has_contact,
                        risk: analysis.risk,
                        detections: &analysis.detections,
                        action: policy
                            .map(|(policy, phase)| policy.decide(phase, None, &analysis).action),
                    },
                )?;
            }
            Err(e) => {
                let id = recover_id(&line);
                write_line(
                    &mut output,
                    &JsonlError {
                        id: &id,
                        error: e.to_string(),
                    },
                )?;
            }
        }
    }
    output.flush()
}

fn write_line(output: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *output, value)?;
    output.write_all(b"\n")
}

/// The `id` of a line that is not a valid request, if it can be read.
fn recover_id(line: &str) -> serde_json::Value {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(line) {
        return map.get("id").cloned().unwrap_or(serde_json::Value::Null);
    }
    // Broken JSON: look for a leading "id": "..." or "id": 123.
    let Some(at) = line.find("\"id\"") else {
        return serde_json::Value::Null;
    };
    let rest = line[at + 4..]
        .trim_start()
        .strip_prefix(':')
        .unwrap_or("")
        .trim_start();
    if let Some(quoted) = rest.strip_prefix('"') {
        if let Some(end) = quoted.find('"') {
            return serde_json::Value::String(quoted[..end].to_string());
        }
    }
    let num: String = rest.chars().take_while(char::is_ascii_digit).collect();
    num.parse::<u64>()
        .map(serde_json::Value::from)
        .unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests;
