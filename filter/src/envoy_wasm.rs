//! The proxy-wasm glue: read headers and body, ask `gate`, and carry out the
//! verdict.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MapType, MetricType, Status};

use crate::assertion;
use crate::config::FilterConfig;
use crate::credentials::CacheUse;
use crate::gate::{self, Admitted, HeadVerdict, HeldRequest, Host, RequestHead};
use crate::global_limit::{self, GlobalRateLimit, GlobalVerdict};
use crate::header_map;
use crate::jwt::Identity;
use crate::limits::{CasMismatch, QuotaUse, SharedStore};
use crate::phases::Phase;
use crate::reply::Reject;
use crate::response_cap::{self, ChunkAction, StreamMeter};
use crate::span_tags;
use crate::stream::{ChargedImages, StreamState};
use crate::worker_state::{Dropped, WorkerState};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(EdgeRoot {
            config: None,
            worker: None,
            metrics: Rc::default(),
            jwks: Vec::new(),
        })
    });
}}

/// The request headers' serialized map (`header_map::pairs` reads it).
fn request_header_bytes() -> Vec<u8> {
    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> Status;
    }
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size = 0usize;
    // SAFETY: the host writes a buffer it allocated through the SDK's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes),
    // which this Vec now owns and frees, as the SDK's own getter does.
    unsafe {
        match proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) {
            Status::Ok if !data.is_null() => Vec::from_raw_parts(data, size, size),
            _ => Vec::new(),
        }
    }
}

/// Shared data of the Envoy process: one store for every worker's VM.
struct HostStore;

/// Serialises the creation of shared-data keys: Envoy writes a key that
/// does not exist yet whatever CAS token is given, so two workers creating
/// one bucket at once would both succeed and one take would be lost. A key
/// is created only while holding this lock (taken and released with CAS on
/// a key that always exists), after checking it is still absent.
const CREATE_LOCK: &str = "mcp_edge.create_lock";

impl HostStore {
    /// Makes the lock key exist (at configure time, before any request).
    fn init_create_lock() {
        if matches!(hostcalls::get_shared_data(CREATE_LOCK), Ok((None, _)) | Err(_)) {
            let _ = hostcalls::set_shared_data(CREATE_LOCK, Some(b"0"), None);
        }
    }

    fn create(key: &str, value: &[u8]) -> Result<(), CasMismatch> {
        let Ok((Some(lock), Some(cas))) = hostcalls::get_shared_data(CREATE_LOCK) else {
            return Err(CasMismatch);
        };
        if lock != b"0" || hostcalls::set_shared_data(CREATE_LOCK, Some(b"1"), Some(cas)).is_err() {
            return Err(CasMismatch);
        }
        let absent = matches!(hostcalls::get_shared_data(key), Ok((None, _)));
        let written = absent && hostcalls::set_shared_data(key, Some(value), None).is_ok();
        let _ = hostcalls::set_shared_data(CREATE_LOCK, Some(b"0"), None);
        if written {
            Ok(())
        } else {
            Err(CasMismatch)
        }
    }
}

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        hostcalls::get_shared_data(key).unwrap_or((None, None))
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        match cas {
            Some(cas) => hostcalls::set_shared_data(key, Some(value), Some(cas)).map_err(|_| CasMismatch),
            None => Self::create(key, value),
        }
    }
}

thread_local! {
    /// What this worker's VM keeps between requests, shared by every root
    /// context (one per settings version): a settings change keeps it.
    static STATE: RefCell<Option<Rc<RefCell<WorkerState>>>> = const { RefCell::new(None) };
    /// The settings this VM applied last: their JWKS keys and hash carry over.
    static APPLIED: RefCell<Option<Rc<FilterConfig>>> = const { RefCell::new(None) };
}

/// This VM's state, fitted to `config` (made for it on first use).
fn state_for(config: &FilterConfig) -> (Rc<RefCell<WorkerState>>, Dropped) {
    STATE.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_ref() {
            Some(state) => {
                let dropped = state.borrow_mut().adopt(config);
                (state.clone(), dropped)
            }
            None => {
                let state = Rc::new(RefCell::new(WorkerState::new(config)));
                *slot = Some(state.clone());
                (state, Dropped::default())
            }
        }
    })
}

/// How often the root's tick adds up the hot counters into Envoy's stats
/// (and checks whether the JWKS is due).
const TICK: Duration = Duration::from_millis(100);

/// Counters every admitted request bumps: counted in the VM and added to
/// Envoy's stats on the next tick (one host call per counter per tick,
/// instead of one per request; they lag by at most `TICK`).
#[derive(Clone, Copy)]
enum Hot {
    Forwarded,
    CacheHit,
    CacheMiss,
}

impl Hot {
    const ALL: [Hot; 3] = [Hot::Forwarded, Hot::CacheHit, Hot::CacheMiss];

    fn name(self) -> &'static str {
        match self {
            Hot::Forwarded => "mcp_edge.requests_total.decision.forward.reason.ok",
            Hot::CacheHit => "mcp_edge.token_cache_lookups_total.result.hit",
            Hot::CacheMiss => "mcp_edge.token_cache_lookups_total.result.miss",
        }
    }
}

/// Counters in Envoy's stats (`/stats/prometheus`), defined on first use.
/// Names carry their labels as `.name.value` pairs, which the Envoy config's
/// `stats_tags` turn into Prometheus labels.
#[derive(Default)]
struct Metrics {
    ids: RefCell<HashMap<String, u32>>,
    /// Hot counts not yet in Envoy's stats.
    pending_forwarded: std::cell::Cell<u64>,
    pending_cache_hits: std::cell::Cell<u64>,
    pending_cache_misses: std::cell::Cell<u64>,
    /// Switched off by the benchmark's breakdown (`phases.rs`).
    off: std::cell::Cell<bool>,
}

impl Metrics {
    fn pending(&self, hot: Hot) -> &std::cell::Cell<u64> {
        match hot {
            Hot::Forwarded => &self.pending_forwarded,
            Hot::CacheHit => &self.pending_cache_hits,
            Hot::CacheMiss => &self.pending_cache_misses,
        }
    }

    fn count(&self, hot: Hot) {
        let cell = self.pending(hot);
        cell.set(cell.get() + 1);
    }

    /// Adds the hot counts to Envoy's stats.
    fn flush(&self) {
        for hot in Hot::ALL {
            let count = self.pending(hot).replace(0);
            if count == 0 || self.off.get() {
                continue;
            }
            if let Some(id) = self.id(MetricType::Counter, hot.name()) {
                let _ = hostcalls::increment_metric(id, count as i64);
            }
        }
    }

    /// The id of metric `name`, defined with `kind` on first use.
    fn id(&self, kind: MetricType, name: &str) -> Option<u32> {
        if let Some(id) = self.ids.borrow().get(name).copied() {
            return Some(id);
        }
        let id = hostcalls::define_metric(kind, name).ok()?;
        self.ids.borrow_mut().insert(name.to_string(), id);
        Some(id)
    }

    fn increment(&self, name: &str) {
        if self.off.get() {
            return;
        }
        if let Some(id) = self.id(MetricType::Counter, name) {
            let _ = hostcalls::increment_metric(id, 1);
        }
    }

    fn set_gauge(&self, name: &str, value: u64) {
        if self.off.get() {
            return;
        }
        if let Some(id) = self.id(MetricType::Gauge, name) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    /// The settings now running (`sha256`, replacing `previous`) and when
    /// they were applied: every replica reports which settings it runs.
    fn settings_applied(&self, sha256: &str, previous: Option<&str>, now_s: u64) {
        if let Some(previous) = previous.filter(|p| *p != sha256) {
            self.set_gauge(&format!("mcp_edge.settings_info.sha256.{previous}"), 0);
        }
        self.set_gauge(&format!("mcp_edge.settings_info.sha256.{sha256}"), 1);
        self.set_gauge("mcp_edge.settings_changed_at_seconds", now_s);
    }

    /// Today's image use and quota of an organisation, as gauges.
    fn quota(&self, org: &str, quota: QuotaUse) {
        self.set_gauge(&format!("mcp_edge.quota_images.kind.used.org.{org}"), quota.used);
        self.set_gauge(&format!("mcp_edge.quota_images.kind.limit.org.{org}"), quota.limit);
    }

    fn rejected(&self, reject: &Reject) {
        self.increment(&format!(
            "mcp_edge.requests_total.decision.reject.reason.{}",
            reject.reason
        ));
        if reject.status == 401 {
            self.increment(&format!("mcp_edge.auth_failures_total.cause.{}", reject.reason));
        }
        if reject.status == 429 {
            self.increment(&format!(
                "mcp_edge.rate_limited_total.reason.{}.org.{}.key.{}",
                reject.reason,
                reject.org.as_deref().unwrap_or("unknown"),
                reject.key.as_deref().unwrap_or("unknown")
            ));
        }
    }

    fn admitted(&self, admitted: &Admitted) {
        match admitted.cache {
            CacheUse::Hit => self.count(Hot::CacheHit),
            CacheUse::Miss => self.count(Hot::CacheMiss),
            CacheUse::NotApplicable => {}
        }
    }
}

/// Per-plugin state: the compiled configuration, the worker's token cache
/// and bucket leases, and a JWKS fetch loop per issuer whose keys come from a URL.
struct EdgeRoot {
    config: Option<Rc<FilterConfig>>,
    worker: Option<Rc<RefCell<WorkerState>>>,
    metrics: Rc<Metrics>,
    /// One per issuer with a `jwks_uri`.
    jwks: Vec<JwksFetch>,
}

/// The fetch loop of one issuer's JWKS.
struct JwksFetch {
    /// The issuer's place in the settings.
    issuer: usize,
    /// Token of the fetch under way.
    call: Option<u32>,
    /// When the next fetch is due (Unix ms; 0: on the first tick).
    due_ms: u64,
}

impl EdgeRoot {
    /// Starts the fetch of `self.jwks[slot]`.
    fn fetch_jwks(&mut self, slot: usize) {
        let Some(config) = self.config.clone() else { return };
        let Some(issuer) = self.jwks.get(slot).map(|fetch| fetch.issuer) else {
            return;
        };
        let Some((_, remote)) = config.jwt.remotes().find(|(index, _)| *index == issuer) else {
            return;
        };
        let headers = vec![
            (":method", "GET"),
            (":path", remote.path.as_str()),
            (":authority", remote.authority.as_str()),
        ];
        match self.dispatch_http_call(
            &remote.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(remote.timeout_ms),
        ) {
            Ok(token) => {
                if let Some(fetch) = self.jwks.get_mut(slot) {
                    fetch.call = Some(token);
                }
            }
            Err(status) => {
                log::warn!(
                    "JWKS fetch for issuer {} from cluster {} could not start: {status:?}",
                    config.jwt.issuer_name(issuer),
                    remote.cluster
                );
                self.metrics.increment("mcp_edge.jwks_refreshes_total.result.failed");
                let due_ms = unix_ms(self.get_current_time()) + 1000;
                if let Some(fetch) = self.jwks.get_mut(slot) {
                    fetch.due_ms = due_ms;
                }
            }
        }
    }

    fn jwks_arrived(&mut self, issuer: usize, body_size: usize) -> Result<usize, String> {
        let config = self.config.clone().ok_or("no configuration")?;
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if status != "200" {
            return Err(format!("HTTP status {status:?}"));
        }
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let jwks: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("not JSON: {e}"))?;
        let keys = config.jwt.replace_keys(issuer, &jwks).map_err(|e| e.to_string())?;
        if let Some(worker) = &self.worker {
            worker.borrow_mut().keys_changed(&keys);
        }
        Ok(keys.len())
    }
}

impl Context for EdgeRoot {
    fn on_http_call_response(&mut self, token_id: u32, _num_headers: usize, body_size: usize, _num_trailers: usize) {
        let Some(slot) = self.jwks.iter().position(|fetch| fetch.call == Some(token_id)) else {
            return;
        };
        let Some(config) = self.config.clone() else { return };
        let Some(issuer) = self.jwks.get_mut(slot).map(|fetch| {
            fetch.call = None;
            fetch.issuer
        }) else {
            return;
        };
        let Some((_, remote)) = config.jwt.remotes().find(|(index, _)| *index == issuer) else {
            return;
        };
        let name = config.jwt.issuer_name(issuer);
        let wait_s = match self.jwks_arrived(issuer, body_size) {
            Ok(count) => {
                log::info!(
                    "loaded {count} signing key(s) of issuer {name} from {}{}",
                    remote.authority,
                    remote.path
                );
                self.metrics.increment("mcp_edge.jwks_refreshes_total.result.ok");
                remote.refresh_seconds
            }
            Err(error) => {
                // Keep the last good keys; retry sooner than the refresh period.
                log::warn!(
                    "JWKS refresh of issuer {name} from {}{} failed: {error}; keeping the last good keys",
                    remote.authority,
                    remote.path
                );
                self.metrics.increment("mcp_edge.jwks_refreshes_total.result.failed");
                remote.retry_seconds
            }
        };
        let due_ms = unix_ms(self.get_current_time()) + wait_s * 1000;
        if let Some(fetch) = self.jwks.get_mut(slot) {
            fetch.due_ms = due_ms;
        }
    }
}

impl RootContext for EdgeRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        HostStore::init_create_lock();
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match FilterConfig::from_json(&bytes) {
            Ok(config) => {
                let previous = APPLIED.with(|applied| applied.borrow().clone());
                let adopted = previous
                    .as_ref()
                    .map(|previous| config.jwt.adopt_keys(&previous.jwt))
                    .unwrap_or_default();
                let now_ms = unix_ms(self.get_current_time());
                self.jwks = config
                    .jwt
                    .remotes()
                    .map(|(issuer, remote)| JwksFetch {
                        issuer,
                        call: None,
                        // Adopted keys are current: the next fetch is a refresh.
                        due_ms: if adopted.contains(&issuer) {
                            now_ms + remote.refresh_seconds * 1000
                        } else {
                            0
                        },
                    })
                    .collect();
                let (worker, dropped) = state_for(&config);
                self.worker = Some(worker);
                self.metrics.off.set(config.skip.skips(Phase::Metrics));
                self.metrics.settings_applied(
                    &config.identity.sha256,
                    previous.as_ref().map(|p| p.identity.sha256.as_str()),
                    unix_ms(self.get_current_time()) / 1000,
                );
                if previous.is_some() {
                    log::info!(
                        "settings applied: sha256 {}; dropped {dropped:?}",
                        config.identity.sha256
                    );
                }
                let config = Rc::new(config);
                APPLIED.with(|applied| *applied.borrow_mut() = Some(config.clone()));
                self.config = Some(config);
                // Flushes the hot counters; a JWKS URL's first fetch runs on
                // the first tick, once the cluster is up.
                self.set_tick_period(TICK);
                true
            }
            Err(error) => {
                // Returning false makes Envoy refuse this filter configuration.
                log::error!("configuration refused: {error}");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        self.metrics.flush();
        let now_ms = unix_ms(self.get_current_time());
        for slot in 0..self.jwks.len() {
            let due = self
                .jwks
                .get(slot)
                .is_some_and(|fetch| fetch.call.is_none() && now_ms >= fetch.due_ms);
            if due {
                self.fetch_jwks(slot);
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(EdgeRequest {
            config,
            worker: self.worker.clone()?,
            started_ms: 0,
            metrics: self.metrics.clone(),
            state: StreamState::Headers,
            reply_id: serde_json::Value::Null,
            meter: StreamMeter::default(),
            caller: None,
            held_bytes: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Per-request state.
struct EdgeRequest {
    config: Rc<FilterConfig>,
    worker: Rc<RefCell<WorkerState>>,
    /// When the request's headers arrived (Unix ms): the one clock read of a request.
    started_ms: u64,
    metrics: Rc<Metrics>,
    state: StreamState,
    /// The JSON-RPC id of the request, for errors sent in its place.
    reply_id: serde_json::Value,
    meter: StreamMeter,
    /// The admitted caller and the request's id, until the request is
    /// forwarded: the identity assertion is added only then.
    caller: Option<(Rc<Identity>, String)>,
    /// The request body Envoy holds for the filter so far, in bytes.
    held_bytes: usize,
}

/// The clock in nanoseconds: the assertion ids' seed when WASI has no randomness.
fn clock_nanos() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(1, |d| d.as_nanos() as u64)
}

fn unix_ms(time: std::time::SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

impl EdgeRequest {
    /// Runs a gate decision with this worker's state, the shared store and
    /// the request's clock reading.
    fn with_host<T>(&self, decide: impl FnOnce(&FilterConfig, &mut Host<'_>) -> T) -> T {
        let worker = &mut *self.worker.borrow_mut();
        let mut host = Host {
            cache: &mut worker.cache,
            leases: &mut worker.leases,
            store: &HostStore,
            now_ms: self.started_ms,
        };
        decide(&self.config, &mut host)
    }

    /// Puts `tags` on Envoy's span (filter state the tracer's `custom_tags` read).
    fn tag(&self, tags: impl FnOnce() -> Vec<span_tags::Tag>) {
        if self.config.tracing.is_none() {
            return;
        }
        for (name, value) in tags() {
            // The host call, not the SDK's method, which panics on failure.
            let _ = hostcalls::set_property(vec![&format!("mcp_edge.{name}")], Some(value.as_bytes()));
        }
    }

    /// Lets the request through, counted, with the caller's identity
    /// assertion (added only now: after every check, body included, passed).
    fn pass(&mut self) -> Action {
        self.assert_identity();
        self.tag(span_tags::forwarded);
        self.metrics.count(Hot::Forwarded);
        self.state = StreamState::Forwarded;
        Action::Continue
    }

    fn reject(&mut self, reject: &Reject) -> Action {
        log::info!("rejected {} ({}): {}", reject.status, reject.reason, reject.message);
        self.metrics.rejected(reject);
        self.tag(|| span_tags::refused(reject));
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(reject.headers.iter().map(|(n, v)| (*n, v.as_str())));
        self.send_http_response(reject.status, headers, Some(reject.body().as_bytes()));
        self.state = StreamState::Replied;
        Action::Pause
    }

    /// Removes credentials and client-supplied identity headers (those in
    /// `present`) and keeps the caller for the assertion `pass` adds.
    fn admit(&mut self, admitted: &Admitted, present: &[&str], request_id: &str) {
        self.metrics.admitted(admitted);
        if let Some(tracing) = &self.config.tracing {
            self.tag(|| span_tags::caller(tracing, &admitted.identity));
        }
        if !self.config.skip.skips(Phase::IdentityHeaderWrites) {
            // The client's credentials are for this gateway only; never pass them on.
            for name in present {
                self.remove_http_request_header(name);
            }
        }
        self.caller = Some((admitted.identity.clone(), request_id.to_string()));
    }

    /// Adds the signed identity assertion of the admitted caller.
    fn assert_identity(&mut self) {
        let Some((identity, request_id)) = self.caller.take() else {
            return;
        };
        let Some(signer) = &self.config.assertion else { return };
        let write = !self.config.skip.skips(Phase::IdentityHeaderWrites);
        let config = &self.config;
        let worker = &mut *self.worker.borrow_mut();
        let jti = worker.assertion_ids.next(|| assertion::random_seed(clock_nanos));
        let assertion = signer.sign(
            &mut worker.assertions,
            &identity,
            || gate::tool_rights(config, &identity),
            &request_id,
            &jti,
            self.started_ms,
        );
        if let Some(assertion) = assertion.filter(|_| write) {
            // Any client-supplied copy was removed on admission: add, not replace.
            self.add_http_request_header(assertion::HEADER, &assertion);
        }
    }
}

impl EdgeRequest {
    /// Decides on a held request whose whole body has arrived (its last
    /// chunk, or its trailers): answers a deferred refusal with the request's
    /// id, or checks the body and forwards, asks the global limit or refuses.
    fn body_complete(&mut self) -> Action {
        let state = std::mem::replace(&mut self.state, StreamState::Forwarded);
        let body = self.get_http_request_body(0, self.held_bytes).unwrap_or_default();
        self.tag(|| span_tags::message(&body));
        let held = match state {
            StreamState::HoldingForBody(held) => held,
            StreamState::RejectingAfterBody(reject) => {
                let id = gate::reply_id_of(&self.config, &body);
                return self.reject(&reject.with_id(id));
            }
            other => {
                self.state = other;
                return Action::Continue;
            }
        };
        let verdict = self.with_host(|config, host| gate::check_body(config, &body, &held, host));
        let checked = match verdict {
            Ok(checked) => checked,
            Err(reject) => return self.reject(&reject),
        };
        self.reply_id = checked.reply_id;
        if let Some(quota) = checked.quota {
            self.metrics.quota(&held.identity.org, quota);
        }
        let images = checked.call.as_ref().map_or(0, |call| call.images);
        let config = self.config.clone();
        match (&config.global_rate_limit, images > 0) {
            (Some(global), true) => self.ask_global_limit(global, &held, images),
            _ => self.pass(),
        }
    }

    /// Asks the global rate-limit service and holds the request until it answers.
    fn ask_global_limit(&mut self, global: &GlobalRateLimit, held: &HeldRequest, images: u64) -> Action {
        let message = global.request(&held.identity, images);
        let call = self.dispatch_grpc_call(
            &global.cluster,
            global_limit::SERVICE,
            global_limit::METHOD,
            Vec::new(),
            Some(&message),
            global.timeout,
        );
        // The head's clock read serves the body too (the quota's day is the request's start).
        let charged = ChargedImages {
            org: held.identity.org.clone(),
            images,
            charged_at_ms: self.started_ms,
        };
        match call {
            Ok(_) => {
                self.state = StreamState::AwaitingGlobalLimit(charged);
                Action::Pause
            }
            Err(status) => {
                let verdict = global.failed(
                    format!("cannot call cluster {}: {status:?}", global.cluster),
                    &charged.org,
                );
                self.apply_global_verdict(verdict, &charged)
            }
        }
    }

    /// Carries out the global limit's verdict on a held call; returns what
    /// the body callback should (when called from it) return.
    fn apply_global_verdict(&mut self, verdict: GlobalVerdict, charged: &ChargedImages) -> Action {
        match verdict {
            GlobalVerdict::Allow => {
                self.metrics.increment("mcp_edge.global_limit_checks_total.result.ok");
            }
            GlobalVerdict::AllowUnchecked(why) => {
                log::warn!("global rate limit not checked ({why}); failing open on the local limits");
                self.metrics
                    .increment("mcp_edge.global_limit_checks_total.result.failed_open");
            }
            GlobalVerdict::Refuse(reject) => {
                let result = if reject.status == 429 {
                    "over_limit"
                } else {
                    "failed_closed"
                };
                self.metrics
                    .increment(&format!("mcp_edge.global_limit_checks_total.result.{result}"));
                self.config
                    .rate_limits
                    .refund_images(&HostStore, &charged.org, charged.images, charged.charged_at_ms);
                let reject = reject.with_id(self.reply_id.clone());
                return self.reject(&reject);
            }
        }
        self.pass()
    }
}

impl Context for EdgeRequest {
    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        let StreamState::AwaitingGlobalLimit(charged) = std::mem::replace(&mut self.state, StreamState::Forwarded)
        else {
            return;
        };
        let config = self.config.clone();
        let Some(global) = config.global_rate_limit.as_ref() else {
            return;
        };
        let body = if status_code == 0 {
            self.get_grpc_call_response_body(0, response_size)
        } else {
            None
        };
        let verdict = global.decide(status_code, body.as_deref(), &charged.org);
        if let Action::Continue = self.apply_global_verdict(verdict, &charged) {
            self.resume_http_request();
        }
    }
}

impl HttpContext for EdgeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        // One host call for the whole map, read in place.
        let bytes = request_header_bytes();
        let headers = header_map::pairs(&bytes).unwrap_or_default();
        if self.config.skip.skips(Phase::AfterHeaderRead) {
            return Action::Continue;
        }
        let h = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v);
        let head = RequestHead::from_headers(h, end_of_stream);
        let present = gate::headers_to_remove(|name| h(name).is_some());
        self.started_ms = unix_ms(self.get_current_time());
        let verdict = self.with_host(|config, host| gate::check_head(config, &head, host));
        match verdict {
            HeadVerdict::Reject(reject) => self.reject(&reject),
            HeadVerdict::RejectAfterBody(reject) => {
                self.state = StreamState::RejectingAfterBody(Box::new(reject));
                Action::Pause
            }
            HeadVerdict::Serve(document) => {
                self.send_http_response(
                    200,
                    vec![("content-type", "application/json"), ("cache-control", "max-age=3600")],
                    Some(document.as_bytes()),
                );
                self.state = StreamState::Replied;
                Action::Pause
            }
            HeadVerdict::Forward(admitted) => {
                self.admit(&admitted, &present, h("x-request-id").unwrap_or_default());
                self.pass()
            }
            HeadVerdict::InspectBody(admitted, held) => {
                self.admit(&admitted, &present, h("x-request-id").unwrap_or_default());
                self.state = StreamState::HoldingForBody(Box::new(held));
                Action::Pause
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let held = match self.state {
            StreamState::Replied | StreamState::AwaitingGlobalLimit(_) => return Action::Pause,
            StreamState::HoldingForBody(_) | StreamState::RejectingAfterBody(_) => true,
            StreamState::Headers | StreamState::Forwarded => false,
        };
        if let Err(reject) = gate::check_body_size(&self.config, body_size) {
            // Too large to read: a deferred refusal is answered with a null id.
            return match std::mem::replace(&mut self.state, StreamState::Replied) {
                StreamState::RejectingAfterBody(deferred) => self.reject(&deferred),
                _ => self.reject(&reject),
            };
        }
        if !held {
            return Action::Continue;
        }
        self.held_bytes = body_size;
        if !end_of_stream {
            return Action::Pause;
        }
        self.body_complete()
    }

    /// The body ends with trailers (HTTP/2, HTTP/1.1 chunked): the end of
    /// the stream is here, and the body is checked here as it would be on
    /// its last chunk. Nothing held goes on unchecked.
    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        match self.state {
            StreamState::HoldingForBody(_) | StreamState::RejectingAfterBody(_) => self.body_complete(),
            StreamState::Replied | StreamState::AwaitingGlobalLimit(_) => Action::Pause,
            StreamState::Headers | StreamState::Forwarded => Action::Continue,
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if matches!(self.state, StreamState::Replied) || self.config.skip.skips(Phase::Response) {
            return Action::Continue;
        }
        let length = self.get_http_response_header("content-length");
        match response_cap::check_declared_length(self.config.max_response_bytes, length.as_deref(), &self.reply_id) {
            Ok(()) => Action::Continue,
            Err(reject) => self.reject(&reject),
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        if matches!(self.state, StreamState::Replied) || self.config.skip.skips(Phase::Response) {
            return Action::Continue;
        }
        match self
            .meter
            .on_chunk(self.config.max_response_bytes, body_size, &self.reply_id)
        {
            ChunkAction::Pass => {}
            ChunkAction::CutOff(event) => {
                log::warn!(
                    "response cut off at the {} byte output limit",
                    self.config.max_response_bytes
                );
                self.metrics
                    .increment("mcp_edge.requests_total.decision.reject.reason.response_too_large");
                self.set_http_response_body(0, body_size, event.as_bytes());
            }
            ChunkAction::Drop => self.set_http_response_body(0, body_size, b""),
        }
        Action::Continue
    }
}
