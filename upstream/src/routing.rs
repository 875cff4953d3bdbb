//! Which model chain serves a call: rules first (in order), then the
//! caller's organisation, then the style, then the default chain (the
//! primary and `GATEWAY_FALLBACK_MODELS`). Written by operators as JSON
//! (`GATEWAY_ROUTES_FILE`):
//!
//! ```json
//! {"styles": {"anime": ["stability:sd3.5-large", "gpt-image-2"]},
//!  "orgs": {"acme-onprem": ["openai-compatible:stablediffusion"]},
//!  "rules": [{"min_prompt_chars": 1500, "route": ["gpt-image-2"]},
//!            {"sizes": ["3840x2160", "2160x3840"], "route": ["gpt-image-2"]}]}
//! ```
//!
//! Each chain lists `model` (the primary's provider) or `provider:model`;
//! within a chain the router's fallback, retry and capability rules apply.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::args::GenerateImageArgs;
use crate::backends::router::ModelRouter;
use crate::image_types::ImageSize;
use crate::style::Style;

/// The routes file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesSpec {
    #[serde(default)]
    pub styles: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub orgs: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

/// A rule: every condition given must hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    #[serde(default)]
    pub min_prompt_chars: Option<usize>,
    #[serde(default)]
    pub max_prompt_chars: Option<usize>,
    #[serde(default)]
    pub sizes: Vec<String>,
    #[serde(default)]
    pub styles: Vec<String>,
    #[serde(default)]
    pub orgs: Vec<String>,
    #[serde(default)]
    pub min_images: Option<u8>,
    pub route: Vec<String>,
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

    /// Checks what serde cannot: known styles, sizes that parse, non-empty chains.
    pub fn validate(&self) -> Result<(), String> {
        for (style, chain) in &self.styles {
            if Style::parse(style).is_none() {
                return Err(format!("`styles.{style}`: unknown style"));
            }
            if chain.is_empty() {
                return Err(format!("`styles.{style}`: the chain is empty"));
            }
        }
        if let Some((org, _)) = self.orgs.iter().find(|(_, chain)| chain.is_empty()) {
            return Err(format!("`orgs.{org}`: the chain is empty"));
        }
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.route.is_empty() {
                return Err(format!("`rules[{index}].route` is empty"));
            }
            if let Some(size) = rule.sizes.iter().find(|s| ImageSize::parse(s).is_none()) {
                return Err(format!("`rules[{index}].sizes`: {size:?} is not WIDTHxHEIGHT"));
            }
            if let Some(style) = rule.styles.iter().find(|s| Style::parse(s).is_none()) {
                return Err(format!("`rules[{index}].styles`: unknown style {style:?}"));
            }
        }
        Ok(())
    }

    /// Every chain the file names, for building their backends.
    pub fn chains(&self) -> impl Iterator<Item = &Vec<String>> {
        self.styles
            .values()
            .chain(self.orgs.values())
            .chain(self.rules.iter().map(|r| &r.route))
    }
}

impl RuleSpec {
    fn matches(&self, org: &str, args: &GenerateImageArgs) -> bool {
        let chars = args.prompt.chars().count();
        self.min_prompt_chars.is_none_or(|min| chars >= min)
            && self.max_prompt_chars.is_none_or(|max| chars <= max)
            && (self.sizes.is_empty() || self.sizes.iter().any(|s| ImageSize::parse(s) == Some(args.size)))
            && (self.styles.is_empty() || self.styles.iter().any(|s| s == args.style.as_str()))
            && (self.orgs.is_empty() || self.orgs.iter().any(|o| o == org))
            && self.min_images.is_none_or(|min| args.n >= min)
    }
}

/// The compiled routes: each chain a router.
pub struct Routes {
    spec: RoutesSpec,
    routers: BTreeMap<Vec<String>, Arc<ModelRouter>>,
}

impl Routes {
    /// `build` makes the router of a chain (shared when chains repeat).
    pub fn new(
        spec: RoutesSpec,
        mut build: impl FnMut(&[String]) -> anyhow::Result<ModelRouter>,
    ) -> anyhow::Result<Self> {
        let mut routers = BTreeMap::new();
        for chain in spec.chains() {
            if !routers.contains_key(chain) {
                routers.insert(chain.clone(), Arc::new(build(chain)?));
            }
        }
        Ok(Self { spec, routers })
    }

    /// No routes: every call takes the default chain.
    pub fn none() -> Self {
        Self {
            spec: RoutesSpec::default(),
            routers: BTreeMap::new(),
        }
    }

    /// The chain for this call and why, or `None` for the default chain.
    pub fn select(&self, org: &str, args: &GenerateImageArgs) -> Option<(String, Arc<ModelRouter>)> {
        let (why, chain) =
            if let Some((index, rule)) = self.spec.rules.iter().enumerate().find(|(_, r)| r.matches(org, args)) {
                (format!("rule {index}"), &rule.route)
            } else if let Some(chain) = self.spec.orgs.get(org) {
                (format!("org {org}"), chain)
            } else {
                (
                    format!("style {}", args.style.as_str()),
                    self.spec.styles.get(args.style.as_str())?,
                )
            };
        self.routers.get(chain).map(|router| (why, router.clone()))
    }

    /// What routes exist, for `list_models`.
    pub fn describe(&self) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::new();
        for (index, rule) in self.spec.rules.iter().enumerate() {
            out.push((format!("rule {index}: {}", describe_rule(rule)), rule.route.clone()));
        }
        for (org, chain) in &self.spec.orgs {
            out.push((format!("org {org}"), chain.clone()));
        }
        for (style, chain) in &self.spec.styles {
            out.push((format!("style {style}"), chain.clone()));
        }
        out
    }
}

fn describe_rule(rule: &RuleSpec) -> String {
    let mut parts = Vec::new();
    if let Some(min) = rule.min_prompt_chars {
        parts.push(format!("prompt of at least {min} characters"));
    }
    if let Some(max) = rule.max_prompt_chars {
        parts.push(format!("prompt of at most {max} characters"));
    }
    if !rule.sizes.is_empty() {
        parts.push(format!("size {}", rule.sizes.join(" or ")));
    }
    if !rule.styles.is_empty() {
        parts.push(format!("style {}", rule.styles.join(" or ")));
    }
    if !rule.orgs.is_empty() {
        parts.push(format!("org {}", rule.orgs.join(" or ")));
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
mod tests {
    use super::*;
    use crate::backends::router::{BreakerPolicy, RetryPolicy};
    use crate::image_types::{Background, OutputFormat, Quality};

    fn args(prompt: &str, style: Style, size: &str, n: u8) -> GenerateImageArgs {
        GenerateImageArgs {
            prompt: prompt.into(),
            style,
            size: ImageSize::parse(size).unwrap(),
            n,
            quality: Quality::Auto,
            background: Background::Auto,
            output_format: OutputFormat::Png,
            output_compression: None,
        }
    }

    fn routes(json: serde_json::Value) -> Routes {
        let spec: RoutesSpec = serde_json::from_value(json).unwrap();
        spec.validate().unwrap();
        Routes::new(spec, |_| {
            Ok(ModelRouter::new(
                Vec::new(),
                RetryPolicy::default(),
                BreakerPolicy::default(),
            ))
        })
        .unwrap()
    }

    #[test]
    fn rules_then_org_then_style_then_default() {
        let r = routes(serde_json::json!({
            "styles": {"anime": ["stability:sd3.5-large"]},
            "orgs": {"onprem": ["openai-compatible:sd"]},
            "rules": [
                {"min_prompt_chars": 100, "route": ["gpt-image-2"]},
                {"sizes": ["3840x2160"], "styles": ["photorealistic"], "route": ["gpt-image-2", "gpt-image-1.5"]}
            ]
        }));
        let why = |org: &str, a: &GenerateImageArgs| r.select(org, a).map(|(why, _)| why);
        let long = "x".repeat(100);
        assert_eq!(
            why("acme", &args(&long, Style::Anime, "1024x1024", 1)).as_deref(),
            Some("rule 0")
        );
        assert_eq!(
            why("onprem", &args("x", Style::Photorealistic, "3840x2160", 1)).as_deref(),
            Some("rule 1")
        );
        assert_eq!(
            why("onprem", &args("x", Style::Anime, "1024x1024", 1)).as_deref(),
            Some("org onprem")
        );
        assert_eq!(
            why("acme", &args("x", Style::Anime, "1024x1024", 1)).as_deref(),
            Some("style anime")
        );
        assert_eq!(why("acme", &args("x", Style::Default, "1024x1024", 1)), None);
        // Rule 1 needs both its size and its style.
        assert_eq!(why("acme", &args("x", Style::Default, "3840x2160", 1)), None);
        assert_eq!(r.describe()[1].0, "rule 1: size 3840x2160, style photorealistic");
    }

    #[test]
    fn a_bad_routes_file_is_refused_naming_the_field() {
        let cases = [
            (
                serde_json::json!({"styles": {"cubism": ["m"]}}),
                "`styles.cubism`: unknown style",
            ),
            (
                serde_json::json!({"orgs": {"acme": []}}),
                "`orgs.acme`: the chain is empty",
            ),
            (
                serde_json::json!({"rules": [{"sizes": ["big"], "route": ["m"]}]}),
                "`rules[0].sizes`",
            ),
            (
                serde_json::json!({"rules": [{"route": []}]}),
                "`rules[0].route` is empty",
            ),
        ];
        for (json, expected) in cases {
            let spec: RoutesSpec = serde_json::from_value(json).unwrap();
            let error = spec.validate().unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        assert!(
            serde_json::from_value::<RoutesSpec>(serde_json::json!({"rules": [{"route": ["m"], "when": 1}]})).is_err()
        );
    }
}
