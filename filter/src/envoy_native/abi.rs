//! The part of Envoy's dynamic-module C ABI (`source/extensions/dynamic_modules/abi/abi.h`,
//! ABI v0.2.0 of Envoy 1.40) this glue uses, declared by hand: the SDK is not
//! published as a crate. Only x86-64/aarch64 Linux, where a struct of two
//! words passes in two registers, exactly like the pointer-and-length pairs
//! of earlier ABI revisions.

use std::os::raw::c_void;

/// The ABI version this module was written against: Envoy 1.40 logs that
/// it matched (a mismatch only warns; the edge tests fail on that warning).
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

pub type FilterConfigEnvoy = *mut c_void;
pub type FilterEnvoy = *mut c_void;
pub type ModulePtr = *const c_void;
pub type ConfigScheduler = *mut c_void;

/// A buffer owned by Envoy, valid until the end of the current hook.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl EnvoyBuffer {
    pub const EMPTY: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    /// # Safety
    /// The buffer must come from Envoy within the current hook.
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() {
            return &[];
        }
        // SAFETY: Envoy hands out `length` readable bytes at `ptr`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// A buffer owned by the module, read by Envoy during the call.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub const NULL: Self = Self {
        ptr: std::ptr::null(),
        length: 0,
    };

    pub fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }
}

/// A header key and value, owned by Envoy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnvoyHeader {
    pub key: EnvoyBuffer,
    pub value: EnvoyBuffer,
}

/// A header key and value, owned by the module.
#[repr(C)]
pub struct ModuleHeader {
    pub key: ModuleBuffer,
    pub value: ModuleBuffer,
}

/// `envoy_dynamic_module_type_http_header_type`.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;

/// `envoy_dynamic_module_type_http_body_type`.
pub const RECEIVED_REQUEST_BODY: u32 = 0;
pub const BUFFERED_REQUEST_BODY: u32 = 1;
pub const RECEIVED_RESPONSE_BODY: u32 = 2;

/// `..._headers_status` / `..._body_status` / `..._trailers_status`.
pub const CONTINUE: u32 = 0;
pub const HEADERS_STOP_ITERATION: u32 = 1;
pub const BODY_STOP_AND_BUFFER: u32 = 1;
pub const TRAILERS_STOP_ITERATION: u32 = 1;

/// `envoy_dynamic_module_type_http_callout_init_result` / `..._http_callout_result`.
pub const CALLOUT_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_metrics_result`.
pub const METRICS_SUCCESS: u32 = 0;

/// `envoy_dynamic_module_type_log_level`.
pub const LOG_INFO: u32 = 2;
pub const LOG_WARN: u32 = 3;
pub const LOG_ERROR: u32 = 4;

extern "C" {
    pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);

    pub fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterEnvoy, header_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_headers(
        filter: FilterEnvoy,
        header_type: u32,
        result: *mut EnvoyHeader,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoy,
        header_type: u32,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoy,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    /// A null value removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoy,
        header_type: u32,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_send_response(
        filter: FilterEnvoy,
        status: u32,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        details: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_http_get_body_size(filter: FilterEnvoy, body_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: FilterEnvoy, body_type: u32) -> usize;
    pub fn envoy_dynamic_module_callback_http_get_body_chunks(
        filter: FilterEnvoy,
        body_type: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_drain_body(filter: FilterEnvoy, body_type: u32, bytes: usize) -> bool;
    pub fn envoy_dynamic_module_callback_http_append_body(
        filter: FilterEnvoy,
        body_type: u32,
        data: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: FilterConfigEnvoy,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: FilterConfigEnvoy,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_len: usize,
        id: *mut usize,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_set_gauge(
        filter: FilterEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_set_filter_state_bytes(
        filter: FilterEnvoy,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;
    pub fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config: FilterConfigEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: FilterConfigEnvoy,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_len: usize,
        value: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_http_filter_http_callout(
        filter: FilterEnvoy,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    pub fn envoy_dynamic_module_callback_http_filter_continue_decoding(filter: FilterEnvoy);

    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: FilterConfigEnvoy,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHeader,
        headers_len: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;
    /// Events committed from any thread run `on_http_filter_config_scheduled` on the main thread.
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: FilterConfigEnvoy)
        -> ConfigScheduler;
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: ConfigScheduler, event_id: u64);
    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: ConfigScheduler);
}

impl ModuleHeader {
    pub fn new(key: &str, value: &str) -> Self {
        Self {
            key: ModuleBuffer::of(key.as_bytes()),
            value: ModuleBuffer::of(value.as_bytes()),
        }
    }
}

/// Header names and values, borrowed from Envoy.
pub type Headers<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The first value of header `name` (lower case) in a borrowed header list.
pub fn find_header<'a>(headers: &[(&'a [u8], &'a [u8])], name: &str) -> Option<&'a [u8]> {
    headers.iter().find(|(k, _)| *k == name.as_bytes()).map(|(_, v)| *v)
}

/// Why a callout's answer is no answer: the callout failed, or the HTTP
/// status is not 200. `None` for a good answer.
pub fn callout_failure(result: u32, headers: &[(&[u8], &[u8])]) -> Option<String> {
    if result != CALLOUT_SUCCESS {
        return Some(format!("callout failed (result {result})"));
    }
    match find_header(headers, ":status") {
        Some(b"200") => None,
        status => Some(format!("HTTP status {:?}", status.map(String::from_utf8_lossy))),
    }
}

/// A callout answer's headers and body, as Envoy passes them to a hook.
///
/// # Safety
/// The pointers must be the hook's arguments (valid until it returns).
pub unsafe fn callout_answer<'a>(
    headers: *const EnvoyHeader,
    headers_len: usize,
    chunks: *const EnvoyBuffer,
    chunks_len: usize,
) -> (Headers<'a>, Vec<u8>) {
    // SAFETY: Envoy passes `headers_len` headers and `chunks_len` chunks.
    unsafe {
        let headers = raw_slice(headers, headers_len)
            .iter()
            .map(|h| (h.key.bytes(), h.value.bytes()))
            .collect();
        let mut body = Vec::new();
        for chunk in raw_slice(chunks, chunks_len) {
            body.extend_from_slice(chunk.bytes());
        }
        (headers, body)
    }
}

/// # Safety
/// `ptr` must point at `len` values (or be null).
unsafe fn raw_slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        return &[];
    }
    // SAFETY: the caller's promise.
    unsafe { std::slice::from_raw_parts(ptr, len) }
}
