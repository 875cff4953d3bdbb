//! The filter's decision as tags on Envoy's trace span. The glues write
//! each tag as filter state (`mcp_edge.<name>`; Envoy's Wasm host stores it
//! as `wasm.mcp_edge.<name>`), which the tracer's `custom_tags` read
//! (`envoy/tracing.yaml.tmpl`). Off unless the settings ask for it
//! (`tracing`), so an untraced gateway makes no extra host call.

use serde::Deserialize;

use crate::jsonrpc::{self, Message};
use crate::jwt::Identity;
use crate::reply::Reject;

/// What the admin writes under `tracing`.
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct TracingSpec {
    /// Put the decision on Envoy's span.
    #[serde(default = "yes")]
    pub span_tags: bool,
    /// Also the caller's user id (a personal identifier: off by default).
    #[serde(default)]
    pub user_id: bool,
}

fn yes() -> bool {
    true
}

/// One tag: its filter-state name (below `mcp_edge.`) and value.
pub type Tag = (&'static str, String);

/// The caller of an admitted request: organisation, credential kind and,
/// when configured, the user.
pub fn caller(spec: &TracingSpec, identity: &Identity) -> Vec<Tag> {
    let credential = if identity.key_id.is_some() { "api_key" } else { "jwt" };
    let mut tags = vec![("org", identity.org.clone()), ("credential", credential.to_string())];
    if spec.user_id {
        tags.push(("user", identity.user.clone()));
    }
    tags
}

/// What the message asks: JSON-RPC method, id and, for `tools/call`, the tool.
pub fn message(body: &[u8]) -> Vec<Tag> {
    let Ok(envelope) = jsonrpc::parse_envelope(body) else {
        return Vec::new();
    };
    let mut tags = Vec::with_capacity(3);
    let method = match &envelope.message {
        Message::Request { method, .. } | Message::Notification { method } => method.clone(),
        Message::Response { .. } => "response".to_string(),
    };
    if method == "tools/call" {
        if let Some(tool) = envelope
            .params
            .as_ref()
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
        {
            tags.push(("tool", tool.to_string()));
        }
    }
    tags.push(("method", method));
    let id = envelope.reply_id();
    if !id.is_null() {
        tags.push(("id", id_text(&id)));
    }
    tags
}

/// The forward decision.
pub fn forwarded() -> Vec<Tag> {
    vec![("decision", "forward".to_string())]
}

/// A refusal: the decision, reason, JSON-RPC code and, when known, the id and org.
pub fn refused(reject: &Reject) -> Vec<Tag> {
    let mut tags = vec![
        ("decision", "reject".to_string()),
        ("reason", reject.reason.to_string()),
        ("code", reject.code.to_string()),
        ("status", reject.status.to_string()),
    ];
    if !reject.id.is_null() {
        tags.push(("id", id_text(&reject.id)));
    }
    if let Some(org) = &reject.org {
        tags.push(("org", org.clone()));
    }
    tags
}

/// A JSON-RPC id as span text: strings bare, numbers as written.
fn id_text(id: &serde_json::Value) -> String {
    id.as_str().map_or_else(|| id.to_string(), str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(key_id: Option<&str>) -> Identity {
        Identity {
            user: "alice".into(),
            org: "acme".into(),
            scopes: vec![],
            expires_at: u64::MAX,
            key_id: key_id.map(str::to_string),
        }
    }

    #[test]
    fn tags_say_what_was_asked_and_decided() {
        let spec = TracingSpec {
            span_tags: true,
            user_id: false,
        };
        assert_eq!(
            caller(&spec, &alice(None)),
            vec![("org", "acme".to_string()), ("credential", "jwt".to_string())],
            "no user id unless configured"
        );
        let with_user = TracingSpec { user_id: true, ..spec };
        assert_eq!(caller(&with_user, &alice(Some("k1"))).last().unwrap().1, "alice");
        assert_eq!(caller(&spec, &alice(Some("k1")))[1].1, "api_key");
        let call = br#"{"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"secret prompt"}}}"#;
        let tags = message(call);
        assert_eq!(
            tags,
            vec![
                ("tool", "generate_image".to_string()),
                ("method", "tools/call".to_string()),
                ("id", "r-1".to_string())
            ]
        );
        assert!(!format!("{tags:?}").contains("secret"), "arguments never become tags");
        assert_eq!(message(br#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#)[1].1, "3");
        assert!(message(b"not json").is_empty());
        let reject = Reject::new(429, -32029, "quota_exceeded", "over").with_id(serde_json::json!(9));
        let tags = refused(&reject);
        assert!(tags.contains(&("reason", "quota_exceeded".to_string())));
        assert!(tags.contains(&("code", "-32029".to_string())));
        assert!(tags.contains(&("id", "9".to_string())));
    }
}
