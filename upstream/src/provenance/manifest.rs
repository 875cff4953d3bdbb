//! What one image's C2PA manifest says, as a c2pa manifest definition:
//! the gateway as claim generator, a `c2pa.actions.v2` assertion with the
//! model as software agent and the AI source type, and for an edit every
//! input image as an ingredient (the edited one `parentOf`, the others
//! `componentOf`) and, for an in-paint, the changed region. Never the
//! prompt, the user or the organisation: images outlive erasure requests
//! once downloaded.

use serde_json::{json, Value};

use super::TRAINED_ALGORITHMIC_MEDIA;
use crate::media::input::Region;
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
    /// An edit: what it started from.
    pub edit: Option<EditFacts<'a>>,
}

/// What an edit started from.
#[derive(Debug, Clone, Copy)]
pub struct EditFacts<'a> {
    /// Every input image, the edited one first; each one's own manifest,
    /// if any, is kept as its ingredient's.
    pub inputs: &'a [Source<'a>],
    /// An in-paint: the rectangle of this image that changed, in its pixels.
    pub region: Option<Region>,
}

/// One input image of an edit.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub bytes: &'a [u8],
    pub format: OutputFormat,
}

/// The software agent an image names: its model and provider.
pub fn software_agent(model: &str, provider: &str) -> String {
    format!("{model} ({provider})")
}

/// The ingredient label of an edit's input `index` (0: the edited image).
pub fn input_label(index: usize) -> String {
    match index {
        0 => SOURCE_INGREDIENT.to_string(),
        n => format!("input-{n}"),
    }
}

/// The claim's hash algorithm, pinned: a PNG's data hash is computed by
/// the gateway itself (`sign::sign_png`), and c2pa labels it with the
/// claim's algorithm.
pub const HASH_ALG: &str = "sha256";

/// The manifest definition for `facts`, with the manifest label `label`.
pub fn definition(facts: &ImageFacts<'_>, label: &str) -> Value {
    json!({
        "label": label,
        "hash_alg": HASH_ALG,
        "title": format!("image.{}", facts.format.extension()),
        "format": facts.format.mime_type(),
        "claim_generator_info": [{"name": GENERATOR, "version": env!("CARGO_PKG_VERSION")}],
        "assertions": [{"label": "c2pa.actions.v2", "data": {"actions": actions(facts)}}],
    })
}

/// The ingredient definition of an edit's input `index`: the edited image
/// is the `parentOf`, the others (guiding the model) `componentOf`.
pub fn input_ingredient(source: &Source<'_>, index: usize) -> Value {
    let (title, relationship) = match index {
        0 => ("source".to_string(), "parentOf"),
        n => (format!("input {n}"), "componentOf"),
    };
    json!({
        "title": format!("{title}.{}", source.format.extension()),
        "format": source.format.mime_type(),
        "relationship": relationship,
        "label": input_label(index),
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

/// A generation is `c2pa.created`; an edit opens its source, then
/// `c2pa.edited` from every input, naming an in-paint's region.
fn actions(facts: &ImageFacts<'_>) -> Vec<Value> {
    let agent = json!({"name": software_agent(facts.model, facts.provider)});
    let Some(edit) = facts.edit else {
        return vec![json!({
            "action": "c2pa.created",
            "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
            "softwareAgent": agent,
        })];
    };
    let inputs: Vec<String> = (0..edit.inputs.len().max(1)).map(input_label).collect();
    let mut edited = json!({
        "action": "c2pa.edited",
        "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
        "softwareAgent": agent,
        "parameters": {"ingredientIds": inputs},
    });
    if let Some(region) = edit.region {
        edited["changes"] = json!([changed_region(region)]);
    }
    vec![
        json!({
            "action": "c2pa.opened",
            "parameters": {"ingredientIds": [SOURCE_INGREDIENT]},
        }),
        edited,
    ]
}

/// A region of interest (C2PA `region-map`): one spatial rectangle in pixels.
fn changed_region(region: Region) -> Value {
    json!({
        "region": [{
            "type": "spatial",
            "shape": {
                "type": "rectangle",
                "unit": "pixel",
                "origin": {"x": region.x, "y": region.y},
                "width": region.width,
                "height": region.height,
            },
        }],
        // No `role`: c2pa 0.90 cannot read its own `c2pa.edited` role back from CBOR.
        "description": "the in-painted region",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUTS: [Source<'static>; 2] = [
        Source {
            bytes: b"",
            format: OutputFormat::Png,
        },
        Source {
            bytes: b"",
            format: OutputFormat::Jpeg,
        },
    ];

    fn facts(edit: Option<EditFacts<'static>>) -> ImageFacts<'static> {
        ImageFacts {
            model: "gpt-image-1",
            provider: "openai",
            format: OutputFormat::Jpeg,
            edit,
        }
    }

    fn actions_of(definition: &Value) -> &Value {
        &definition["assertions"][0]["data"]["actions"]
    }

    #[test]
    fn a_generation_is_created_by_the_model_as_ai_media() {
        let definition = definition(&facts(None), "urn:c2pa:x");
        let actions = actions_of(&definition);
        assert_eq!(definition["assertions"][0]["label"], "c2pa.actions.v2");
        assert_eq!(actions.as_array().unwrap().len(), 1);
        assert_eq!(actions[0]["action"], "c2pa.created");
        assert_eq!(actions[0]["digitalSourceType"], TRAINED_ALGORITHMIC_MEDIA);
        assert_eq!(actions[0]["softwareAgent"]["name"], "gpt-image-1 (openai)");
        assert_eq!(definition["claim_generator_info"][0]["name"], GENERATOR);
        assert_eq!(definition["format"], "image/jpeg");
    }

    #[test]
    fn an_edit_opens_its_source_then_edits_from_every_input() {
        let edit = EditFacts {
            inputs: &INPUTS,
            region: None,
        };
        let definition = definition(&facts(Some(edit)), "urn:c2pa:x");
        let actions = actions_of(&definition);
        assert_eq!(actions[0]["action"], "c2pa.opened");
        assert_eq!(actions[0]["parameters"]["ingredientIds"], json!([SOURCE_INGREDIENT]));
        assert_eq!(actions[1]["action"], "c2pa.edited");
        assert_eq!(
            actions[1]["parameters"]["ingredientIds"],
            json!([SOURCE_INGREDIENT, "input-1"])
        );
        assert!(actions[1].get("changes").is_none(), "no region: the whole image");
        assert_eq!(input_ingredient(&INPUTS[0], 0)["relationship"], "parentOf");
        let other = input_ingredient(&INPUTS[1], 1);
        assert_eq!(other["relationship"], "componentOf");
        assert_eq!(other["label"], "input-1");
        assert_eq!(other["format"], "image/jpeg");
    }

    #[test]
    fn an_in_paint_names_its_region_in_pixels() {
        let edit = EditFacts {
            inputs: &INPUTS[..1],
            region: Some(Region {
                x: 10,
                y: 20,
                width: 300,
                height: 40,
            }),
        };
        let definition = definition(&facts(Some(edit)), "urn:c2pa:x");
        let change = &actions_of(&definition)[1]["changes"][0];
        assert_eq!(change["region"][0]["type"], "spatial");
        assert_eq!(
            change["region"][0]["shape"],
            json!({"type": "rectangle", "unit": "pixel", "origin": {"x": 10, "y": 20}, "width": 300, "height": 40})
        );
        // The form c2pa itself reads back as a region of interest.
        let parsed: c2pa::assertions::region_of_interest::RegionOfInterest =
            serde_json::from_value(change.clone()).unwrap();
        assert_eq!(parsed.region.len(), 1);
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
