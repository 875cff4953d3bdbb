//! Feeds the tamper-evident audit (`audit_chain`): a tracing layer copies
//! every event on the `audit` and `billing` targets (stdout keeps its JSON
//! line as before) into a bounded channel, and the writer links them and
//! stores the open segment about once a second, closing it by size or age.
//! A store that fails loses nothing still in memory (the whole open segment
//! is written again next time) and never blocks a call; a full channel drops
//! the event and counts it (`mcp_gateway_audit_events_dropped_total`).
//! A prompt logged by opt-in (`GATEWAY_LOG_PROMPTS`) stays out of the
//! chain, which keeps its `prompt_sha256`: the text is stored apart under
//! its owner (`storage::erasure`), so erasing it breaks no link, and a kept
//! text can still be checked against the chained hash.

use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

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
        fields.0.insert("time".into(), chrono::Utc::now().to_rfc3339().into());
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
            let prompt = Entry::Prompt {
                org: field("org"),
                user: field("user"),
                sha256: field("prompt_sha256"),
                text,
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

/// Starts the writer for this replica; it closes its last segment once
/// `stop` fires and the channel is drained. Returns when that is done.
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
    let replica = crate::telemetry::audit_chain::run_id(chrono::Utc::now());
    tokio::spawn(write(Chain::new(replica), store, keys, limits, receiver, stop))
}

async fn write(
    mut chain: Chain,
    store: ImageStore,
    keys: Keyring,
    limits: SegmentLimits,
    mut receiver: mpsc::Receiver<Entry>,
    stop: CancellationToken,
) {
    let mut opened = Instant::now();
    let mut dirty = false;
    // Closed segments the store has not taken yet, retried every tick.
    let mut pending: Vec<(String, String)> = Vec::new();
    let mut ticker = tokio::time::interval(WRITE_EVERY);
    loop {
        tokio::select! {
            entry = receiver.recv() => {
                let Some(entry) = entry else { break };
                if !take(entry, &mut chain, &store).await {
                    continue;
                }
                dirty = true;
                if chain.len() >= limits.max_events || opened.elapsed() >= limits.max_age {
                    pending.push(chain.close(&keys));
                    opened = Instant::now();
                    dirty = false;
                    flush(&store, &mut pending).await;
                }
            }
            _ = ticker.tick() => {
                flush(&store, &mut pending).await;
                if dirty {
                    dirty = !store_segment(&store, &chain.key(), chain.open_text()).await;
                }
            }
            _ = stop.cancelled() => break,
        }
    }
    // What arrived before the stop is kept.
    while let Ok(entry) = receiver.try_recv() {
        take(entry, &mut chain, &store).await;
    }
    if !chain.is_empty() {
        pending.push(chain.close(&keys));
    }
    flush(&store, &mut pending).await;
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
        } => {
            if let Err(error) = store.put_prompt(&org, &user, &sha256, &text).await {
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
