//! Email addresses, plain and disguised.
//!
//! One pattern accepts the usual ways of writing `@` and `.` out: `@` with
//! spaces, ` at `, `(at)`, `[arroba]`, `arobase`, and ` dot `, `(.)`,
//! `[dot]`, `punkt`, `point`, `punto`, `ponto`. Fullwidth `＠`, ideographic
//! dots and Cyrillic look-alike letters are already folded by
//! [`super::normalize`]; spaced-out letters are joined by the caller, which
//! runs this module on a squeezed view too. A match is kept only if its domain
//! ends in a known top-level domain or is a well-known mail provider (that is
//! how "jane@gmail." and "jane at gee mail" are caught while "meet at the
//! station" is not). A second pattern catches provider phrases: "my gmail is
//! jane.doe88", "jane.doe88 on hotmail", "find me on iCloud as jane".

use regex::Regex;

use super::normalize::Folded;
use super::url::{is_platform_host, is_tld};

#[derive(Debug, Clone)]
pub struct EmailMatch {
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
    /// True when the address is at one of the platform's own domains: not a
    /// detection, but its digits must not be read as a phone number.
    pub platform: bool,
    /// Written so that a standard address pattern would miss it.
    pub disguised: bool,
}

pub struct EmailFinder {
    address: Regex,
    phrase: Regex,
}

const AT: &str =
    r"(?:\s*@\s*|\s*[(\[{<]\s*(?:at|@|arroba|arobase)\s*[)\]}>]\s*|\s+(?:at|arroba|arobase)\s+)";
const DOT: &str = r"(?:\s?\.\s?|\s*[(\[{<]\s*(?:dot|\.|punkt|point|punto|ponto)\s*[)\]}>]\s*|\s+(?:dot|punkt|point|punto|ponto)\s+)";
const LABEL: &str = r"[a-z0-9](?:[a-z0-9-]{0,40}[a-z0-9])?";
const LOCAL: &str = r"[a-z0-9][a-z0-9._%+\-]*";
/// Providers as people say or misspell them, matched as a whole domain.
const SPOKEN_PROVIDER: &str = r"(?:gee\s?mail|g[\s-]mail|gmial|gmal|hot\s?mail|hotmial|yaho{2,3})";

/// Well-known mailbox providers (second-level labels).
const PROVIDERS: &[&str] = &[
    "gmail",
    "googlemail",
    "hotmail",
    "outlook",
    "live",
    "msn",
    "yahoo",
    "ymail",
    "icloud",
    "me",
    "mac",
    "aol",
    "proton",
    "protonmail",
    "pm",
    "gmx",
    "web",
    "t-online",
    "freenet",
    "yandex",
    "mail",
    "zoho",
    "uol",
    "bol",
    "terra",
    "ig",
    "free",
    "orange",
    "laposte",
    "sfr",
    "wanadoo",
    "btinternet",
    "sky",
    "bigpond",
    "optusnet",
    "rediffmail",
    "rediff",
    "qq",
    "163",
    "comcast",
    "verizon",
    "att",
    "fastmail",
    "tutanota",
    "hey",
    "libero",
    "virgilio",
    "telefonica",
    "movistar",
    "ntlworld",
    "virginmedia",
    "talktalk",
    "gmial",
    "gmal",
    "hotmial",
    "yahooo",
    "g-mail",
    "geemail",
    "gmai",
];

/// Words that are never the local part of an address written with " at "
/// ("look at gmail", "see you at yahoo").
const NOT_LOCAL: &[&str] = &[
    "me", "us", "you", "him", "her", "them", "it", "look", "looking", "is", "am", "are", "be",
    "was", "here", "there", "arrive", "arriving", "meet", "see", "stay", "staying", "work",
    "working", "home", "email", "mail", "write", "message", "find", "contact", "reach", "just",
    "that", "this", "what", "line", "drop", "send", "sent", "emailed", "i", "we", "they", "im",
    "i'm", "and", "or", "to",
];

impl EmailFinder {
    pub fn new() -> EmailFinder {
        let address = format!(
            r"\b(?P<local>{LOCAL}(?:\s(?:dot|underscore)\s{LOCAL})*)(?P<at>{AT})(?P<domain>{SPOKEN_PROVIDER}|{LABEL}(?:{DOT}{LABEL}){{0,4}})"
        );
        let provider_names = r"(?:g\s?-?mail|gee\s?mail|hotmail|outlook|yahoo|icloud|proton(?:\s?mail)?|gmx|aol|msn|ymail|yandex|btinternet|bigpond|rediffmail)";
        let handle = r"[a-z0-9][a-z0-9._\-]{2,40}";
        let phrase = format!(
            r"\b(?:{provider_names}\s*(?:address\s+)?(?:is|:|=|es|e|ist|est|c'est)\s*@?\s*(?P<h1>{handle})|(?:on|in|at|en|no|em|auf|sur|bei)\s+{provider_names}\s+(?:as|como|comme|als)\s+@?(?P<h2>{handle})|(?P<h3>{handle})\s+(?:on|en|no|em|auf|sur|bei)\s+{provider_names}\b)"
        );
        EmailFinder {
            address: Regex::new(&address).unwrap_or_else(|_| never()),
            phrase: Regex::new(&phrase).unwrap_or_else(|_| never()),
        }
    }

    pub fn find(&self, f: &Folded, platform: &[String]) -> Vec<EmailMatch> {
        let text = f.text.as_str();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let Some(c) = self.address.captures_at(text, pos) else {
                break;
            };
            let (Some(whole), Some(local), Some(at), Some(domain)) =
                (c.get(0), c.name("local"), c.name("at"), c.name("domain"))
            else {
                break;
            };
            match judge(local.as_str(), at.as_str(), domain.as_str(), platform) {
                Some((confidence, is_platform)) => {
                    let disguised = at.as_str() != "@" || !is_plain_domain(domain.as_str());
                    out.push(EmailMatch {
                        start: whole.start(),
                        end: whole.end(),
                        confidence,
                        platform: is_platform,
                        disguised,
                    });
                    pos = whole.end();
                }
                // A failed match may hide a real one starting inside it
                // ("a line at nina_reyes AT gmail DOT com"): retry from the
                // next word.
                None => pos = next_word(text, whole.start()),
            }
        }
        for c in self.phrase.captures_iter(text) {
            let Some(whole) = c.get(0) else { continue };
            let handle = c
                .name("h1")
                .or(c.name("h2"))
                .or(c.name("h3"))
                .map(|m| m.as_str())
                .unwrap_or("");
            let needs_addressy = c.name("h2").is_none();
            if plausible_handle(handle, needs_addressy)
                && !out
                    .iter()
                    .any(|e| e.start < whole.end() && whole.start() < e.end)
            {
                out.push(EmailMatch {
                    start: whole.start(),
                    end: whole.end(),
                    confidence: 0.85,
                    platform: false,
                    disguised: true,
                });
            }
        }
        out
    }
}

impl Default for EmailFinder {
    fn default() -> Self {
        EmailFinder::new()
    }
}

fn never() -> Regex {
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!("constant regex"))
}

fn next_word(text: &str, from: usize) -> usize {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() && b[i].is_ascii_alphanumeric() {
        i += 1;
    }
    (i + 1).min(text.len()).max(from + 1)
}

/// Confidence and "is the platform's own" for a candidate address.
fn judge(local: &str, at: &str, domain: &str, platform: &[String]) -> Option<(f32, bool)> {
    let labels: Vec<String> = split_domain(domain);
    let host = labels.join(".");
    if is_platform_host(&host, platform) {
        return Some((0.0, true));
    }
    let worded_at = !at.contains('@');
    if worded_at && NOT_LOCAL.contains(&local.trim()) {
        return None;
    }
    let first = labels.first().map(String::as_str).unwrap_or("");
    let provider = PROVIDERS.contains(&first) || is_spoken_provider(domain);
    let tld_ok = labels.len() >= 2
        && labels.last().is_some_and(|t| is_tld(t))
        && labels
            .iter()
            .all(|l| l.bytes().any(|c| c.is_ascii_alphabetic()));
    if !(tld_ok || provider) {
        return None;
    }
    if worded_at {
        // " at " is an ordinary word; demand an address-like local part or
        // a known provider.
        let addressy = is_addressy(local);
        // "i'm at home. net result": a plain dot with spaces around it only
        // counts after an address-like local part.
        let loose_dot = domain.contains(" .") || domain.contains(". ");
        if !(provider || addressy || (labels.len() >= 2 && !loose_dot && local.len() >= 3)) {
            return None;
        }
        return Some((if provider || addressy { 0.9 } else { 0.7 }, false));
    }
    Some((0.95, false))
}

/// `gmail.com`: labels joined by bare dots, ending in a known TLD.
fn is_plain_domain(domain: &str) -> bool {
    domain.contains('.')
        && domain
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-')
        && domain.rsplit('.').next().is_some_and(is_tld)
}

fn split_domain(domain: &str) -> Vec<String> {
    let mut s = domain.to_string();
    for w in [" dot ", " punkt ", " point ", " punto ", " ponto "] {
        s = s.replace(w, ".");
    }
    s.split(|c: char| {
        c == '.'
            || c == '('
            || c == ')'
            || c == '['
            || c == ']'
            || c == '{'
            || c == '}'
            || c == '<'
            || c == '>'
    })
    .map(|l| l.trim())
    .filter(|l| !l.is_empty() && !matches!(*l, "dot" | "punkt" | "point" | "punto" | "ponto"))
    .map(|l| l.to_string())
    .collect()
}

fn is_spoken_provider(domain: &str) -> bool {
    let squashed: String = domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    matches!(
        squashed.as_str(),
        "geemail" | "gmail" | "gmial" | "gmal" | "hotmail" | "hotmial" | "yahoo" | "yahooo"
    )
}

fn plausible_handle(h: &str, needs_addressy: bool) -> bool {
    if NOT_LOCAL.contains(&h) || h.len() < 3 {
        return false;
    }
    // "my outlook is good" and "jane on gmail" are too weak;
    // "my gmail is jane.doe88" and "jane.doe88 on gmail" are addresses.
    !needs_addressy || is_addressy(h)
}

fn is_addressy(local: &str) -> bool {
    local.contains(['.', '_', '-'])
        || local.bytes().any(|c| c.is_ascii_digit())
        || local.contains(" dot ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &str) -> bool {
        EmailFinder::new()
            .find(&Folded::new(s), &["example-market.com".to_string()])
            .iter()
            .any(|e| !e.platform)
    }

    #[test]
    fn finds_addresses() {
        for s in [
            "jane.doe88@gmail.com",
            "write to ben_patel at hotmail dot com",
            "olivia dot cohen at msn dot com",
            "mike.shah at gmx Punkt de",
            "ninaturner (AT) gmail (DOT) com",
            "hannah_turner(at)yahoo(dot)co(dot)uk",
            "tsmith74[arroba]uol[.]com[.]br",
            "miarossi91 arobase free point fr",
            "bookings＠mountainhideaway。de",
            "zoedoe73@ӏive.com",
            "mmartin94@gmail.",
            "liamkim at gee mail",
            "leila_shah @outlook .com",
            "My gmail is brown.ethan",
            "find me on iCloud as sofiagarcia",
            "patel.aisha on gmail",
        ] {
            assert!(found(s), "{s}");
        }
    }

    #[test]
    fn ignores_non_addresses() {
        for s in [
            "meet @ the station at 5",
            "see you @5pm",
            "leaving the keys @ reception. Paid already",
            "Drop me a line at the front desk",
            "email support@example-market.com please",
            "I'm at home. net result is fine",
            "look at gmail later",
        ] {
            assert!(!found(s), "{s}");
        }
    }
}
