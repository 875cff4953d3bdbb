//! Feeds the tamper-evident audit (`audit_chain`): a tracing layer copies
//! every event on the `audit` and `billing` targets (stdout keeps its JSON
//! line as before) into a bounded channel, and the writer links them and
//! stores the open segment about once a second, closing it by size or by
//! age (checked every second, so an idle replica's last events are signed
//! within a segment age too). After each close it stores, at least once a
//! segment age, and at a clean stop, it anchors the run's tail
//! (`audit_chain::Anchor`): a run's end is then verifiable.
//! A store that fails loses nothing still in memory (the whole open segment
//! is written again next time) and never blocks a call; a full channel drops
//! the event and counts it (`mcp_gateway_audit_events_dropped_total`).
//! A prompt logged by opt-in (`GATEWAY_LOG_PROMPTS`) stays out of the
//! chain, which keeps its `prompt_sha256`: the text is stored apart under
//! its owner (`storage::erasure`), so erasing it breaks no link, and a kept
//! text can still be checked against the chained hash.

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::storage::keyring::Keyring;
use crate::storage::store::ImageStore;
use crate::telemetry::audit_chain::Chain;

/// Events waiting for the writer: beyond this many they are dropped (counted).
const BUFFER: usize = 65_536;
/// How often the open segment is stored.
const WRITE_EVERY: Duration = Duration::from_secs(1);

static SINK: OnceLock<mpsc::Sender<Entry>> = OnceLock::new();

/// What the writer gets: an event for the chain, or a prompt kept apart.
enum Entry {
    Event(Value),
    Prompt {
        org: String,
        user: String,
        sha256: String,
        text: String,
        /// When the call began: the prompt of one begun before its owner's erasure is not kept.
        started: DateTime<Utc>,
    },
}

/// Audit events lost because the writer fell behind.
pub static DROPPED: LazyLock<prometheus_client::metrics::counter::Counter> = LazyLock::new(Default::default);

/// When a segment is closed.
#[derive(Debug, Clone, Copy)]
pub struct SegmentLimits {
    pub max_events: usize,
    pub max_age: Duration,
}

/// The layer that copies audit events to the chain (a no-op until the writer runs).
pub struct ChainLayer;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ChainLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let target = event.metadata().target();
        if target != "audit" && target != "billing" {
            return;
        }
        let Some(sink) = SINK.get() else { return };
        let mut fields = Fields(Map::new());
        fields.0.insert("target".into(), target.into());
        // When, inside the chain (stdout's line has its own timestamp).
        let now = Utc::now();
        fields.0.insert("time".into(), now.to_rfc3339().into());
        event.record(&mut fields);
        if let Some(Value::String(text)) = fields.0.remove("prompt") {
            let field = |name: &str| {
                fields
                    .0
                    .get(name)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            };
            let latency = fields.0.get("latency_ms").and_then(Value::as_i64).unwrap_or_default();
            let prompt = Entry::Prompt {
                org: field("org"),
                user: field("user"),
                sha256: field("prompt_sha256"),
                text,
                started: now - chrono::TimeDelta::milliseconds(latency),
            };
            if sink.try_send(prompt).is_err() {
                DROPPED.inc();
            }
        }
        if sink.try_send(Entry::Event(Value::Object(fields.0))).is_err() {
            DROPPED.inc();
        }
    }
}

struct Fields(Map<String, Value>);

impl tracing::field::Visit for Fields {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().into(), format!("{value:?}").into());
    }
}

/// Starts the writer for this replica; it closes its last segment and
/// anchors the run's end once `stop` fires and the channel is drained.
/// Returns when that is done.
pub fn start(
    store: ImageStore,
    keys: Keyring,
    limits: SegmentLimits,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (sender, receiver) = mpsc::channel(BUFFER);
    let _ = SINK.set(sender);
    // One chain per process run: a restart starts a new replica id, so a
    // crashed run's open segment stays as it was last written.
    let replica = crate::telemetry::audit_chain::run_id(Utc::now());
    let writer = Writer {
        chain: Chain::new(replica),
        store,
        keys,
        limits,
        opened: None,
        dirty: false,
        pending: Vec::new(),
        anchored: None,
    };
    tokio::spawn(writer.run(receiver, stop))
}

/// The writer's state: the chain, its open segment's age, the closed
/// segments the store has not taken yet, and the last anchor.
struct Writer {
    chain: Chain,
    store: ImageStore,
    keys: Keyring,
    limits: SegmentLimits,
    /// When the open segment's first event came.
    opened: Option<Instant>,
    /// The open segment changed since it was last stored.
    dirty: bool,
    /// Closed segments the store has not taken yet, retried every tick.
    pending: Vec<(String, String)>,
    /// When the last anchor was stored, and how many closed segments it counted.
    anchored: Option<(Instant, u64)>,
}

impl Writer {
    async fn run(mut self, mut receiver: mpsc::Receiver<Entry>, stop: CancellationToken) {
        // Anchored from the start: a run that writes segments has an anchor.
        self.anchor(false).await;
        let mut ticker = tokio::time::interval(WRITE_EVERY);
        loop {
            tokio::select! {
                entry = receiver.recv() => {
                    let Some(entry) = entry else { break };
                    if !take(entry, &mut self.chain, &self.store).await {
                        continue;
                    }
                    self.opened.get_or_insert_with(Instant::now);
                    self.dirty = true;
                    if self.chain.len() >= self.limits.max_events || self.aged() {
                        self.close().await;
                    }
                }
                _ = ticker.tick() => {
                    // Idle or not, a segment is signed once it is a segment age old.
                    if self.aged() {
                        self.close().await;
                    }
                    flush(&self.store, &mut self.pending).await;
                    if self.dirty {
                        self.dirty = !store_segment(&self.store, &self.chain.key(), self.chain.open_text()).await;
                    }
                    if self.anchor_due() {
                        self.anchor(false).await;
                    }
                }
                _ = stop.cancelled() => break,
            }
        }
        // What arrived before the stop is kept.
        while let Ok(entry) = receiver.try_recv() {
            take(entry, &mut self.chain, &self.store).await;
        }
        if !self.chain.is_empty() {
            self.pending.push(self.chain.close(&self.keys, Utc::now()));
        }
        flush(&self.store, &mut self.pending).await;
        if self.pending.is_empty() {
            self.anchor(true).await;
        } else {
            tracing::error!("the last audit segments could not be stored: this run's end is not anchored");
        }
    }

    fn aged(&self) -> bool {
        self.opened.is_some_and(|at| at.elapsed() >= self.limits.max_age)
    }

    async fn close(&mut self) {
        self.pending.push(self.chain.close(&self.keys, Utc::now()));
        self.opened = None;
        self.dirty = false;
        flush(&self.store, &mut self.pending).await;
        if self.pending.is_empty() {
            self.anchor(false).await;
        }
    }

    /// Due after a close the last anchor does not count, and once a segment
    /// age since it; only when every closed segment is stored (an anchor
    /// vouches for what is in the store).
    fn anchor_due(&self) -> bool {
        self.pending.is_empty()
            && self.anchored.is_none_or(|(at, segments)| {
                segments != self.chain.closed_segments() || at.elapsed() >= self.limits.max_age
            })
    }

    async fn anchor(&mut self, end: bool) {
        let now = Utc::now();
        // Two segment ages and a tick: one late anchor is not yet a lapse.
        let until = now + 2 * self.limits.max_age + 2 * WRITE_EVERY;
        let (key, text) = self.chain.anchor(&self.keys, now, until, end);
        if store_segment(&self.store, &key, text).await {
            self.anchored = Some((Instant::now(), self.chain.closed_segments()));
        }
    }
}

/// Links an event into the chain (`true`), or stores a prompt apart from it.
async fn take(entry: Entry, chain: &mut Chain, store: &ImageStore) -> bool {
    match entry {
        Entry::Event(event) => {
            chain.push(event);
            true
        }
        Entry::Prompt {
            org,
            user,
            sha256,
            text,
            started,
        } => {
            if let Err(error) = store.put_prompt(&org, &user, &sha256, &text, started).await {
                tracing::warn!(%error, "an opted-in prompt could not be stored apart from the audit");
            }
            false
        }
    }
}

/// Stores the closed segments in order, keeping those the store refused.
async fn flush(store: &ImageStore, pending: &mut Vec<(String, String)>) {
    while let Some((key, text)) = pending.first() {
        if !store_segment(store, key, text.clone()).await {
            return;
        }
        pending.remove(0);
    }
}

async fn store_segment(store: &ImageStore, key: &str, text: String) -> bool {
    match store.put_audit(key, text.into()).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%error, key, "an audit segment could not be stored; it is written again later");
            false
        }
    }
}
