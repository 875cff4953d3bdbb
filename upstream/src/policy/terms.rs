//! Denied terms: thousands of words and phrases matched against a prompt in
//! one pass of an Aho–Corasick automaton, over text folded the same way as
//! the terms: Unicode compatibility-decomposed (NFKD, so `ｂａｚｏｏｋａ` and
//! ligatures read as plain letters), accents dropped, lower-cased, and every
//! run of characters that are not letters or digits made one space. A term
//! matches as whole words only (`gun` is not in `begun`). A term ending in
//! `*` matches any word that begins with it (`bazooka*`: `bazookas`); plain
//! terms match exactly, so plurals are listed or starred — the admin decides,
//! the gateway does not guess at a language's plurals.

use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Longest term accepted, in folded characters.
pub const MAX_TERM_CHARS: usize = 200;

/// A compiled set of denied terms, each with its category. Cloning shares
/// the automaton (organisations that keep the default's terms).
#[derive(Debug, Clone, Default)]
pub struct DenyTerms {
    automaton: Option<AhoCorasick>,
    /// Per pattern: its category's index and whether it is a word prefix (`*`).
    patterns: Arc<[(usize, bool)]>,
    categories: Arc<[String]>,
}

/// Which rule a prompt broke: the category, never the words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TermHit<'a> {
    pub category: &'a str,
}

impl DenyTerms {
    /// Compiles `{category: [term, …]}`; an empty term (after folding) is refused.
    pub fn new<'a>(terms: impl IntoIterator<Item = (&'a str, &'a [String])>) -> Result<Self, String> {
        let mut categories = Vec::new();
        let mut patterns = Vec::new();
        let mut folded_terms = Vec::new();
        for (category, list) in terms {
            let index = categories.len();
            categories.push(category.to_string());
            for term in list {
                let (body, prefix) = match term.trim().strip_suffix('*') {
                    Some(body) => (body, true),
                    None => (term.as_str(), false),
                };
                let folded = fold(body);
                let folded = folded.trim();
                if folded.is_empty() {
                    return Err(format!(
                        "deny_terms.{category}: a term has no letters or digits ({term:?})"
                    ));
                }
                if folded.chars().count() > MAX_TERM_CHARS {
                    return Err(format!(
                        "deny_terms.{category}: a term is longer than {MAX_TERM_CHARS} characters"
                    ));
                }
                patterns.push((index, prefix));
                folded_terms.push(folded.to_string());
            }
        }
        if folded_terms.is_empty() {
            return Ok(Self::default());
        }
        // Overlapping search needs the standard match kind; boundaries are
        // checked per match, so a longer term cannot hide a shorter one.
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&folded_terms)
            .map_err(|e| format!("deny_terms: {e}"))?;
        Ok(Self {
            automaton: Some(automaton),
            patterns: patterns.into(),
            categories: categories.into(),
        })
    }

    /// Heap bytes the automaton holds.
    pub fn memory_usage(&self) -> usize {
        self.automaton.as_ref().map_or(0, AhoCorasick::memory_usage)
    }

    /// How many terms are compiled.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The first denied term in `text`, as its category.
    pub fn find(&self, text: &str) -> Option<TermHit<'_>> {
        let automaton = self.automaton.as_ref()?;
        // Spaces around the text make every boundary a space.
        let folded = format!(" {} ", fold(text));
        let bytes = folded.as_bytes();
        automaton.find_overlapping_iter(&folded).find_map(|hit| {
            let (category, prefix) = self.patterns[hit.pattern().as_usize()];
            let starts_word = bytes[hit.start() - 1] == b' ';
            let ends_word = prefix || bytes.get(hit.end()) == Some(&b' ');
            (starts_word && ends_word).then(|| TermHit {
                category: &self.categories[category],
            })
        })
    }
}

/// The folded form terms and prompts are compared in: NFKD, no combining
/// marks, lower case, non-alphanumeric runs as one space.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    let mut space = false;
    let mut push = |c: char| {
        if c.is_alphanumeric() {
            out.push(c);
            space = false;
        } else if !space {
            out.push(' ');
            space = true;
        }
    };
    for c in text.chars() {
        // Most prompts are ASCII: nothing to decompose (the bench's hot path).
        if c.is_ascii() {
            push(c.to_ascii_lowercase());
            continue;
        }
        // NFKD one character at a time is enough here: the combining marks
        // canonical reordering would move are dropped anyway.
        let letters = std::iter::once(c)
            .nfkd()
            .filter(|c| !is_combining_mark(*c))
            .flat_map(char::to_lowercase)
            // Lower-casing can decompose again (`İ` is `i` and a dot above).
            .filter(|c| !is_combining_mark(*c));
        letters.for_each(&mut push);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(list: &[(&str, &[&str])]) -> DenyTerms {
        let owned: Vec<(String, Vec<String>)> = list
            .iter()
            .map(|(c, t)| (c.to_string(), t.iter().map(|s| s.to_string()).collect()))
            .collect();
        DenyTerms::new(owned.iter().map(|(c, t)| (c.as_str(), t.as_slice()))).unwrap()
    }

    #[test]
    fn matching_table() {
        let set = terms(&[
            ("weapons", &["bazooka", "rocket launcher", "ak-47", "grenade*"]),
            ("brands", &["Acme"]),
        ]);
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("plain", "a bazooka on a hill", Some("weapons")),
            ("capitalised", "Bazooka", Some("weapons")),
            ("upper case", "A BAZOOKA!", Some("weapons")),
            ("accented", "a bazóoka", Some("weapons")),
            ("decomposed accent", "a bazo\u{301}oka", Some("weapons")),
            ("full-width letters", "ｂａｚｏｏｋａ", Some("weapons")),
            ("punctuation around", "(bazooka),", Some("weapons")),
            ("plural not listed", "two bazookas", None),
            ("inside a word", "superbazooka", None),
            ("phrase", "a Rocket   Launcher", Some("weapons")),
            ("phrase across a line", "rocket\nlauncher", Some("weapons")),
            ("phrase split", "rocket and launcher", None),
            ("hyphenated term as words", "an ak 47", Some("weapons")),
            ("hyphenated term", "an AK-47.", Some("weapons")),
            ("starred plural", "grenades", Some("weapons")),
            ("starred itself", "a grenade", Some("weapons")),
            ("starred needs a word start", "pomegrenade", None),
            ("other category", "acme rockets", Some("brands")),
            ("nothing", "a quiet lake at dawn", None),
        ];
        for (name, prompt, want) in rows {
            assert_eq!(set.find(prompt).map(|h| h.category), *want, "{name}: {prompt:?}");
        }
    }

    #[test]
    fn a_longer_term_does_not_hide_a_shorter_whole_word() {
        let set = terms(&[("a", &["gun", "gunsmith"])]);
        assert_eq!(set.find("gunsmiths gun").map(|h| h.category), Some("a"));
        assert_eq!(set.find("gunsmiths"), None);
    }

    #[test]
    fn empty_terms_are_refused() {
        let bad = vec!["  -- ".to_string()];
        assert!(DenyTerms::new([("x", bad.as_slice())]).is_err());
        assert!(DenyTerms::new(std::iter::empty()).unwrap().find("anything").is_none());
    }
}
