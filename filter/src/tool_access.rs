//! Per-tool access: the scope each tool needs and each organisation's tool
//! allow-list (`tool_access` in the settings). Pure decisions: `gate` asks
//! whether a caller may call a tool, and the identity assertion carries the
//! tools a restricted caller may use, so the upstream's `tools/list` shows
//! only those.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::jsonrpc::code;
use crate::jwt::Identity;
use crate::reply::Reject;

/// What the admin writes under `tool_access`.
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ToolAccessSpec {
    /// The scope a tool needs (`{"edit_image": "images:edit"}`).
    #[serde(default)]
    pub scopes: BTreeMap<String, String>,
    /// Tools an organisation may call; organisations not listed keep every allowed tool.
    #[serde(default)]
    pub orgs: BTreeMap<String, Vec<String>>,
}

/// Why `tool_access` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ToolAccessError {
    #[error("`tool_access.scopes`: {0:?} is not an allowed tool (see `allowed_tools`)")]
    UnknownScopedTool(String),
    #[error("`tool_access.scopes.{0}`: the scope must not be empty or contain spaces")]
    BadScope(String),
    #[error("`tool_access.orgs.{org}`: {tool:?} is not an allowed tool (see `allowed_tools`)")]
    UnknownOrgTool { org: String, tool: String },
    #[error("`tool_access.orgs`: an organisation name must not be empty")]
    EmptyOrg,
}

/// The compiled rules.
#[derive(Debug, Clone, Default)]
pub struct ToolAccess {
    scopes: BTreeMap<String, String>,
    orgs: BTreeMap<String, BTreeSet<String>>,
}

/// A tool the caller may not call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// The caller lacks the tool's scope (403 `insufficient_scope`).
    Scope(String),
    /// The caller's organisation may not call the tool.
    NotForOrg,
}

impl ToolAccess {
    /// Checks the rules against the tools the gateway lets through at all.
    pub fn from_spec(spec: &ToolAccessSpec, allowed_tools: &BTreeSet<&str>) -> Result<Self, ToolAccessError> {
        for (tool, scope) in &spec.scopes {
            if !allowed_tools.contains(tool.as_str()) {
                return Err(ToolAccessError::UnknownScopedTool(tool.clone()));
            }
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                return Err(ToolAccessError::BadScope(tool.clone()));
            }
        }
        let mut orgs = BTreeMap::new();
        for (org, tools) in &spec.orgs {
            if org.is_empty() {
                return Err(ToolAccessError::EmptyOrg);
            }
            if let Some(tool) = tools.iter().find(|t| !allowed_tools.contains(t.as_str())) {
                return Err(ToolAccessError::UnknownOrgTool {
                    org: org.clone(),
                    tool: tool.clone(),
                });
            }
            orgs.insert(org.clone(), tools.iter().cloned().collect());
        }
        Ok(Self {
            scopes: spec.scopes.clone(),
            orgs,
        })
    }

    /// True when no rule applies to anyone.
    pub fn is_open(&self) -> bool {
        self.scopes.is_empty() && self.orgs.is_empty()
    }

    /// Whether `identity` may call `tool`.
    pub fn check(&self, identity: &Identity, tool: &str) -> Result<(), Denied> {
        if !self.org_allows(&identity.org, tool) {
            return Err(Denied::NotForOrg);
        }
        match self.scope_of(tool) {
            Some(scope) if !identity.scopes.iter().any(|s| s == scope) => Err(Denied::Scope(scope.to_string())),
            _ => Ok(()),
        }
    }

    /// Whether organisation `org`'s list (if it has one) names `tool`.
    pub fn org_allows(&self, org: &str, tool: &str) -> bool {
        self.orgs.get(org).is_none_or(|tools| tools.contains(tool))
    }

    /// The scope `tool` needs, if it has its own.
    pub fn scope_of(&self, tool: &str) -> Option<&str> {
        self.scopes.get(tool).map(String::as_str)
    }

    /// The tools of `allowed` that `identity` may call, when the rules hide
    /// any of them from it (`None`: it sees every tool).
    pub fn visible_tools<'a>(
        &self,
        identity: &Identity,
        allowed: impl Iterator<Item = &'a String>,
    ) -> Option<Vec<String>> {
        if self.is_open() {
            return None;
        }
        let mut hidden = false;
        let mut visible: Vec<String> = allowed
            .filter(|tool| {
                let ok = self.check(identity, tool).is_ok();
                hidden |= !ok;
                ok
            })
            .cloned()
            .collect();
        visible.sort();
        hidden.then_some(visible)
    }
}

/// The refusal of a call to a tool the caller's organisation may not use:
/// a JSON-RPC error naming the tool, as for a tool the gateway does not serve.
pub fn not_for_org(tool: &str, org: &str) -> Reject {
    Reject::new(
        403,
        code::INVALID_PARAMS,
        "tool_not_permitted",
        format!("Tool {tool:?} is not available to organisation {org:?}; ask your gateway admin to add it to the organisation's tools"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(org: &str, scopes: &[&str]) -> Identity {
        Identity {
            user: "u".into(),
            org: org.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: u64::MAX,
            key_id: None,
        }
    }

    fn allowed() -> BTreeSet<&'static str> {
        ["generate_image", "edit_image", "create_upload", "list_models"].into()
    }

    fn access() -> ToolAccess {
        let spec: ToolAccessSpec = serde_json::from_value(serde_json::json!({
            "scopes": {"edit_image": "images:edit", "create_upload": "images:edit", "generate_image": "images:generate"},
            "orgs": {"globex": ["generate_image", "list_models"]}
        }))
        .unwrap();
        ToolAccess::from_spec(&spec, &allowed()).unwrap()
    }

    #[test]
    fn decisions() {
        let access = access();
        let cases: &[(&str, Identity, &str, Result<(), Denied>)] = &[
            (
                "scope held",
                caller("acme", &["images:generate"]),
                "generate_image",
                Ok(()),
            ),
            (
                "scope missing",
                caller("acme", &["images:generate"]),
                "edit_image",
                Err(Denied::Scope("images:edit".into())),
            ),
            ("tool without a scope rule", caller("acme", &[]), "list_models", Ok(())),
            (
                "org allow-list",
                caller("globex", &["images:edit"]),
                "edit_image",
                Err(Denied::NotForOrg),
            ),
            (
                "org allow-list and scope",
                caller("globex", &["images:generate"]),
                "generate_image",
                Ok(()),
            ),
        ];
        for (name, identity, tool, expected) in cases {
            assert_eq!(&access.check(identity, tool), expected, "{name}");
        }
    }

    #[test]
    fn visible_tools_hide_what_is_refused() {
        let access = access();
        let all: Vec<String> = allowed().iter().map(|s| s.to_string()).collect();
        assert_eq!(
            access.visible_tools(&caller("acme", &["images:generate"]), all.iter()),
            Some(vec!["generate_image".into(), "list_models".into()])
        );
        assert_eq!(
            access.visible_tools(&caller("acme", &["images:generate", "images:edit"]), all.iter()),
            None,
            "nothing hidden"
        );
        assert_eq!(
            ToolAccess::default().visible_tools(&caller("acme", &[]), all.iter()),
            None
        );
    }

    #[test]
    fn refusals_name_the_field() {
        let bad: &[(serde_json::Value, &str)] = &[
            (serde_json::json!({"scopes": {"paint": "x"}}), "`tool_access.scopes`"),
            (
                serde_json::json!({"scopes": {"edit_image": ""}}),
                "`tool_access.scopes.edit_image`",
            ),
            (
                serde_json::json!({"orgs": {"acme": ["paint"]}}),
                "`tool_access.orgs.acme`",
            ),
        ];
        for (json, expected) in bad {
            let spec: ToolAccessSpec = serde_json::from_value(json.clone()).unwrap();
            let error = ToolAccess::from_spec(&spec, &allowed()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
