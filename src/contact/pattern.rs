//! Compiling the module's constant regular expressions.

use regex::{Regex, RegexBuilder};

/// Compiles a constant pattern with ASCII word boundaries.
///
/// Unicode `\b` keeps the regex crate off its fast DFA whenever a message
/// holds a non-ASCII character (emoji are everywhere in chat), so every `\b`
/// is made ASCII-only; the folded text is ASCII apart from symbols anyway.
/// The patterns are constants covered by unit tests, so a failure is a
/// programming error: debug builds assert, release builds degrade to a
/// pattern that never matches rather than take the daemon down.
pub fn compile(pattern: &str) -> Regex {
    let ascii_boundaries = pattern.replace(r"\b", r"(?-u:\b)");
    match RegexBuilder::new(&ascii_boundaries)
        .size_limit(32 << 20)
        .build()
    {
        Ok(re) => re,
        Err(e) => {
            debug_assert!(false, "invalid built-in pattern: {e}");
            never()
        }
    }
}

fn never() -> Regex {
    // An empty class matches nothing; its compilation cannot fail.
    Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!("constant pattern"))
}
