//! What one image's C2PA manifest says, as a c2pa manifest definition:
//! the gateway as claim generator, a `c2pa.actions.v2` assertion with the
//! model as software agent and the AI source type, and for an edit the
//! source image as the `parentOf` ingredient. Never the prompt, the user or
//! the organisation: images outlive erasure requests once downloaded.

use serde_json::{json, Value};

use super::TRAINED_ALGORITHMIC_MEDIA;
use crate::media::types::OutputFormat;

/// The claim generator's name.
pub const GENERATOR: &str = "mcp-image-gateway";

/// The ingredient label actions refer to the source image by.
pub const SOURCE_INGREDIENT: &str = "source";

/// The ingredient label of the provider's own signed image.
pub const PROVIDER_INGREDIENT: &str = "provider";

/// The facts one image's manifest records.
#[derive(Debug, Clone, Copy)]
pub struct ImageFacts<'a> {
    /// The model that made the image, as the provider names it.
    pub model: &'a str,
    /// The provider kind (`openai`, `stability`, `openai-compatible`, `offline-preview`).
    pub provider: &'a str,
    pub format: OutputFormat,
    /// An edit: the image it started from.
    pub source: Option<Source<'a>>,
}

/// The image an edit started from; its own manifest, if any, is kept as the ingredient's.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub bytes: &'a [u8],
    pub format: OutputFormat,
}

/// The manifest definition for `facts`, with the manifest label `label`.
pub fn definition(facts: &ImageFacts<'_>, label: &str) -> Value {
    json!({
        "label": label,
        "title": format!("image.{}", facts.format.extension()),
        "format": facts.format.mime_type(),
        "claim_generator_info": [{"name": GENERATOR, "version": env!("CARGO_PKG_VERSION")}],
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions(facts)}}],
    })
}

/// The ingredient definition of an edit's source image.
pub fn source_ingredient(source: &Source<'_>) -> Value {
    json!({
        "title": format!("source.{}", source.format.extension()),
        "format": source.format.mime_type(),
        "relationship": "parentOf",
        "label": SOURCE_INGREDIENT,
    })
}

/// The ingredient definition of a provider image that carried Content
/// Credentials of its own (OpenAI's do): a component of ours.
pub fn provider_ingredient(facts: &ImageFacts<'_>) -> Value {
    json!({
        "title": format!("{} output.{}", facts.provider, facts.format.extension()),
        "format": facts.format.mime_type(),
        "relationship": "componentOf",
        "label": PROVIDER_INGREDIENT,
    })
}

/// A generation is `c2pa.created`; an edit opens its source, then `c2pa.edited`.
fn actions(facts: &ImageFacts<'_>) -> Vec<Value> {
    let agent = json!({"name": format!("{} ({})", facts.model, facts.provider)});
    match facts.source {
        None => vec![json!({
            "action": "c2pa.created",
            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": agent,
        })],
        Some(_) => vec![
            json!({
                "action": "c2pa.opened",
                "parameters": {"ingredientIds": [SOURCE_INGREDIENT]},
            }),
            json!({
                "action": "c2pa.edited",
                "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                "softwareAgent": agent,
                "parameters": {"ingredientIds": [SOURCE_INGREDIENT]},
            }),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(source: Option<Source<'static>>) -> ImageFacts<'static> {
        ImageFacts {
            model: "gpt-image-1",
            provider: "openai",
            format: OutputFormat::Jpeg,
            source,
        }
    }

    #[test]
    fn a_generation_is_created_by_the_model_as_ai_media() {
        let definition = definition(&facts(None), "urn:c2pa:x");
        let actions = &definition["assertions"][0]["data"]["actions"];
        assert_eq!(definition["assertions"][0]["label"], "c2pa.actions.v2");
        assert_eq!(actions.as_array().unwrap().len(), 1);
        assert_eq!(actions[0]["action"], "c2pa.created");
        assert_eq!(actions[0]["digitalSourceType"], TRAINED_ALGORITHMIC_MEDIA);
        assert_eq!(actions[0]["softwareAgent"]["name"], "gpt-image-1 (openai)");
        assert_eq!(definition["claim_generator_info"][0]["name"], GENERATOR);
        assert_eq!(definition["format"], "image/jpeg");
    }

    #[test]
    fn an_edit_opens_its_source_then_edits_it() {
        let definition = definition(
            &facts(Some(Source {
                bytes: b"",
                format: OutputFormat::Png,
            })),
            "urn:c2pa:x",
        );
        let actions = &definition["assertions"][0]["data"]["actions"];
        assert_eq!(actions[0]["action"], "c2pa.opened");
        assert_eq!(actions[1]["action"], "c2pa.edited");
        assert_eq!(actions[1]["parameters"]["ingredientIds"][0], SOURCE_INGREDIENT);
    }

    #[test]
    fn the_manifest_names_no_caller() {
        // Only these facts reach the definition: nothing of the caller or prompt can.
        let text = definition(&facts(None), "urn:c2pa:x").to_string();
        for word in ["prompt", "user", "organisation", "organization"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
    }
}
