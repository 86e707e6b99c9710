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

use super::pattern::compile;

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
    /// One written-out or bracketed dot, to retry shorter domains.
    dot: Regex,
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
    "me",
    "us",
    "you",
    "him",
    "her",
    "them",
    "it",
    "look",
    "looking",
    "is",
    "am",
    "are",
    "be",
    "was",
    "here",
    "there",
    "arrive",
    "arriving",
    "meet",
    "see",
    "stay",
    "staying",
    "work",
    "working",
    "home",
    "email",
    "mail",
    "write",
    "message",
    "find",
    "contact",
    "reach",
    "just",
    "that",
    "this",
    "what",
    "line",
    "drop",
    "send",
    "sent",
    "emailed",
    "i",
    "we",
    "they",
    "im",
    "i'm",
    "and",
    "or",
    "to",
    "full",
    "down",
    "broken",
    "blocked",
    "hacked",
    "dead",
    "old",
    "new",
    "not",
    "also",
    "the",
    "fine",
    "okay",
    "working",
    "gone",
    "closed",
    "deleted",
    "different",
    "same",
    "private",
    "personal",
    "busy",
    "slow",
    "better",
    "best",
    "good",
    "great",
    "weird",
];

impl EmailFinder {
    pub fn new() -> EmailFinder {
        let address = format!(
            r"\b(?P<local>{LOCAL}(?:\s(?:dot|underscore)\s{LOCAL})*)(?P<at>{AT})(?P<domain>{SPOKEN_PROVIDER}|{LABEL}(?:{DOT}{LABEL}){{0,4}})"
        );
        let provider_names = r"(?:g\s?-?mail|gee\s?mail|hotmail|outlook|yahoo|icloud|proton(?:\s?mail)?|gmx|aol|msn|ymail|yandex|btinternet|bigpond|rediffmail)";
        let handle = r"[a-z0-9][a-z0-9._\-]{2,40}";
        let phrase = format!(
            r"\b(?:(?:(?P<my>my|mon|ma|mi|meu|minha|mein|meine)\s+)?{provider_names}\s*(?:address\s+)?(?:is|:|=|es|e|ist|est|c'est)\s*@?\s*(?P<h1>{handle})|(?:on|in|at|en|no|em|auf|sur|bei)\s+{provider_names}\s+(?:as|como|comme|als)\s+@?(?P<h2>{handle})|(?P<h3>{handle})\s+(?:on|en|no|em|auf|sur|bei)\s+{provider_names}\b)"
        );
        EmailFinder {
            address: compile(&address),
            dot: compile(DOT),
            phrase: compile(&phrase),
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
            // The pattern is greedy ("jane@x.com. thanks" takes "thanks" as a
            // label): try the whole domain, then drop trailing labels.
            let full = domain.as_str();
            let cuts = std::iter::once(full.len()).chain(
                self.dot
                    .find_iter(full)
                    .map(|d| d.start())
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev(),
            );
            let found = cuts.filter(|&cut| cut > 0).find_map(|cut| {
                judge(local.as_str(), at.as_str(), &full[..cut], platform).map(|r| (cut, r))
            });
            match found {
                Some((cut, (confidence, is_platform))) => {
                    let disguised = at.as_str() != "@" || !is_plain_domain(&full[..cut]);
                    let end = domain.start() + cut;
                    out.push(EmailMatch {
                        start: whole.start(),
                        end,
                        confidence,
                        platform: is_platform,
                        disguised,
                    });
                    pos = end.max(pos + 1);
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
            // "my gmail is jane" and "on gmail as jane" name the mailbox;
            // bare "gmail: jane" or "jane on gmail" need an address-like handle.
            let needs_addressy = c.name("h2").is_none() && c.name("my").is_none();
            // "my gmail is jane.doe88." ends the sentence, not the handle.
            let end = whole.start() + whole.as_str().trim_end_matches(['.', '-', '_']).len();
            let handle = handle.trim_end_matches(['.', '-', '_']);
            if plausible_handle(handle, needs_addressy)
                && !out.iter().any(|e| e.start < end && whole.start() < e.end)
            {
                out.push(EmailMatch {
                    start: whole.start(),
                    end,
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
    let labels = split_domain(domain);
    if is_platform_host(&labels, platform) {
        return Some((0.0, true));
    }
    let worded_at = !at.contains('@');
    if worded_at && NOT_LOCAL.contains(&local.trim()) {
        return None;
    }
    let first = labels.first().copied().unwrap_or("");
    let spoken = is_spoken_provider(domain);
    let provider = PROVIDERS.contains(&first) || spoken;
    let tld_ok = labels.len() >= 2
        && labels.last().is_some_and(|t| is_tld(t))
        && labels
            .iter()
            .all(|l| l.bytes().any(|c| c.is_ascii_alphabetic()));
    // A bare provider name ("jane@gmail.") is an address; "x at gmx punkt de.
    // danke" needs a real TLD at the end, so the caller retries shorter.
    if !(tld_ok || (provider && (labels.len() == 1 || spoken))) {
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

/// Labels of a domain however its dots were written ("x (dot) co dot uk").
fn split_domain(domain: &str) -> Vec<&str> {
    domain
        .split(['.', ' ', '(', ')', '[', ']', '{', '}', '<', '>'])
        .filter(|l| !l.is_empty() && !matches!(*l, "dot" | "punkt" | "point" | "punto" | "ponto"))
        .collect()
}

fn is_spoken_provider(domain: &str) -> bool {
    // "gee mail", "g-mail", "hot mail": the provider with its parts apart.
    let mut squashed = [0u8; 16];
    let mut n = 0;
    for c in domain.bytes().filter(u8::is_ascii_alphanumeric) {
        if n == squashed.len() {
            return false;
        }
        squashed[n] = c;
        n += 1;
    }
    matches!(
        &squashed[..n],
        b"geemail" | b"gmail" | b"gmial" | b"gmal" | b"hotmail" | b"hotmial" | b"yahoo" | b"yahooo"
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
    // " dot " inside the local part also puts a '.'-free separator there.
    local
        .bytes()
        .any(|c| c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-' | b' '))
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
            "theo.marsh12@gmail.com",
            "reach me: priya_nair at hotmail dot com",
            "it's felix dot brandt at msn dot com",
            "schreib an lena.vogt at gmx punkt net",
            "omar.haddad (AT) protonmail (DOT) com",
            "ruth_ellis(at)btinternet(dot)co(dot)uk",
            "caio.lima[arroba]bol[.]com[.]br",
            "eloise.b arobase orange point fr",
            "hallo＠seeblickferien。de",
            "marco77@оutlook.com",
            "k.osei@gmail.",
            "liamkim at gee mail",
            "tariq.n @hotmail .com",
            "my gmail: walsh.imogen",
            "I'm on iCloud as yusuf.demir",
            "ingrid.solberg on gmail",
            "my yahoo is pieter.devries.",
        ] {
            assert!(found(s), "{s}");
        }
    }

    #[test]
    fn ignores_non_addresses() {
        for s in [
            "pick-up @ the ferry dock at 9",
            "doors open @7:30pm",
            "keys are @ the front desk, all paid",
            "Drop me a line at the front desk",
            "email support@example-market.com please",
            "I'm at home. net result is fine",
            "look at gmail later",
            "my gmail is full again",
            "my outlook is good for the week",
        ] {
            assert!(!found(s), "{s}");
        }
    }
}
