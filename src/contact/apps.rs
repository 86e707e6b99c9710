//! Mentions of social networks, messaging apps and payment apps, with or
//! without a handle, and `$cashtags`.
//!
//! Names are matched on a de-leeted view (`wh@tsapp`, `inst4`, `ca$h`) with
//! one optional separator allowed between any two letters (`z e l l e`,
//! `what's app`, `w.a.`, `dis cord`), against canonical names plus common
//! misspellings and euphemisms ("the gram", "blue bubbles", "zap").
//!
//! Unambiguous names ("WhatsApp", "Venmo") count on their own unless the
//! clause refuses them ("I don't have WhatsApp", "rather ... than Venmo").
//! Names that are also ordinary words or abbreviations ("signal", "snap",
//! "wa", "ig", "wise", "pix", "x") need a cue: a preposition or verb that
//! proposes a channel before them ("on", "via", "add me on", "schreib mir
//! auf", "me chama no", "do you have"), or "me", ":", "@handle" or a phone
//! number right after ("signal me", "WA +1 ...").

use regex::Regex;

use super::pattern::compile;

use super::normalize::Folded;
use super::ContactKind;

#[derive(Debug, Clone)]
pub struct AppMatch {
    pub start: usize,
    pub end: usize,
    pub kind: ContactKind,
    pub confidence: f32,
    pub disguised: bool,
}

pub struct AppFinder {
    names: Regex,
    handle_after: Regex,
    refusal: Regex,
    /// "I saw your place on Instagram": the app is where something was
    /// found, not a channel being offered.
    discovery: Regex,
    cashtag: Regex,
}

/// (spelling, kind, needs a cue, is a misspelling/euphemism).
type Entry = (&'static str, ContactKind, bool, bool);

use ContactKind::{MessagingApp as M, Payment as P, Social as S};

const ENTRIES: &[Entry] = &[
    ("whatsapp", M, false, false),
    ("whatsap", M, false, true),
    ("whatapp", M, false, true),
    ("whtsapp", M, false, true),
    ("whtsap", M, false, true),
    ("watsapp", M, false, true),
    ("watsap", M, false, true),
    ("whatzapp", M, false, true),
    ("vvhatsapp", M, false, true),
    ("wazzap", M, false, true),
    ("wassap", M, false, true),
    ("wasap", M, false, true),
    ("wasaap", M, false, true),
    ("guasap", M, false, true),
    ("zapzap", M, false, true),
    ("whats", M, true, true),
    ("wapp", M, true, true),
    ("wpp", M, true, true),
    ("wsp", M, true, true),
    ("wa", M, true, false),
    ("zap", M, true, false),
    ("telegram", M, false, false),
    ("telegrm", M, false, true),
    ("telegarm", M, false, true),
    ("tg", M, true, false),
    ("signal", M, true, false),
    ("signalapp", M, false, false),
    ("viber", M, false, false),
    ("wechat", M, false, false),
    ("weixin", M, false, false),
    ("lineapp", M, false, false),
    ("lineid", M, false, false),
    ("discord", M, false, false),
    ("discrd", M, false, true),
    ("kik", M, true, false),
    ("messenger", M, true, false),
    ("imessage", M, false, false),
    ("imsg", M, true, true),
    ("bluebubbles", M, false, true),
    ("bluebubble", M, false, true),
    ("facetime", M, false, false),
    ("instagram", S, false, false),
    ("instagrm", S, false, true),
    ("instagr", S, false, true),
    ("insta", S, false, false),
    ("thegram", S, true, true),
    ("ig", S, true, false),
    ("facebook", S, false, false),
    ("facebok", S, false, true),
    ("fbook", S, false, true),
    ("facebk", S, false, true),
    ("fb", S, true, false),
    ("snapchat", S, false, false),
    ("snapchap", S, false, true),
    ("snap", S, true, false),
    ("sc", S, true, false),
    ("ghostapp", S, false, true),
    ("tiktok", S, false, false),
    ("tictoc", S, false, true),
    ("tiktoc", S, false, true),
    ("twitter", S, false, false),
    ("x", S, true, false),
    ("linkedin", S, false, false),
    ("linkdin", S, false, true),
    ("youtube", S, false, false),
    ("yt", S, true, false),
    ("venmo", P, false, false),
    ("vemno", P, false, true),
    ("venmoo", P, false, true),
    ("cashapp", P, false, false),
    ("kashapp", P, false, true),
    ("paypal", P, false, false),
    ("paypai", P, false, true),
    ("paypall", P, false, true),
    ("pp", P, true, true),
    ("zelle", P, false, false),
    ("zell", P, true, true),
    ("zel", P, true, true),
    ("revolut", P, false, false),
    ("wise", P, true, false),
    ("pix", P, true, false),
    ("applepay", P, false, false),
    ("applecash", P, false, false),
    ("googlepay", P, false, false),
    ("gpay", P, false, false),
    ("bizum", P, false, false),
    ("mbway", P, false, false),
];

/// Characters allowed between two letters of a name.
const SEP: &str = r"[\s.\-_*'/]?";

impl AppFinder {
    pub fn new() -> AppFinder {
        let mut spellings: Vec<&str> = ENTRIES.iter().map(|e| e.0).collect();
        // Longest first so "whatsapp" wins over "whats" and "wa".
        spellings.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let alternation: Vec<String> = spellings
            .iter()
            .map(|s| {
                s.chars()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(SEP)
            })
            .collect();
        let names = format!(r"\b(?:{})\b", alternation.join("|"));
        AppFinder {
            names: compile(&names),
            handle_after: compile(
                r"^\s*(?:[:=\-—–(]\s*|(?:is|es|e|c'est|ist|est|as|como|comme|als|handle\s+is|id\s+is|name\s+is)\s+)?@?\s?[a-z0-9][a-z0-9._\-]{2,30}",
            ),
            refusal: compile(
                r"\b(?:don'?t|do\s+not|doesn'?t|didn'?t|never|not\s+on|no\s+longer|rather|than|instead\s+of|n'ai\s+pas|pas\s+de|no\s+tengo|nao\s+tenho|kein\w*|nicht|not\s+allowed|can'?t|cannot|won'?t|do\s+que|en\s+vez\s+de|em\s+vez\s+de|en\s+lugar\s+de|au\s+lieu\s+de|plutot\s+que|statt|anstatt)\b",
            ),
            discovery: compile(
                r"\b(?:saw|seen|found|noticed|spotted|discovered|heard|read|posted|vi|visto|encontre|gesehen|gefunden|trouve|vu)\b",
            ),
            cashtag: compile(r"(?:^|[^a-z0-9$])(\$[a-z][a-z0-9_]{2,19})\b"),
        }
    }

    pub fn find(&self, f: &Folded) -> Vec<AppMatch> {
        let text = f.text.as_str();
        let leet = f.deleeted();
        let mut out = Vec::new();
        for m in self.names.find_iter(&leet) {
            let squashed: String = m
                .as_str()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            let Some(&(spelling, kind, needs_cue, variant)) =
                ENTRIES.iter().find(|e| e.0 == squashed)
            else {
                continue;
            };
            let (start, end) = (m.start(), m.end());
            if self.refused(text, start) {
                continue;
            }
            let handle = self.handle_after_len(text, end);
            if handle.is_none() && self.discovery.is_match(clause_before(text, start, 40)) {
                continue;
            }
            let cued = cue_before(text, start) || cue_after(text, end) || handle.is_some();
            if needs_cue && !cued {
                continue;
            }
            let disguised = variant || is_disguised(&text[start..end], spelling);
            let end = end + handle.unwrap_or(0);
            let confidence = if handle.is_some() {
                0.9
            } else if cued {
                0.8
            } else {
                0.7
            };
            out.push(AppMatch {
                start,
                end,
                kind,
                confidence,
                disguised,
            });
        }
        for c in self.cashtag.captures_iter(text) {
            let Some(tag) = c.get(1) else { continue };
            let code = &tag.as_str()[1..];
            if !matches!(
                code,
                "usd" | "cad" | "aud" | "nzd" | "hkd" | "sgd" | "mxn" | "brl" | "us" | "au" | "ca"
            ) {
                out.push(AppMatch {
                    start: tag.start(),
                    end: tag.end(),
                    kind: P,
                    confidence: 0.9,
                    disguised: false,
                });
            }
        }
        out
    }

    /// "sorry, I don't have WhatsApp", "rather pay here than Venmo".
    fn refused(&self, text: &str, start: usize) -> bool {
        self.refusal.is_match(clause_before(text, start, 48))
    }

    /// Length of a handle right after a name ("IG: @jane", "insta is jane.d").
    fn handle_after_len(&self, text: &str, end: usize) -> Option<usize> {
        let rest = &text[end..];
        let m = self.handle_after.find(rest)?;
        // "insta is @jack.fit." ends the sentence, not the handle.
        let s = m.as_str().trim_end_matches(['.', '-', '_']);
        let marked =
            s.contains(['@', ':', '=']) || s.trim_start().starts_with(['-', '—', '–', '(']);
        let word = s
            .trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .rsplit(' ')
            .next()
            .unwrap_or("");
        if word.len() < 3 {
            return None;
        }
        let handle_like = word.contains(['.', '_']) || word.bytes().any(|c| c.is_ascii_digit());
        // A handle has letters ("WA 98188" is a ZIP code, not a handle), and
        // after "is"/"as" only something handle-shaped counts, not "is weak".
        let has_letter = word.bytes().any(|c| c.is_ascii_alphabetic());
        (has_letter && (marked || handle_like)).then_some(s.len())
    }
}

impl Default for AppFinder {
    fn default() -> Self {
        AppFinder::new()
    }
}

/// The part of the sentence before `start`, at most `max` bytes.
fn clause_before(text: &str, start: usize, max: usize) -> &str {
    let window = &text[floor_boundary(text, start.saturating_sub(max))..start];
    window
        .rsplit(['.', '!', '?', '\n', ';'])
        .next()
        .unwrap_or("")
}

fn floor_boundary(text: &str, mut i: usize) -> usize {
    while i > 0 && !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Written so a plain name match would miss it: leetspeak, or split other
/// than the usual one space ("cash app", "tik tok" are ordinary spellings).
fn is_disguised(written: &str, spelling: &str) -> bool {
    let separators = written
        .bytes()
        .filter(|c| !c.is_ascii_alphanumeric())
        .count();
    let letters: String = written
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    letters != spelling || separators > 1 || (separators == 1 && !written.contains(' '))
}

/// Up to three words before the name that propose a channel.
fn cue_before(text: &str, start: usize) -> bool {
    let head = &text[floor_boundary(text, start.saturating_sub(40))..start];
    let clause = head.rsplit(['.', '!', '?', '\n', ',']).next().unwrap_or("");
    clause
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .rev()
        .take(3)
        .any(|w| {
            matches!(
                w,
                "on" | "via"
                    | "through"
                    | "thru"
                    | "over"
                    | "auf"
                    | "no"
                    | "na"
                    | "em"
                    | "en"
                    | "sur"
                    | "par"
                    | "per"
                    | "por"
                    | "pelo"
                    | "pela"
                    | "my"
                    | "mi"
                    | "mon"
                    | "ma"
                    | "meu"
                    | "minha"
                    | "mein"
                    | "meine"
                    | "your"
                    | "ton"
                    | "tu"
                    | "seu"
                    | "sua"
                    | "dein"
                    | "have"
                    | "has"
                    | "tienes"
                    | "tiene"
                    | "tens"
                    | "tem"
                    | "hast"
                    | "as"
                    | "use"
                    | "add"
                    | "follow"
                    | "dm"
                    | "message"
                    | "text"
                    | "find"
                    | "hit"
                    | "um"
                    | "fazer"
                    | "faz"
                    | "al"
                    | "im"
                    | "i'm"
                    | "bei"
                    | "uber"
            )
        })
}

/// "signal me", "WA: ...", "zap +55 ...", "pix? chave: ...".
fn cue_after(text: &str, end: usize) -> bool {
    let rest = text[end..].trim_start();
    if rest
        .strip_prefix("me")
        .is_some_and(|r| !r.starts_with(|c: char| c.is_ascii_alphanumeric()))
    {
        return true;
    }
    if rest.starts_with([':', '@'])
        || rest.starts_with("app")
        || rest.starts_with("chave")
        || rest.starts_with("handle")
        || rest.starts_with("id ")
    {
        return true;
    }
    // A phone-length run of digits right after ("WA +1 310 ...").
    let window: String = rest.chars().take(24).collect();
    let leading = window.trim_start_matches(|c: char| !c.is_ascii_digit() && !c.is_alphabetic());
    leading
        .chars()
        .take_while(|c| !c.is_alphabetic())
        .filter(char::is_ascii_digit)
        .count()
        >= 7
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(s: &str) -> Vec<ContactKind> {
        AppFinder::new()
            .find(&Folded::new(s))
            .into_iter()
            .map(|m| m.kind)
            .collect()
    }

    #[test]
    fn finds_mentions() {
        for (s, k) in [
            ("got whatsapp by any chance? quicker for me", M),
            ("just wh@tsapp me the details", M),
            ("Melde dich kurz per WA bei mir", M),
            ("me manda um zap, 31 99812 4477", M),
            ("hit me on Signal, 0417 902 355", M),
            ("can we move to the L I N E app?", M),
            ("text me if you've got blue bubbles", M),
            ("look me up on inst4, same name", S),
            ("my handle on the ghost app is mila_r", S),
            ("I'm @tomas.draws on IG, DM there", S),
            ("snap me, I'm nora_k21", S),
            ("just Venmo the deposit straight to me", P),
            ("I take z e l l e too", P),
            ("pay via appl3 pay", P),
            ("pode fazer um pix? chave: 11 98027", P),
            ("cash app works: $NoraK21", P),
        ] {
            assert!(kinds(s).contains(&k), "{s}");
        }
    }

    #[test]
    fn ignores_ordinary_words_and_refusals() {
        for s in [
            "cell signal drops near the bridge",
            "the left turn signal on the van blinks fast",
            "the snap peas in the fridge are for you",
            "parking was a snap",
            "we drive up from Spokane, WA 99201",
            "I'm not on WhatsApp, so let's stay in this chat",
            "I'd rather pay through the app than Venmo",
            "the garden is so instagrammable at dusk",
            "That's $150 total",
            "Drop me a line at the desk",
            "send pix of the bathroom",
            "Instant Pot is in the cupboard",
            "I saw your place on Instagram, it looks amazing",
        ] {
            assert!(kinds(s).is_empty(), "{s}");
        }
    }
}
