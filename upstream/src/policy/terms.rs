//! Denied terms: thousands of words and phrases matched against a prompt in
//! one pass of an Aho–Corasick automaton, over text folded the same way as
//! the terms (the rules are [`Folded`]'s): invisible characters dropped,
//! Unicode compatibility-decomposed (NFKD, so `ｂａｚｏｏｋａ` and ligatures
//! read as plain letters), accents dropped, case-folded, Latin lookalikes
//! from Cyrillic and Greek read as Latin, words cut where the script changes
//! and each character of the scripts written without spaces a word of its
//! own, and every run of characters that are not letters or digits made one
//! space. A term matches as whole words only (`gun` is not in `begun`); a
//! prompt is also read with split words joined (`b.a.z.o.o.k.a`, `baz-ooka`,
//! `b a z o o k a`). A term ending in `*` matches any word that begins with
//! it (`bazooka*`: `bazookas`); plain terms match exactly, so plurals are
//! listed or starred — the admin decides, the gateway does not guess at a
//! language's plurals.

use std::sync::Arc;

use aho_corasick::automaton::OverlappingState;
use aho_corasick::{AhoCorasick, AhoCorasickBuilder, Anchored, Input, MatchKind, StartKind};
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
        // A term listed twice (in one category or several) is one pattern,
        // the first category's: each copy would be reported again at every
        // word start the scan tries.
        let mut seen = std::collections::HashSet::new();
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
                if seen.insert((folded.to_string(), prefix)) {
                    patterns.push((index, prefix));
                    folded_terms.push(folded.to_string());
                }
            }
        }
        if folded_terms.is_empty() {
            return Ok(Self::default());
        }
        // Overlapping search needs the standard match kind; boundaries are
        // checked per match, so a longer term cannot hide a shorter one.
        // Searches are anchored at word starts only (`find_in`).
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .start_kind(StartKind::Anchored)
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

    /// The first denied term in `text`, as its category: searched in the
    /// folded text, then in its joined reading (`b.a.z.o.o.k.a`, `baz-ooka`)
    /// when it has one.
    pub fn find(&self, text: &str) -> Option<TermHit<'_>> {
        let automaton = self.automaton.as_ref()?;
        let folded = Folded::new(text);
        self.find_in(automaton, &folded.text, &[]).or_else(|| {
            let (joined, joins) = folded.joined()?;
            self.find_in(automaton, &joined, &joins)
        })
    }

    /// A whole-word hit in `folded` (spaces at both ends make every boundary
    /// a space); `joins` are byte offsets where split words were joined,
    /// which count as boundaries too (`a b.a.z.o.o.k.a`: the `a` before).
    /// A term can only start where a word does, so the automaton is run
    /// anchored from each word start (and join), not over every byte: the
    /// first word start with a whole-word hit gives the category.
    fn find_in(&self, automaton: &AhoCorasick, folded: &str, joins: &[usize]) -> Option<TermHit<'_>> {
        let bytes = folded.as_bytes();
        let boundary = |at: usize| bytes.get(at) == Some(&b' ') || joins.binary_search(&at).is_ok();
        let after_spaces = bytes
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b' ')
            .map(|(at, _)| at + 1);
        after_spaces
            .chain(joins.iter().copied())
            .filter(|&start| start < bytes.len())
            .find_map(|start| {
                let input = Input::new(folded).range(start..).anchored(Anchored::Yes);
                let mut state = OverlappingState::start();
                loop {
                    // The terms that start here, shortest first.
                    automaton.find_overlapping(input.clone(), &mut state);
                    let hit = state.get_match()?;
                    // A state also lists the terms it ends with (`ab` in
                    // `baab`): those are found from their own start, if a word's.
                    let (category, prefix) = self.patterns[hit.pattern().as_usize()];
                    if hit.start() == start && (prefix || boundary(hit.end())) {
                        return Some(TermHit {
                            category: &self.categories[category],
                        });
                    }
                }
            })
    }
}

/// The folded form terms and prompts are compared in: the words of
/// [`Folded`], one space between.
pub fn fold(text: &str) -> String {
    let folded = Folded::new(text);
    // Without its end spaces (a text of no words is two).
    folded.text[1..folded.text.len() - 1].to_string()
}

/// A text folded for matching, in one pass and one string (a prompt is
/// folded on every call: no allocation per word):
/// 1. invisible characters (Unicode's Default_Ignorable_Code_Point: soft
///    hyphen, zero-width spaces and joiners, word joiner, BOM, Hangul
///    fillers, variation selectors, tags…) and non-whitespace control
///    characters are dropped, so they cannot split a word;
/// 2. NFKD (full-width letters, ligatures), combining marks dropped (accents);
/// 3. full case folding (`ß` is `ss`, `ς` is `σ`, `ı` is `i`);
/// 4. a word mixing Latin with Cyrillic or Greek letters, or one made only of
///    Cyrillic or Greek letters that look Latin, is read as Latin
///    ([`latin_lookalike`]: `bаzooka` with a Cyrillic `а`, `ѕех`);
/// 5. a word is cut where its script changes (`的bazooka`), and each
///    character of Han, Kana, Thai, Lao, Khmer and Myanmar (written without
///    spaces) is a word of its own, in terms and prompts alike, so `火箭筒`
///    matches inside `一个拿着火箭筒的人`;
/// 6. every run of other characters is one boundary.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Folded {
    /// The words with one space between and one at each end (so every
    /// boundary is a space).
    text: String,
    /// Where each word is in `text`, and how it met the one before.
    words: Vec<Word>,
}

/// One folded word: its bytes in [`Folded::text`] and how it met the one before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    start: usize,
    end: usize,
    /// Only `-` or `.` stood between it and the word before (`baz-ooka`).
    glued: bool,
    /// A character of a script written without spaces (one word per character).
    unspaced: bool,
}

impl Folded {
    fn new(text: &str) -> Self {
        let mut folder = Folder {
            out: Folded {
                text: String::with_capacity(text.len() + 2),
                words: Vec::new(),
            },
            word_start: 1,
            slow: Vec::new(),
            glue: true,
        };
        folder.out.text.push(' ');
        for c in text.chars() {
            if c.is_ascii() {
                // Most prompts are ASCII: nothing to decompose (the bench's hot path).
                if c.is_ascii_alphanumeric() {
                    folder.push(c.to_ascii_lowercase(), None);
                } else if !c.is_ascii_control() || c.is_ascii_whitespace() {
                    folder.end_word();
                    folder.glue &= c == '-' || c == '.';
                }
                continue;
            }
            if invisible(c) {
                continue;
            }
            // NFKD one character at a time is enough here: the combining marks
            // canonical reordering would move are dropped anyway.
            for d in std::iter::once(c)
                .nfkd()
                .filter(|d| !is_combining_mark(*d) && !invisible(*d))
            {
                if !d.is_alphanumeric() {
                    folder.end_word();
                    folder.glue = false;
                    continue;
                }
                let lookalike = latin_lookalike(d);
                for folded in case_fold(d) {
                    folder.push(folded, lookalike);
                }
            }
        }
        folder.end_word();
        if folder.out.words.is_empty() {
            folder.out.text.push(' '); // " {} ", as for any text
        }
        folder.out
    }

    fn word(&self, word: &Word) -> &str {
        &self.text[word.start..word.end]
    }

    /// Whether the word at `i` is read joined to the one before: a run of
    /// single letters (`b a z o o k a`), or words split only by `-` or `.`
    /// (`baz-ooka`, `b.a.z.o.o.k.a`).
    fn joins(&self, i: usize) -> bool {
        let (before, word) = (&self.words[i - 1], &self.words[i]);
        let single = |w: &Word| self.word(w).chars().nth(1).is_none();
        !word.unspaced && !before.unspaced && (word.glued || (single(word) && single(before)))
    }

    /// The text read with split words joined, with the byte offsets of the
    /// joins (boundaries too); `None` when nothing joins (most prompts: then
    /// there is no second scan).
    fn joined(&self) -> Option<(String, Vec<usize>)> {
        if !(1..self.words.len()).any(|i| self.joins(i)) {
            return None;
        }
        let mut out = String::with_capacity(self.text.len());
        let mut joins = Vec::new();
        out.push(' ');
        for (i, word) in self.words.iter().enumerate() {
            if i > 0 && self.joins(i) {
                joins.push(out.len());
            } else if i > 0 {
                out.push(' ');
            }
            out.push_str(self.word(word));
        }
        out.push(' ');
        Some((out, joins))
    }
}

/// The state of one pass of [`Folded::new`].
struct Folder {
    out: Folded,
    /// Where the word being read starts in `out.text`.
    word_start: usize,
    /// The word being read once it holds a letter that may be a lookalike
    /// or of another script (with its Latin lookalike): such a word is
    /// placed by [`Folder::end_word`]. Empty while the word is plain ASCII,
    /// which goes straight to `out.text`.
    slow: Vec<(char, Option<char>)>,
    /// No boundary but `-` or `.` since the last word.
    glue: bool,
}

impl Folder {
    fn push(&mut self, c: char, lookalike: Option<char>) {
        if self.slow.is_empty() {
            if c.is_ascii() && lookalike.is_none() {
                self.out.text.push(c);
                return;
            }
            // The word's ASCII start moves over to be read with the rest.
            self.slow
                .extend(self.out.text[self.word_start..].chars().map(|c| (c, None)));
            self.out.text.truncate(self.word_start);
        }
        self.slow.push((c, lookalike));
    }

    /// Ends the word being read: read as Latin where it looks Latin, cut
    /// where its script changes, placed.
    fn end_word(&mut self) {
        if self.out.text.len() == self.word_start && self.slow.is_empty() {
            return;
        }
        let glued = !self.out.words.is_empty() && self.glue;
        self.glue = true;
        if self.slow.is_empty() {
            // An ASCII word (most of a prompt) has one script and no lookalikes.
            self.place(glued, false);
            return;
        }
        let has_latin = self.slow.iter().any(|(c, _)| script(*c) == Script::Latin);
        let all_lookalike = self
            .slow
            .iter()
            .all(|(c, lookalike)| lookalike.is_some() || script(*c) == Script::Common);
        let as_latin = has_latin || all_lookalike;
        let mut glued = glued;
        let mut current_script = Script::Common;
        let mut slow = std::mem::take(&mut self.slow);
        for (c, lookalike) in slow.drain(..) {
            let c = match lookalike {
                Some(latin) if as_latin => latin,
                _ => c,
            };
            let s = script(c);
            let cut = s == Script::Unspaced
                || current_script == Script::Unspaced
                || (s != Script::Common && current_script != Script::Common && s != current_script);
            if cut && self.out.text.len() > self.word_start {
                self.place(glued, current_script == Script::Unspaced);
                glued = false;
            }
            if s != Script::Common || cut {
                current_script = s;
            }
            self.out.text.push(c);
        }
        self.slow = slow; // its buffer, for the next word
        self.place(glued, current_script == Script::Unspaced);
    }

    /// Records the word from `word_start` to the end of the text; the next starts after a space.
    fn place(&mut self, glued: bool, unspaced: bool) {
        self.out.words.push(Word {
            start: self.word_start,
            end: self.out.text.len(),
            glued,
            unspaced,
        });
        self.out.text.push(' ');
        self.word_start = self.out.text.len();
    }
}

/// Whether `c` is dropped before folding: invisible, or a control character
/// that is not whitespace (whitespace separates words).
fn invisible(c: char) -> bool {
    (c.is_control() && !c.is_whitespace()) || default_ignorable(c)
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, 15.1).
fn default_ignorable(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x034F | 0x061C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// Full case folding for the letters where lower-casing is not enough.
fn case_fold(c: char) -> impl Iterator<Item = char> {
    let special: Option<&'static str> = match c {
        'ß' | 'ẞ' => Some("ss"),
        'ς' => Some("σ"),
        'ı' => Some("i"),
        'ſ' => Some("s"),
        _ => None,
    };
    let (special, lower) = match special {
        Some(s) => (Some(s.chars()), None),
        // Lower-casing can decompose again (`İ` is `i` and a dot above).
        None => (None, Some(c.to_lowercase().filter(|c| !is_combining_mark(*c)))),
    };
    special.into_iter().flatten().chain(lower.into_iter().flatten())
}

/// The Latin letter a Cyrillic or Greek letter is written like: the
/// frequent lookalikes of Unicode's confusables (UTS #39), by hand — a full
/// skeleton crate would be heavier than the ~40 letters that matter here.
fn latin_lookalike(c: char) -> Option<char> {
    Some(match c {
        'А' | 'а' | 'Α' | 'α' => 'a',
        'В' | 'в' | 'Β' | 'β' | 'ь' | 'Ь' => 'b',
        'С' | 'с' | 'ϲ' | 'Ϲ' => 'c',
        'ԁ' => 'd',
        'Е' | 'е' | 'Ε' | 'ε' => 'e',
        'Н' | 'н' | 'Η' | 'һ' => 'h',
        'І' | 'і' | 'Ι' | 'ι' | 'ӏ' | 'Ӏ' => 'i',
        'Ј' | 'ј' | 'ϳ' => 'j',
        'К' | 'к' | 'Κ' | 'κ' => 'k',
        'М' | 'м' | 'Μ' => 'm',
        'Ν' | 'η' | 'п' => 'n',
        'О' | 'о' | 'Ο' | 'ο' | 'σ' => 'o',
        'Р' | 'р' | 'Ρ' | 'ρ' => 'p',
        'ԛ' => 'q',
        'Ѕ' | 'ѕ' => 's',
        'Т' | 'т' | 'Τ' | 'τ' => 't',
        'υ' | 'μ' => 'u',
        'ν' => 'v',
        'ԝ' | 'ω' => 'w',
        'Х' | 'х' | 'Χ' | 'χ' => 'x',
        'У' | 'у' | 'Υ' | 'γ' | 'Ү' | 'ү' => 'y',
        'Ζ' => 'z',
        _ => return None,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// Digits: part of any script's word.
    Common,
    Latin,
    Greek,
    Cyrillic,
    /// Han, Kana, Thai, Lao, Khmer, Myanmar: written without spaces.
    Unspaced,
    Other,
}

fn script(c: char) -> Script {
    if c.is_numeric() && !matches!(c as u32, 0x3005..=0x3007 | 0x3021..=0x3029) {
        return Script::Common;
    }
    match c as u32 {
        0x61..=0x7A
        | 0xC0..=0x2AF
        | 0x1D00..=0x1DBF
        | 0x1E00..=0x1EFF
        | 0x2C60..=0x2C7F
        | 0xA720..=0xA7FF
        | 0xAB30..=0xAB6F => Script::Latin,
        0x370..=0x3FF | 0x1F00..=0x1FFF => Script::Greek,
        0x400..=0x52F | 0x1C80..=0x1C8F | 0x2DE0..=0x2DFF | 0xA640..=0xA69F => Script::Cyrillic,
        0x0E00..=0x0EFF
        | 0x1000..=0x109F
        | 0x1780..=0x17FF
        | 0x19E0..=0x19FF
        | 0x2E80..=0x2FDF
        | 0x3005..=0x3007
        | 0x3021..=0x3029
        | 0x3040..=0x30FF
        | 0x31F0..=0x31FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA9E0..=0xA9FF
        | 0xAA60..=0xAA7F
        | 0xF900..=0xFAFF
        | 0xFF66..=0xFF9F
        | 0x20000..=0x3FFFF => Script::Unspaced,
        _ => Script::Other,
    }
}

#[cfg(test)]
#[path = "terms_reference.rs"]
mod reference;

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
    fn a_term_listed_twice_is_one_pattern_of_its_first_category() {
        let compiled = terms(&[
            ("weapons", &["Bazooka", "bazooka", "grenade*"]),
            ("violence", &["BAZÓOKA", "grenade*", "grenade"]),
        ]);
        // bazooka once, grenade* once, plain grenade its own pattern.
        assert_eq!(compiled.len(), 3);
        assert_eq!(compiled.find("a bazooka").unwrap().category, "weapons");
        assert_eq!(compiled.find("grenades").unwrap().category, "weapons");
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

    #[test]
    fn invisible_characters_do_not_split_a_word() {
        let set = terms(&[("weapons", &["bazooka"])]);
        for (name, hidden) in [
            ("soft hyphen", '\u{AD}'),
            ("zero-width space", '\u{200B}'),
            ("zero-width non-joiner", '\u{200C}'),
            ("zero-width joiner", '\u{200D}'),
            ("word joiner", '\u{2060}'),
            ("byte order mark", '\u{FEFF}'),
            ("Mongolian vowel separator", '\u{180E}'),
            ("tag letter", '\u{E0061}'),
            ("Hangul filler", '\u{3164}'),
            ("half-width Hangul filler", '\u{FFA0}'),
            ("variation selector", '\u{FE0F}'),
            ("a control character", '\u{7}'),
            ("a C1 control character", '\u{9C}'),
        ] {
            let prompt = format!("a baz{hidden}oo{hidden}ka");
            assert_eq!(set.find(&prompt).map(|h| h.category), Some("weapons"), "{name}");
        }
        // In a term too.
        let soft = vec!["ba\u{AD}zooka".to_string()];
        let set = DenyTerms::new([("w", soft.as_slice())]).unwrap();
        assert_eq!(set.find("bazooka").map(|h| h.category), Some("w"));
    }

    #[test]
    fn case_folding_and_lookalike_letters() {
        let set = terms(&[("w", &["bazooka", "strasse", "ixos"]), ("g", &["σοφος"])]);
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("Cyrillic a", "a b\u{430}zooka", Some("w")),
            ("Cyrillic o and a, upper case", "B\u{410}Z\u{41E}\u{41E}KA", Some("w")),
            ("Greek omicron", "baz\u{3BF}\u{3BF}ka", Some("w")),
            (
                "all Cyrillic lookalikes",
                "\u{432}\u{430}z\u{43E}\u{43E}\u{43A}\u{430}",
                Some("w"),
            ),
            ("dotless i", "\u{131}xos", Some("w")),
            ("sharp s", "stra\u{DF}e", Some("w")),
            ("capital sharp s", "STRA\u{1E9E}E", Some("w")),
            ("final sigma", "\u{3C3}\u{3BF}\u{3C6}\u{3BF}\u{3C2}", Some("g")),
            ("upper-case Greek", "\u{3A3}\u{39F}\u{3A6}\u{39F}\u{3A3}", Some("g")),
            (
                "a Russian word is not Latin",
                "\u{431}\u{430}\u{437}\u{443}\u{43A}\u{430}",
                None,
            ),
        ];
        for (name, prompt, want) in rows {
            assert_eq!(set.find(prompt).map(|h| h.category), *want, "{name}: {prompt:?}");
        }
    }

    #[test]
    fn words_in_scripts_without_spaces_and_split_words() {
        let set = terms(&[("w", &["bazooka", "火箭筒", "ปืน"]), ("p", &["rocket launcher"])]);
        let rows: &[(&str, &str, Option<&str>)] = &[
            ("Han inside a sentence", "一个拿着火箭筒的人", Some("w")),
            ("Han alone", "火箭筒", Some("w")),
            ("Han, part of the term", "一个拿着火箭的人", None),
            ("Thai inside a sentence", "ชายถือปืนยาว", Some("w")),
            ("Latin glued to Han", "的bazooka", Some("w")),
            ("Latin glued to Han, both sides", "拿着bazooka的人", Some("w")),
            ("Latin glued to Kana", "バズーカbazookaです", Some("w")),
            ("dotted letters", "a b.a.z.o.o.k.a here", Some("w")),
            ("spaced letters", "a b a z o o k a here", Some("w")),
            ("hyphen split", "a baz-ooka", Some("w")),
            ("dot split", "a baz.ooka", Some("w")),
            ("phrase with a split word", "rock-et launcher", Some("p")),
            ("not joined across a comma", "baz, ooka", None),
            ("a word with a hyphen after", "bazooka-like", Some("w")),
            ("joined, still not inside a word", "superbaz-ooka", None),
        ];
        for (name, prompt, want) in rows {
            assert_eq!(set.find(prompt).map(|h| h.category), *want, "{name}: {prompt:?}");
        }
    }

    /// Pieces that meet every rule of the folding, alone and side by side.
    const PIECES: &[&str] = &[
        "bazooka",
        "a",
        "B",
        "Z",
        "7",
        "42",
        " ",
        "  ",
        "-",
        ".",
        ",",
        "\n",
        "\t",
        "\u{7}",
        "\u{9C}",
        "\u{AD}",
        "\u{200B}",
        "\u{200D}",
        "\u{FE0F}",
        "\u{FEFF}",
        "\u{E0061}",
        "\u{3164}",
        "\u{301}",
        "e\u{301}",
        "é",
        "ó",
        "Å",
        "ß",
        "ẞ",
        "İ",
        "ı",
        "ſ",
        "ς",
        "Σ",
        "σοφος",
        "\u{430}",
        "\u{43E}",
        "\u{410}",
        "Α",
        "ο",
        "\u{455}",
        "\u{431}",
        "\u{44F}",
        "火",
        "火箭筒",
        "ปืน",
        "バズーカ",
        "ｂａｚ",
        "ﬁ",
        "①",
        "²",
        "Ⅻ",
        "½",
        "〇",
        "々",
        "ǅ",
        "😀",
        "𝐛𝐚𝐳",
        "Ω",
        "Ω",
        "ﾊﾞ",
        "٣",
        "—",
        "\u{A0}",
        "\u{3000}",
    ];

    /// Texts of up to a dozen pieces, from a fixed seed (xorshift), so a failure reproduces.
    fn mixed_texts(count: usize) -> Vec<String> {
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..count)
            .map(|_| {
                let pieces = next() % 13;
                (0..pieces)
                    .map(|_| PIECES[(next() % PIECES.len() as u64) as usize])
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_one_pass_folding_agrees_with_the_reference() {
        let table = [
            "",
            "   ",
            "a bazooka on a hill",
            "A BAZOOKA!",
            "ASCII then bazóoka then ASCII",
            "b\u{430}zooka",
            "bazoo\u{43A}\u{430}",
            "\u{432}\u{430}z\u{43E}\u{43E}\u{43A}\u{430}",
            "ｂａｚｏｏｋａ",
            "一个拿着火箭筒的人",
            "拿着bazooka的人",
            "バズーカbazookaです",
            "a b.a.z.o.o.k.a here",
            "a b a z o o k a here",
            "rock-et launcher",
            "baz, ooka",
            "superbaz-ooka",
            "STRA\u{1E9E}E stra\u{DF}e",
            "x\u{200B}y\u{AD}z",
            "-.-lead and trail.-.",
            "火-bazooka.火",
            "7\u{430}7",
        ];
        let texts = table.iter().map(|t| t.to_string()).chain(mixed_texts(5_000));
        for text in texts {
            let folded = Folded::new(&text);
            let words = reference::words(&text);
            assert_eq!(folded.text, format!(" {} ", reference::spaced(&words)), "{text:?}");
            let got: Vec<_> = folded
                .words
                .iter()
                .map(|w| (folded.word(w), w.glued, w.unspaced))
                .collect();
            let want: Vec<_> = words.iter().map(|w| (w.text.as_str(), w.glued, w.unspaced)).collect();
            assert_eq!(got, want, "{text:?}");
            let joined = reference::joined(&words).map(|(text, joins)| (format!(" {text} "), joins));
            assert_eq!(folded.joined(), joined, "{text:?}");
            assert_eq!(fold(&text), reference::spaced(&words), "{text:?}");
        }
    }

    #[test]
    fn the_anchored_scan_agrees_with_a_scan_of_every_byte() {
        const TERM_PIECES: &[&str] = &["a", "b", "ab", "ba", "aba", "б", "火", "7"];
        const TEXT_PIECES: &[&str] = &["a", "b", "ab", "ba", "B", "á", "б", "火", "7", " ", "-", ".", ", "];
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % below as u64) as usize
        };
        for _ in 0..300 {
            let list: Vec<String> = (0..1 + next(6))
                .map(|_| {
                    let words: Vec<&str> = (0..1 + next(3)).map(|_| TERM_PIECES[next(TERM_PIECES.len())]).collect();
                    let star = if next(4) == 0 { "*" } else { "" };
                    format!("{}{star}", words.join(if next(2) == 0 { " " } else { "" }))
                })
                .collect();
            let set = DenyTerms::new([("c", list.as_slice())]).unwrap();
            let folded_terms: Vec<(String, bool)> = list
                .iter()
                .map(|t| (fold(t.trim_end_matches('*')), t.ends_with('*')))
                .collect();
            for _ in 0..30 {
                let text: String = (0..next(12)).map(|_| TEXT_PIECES[next(TEXT_PIECES.len())]).collect();
                let folded = Folded::new(&text);
                let want = reference::scan(&folded_terms, &folded.text, &[])
                    || folded
                        .joined()
                        .is_some_and(|(joined, joins)| reference::scan(&folded_terms, &joined, &joins));
                assert_eq!(set.find(&text).is_some(), want, "{list:?} in {text:?}");
            }
        }
    }
}
