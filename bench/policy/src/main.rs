//! `make bench-policy`: the content policy's denied-terms check as the call
//! path runs it — 10,000 terms, a 4,000-character prompt — against the
//! loop over terms it replaces, measured in the same run. Prints a markdown
//! table (bench/results/policy.md); the bound is 50 µs per prompt.

use std::time::{Duration, Instant};

#[path = "../../../upstream/src/policy/terms.rs"]
#[allow(dead_code)]
mod terms;

use terms::{fold, DenyTerms};

const TERMS: usize = 10_000;
const PROMPT_CHARS: usize = 4_000;
const ROUNDS: usize = 2_000;

/// A deterministic pseudo-word generator (xorshift), so runs compare.
struct Words(u64);

impl Words {
    fn word(&mut self, len: usize) -> String {
        (0..len)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                char::from(b'a' + (self.0 % 26) as u8)
            })
            .collect()
    }
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    samples[((samples.len() - 1) as f64 * p) as usize]
}

fn measure(mut check: impl FnMut() -> bool) -> (Duration, Duration, bool) {
    let mut samples = Vec::with_capacity(ROUNDS);
    let mut hit = false;
    for _ in 0..ROUNDS {
        let started = Instant::now();
        hit = std::hint::black_box(check());
        samples.push(started.elapsed());
    }
    (percentile(&mut samples, 0.5), percentile(&mut samples, 0.99), hit)
}

fn main() {
    let mut words = Words(0x9E37_79B9_7F4A_7C15);
    let terms: Vec<String> = (0..TERMS)
        .map(|i| match i % 10 {
            0 => format!("{} {}", words.word(6), words.word(7)),
            1 => format!("{}*", words.word(8)),
            _ => words.word(5 + i % 6),
        })
        .collect();
    let mut prompt = String::new();
    while prompt.chars().count() < PROMPT_CHARS {
        prompt.push_str(&words.word(3 + prompt.len() % 7));
        prompt.push_str(if prompt.len().is_multiple_of(5) { ", " } else { " " });
    }
    let prompt: String = prompt.chars().take(PROMPT_CHARS).collect();
    let denied = format!("{} {}", &prompt[..PROMPT_CHARS - 20], terms[2].to_uppercase());
    // Every tenth space a hyphen: the text is also read with those words joined (two scans).
    let mut spaces = 0;
    let split: String = prompt
        .chars()
        .map(|c| match c {
            ' ' => {
                spaces += 1;
                if spaces % 10 == 0 {
                    '-'
                } else {
                    ' '
                }
            }
            c => c,
        })
        .collect();

    let started = Instant::now();
    let set = DenyTerms::new([("bench", terms.as_slice())]).expect("terms compile");
    let compile = started.elapsed();

    // The loop it replaces: every folded term searched in the folded prompt, as whole words.
    let folded_terms: Vec<String> = terms
        .iter()
        .map(|t| format!(" {} ", fold(t.trim_end_matches('*')).trim()))
        .collect();
    let naive = |text: &str| {
        let folded = format!(" {} ", fold(text));
        folded_terms.iter().any(|t| folded.contains(t.as_str()))
    };

    let rows = [
        ("automaton, no denied term", measure(|| set.find(&prompt).is_some())),
        (
            "automaton, a denied term at the end",
            measure(|| set.find(&denied).is_some()),
        ),
        (
            "automaton, split words (a second, joined reading)",
            measure(|| set.find(&split).is_some()),
        ),
        // The automaton's rows less this are the scan: where the time goes.
        ("folding alone, no scan", measure(|| !fold(&prompt).is_empty())),
        ("loop over terms, no denied term", measure(|| naive(&prompt))),
        ("loop over terms, a denied term at the end", measure(|| naive(&denied))),
    ];
    println!("# Denied-terms matching\n");
    println!(
        "{TERMS} terms (a tenth phrases, a tenth starred), one {PROMPT_CHARS}-character prompt, {ROUNDS} rounds each, \
         one thread, in the same run. Compiling the automaton (once per policy load): {:.1} ms; it holds {} KiB.\n",
        compile.as_secs_f64() * 1e3,
        set.memory_usage() / 1024
    );
    println!("| check | p50 µs | p99 µs | found |");
    println!("|---|---:|---:|---|");
    for (name, (p50, p99, hit)) in &rows {
        println!(
            "| {name} | {:.1} | {:.1} | {hit} |",
            p50.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
    let ratio = rows[4].1 .0.as_secs_f64() / rows[0].1 .0.as_secs_f64().max(1e-12);
    println!("\nThe loop over terms takes {ratio:.0}x the automaton's p50 on a clean prompt.");
    // A shared machine's p99 says more about its neighbours than about the code.
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "\nMachine: {cores} cores, load average {} (1, 5, 15 min) when the run ended.",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(", ")
    );
    assert!(
        !rows[0].1 .2 && rows[1].1 .2 && !rows[2].1 .2,
        "the automaton must find the denied term and only it"
    );
}
