//! Look-alike folding with an offset map back to the original text.
//!
//! Every detector works on a folded copy of the message: lower-case ASCII where
//! possible, compatibility forms (fullwidth, mathematical and circled digits,
//! `＠`, `﹫`) decomposed, accents and other combining marks dropped, digits of
//! other scripts mapped to ASCII, Cyrillic/Greek letters that look like Latin
//! ones mapped to those, and invisible characters (variation selectors,
//! zero-width joiners, the keycap combiner) removed. Each byte of the folded
//! text remembers which original character produced it, so every span found
//! in the folded text maps back to a span on original char boundaries.

use unicode_normalization::char::{decompose_compatible, is_combining_mark};

/// A folded view of a text plus, per folded byte, the original char span.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    pub text: String,
    /// Original byte offset where the char that produced folded byte `i` starts.
    starts: Vec<u32>,
    /// Original byte offset where that char ends.
    ends: Vec<u32>,
}

impl Folded {
    /// Folds `original` (see the module docs).
    pub fn new(original: &str) -> Folded {
        let mut out = Folded {
            text: String::with_capacity(original.len()),
            starts: Vec::with_capacity(original.len()),
            ends: Vec::with_capacity(original.len()),
        };
        for (pos, c) in original.char_indices() {
            let end = (pos + c.len_utf8()) as u32;
            let pos = pos as u32;
            if c.is_ascii() {
                out.push(c.to_ascii_lowercase(), pos, end);
                continue;
            }
            fold_char(c, &mut |f| out.push(f, pos, end));
        }
        out
    }

    fn push(&mut self, c: char, start: u32, end: u32) {
        let before = self.text.len();
        self.text.push(c);
        for _ in before..self.text.len() {
            self.starts.push(start);
            self.ends.push(end);
        }
    }

    /// Maps the folded byte range `[a, b)` to a range in the original text.
    /// Empty or out-of-range input yields an empty span at a valid boundary.
    pub fn original_span(&self, a: usize, b: usize) -> (usize, usize) {
        let n = self.starts.len();
        if n == 0 {
            return (0, 0);
        }
        let a = a.min(n - 1);
        let b = b.clamp(a + 1, n);
        (self.starts[a] as usize, self.ends[b - 1] as usize)
    }

    /// A copy where runs of at least `min_run` single characters separated by
    /// one of `seps` ("b o o k i n g s", "i.n.s.t.a") are joined, keeping the
    /// map. Returns `None` when nothing would change, so callers skip a pass.
    pub fn squeezed(&self, seps: &[u8], min_run: usize) -> Option<Folded> {
        let drops = squeeze_drops(&self.text, seps, min_run);
        if drops.is_empty() {
            return None;
        }
        let mut out = Folded {
            text: String::with_capacity(self.text.len()),
            starts: Vec::with_capacity(self.text.len()),
            ends: Vec::with_capacity(self.text.len()),
        };
        let mut last = 0;
        for &d in &drops {
            out.text.push_str(&self.text[last..d]);
            out.starts.extend_from_slice(&self.starts[last..d]);
            out.ends.extend_from_slice(&self.ends[last..d]);
            last = d + 1;
        }
        out.text.push_str(&self.text[last..]);
        out.starts.extend_from_slice(&self.starts[last..]);
        out.ends.extend_from_slice(&self.ends[last..]);
        debug_assert_eq!(out.text.len(), out.starts.len());
        Some(out)
    }

    /// A byte-for-byte copy (same offsets) with leetspeak characters read as
    /// letters (`wh@tsapp`, `ca$h`, `inst4`, `s1gnal`); used only to find
    /// app names. Only characters touching a letter change, so "venmo!"
    /// stays a word and "call 555" keeps its digits.
    pub fn deleeted(&self) -> String {
        let src = self.text.as_bytes();
        let letter = |i: usize| src.get(i).is_some_and(u8::is_ascii_alphabetic);
        let mut out = src.to_vec();
        for (i, byte) in out.iter_mut().enumerate() {
            let before = i > 0 && letter(i - 1);
            let after = letter(i + 1);
            let leet = match *byte {
                b'!' if after => b'i',
                b'4' | b'@' => b'a',
                b'3' => b'e',
                b'1' => b'i',
                b'0' => b'o',
                b'$' | b'5' => b's',
                b'7' => b't',
                b'|' => b'l',
                _ => continue,
            };
            if before || after {
                *byte = leet;
            }
        }
        // Only ASCII bytes were replaced by ASCII bytes, so this is UTF-8.
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Byte positions (single ASCII separators) to delete when squeezing.
fn squeeze_drops(text: &str, seps: &[u8], min_run: usize) -> Vec<usize> {
    let b = text.as_bytes();
    // Cheap exit for ordinary text: a run needs several "sep, char, sep".
    let spaced = b
        .windows(3)
        .filter(|w| seps.contains(&w[0]) && seps.contains(&w[2]))
        .take(min_run.saturating_sub(1))
        .count();
    if spaced + 1 < min_run {
        return Vec::new();
    }
    let single = |i: usize| -> bool {
        // A "single" is one ASCII alnum char (or `_ @ . / -`) with a
        // separator, punctuation or a text edge on both sides.
        let c = b[i];
        let ok = c.is_ascii_alphanumeric() || matches!(c, b'_' | b'@' | b'.' | b'/' | b'-');
        let edge = |j: usize| seps.contains(&b[j]) || !b[j].is_ascii_alphanumeric();
        let left = i == 0 || edge(i - 1);
        let right = i + 1 >= b.len() || edge(i + 1);
        ok && left && right
    };
    let mut drops = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !single(i) {
            i += 1;
            continue;
        }
        // Walk a run: single, sep, single, sep, ...
        let mut j = i;
        let mut len = 1;
        while j + 2 < b.len() && seps.contains(&b[j + 1]) && single(j + 2) {
            j += 2;
            len += 1;
        }
        if len >= min_run {
            drops.extend((i..j).step_by(2).map(|k| k + 1));
        }
        i = j + 1;
    }
    drops
}

/// Folds one non-ASCII char, emitting zero or more chars.
fn fold_char(c: char, emit: &mut impl FnMut(char)) {
    if is_invisible(c) {
        return;
    }
    if let Some(d) = script_digit(c) {
        emit(d);
        return;
    }
    if let Some(m) = special(c) {
        emit(m);
        return;
    }
    decompose_compatible(c, |d| {
        if is_combining_mark(d) || is_invisible(d) {
            return;
        }
        if d.is_ascii() {
            emit(d.to_ascii_lowercase());
        } else if let Some(m) = special(d) {
            emit(m);
        } else {
            for l in d.to_lowercase() {
                emit(homoglyph(l).unwrap_or(l));
            }
        }
    });
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{180E}'
        | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}'
        | '\u{20E3}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{E0100}'..='\u{E01EF}')
}

/// Decimal digits of other scripts (Arabic-Indic, Devanagari, Thai, ...);
/// compatibility decomposition does not map these.
fn script_digit(c: char) -> Option<char> {
    const ZEROS: &[u32] = &[
        0x660, 0x6F0, 0x7C0, 0x966, 0x9E6, 0xA66, 0xAE6, 0xB66, 0xBE6, 0xC66, 0xCE6, 0xD66, 0xDE6,
        0xE50, 0xED0, 0xF20, 0x1040, 0x1090, 0x17E0, 0x1810, 0x1946, 0x19D0, 0x1A80, 0x1A90,
        0x1B50, 0x1BB0, 0x1C40, 0x1C50, 0xA620, 0xA8D0, 0xA900, 0xA9D0, 0xA9F0, 0xAA50, 0xABF0,
        0x104A0, 0x1D7CE, 0x1D7D8, 0x1D7E2, 0x1D7EC, 0x1D7F6, 0x1FBF0,
    ];
    let v = c as u32;
    ZEROS
        .iter()
        .find(|&&z| v >= z && v < z + 10)
        .and_then(|&z| char::from_digit(v - z, 10))
}

/// Separators and symbols that compatibility decomposition leaves alone but
/// people use as `@` or `.`.
fn special(c: char) -> Option<char> {
    Some(match c {
        '\u{3002}' | '\u{FF61}' | '\u{2022}' | '\u{30FB}' | '\u{00B7}' | '\u{2219}'
        | '\u{22C5}' | '\u{2027}' | '\u{FF65}' | '\u{2024}' => '.',
        '\u{24D0}' => 'a',
        // Dashes of all kinds read as '-'.
        '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{FE63}' | '\u{FF0D}' => '-',
        '\u{24EA}' | '\u{24FF}' | '\u{1F10B}' | '\u{1F10C}' => '0',
        _ => return None,
    })
}

/// Cyrillic, Greek and other letters that render like Latin ones.
fn homoglyph(c: char) -> Option<char> {
    Some(match c {
        'а' | 'α' | 'ɑ' => 'a',
        'в' | 'β' | 'ь' => 'b',
        'с' | 'ϲ' => 'c',
        'ԁ' => 'd',
        'е' | 'ε' | 'ё' => 'e',
        'ɡ' => 'g',
        'һ' | 'н' => 'h',
        'і' | 'ι' | 'ı' | 'ї' => 'i',
        'ј' | 'ϳ' => 'j',
        'к' | 'κ' => 'k',
        'ӏ' | 'ⅼ' | 'ǀ' => 'l',
        'м' => 'm',
        'η' | 'п' => 'n',
        'о' | 'ο' | 'σ' | 'օ' => 'o',
        'р' | 'ρ' => 'p',
        'ԛ' => 'q',
        'г' => 'r',
        'ѕ' => 's',
        'т' | 'τ' => 't',
        'υ' | 'ս' => 'u',
        'ν' | 'ѵ' => 'v',
        'ԝ' | 'ω' | 'ш' => 'w',
        'х' | 'χ' => 'x',
        'у' | 'γ' | 'ү' => 'y',
        'ᴢ' => 'z',
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_lookalikes_and_maps_spans() {
        let s = "Call ５５５ ⑥⓪② 𝟎𝟕 ٣ 4️⃣ jane＠yаhoo。com";
        let f = Folded::new(s);
        assert_eq!(f.text, "call 555 602 07 3 4 jane@yahoo.com");
        let at = f.text.find('@').unwrap_or(0);
        let (a, b) = f.original_span(at, at + 1);
        assert_eq!(&s[a..b], "＠");
    }

    #[test]
    fn drops_accents_and_keeps_boundaries() {
        let s = "Llámame: três";
        let f = Folded::new(s);
        assert_eq!(f.text, "llamame: tres");
        let (a, b) = f.original_span(0, f.text.len());
        assert_eq!((a, b), (0, s.len()));
    }

    #[test]
    fn squeezes_spaced_letters() {
        let f = Folded::new("mail b o o k i n g s @ x dot com");
        let sq = f.squeezed(b" ", 4).unwrap_or_default();
        assert_eq!(sq.text, "mail bookings@x dot com");
        assert!(Folded::new("a cat").squeezed(b" ", 4).is_none());
    }
}
