//! Signing keys from the JWKS URLs of the trusted issuers in the
//! dynamic-module build. One ticker thread asks Envoy's main thread (the
//! configuration's scheduler) for a fetch of each issuer's JWKS when it is
//! due (the event names the issuer's slot); the main thread fetches through
//! a configuration callout, checks the document and publishes it under a new
//! generation; each worker thread loads a new generation into its own
//! verifier on its next request. The Wasm build does the same per VM on its tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::abi::{self, ConfigScheduler, FilterConfigEnvoy, ModuleBuffer, ModuleHeader};
use super::metrics::Metrics;
use super::{log, now_ms};
use crate::jwt::{JwksRemote, JwtVerifier};

/// How often the ticker looks whether a fetch is due.
const TICK: Duration = Duration::from_millis(100);
/// The callout id of an issuer with no fetch under way.
const NO_CALLOUT: u64 = u64::MAX;

/// The scheduler pointer, used from the ticker thread (Envoy allows
/// commits from any thread).
struct Scheduler(ConfigScheduler);
// SAFETY: Envoy's configuration scheduler is thread-safe to commit to, and
// it is deleted only after the ticker thread has been joined.
unsafe impl Send for Scheduler {}
unsafe impl Sync for Scheduler {}

/// The published keys and the fetch loops of one filter configuration.
pub struct Jwks {
    /// One per issuer with a `jwks_uri`; the scheduled event `slot + 1` fetches `remotes[slot]`.
    remotes: Vec<RemoteKeys>,
    /// Bumped each time any issuer's document is published (0: none yet).
    generation: AtomicU64,
    stop: Arc<AtomicBool>,
    scheduler: Arc<Scheduler>,
    ticker: Mutex<Option<JoinHandle<()>>>,
}

/// One issuer's fetched keys and its fetch loop.
pub struct RemoteKeys {
    /// The issuer's place in the settings.
    pub issuer: usize,
    remote: JwksRemote,
    /// Bumped each time a new document of this issuer is published (0: none yet).
    generation: AtomicU64,
    document: Mutex<Option<Arc<Value>>>,
    due_ms: AtomicU64,
    in_flight: AtomicBool,
    callout: AtomicU64,
}

/// The last good document of each JWKS URL, in this process: new settings
/// naming the same URL start with its keys (a settings change must not
/// leave callers unverifiable until the first fetch answers).
static LAST_GOOD: Mutex<Vec<(JwksRemote, Arc<Value>)>> = Mutex::new(Vec::new());

fn last_good(remote: &JwksRemote) -> Option<Arc<Value>> {
    let documents = LAST_GOOD.lock().ok()?;
    documents.iter().find(|(r, _)| r == remote).map(|(_, d)| d.clone())
}

fn remember(remote: &JwksRemote, document: Arc<Value>) {
    if let Ok(mut documents) = LAST_GOOD.lock() {
        documents.retain(|(r, _)| r != remote);
        documents.push((remote.clone(), document));
    }
}

impl Jwks {
    /// Starts the loop for `remotes` (issuer, where from); each first fetch
    /// is due at once. Keys this process already fetched from the same URL
    /// serve until it answers.
    pub fn start(config: FilterConfigEnvoy, remotes: Vec<(usize, JwksRemote)>) -> Arc<Self> {
        // SAFETY: called on the main thread while Envoy loads the configuration.
        let scheduler = Arc::new(Scheduler(unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config)
        }));
        let remotes: Vec<RemoteKeys> = remotes
            .into_iter()
            .map(|(issuer, remote)| {
                let seed = last_good(&remote);
                RemoteKeys {
                    issuer,
                    generation: AtomicU64::new(u64::from(seed.is_some())),
                    document: Mutex::new(seed),
                    remote,
                    due_ms: AtomicU64::new(0),
                    in_flight: AtomicBool::new(false),
                    callout: AtomicU64::new(NO_CALLOUT),
                }
            })
            .collect();
        let seeded = remotes.iter().filter(|r| r.generation() > 0).count() as u64;
        let jwks = Arc::new(Self {
            remotes,
            generation: AtomicU64::new(seeded),
            stop: Arc::new(AtomicBool::new(false)),
            scheduler,
            ticker: Mutex::new(None),
        });
        let weak = Arc::downgrade(&jwks);
        let stop = jwks.stop.clone();
        let scheduler = jwks.scheduler.clone();
        let ticker = std::thread::Builder::new().name("mcp-edge-jwks".into()).spawn(move || {
            while !stop.load(Ordering::Acquire) {
                let Some(jwks) = weak.upgrade() else { return };
                let now = now_ms();
                for (slot, remote) in jwks.remotes.iter().enumerate() {
                    let due = now >= remote.due_ms.load(Ordering::Acquire);
                    if due && !remote.in_flight.swap(true, Ordering::AcqRel) {
                        // SAFETY: the scheduler outlives this thread (joined before delete).
                        unsafe {
                            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
                                scheduler.0,
                                slot as u64 + 1,
                            )
                        };
                    }
                }
                drop(jwks);
                std::thread::sleep(TICK);
            }
        });
        match ticker {
            Ok(handle) => *jwks.ticker.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle),
            Err(error) => log(abi::LOG_ERROR, &format!("no JWKS refresh thread: {error}")),
        }
        jwks
    }

    /// The published generation of all issuers together (a worker compares
    /// it with what it loaded before looking at each issuer).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Each issuer's published keys.
    pub fn remotes(&self) -> &[RemoteKeys] {
        &self.remotes
    }

    /// Main thread, on the scheduled event `event` (`slot + 1`): starts that fetch.
    pub fn fetch(&self, config: FilterConfigEnvoy, metrics: &Metrics, event: u64) {
        let Some(keys) = event
            .checked_sub(1)
            .and_then(|slot| self.remotes.get(usize::try_from(slot).ok()?))
        else {
            return;
        };
        let remote = &keys.remote;
        let headers = [
            ModuleHeader::new(":method", "GET"),
            ModuleHeader::new(":path", &remote.path),
            ModuleHeader::new(":authority", &remote.authority),
        ];
        let mut id = 0u64;
        // SAFETY: main thread; headers and names outlive the call.
        let started = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                config,
                &mut id,
                ModuleBuffer::of(remote.cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::NULL,
                remote.timeout_ms,
            )
        };
        if started == abi::CALLOUT_SUCCESS {
            keys.callout.store(id, Ordering::Release);
            return;
        }
        log(
            abi::LOG_WARN,
            &format!(
                "JWKS fetch from cluster {} could not start (result {started})",
                remote.cluster
            ),
        );
        metrics.jwks_refresh(config, "failed");
        keys.retry_in(1);
    }

    /// Main thread, when a fetch answers: publishes good keys, or keeps
    /// the last good ones and retries sooner.
    pub fn arrived(
        &self,
        config: FilterConfigEnvoy,
        metrics: &Metrics,
        callout: u64,
        result: u32,
        headers: &[(&[u8], &[u8])],
        body: &[u8],
    ) {
        let Some(keys) = self
            .remotes
            .iter()
            .find(|keys| keys.in_flight.load(Ordering::Acquire) && keys.callout.load(Ordering::Acquire) == callout)
        else {
            return;
        };
        let outcome = match abi::callout_failure(result, headers) {
            Some(failure) => Err(failure),
            None => serde_json::from_slice::<Value>(body)
                .map_err(|e| format!("not JSON: {e}"))
                .and_then(|jwks| {
                    JwtVerifier::check_keys(&jwks)
                        .map(|count| (count, jwks))
                        .map_err(|e| e.to_string())
                }),
        };
        let remote = &keys.remote;
        match outcome {
            Ok((count, jwks)) => {
                let jwks = Arc::new(jwks);
                remember(remote, jwks.clone());
                if let Ok(mut document) = keys.document.lock() {
                    *document = Some(jwks);
                }
                keys.generation.fetch_add(1, Ordering::AcqRel);
                self.generation.fetch_add(1, Ordering::AcqRel);
                log(
                    abi::LOG_INFO,
                    &format!("loaded {count} signing key(s) from {}{}", remote.authority, remote.path),
                );
                metrics.jwks_refresh(config, "ok");
                keys.retry_in(remote.refresh_seconds);
            }
            Err(error) => {
                log(
                    abi::LOG_WARN,
                    &format!(
                        "JWKS refresh from {}{} failed: {error}; keeping the last good keys",
                        remote.authority, remote.path
                    ),
                );
                metrics.jwks_refresh(config, "failed");
                keys.retry_in(remote.retry_seconds);
            }
        }
    }
}

impl RemoteKeys {
    /// This issuer's published generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn document(&self) -> Option<Arc<Value>> {
        self.document.lock().ok()?.clone()
    }

    fn retry_in(&self, seconds: u64) {
        self.callout.store(NO_CALLOUT, Ordering::Release);
        self.due_ms.store(now_ms() + seconds * 1000, Ordering::Release);
        self.in_flight.store(false, Ordering::Release);
    }
}

impl Jwks {
    /// Main thread, when Envoy drops the configuration: stops the ticker,
    /// then deletes the scheduler.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let ticker = self.ticker.lock().ok().and_then(|mut t| t.take());
        if let Some(ticker) = ticker {
            let _ = ticker.join();
        }
        // SAFETY: no thread commits to it any more.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.scheduler.0) };
    }
}
