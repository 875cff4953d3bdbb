//! The Envoy dynamic-module glue (`envoy.filters.http.dynamic_modules`): the
//! same `gate` decisions as the Wasm glue, built as a native shared object
//! (`make native-module`) for the edge benchmark's native row.
//!
//! It carries out what the benchmark's requests need and what the edge tests
//! check of it: credentials, buckets and quotas (in a process-wide store),
//! JSON-RPC and MCP rules, the signed identity assertion, the output cap.
//! It refuses configurations that need the Wasm glue's host calls it does not
//! have: keys from a JWKS URL and the global rate-limit service.

mod abi;
mod store;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use abi::{EnvoyBuffer, EnvoyHeader, FilterConfigEnvoy, FilterEnvoy, ModuleBuffer, ModuleHeader, ModulePtr};

use crate::assertion::{self, Prefixes};
use crate::config::FilterConfig;
use crate::credentials::TokenCache;
use crate::gate::{self, Admitted, HeadVerdict, HeldRequest, Host, RequestHead};
use crate::leases::Leases;
use crate::reply::Reject;
use crate::response_cap::{self, ChunkAction, StreamMeter};
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
    forwarded: usize,
    rejected: usize,
}

/// What one worker thread keeps for one configuration between requests.
struct Worker {
    config: FilterConfig,
    cache: RefCell<TokenCache>,
    leases: RefCell<Leases>,
    assertions: RefCell<Prefixes>,
    assertion_ids: RefCell<assertion::Ids>,
}

thread_local! {
    static WORKERS: RefCell<HashMap<u64, Rc<Worker>>> = RefCell::new(HashMap::new());
}

/// This thread's worker for `config`, compiled on its first request.
fn worker_for(config: &ModuleConfig) -> Option<Rc<Worker>> {
    WORKERS.with(|workers| {
        if let Some(worker) = workers.borrow().get(&config.id) {
            return Some(worker.clone());
        }
        let compiled = FilterConfig::from_json(&config.json).ok()?;
        let worker = Rc::new(Worker {
            cache: RefCell::new(TokenCache::new(compiled.token_cache_entries)),
            leases: RefCell::default(),
            assertions: RefCell::default(),
            assertion_ids: RefCell::default(),
            config: compiled,
        });
        workers.borrow_mut().insert(config.id, worker.clone());
        Some(worker)
    })
}

/// Checks a configuration and defines its counters; `None` refuses it.
fn new_config(envoy: FilterConfigEnvoy, json: &[u8]) -> Option<ModuleConfig> {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    let config = match FilterConfig::from_json(json) {
        Ok(config) => config,
        Err(error) => {
            log(abi::LOG_ERROR, &format!("configuration refused: {error}"));
            return None;
        }
    };
    if config.jwt.remote.is_some() || config.global_rate_limit.is_some() {
        log(
            abi::LOG_ERROR,
            "configuration refused: the dynamic-module build has no JWKS URL fetch or global rate limit; use the Wasm filter",
        );
        return None;
    }
    let define = |name: &str, labels: &[ModuleBuffer]| {
        let mut id = 0usize;
        // SAFETY: the name and labels outlive the call; Envoy writes `id`.
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_define_counter(
                envoy,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        };
        (result == 0).then_some(id)
    };
    Some(ModuleConfig {
        id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        json: json.to_vec(),
        forwarded: define("requests_forwarded_total", &[])?,
        rejected: define("requests_rejected_total", &[ModuleBuffer::of(b"reason")])?,
    })
}

/// Where a request is in the filter.
enum State {
    Headers,
    /// An MCP POST held until its body has been checked.
    HoldingForBody(Box<HeldRequest>),
    /// Refused on its headers; held only to read the request id from the body.
    RejectingAfterBody(Box<Reject>),
    Forwarded,
    Replied,
}

/// One HTTP stream.
struct Request {
    config: *const ModuleConfig,
    worker: Rc<Worker>,
    envoy: FilterEnvoy,
    started_ms: u64,
    state: State,
    reply_id: serde_json::Value,
    meter: StreamMeter,
}

impl Request {
    fn config(&self) -> &FilterConfig {
        &self.worker.config
    }

    fn counters(&self) -> &ModuleConfig {
        // SAFETY: Envoy destroys a configuration only after its streams.
        unsafe { &*self.config }
    }

    fn count(&self, id: usize, labels: &[ModuleBuffer]) {
        // SAFETY: the labels outlive the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                self.envoy,
                id,
                labels.as_ptr(),
                labels.len(),
                1,
            );
        }
    }

    fn with_host<T>(&self, decide: impl FnOnce(&FilterConfig, &mut Host<'_>) -> T) -> T {
        let mut cache = self.worker.cache.borrow_mut();
        let mut leases = self.worker.leases.borrow_mut();
        let mut host = Host {
            cache: &mut cache,
            leases: &mut leases,
            store: &ProcessStore,
            now_ms: self.started_ms,
        };
        decide(&self.worker.config, &mut host)
    }

    fn pass(&mut self) {
        self.count(self.counters().forwarded, &[]);
        self.state = State::Forwarded;
    }

    fn reject(&mut self, reject: &Reject) {
        log(
            abi::LOG_INFO,
            &format!("rejected {} ({}): {}", reject.status, reject.reason, reject.message),
        );
        self.count(self.counters().rejected, &[ModuleBuffer::of(reject.reason.as_bytes())]);
        let mut headers = vec![ModuleHeader {
            key: ModuleBuffer::of(b"content-type"),
            value: ModuleBuffer::of(b"application/json"),
        }];
        headers.extend(reject.headers.iter().map(|(name, value)| ModuleHeader {
            key: ModuleBuffer::of(name.as_bytes()),
            value: ModuleBuffer::of(value.as_bytes()),
        }));
        let body = reject.body();
        // SAFETY: headers and body outlive the call; Envoy copies them.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                reject.status,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(body.as_bytes()),
                ModuleBuffer::of(reject.reason.as_bytes()),
            );
        }
        self.state = State::Replied;
    }

    fn serve(&mut self, document: &str) {
        let headers = [
            ModuleHeader {
                key: ModuleBuffer::of(b"content-type"),
                value: ModuleBuffer::of(b"application/json"),
            },
            ModuleHeader {
                key: ModuleBuffer::of(b"cache-control"),
                value: ModuleBuffer::of(b"max-age=3600"),
            },
        ];
        // SAFETY: as in `reject`.
        unsafe {
            abi::envoy_dynamic_module_callback_http_send_response(
                self.envoy,
                200,
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::of(document.as_bytes()),
                ModuleBuffer::NULL,
            );
        }
        self.state = State::Replied;
    }

    /// Replaces credentials and client-supplied identity headers (those in
    /// `present`) with the signed identity assertion.
    fn forward(&mut self, admitted: &Admitted, present: &[&str], request_id: &str) {
        for name in present {
            set_request_header(self.envoy, name, None);
        }
        if let Some(signer) = &self.worker.config.assertion {
            let jti = self
                .worker
                .assertion_ids
                .borrow_mut()
                .next(|| assertion::random_seed(clock_nanos));
            let mut prefixes = self.worker.assertions.borrow_mut();
            if let Some(token) = signer.sign(&mut prefixes, &admitted.identity, request_id, &jti, self.started_ms) {
                // Any client-supplied copy was removed above: add, not replace.
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
    }

    fn on_request_headers(&mut self, end_of_stream: bool) -> u32 {
        let headers = request_headers(self.envoy);
        let h = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| *n == name.as_bytes())
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
        };
        let head = RequestHead {
            method: h(":method").unwrap_or_default(),
            path: h(":path").unwrap_or_default(),
            content_length: h("content-length"),
            authorization: h("authorization"),
            x_api_key: h("x-api-key"),
            content_type: h("content-type"),
            accept: h("accept"),
            origin: h("origin"),
            protocol_version: h("mcp-protocol-version"),
            mcp_method: h("mcp-method"),
            mcp_name: h("mcp-name"),
            end_of_stream,
        };
        // Removed whether or not their values read as text.
        let present: Vec<&'static str> = ["authorization", "x-api-key"]
            .into_iter()
            .chain(gate::IDENTITY_HEADERS)
            .filter(|name| headers.iter().any(|(n, _)| *n == name.as_bytes()))
            .collect();
        self.started_ms = now_ms();
        let request_id = h("x-request-id").unwrap_or_default();
        match self.with_host(|config, host| gate::check_head(config, &head, host)) {
            HeadVerdict::Reject(reject) => self.reject(&reject),
            HeadVerdict::RejectAfterBody(reject) => self.state = State::RejectingAfterBody(Box::new(reject)),
            HeadVerdict::Serve(document) => self.serve(&document),
            HeadVerdict::Forward(admitted) => {
                self.forward(&admitted, &present, request_id);
                self.pass();
                return abi::CONTINUE;
            }
            HeadVerdict::InspectBody(admitted, held) => {
                self.forward(&admitted, &present, request_id);
                self.state = State::HoldingForBody(Box::new(held));
            }
        }
        abi::HEADERS_STOP_ITERATION
    }

    fn on_request_body(&mut self, end_of_stream: bool) -> u32 {
        let size =
            body_size(self.envoy, abi::BUFFERED_REQUEST_BODY) + body_size(self.envoy, abi::RECEIVED_REQUEST_BODY);
        match &self.state {
            State::Replied => return abi::BODY_STOP_AND_BUFFER,
            State::Forwarded | State::Headers => {
                if let Err(reject) = gate::check_body_size(self.config(), size) {
                    self.reject(&reject);
                    return abi::BODY_STOP_AND_BUFFER;
                }
                return abi::CONTINUE;
            }
            State::RejectingAfterBody(_) | State::HoldingForBody(_) => {}
        }
        let too_large = gate::check_body_size(self.config(), size);
        if too_large.is_ok() && !end_of_stream {
            return abi::BODY_STOP_AND_BUFFER;
        }
        let state = std::mem::replace(&mut self.state, State::Forwarded);
        match (state, too_large) {
            (State::RejectingAfterBody(reject), Err(_)) => self.reject(&reject),
            (State::RejectingAfterBody(reject), Ok(())) => {
                let id = gate::reply_id_of(self.config(), &request_body(self.envoy));
                self.reject(&reject.with_id(id));
            }
            (State::HoldingForBody(_), Err(reject)) => self.reject(&reject),
            (State::HoldingForBody(held), Ok(())) => {
                let body = request_body(self.envoy);
                match self.with_host(|config, host| gate::check_body(config, &body, &held, host)) {
                    Ok(checked) => {
                        self.reply_id = checked.reply_id;
                        self.pass();
                        return abi::CONTINUE;
                    }
                    Err(reject) => self.reject(&reject),
                }
            }
            _ => return abi::CONTINUE,
        }
        abi::BODY_STOP_AND_BUFFER
    }

    fn on_response_headers(&mut self) -> u32 {
        if matches!(self.state, State::Replied) {
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

    fn on_response_body(&mut self) -> u32 {
        if matches!(self.state, State::Replied) {
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
                self.count(self.counters().rejected, &[ModuleBuffer::of(b"response_too_large")]);
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
fn request_headers<'a>(envoy: FilterEnvoy) -> Vec<(&'a [u8], &'a [u8])> {
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

fn set_request_header(envoy: FilterEnvoy, name: &str, value: Option<&str>) {
    let value = value.map_or(ModuleBuffer::NULL, |v| ModuleBuffer::of(v.as_bytes()));
    // SAFETY: key and value outlive the call.
    unsafe {
        abi::envoy_dynamic_module_callback_http_set_header(
            envoy,
            abi::REQUEST_HEADERS,
            ModuleBuffer::of(name.as_bytes()),
            value,
        );
    }
}

fn body_size(envoy: FilterEnvoy, body_type: u32) -> usize {
    // SAFETY: a read-only query of the stream.
    unsafe { abi::envoy_dynamic_module_callback_http_get_body_size(envoy, body_type) }
}

/// The whole request body: what Envoy buffered, then the latest chunk.
fn request_body(envoy: FilterEnvoy) -> Vec<u8> {
    let mut body = Vec::new();
    for body_type in [abi::BUFFERED_REQUEST_BODY, abi::RECEIVED_REQUEST_BODY] {
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
        drop(unsafe { Box::from_raw(config as *mut ModuleConfig) });
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
        state: State::Headers,
        reply_id: serde_json::Value::Null,
        meter: StreamMeter::default(),
    })) as ModulePtr
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: ModulePtr) {
    if !module.is_null() {
        // SAFETY: made by `filter_new`, destroyed once.
        drop(unsafe { Box::from_raw(module as *mut Request) });
    }
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoy,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: see `request`.
    let request = unsafe { request(module) };
    request.envoy = envoy;
    request.on_request_headers(end_of_stream)
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoy,
    module: ModulePtr,
    end_of_stream: bool,
) -> u32 {
    // SAFETY: see `request`.
    let request = unsafe { request(module) };
    request.envoy = envoy;
    request.on_request_body(end_of_stream)
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoy,
    module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: see `request`.
    let request = unsafe { request(module) };
    request.envoy = envoy;
    request.on_response_headers()
}

#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoy,
    module: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: see `request`.
    let request = unsafe { request(module) };
    request.envoy = envoy;
    request.on_response_body()
}

/// Hooks the ABI requires that this filter has no use for (trailers pass;
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
    envoy_dynamic_module_on_http_filter_request_trailers -> u32 = abi::CONTINUE;
    envoy_dynamic_module_on_http_filter_response_trailers -> u32 = abi::CONTINUE;
    envoy_dynamic_module_on_http_filter_stream_complete -> () = ();
    envoy_dynamic_module_on_http_filter_http_callout_done -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_headers -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_data -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_trailers -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_complete -> () = ();
    envoy_dynamic_module_on_http_filter_http_stream_reset -> () = ();
    envoy_dynamic_module_on_http_filter_scheduled -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark -> () = ();
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark -> () = ();
}
