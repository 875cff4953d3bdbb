//! The Envoy dynamic-module glue (`envoy.filters.http.dynamic_modules`): the
//! same `gate` decisions as the Wasm glue, built as a native shared object
//! (`make native-module`), for Envoy deployments that can load one.
//!
//! It takes the same configuration and carries out every verdict the Wasm
//! glue does: credentials (keys inline or from a JWKS URL, `jwks.rs`),
//! buckets and quotas (in a process-wide store, `store.rs`), the global
//! rate-limit service (gRPC over an HTTP callout), JSON-RPC and MCP rules,
//! the signed identity assertion, the output cap, and the same metrics
//! (`metrics.rs`).

mod abi;
mod jwks;
mod metrics;
mod store;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use abi::{EnvoyBuffer, EnvoyHeader, FilterConfigEnvoy, FilterEnvoy, ModuleBuffer, ModuleHeader, ModulePtr};
use jwks::Jwks;
use metrics::Metrics;

use crate::assertion;
use crate::config::FilterConfig;
use crate::gate::{self, Admitted, HeadVerdict, Host, RequestHead};
use crate::global_limit::{self, GlobalRateLimit, GlobalVerdict};
use crate::header_map;
use crate::jwt::Identity;
use crate::reply::Reject;
use crate::response_cap::{self, ChunkAction, StreamMeter};
use crate::span_tags;
use crate::stream::{ChargedImages, StreamState};
use crate::worker_state::WorkerState;
use store::ProcessStore;

fn log(level: u32, message: &str) {
    // SAFETY: Envoy copies the message during the call.
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn clock_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// One filter configuration, as Envoy holds it (shared by every worker
/// thread). The compiled `FilterConfig` is single-threaded, so each worker
/// compiles its own from `json`, as each Wasm VM does.
struct ModuleConfig {
    id: u64,
    json: Vec<u8>,
    metrics: Metrics,
    /// Keys fetched from JWKS URLs, when the configuration's issuers name any.
    jwks: Option<Arc<Jwks>>,
    /// Cleared when Envoy drops the configuration: workers drop their copy.
    alive: Arc<AtomicBool>,
}

/// One worker thread's compiled copy of one configuration. What the thread
/// keeps between requests (tokens, leases, prefixes) is its `STATE`, shared
/// by every configuration, so a settings change keeps it.
struct Worker {
    config: FilterConfig,
    /// The JWKS generation loaded into `config`'s verifier: all issuers
    /// together, then each issuer's (by its slot in `Jwks::remotes`).
    keys_generation: Cell<u64>,
    issuer_generations: RefCell<Vec<u64>>,
    /// The configuration's `alive` flag.
    alive: Arc<AtomicBool>,
}

impl Worker {
    /// Loads keys published since this worker's last request.
    fn refresh_keys(&self, jwks: &Jwks) {
        let generation = jwks.generation();
        if generation == self.keys_generation.get() {
            return;
        }
        self.keys_generation.set(generation);
        let mut seen = self.issuer_generations.borrow_mut();
        seen.resize(jwks.remotes().len(), 0);
        for (remote, seen) in jwks.remotes().iter().zip(seen.iter_mut()) {
            let generation = remote.generation();
            if generation == *seen {
                continue;
            }
            *seen = generation;
            if let Some(document) = remote.document() {
                if let Ok(keys) = self.config.jwt.replace_keys(remote.issuer, &document) {
                    with_state(&self.config, |state| state.keys_changed(&keys));
                }
            }
        }
    }
}

thread_local! {
    static WORKERS: RefCell<HashMap<u64, Rc<Worker>>> = RefCell::new(HashMap::new());
    /// This thread's state, whichever configuration runs.
    static STATE: RefCell<Option<WorkerState>> = const { RefCell::new(None) };
}

/// Runs `f` on this thread's state (made for `config` on first use).
fn with_state<T>(config: &FilterConfig, f: impl FnOnce(&mut WorkerState) -> T) -> T {
    STATE.with(|state| f(state.borrow_mut().get_or_insert_with(|| WorkerState::new(config))))
}

/// This thread's worker for `config`, compiled on its first request (when
/// copies of configurations Envoy has dropped are dropped too).
fn worker_for(config: &ModuleConfig) -> Option<Rc<Worker>> {
    WORKERS.with(|workers| {
        if let Some(worker) = workers.borrow().get(&config.id) {
            return Some(worker.clone());
        }
        workers
            .borrow_mut()
            .retain(|_, worker| worker.alive.load(Ordering::Acquire));
        let compiled = FilterConfig::from_json(&config.json).ok()?;
        // New settings on this thread: keep what they leave valid.
        with_state(&compiled, |state| state.adopt(&compiled));
        let worker = Rc::new(Worker {
            keys_generation: Cell::new(0),
            issuer_generations: RefCell::new(Vec::new()),
            alive: config.alive.clone(),
            config: compiled,
        });
        workers.borrow_mut().insert(config.id, worker.clone());
        Some(worker)
    })
}

/// Checks a configuration and defines its metrics; `None` refuses it.
fn new_config(envoy: FilterConfigEnvoy, json: &[u8]) -> Option<ModuleConfig> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let config = match FilterConfig::from_json(json) {
        Ok(config) => config,
        Err(error) => {
            log(abi::LOG_ERROR, &format!("configuration refused: {error}"));
            return None;
        }
    };
    let Some(metrics) = Metrics::define(envoy) else {
        log(
            abi::LOG_ERROR,
            "configuration refused: Envoy did not define the filter's metrics",
        );
        return None;
    };
    // Which settings this Envoy runs, for the replicas-agree panel and alert.
    static RUNNING: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    let sha256 = config.identity.sha256.clone();
    if let Ok(mut running) = RUNNING.lock() {
        metrics.settings_applied(envoy, &sha256, running.as_deref(), now_ms() / 1000);
        *running = Some(sha256.clone());
    }
    log(abi::LOG_INFO, &format!("settings applied: sha256 {sha256}"));
    Some(ModuleConfig {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        json: json.to_vec(),
        metrics,
        jwks: {
            let remotes: Vec<_> = config
                .jwt
                .remotes()
                .map(|(issuer, remote)| (issuer, remote.clone()))
                .collect();
            (!remotes.is_empty()).then(|| Jwks::start(envoy, remotes))
        },
        alive: Arc::new(AtomicBool::new(true)),
    })
}

/// One HTTP stream.
struct Request {
    config: *const ModuleConfig,
    worker: Rc<Worker>,
    envoy: FilterEnvoy,
    started_ms: u64,
    state: StreamState,
    reply_id: serde_json::Value,
    meter: StreamMeter,
    /// The admitted caller and the request's id, until the request is
    /// forwarded: the identity assertion is added only then.
    caller: Option<(Rc<Identity>, String)>,
}

impl Request {
    fn config(&self) -> &FilterConfig {
        &self.worker.config
    }

    fn metrics(&self) -> &Metrics {
        // SAFETY: Envoy destroys a configuration only after its streams.
        unsafe { &(*self.config).metrics }
    }

    fn with_host<T>(&self, decide: impl FnOnce(&FilterConfig, &mut Host<'_>) -> T) -> T {
        let config = &self.worker.config;
        with_state(config, |state| {
            let mut host = Host {
                cache: &mut state.cache,
                leases: &mut state.leases,
                store: &ProcessStore,
                now_ms: self.started_ms,
            };
            decide(config, &mut host)
        })
    }

    /// Puts `tags` on Envoy's span (filter state the tracer's `custom_tags` read).
    fn tag(&self, tags: impl FnOnce() -> Vec<span_tags::Tag>) {
        if self.config().tracing.is_none() {
            return;
        }
        for (name, value) in tags() {
            let key = format!("mcp_edge.{name}");
            // SAFETY: key and value outlive the call; Envoy copies them.
            unsafe {
                abi::envoy_dynamic_module_callback_http_set_filter_state_bytes(
                    self.envoy,
                    ModuleBuffer::of(key.as_bytes()),
                    ModuleBuffer::of(value.as_bytes()),
                );
            }
        }
    }

    /// Lets the request through, counted, with the caller's identity
    /// assertion (added only now: after every check, body included, passed).
    fn pass(&mut self) {
        self.assert_identity();
        self.tag(span_tags::forwarded);
        self.metrics().forwarded(self.envoy);
        self.state = StreamState::Forwarded;
    }

    fn reject(&mut self, reject: &Reject) {
        self.tag(|| span_tags::refused(reject));
        log(
            abi::LOG_INFO,
            &format!("rejected {} ({}): {}", reject.status, reject.reason, reject.message),
        );
        self.metrics().rejected(self.envoy, reject);
        let mut headers = vec![ModuleHeader::new("content-type", "application/json")];
        headers.extend(
            reject
                .headers
                .iter()
                .map(|(name, value)| ModuleHeader::new(name, value)),
        );
        self.send_response(reject.status, &headers, &reject.body(), reject.reason);
    }

    fn serve(&mut self, document: &str) {
        let headers = [
            ModuleHeader::new("content-type", "application/json"),
            ModuleHeader::new("cache-control", "max-age=3600"),
        ];
        self.send_response(200, &headers, document, "");
    }

    /// Answers locally; the request goes no further.
    fn send_response(&mut self, status: u32, headers: &[ModuleHeader], body: &str, details: &str) {
        // SAFETY: headers, body and details outlive the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                status,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(details.as_bytes()),
            );
        }
        self.state = StreamState::Replied;
    }

    /// Removes credentials and client-supplied identity headers (those in
    /// `present`) and keeps the caller for the assertion `pass` adds.
    fn admit(&mut self, admitted: &Admitted, present: &[&str], request_id: &str) {
        self.metrics().cache(self.envoy, admitted.cache);
        if let Some(tracing) = &self.worker.config.tracing {
            self.tag(|| span_tags::caller(tracing, &admitted.identity));
        }
        for name in present {
            remove_request_header(self.envoy, name);
        }
        self.caller = Some((admitted.identity.clone(), request_id.to_string()));
    }

    /// Adds the signed identity assertion of the admitted caller.
    fn assert_identity(&mut self) {
        let Some((identity, request_id)) = self.caller.take() else {
            return;
        };
        let config = &self.worker.config;
        let Some(signer) = &config.assertion else { return };
        let token = with_state(config, |state| {
            let jti = state.assertion_ids.next(|| assertion::random_seed(clock_nanos));
            let rights = || gate::tool_rights(config, &identity);
            signer.sign(
                &mut state.assertions,
                &identity,
                rights,
                &request_id,
                &jti,
                self.started_ms,
            )
        });
        if let Some(token) = token {
            // Any client-supplied copy was removed on admission: add, not replace.
            // SAFETY: key and value outlive the call.
            unsafe {
                abi::envoy_dynamic_module_callback_http_add_header(
                    self.envoy,
                    abi::REQUEST_HEADERS,
                    ModuleBuffer::of(assertion::HEADER.as_bytes()),
                    ModuleBuffer::of(token.as_bytes()),
                );
            }
        }
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> u32 {
        // SAFETY: Envoy destroys a configuration only after its streams.
        if let Some(jwks) = unsafe { &(*self.config).jwks } {
            self.worker.refresh_keys(jwks);
        }
        let headers = request_headers(self.envoy);
        let h = |name: &str| abi::find_header(&headers, name).map(header_map::text);
        let head = RequestHead::from_headers(h, end_of_stream);
        // Removed whether or not their values read as text.
        let present = gate::headers_to_remove(|name| abi::find_header(&headers, name).is_some());
        self.started_ms = now_ms();
        let request_id = h("x-request-id").unwrap_or_default();
        match self.with_host(|config, host| gate::check_head(config, &head, host)) {
            HeadVerdict::Reject(reject) => self.reject(&reject),
            HeadVerdict::RejectAfterBody(reject) => self.state = StreamState::RejectingAfterBody(Box::new(reject)),
            HeadVerdict::Serve(document) => self.serve(&document),
            HeadVerdict::Forward(admitted) => {
                self.admit(&admitted, &present, request_id);
                self.pass();
                return abi::CONTINUE;
            }
            HeadVerdict::InspectBody(admitted, held) => {
                self.admit(&admitted, &present, request_id);
                self.state = StreamState::HoldingForBody(Box::new(held));
            }
        }
        abi::HEADERS_STOP_ITERATION
    }

    fn on_request_body(&mut self, end_of_stream: bool) -> u32 {
        let size =
            body_size(self.envoy, abi::BUFFERED_REQUEST_BODY) + body_size(self.envoy, abi::RECEIVED_REQUEST_BODY);
        let held = match self.state {
            StreamState::Replied | StreamState::AwaitingGlobalLimit(_) => return abi::BODY_STOP_AND_BUFFER,
            StreamState::HoldingForBody(_) | StreamState::RejectingAfterBody(_) => true,
            StreamState::Forwarded | StreamState::Headers => false,
        };
        if let Err(reject) = gate::check_body_size(self.config(), size) {
            // Too large to read: a deferred refusal is answered with a null id.
            match std::mem::replace(&mut self.state, StreamState::Replied) {
                StreamState::RejectingAfterBody(deferred) => self.reject(&deferred),
                _ => self.reject(&reject),
            }
            return abi::BODY_STOP_AND_BUFFER;
        }
        if !held {
            return abi::CONTINUE;
        }
        if !end_of_stream {
            return abi::BODY_STOP_AND_BUFFER;
        }
        let body = request_body(self.envoy, &[abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY]);
        if self.body_complete(&body) {
            abi::CONTINUE
        } else {
            abi::BODY_STOP_AND_BUFFER
        }
    }

    /// The body ends with trailers (HTTP/2, HTTP/1.1 chunked): the end of
    /// the stream is here, and the body is checked here as it would be on
    /// its last chunk. Nothing held goes on unchecked.
    fn on_request_trailers(&mut self) -> u32 {
        match self.state {
            StreamState::HoldingForBody(_) | StreamState::RejectingAfterBody(_) => {
                // Every chunk is in Envoy's buffer by now.
                let body = request_body(self.envoy, &[abi::BUFFERED_REQUEST_BODY]);
                if self.body_complete(&body) {
                    abi::CONTINUE
                } else {
                    abi::TRAILERS_STOP_ITERATION
                }
            }
            StreamState::Replied | StreamState::AwaitingGlobalLimit(_) => abi::TRAILERS_STOP_ITERATION,
            StreamState::Headers | StreamState::Forwarded => abi::CONTINUE,
        }
    }

    /// Decides on a held request whose whole `body` has arrived: answers a
    /// deferred refusal with the request's id, or checks the body and
    /// forwards, asks the global limit or refuses. True when it goes on now.
    fn body_complete(&mut self, body: &[u8]) -> bool {
        self.tag(|| span_tags::message(body));
        let held = match std::mem::replace(&mut self.state, StreamState::Forwarded) {
            StreamState::HoldingForBody(held) => held,
            StreamState::RejectingAfterBody(reject) => {
                let id = gate::reply_id_of(self.config(), body);
                self.reject(&reject.with_id(id));
                return false;
            }
            other => {
                self.state = other;
                return true;
            }
        };
        let checked = match self.with_host(|config, host| gate::check_body(config, body, &held, host)) {
            Ok(checked) => checked,
            Err(reject) => {
                self.reject(&reject);
                return false;
            }
        };
        self.reply_id = checked.reply_id;
        if let Some(quota) = checked.quota {
            self.metrics().quota(self.envoy, &held.identity.org, quota);
        }
        let images = checked.call.as_ref().map_or(0, |call| call.images);
        let worker = self.worker.clone();
        if let (Some(global), true) = (&worker.config.global_rate_limit, images > 0) {
            return self.ask_global_limit(global, &held.identity, images);
        }
        self.pass();
        true
    }

    /// Asks the global rate-limit service (gRPC over an HTTP callout) and
    /// holds the request until it answers.
    /// True when the request goes on now (the service could not be asked
    /// and the limit fails open).
    fn ask_global_limit(&mut self, global: &GlobalRateLimit, identity: &Identity, images: u64) -> bool {
        let charged = ChargedImages {
            org: identity.org.clone(),
            images,
            charged_at_ms: self.started_ms,
        };
        let message = global.request(identity, images);
        // A gRPC frame: uncompressed, the length, the message.
        let mut frame = Vec::with_capacity(message.len() + 5);
        frame.push(0);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        let path = format!("/{}/{}", global_limit::SERVICE, global_limit::METHOD);
        let headers = [
            ModuleHeader::new(":method", "POST"),
            ModuleHeader::new(":path", &path),
            ModuleHeader::new(":authority", &global.cluster),
            ModuleHeader::new("content-type", "application/grpc"),
            ModuleHeader::new("te", "trailers"),
        ];
        let mut id = 0u64;
        // SAFETY: headers, cluster and frame outlive the call.
        let started = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_http_callout(
                self.envoy,
                &mut id,
                ModuleBuffer::of(global.cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(&frame),
                global.timeout.as_millis() as u64,
            )
        };
        if started == abi::CALLOUT_SUCCESS {
            self.state = StreamState::AwaitingGlobalLimit(charged);
            return false;
        }
        let verdict = global.failed(
            format!("cannot call cluster {} (result {started})", global.cluster),
            &charged.org,
        );
        self.apply_global_verdict(verdict, &charged)
    }

    /// The global limit's answer: a gRPC status (from a trailers-only
    /// answer's headers, else 0 for HTTP 200) and the message after its frame.
    fn global_limit_answered(&mut self, result: u32, headers: &[(&[u8], &[u8])], body: &[u8]) {
        let StreamState::AwaitingGlobalLimit(charged) = std::mem::replace(&mut self.state, StreamState::Forwarded)
        else {
            return;
        };
        let worker = self.worker.clone();
        let Some(global) = &worker.config.global_rate_limit else {
            return;
        };
        let verdict = if let Some(failure) = abi::callout_failure(result, headers) {
            global.failed(failure, &charged.org)
        } else {
            // 14 (unavailable) when a 200 answer carries neither a status nor a message.
            let status = match abi::find_header(headers, "grpc-status") {
                Some(value) => std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(2),
                None if body.len() >= 5 => 0,
                None => 14,
            };
            global.decide(status, body.get(5..), &charged.org)
        };
        if self.apply_global_verdict(verdict, &charged) {
            // SAFETY: the stream is alive while its callout answers.
            unsafe { abi::envoy_dynamic_module_callback_http_filter_continue_decoding(self.envoy) };
        }
    }

    /// Carries out the global limit's verdict; true when the request goes on.
    fn apply_global_verdict(&mut self, verdict: GlobalVerdict, charged: &ChargedImages) -> bool {
        match verdict {
            GlobalVerdict::Allow => self.metrics().global_check(self.envoy, "ok"),
            GlobalVerdict::AllowUnchecked(why) => {
                log(
                    abi::LOG_WARN,
                    &format!("global rate limit not checked ({why}); failing open on the local limits"),
                );
                self.metrics().global_check(self.envoy, "failed_open");
            }
            GlobalVerdict::Refuse(reject) => {
                let result = if reject.status == 429 {
                    "over_limit"
                } else {
                    "failed_closed"
                };
                self.metrics().global_check(self.envoy, result);
                self.config().rate_limits.refund_images(
                    &ProcessStore,
                    &charged.org,
                    charged.images,
                    charged.charged_at_ms,
                );
                let reject = reject.with_id(self.reply_id.clone());
                self.reject(&reject);
                return false;
            }
        }
        self.pass();
        true
    }

    fn on_response_headers(&mut self, _end_of_stream: bool) -> u32 {
        if matches!(self.state, StreamState::Replied) {
            return abi::CONTINUE;
        }
        let length = response_header(self.envoy, "content-length");
        let length = length.and_then(|v| std::str::from_utf8(v).ok());
        if let Err(reject) =
            response_cap::check_declared_length(self.config().max_response_bytes, length, &self.reply_id)
        {
            self.reject(&reject);
            return abi::HEADERS_STOP_ITERATION;
        }
        abi::CONTINUE
    }

    fn on_response_body(&mut self, _end_of_stream: bool) -> u32 {
        if matches!(self.state, StreamState::Replied) {
            return abi::CONTINUE;
        }
        let chunk = body_size(self.envoy, abi::RECEIVED_RESPONSE_BODY);
        let cap = self.config().max_response_bytes;
        let replacement = match self.meter.on_chunk(cap, chunk, &self.reply_id) {
            ChunkAction::Pass => return abi::CONTINUE,
            ChunkAction::CutOff(event) => {
                log(
                    abi::LOG_WARN,
                    &format!("response cut off at the {cap} byte output limit"),
                );
                self.metrics().cut_off(self.envoy);
                event.into_bytes()
            }
            ChunkAction::Drop => Vec::new(),
        };
        // SAFETY: the replacement outlives the call; Envoy copies it.
        unsafe {
            abi::envoy_dynamic_module_callback_http_drain_body(self.envoy, abi::RECEIVED_RESPONSE_BODY, chunk);
            if !replacement.is_empty() {
                abi::envoy_dynamic_module_callback_http_append_body(
                    self.envoy,
                    abi::RECEIVED_RESPONSE_BODY,
                    ModuleBuffer::of(&replacement),
                );
            }
        }
        abi::CONTINUE
    }
}

/// The request headers, borrowed from Envoy until the end of the hook.
fn request_headers<'a>(envoy: FilterEnvoy) -> abi::Headers<'a> {
    // SAFETY: Envoy fills `size` entries, each valid until the hook returns
    // (the glue writes headers only after it is done reading them).
    unsafe {
        let size = abi::envoy_dynamic_module_callback_http_get_headers_size(envoy, abi::REQUEST_HEADERS);
        let mut raw = vec![
            EnvoyHeader {
                key: EnvoyBuffer::EMPTY,
                value: EnvoyBuffer::EMPTY,
            };
            size
        ];
        if size == 0
            || !abi::envoy_dynamic_module_callback_http_get_headers(envoy, abi::REQUEST_HEADERS, raw.as_mut_ptr())
        {
            return Vec::new();
        }
        raw.iter().map(|h| (h.key.bytes(), h.value.bytes())).collect()
    }
}

fn response_header<'a>(envoy: FilterEnvoy, name: &str) -> Option<&'a [u8]> {
    let mut value = EnvoyBuffer::EMPTY;
    // SAFETY: Envoy writes `value`, valid until the hook returns.
    unsafe {
        let found = abi::envoy_dynamic_module_callback_http_get_header(
            envoy,
            abi::RESPONSE_HEADERS,
            ModuleBuffer::of(name.as_bytes()),
            &mut value,
            0,
            std::ptr::null_mut(),
        );
        (found && !value.ptr.is_null()).then(|| value.bytes())
    }
}

fn remove_request_header(envoy: FilterEnvoy, name: &str) {
    // SAFETY: the name outlives the call; a null value removes the header.
    unsafe {
        abi::envoy_dynamic_module_callback_http_set_header(
            envoy,
            abi::REQUEST_HEADERS,
            ModuleBuffer::of(name.as_bytes()),
            ModuleBuffer::NULL,
        );
    }
}

fn body_size(envoy: FilterEnvoy, body_type: u32) -> usize {
    // SAFETY: a read-only query of the stream.
    unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(envoy, body_type) }
}

/// The request body held in `body_types`, in order (what Envoy buffered,
/// then the latest chunk).
fn request_body(envoy: FilterEnvoy, body_types: &[u32]) -> Vec<u8> {
    let mut body = Vec::new();
    for &body_type in body_types {
        // SAFETY: Envoy fills `count` chunks, valid until the hook returns.
        unsafe {
            let count = abi::envoy_dynamic_module_callback_http_get_body_chunks_size(envoy, body_type);
            let mut chunks = vec![EnvoyBuffer::EMPTY; count];
            if count > 0
                && abi::envoy_dynamic_module_callback_http_get_body_chunks(envoy, body_type, chunks.as_mut_ptr())
            {
                for chunk in chunks {
                    body.extend_from_slice(chunk.bytes());
                }
            }
        }
    }
    body
}

// ---- Event hooks Envoy calls (the names the ABI requires). ----

/// # Safety
/// Called by Envoy with the module pointer this glue handed out.
unsafe fn request<'a>(module: ModulePtr) -> &'a mut Request {
    // SAFETY: `module` is the `Box<Request>` made in `filter_new`, used by one thread.
    unsafe { &mut *(module as *mut Request) }
}

/// Runs a stream hook. A panic inside Envoy's process would take every
/// stream down with it: it is caught (the module is built to unwind) and
/// the request refused with a JSON-RPC internal error instead.
///
/// # Safety
/// As `request`.
unsafe fn guarded(envoy: FilterEnvoy, module: ModulePtr, stopped: u32, hook: impl FnOnce(&mut Request) -> u32) -> u32 {
    // SAFETY: the caller's promise.
    let request = unsafe { request(module) };
    request.envoy = envoy;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| hook(&mut *request))) {
        Ok(status) => status,
        Err(_) => {
            log(abi::LOG_ERROR, "the edge filter failed on a request; refused it");
            if !matches!(request.state, StreamState::Replied) {
                let reject = Reject::new(
                    500,
                    response_cap::INTERNAL_ERROR,
                    "internal_error",
                    "The gateway's edge failed on this request. Retry; if it persists, report it with the request id.",
                );
                request.reject(&reject.with_id(request.reply_id.clone()));
            }
            stopped
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    abi::ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: FilterConfigEnvoy,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    // SAFETY: Envoy's configuration bytes, valid during the call.
    let json = unsafe { config.bytes() };
    match new_config(envoy, json) {
        Some(config) => Box::into_raw(Box::new(config)) as ModulePtr,
        None => std::ptr::null(),
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    if !config.is_null() {
        // SAFETY: made by `config_new`, destroyed once.
        let config = unsafe { Box::from_raw(config as *mut ModuleConfig) };
        config.alive.store(false, Ordering::Release);
        if let Some(jwks) = &config.jwks {
            jwks.stop();
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    envoy: FilterConfigEnvoy,
    config: ModulePtr,
    event: u64,
) {
    // SAFETY: made by `config_new`; the main thread is its only user here.
    let config = unsafe { &*(config as *const ModuleConfig) };
    if let Some(jwks) = &config.jwks {
        jwks.fetch(envoy, &config.metrics, event);
    }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    envoy: FilterConfigEnvoy,
    config: ModulePtr,
    callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_len: usize,
    chunks: *const EnvoyBuffer,
    chunks_len: usize,
) {
    // SAFETY: made by `config_new`; the hook's arguments are valid during the call.
    unsafe {
        let config = &*(config as *const ModuleConfig);
        if let Some(jwks) = &config.jwks {
            let (headers, body) = abi::callout_answer(headers, headers_len, chunks, chunks_len);
            jwks.arrived(envoy, &config.metrics, callout, result, &headers, &body);
        }
    }
}

#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    envoy: FilterEnvoy,
    module: ModulePtr,
    _callout: u64,
    result: u32,
    headers: *const EnvoyHeader,
    headers_len: usize,
    chunks: *const EnvoyBuffer,
    chunks_len: usize,
) {
    // SAFETY: see `request`; the answer is valid during the call.
    unsafe {
        let (headers, body) = abi::callout_answer(headers, headers_len, chunks, chunks_len);
        guarded(envoy, module, abi::CONTINUE, |request| {
            request.global_limit_answered(result, &headers, &body);
            abi::CONTINUE
        });
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(config: ModulePtr, envoy: FilterEnvoy) -> ModulePtr {
    // SAFETY: made by `config_new` and alive while its streams are.
    let module_config = unsafe { &*(config as *const ModuleConfig) };
    let Some(worker) = worker_for(module_config) else {
        return std::ptr::null();
    };
    Box::into_raw(Box::new(Request {
        config: module_config,
        worker,
        envoy,
        started_ms: 0,
        state: StreamState::Headers,
        reply_id: serde_json::Value::Null,
        meter: StreamMeter::default(),
        caller: None,
    })) as ModulePtr
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: ModulePtr) {
    if !module.is_null() {
        // SAFETY: made by `filter_new`, destroyed once.
        drop(unsafe { Box::from_raw(module as *mut Request) });
    }
}

/// The stream hooks that carry out the decisions, each run `guarded`.
macro_rules! stream_hooks {
    ($($name:ident: $method:ident, stopped $stopped:expr;)*) => {$(
        #[no_mangle]
        pub unsafe extern "C" fn $name(envoy: FilterEnvoy, module: ModulePtr, end_of_stream: bool) -> u32 {
            // SAFETY: see `request`.
            unsafe { guarded(envoy, module, $stopped, |request| request.$method(end_of_stream)) }
        }
    )*};
}

stream_hooks! {
    envoy_dynamic_module_on_http_filter_request_headers: on_request_headers, stopped abi::HEADERS_STOP_ITERATION;
    envoy_dynamic_module_on_http_filter_request_body: on_request_body, stopped abi::BODY_STOP_AND_BUFFER;
    envoy_dynamic_module_on_http_filter_response_headers: on_response_headers, stopped abi::HEADERS_STOP_ITERATION;
    envoy_dynamic_module_on_http_filter_response_body: on_response_body, stopped abi::BODY_STOP_AND_BUFFER;
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoy,
    module: ModulePtr,
) -> u32 {
    // SAFETY: see `request`.
    unsafe {
        guarded(
            envoy,
            module,
            abi::TRAILERS_STOP_ITERATION,
            Request::on_request_trailers,
        )
    }
}

/// Hooks the ABI requires that this filter has no use for (response trailers pass;
/// it makes no callouts and schedules nothing). Extra C arguments are
/// ignored by a callee that does not declare them.
macro_rules! unused_hooks {
    ($($name:ident -> $ret:ty = $value:expr;)*) => {$(
        #[no_mangle]
        pub extern "C" fn $name() -> $ret {
            $value
        }
    )*};
}

unused_hooks! {
    envoy_dynamic_module_on_http_filter_response_trailers -> u32 = abi::CONTINUE;
    envoy_dynamic_module_on_http_filter_stream_complete -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_headers -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_data -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_trailers -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_complete -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_reset -> () = ();
    envoy_dynamic_module_on_http_filter_scheduled -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark -> () = ();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module_config() -> ModuleConfig {
        let json = serde_json::json!({"jwt": {"issuer": "i", "audiences": ["a"], "jwks": {"keys": [{
            "kty": "OKP", "crv": "Ed25519", "kid": "k1",
            "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        }]}}});
        static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
        ModuleConfig {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            json: json.to_string().into_bytes(),
            metrics: Metrics::unregistered(),
            jwks: None,
            alive: Arc::new(AtomicBool::new(true)),
        }
    }

    #[test]
    fn a_worker_compiles_once_and_drops_copies_of_dropped_configurations() {
        let (first, second) = (module_config(), module_config());
        let worker = worker_for(&first).expect("a valid configuration");
        assert!(Rc::ptr_eq(&worker, &worker_for(&first).expect("cached")));
        first.alive.store(false, Ordering::Release);
        drop(worker);
        worker_for(&second).expect("a valid configuration");
        WORKERS.with(|workers| {
            let workers = workers.borrow();
            assert!(
                !workers.contains_key(&first.id),
                "a dropped configuration's copy is gone"
            );
            assert!(workers.contains_key(&second.id));
        });
        let broken = ModuleConfig {
            json: b"{}".to_vec(),
            ..module_config()
        };
        assert!(
            worker_for(&broken).is_none(),
            "a configuration that does not compile makes no worker"
        );
    }
}
