//! Links, bare domains and "search for us" directions.
//!
//! The host pattern accepts a dot written as `.`, ` dot `, `(.)`, `[.]`,
//! `punto`/`ponto`/`punkt`/`point`, a spaced dot, or (only when a path
//! follows) a comma; the other dot characters (`•`, `・`, `。`) are folded to
//! `.` before. A candidate must end in a known top-level domain; loosely
//! written dots and TLDs that are also common words ("it", "me", "in") need
//! more evidence (a path, `www`, a scheme, or a known site), so sentence
//! breaks like "ok. me too" are not read as links. Links to the platform's
//! own domains are reported separately so the caller can ignore them (and
//! their digits).

use regex::Regex;

use super::pattern::compile;

use super::normalize::Folded;
use super::ContactKind;

#[derive(Debug, Clone)]
pub struct UrlMatch {
    pub start: usize,
    pub end: usize,
    pub kind: ContactKind,
    pub confidence: f32,
    /// A link to the platform's own domain: not a detection.
    pub platform: bool,
    /// `wa.me/<digits>`: the link is also a phone number.
    pub phone_in_path: bool,
    /// Written so that a standard link pattern would miss it.
    pub disguised: bool,
}

pub struct UrlFinder {
    link: Regex,
    /// One dot as written in a host, to retry shorter hosts.
    udot: Regex,
    search: Regex,
}

const LABEL: &str = r"[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?";
const UDOT: &str = r"(?:\.|\s\.\s?|\.\s|\s*[(\[{]\s*(?:\.|dot|punto|ponto|punkt|point)\s*[)\]}]\s*|\s+(?:dot|punto|ponto|punkt|point)\s+|,)";
const PATH: &str = r"(?:\s?/\s?[^\s]*|\s+(?:slash|barra)\s+[^\s]+)*";

/// Top-level domains people actually use in chat.
const TLDS: &[&str] = &[
    "com",
    "net",
    "org",
    "edu",
    "gov",
    "io",
    "co",
    "me",
    "ly",
    "ee",
    "gle",
    "gl",
    "at",
    "be",
    "de",
    "fr",
    "es",
    "it",
    "nl",
    "uk",
    "au",
    "br",
    "mx",
    "in",
    "ca",
    "us",
    "info",
    "biz",
    "app",
    "site",
    "online",
    "store",
    "shop",
    "page",
    "link",
    "to",
    "gg",
    "tv",
    "cc",
    "ai",
    "dev",
    "xyz",
    "pt",
    "ch",
    "ie",
    "nz",
    "pl",
    "se",
    "eu",
    "travel",
    "studio",
    "design",
    "photo",
    "photos",
    "pro",
    "blog",
    "club",
    "life",
    "world",
    "space",
    "art",
    "tech",
    "website",
    "fm",
    "la",
    "ar",
    "cl",
    "pe",
    "co.uk",
    "dk",
    "no",
    "fi",
    "cz",
    "gr",
    "za",
    "ae",
    "sg",
    "hk",
    "jp",
    "kr",
    "id",
    "ph",
    "vn",
    "ng",
    "ke",
    "bio",
    "email",
    "rentals",
    "house",
    "homes",
    "holiday",
    "events",
    "services",
    "agency",
    "media",
    "works",
    "cafe",
    "rest",
    "menu",
    "gallery",
    "tours",
    "vacations",
    "beauty",
    "fitness",
    "is",
    "ws",
    "nu",
    "ru",
    "ua",
    "ro",
    "hu",
    "tr",
];

/// TLDs that are also everyday words or abbreviations; they need a path,
/// `www`, a scheme or a known site before they count.
const AMBIGUOUS_TLDS: &[&str] = &[
    "it", "me", "in", "is", "at", "to", "no", "be", "us", "la", "id", "co", "rest", "menu", "art",
    "life", "pro",
];

/// Sites whose bare name is itself evidence ("t.me", "bit.ly").
const KNOWN_SITES: &[&str] = &[
    "t",
    "wa",
    "m",
    "bit",
    "tinyurl",
    "cutt",
    "shorturl",
    "linktr",
    "forms",
    "instagram",
    "facebook",
    "fb",
    "tiktok",
    "twitter",
    "x",
    "linkedin",
    "youtube",
    "youtu",
    "snapchat",
    "paypal",
    "venmo",
    "cash",
    "wise",
    "revolut",
    "calendly",
    "typeform",
    "jotform",
    "airbnb",
    "booking",
    "vrbo",
    "etsy",
    "yelp",
    "thumbtack",
    "upwork",
    "fiverr",
    "craigslist",
    "telegram",
    "discord",
    "whatsapp",
    "signal",
    "line",
    "wechat",
    "ow",
    "rb",
    "is",
    "goo",
    "rebrand",
    "tiny",
    "linkin",
    "beacons",
    "lnk",
    "carrd",
    "wix",
    "squarespace",
];

impl UrlFinder {
    pub fn new() -> UrlFinder {
        let link = format!(
            r"(?P<scheme>\bhttps?\s?:\s?//\s?)?(?P<host>\b{LABEL}(?:{UDOT}{LABEL}){{0,4}}{UDOT}(?P<tld>[a-z]{{2,11}})\b)(?P<path>{PATH})"
        );
        let search = r"(?x)
            \b(?:google|search\s+(?:for\s+)?|look\s+(?:us\s+|me\s+)?up|find\s+us|busca(?:nos|r)?|pesquis[ae]|googeln?|cherche[zr]?)\b
            [^.!?\n]{0,60}?\b(?:book|reserv|order|buch|contact|call|agend|commande)\w*
            [^.!?\n]{0,40}?\b(?:direct\w*|site|website|web|no\s+fees?|without\s+(?:the\s+)?fees?|sin\s+comision\w*|sem\s+taxa\w*|ohne\s+gebuhr\w*|sans\s+frais|save|cheaper)
          | \b(?:search\s+for|look\s+(?:us|me)\s+up|find\s+(?:us|me))\b[^.!?\n]{0,50}?\b(?:on|in)\s+(?:google|online|bing|airbnb|vrbo|booking|etsy|yelp|thumbtack|fiverr|upwork|craigslist|ebay)\b";
        UrlFinder {
            link: compile(&link),
            udot: compile(UDOT),
            search: compile(search),
        }
    }

    pub fn find(&self, f: &Folded, platform: &[String]) -> Vec<UrlMatch> {
        let text = f.text.as_str();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < text.len() {
            let Some(c) = self.link.captures_at(text, pos) else {
                break;
            };
            let (Some(whole), Some(host), Some(tld)) = (c.get(0), c.name("host"), c.name("tld"))
            else {
                break;
            };
            let path = c.name("path").map(|m| m.as_str()).unwrap_or("");
            let has_scheme = c.name("scheme").is_some();
            // The pattern is greedy ("site.com. thanks" reads "thanks" as the
            // TLD): try the whole host, then without trailing labels.
            let h = host.as_str();
            let dots: Vec<usize> = self.udot.find_iter(h).map(|d| d.start()).collect();
            let whole_host =
                judge(h, tld.as_str(), path, has_scheme, platform).map(|m| (m, whole.end()));
            let shorter = || {
                dots.iter().rev().skip(1).find_map(|&cut| {
                    let short = &h[..cut];
                    let last = self.udot.find_iter(short).last()?;
                    let tld = short[last.end()..].trim();
                    judge(short, tld, "", has_scheme, platform).map(|m| (m, host.start() + cut))
                })
            };
            match whole_host.or_else(shorter) {
                Some((mut m, end)) => {
                    m.start = whole.start();
                    m.end = trim_trailing(text, whole.start(), end);
                    out.push(m);
                    pos = end.max(pos + 1);
                }
                // An unknown TLD stays unknown for every host inside this
                // match, so skip it; otherwise a later label may start a
                // valid host ("123.example.com").
                None if !is_tld(tld.as_str()) => pos = whole.end().max(pos + 1),
                None => pos = next_label(text, whole.start()),
            }
        }
        for m in self.search.find_iter(text) {
            out.push(UrlMatch {
                start: m.start(),
                end: m.end(),
                kind: ContactKind::Url,
                confidence: 0.75,
                platform: false,
                phone_in_path: false,
                disguised: true,
            });
        }
        out
    }
}

impl Default for UrlFinder {
    fn default() -> Self {
        UrlFinder::new()
    }
}

fn next_label(text: &str, from: usize) -> usize {
    let b = text.as_bytes();
    let mut i = from;
    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'-') {
        i += 1;
    }
    (i + 1).min(text.len()).max(from + 1)
}

fn trim_trailing(text: &str, start: usize, mut end: usize) -> usize {
    while end > start && text[..end].ends_with(['.', ',', '!', '?', ';', ':', ')', ']', '\'', '"'])
    {
        end -= 1;
    }
    end
}

/// Whether `t` is a top-level domain this module recognises.
pub fn is_tld(t: &str) -> bool {
    TLDS.contains(&t)
}

/// Whether a host, given as labels, is one of the platform's domains
/// (lower case, no `www.`) or a subdomain of one.
pub fn is_platform_host<S: AsRef<str>>(labels: &[S], platform: &[String]) -> bool {
    platform.iter().any(|d| {
        let wanted = d.split('.').count();
        labels.len() >= wanted
            && labels[labels.len() - wanted..]
                .iter()
                .map(AsRef::as_ref)
                .eq(d.split('.'))
    })
}

/// Labels of a host however its dots were written.
fn host_labels(host: &str) -> Vec<&str> {
    host.split(['.', ',', ' ', '(', ')', '[', ']', '{', '}'])
        .filter(|l| !l.is_empty() && !matches!(*l, "dot" | "punto" | "ponto" | "punkt" | "point"))
        .collect()
}

fn judge(
    host: &str,
    tld: &str,
    path: &str,
    has_scheme: bool,
    platform: &[String],
) -> Option<UrlMatch> {
    let bracketed = host.contains(['(', '[', '{']);
    let has_path = !path.trim().is_empty();
    // An unlisted TLD ("rb(.)gy/xyz") still counts when the dot is
    // deliberately disguised or a scheme is given, and a path follows.
    if !is_tld(tld) && !((bracketed || has_scheme) && has_path && (2..=3).contains(&tld.len())) {
        return None;
    }
    let labels = host_labels(host);
    if labels.len() < 2
        || !labels
            .iter()
            .all(|l| l.bytes().any(|c| c.is_ascii_alphabetic()))
    {
        return None;
    }
    let platform_host = is_platform_host(&labels, platform);
    let tight = !host.contains(' ') && !host.contains(',') && !host.contains(['(', '[', '{']);
    let worded = bracketed
        || host
            .split_whitespace()
            .any(|w| matches!(w, "dot" | "punto" | "ponto" | "punkt" | "point"));
    let www = labels[0] == "www";
    let site = site_label(&labels);
    let known = KNOWN_SITES.contains(&site);
    let evidence = has_path || has_scheme || www || known;
    if host.contains(',') && !has_path {
        return None;
    }
    let second_level = labels.len() >= 3
        && matches!(labels[labels.len() - 2], "co" | "com" | "org" | "net")
        && tld.len() == 2;
    if !(tight || worded || evidence || tld == "com" || second_level) {
        // Spaced dot: "great. net price" is a sentence break.
        return None;
    }
    if AMBIGUOUS_TLDS.contains(&tld) && !evidence {
        return None;
    }
    if site.len() < 2 && !known {
        return None;
    }
    let (kind, phone_in_path) = classify(site, tld, path);
    Some(UrlMatch {
        start: 0,
        end: 0,
        kind,
        confidence: if evidence || tight { 0.95 } else { 0.8 },
        platform: platform_host,
        phone_in_path,
        disguised: !tight,
    })
}

/// The registrable label: "instagram" in "www.instagram.com", "bbc" in
/// "bbc.co.uk".
fn site_label<'a>(labels: &[&'a str]) -> &'a str {
    let n = labels.len();
    if n >= 3
        && matches!(labels[n - 2], "co" | "com" | "org" | "net" | "gov" | "ac")
        && labels[n - 1].len() == 2
    {
        return labels[n - 3];
    }
    labels.get(n.saturating_sub(2)).copied().unwrap_or("")
}

fn classify(site: &str, tld: &str, path: &str) -> (ContactKind, bool) {
    let path_digits = path.bytes().filter(u8::is_ascii_digit).count();
    let kind = match (site, tld) {
        (
            "instagram" | "facebook" | "fb" | "tiktok" | "twitter" | "x" | "linkedin" | "youtube"
            | "youtu" | "snapchat" | "pinterest" | "threads",
            _,
        ) => ContactKind::Social,
        ("t" | "wa" | "m" | "line" | "signal", "me")
        | ("whatsapp" | "telegram" | "discord" | "viber" | "wechat" | "kik", _) => {
            ContactKind::MessagingApp
        }
        ("paypal" | "venmo" | "wise" | "revolut", _) | ("cash", "app") => ContactKind::Payment,
        _ => ContactKind::Url,
    };
    let phone_in_path = site == "wa" && (7..=15).contains(&path_digits);
    (kind, phone_in_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<ContactKind> {
        UrlFinder::new()
            .find(&Folded::new(s), &["example-market.com".to_string()])
            .into_iter()
            .filter(|m| !m.platform)
            .map(|m| m.kind)
            .collect()
    }

    #[test]
    fn finds_links() {
        for s in [
            "check https://www.handyhelpers.net/availability",
            "book direct at lakehouse-stays.com.",
            "pics: bit.ly/3kQvR8p",
            "is[.]gd/kayak22",
            "rb(.)gy/p4xw1q",
            "lakesidekayaks dot com/rates",
            "blueharbourtours dot co dot nz/book",
            "booking .com/hotel/us/x .html",
            "calendly,com/marta-surfschool",
            "pinecabin•typeform•com/to/Q8z",
            "search Harbour Light Cabins online and book with us direct, cheaper",
            "look us up on Airbnb, same flat",
        ] {
            assert_eq!(kinds(s).len(), 1, "{s}");
        }
        assert_eq!(kinds("t.me/jane_doe"), vec![ContactKind::MessagingApp]);
        assert_eq!(kinds("instagram . com / jane"), vec![ContactKind::Social]);
        assert_eq!(kinds("paypal.me/TomasReyes"), vec![ContactKind::Payment]);
    }

    #[test]
    fn ignores_non_links() {
        for s in [
            "see www.example-market.com/help and app.example-market.com/inbox",
            "ok. me too",
            "great. net price is fine",
            "it was rated 4.8, fine",
            "e.g. the blue one",
            "Seattle, WA 98101",
            "I love it.It is great",
            "Google Maps works fine there",
        ] {
            assert!(kinds(s).is_empty(), "{s}");
        }
    }
}
