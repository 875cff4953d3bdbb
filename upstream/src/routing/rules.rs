//! Which model chain serves a call. In order: the caller's own `model`
//! choice (among the models its organisation may pick), the first rule that
//! matches, the caller's organisation, the style, the file's `default`, else
//! the built-in default chain (the primary and `GATEWAY_FALLBACK_MODELS`).
//! Written by operators as JSON (`GATEWAY_ROUTES_FILE`):
//!
//! ```json
//! {"styles": {"anime": ["stability:sd3.5-large", "gpt-image-2"]},
//!  "orgs": {"acme-onprem": ["openai-compatible:stablediffusion"]},
//!  "rules": [{"prompt_keywords": ["logo", "typography"], "prompt_patterns": ["\\btext\\b"],
//!             "route": ["gpt-image-2"]},
//!            {"sizes": ["3840x2160"], "route": {"models": ["gpt-image-2", "gpt-image-1.5"], "strategy": "cheapest"}}],
//!  "default": {"assign_by": "user", "arms": [
//!      {"name": "onprem", "weight": 90, "models": ["openai-compatible:sdxl", "gpt-image-1-mini"]},
//!      {"name": "hosted", "weight": 10, "models": ["gpt-image-1-mini"]}]},
//!  "selectable": {"default": ["gpt-image-1-mini"], "orgs": {"acme": ["gpt-image-2", "gpt-image-1-mini"]}}}
//! ```
//!
//! A route is a chain (`["model", "provider:model", …]`, tried in order with
//! the router's fallback, retry and capability rules), a chain with a
//! `strategy` (`cheapest`: cheapest first for this very request, by the
//! capability table's prices), or weighted `arms`, each a chain, assigned
//! stably by a hash of the organisation or of organisation and user, so one
//! user always sees one arm.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use regex::{Regex, RegexBuilder};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::media::style::Style;
use crate::media::types::{Background, ImageSize, Quality};
use crate::routing::chain::ModelRouter;

/// Longest regular expression accepted in `prompt_patterns`, and the most
/// memory one may compile to: rules run on every call.
const MAX_PATTERN_CHARS: usize = 256;
const MAX_PATTERN_BYTES: usize = 64 * 1024;

/// The routes file: which chain of models serves a call, and which models
/// callers may choose.
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoutesSpec {
    /// The route of calls with this `style`, when no rule and no organisation matched.
    #[serde(default)]
    pub styles: BTreeMap<String, RouteSpec>,
    /// The route of this organisation's calls, when no rule matched.
    #[serde(default)]
    pub orgs: BTreeMap<String, RouteSpec>,
    /// Rules tried in order: the first whose conditions all hold picks the route.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    /// The route of every call nothing else matched (else the built-in chain).
    #[serde(default)]
    pub default: Option<RouteSpec>,
    /// Models callers may ask for by name (`model`).
    #[serde(default)]
    pub selectable: Option<SelectableSpec>,
    /// Organisations that keep using a model inside its `reserve` (models
    /// file) while everyone else spills to the next model of their chain.
    #[serde(default)]
    pub priority_orgs: Vec<String>,
}

/// A chain (a list of `provider:model` or model names), or a chain with a
/// strategy, or weighted arms.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum RouteSpec {
    Chain(Vec<String>),
    Target(TargetSpec),
}

/// A chain with a strategy, or weighted arms.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    /// The chain's models, the first tried first (unless `strategy` orders them).
    #[serde(default)]
    pub models: Vec<String>,
    /// How the chain orders its models for a call.
    #[serde(default)]
    pub strategy: Strategy,
    /// Weighted arms instead of one chain: each caller is assigned one, stably.
    #[serde(default)]
    pub arms: Vec<ArmSpec>,
    /// What keeps a caller on one arm.
    #[serde(default)]
    pub assign_by: AssignBy,
}

/// One arm of a route: a share of the callers and its chain.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArmSpec {
    /// The arm's name, in results, audit events and metrics (`arm`).
    pub name: String,
    /// Its share against the other arms' weights.
    pub weight: u32,
    /// The arm's chain.
    pub models: Vec<String>,
    /// How the arm's chain orders its models for a call.
    #[serde(default)]
    pub strategy: Strategy,
}

/// How a chain orders its models for a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// As written: the first is the primary, the rest fallbacks.
    #[default]
    InOrder,
    /// Cheapest first for this request (quality and size matter), then up the price list.
    Cheapest,
}

/// What keeps a caller on one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AssignBy {
    /// Organisation and user: each user sees one arm.
    #[default]
    User,
    /// Organisation: a whole organisation sees one arm.
    Org,
}

/// Models callers may choose, per organisation (else `default`).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectableSpec {
    /// The models every organisation not listed may ask for.
    #[serde(default)]
    pub default: Vec<String>,
    /// The models each listed organisation may ask for.
    #[serde(default)]
    pub orgs: BTreeMap<String, Vec<String>>,
}

/// A rule: every condition given must hold.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Prompts at least this long, in characters.
    #[serde(default)]
    pub min_prompt_chars: Option<usize>,
    /// Prompts at most this long, in characters.
    #[serde(default)]
    pub max_prompt_chars: Option<usize>,
    /// Words or phrases, any of which (case-insensitive) in the prompt.
    #[serde(default)]
    pub prompt_keywords: Vec<String>,
    /// Regular expressions, any of which matches the prompt (case-insensitive;
    /// compiled once at start, at most 256 characters and 64 KiB compiled each;
    /// a bad one refuses the file, naming it).
    #[serde(default)]
    pub prompt_patterns: Vec<String>,
    /// Calls of any of these tools (`generate_image`, `edit_image`).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Calls asking for any of these sizes (`WIDTHxHEIGHT`).
    #[serde(default)]
    pub sizes: Vec<String>,
    /// Calls with any of these styles.
    #[serde(default)]
    pub styles: Vec<String>,
    /// Calls with any of these qualities.
    #[serde(default)]
    pub qualities: Vec<String>,
    /// Calls with any of these backgrounds.
    #[serde(default)]
    pub backgrounds: Vec<String>,
    /// Calls of any of these organisations.
    #[serde(default)]
    pub orgs: Vec<String>,
    /// Calls asking for at least this many images (`n`).
    #[serde(default)]
    pub min_images: Option<u8>,
    /// The route of the calls the rule matches.
    pub route: RouteSpec,
}

impl RouteSpec {
    /// Every chain of the route.
    fn chains(&self) -> Vec<&Vec<String>> {
        match self {
            RouteSpec::Chain(chain) => vec![chain],
            RouteSpec::Target(target) if target.arms.is_empty() => vec![&target.models],
            RouteSpec::Target(target) => target.arms.iter().map(|arm| &arm.models).collect(),
        }
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        if let RouteSpec::Target(target) = self {
            if !target.arms.is_empty() && !target.models.is_empty() {
                return Err(format!("`{field}`: give `models` or `arms`, not both"));
            }
            if !target.arms.is_empty() && target.arms.iter().map(|a| a.weight).sum::<u32>() == 0 {
                return Err(format!("`{field}.arms`: the weights add up to 0"));
            }
            let mut names: Vec<&str> = target.arms.iter().map(|a| a.name.as_str()).collect();
            names.sort_unstable();
            if names.windows(2).any(|w| w[0] == w[1]) || names.iter().any(|n| n.is_empty()) {
                return Err(format!("`{field}.arms`: every arm needs a name of its own"));
            }
        }
        if self.chains().iter().any(|chain| chain.is_empty()) {
            return Err(format!("`{field}`: the chain is empty"));
        }
        Ok(())
    }
}

impl RoutesSpec {
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read the routes file {}: {e}", path.display()))?;
        let spec: RoutesSpec = serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the routes file {} is not valid: {e}", path.display()))?;
        spec.validate()
            .map_err(|e| anyhow::anyhow!("the routes file {}: {e}", path.display()))?;
        Ok(spec)
    }

    /// Checks what serde cannot: known styles, sizes that parse, patterns
    /// that compile within bounds, non-empty chains and sane arms.
    pub fn validate(&self) -> Result<(), String> {
        for (style, route) in &self.styles {
            if Style::parse(style).is_none() {
                return Err(format!("`styles.{style}`: unknown style"));
            }
            route.validate(&format!("styles.{style}"))?;
        }
        for (org, route) in &self.orgs {
            route.validate(&format!("orgs.{org}"))?;
        }
        if let Some(route) = &self.default {
            route.validate("default")?;
        }
        for (index, rule) in self.rules.iter().enumerate() {
            rule.route.validate(&format!("rules[{index}].route"))?;
            if let Some(size) = rule.sizes.iter().find(|s| ImageSize::parse(s).is_none()) {
                return Err(format!("`rules[{index}].sizes`: {size:?} is not WIDTHxHEIGHT"));
            }
            if let Some(style) = rule.styles.iter().find(|s| Style::parse(s).is_none()) {
                return Err(format!("`rules[{index}].styles`: unknown style {style:?}"));
            }
            for pattern in &rule.prompt_patterns {
                compile(pattern).map_err(|e| format!("`rules[{index}].prompt_patterns`: {e}"))?;
            }
        }
        Ok(())
    }
}

fn compile(pattern: &str) -> Result<Regex, String> {
    if pattern.chars().count() > MAX_PATTERN_CHARS {
        return Err(format!("{pattern:?} is longer than {MAX_PATTERN_CHARS} characters"));
    }
    RegexBuilder::new(pattern)
        .case_insensitive(true)
        .size_limit(MAX_PATTERN_BYTES)
        .build()
        .map_err(|e| format!("{pattern:?} does not compile: {e}"))
}

/// What a rule can look at: who calls which tool, and what they asked for.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    pub org: &'a str,
    pub user: &'a str,
    pub tool: &'a str,
    pub asked: Asked<'a>,
}

/// The call's arguments as far as routing reads them.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    pub prompt: &'a str,
    pub style: Style,
    pub size: ImageSize,
    pub n: u8,
    pub quality: Quality,
    pub background: Background,
    /// The model the caller chose, if any.
    pub model: Option<&'a str>,
}

/// A rule ready to match: keywords lower-cased, patterns compiled.
struct CompiledRule {
    spec: RuleSpec,
    keywords: Vec<String>,
    patterns: Vec<Regex>,
    route: CompiledRoute,
}

impl CompiledRule {
    fn matches(&self, facts: &CallFacts<'_>) -> bool {
        let rule = &self.spec;
        let args = facts.asked;
        let chars = args.prompt.chars().count();
        let any = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        let content = (self.keywords.is_empty() && self.patterns.is_empty()) || {
            let prompt = args.prompt.to_lowercase();
            self.keywords.iter().any(|k| prompt.contains(k.as_str()))
                || self.patterns.iter().any(|p| p.is_match(args.prompt))
        };
        rule.min_prompt_chars.is_none_or(|min| chars >= min)
            && rule.max_prompt_chars.is_none_or(|max| chars <= max)
            && content
            && any(&rule.tools, facts.tool)
            && (rule.sizes.is_empty() || rule.sizes.iter().any(|s| ImageSize::parse(s) == Some(args.size)))
            && any(&rule.styles, args.style.as_str())
            && any(&rule.qualities, args.quality.as_str())
            && any(&rule.backgrounds, args.background.as_str())
            && any(&rule.orgs, facts.org)
            && rule.min_images.is_none_or(|min| args.n >= min)
    }
}

/// A route ready to pick an arm.
struct CompiledRoute {
    arms: Vec<CompiledArm>,
    assign_by: AssignBy,
}

struct CompiledArm {
    /// `None` for a route without arms.
    name: Option<String>,
    weight: u32,
    chain: Vec<String>,
    strategy: Strategy,
    router: Arc<ModelRouter>,
}

impl CompiledRoute {
    /// The arm for this caller: stable across calls (a hash, not a draw).
    fn arm(&self, facts: &CallFacts<'_>) -> Option<&CompiledArm> {
        let total: u32 = self.arms.iter().map(|a| a.weight).sum();
        if self.arms.len() <= 1 || total == 0 {
            return self.arms.first();
        }
        let who = match self.assign_by {
            AssignBy::Org => facts.org.to_string(),
            AssignBy::User => format!("{}/{}", facts.org, facts.user),
        };
        let digest = Sha256::digest(who.as_bytes());
        let mut bucket = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default()) % u64::from(total);
        for arm in &self.arms {
            if bucket < u64::from(arm.weight) {
                return Some(arm);
            }
            bucket -= u64::from(arm.weight);
        }
        self.arms.last()
    }
}

/// The chain chosen for a call.
#[derive(Clone)]
pub struct Selected {
    /// Why (for logs): `model`, `rule 2`, `org acme`, `style anime`, `default`.
    pub why: String,
    /// The arm, when the route splits traffic.
    pub arm: Option<String>,
    /// The model the caller asked for, when it did.
    pub requested: Option<String>,
    pub router: Arc<ModelRouter>,
    pub strategy: Strategy,
}

/// The compiled routes.
pub struct Routes {
    rules: Vec<CompiledRule>,
    orgs: BTreeMap<String, CompiledRoute>,
    styles: BTreeMap<String, CompiledRoute>,
    default: Option<CompiledRoute>,
    selectable: SelectableSpec,
    /// A router per selectable entry: that model first, then the default chain.
    chosen: BTreeMap<String, Arc<ModelRouter>>,
    /// The built-in default chain's entries (`provider:model`).
    default_chain: Vec<String>,
    priority_orgs: Vec<String>,
}

impl Routes {
    /// `build` makes the router of a chain of entries (shared when chains
    /// repeat); `default_chain` is the built-in chain, which a chosen model
    /// falls back along.
    pub fn new(
        spec: RoutesSpec,
        default_chain: Vec<String>,
        mut build: impl FnMut(&[String]) -> anyhow::Result<ModelRouter>,
    ) -> anyhow::Result<Self> {
        let mut routers: BTreeMap<Vec<String>, Arc<ModelRouter>> = BTreeMap::new();
        let mut router_for = |chain: &[String]| -> anyhow::Result<Arc<ModelRouter>> {
            if let Some(router) = routers.get(chain) {
                return Ok(router.clone());
            }
            let router = Arc::new(build(chain)?);
            routers.insert(chain.to_vec(), router.clone());
            Ok(router)
        };
        let mut compile_route = |route: &RouteSpec| -> anyhow::Result<CompiledRoute> {
            let (arms, assign_by) = match route {
                RouteSpec::Chain(chain) => (vec![(None, 1, chain.clone(), Strategy::InOrder)], AssignBy::User),
                RouteSpec::Target(target) if target.arms.is_empty() => (
                    vec![(None, 1, target.models.clone(), target.strategy)],
                    target.assign_by,
                ),
                RouteSpec::Target(target) => (
                    target
                        .arms
                        .iter()
                        .map(|arm| (Some(arm.name.clone()), arm.weight, arm.models.clone(), arm.strategy))
                        .collect(),
                    target.assign_by,
                ),
            };
            let arms = arms
                .into_iter()
                .map(|(name, weight, chain, strategy)| {
                    Ok(CompiledArm {
                        router: router_for(&chain)?,
                        name,
                        weight,
                        chain,
                        strategy,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(CompiledRoute { arms, assign_by })
        };
        let mut rules = Vec::with_capacity(spec.rules.len());
        for rule in &spec.rules {
            let patterns = rule
                .prompt_patterns
                .iter()
                .map(|p| compile(p).map_err(|e| anyhow::anyhow!(e)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            rules.push(CompiledRule {
                keywords: rule.prompt_keywords.iter().map(|k| k.to_lowercase()).collect(),
                patterns,
                route: compile_route(&rule.route)?,
                spec: rule.clone(),
            });
        }
        let mut compile_map = |map: &BTreeMap<String, RouteSpec>| -> anyhow::Result<BTreeMap<String, CompiledRoute>> {
            map.iter()
                .map(|(key, route)| Ok((key.clone(), compile_route(route)?)))
                .collect()
        };
        let orgs = compile_map(&spec.orgs)?;
        let styles = compile_map(&spec.styles)?;
        let default = spec.default.as_ref().map(&mut compile_route).transpose()?;
        let selectable = spec.selectable.clone().unwrap_or_default();
        let mut chosen = BTreeMap::new();
        for entry in selectable.default.iter().chain(selectable.orgs.values().flatten()) {
            let mut chain = vec![entry.clone()];
            chain.extend(
                default_chain
                    .iter()
                    .filter(|e| model_name(e) != model_name(entry))
                    .cloned(),
            );
            chosen.insert(entry.clone(), router_for(&chain)?);
        }
        Ok(Self {
            rules,
            orgs,
            styles,
            default,
            selectable,
            chosen,
            default_chain,
            priority_orgs: spec.priority_orgs.clone(),
        })
    }

    /// No routes file: every call takes the built-in chain.
    pub fn none(default_chain: Vec<String>) -> Self {
        Self {
            rules: Vec::new(),
            orgs: BTreeMap::new(),
            styles: BTreeMap::new(),
            default: None,
            selectable: SelectableSpec::default(),
            chosen: BTreeMap::new(),
            default_chain,
            priority_orgs: Vec::new(),
        }
    }

    /// Whether `org` may use a model's reserved capacity.
    pub fn is_priority(&self, org: &str) -> bool {
        self.priority_orgs.iter().any(|o| o == org)
    }

    /// The models `org` may ask for by name (`model`): its list, else the
    /// default list, else the built-in chain's models.
    pub fn selectable(&self, org: &str) -> Vec<String> {
        let entries = self
            .selectable
            .orgs
            .get(org)
            .or((!self.selectable.default.is_empty()).then_some(&self.selectable.default))
            .unwrap_or(&self.default_chain);
        entries.iter().map(|e| model_name(e).to_string()).collect()
    }

    /// The chain for this call, or `None` for the built-in chain; `Err` when
    /// the caller asked for a model its organisation may not choose.
    pub fn select(&self, facts: &CallFacts<'_>) -> Result<Option<Selected>, String> {
        if let Some(model) = facts.asked.model {
            return self.choose(facts.org, model).map(Some);
        }
        let found = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, rule)| rule.matches(facts))
            .map(|(index, rule)| (format!("rule {index}"), &rule.route))
            .or_else(|| {
                self.orgs
                    .get(facts.org)
                    .map(|route| (format!("org {}", facts.org), route))
            })
            .or_else(|| {
                let style = facts.asked.style.as_str();
                self.styles.get(style).map(|route| (format!("style {style}"), route))
            })
            .or_else(|| self.default.as_ref().map(|route| ("default".to_string(), route)));
        let Some((why, route)) = found else { return Ok(None) };
        Ok(route.arm(facts).map(|arm| Selected {
            why,
            arm: arm.name.clone(),
            requested: None,
            router: arm.router.clone(),
            strategy: arm.strategy,
        }))
    }

    /// The chain for `model` asked for by a caller of `org`, or why not.
    pub fn choose(&self, org: &str, model: &str) -> Result<Selected, String> {
        let allowed = self.selectable(org);
        let entries = self
            .selectable
            .orgs
            .get(org)
            .or((!self.selectable.default.is_empty()).then_some(&self.selectable.default));
        let refuse = || {
            format!(
                "`model` {model:?} is not available to your organisation; choose one of: {} (or leave `model` out and the gateway chooses)",
                allowed.join(", ")
            )
        };
        if !allowed.iter().any(|m| m == model) {
            return Err(refuse());
        }
        // Without a `selectable` list, the built-in chain's models are
        // choosable: the chosen one first, then the rest of the chain.
        let entry = entries
            .and_then(|entries| entries.iter().find(|e| model_name(e) == model))
            .cloned();
        let router = match &entry {
            Some(entry) => self.chosen.get(entry).cloned(),
            None => None,
        };
        let router = router.ok_or_else(refuse)?;
        Ok(Selected {
            why: "model".into(),
            arm: None,
            requested: Some(model.to_string()),
            router,
            strategy: Strategy::InOrder,
        })
    }

    /// What routes exist, for `list_models`.
    pub fn describe(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        let mut push = |label: String, route: &CompiledRoute| {
            for arm in &route.arms {
                let mut label = label.clone();
                if let Some(name) = &arm.name {
                    label.push_str(&format!(", arm {name} (weight {})", arm.weight));
                }
                if arm.strategy == Strategy::Cheapest {
                    label.push_str(", cheapest first");
                }
                out.push((label, arm.chain.clone()));
            }
        };
        for (index, rule) in self.rules.iter().enumerate() {
            push(format!("rule {index}: {}", describe_rule(&rule.spec)), &rule.route);
        }
        for (org, route) in &self.orgs {
            push(format!("org {org}"), route);
        }
        for (style, route) in &self.styles {
            push(format!("style {style}"), route);
        }
        if let Some(route) = &self.default {
            push("default".into(), route);
        }
        out
    }
}

/// The model of a chain entry (`provider:model` or `model`).
pub fn model_name(entry: &str) -> &str {
    entry.split_once(':').map_or(entry, |(_, model)| model).trim()
}

fn describe_rule(rule: &RuleSpec) -> String {
    let mut parts = Vec::new();
    if let Some(min) = rule.min_prompt_chars {
        parts.push(format!("prompt of at least {min} characters"));
    }
    if let Some(max) = rule.max_prompt_chars {
        parts.push(format!("prompt of at most {max} characters"));
    }
    if !rule.prompt_keywords.is_empty() || !rule.prompt_patterns.is_empty() {
        let mut words: Vec<String> = rule.prompt_keywords.iter().map(|k| format!("{k:?}")).collect();
        words.extend(rule.prompt_patterns.iter().map(|p| format!("/{p}/")));
        parts.push(format!("prompt mentioning {}", words.join(" or ")));
    }
    for (name, list) in [
        ("tool", &rule.tools),
        ("size", &rule.sizes),
        ("style", &rule.styles),
        ("quality", &rule.qualities),
        ("background", &rule.backgrounds),
        ("org", &rule.orgs),
    ] {
        if !list.is_empty() {
            parts.push(format!("{name} {}", list.join(" or ")));
        }
    }
    if let Some(min) = rule.min_images {
        parts.push(format!("at least {min} images"));
    }
    if parts.is_empty() {
        "every call".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
