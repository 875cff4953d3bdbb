//! The folding as first written, word by word with a string per word: the
//! plain statement of the rules that [`super::Folded`]'s one-pass folding
//! (ASCII straight into one string, other words by their rules) must agree
//! with on every input. Tests only.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

use super::{case_fold, invisible, latin_lookalike, script, Script};

/// One folded word and how it met the one before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word {
    pub text: String,
    pub glued: bool,
    pub unspaced: bool,
}

pub fn words(text: &str) -> Vec<Word> {
    let mut out = Vec::new();
    let mut word: Vec<(char, Option<char>)> = Vec::new();
    let mut glue = true;
    for c in text.chars() {
        if c.is_ascii() {
            // Most prompts are ASCII: nothing to decompose (the bench's hot path).
            if c.is_ascii_alphanumeric() {
                word.push((c.to_ascii_lowercase(), None));
            } else if !c.is_ascii_control() || c.is_ascii_whitespace() {
                end_word(&mut out, &mut word, &mut glue);
                glue &= c == '-' || c == '.';
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
                end_word(&mut out, &mut word, &mut glue);
                glue = false;
                continue;
            }
            let lookalike = latin_lookalike(d);
            for folded in case_fold(d) {
                word.push((folded, lookalike));
            }
        }
    }
    end_word(&mut out, &mut word, &mut glue);
    out
}

fn end_word(out: &mut Vec<Word>, word: &mut Vec<(char, Option<char>)>, glue: &mut bool) {
    if word.is_empty() {
        return;
    }
    let glued = !out.is_empty() && *glue;
    *glue = true;
    // An ASCII word (most of a prompt) has one script and no lookalikes.
    if word.iter().all(|(c, _)| c.is_ascii()) {
        out.push(Word {
            text: word.drain(..).map(|(c, _)| c).collect(),
            glued,
            unspaced: false,
        });
        return;
    }
    let has_latin = word.iter().any(|(c, _)| script(*c) == Script::Latin);
    let all_lookalike = word
        .iter()
        .all(|(c, lookalike)| lookalike.is_some() || script(*c) == Script::Common);
    let as_latin = has_latin || all_lookalike;
    let mut glued = glued;
    let mut current = String::new();
    let mut current_script = Script::Common;
    for (c, lookalike) in word.drain(..) {
        let c = match lookalike {
            Some(latin) if as_latin => latin,
            _ => c,
        };
        let s = script(c);
        let cut = s == Script::Unspaced
            || current_script == Script::Unspaced
            || (s != Script::Common && current_script != Script::Common && s != current_script);
        if cut && !current.is_empty() {
            out.push(Word {
                text: std::mem::take(&mut current),
                glued,
                unspaced: current_script == Script::Unspaced,
            });
            glued = false;
        }
        if s != Script::Common || cut {
            current_script = s;
        }
        current.push(c);
    }
    out.push(Word {
        text: current,
        glued,
        unspaced: current_script == Script::Unspaced,
    });
}

/// The words with one space between.
pub fn spaced(words: &[Word]) -> String {
    let mut out = String::new();
    for (i, word) in words.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(&word.text);
    }
    out
}

/// The words read joined where they were split to hide one: a run of
/// single letters (`b a z o o k a`) and words split only by `-` or `.`
/// (`baz-ooka`, `b.a.z.o.o.k.a`) are one word; with the byte offsets of
/// the joins, counted from a leading space. `None` when nothing joins.
pub fn joined(words: &[Word]) -> Option<(String, Vec<usize>)> {
    let mut out = String::new();
    let mut joins = Vec::new();
    for (i, word) in words.iter().enumerate() {
        let join = i > 0 && {
            let before = &words[i - 1];
            let single = |w: &Word| w.text.chars().count() == 1;
            !word.unspaced && !before.unspaced && (word.glued || (single(word) && single(before)))
        };
        if join {
            joins.push(out.len() + 1);
        } else if i > 0 {
            out.push(' ');
        }
        out.push_str(&word.text);
    }
    (!joins.is_empty()).then_some((out, joins))
}

/// The scan as first written: every occurrence of every term anywhere in
/// `folded` (unanchored, overlapping), kept where it starts and ends a word;
/// `terms` are the folded terms with whether each is a prefix (`*`).
pub fn scan(terms: &[(String, bool)], folded: &str, joins: &[usize]) -> bool {
    let automaton = aho_corasick::AhoCorasickBuilder::new()
        .match_kind(aho_corasick::MatchKind::Standard)
        .build(terms.iter().map(|(term, _)| term))
        .unwrap();
    let bytes = folded.as_bytes();
    let boundary = |at: usize| bytes.get(at) == Some(&b' ') || joins.binary_search(&at).is_ok();
    automaton.find_overlapping_iter(folded).any(|hit| {
        let prefix = terms[hit.pattern().as_usize()].1;
        let starts_word = bytes[hit.start() - 1] == b' ' || boundary(hit.start());
        starts_word && (prefix || boundary(hit.end()))
    })
}
