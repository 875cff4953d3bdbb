//! The tamper-evident audit: every audit, billing and settings event of a
//! replica becomes one link of a hash chain — `{"seq", "prev", "event"}`,
//! its hash the SHA-256 of that line, the next link's `prev` — cut into
//! segments (`audit/{replica}/{segment}.jsonl`) that end with a record of
//! the last hash signed with the audit keyring (HMAC-SHA256, by key id, so
//! keys rotate). Editing, removing, reordering or inserting an event breaks
//! a hash or a sequence number; a missing segment breaks the chain between
//! two; a segment without its closing record is where a replica stopped.
//!
//! A run's tail is anchored apart (`audit/{replica}/anchor.json`, written
//! again as the run goes on): a signed record of how many segments and
//! events it has stored and the last hash, when, until when the run vouches
//! to write the next (it does at least once a segment age, idle or not),
//! and at a clean stop that this is the end. So `verify` can say of a run:
//! ended (its end anchored: anything removed after is named), live (its
//! anchor is still due: segments removed before it are named; at most what
//! it wrote since is unverifiable), incomplete (its anchor lapsed without
//! an end: it crashed, or its tail and newer anchors were removed — only
//! the run's host can tell which), or unanchored (written before anchors).
//! A run removed entirely, anchor and all, leaves nothing to compare with.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use chrono::{DateTime, Utc};

use crate::storage::keyring::Keyring;

/// The `prev` of a replica's first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Link {
    seq: u64,
    prev: String,
    event: Value,
}

/// A segment's last line: what it holds, signed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Close {
    pub replica: String,
    pub segment: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// When it was closed (RFC 3339); absent in segments from before
    /// anchors, whose runs therefore need none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
    pub kid: String,
    pub sig: String,
}

/// A run's anchor: how far its stored, closed chain reaches, signed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Anchor {
    pub replica: String,
    /// Closed segments stored (numbered `0..segments`).
    pub segments: u64,
    /// Events in them.
    pub events: u64,
    /// The hash of the last of those events (`GENESIS` for none).
    pub last_hash: String,
    /// When it was written (RFC 3339).
    pub at: String,
    /// By when the run writes its next anchor, if it has not ended.
    pub until: String,
    /// The run stopped cleanly: nothing follows.
    pub end: bool,
    pub kid: String,
    pub sig: String,
}

impl Anchor {
    fn signed_text(&self) -> String {
        format!(
            "anchor|{}|{}|{}|{}|{}|{}|{}",
            self.replica, self.segments, self.events, self.last_hash, self.at, self.until, self.end
        )
    }
}

#[derive(Serialize, Deserialize)]
struct CloseLine {
    close: Close,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn signature(secret: &[u8], close: &Close) -> String {
    let mut text = format!(
        "{}|{}|{}|{}|{}",
        close.replica, close.segment, close.first_seq, close.last_seq, close.last_hash
    );
    if let Some(at) = &close.at {
        text.push('|');
        text.push_str(at);
    }
    mac_hex(secret, &text)
}

fn mac_hex(secret: &[u8], text: &str) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(text.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// One replica's chain as it is written: the open segment's lines.
#[derive(Debug)]
pub struct Chain {
    pub replica: String,
    pub segment: u64,
    first_seq: u64,
    next_seq: u64,
    prev: String,
    /// The hash of the last event of the last closed segment.
    closed_hash: String,
    lines: Vec<String>,
}

impl Chain {
    pub fn new(replica: String) -> Self {
        Self {
            replica,
            segment: 0,
            first_seq: 0,
            next_seq: 0,
            prev: GENESIS.to_string(),
            closed_hash: GENESIS.to_string(),
            lines: Vec::new(),
        }
    }

    /// Appends one event.
    pub fn push(&mut self, event: Value) {
        let link = Link {
            seq: self.next_seq,
            prev: std::mem::take(&mut self.prev),
            event,
        };
        let line = serde_json::to_string(&link).unwrap_or_default();
        self.prev = sha256_hex(line.as_bytes());
        self.next_seq += 1;
        self.lines.push(line);
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Where the open segment is stored.
    pub fn key(&self) -> String {
        segment_key(&self.replica, self.segment)
    }

    /// The open segment as stored so far (no closing record yet).
    pub fn open_text(&self) -> String {
        let mut text = self.lines.join("\n");
        text.push('\n');
        text
    }

    /// The segment closed at `now` with its signed record; the chain goes on in the next.
    pub fn close(&mut self, keys: &Keyring, now: DateTime<Utc>) -> (String, String) {
        let (kid, secret) = keys.newest();
        let mut close = Close {
            replica: self.replica.clone(),
            segment: self.segment,
            first_seq: self.first_seq,
            last_seq: self.next_seq.saturating_sub(1),
            last_hash: self.prev.clone(),
            at: Some(now.to_rfc3339()),
            kid: kid.to_string(),
            sig: String::new(),
        };
        close.sig = signature(secret, &close);
        let mut text = self.open_text();
        text.push_str(&serde_json::to_string(&CloseLine { close }).unwrap_or_default());
        text.push('\n');
        let key = self.key();
        self.segment += 1;
        self.first_seq = self.next_seq;
        self.closed_hash = self.prev.clone();
        self.lines.clear();
        (key, text)
    }

    /// Closed segments so far (the open one not counted).
    pub fn closed_segments(&self) -> u64 {
        self.segment
    }

    /// The anchor of the closed part (every closed segment must be stored
    /// first), written at `now`: the run vouches to write the next by
    /// `until`, or with `end`, that nothing follows.
    pub fn anchor(&self, keys: &Keyring, now: DateTime<Utc>, until: DateTime<Utc>, end: bool) -> (String, String) {
        let (kid, secret) = keys.newest();
        let mut anchor = Anchor {
            replica: self.replica.clone(),
            segments: self.segment,
            events: self.first_seq,
            last_hash: self.closed_hash.clone(),
            at: now.to_rfc3339(),
            until: until.to_rfc3339(),
            end,
            kid: kid.to_string(),
            sig: String::new(),
        };
        anchor.sig = mac_hex(secret, &anchor.signed_text());
        let mut text = serde_json::to_string(&anchor).unwrap_or_default();
        text.push('\n');
        (anchor_key(&self.replica), text)
    }
}

/// A fresh chain's id: when it started, and a random tail so two starting
/// in the same second differ.
pub fn run_id(now: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%SZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

pub fn segment_key(replica: &str, segment: u64) -> String {
    format!("audit/{replica}/{segment:010}.jsonl")
}

/// Where a run's anchor lives, beside its segments.
pub fn anchor_key(replica: &str) -> String {
    format!("audit/{replica}/anchor.json")
}

/// What verification found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub replicas: usize,
    pub segments: usize,
    pub events: u64,
    /// Segments without a closing record: where a replica stopped (or is writing now).
    pub open: Vec<String>,
    /// Runs whose signed end is anchored, every segment up to it present.
    pub ended: Vec<String>,
    /// Runs whose anchor is still due: running now.
    pub live: Vec<String>,
    /// Runs whose anchor lapsed without an end: they crashed, or their
    /// tail (and newer anchors) were removed since the anchor was written.
    pub incomplete: Vec<String>,
    /// Runs written before anchors: where they end cannot be shown.
    pub unanchored: Vec<String>,
    /// The first break, in words; `None` when every link holds.
    pub broken: Option<String>,
}

impl Report {
    /// The report's fields as `audit verify` prints them and the evidence bundle keeps them.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "replicas": self.replicas,
            "segments": self.segments,
            "events": self.events,
            "open_segments": self.open,
            "ended": self.ended,
            "live": self.live,
            "incomplete": self.incomplete,
            "unanchored": self.unanchored,
            "broken": self.broken,
        })
    }
}

/// Checks every replica's segments and anchors (`(key, text)`, any order) at `now`.
pub fn verify(segments: &[(String, String)], keys: &Keyring, now: DateTime<Utc>) -> Report {
    verify_from(segments, keys, false, now)
}

/// As `verify`; with `partial`, the segments are a period's (`audit verify
/// --since`): each replica's chain is checked from its first segment given,
/// which starts from its own first event instead of the genesis. A change
/// inside the period still breaks a hash or a signed closing record; only
/// segments before the period go unread.
pub fn verify_from(segments: &[(String, String)], keys: &Keyring, partial: bool, now: DateTime<Utc>) -> Report {
    let mut runs: std::collections::BTreeMap<&str, Run<'_>> = Default::default();
    let mut report = Report::default();
    for (key, text) in segments {
        match parse_key(key) {
            Some((replica, Stored::Segment(number))) => {
                runs.entry(replica).or_default().segments.push((number, key, text));
            }
            Some((replica, Stored::Anchor)) => runs.entry(replica).or_default().anchor = Some((key, text)),
            None => {
                report.broken.get_or_insert(format!("{key}: not an audit segment name"));
            }
        }
    }
    report.replicas = runs.len();
    for (replica, run) in runs {
        if let Err(problem) = check_run(replica, run, keys, partial, now, &mut report) {
            report.broken.get_or_insert(problem);
            return report;
        }
    }
    report
}

/// One run's stored objects: its segments (by number) and its anchor.
#[derive(Default)]
struct Run<'a> {
    segments: Vec<(u64, &'a str, &'a str)>,
    anchor: Option<(&'a str, &'a str)>,
}

/// What a run's segments showed of its tail.
#[derive(Default)]
struct Tail {
    /// Each closed segment: its number, the events up to its end, the last hash.
    closes: Vec<(u64, u64, String)>,
    /// Closing records carry their time: the run wrote anchors.
    dated: bool,
}

struct Expected {
    segment: u64,
    seq: u64,
    prev: String,
}

enum Stored {
    Segment(u64),
    Anchor,
}

fn parse_key(key: &str) -> Option<(&str, Stored)> {
    let rest = key.strip_prefix("audit/")?;
    let (replica, file) = rest.split_once('/')?;
    if file == "anchor.json" {
        return Some((replica, Stored::Anchor));
    }
    let number = file.strip_suffix(".jsonl")?.parse().ok()?;
    Some((replica, Stored::Segment(number)))
}

fn check_run(
    replica: &str,
    mut run: Run<'_>,
    keys: &Keyring,
    partial: bool,
    now: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), String> {
    run.segments.sort_by_key(|(n, _, _)| *n);
    let mut expect = Expected {
        segment: 0,
        seq: 0,
        prev: GENESIS.to_string(),
    };
    // The period's first segment, before which nothing is given.
    let mut period_start = None;
    if let (true, Some((number, _, text))) = (partial, run.segments.first()) {
        period_start = Some(*number);
        if let Some(first) = text.lines().next().and_then(|l| serde_json::from_str::<Link>(l).ok()) {
            expect = Expected {
                segment: *number,
                seq: first.seq,
                prev: first.prev,
            };
        }
    }
    let mut tail = Tail::default();
    for (number, key, text) in run.segments {
        report.segments += 1;
        if number != expect.segment {
            return Err(format!("{key}: segment {} is missing before it", expect.segment));
        }
        check_segment(key, text, &mut expect, keys, report, &mut tail)?;
        expect.segment += 1;
    }
    let Some((key, text)) = run.anchor else {
        if tail.dated {
            return Err(format!(
                "audit/{replica}: the run's anchor is missing (its segments are of a version that writes one)"
            ));
        }
        report.unanchored.push(replica.to_string());
        return Ok(());
    };
    let anchor = read_anchor(key, text, replica, keys)?;
    // The anchor's last segment must be here and end where it says.
    if let Some(last) = anchor.segments.checked_sub(1) {
        match tail.closes.iter().find(|(n, _, _)| *n == last) {
            Some((_, events, hash)) if *events == anchor.events && *hash == anchor.last_hash => {}
            Some(_) => {
                return Err(format!(
                    "{key}: segment {last} does not end where the run's anchor of {} says",
                    anchor.at
                ))
            }
            // Before the period: not given, not checked.
            None if partial && period_start.is_none_or(|start| last < start) => {}
            None if last < expect.segment => {
                return Err(format!(
                    "{key}: segment {last} is not closed, though the run's anchor of {} says it was",
                    anchor.at
                ))
            }
            None => {
                return Err(format!(
                    "{key}: the run's anchor of {} vouches for {} segments, but segment {last} is missing",
                    anchor.at, anchor.segments
                ))
            }
        }
    }
    if anchor.end {
        if expect.segment > anchor.segments {
            return Err(format!(
                "{key}: segment {} follows the run's signed end",
                anchor.segments
            ));
        }
        report.ended.push(replica.to_string());
    } else if DateTime::parse_from_rfc3339(&anchor.until).is_ok_and(|until| until >= now) {
        report.live.push(replica.to_string());
    } else {
        report.incomplete.push(replica.to_string());
    }
    Ok(())
}

fn read_anchor(key: &str, text: &str, replica: &str, keys: &Keyring) -> Result<Anchor, String> {
    let anchor: Anchor = serde_json::from_str(text.trim()).map_err(|_| format!("{key}: not an anchor"))?;
    let secret = keys
        .get(&anchor.kid)
        .ok_or_else(|| format!("{key}: anchor signed with unknown key {:?}", anchor.kid))?;
    if mac_hex(secret, &anchor.signed_text()) != anchor.sig || anchor.replica != replica {
        return Err(format!("{key}: the anchor's signature does not match"));
    }
    Ok(anchor)
}

fn check_segment(
    key: &str,
    text: &str,
    expect: &mut Expected,
    keys: &Keyring,
    report: &mut Report,
    tail: &mut Tail,
) -> Result<(), String> {
    let mut closed = false;
    for (index, line) in text.lines().enumerate() {
        let at = format!("{key} line {}", index + 1);
        if closed {
            return Err(format!("{at}: a line after the segment's closing record"));
        }
        if let Ok(CloseLine { close }) = serde_json::from_str::<CloseLine>(line) {
            let secret = keys
                .get(&close.kid)
                .ok_or_else(|| format!("{at}: closing record signed with unknown key {:?}", close.kid))?;
            if signature(secret, &close) != close.sig {
                return Err(format!("{at}: the closing record's signature does not match"));
            }
            if close.last_hash != expect.prev || close.last_seq + 1 != expect.seq {
                return Err(format!(
                    "{at}: the closing record says the segment ends at event {} but it ends at {}",
                    close.last_seq,
                    expect.seq.saturating_sub(1)
                ));
            }
            closed = true;
            tail.dated |= close.at.is_some();
            tail.closes.push((expect.segment, expect.seq, expect.prev.clone()));
            continue;
        }
        let link: Link = serde_json::from_str(line).map_err(|_| format!("{at}: not an audit event"))?;
        if link.seq != expect.seq {
            let later = text
                .lines()
                .skip(index + 1)
                .filter_map(|l| serde_json::from_str::<Link>(l).ok())
                .any(|l| l.seq == expect.seq);
            return Err(if link.seq > expect.seq && later {
                format!(
                    "{at}: events are out of order: event {} comes after event {}",
                    expect.seq, link.seq
                )
            } else if link.seq > expect.seq {
                format!("{at}: event {} is missing (found {} next)", expect.seq, link.seq)
            } else {
                format!(
                    "{at}: event {} is out of order or repeated (expected {})",
                    link.seq, expect.seq
                )
            });
        }
        if link.prev != expect.prev {
            return Err(format!(
                "{at}: event {} does not follow event {}: that event was edited, or this one inserted",
                link.seq,
                link.seq.saturating_sub(1)
            ));
        }
        expect.prev = sha256_hex(line.as_bytes());
        expect.seq += 1;
        report.events += 1;
    }
    if !closed {
        report.open.push(key.to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap().to_utc()
    }

    #[test]
    fn a_period_verifies_from_its_first_segment_and_still_catches_edits() {
        let keys = keys();
        let segments = stored();
        let period = &segments[1..];
        assert!(
            verify(period, &keys, now()).broken.is_some(),
            "segment 0 is missing without --since"
        );
        let report = verify_from(period, &keys, true, now());
        assert_eq!(report.broken, None);
        assert_eq!(report.events, 5);
        let mut edited = period.to_vec();
        edited[0].1 = edited[0].1.replacen("\"n\":4", "\"n\":40", 1);
        assert!(verify_from(&edited, &keys, true, now())
            .broken
            .unwrap()
            .contains("event 4"));
    }

    fn keys() -> Keyring {
        Keyring::parse(&format!("audit-1 {}\n", "ab".repeat(32)), 32).unwrap()
    }

    /// Two closed segments of three events, an open one of two, and the
    /// run's anchor (due again in a minute).
    fn stored() -> Vec<(String, String)> {
        let keys = keys();
        let mut chain = Chain::new("r1".into());
        let mut segments = chain_segments(&mut chain);
        let anchor = chain.anchor(&keys, now(), now() + chrono::TimeDelta::minutes(1), false);
        chain.push(serde_json::json!({"n": 6}));
        chain.push(serde_json::json!({"n": 7}));
        segments.push((chain.key(), chain.open_text()));
        segments.push(anchor);
        segments
    }

    /// Two segments of three events, closed.
    fn chain_segments(chain: &mut Chain) -> Vec<(String, String)> {
        let mut segments = Vec::new();
        for segment in 0..2 {
            for i in 0..3 {
                chain.push(serde_json::json!({"tool": "generate_image", "n": segment * 3 + i}));
            }
            segments.push(chain.close(&keys(), now()));
        }
        segments
    }

    /// A run of two closed segments that stopped cleanly: its end anchored.
    fn ended() -> Vec<(String, String)> {
        let mut chain = Chain::new("r1".into());
        let mut segments = chain_segments(&mut chain);
        segments.push(chain.anchor(&keys(), now(), now(), true));
        segments
    }

    #[test]
    fn a_runs_anchor_says_whether_it_ended_runs_or_lapsed() {
        let keys = keys();
        let report = verify(&ended(), &keys, now());
        assert_eq!((report.broken, report.ended), (None, vec!["r1".to_string()]));
        let report = verify(&stored(), &keys, now());
        assert_eq!(report.live, ["r1"]);
        let later = now() + chrono::TimeDelta::minutes(2);
        let report = verify(&stored(), &keys, later);
        assert_eq!((report.broken, report.incomplete), (None, vec!["r1".to_string()]));
        // Closed before anchors existed: nothing to say where the run ends.
        let legacy: Vec<(String, String)> = ended()[..2]
            .iter()
            .map(|(key, text)| {
                let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
                let mut close: CloseLine = serde_json::from_str(lines.last().unwrap()).unwrap();
                close.close.at = None;
                close.close.sig = signature(keys.newest().1, &close.close);
                *lines.last_mut().unwrap() = serde_json::to_string(&close).unwrap();
                (key.clone(), lines.join("\n") + "\n")
            })
            .collect();
        let report = verify(&legacy, &keys, now());
        assert_eq!((report.broken, report.unanchored), (None, vec!["r1".to_string()]));
    }

    #[test]
    fn a_runs_tail_cannot_go_unnoticed() {
        let keys = keys();
        type Segments = Vec<(String, String)>;
        type Tamper = Box<dyn Fn(&mut Segments)>;
        let cases: Vec<(&str, Segments, Tamper, &str)> = vec![
            (
                "last segment of an ended run removed",
                ended(),
                Box::new(|s| {
                    s.remove(1);
                }),
                "vouches for 2 segments, but segment 1 is missing",
            ),
            (
                "last segment of a live run removed",
                stored(),
                Box::new(|s| {
                    s.truncate(1);
                    s.push(stored().pop().unwrap());
                }),
                "segment 1 is missing",
            ),
            (
                "a segment after the end",
                ended(),
                Box::new(|s| s.push(("audit/r1/0000000002.jsonl".into(), stored()[2].1.clone()))),
                "segment 2 follows the run's signed end",
            ),
            (
                "anchor removed",
                ended(),
                Box::new(|s| {
                    s.pop();
                }),
                "the run's anchor is missing",
            ),
            (
                "anchor forged",
                ended(),
                Box::new(|s| s[2].1 = s[2].1.replace("\"segments\":2", "\"segments\":1")),
                "the anchor's signature does not match",
            ),
            (
                "a segment rewritten with its closing record dropped",
                ended(),
                Box::new(|s| {
                    edit(s, 1, |l| {
                        l.pop();
                    })
                }),
                "segment 1 is not closed, though the run's anchor",
            ),
        ];
        for (name, mut segments, tamper, expected) in cases {
            tamper(&mut segments);
            let broken = verify(&segments, &keys, now()).broken.unwrap_or_default();
            assert!(broken.contains(expected), "{name}: {broken}");
        }
    }

    fn edit(segments: &mut [(String, String)], index: usize, change: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = segments[index].1.lines().map(str::to_string).collect();
        change(&mut lines);
        segments[index].1 = lines.join("\n") + "\n";
    }

    #[test]
    fn an_untouched_chain_verifies_and_names_its_open_segment() {
        let report = verify(&stored(), &keys(), now());
        assert_eq!(report.broken, None, "{report:?}");
        assert_eq!((report.replicas, report.segments, report.events), (1, 3, 8));
        assert_eq!(report.open, ["audit/r1/0000000002.jsonl"]);
    }

    #[test]
    fn every_kind_of_tampering_is_named() {
        type Tamper = Box<dyn Fn(&mut Vec<(String, String)>)>;
        let cases: Vec<(&str, Tamper, &str)> = vec![
            (
                "edited",
                Box::new(|s| edit(s, 0, |l| l[1] = l[1].replace("\"n\":1", "\"n\":9"))),
                "event 2 does not follow event 1",
            ),
            (
                "removed",
                Box::new(|s| {
                    edit(s, 1, |l| {
                        l.remove(1);
                    })
                }),
                "event 4 is missing",
            ),
            (
                "reordered",
                Box::new(|s| edit(s, 0, |l| l.swap(0, 1))),
                "out of order: event 0 comes after event 1",
            ),
            (
                "inserted",
                Box::new(|s| edit(s, 2, |l| l.insert(1, l[0].clone()))),
                "event 6 is out of order or repeated",
            ),
            (
                "segment removed",
                Box::new(|s| {
                    s.remove(1);
                }),
                "segment 1 is missing",
            ),
            (
                "closing record forged",
                Box::new(|s| edit(s, 0, |l| l[3] = l[3].replace("\"last_seq\":2", "\"last_seq\":1"))),
                "signature does not match",
            ),
            (
                "last event dropped with its hash",
                Box::new(|s| {
                    edit(s, 1, |l| {
                        l.remove(2);
                    })
                }),
                "closing record says the segment ends at event 5 but it ends at 4",
            ),
        ];
        for (name, tamper, expected) in cases {
            let mut segments = stored();
            tamper(&mut segments);
            let broken = verify(&segments, &keys(), now()).broken.unwrap_or_default();
            assert!(broken.contains(expected), "{name}: {broken}");
        }
    }

    #[test]
    fn a_rotated_key_still_verifies_older_segments() {
        let segments = stored();
        let rotated = Keyring::parse(
            &format!("audit-2 {}\naudit-1 {}\n", "cd".repeat(32), "ab".repeat(32)),
            32,
        )
        .unwrap();
        assert_eq!(verify(&segments, &rotated, now()).broken, None);
        let other = Keyring::parse(&format!("audit-2 {}\n", "cd".repeat(32)), 32).unwrap();
        assert!(verify(&segments, &other, now()).broken.unwrap().contains("unknown key"));
    }
}
