//! The tamper-evident audit: every audit, billing and settings event of a
//! replica becomes one link of a hash chain — `{"seq", "prev", "event"}`,
//! its hash the SHA-256 of that line, the next link's `prev` — cut into
//! segments (`audit/{replica}/{segment}.jsonl`) that end with a record of
//! the last hash signed with the audit keyring (HMAC-SHA256, by key id, so
//! keys rotate). Editing, removing, reordering or inserting an event breaks
//! a hash or a sequence number; a missing segment breaks the chain between
//! two; a segment without its closing record is where a replica stopped.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

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
    pub kid: String,
    pub sig: String,
}

#[derive(Serialize, Deserialize)]
struct CloseLine {
    close: Close,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn signature(secret: &[u8], close: &Close) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(
        format!(
            "{}|{}|{}|{}|{}",
            close.replica, close.segment, close.first_seq, close.last_seq, close.last_hash
        )
        .as_bytes(),
    );
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

    /// The segment closed with its signed record; the chain goes on in the next.
    pub fn close(&mut self, keys: &Keyring) -> (String, String) {
        let (kid, secret) = keys.newest();
        let mut close = Close {
            replica: self.replica.clone(),
            segment: self.segment,
            first_seq: self.first_seq,
            last_seq: self.next_seq.saturating_sub(1),
            last_hash: self.prev.clone(),
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
        self.lines.clear();
        (key, text)
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

/// What verification found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub replicas: usize,
    pub segments: usize,
    pub events: u64,
    /// Segments without a closing record: where a replica stopped (or is writing now).
    pub open: Vec<String>,
    /// The first break, in words; `None` when every link holds.
    pub broken: Option<String>,
}

/// Checks every replica's segments (`(key, text)`, any order).
pub fn verify(segments: &[(String, String)], keys: &Keyring) -> Report {
    verify_from(segments, keys, false)
}

/// As `verify`; with `partial`, the segments are a period's (`audit verify
/// --since`): each replica's chain is checked from its first segment given,
/// which starts from its own first event instead of the genesis. A change
/// inside the period still breaks a hash or a signed closing record; only
/// segments before the period go unread.
pub fn verify_from(segments: &[(String, String)], keys: &Keyring, partial: bool) -> Report {
    let mut by_replica: std::collections::BTreeMap<&str, Vec<(u64, &str, &str)>> = Default::default();
    let mut report = Report::default();
    for (key, text) in segments {
        let Some((replica, number)) = parse_key(key) else {
            report.broken.get_or_insert(format!("{key}: not an audit segment name"));
            continue;
        };
        by_replica.entry(replica).or_default().push((number, key, text));
    }
    report.replicas = by_replica.len();
    for (_, mut list) in by_replica {
        list.sort_by_key(|(n, _, _)| *n);
        let mut expect = Expected {
            segment: 0,
            seq: 0,
            prev: GENESIS.to_string(),
        };
        if let (true, Some((number, _, text))) = (partial, list.first()) {
            if let Some(first) = text.lines().next().and_then(|l| serde_json::from_str::<Link>(l).ok()) {
                expect = Expected {
                    segment: *number,
                    seq: first.seq,
                    prev: first.prev,
                };
            }
        }
        for (number, key, text) in list {
            report.segments += 1;
            if number != expect.segment {
                report
                    .broken
                    .get_or_insert(format!("{key}: segment {} is missing before it", expect.segment));
                return report;
            }
            match check_segment(key, text, &mut expect, keys, &mut report) {
                Ok(()) => expect.segment += 1,
                Err(problem) => {
                    report.broken.get_or_insert(problem);
                    return report;
                }
            }
        }
    }
    report
}

struct Expected {
    segment: u64,
    seq: u64,
    prev: String,
}

fn parse_key(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix("audit/")?;
    let (replica, file) = rest.split_once('/')?;
    let number = file.strip_suffix(".jsonl")?.parse().ok()?;
    Some((replica, number))
}

fn check_segment(
    key: &str,
    text: &str,
    expect: &mut Expected,
    keys: &Keyring,
    report: &mut Report,
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

    #[test]
    fn a_period_verifies_from_its_first_segment_and_still_catches_edits() {
        let keys = keys();
        let segments = stored();
        let period = &segments[1..];
        assert!(
            verify(period, &keys).broken.is_some(),
            "segment 0 is missing without --since"
        );
        let report = verify_from(period, &keys, true);
        assert_eq!(report.broken, None);
        assert_eq!(report.events, 5);
        let mut edited = period.to_vec();
        edited[0].1 = edited[0].1.replacen("\"n\":4", "\"n\":40", 1);
        assert!(verify_from(&edited, &keys, true).broken.unwrap().contains("event 4"));
    }

    fn keys() -> Keyring {
        Keyring::parse(&format!("audit-1 {}\n", "ab".repeat(32)), 32).unwrap()
    }

    /// Two closed segments of three events and an open one of two.
    fn stored() -> Vec<(String, String)> {
        let keys = keys();
        let mut chain = Chain::new("r1".into());
        let mut segments = Vec::new();
        for segment in 0..2 {
            for i in 0..3 {
                chain.push(serde_json::json!({"tool": "generate_image", "n": segment * 3 + i}));
            }
            segments.push(chain.close(&keys));
        }
        chain.push(serde_json::json!({"n": 6}));
        chain.push(serde_json::json!({"n": 7}));
        segments.push((chain.key(), chain.open_text()));
        segments
    }

    fn edit(segments: &mut [(String, String)], index: usize, change: impl FnOnce(&mut Vec<String>)) {
        let mut lines: Vec<String> = segments[index].1.lines().map(str::to_string).collect();
        change(&mut lines);
        segments[index].1 = lines.join("\n") + "\n";
    }

    #[test]
    fn an_untouched_chain_verifies_and_names_its_open_segment() {
        let report = verify(&stored(), &keys());
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
            let broken = verify(&segments, &keys()).broken.unwrap_or_default();
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
        assert_eq!(verify(&segments, &rotated).broken, None);
        let other = Keyring::parse(&format!("audit-2 {}\n", "cd".repeat(32)), 32).unwrap();
        assert!(verify(&segments, &other).broken.unwrap().contains("unknown key"));
    }
}
