//! MCP edge filter for Envoy (proxy-wasm).
//!
//! Decision logic lives in plain modules (`gate`, `jwt`, `jsonrpc`, `config`)
//! that build and test on the host; this file is only the proxy-wasm glue:
//! read headers and body, ask `gate`, and carry out the verdict.

pub mod config;
pub mod gate;
pub mod jsonrpc;
pub mod jwt;
pub mod reply;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::FilterConfig;
use crate::gate::{HeadVerdict, RequestHead};
use crate::reply::Reject;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(EdgeRoot { config: None }) });
}}

/// Per-plugin state: the compiled configuration.
struct EdgeRoot {
    config: Option<Rc<FilterConfig>>,
}

impl Context for EdgeRoot {}

impl RootContext for EdgeRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match FilterConfig::from_json(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(error) => {
                // Returning false makes Envoy refuse this filter configuration.
                log::error!("configuration refused: {error}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let config = self.config.clone()?;
        Some(Box::new(EdgeRequest {
            config,
            inspecting_body: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Per-request state.
struct EdgeRequest {
    config: Rc<FilterConfig>,
    /// True while an MCP POST is held until its body has been checked.
    inspecting_body: bool,
}

impl EdgeRequest {
    /// Reads a request header without trusting it to be UTF-8.
    fn header(&self, name: &str) -> Option<String> {
        self.get_http_request_header_bytes(name)
            .map(|bytes| String::from_utf8(bytes).unwrap_or_else(|_| "\u{FFFD}".to_string()))
    }

    fn now(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default()
    }

    fn reject(&self, reject: &Reject) -> Action {
        log::info!("rejected {} ({}): {}", reject.status, reject.reason, reject.message);
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(reject.headers.iter().map(|(n, v)| (*n, v.as_str())));
        self.send_http_response(reject.status, headers, Some(reject.body().as_bytes()));
        Action::Pause
    }
}

impl Context for EdgeRequest {}

impl HttpContext for EdgeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let method = self.header(":method").unwrap_or_default();
        let path = self.header(":path").unwrap_or_default();
        let content_length = self.header("content-length");
        let authorization = self.header("authorization");
        let head = RequestHead {
            method: &method,
            path: &path,
            content_length: content_length.as_deref(),
            authorization: authorization.as_deref(),
            end_of_stream,
        };
        let identity = match gate::check_head(&self.config, &head, self.now()) {
            HeadVerdict::Reject(reject) => return self.reject(&reject),
            HeadVerdict::Forward(identity) => identity,
            HeadVerdict::InspectBody(identity) => {
                self.inspecting_body = true;
                identity
            }
        };
        for name in gate::IDENTITY_HEADERS {
            self.remove_http_request_header(name);
        }
        // The client's token is for this gateway only; never pass it on.
        self.remove_http_request_header("authorization");
        for (name, value) in gate::identity_headers(&identity) {
            self.set_http_request_header(name, Some(&value));
        }
        if self.inspecting_body {
            Action::Pause
        } else {
            Action::Continue
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if let Err(reject) = gate::check_body_size(&self.config, body_size) {
            return self.reject(&reject);
        }
        if !self.inspecting_body {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match gate::check_body(&self.config, &body) {
            Ok(_) => {
                self.inspecting_body = false;
                Action::Continue
            }
            Err(reject) => self.reject(&reject),
        }
    }
}
