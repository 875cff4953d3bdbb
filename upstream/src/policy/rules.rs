//! The content policy: what an organisation's prompts and images may hold,
//! written by admins as JSON (`GATEWAY_CONTENT_POLICY_FILE`) and compiled
//! once per load. Decisions here are plain functions over a prompt or a
//! moderation answer; calling the moderation model is `policy::moderator`'s.
//!
//! ```json
//! {"default": {"deny_terms": {"weapons": ["bazooka", "grenade*"]},
//!              "moderation": "prompts", "when_moderation_unavailable": "refuse"},
//!  "orgs": {"kids-app": {"moderation": "prompts_and_images",
//!                        "block_categories": {"violence": 0.2, "sexual": 0.1},
//!                        "provider_moderation": "auto"},
//!           "design-team": {"moderation": "off", "deny_terms": {}}}}
//! ```
//!
//! An organisation's policy starts from `default` and replaces the fields it
//! names. Whatever the moderation model flags is refused; `block_categories`
//! adds lower thresholds per category.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::terms::DenyTerms;
use crate::providers::moderation::ModerationResult;

/// The categories of OpenAI's `omni-moderation-latest` (and the servers that copy its API).
pub const CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];

/// What a refusal names for a moderation category the gateway does not know.
pub const OTHER: &str = "other";

/// Refused whenever the model flags it: no policy may allow it.
pub const ALWAYS_BLOCKED: &str = "sexual/minors";

/// The policy file: a default and per-organisation changes to it.
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyFileSpec {
    /// The policy of every organisation not listed in `orgs`.
    #[serde(default)]
    pub default: PolicySpec,
    /// Per organisation: the fields that differ from `default`.
    #[serde(default)]
    pub orgs: BTreeMap<String, PolicySpec>,
}

/// One policy; a field left out takes `default`'s value (or the built-in one).
#[derive(Debug, Default, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// Denied words and phrases by category (`{"weapons": ["bazooka", "grenade*"]}`):
    /// whole words, case-, accent- and width-insensitive; a trailing `*` also
    /// matches words that begin with the term (plurals). Refusals name the
    /// category, never the term.
    #[serde(default)]
    pub deny_terms: Option<BTreeMap<String, Vec<String>>>,
    /// Which content the moderation model checks: `off` (the default), `prompts`, or `prompts_and_images`.
    #[serde(default)]
    pub moderation: Option<ModerationMode>,
    /// When the moderation model cannot answer: `refuse` the call (the default) or `allow` it unchecked.
    #[serde(default)]
    pub when_moderation_unavailable: Option<Unavailable>,
    /// Scores (0 to 1) from which a category refuses even when the model
    /// does not flag it. They add to the model's own flags: whatever the
    /// model flags is refused either way. An answer with no score for a
    /// category named here counts as moderation unavailable.
    #[serde(default)]
    pub block_categories: Option<BTreeMap<String, f64>>,
    /// The models whose images are moderated under `prompts_and_images`
    /// (e.g. only self-hosted ones, as hosted providers screen their own);
    /// `["*"]` or leaving it out: every model's. A name must be in the model
    /// catalogue or a configured chain.
    #[serde(default)]
    pub image_moderation_models: Option<Vec<String>>,
    /// Also moderate an edit's input images with its prompt.
    #[serde(default)]
    pub moderate_edit_inputs: Option<bool>,
    /// OpenAI's own `moderation` level sent to GPT image models for this
    /// organisation (`auto` or `low`); without it, `OPENAI_MODERATION`.
    #[serde(default)]
    pub provider_moderation: Option<ProviderModeration>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModerationMode {
    #[default]
    Off,
    Prompts,
    PromptsAndImages,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Unavailable {
    /// Fail closed: nothing unchecked is generated or delivered.
    #[default]
    Refuse,
    /// Fail open: the call goes on unchecked (audited as such).
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProviderModeration {
    Auto,
    Low,
}

impl ProviderModeration {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderModeration::Auto => "auto",
            ProviderModeration::Low => "low",
        }
    }
}

/// One organisation's compiled policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `default` or `orgs.<org>`: where in the file it came from.
    pub source: String,
    pub deny_terms: DenyTerms,
    pub moderation: ModerationMode,
    pub when_unavailable: Unavailable,
    pub block_categories: Option<BTreeMap<String, f64>>,
    pub image_models: Option<Vec<String>>,
    pub edit_inputs: bool,
    pub provider_moderation: Option<ProviderModeration>,
}

impl Policy {
    /// Whether prompts go to the moderation model.
    pub fn moderates_prompts(&self) -> bool {
        self.moderation != ModerationMode::Off
    }

    /// Whether `model`'s images go to the moderation model.
    pub fn moderates_images_of(&self, model: &str) -> bool {
        self.moderation == ModerationMode::PromptsAndImages
            && self
                .image_models
                .as_ref()
                .is_none_or(|models| models.iter().any(|m| m == model || m == "*"))
    }

    /// Whether the policy checks anything at all (else calls skip it).
    pub fn is_off(&self) -> bool {
        self.deny_terms.is_empty() && self.moderation == ModerationMode::Off
    }

    /// The category of the first denied term in `prompt`.
    pub fn denied_term(&self, prompt: &str) -> Option<&str> {
        self.deny_terms.find(prompt).map(|hit| hit.category)
    }

    /// The category a moderation answer refuses under this policy: the
    /// highest-scoring of the categories the model flagged and those whose
    /// score reaches this policy's threshold (thresholds add to the model's
    /// flags, never replace them). A category the gateway does not know is
    /// named `other` (names go into metrics, audit and the caller's
    /// message). An answer without a score for a category the thresholds
    /// name cannot be judged: the error says so (moderation unavailable).
    pub fn refused_category(&self, result: &ModerationResult) -> Result<Option<String>, String> {
        if result.categories.get(ALWAYS_BLOCKED) == Some(&true) {
            return Ok(Some(ALWAYS_BLOCKED.to_string()));
        }
        let score = |category: &str| result.category_scores.get(category).copied().unwrap_or(0.0);
        let mut blocking: Vec<(&str, f64)> = result
            .categories
            .iter()
            .filter(|(_, flagged)| **flagged)
            .map(|(category, _)| (category.as_str(), score(category)))
            .collect();
        for (category, threshold) in self.block_categories.iter().flatten() {
            let Some(&score) = result.category_scores.get(category) else {
                return Err(format!(
                    "the moderation answer has no score for {category}, which the policy's block_categories name"
                ));
            };
            if score >= *threshold {
                blocking.push((category.as_str(), score));
            }
        }
        let highest = blocking.into_iter().max_by(|a, b| a.1.total_cmp(&b.1));
        Ok(match highest {
            Some((category, _)) => Some(known_category(category).to_string()),
            // Flagged without a category: still refused.
            None if result.flagged => Some(OTHER.to_string()),
            None => None,
        })
    }
}

/// The category a refusal names for a moderation category: itself when it
/// is one of [`CATEGORIES`], else `other`.
pub fn known_category(name: &str) -> &str {
    CATEGORIES.iter().copied().find(|c| *c == name).unwrap_or(OTHER)
}

/// Every organisation's policy, as loaded from one file.
#[derive(Debug, Clone, Default)]
pub struct ContentPolicies {
    default: Arc<Policy>,
    orgs: HashMap<String, Arc<Policy>>,
}

impl ContentPolicies {
    /// No file: nothing is checked.
    pub fn none() -> Self {
        Self::default()
    }

    /// Reads and compiles the policy file; the error names the file and the field.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the content policy file {}: {e}", path.display()))?;
        let spec: PolicyFileSpec = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the content policy file {} is not valid: {e}", path.display()))?;
        Self::new(&spec).map_err(|e| anyhow::anyhow!("the content policy file {}: {e}", path.display()))
    }

    /// Compiles a parsed file.
    pub fn new(spec: &PolicyFileSpec) -> Result<Self, String> {
        check_org_names(spec.orgs.keys())?;
        let base = PolicySpec::default();
        let default = Arc::new(compile("default", &spec.default, &base, None)?);
        let orgs = spec
            .orgs
            .iter()
            .map(|(org, own)| {
                let source = format!("orgs.{org}");
                let compiled = compile(&source, own, &spec.default, Some(&default.deny_terms))?;
                Ok((org.clone(), Arc::new(compiled)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { default, orgs })
    }

    /// Refuses a model in `image_moderation_models` that `known` does not
    /// know (`*` is every model): a misspelt name would silently leave that
    /// model's images unchecked. The admin files' loader passes the model
    /// catalogue and the configured chains.
    pub fn check_image_models(&self, known: impl Fn(&str) -> bool) -> Result<(), String> {
        let mut policies: Vec<&Policy> = self.orgs.values().map(Arc::as_ref).collect();
        policies.sort_by(|a, b| a.source.cmp(&b.source));
        policies.insert(0, &self.default);
        for policy in policies {
            if let Some(model) = policy.image_models.iter().flatten().find(|m| *m != "*" && !known(m)) {
                return Err(format!(
                    "{}.image_moderation_models: unknown model {model:?} (neither in the model catalogue nor in a configured chain)",
                    policy.source
                ));
            }
        }
        Ok(())
    }

    /// The policy `org`'s calls run under.
    pub fn for_org(&self, org: &str) -> Arc<Policy> {
        self.orgs.get(org).unwrap_or(&self.default).clone()
    }
}

/// `own`'s fields over `base`'s, checked and compiled; an organisation
/// that keeps the default's terms shares its automaton (`inherited`).
fn compile(source: &str, own: &PolicySpec, base: &PolicySpec, inherited: Option<&DenyTerms>) -> Result<Policy, String> {
    let field = |name: &str| format!("{source}.{name}");
    let terms = own.deny_terms.as_ref().or(base.deny_terms.as_ref());
    let deny_terms = match (terms, inherited) {
        (_, Some(shared)) if own.deny_terms.is_none() => shared.clone(),
        (Some(terms), _) => DenyTerms::new(terms.iter().map(|(c, t)| (c.as_str(), t.as_slice())))
            .map_err(|e| format!("{}: {e}", field("deny_terms")))?,
        (None, _) => DenyTerms::default(),
    };
    if let Some(terms) = terms {
        if let Some(bad) = terms.keys().find(|c| !valid_label(c)) {
            return Err(format!(
                "{}: category {bad:?} must be 1 to 64 of a-z, 0-9, `_`, `-` and `/`",
                field("deny_terms")
            ));
        }
    }
    let block_categories = own
        .block_categories
        .as_ref()
        .or(base.block_categories.as_ref())
        .cloned();
    if let Some(thresholds) = &block_categories {
        for (category, threshold) in thresholds {
            if !CATEGORIES.contains(&category.as_str()) {
                return Err(format!(
                    "{}: unknown category {category:?} (known: {})",
                    field("block_categories"),
                    CATEGORIES.join(", ")
                ));
            }
            if !(0.0..=1.0).contains(threshold) {
                return Err(format!(
                    "{}.{category}: the score must be between 0 and 1 (got {threshold})",
                    field("block_categories")
                ));
            }
        }
    }
    let image_models = own
        .image_moderation_models
        .as_ref()
        .or(base.image_moderation_models.as_ref())
        .cloned();
    if image_models.as_ref().is_some_and(|m| m.iter().any(String::is_empty)) {
        return Err(format!("{}: a model name is empty", field("image_moderation_models")));
    }
    Ok(Policy {
        source: source.to_string(),
        deny_terms,
        moderation: own.moderation.or(base.moderation).unwrap_or_default(),
        when_unavailable: own
            .when_moderation_unavailable
            .or(base.when_moderation_unavailable)
            .unwrap_or_default(),
        block_categories,
        image_models,
        edit_inputs: own.moderate_edit_inputs.or(base.moderate_edit_inputs).unwrap_or(false),
        provider_moderation: own.provider_moderation.or(base.provider_moderation),
    })
}

/// Organisation keys must be names the edge can give a caller: a key it
/// would refuse (unsafe, reserved) is a typo that silently applies
/// `default`; two differing only in case are one organisation on a
/// case-insensitive store, so the file is ambiguous.
fn check_org_names<'a>(orgs: impl Iterator<Item = &'a String>) -> Result<(), String> {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for org in orgs {
        if !mcp_edge_filter::jwt::is_safe_identity(org) {
            return Err(format!(
                "orgs: {org:?} is not an organisation name the gateway accepts (1 to 128 of letters, digits and - _ . @ | :, not starting with .)"
            ));
        }
        if mcp_edge_filter::org_names::is_reserved(org) {
            return Err(format!(
                "orgs: {org:?} is reserved for the gateway's own storage ({})",
                mcp_edge_filter::org_names::RESERVED.join(", ")
            ));
        }
        if let Some(other) = seen.insert(org.to_ascii_lowercase(), org) {
            return Err(format!("orgs: {other:?} and {org:?} differ only in case"));
        }
    }
    Ok(())
}

/// Category names are metric labels and audit values: short and plain.
fn valid_label(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-/".contains(&b))
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
