//! Phone numbers: plain, international, and disguised.
//!
//! The folded text is cut into word tokens. A token is digit-like when it is a
//! digit run, a number word in one of five languages (leetspeak undone:
//! `e1ght`, `sev3n`, `si><`), a multiplier (`double`, `doble`, `doppel`), or a
//! digit run with letters used as digits (`5o7`, `07B57`). Digit-like tokens
//! separated only by punctuation, emoji, spacing or a few filler words
//! (`then`, `and`, `no spaces`, `rest is`) form a chain; a chain of 7–15
//! digits is a candidate. Numbers that are really prices, dates, times,
//! percentages or measures are masked first, so they break chains.
//!
//! A candidate becomes a detection depending on its shape (a `+` prefix,
//! disguise) and its context: words like "call", "cell", "llámame", "ruf an"
//! support it; "order", "tracking", "confirmation", "code" right before it
//! veto it.

use regex::Regex;

use super::pattern::compile;

use super::normalize::Folded;

/// A phone number found in a folded text (folded byte offsets).
#[derive(Debug, Clone)]
pub struct PhoneMatch {
    pub start: usize,
    pub end: usize,
    pub confidence: f32,
    /// Disguised in a way a plain digit pattern would miss (words, look-alike
    /// letters, split parts, odd separators).
    pub disguised: bool,
}

pub struct PhoneFinder {
    /// Numbers that are not contacts: prices, dates, times, percentages, sizes.
    barriers: Regex,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A digit run; `lookalike` when letters stood in for some digits.
    Digits {
        lookalike: bool,
    },
    NumberWord(u8),
    /// `twenty`..`ninety` (and Romance equivalents): a digit that takes the
    /// next number word as its second digit, else 0.
    Tens(u8),
    /// `hundred`, `cien`, `cent`: appends "00".
    Hundred,
    /// Digits and number words glued together (`5five5`, `44seven8`).
    Glued,
    /// `double` / `triple`: repeats the next digit.
    Times(u8),
    Filler,
    Other,
}

#[derive(Debug, Clone, Copy)]
struct Token {
    start: usize,
    end: usize,
    kind: Kind,
}

/// How a word bears on a nearby number.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Cue {
    /// "call", "cell", "whatsapp", "llámame": the number is for contacting.
    Strong,
    /// "number", "my #": supports unless something more specific vetoes.
    Weak,
    /// "order", "tracking", "code": the number is an identifier.
    Veto,
}

const MIN_DIGITS: usize = 7;
const MAX_DIGITS: usize = 15;
/// Words looked at on each side of a candidate for cues.
const CONTEXT_BEFORE: usize = 6;
const CONTEXT_AFTER: usize = 4;

impl PhoneFinder {
    pub fn new() -> PhoneFinder {
        let barriers = compile(BARRIERS);
        PhoneFinder { barriers }
    }

    /// Finds phone numbers in `f`, ignoring digits inside `blocked` folded
    /// ranges (URLs, emails) and numbers whose digits appear in
    /// `listing_digits` (the listing's own address, etc.).
    pub fn find(
        &self,
        f: &Folded,
        blocked: &[(usize, usize)],
        listing_digits: &str,
    ) -> Vec<PhoneMatch> {
        let text = f.text.as_str();
        let mut masked: Vec<(usize, usize)> = blocked.to_vec();
        // Every barrier starts from a digit; most messages have none.
        if text.bytes().any(|c| c.is_ascii_digit()) {
            for m in self.barriers.find_iter(text) {
                if is_real_barrier(text, m.start(), m.end()) {
                    masked.push((m.start(), m.end()));
                }
            }
        }
        let tokens = tokenize(text, &masked);
        let message_cue = tokens
            .iter()
            .any(|t| t.kind == Kind::Other && cue(&text[t.start..t.end]) == Some(Cue::Strong));
        let mut out = Vec::new();
        for (first, last) in chains(text, &tokens) {
            if let Some(m) = self.judge(text, &tokens, first, last, message_cue, listing_digits) {
                out.push(m);
            }
        }
        out
    }

    fn judge(
        &self,
        text: &str,
        tokens: &[Token],
        first: usize,
        last: usize,
        message_cue: bool,
        listing_digits: &str,
    ) -> Option<PhoneMatch> {
        let chain = &tokens[first..=last];
        let digits = chain_digits(text, chain);
        let n = digits.len();
        if !(MIN_DIGITS..=MAX_DIGITS).contains(&n) {
            return None;
        }
        if n >= 5 && listing_digits.contains(digits.as_str()) {
            return None;
        }
        let end = chain[chain.len() - 1].end;
        // A "+" or "(" right before the digits belongs to the number, so
        // masking hides "+1 (415) 555-0123" whole.
        let digits_start = chain[0].start;
        let prefix_start = text[..digits_start].trim_end_matches([' ', '(', '+']).len();
        let prefix = &text[prefix_start..digits_start];
        let start = if prefix.contains(['+', '(']) {
            digits_start - prefix.trim_start().len()
        } else {
            digits_start
        };
        let plus = prefix.contains('+') || digits.starts_with("00");
        let words = chain
            .iter()
            .filter(|t| {
                matches!(
                    t.kind,
                    Kind::NumberWord(_)
                        | Kind::Times(_)
                        | Kind::Tens(_)
                        | Kind::Hundred
                        | Kind::Glued
                )
            })
            .count();
        let lookalike = chain
            .iter()
            .any(|t| t.kind == Kind::Digits { lookalike: true });
        let fillers = chain.iter().any(|t| t.kind == Kind::Filler);
        let singles = chain
            .iter()
            .filter(|t| matches!(t.kind, Kind::Digits { .. }) && t.end - t.start == 1)
            .count();
        let odd_seps = has_odd_separator(text, chain);
        let grouped_plain = chain.len() > 1;

        if looks_like_years(text, chain) {
            return None;
        }
        let (before, after) = context(text, tokens, first, last);
        if before == Some(Cue::Veto) || text[..start].trim_end().ends_with('#') {
            return None;
        }
        let supported = before.is_some() || after.is_some();

        let disguised = words > 0 || lookalike || fillers || singles >= 5 || odd_seps;
        let confidence = if words >= 3 || fillers || singles >= 5 || odd_seps {
            // Spelled-out, spaced-out or split digits are a deliberate disguise.
            if supported || plus {
                0.95
            } else {
                0.85
            }
        } else if lookalike {
            if supported || message_cue {
                0.9
            } else {
                return None;
            }
        } else if plus && n >= 8 {
            0.95
        } else if supported {
            0.9
        } else if (9..=13).contains(&n) && (grouped_plain || n >= 10) {
            0.6
        } else {
            return None;
        };
        Some(PhoneMatch {
            start,
            end,
            confidence,
            disguised,
        })
    }
}

impl Default for PhoneFinder {
    fn default() -> Self {
        PhoneFinder::new()
    }
}

/// Prices, percentages, times, dates, ratings, measures, ordinals.
const BARRIERS: &str = r"(?x)
    (?:[$€£¥₹₩₽]|\b(?:r|us|au|ca|nz|hk|s|c|a)\$|\b(?:eur|usd|gbp|chf|inr|brl|mxn|aud|cad)\s?)\s?\d[\d.,]*(?:\s?[km]\b)?
  | \d[\d.,]*\s?(?:[€£$₹]|\b(?:eur|euros?|usd|dollars?|bucks|reais|pesos|rupees|pounds|quid|chf)\b)
  | \d+(?:[.,]\d+)?\s?%
  | \b\d{1,2}(?::\d{2}){1,2}(?:\s?[ap]\.?m\.?)?
  | \b\d{1,2}h\d{0,2}\b
  | \b\d{1,2}\s?(?:[ap]\.?m\b\.?|ish\b|uhr\b|hrs?\b|o'?clock\b)
  | \b\d{1,4}[/.\-]\d{1,2}[/.\-]\d{2,4}\b
  | \b\d{1,2}/\d{1,2}\b
  | \b\d+(?:[.,]\d+)?\s?(?:x\s?\d+(?:[.,]\d+)?\s?)?(?:sq\.?\s?(?:ft|m|yd)|sqft|sqm|m2|m²|km|cm|mm|kg|lbs?|ft|miles?|gb|tb|mb|ghz|mah|mp|kw|ml|\x22|k\b|nights?|noches|nuits|nachte|noites|days?|dias|jours|tage|weeks?|months?|years?|yrs?|hours?|mins?|minutes|seconds|secs?|guests?|adults?|adultos|adultes|kids?|children|teens?|people|persons?|pax|stars?|bedrooms?|beds?|baths?|bathrooms?|rooms?|floors?|steps|blocks?|stairs|seats?|pieces?|pcs)\b
  | \b\d(?:[.,]\d+)?/(?:5|10)\b | \b10/10\b
  | \b\d+(?:st|nd|rd|th|er|eme|o|a|º|ª)\b
";

/// Rejects date-like barriers that are really part of a longer digit chain
/// (`07.30.23.63.74`, `5-5-1-0-5-...`).
fn is_real_barrier(text: &str, start: usize, end: usize) -> bool {
    let b = text.as_bytes();
    let slice = &b[start..end];
    let datey = slice
        .iter()
        .all(|c| c.is_ascii_digit() || matches!(c, b'/' | b'.' | b'-'));
    if !datey {
        return true;
    }
    let next_digit_group =
        end + 1 < b.len() && matches!(b[end], b'/' | b'.' | b'-') && b[end + 1].is_ascii_digit();
    let prev_digit_group =
        start >= 2 && matches!(b[start - 1], b'/' | b'.' | b'-') && b[start - 2].is_ascii_digit();
    !(next_digit_group || prev_digit_group)
}

fn tokenize(text: &str, masked: &[(usize, usize)]) -> Vec<Token> {
    let b = text.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !is_word_byte(text, i) {
            i += utf8_len(b[i]);
            continue;
        }
        let start = i;
        while i < b.len()
            && (is_word_byte(text, i) || is_inner_leet(b, i) || is_x_leet(b, i, start))
        {
            i += if b[i] == b'>' { 2 } else { utf8_len(b[i]) };
        }
        let end = i.min(b.len());
        let in_mask = masked.iter().any(|&(a, z)| start < z && end > a);
        let kind = if in_mask {
            Kind::Other
        } else {
            classify(&text[start..end])
        };
        tokens.push(Token { start, end, kind });
    }
    tokens
}

fn utf8_len(first: u8) -> usize {
    match first {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        _ => 4,
    }
}

fn is_word_byte(text: &str, i: usize) -> bool {
    let c = text.as_bytes()[i];
    if c.is_ascii() {
        return c.is_ascii_alphanumeric();
    }
    // Non-ASCII letters (another script) are words too; emoji are not.
    text.get(i..)
        .and_then(|s| s.chars().next())
        .is_some_and(|ch| ch.is_alphabetic())
        && is_char_start(c)
}

fn is_char_start(c: u8) -> bool {
    (c & 0xC0) != 0x80
}

/// `f!ve`, `wh@t`, `ca$h`: a leet symbol inside a word (touching at least
/// one letter, so `7|0|2` stays three digit tokens).
fn is_inner_leet(b: &[u8], i: usize) -> bool {
    matches!(b[i], b'!' | b'@' | b'$' | b'|')
        && i > 0
        && i + 1 < b.len()
        && b[i - 1].is_ascii_alphanumeric()
        && b[i + 1].is_ascii_alphanumeric()
        && (b[i - 1].is_ascii_alphabetic() || b[i + 1].is_ascii_alphabetic())
}

/// `si><`: "><" drawn as an x after letters.
fn is_x_leet(b: &[u8], i: usize, start: usize) -> bool {
    i > start && b[i] == b'>' && b.get(i + 1) == Some(&b'<')
}

fn classify(word: &str) -> Kind {
    if word.bytes().all(|c| c.is_ascii_digit()) {
        return Kind::Digits { lookalike: false };
    }
    let known = if word.bytes().all(|c| c.is_ascii_lowercase()) {
        number_word(word)
    } else {
        number_word(&deleet(word))
    };
    if let Some(k) = known {
        return k;
    }
    if is_filler(word) {
        return Kind::Filler;
    }
    if glued_digits(word).is_some() {
        return Kind::Glued;
    }
    let has_digit = word.bytes().any(|c| c.is_ascii_digit());
    let letters = word.bytes().filter(|c| c.is_ascii_alphabetic()).count();
    let digits = word.bytes().filter(|c| c.is_ascii_digit()).count();
    if has_digit
        && letters <= digits
        && word
            .bytes()
            .all(|c| c.is_ascii_digit() || lookalike_digit(c).is_some())
    {
        return Kind::Digits { lookalike: true };
    }
    Kind::Other
}

fn deleet(word: &str) -> String {
    word.replace("><", "x")
        .chars()
        .map(|c| match c {
            '0' => 'o',
            '1' | '!' => 'i',
            '3' => 'e',
            '4' | '@' => 'a',
            '5' | '$' => 's',
            '7' => 't',
            '|' => 'l',
            other => other,
        })
        .collect()
}

/// Letters commonly typed in place of digits.
fn lookalike_digit(c: u8) -> Option<u8> {
    Some(match c {
        b'o' => b'0',
        b'l' | b'i' => b'1',
        b'z' => b'2',
        b'e' => b'3',
        b's' => b'5',
        b't' => b'7',
        b'b' => b'8',
        b'g' | b'q' => b'9',
        _ => return None,
    })
}

/// Digit words in English, Spanish, Portuguese, French and German (folded:
/// lower case, no accents), plus homophones used as disguises ("won", "too",
/// "for", "ate"); those only matter inside a chain of other digits.
fn number_word(w: &str) -> Option<Kind> {
    let d = match w {
        "zero" | "oh" | "o" | "cero" | "null" | "nul" => 0,
        "one" | "won" | "uno" | "una" | "un" | "une" | "um" | "uma" | "eins" | "ein" | "eine" => 1,
        "two" | "too" | "dos" | "deux" | "dois" | "duas" | "zwei" | "zwo" => 2,
        "three" | "tres" | "trois" | "drei" => 3,
        "four" | "for" | "fore" | "cuatro" | "quatre" | "quatro" | "vier" => 4,
        "five" | "cinco" | "cinq" | "funf" | "fuenf" => 5,
        "six" | "seis" | "sechs" => 6,
        "seven" | "siete" | "sept" | "sete" | "sieben" => 7,
        "eight" | "ate" | "ocho" | "huit" | "oito" | "acht" => 8,
        "nine" | "niner" | "nueve" | "neuf" | "nove" | "neun" => 9,
        "ten" | "diez" | "dez" | "dix" => return Some(Kind::Tens(1)),
        "twenty" | "veinte" | "vinte" | "vingt" => return Some(Kind::Tens(2)),
        "thirty" | "treinta" | "trinta" | "trente" => return Some(Kind::Tens(3)),
        "forty" | "cuarenta" | "quarenta" | "quarante" => return Some(Kind::Tens(4)),
        "fifty" | "cincuenta" | "cinquenta" | "cinquante" => return Some(Kind::Tens(5)),
        "sixty" | "sesenta" | "sessenta" | "soixante" => return Some(Kind::Tens(6)),
        "seventy" | "setenta" => return Some(Kind::Tens(7)),
        "eighty" | "ochenta" | "oitenta" => return Some(Kind::Tens(8)),
        "ninety" | "noventa" => return Some(Kind::Tens(9)),
        "hundred" | "cien" | "cem" | "cent" => return Some(Kind::Hundred),
        "double" | "doble" | "doppel" | "dupla" | "duplo" => return Some(Kind::Times(2)),
        "triple" | "triplo" | "tripla" | "dreifach" => return Some(Kind::Times(3)),
        _ => return None,
    };
    Some(Kind::NumberWord(d))
}

/// `5five5` -> "555": runs of digits and number words with nothing between.
fn glued_digits(word: &str) -> Option<String> {
    let b = word.as_bytes();
    if !(b.iter().any(u8::is_ascii_digit) && b.iter().any(u8::is_ascii_alphabetic)) {
        return None;
    }
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let digit = b[i].is_ascii_digit();
        let mut j = i;
        while j < b.len() && b[j].is_ascii_digit() == digit && (b[j].is_ascii_alphanumeric()) {
            j += 1;
        }
        if j == i {
            return None;
        }
        let run = &word[i..j];
        if digit {
            out.push_str(run);
        } else {
            match number_word(run) {
                Some(Kind::NumberWord(d)) => out.push(char::from(b'0' + d)),
                _ => return None,
            }
        }
        i = j;
    }
    Some(out)
}

/// Words people put between the parts of a number they split on purpose.
fn is_filler(w: &str) -> bool {
    matches!(
        w,
        "then"
            | "and"
            | "y"
            | "e"
            | "et"
            | "und"
            | "dann"
            | "puis"
            | "depois"
            | "luego"
            | "after"
            | "no"
            | "spaces"
            | "space"
            | "dash"
            | "hyphen"
            | "slash"
            | "dot"
            | "point"
            | "punto"
            | "ponto"
            | "punkt"
            | "rest"
            | "is"
            | "the"
            | "last"
            | "first"
            | "part"
            | "ends"
            | "end"
            | "in"
            | "with"
            | "starts"
            | "followed"
            | "by"
            | "plus"
    )
}

/// Splits tokens into chains of digit-like tokens; returns (first, last)
/// token indices of chains that contain at least one digit-like token.
fn chains(text: &str, tokens: &[Token]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, usize)> = None;
    let mut fillers_since = 0;
    for (i, t) in tokens.iter().enumerate() {
        match t.kind {
            Kind::Digits { .. }
            | Kind::NumberWord(_)
            | Kind::Times(_)
            | Kind::Tens(_)
            | Kind::Hundred
            | Kind::Glued => {
                let joined = current
                    .filter(|&(_, last)| fillers_since <= 3 && gap_ok(text, tokens, last, i));
                current = match joined {
                    Some((first, _)) => Some((first, i)),
                    None => {
                        out.extend(current);
                        Some((i, i))
                    }
                };
                fillers_since = 0;
            }
            Kind::Filler if current.is_some() => fillers_since += 1,
            _ => {
                out.extend(current.take());
                fillers_since = 0;
            }
        }
    }
    out.extend(current);
    out
}

/// Whether the text between token `a` and token `b` (fillers allowed) can
/// sit inside one phone number.
fn gap_ok(text: &str, tokens: &[Token], a: usize, b: usize) -> bool {
    let mut symbols = 0;
    let mut prev_end = tokens[a].end;
    for t in &tokens[a + 1..=b] {
        for c in text[prev_end..t.start].chars() {
            match c {
                ' ' | '\t' => {}
                '\n' | '\r' | '!' | '?' | ';' | '$' | '€' | '£' | '%' | '#' | '@' | '&' | '"' => {
                    return false
                }
                _ => symbols += 1,
            }
        }
        prev_end = t.end;
    }
    symbols <= 6
}

/// Separators a standard pattern would not accept (emoji, `~`, `*`, `...`).
fn has_odd_separator(text: &str, chain: &[Token]) -> bool {
    chain.windows(2).any(|w| {
        text[w[0].end..w[1].start]
            .chars()
            .any(|c| !matches!(c, ' ' | '-' | '.' | '/' | '(' | ')' | ','))
            || text[w[0].end..w[1].start].matches('.').count() > 1
    })
}

/// "between 2019 and 2023 and 2024": every group a plausible year.
fn looks_like_years(text: &str, chain: &[Token]) -> bool {
    chain.iter().filter(|t| t.kind != Kind::Filler).all(|t| {
        let w = &text[t.start..t.end];
        t.kind == Kind::Digits { lookalike: false }
            && w.len() == 4
            && (w.starts_with("19") || w.starts_with("20"))
    })
}

fn chain_digits(text: &str, chain: &[Token]) -> String {
    let mut digits = String::new();
    let mut repeat = 1;
    for (i, t) in chain.iter().enumerate() {
        let word = &text[t.start..t.end];
        let mut piece: Vec<u8> = match t.kind {
            Kind::Glued => glued_digits(word).unwrap_or_default().into_bytes(),
            Kind::Tens(d) => {
                // "seventy eight" is 78, "seventy" alone 70.
                let unit_follows =
                    matches!(chain.get(i + 1).map(|n| n.kind), Some(Kind::NumberWord(u)) if u > 0);
                if unit_follows {
                    vec![b'0' + d]
                } else {
                    vec![b'0' + d, b'0']
                }
            }
            Kind::Hundred => vec![b'0', b'0'],
            Kind::Digits { lookalike: false } => word.bytes().collect(),
            Kind::Digits { lookalike: true } => word
                .bytes()
                .map(|c| {
                    if c.is_ascii_digit() {
                        c
                    } else {
                        lookalike_digit(c).unwrap_or(c)
                    }
                })
                .collect(),
            Kind::NumberWord(d) => vec![b'0' + d],
            Kind::Times(k) => {
                repeat = k as usize;
                continue;
            }
            Kind::Filler | Kind::Other => continue,
        };
        if repeat > 1 && !piece.is_empty() {
            let first = piece[0];
            for _ in 1..repeat {
                piece.insert(0, first);
            }
            repeat = 1;
        }
        digits.extend(piece.into_iter().map(char::from));
    }
    digits
}

/// Cue found before (nearest wins) and after the chain.
fn context(text: &str, tokens: &[Token], first: usize, last: usize) -> (Option<Cue>, Option<Cue>) {
    let mut before = None;
    let mut seen = 0;
    let mut i = first;
    while i > 0 && seen < CONTEXT_BEFORE {
        let t = tokens[i - 1];
        if breaks_sentence(&text[t.end..tokens[i].start]) {
            break;
        }
        i -= 1;
        seen += 1;
        let word = &text[t.start..t.end];
        let area_code =
            word == "code" && i > 0 && &text[tokens[i - 1].start..tokens[i - 1].end] == "area";
        if let Some(c) = if area_code {
            Some(Cue::Strong)
        } else {
            cue(word)
        } {
            // The nearest specific cue decides; a weak "number" does not
            // override an earlier "confirmation" / "order".
            match (before, c) {
                (None, _) => before = Some(c),
                (Some(Cue::Weak), Cue::Veto | Cue::Strong) => before = Some(c),
                _ => {}
            }
            if c != Cue::Weak {
                break;
            }
        }
    }
    let mut after = None;
    let mut j = last + 1;
    let mut seen = 0;
    while j < tokens.len() && seen < CONTEXT_AFTER {
        if breaks_sentence(&text[tokens[j - 1].end..tokens[j].start]) {
            break;
        }
        if let Some(c @ (Cue::Strong | Cue::Weak)) = cue(&text[tokens[j].start..tokens[j].end]) {
            after = Some(c);
            break;
        }
        j += 1;
        seen += 1;
    }
    (before, after)
}

fn breaks_sentence(gap: &str) -> bool {
    gap.contains(['\n', '!', '?'])
}

fn cue(word: &str) -> Option<Cue> {
    // German compounds: "Kundennummer", "Rechnungsnummer" are identifiers,
    // "Handynummer", "Telefonnummer" are phones.
    if let Some(head) = word.strip_suffix("nummer").filter(|h| !h.is_empty()) {
        let phone = matches!(
            head,
            "handy" | "telefon" | "ruf" | "mobil" | "mobilfunk" | "festnetz" | "whatsapp"
        );
        return Some(if phone { Cue::Strong } else { Cue::Veto });
    }
    Some(match word {
        "call" | "calls" | "calling" | "text" | "texts" | "texting" | "txt" | "phone" | "ring"
        | "cell" | "cellphone" | "mobile" | "mob" | "sms" | "dial" | "tel" | "telephone"
        | "reach" | "contact" | "digits" | "whatsapp" | "whats" | "wa" | "zap" | "signal"
        | "viber" | "telegram" | "llamame" | "llamar" | "llama" | "llamanos" | "telefono"
        | "celular" | "movil" | "escribeme" | "marcame" | "liga" | "ligar" | "ligue"
        | "telefone" | "contato" | "chama" | "appelle" | "appellez" | "appelez" | "portable"
        | "joindre" | "texto" | "ruf" | "rufen" | "anrufen" | "handy" | "handynummer"
        | "telefon" | "telefonnummer" | "mobil" | "erreichbar" | "melde" | "zelle" | "venmo"
        | "pix" | "chave" | "paypal" | "cashapp" | "area" | "starts" | "ends" | "cel" | "ph"
        | "fone" | "fax" | "landline" | "hotline" | "tfno" | "tlf" | "buzz" => Cue::Strong,
        "number" | "num" | "numero" | "nummer" | "no" | "nr" | "my" | "mi" | "meu" | "mon"
        | "mein" => Cue::Weak,
        "order" | "orders" | "booking" | "reservation" | "reserva" | "reservierung" | "buchung"
        | "buchungsnummer" | "confirmation" | "conf" | "transaction" | "tracking" | "invoice"
        | "factura" | "fatura" | "facture" | "rechnung" | "policy" | "claim" | "case"
        | "ticket" | "ref" | "reference" | "referencia" | "id" | "code" | "codigo" | "pin"
        | "password" | "senha" | "passwort" | "serial" | "sku" | "model" | "account" | "iban"
        | "zip" | "postcode" | "cep" | "plz" | "flight" | "flug" | "vol" | "room" | "unit"
        | "apt" | "suite" | "parcel" | "shipment" | "sendung" | "commande" | "pedido"
        | "bestellung" | "item" | "listing" | "receipt" | "recibo" | "voucher" | "coupon"
        | "promo" | "card" | "license" | "plate" | "isbn" | "imei" | "vin" | "lot"
        | "reservacion" | "localizador" | "licence" | "membership" | "member" | "loyalty"
        | "passport" | "permit" | "registration" | "reg" | "vat" | "tax" | "nif" | "cpf"
        | "cnpj" | "dni" | "nie" | "ssn" | "dossier" | "protocolo" | "expediente" | "contract"
        | "contrato" | "contrat" | "vertrag" | "customer" | "cliente" | "client" | "batch"
        | "product" | "produit" | "producto" | "artikel" | "barcode" | "ean" | "upc" => Cue::Veto,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(s: &str) -> bool {
        !PhoneFinder::new().find(&Folded::new(s), &[], "").is_empty()
    }

    #[test]
    fn barrier_regex_compiles() {
        assert!(Regex::new(BARRIERS).is_ok());
    }

    #[test]
    fn plain_and_international() {
        for s in [
            "call me at (415) 867-2671",
            "+44 7911 123456",
            "mon portable : 06 48 21 90 37",
            "Handy: 0171 4419023, ab 18 Uhr",
            "meu celular é (31) 9 8847-2210",
            "Llámame al +34 612 345 678",
            "mi número es 55 1234 5678",
            "My cell: 98765 43210",
            "ring 0412 345 678 mate",
            "Telefonnummer: 030 1234567",
            "7026806213",
        ] {
            assert!(found(s), "{s}");
        }
    }

    #[test]
    fn disguised() {
        for s in [
            "ring six two double four eight, oh seven double three five",
            "ruf an: null eins sechs null, vier fünf sechs sieben acht neun",
            "digits are sev3n zer0 e1ght, fiv3 si>< two, sev3n e1ght zer0 one",
            "call 4~0~4~3~6~5~9~0~2~4",
            "ring 6💙4💙6💙5💙5💙5💙0💙1💙3💙2",
            "my cell 206-5o7-5676",
            "555 then 203 then 4477, you know",
            "area code and first three: 312-748, then 5530 to finish",
            "uno cinco cinco, dos tres cuatro, cinco seis siete ocho",
        ] {
            assert!(found(s), "{s}");
        }
    }

    #[test]
    fn not_phones() {
        for s in [
            "parcel #228190477312 came today",
            "Reservation number 7712 409 316, just so you have it.",
            "Payment ref 4410.982.173 from the bank",
            "They quoted $2,140.50 for cleaning, plus $18 per room",
            "dates 03/09/2026 to 17.09.2026 are taken",
            "we're 2 adults and 1 kid, arriving 2026-06-04 at 14:30",
            "two adults and one child, four towels",
            "Estamos en Avenida del Puerto 14, 46023 Valencia.",
            "parcel tracking 9205 5000 1234 8812 3301 57",
            "the key safe opens with 381604",
            "Meine Kundennummer ist 4711 0815 42",
            "Membership no. 5512 3390 871",
            "the barn dates from 1978, new roof in 2021",
            "₹84,250.00 for the whole week",
            "the Samsung WF45T6000AW is great",
        ] {
            assert!(!found(s), "{s}");
        }
    }
}
