//! Arbitrary request heads and bodies through the filter's decisions: any
//! input must yield a verdict, never a panic (a panic would kill the Wasm VM
//! for every request on that Envoy worker).
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use mcp_edge_filter::config::FilterConfig;
use mcp_edge_filter::credentials::TokenCache;
use mcp_edge_filter::gate::{self, HeldRequest, Host, RequestHead};
use mcp_edge_filter::jwt::Identity;
use mcp_edge_filter::limits::{CasMismatch, SharedStore};

#[derive(Default)]
struct Store(RefCell<HashMap<String, (Vec<u8>, u32)>>);

impl SharedStore for Store {
    fn get(&self, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
        match self.0.borrow().get(key) {
            Some((v, c)) => (Some(v.clone()), Some(*c)),
            None => (None, None),
        }
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), CasMismatch> {
        let mut map = self.0.borrow_mut();
        let current = map.get(key).map(|(_, c)| *c);
        if cas.is_some() && cas != current {
            return Err(CasMismatch);
        }
        map.insert(key.to_string(), (value.to_vec(), current.unwrap_or(0) + 1));
        Ok(())
    }
}

thread_local! {
    // libFuzzer runs the target on one thread; the config is built once.
    static CONFIG: FilterConfig = {
        let json = serde_json::json!({
            "jwt": {"issuer": "iss", "audiences": ["aud"], "jwks": {"keys": [{
                "kty": "OKP", "crv": "Ed25519", "kid": "k1",
                "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}},
            "api_keys": [{"id": "k", "org": "acme", "sha256": "a".repeat(64), "scopes": ["images:generate"]}],
            "tools_call_scope": "images:generate",
            "rate_limits": {"per_caller": {"requests_per_second": 5, "burst": 5}, "daily_images_per_org": 50},
            "protected_resource": {"resource": "https://gw/mcp", "authorization_servers": ["https://iam"]}
        });
        match FilterConfig::from_json(json.to_string().as_bytes()) {
            Ok(config) => config,
            Err(error) => panic!("fuzz config: {error}"),
        }
    };
}

fuzz_target!(|data: &[u8]| CONFIG.with(|config| run(config, data)));

fn run(config: &FilterConfig, data: &[u8]) {
    // The first bytes choose header values; the rest is the body.
    let split = data.iter().position(|b| *b == 0xff).unwrap_or(data.len().min(64));
    let (head_bytes, body) = data.split_at(split);
    let text = String::from_utf8_lossy(head_bytes);
    let mut fields = text.split('\n');
    let mut next = || fields.next();
    let (method, path, auth, version, mcp_method, mcp_name, origin, length) =
        (next(), next(), next(), next(), next(), next(), next(), next());
    let head = RequestHead {
        method: method.unwrap_or("POST"),
        path: path.unwrap_or("/mcp"),
        content_length: length,
        authorization: auth,
        x_api_key: None,
        content_type: Some("application/json"),
        accept: Some("application/json, text/event-stream"),
        origin,
        protocol_version: version,
        mcp_method,
        mcp_name,
        end_of_stream: body.is_empty(),
    };
    let store = Store::default();
    let mut cache = TokenCache::new(4);
    let mut leases = mcp_edge_filter::leases::Leases::default();
    let mut host = Host { cache: &mut cache, leases: &mut leases, store: &store, now_ms: 1_800_000_000_000 };
    let _ = gate::check_head(config, &head, &mut host);
    let held = HeldRequest {
        identity: std::rc::Rc::new(Identity {
            user: "u".into(),
            org: "acme".into(),
            scopes: vec!["images:generate".into()],
            expires_at: u64::MAX,
            key_id: None,
        }),
        protocol_version: version.map(str::to_string),
        mcp_method: mcp_method.map(str::to_string),
        mcp_name: mcp_name.map(str::to_string),
    };
    let _ = gate::check_body(config, body, &held, &mut host);
    let _ = gate::check_body(config, data, &held, &mut host);
}
