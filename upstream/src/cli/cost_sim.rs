//! `mcp-image-gateway cost-sim`: the weighted cost per image a routing
//! configuration would give for a traffic mix, offline, before rolling it
//! out. The mix (JSON) gives shares of sizes, qualities, styles, tools and
//! prompt kinds, and how many users the traffic comes from; every
//! combination is routed exactly as the gateway would (rules, arms by user
//! hash, capability checks, `cheapest` order), served by the first model
//! that can, and priced with the capability table (`routing::cost`). It assumes
//! no provider fails: fallbacks for outages are not in the KPI.
//!
//! ```json
//! {"users": 1000, "org": "acme",
//!  "sizes": {"1024x1024": 0.8, "1536x1024": 0.2},
//!  "qualities": {"low": 0.6, "medium": 0.4},
//!  "styles": {"default": 1.0},
//!  "tools": {"generate_image": 1.0},
//!  "prompts": [{"share": 0.9, "text": "a harbour at dawn"}, {"share": 0.1, "text": "a logo for a bakery"}]}
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::media::style::Style;
use crate::media::types::{Background, ImageSize, OutputFormat, Quality};
use crate::pipeline::args::GenerateImageArgs;
use crate::providers::{BackendError, Generation, ImageBackend, ImageRequest};
use crate::routing::catalog::ModelCatalog;
use crate::routing::chain::{BreakerPolicy, ModelRouter, RetryPolicy};
use crate::routing::cost::{estimate, CostInputs};
use crate::routing::pricing::Pricing;
use crate::routing::rules::{model_name, CallFacts, Routes, RoutesSpec, Strategy};

/// A traffic mix.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mix {
    #[serde(default = "one_user")]
    pub users: u32,
    #[serde(default = "default_org")]
    pub org: String,
    pub sizes: BTreeMap<String, f64>,
    pub qualities: BTreeMap<String, f64>,
    #[serde(default = "default_styles")]
    pub styles: BTreeMap<String, f64>,
    #[serde(default = "default_tools")]
    pub tools: BTreeMap<String, f64>,
    pub prompts: Vec<PromptKind>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptKind {
    pub share: f64,
    pub text: String,
}

fn one_user() -> u32 {
    1
}
fn default_org() -> String {
    "acme".into()
}
fn default_styles() -> BTreeMap<String, f64> {
    BTreeMap::from([("default".to_string(), 1.0)])
}
fn default_tools() -> BTreeMap<String, f64> {
    BTreeMap::from([("generate_image".to_string(), 1.0)])
}

/// The outcome for one routing configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SimResult {
    /// Expected USD per image across the mix.
    pub cost_per_image: f64,
    /// Share of images by serving model.
    pub models: BTreeMap<String, f64>,
    /// Share of the traffic no model could serve.
    pub unserved: f64,
}

/// A model name for the router: the simulation never calls a provider.
struct Named(String);

#[async_trait]
impl ImageBackend for Named {
    fn kind(&self) -> &'static str {
        "simulated"
    }
    fn model(&self) -> &str {
        &self.0
    }
    async fn generate(&self, _request: &ImageRequest) -> Result<Generation, BackendError> {
        Err(BackendError::Transport("simulation".into()))
    }
}

/// Routes from `spec`, with `default_chain` for calls nothing else matches.
pub fn routes(
    spec: RoutesSpec,
    default_chain: Vec<String>,
    catalog: &Arc<ModelCatalog>,
) -> anyhow::Result<(Routes, ModelRouter)> {
    let router = |chain: &[String]| {
        let backends: Vec<Arc<dyn ImageBackend>> = chain
            .iter()
            .map(|entry| Arc::new(Named(model_name(entry).to_string())) as Arc<dyn ImageBackend>)
            .collect();
        ModelRouter::new(backends, RetryPolicy::default(), BreakerPolicy::default()).with_catalog(catalog.clone())
    };
    let default = router(&default_chain);
    let routes = Routes::new(spec, default_chain, |chain| Ok(router(chain)))?;
    Ok((routes, default))
}

fn normalised(map: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    let total: f64 = map.values().sum();
    map.iter()
        .map(|(k, v)| (k.clone(), v / total.max(f64::MIN_POSITIVE)))
        .collect()
}

/// Simulates `mix` on `routes` (falling back to `default` where no route applies).
pub fn simulate(
    mix: &Mix,
    routes: &Routes,
    default: &ModelRouter,
    catalog: &ModelCatalog,
    fallback: Pricing,
) -> anyhow::Result<SimResult> {
    let prompt_total: f64 = mix.prompts.iter().map(|p| p.share).sum();
    let mut cost = 0.0;
    let mut images = 0.0;
    let mut unserved = 0.0;
    let mut models: BTreeMap<String, f64> = BTreeMap::new();
    let users: Vec<String> = (0..mix.users.max(1)).map(|u| format!("user-{u}")).collect();
    let user_share = 1.0 / users.len() as f64;
    for (size, p_size) in normalised(&mix.sizes) {
        let size = ImageSize::parse(&size).ok_or_else(|| anyhow::anyhow!("mix: size {size:?} is not WIDTHxHEIGHT"))?;
        for (quality, p_quality) in normalised(&mix.qualities) {
            let quality = Quality::ALL
                .into_iter()
                .find(|q| q.as_str() == quality)
                .ok_or_else(|| anyhow::anyhow!("mix: unknown quality {quality:?}"))?;
            for (style, p_style) in normalised(&mix.styles) {
                let style = Style::parse(&style).ok_or_else(|| anyhow::anyhow!("mix: unknown style {style:?}"))?;
                for (tool, p_tool) in normalised(&mix.tools) {
                    for prompt in &mix.prompts {
                        let p_prompt = prompt.share / prompt_total.max(f64::MIN_POSITIVE);
                        let args = GenerateImageArgs {
                            prompt: prompt.text.clone(),
                            style,
                            size,
                            n: 1,
                            quality,
                            background: Background::Auto,
                            output_format: OutputFormat::Png,
                            output_compression: None,
                            model: None,
                        };
                        for user in &users {
                            let p = p_size * p_quality * p_style * p_tool * p_prompt * user_share;
                            let facts = CallFacts {
                                org: &mix.org,
                                user,
                                tool: &tool,
                                asked: args.asked(),
                            };
                            let selected = routes.select(&facts).map_err(|e| anyhow::anyhow!(e))?;
                            let (router, strategy) = match &selected {
                                Some(s) => (s.router.as_ref(), s.strategy),
                                None => (default, Strategy::InOrder),
                            };
                            match serve(router, strategy, &args, &tool, catalog, fallback) {
                                Some((model, usd)) => {
                                    cost += p * usd;
                                    images += p;
                                    *models.entry(model).or_default() += p;
                                }
                                None => unserved += p,
                            }
                        }
                    }
                }
            }
        }
    }
    for share in models.values_mut() {
        *share /= images.max(f64::MIN_POSITIVE);
    }
    Ok(SimResult {
        cost_per_image: cost / images.max(f64::MIN_POSITIVE),
        models,
        unserved,
    })
}

/// The model that would serve the call and its estimated cost.
fn serve(
    router: &ModelRouter,
    strategy: Strategy,
    args: &GenerateImageArgs,
    tool: &str,
    catalog: &ModelCatalog,
    fallback: Pricing,
) -> Option<(String, f64)> {
    let edit = tool == "edit_image";
    let request_options = crate::media::types::ImageOptions {
        size: args.size,
        n: args.n,
        quality: args.quality,
        background: args.background,
        output_format: args.output_format,
        output_compression: args.output_compression,
        edit,
    };
    let inputs = CostInputs {
        size: args.size,
        quality: args.quality,
        n: args.n,
        prompt_chars: args.prompt.chars().count(),
        input_images: usize::from(edit),
    };
    let mut candidates: Vec<(String, f64)> = router
        .backends()
        .map(|b| b.model().to_string())
        .filter(|model| catalog.get(model).is_none_or(|c| c.check(&request_options).is_ok()))
        .map(|model| {
            let pricing = catalog.get(&model).map_or(fallback, |c| c.pricing());
            let usd = estimate(&pricing, &inputs);
            (model, usd)
        })
        .collect();
    if strategy == Strategy::Cheapest {
        candidates.sort_by(|a, b| a.1.total_cmp(&b.1));
    }
    candidates.into_iter().next()
}

/// The markdown table of several configurations against the KPI.
pub fn table(results: &[(String, SimResult)], kpi: f64) -> String {
    let mut out = String::from(
        "| configuration | USD per image | meets the KPI | images by model | unserved |\n|---|---|---|---|---|\n",
    );
    for (name, result) in results {
        let models = result
            .models
            .iter()
            .map(|(m, share)| format!("{m} {:.0} %", share * 100.0))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| {name} | {:.5} | {} | {models} | {:.1} % |\n",
            result.cost_per_image,
            if result.cost_per_image <= kpi { "yes" } else { "no" },
            result.unserved * 100.0
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(json: serde_json::Value) -> Mix {
        serde_json::from_value(json).unwrap()
    }

    const NO_PRICE: Pricing = Pricing {
        input_per_million_tokens: 0.0,
        output_per_million_tokens: 0.0,
        per_image: 0.0,
    };

    /// A case worked out by hand: gpt-image-1-mini costs 272 × $8/M +
    /// (prompt ⌈12/4⌉ = 3 tokens) × $2/M = $0.002182 at low quality and
    /// 1,056 × $8/M + 3 × $2/M = $0.008454 at medium; sd3.5-medium $0.035
    /// per image. Logos (30 %) go to sd3.5-medium by a rule, the rest to
    /// the mini, half low and half medium:
    /// 0.7 × (0.5 × 0.002182 + 0.5 × 0.008454) + 0.3 × 0.035 = 0.0142226.
    #[test]
    fn a_hand_computed_mix() {
        let catalog = Arc::new(ModelCatalog::builtin().unwrap());
        let spec: RoutesSpec = serde_json::from_value(serde_json::json!({
            "rules": [{"prompt_keywords": ["logo"], "route": ["stability:sd3.5-medium"]}]
        }))
        .unwrap();
        let (routes, default) = routes(spec, vec!["openai:gpt-image-1-mini".into()], &catalog).unwrap();
        let traffic = mix(serde_json::json!({
            "sizes": {"1024x1024": 1.0},
            "qualities": {"low": 1.0, "medium": 1.0},
            "prompts": [{"share": 7, "text": "a quiet bay"}, {"share": 3, "text": "a logo, bold"}]
        }));
        // sd3.5-medium takes quality `auto` only: low/medium logos need the rule's chain to serve them.
        let result = simulate(&traffic, &routes, &default, &catalog, NO_PRICE).unwrap();
        let mini_low = 272.0 * 8.0 / 1e6 + 3.0 * 2.0 / 1e6;
        let mini_medium = 1056.0 * 8.0 / 1e6 + 3.0 * 2.0 / 1e6;
        let expected_served = 0.7 * (0.5 * mini_low + 0.5 * mini_medium);
        assert!((result.unserved - 0.3).abs() < 1e-9, "{result:?}");
        assert!(
            (result.cost_per_image - expected_served / 0.7).abs() < 1e-9,
            "{result:?}"
        );

        // Logos that can be served: quality `auto`, where sd3.5-medium takes it.
        let traffic = mix(serde_json::json!({
            "sizes": {"1024x1024": 1.0},
            "qualities": {"auto": 1.0},
            "prompts": [{"share": 7, "text": "a quiet bay"}, {"share": 3, "text": "a logo, bold"}]
        }));
        let result = simulate(&traffic, &routes, &default, &catalog, NO_PRICE).unwrap();
        let expected = 0.7 * mini_medium + 0.3 * 0.035;
        assert!((result.cost_per_image - expected).abs() < 1e-9, "{result:?}");
        assert!((result.models["sd3.5-medium"] - 0.3).abs() < 1e-9);
    }

    #[test]
    fn arms_split_the_cost_by_their_weights() {
        let catalog = Arc::new(ModelCatalog::builtin().unwrap());
        let spec: RoutesSpec = serde_json::from_value(serde_json::json!({
            "default": {"arms": [
                {"name": "free", "weight": 75, "models": ["offline-preview:offline-preview"]},
                {"name": "paid", "weight": 25, "models": ["stability:sd3.5-medium"]}]}
        }))
        .unwrap();
        let (routes, default) = routes(spec, vec!["openai:gpt-image-2".into()], &catalog).unwrap();
        let traffic = mix(serde_json::json!({
            "users": 2000,
            "sizes": {"1024x1024": 1.0},
            "qualities": {"auto": 1.0},
            "prompts": [{"share": 1, "text": "x"}]
        }));
        let result = simulate(&traffic, &routes, &default, &catalog, NO_PRICE).unwrap();
        assert!((result.cost_per_image - 0.25 * 0.035).abs() < 0.0005, "{result:?}");
        let table = table(&[("arms".into(), result)], 0.002);
        assert!(table.contains("| arms | 0.00"), "{table}");
    }
}
