//! MCP edge filter for Envoy (proxy-wasm).
//!
//! Decision logic lives in plain modules (`gate`, `jwt`, `jsonrpc`, `config`)
//! that build and test on the host; this file is only the proxy-wasm glue:
//! read headers and body, ask `gate`, and carry out the verdict.

pub mod config;
pub mod gate;
pub mod jsonrpc;
pub mod jwt;
pub mod policy;
pub mod reply;
pub mod transport;

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::config::FilterConfig;
use crate::gate::{HeadVerdict, HeldHeaders, RequestHead};
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
            state: RequestState::Headers,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Where a request is in the filter.
enum RequestState {
    /// Waiting for the request headers.
    Headers,
    /// An MCP POST held until its body has been checked.
    HoldingForBody(HeldHeaders),
    /// Forwarded; later callbacks only watch the body size.
    Forwarded,
    /// A local reply was sent.
    Rejected,
}

/// Per-request state.
struct EdgeRequest {
    config: Rc<FilterConfig>,
    state: RequestState,
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

    fn reject(&mut self, reject: &Reject) -> Action {
        log::info!("rejected {} ({}): {}", reject.status, reject.reason, reject.message);
        let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        headers.extend(reject.headers.iter().map(|(n, v)| (*n, v.as_str())));
        self.send_http_response(reject.status, headers, Some(reject.body().as_bytes()));
        self.state = RequestState::Rejected;
        Action::Pause
    }
}

impl Context for EdgeRequest {}

impl HttpContext for EdgeRequest {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let h = |name: &str| self.header(name);
        let (method, path) = (h(":method").unwrap_or_default(), h(":path").unwrap_or_default());
        let (content_length, authorization) = (h("content-length"), h("authorization"));
        let (content_type, accept, origin) = (h("content-type"), h("accept"), h("origin"));
        let (protocol_version, mcp_method, mcp_name) = (h("mcp-protocol-version"), h("mcp-method"), h("mcp-name"));
        let head = RequestHead {
            method: &method,
            path: &path,
            content_length: content_length.as_deref(),
            authorization: authorization.as_deref(),
            content_type: content_type.as_deref(),
            accept: accept.as_deref(),
            origin: origin.as_deref(),
            protocol_version: protocol_version.as_deref(),
            mcp_method: mcp_method.as_deref(),
            mcp_name: mcp_name.as_deref(),
            end_of_stream,
        };
        let (identity, next) = match gate::check_head(&self.config, &head, self.now()) {
            HeadVerdict::Reject(reject) => return self.reject(&reject),
            HeadVerdict::Forward(identity) => (identity, RequestState::Forwarded),
            HeadVerdict::InspectBody(identity, held) => (identity, RequestState::HoldingForBody(held)),
        };
        for name in gate::IDENTITY_HEADERS {
            self.remove_http_request_header(name);
        }
        // The client's token is for this gateway only; never pass it on.
        self.remove_http_request_header("authorization");
        for (name, value) in gate::identity_headers(&identity) {
            self.set_http_request_header(name, Some(&value));
        }
        self.state = next;
        match self.state {
            RequestState::HoldingForBody(_) => Action::Pause,
            _ => Action::Continue,
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if matches!(self.state, RequestState::Rejected) {
            return Action::Pause;
        }
        if let Err(reject) = gate::check_body_size(&self.config, body_size) {
            return self.reject(&reject);
        }
        let RequestState::HoldingForBody(held) = &self.state else {
            return Action::Continue;
        };
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        match gate::check_body(&self.config, &body, held) {
            Ok(_) => {
                self.state = RequestState::Forwarded;
                Action::Continue
            }
            Err(reject) => self.reject(&reject),
        }
    }
}
