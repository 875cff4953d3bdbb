//! `generate_image` arguments: the published JSON Schema and a validator
//! whose errors name the offending field.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use crate::media::input::Region;
use crate::media::style::Style;
use crate::media::types::{Background, ImageSize, InputFidelity, OutputFormat, Quality};
use crate::routing::rules::Asked;

pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MAX_IMAGES: u64 = 4;
/// Sizes every model offers, as `WIDTHxHEIGHT`; models may take more (see `list_models`).
pub const SIZES: [&str; 3] = ["1024x1024", "1536x1024", "1024x1536"];
/// Largest side the argument parser lets through to the model check.
const MAX_SIDE: u32 = 8192;

/// Validated arguments of one `generate_image` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateImageArgs {
    pub prompt: String,
    pub style: Style,
    pub size: ImageSize,
    pub n: u8,
    pub quality: Quality,
    pub background: Background,
    pub output_format: OutputFormat,
    pub output_compression: Option<u8>,
    /// A model the caller asked for by name (one its organisation may choose).
    pub model: Option<String>,
}

impl GenerateImageArgs {
    /// What routing rules read of these arguments.
    pub fn asked(&self) -> Asked<'_> {
        Asked {
            prompt: &self.prompt,
            style: self.style,
            size: self.size,
            n: self.n,
            quality: self.quality,
            background: self.background,
            model: self.model.as_deref(),
        }
    }
}

/// Whether a client speaking `protocol_version` hears of bad arguments as a
/// tool result with `isError: true` (SEP-1303, 2025-11-25 and later) rather
/// than JSON-RPC -32602. Versions are dates, so they order as strings; no
/// header means 2025-03-26.
pub fn errors_are_tool_results(protocol_version: Option<&str>) -> bool {
    protocol_version.is_some_and(|version| version.trim() >= "2025-11-25")
}

/// The tool's input schema (JSON Schema 2020-12).
pub fn input_schema() -> Arc<Map<String, Value>> {
    let schema = json!({
        "type": "object",
        "properties": {
            "prompt": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PROMPT_CHARS,
                "description": "What to draw, in natural language."
            },
            "style": {
                "type": "string",
                "enum": Style::ALL.map(Style::as_str),
                "default": "default",
                "description": "Style preset applied to the prompt."
            },
            "size": {
                "type": "string",
                "pattern": "^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$",
                "examples": SIZES,
                "default": "1024x1024",
                "description": "Image size in pixels, WIDTHxHEIGHT. 1024x1024, 1536x1024 and 1024x1536 work everywhere; list_models tells which other sizes each model takes."
            },
            "quality": {
                "type": "string",
                "enum": Quality::ALL.map(Quality::as_str),
                "default": "auto",
                "description": "Rendering quality: higher is slower and costs more."
            },
            "background": {
                "type": "string",
                "enum": Background::ALL.map(Background::as_str),
                "default": "auto",
                "description": "transparent needs a model that supports it and output_format png or webp."
            },
            "output_format": {
                "type": "string",
                "enum": OutputFormat::ALL.map(OutputFormat::as_str),
                "default": "png",
                "description": "File format of the images."
            },
            "output_compression": {
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
                "description": "Compression level 0-100 for jpeg and webp."
            },
            "n": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_IMAGES,
                "default": 1,
                "description": "How many images to generate."
            },
            "model": {
                "type": "string",
                "minLength": 1,
                "maxLength": 100,
                "description": "Optional: a model list_models offers your organisation (`selectable`); the gateway chooses when it is left out. Fallbacks still apply, and the result names the model that served."
            }
        },
        "required": ["prompt"],
        "additionalProperties": false
    });
    object(schema)
}

/// A schema written as `json!` as the map rmcp takes.
fn object(schema: Value) -> Arc<Map<String, Value>> {
    match schema {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(Map::new()),
    }
}

/// Validates raw `generate_image` arguments. The error names the field and the rule.
pub fn parse(arguments: Option<&Map<String, Value>>) -> Result<GenerateImageArgs, String> {
    let empty = Map::new();
    parse_common(arguments.unwrap_or(&empty), &ARGUMENTS)
}

/// The arguments both tools share; `allowed` lists every argument the tool takes.
fn parse_common(arguments: &Map<String, Value>, allowed: &[&str]) -> Result<GenerateImageArgs, String> {
    if let Some(unknown) = arguments.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown argument `{unknown}`; expected {}", allowed.join(", ")));
    }
    let prompt = match arguments.get("prompt") {
        Some(Value::String(p)) => p.clone(),
        Some(_) => return Err("`prompt` must be a string".into()),
        None => return Err("`prompt` is required".into()),
    };
    let chars = prompt.chars().count();
    if prompt.trim().is_empty() || chars > MAX_PROMPT_CHARS {
        return Err(format!(
            "`prompt` must be 1 to {MAX_PROMPT_CHARS} characters and not blank (got {chars})"
        ));
    }
    let style = match arguments.get("style") {
        None => Style::Default,
        Some(Value::String(s)) => Style::parse(s).ok_or_else(|| {
            format!("`style` must be one of default, photorealistic, illustration, anime (got {s:?})")
        })?,
        Some(_) => return Err("`style` must be a string".into()),
    };
    let size = match arguments.get("size") {
        None => ImageSize {
            width: 1024,
            height: 1024,
        },
        Some(Value::String(s)) => match ImageSize::parse(s) {
            Some(size) if size.width <= MAX_SIDE && size.height <= MAX_SIDE => size,
            _ => {
                return Err(format!(
                    "`size` must be WIDTHxHEIGHT in pixels, such as {} (got {s:?})",
                    SIZES.join(", ")
                ))
            }
        },
        Some(_) => return Err("`size` must be a string".into()),
    };
    let n = match arguments.get("n") {
        None => 1,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n @ 1..=MAX_IMAGES) => n as u8,
            _ => return Err(format!("`n` must be an integer from 1 to {MAX_IMAGES} (got {n})")),
        },
        Some(_) => return Err(format!("`n` must be an integer from 1 to {MAX_IMAGES}")),
    };
    let quality = choice(arguments, "quality", Quality::Auto, &Quality::ALL, |q| q.as_str())?;
    let background = choice(arguments, "background", Background::Auto, &Background::ALL, |b| {
        b.as_str()
    })?;
    let output_format = choice(arguments, "output_format", OutputFormat::Png, &OutputFormat::ALL, |f| {
        f.as_str()
    })?;
    let output_compression = match arguments.get("output_compression") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(c @ 0..=100) => Some(c as u8),
            _ => {
                return Err(format!(
                    "`output_compression` must be an integer from 0 to 100 (got {n})"
                ))
            }
        },
        Some(_) => return Err("`output_compression` must be an integer from 0 to 100".into()),
    };
    let model = match arguments.get("model") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if (1..=100).contains(&m.len()) => Some(m.clone()),
        Some(_) => return Err("`model` must be a model name from list_models".into()),
    };
    Ok(GenerateImageArgs {
        prompt,
        style,
        size,
        n,
        quality,
        background,
        output_format,
        output_compression,
        model,
    })
}

const ARGUMENTS: [&str; 9] = [
    "prompt",
    "style",
    "size",
    "n",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "model",
];

/// One of a fixed set of string values, or `default` when absent.
fn choice<T: Copy>(
    arguments: &Map<String, Value>,
    field: &str,
    default: T,
    all: &[T],
    name: impl Fn(T) -> &'static str,
) -> Result<T, String> {
    let names = || all.iter().map(|v| name(*v)).collect::<Vec<_>>().join(", ");
    match arguments.get(field) {
        None => Ok(default),
        Some(Value::String(s)) => all
            .iter()
            .copied()
            .find(|v| name(*v) == s)
            .ok_or_else(|| format!("`{field}` must be one of {} (got {s:?})", names())),
        Some(_) => Err(format!("`{field}` must be a string, one of {}", names())),
    }
}

/// Most image references one edit takes (the first is edited, the rest guide it).
pub const MAX_EDIT_IMAGES: usize = 16;
/// Longest reference accepted (a signed link is about 200 characters).
const MAX_REFERENCE_CHARS: usize = 2048;
const EDIT_ARGUMENTS: [&str; 13] = [
    "prompt",
    "style",
    "size",
    "n",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "images",
    "mask",
    "mask_region",
    "input_fidelity",
    "model",
];

/// Validated arguments of one `edit_image` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditImageArgs {
    /// The shared arguments; `base.size` is only meaningful when `size_given`.
    pub base: GenerateImageArgs,
    pub size_given: bool,
    pub images: Vec<String>,
    pub mask: Option<String>,
    pub mask_region: Option<Region>,
    pub input_fidelity: Option<InputFidelity>,
}

/// Validates raw `edit_image` arguments.
pub fn parse_edit(arguments: Option<&Map<String, Value>>) -> Result<EditImageArgs, String> {
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    let base = parse_common(arguments, &EDIT_ARGUMENTS)?;
    let images = match arguments.get("images") {
        Some(Value::Array(items)) if (1..=MAX_EDIT_IMAGES).contains(&items.len()) => items
            .iter()
            .map(|item| match item {
                Value::String(s) if !s.is_empty() && s.chars().count() <= MAX_REFERENCE_CHARS => Ok(s.clone()),
                _ => Err(format!(
                    "every entry of `images` must be an image reference (a string of 1 to {MAX_REFERENCE_CHARS} characters)"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(format!(
                "`images` must list 1 to {MAX_EDIT_IMAGES} image references; the first is the image to edit"
            ))
        }
        None => return Err("`images` is required: the image to edit first (image://…, upload://… or a link from generate_image)".into()),
    };
    let mask = match arguments.get("mask") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_REFERENCE_CHARS => Some(s.clone()),
        Some(_) => return Err("`mask` must be an image reference (a PNG with an alpha channel)".into()),
    };
    let mask_region = match arguments.get("mask_region") {
        None | Some(Value::Null) => None,
        Some(Value::Object(region)) => {
            let field = |name: &str| {
                region
                    .get(name)
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| {
                        format!("`mask_region.{name}` must be a non-negative integer (pixels of the first image)")
                    })
            };
            if let Some(unknown) = region
                .keys()
                .find(|k| !["x", "y", "width", "height"].contains(&k.as_str()))
            {
                return Err(format!(
                    "unknown field `mask_region.{unknown}`; expected x, y, width, height"
                ));
            }
            Some(Region {
                x: field("x")?,
                y: field("y")?,
                width: field("width")?,
                height: field("height")?,
            })
        }
        Some(_) => return Err("`mask_region` must be an object {x, y, width, height} in pixels".into()),
    };
    if mask.is_some() && mask_region.is_some() {
        return Err("give `mask` or `mask_region`, not both".into());
    }
    let input_fidelity = match arguments.get("input_fidelity") {
        None | Some(Value::Null) => None,
        Some(_) => Some(choice(
            arguments,
            "input_fidelity",
            InputFidelity::Low,
            &InputFidelity::ALL,
            |f| f.as_str(),
        )?),
    };
    Ok(EditImageArgs {
        size_given: arguments.contains_key("size"),
        base,
        images,
        mask,
        mask_region,
        input_fidelity,
    })
}

/// The input schema of `edit_image`: the shared fields plus the edit's own.
pub fn edit_input_schema() -> Arc<Map<String, Value>> {
    let mut schema = (*input_schema()).clone();
    if let Some(Value::Object(properties)) = schema.get_mut("properties") {
        if let Some(Value::Object(size)) = properties.get_mut("size") {
            size.remove("default");
            size.insert(
                "description".into(),
                "Output size, WIDTHxHEIGHT. Default: the first image's size where the model allows it, else the nearest size it allows (the result says which).".into(),
            );
        }
        let reference = json!({"type": "string", "minLength": 1, "maxLength": MAX_REFERENCE_CHARS});
        properties.insert(
            "images".into(),
            json!({
                "type": "array",
                "items": reference,
                "minItems": 1,
                "maxItems": MAX_EDIT_IMAGES,
                "description": "Image references: image://… or a link returned by generate_image/edit_image, upload://… from create_upload, or an https URL on the operator's allow-list. The first image is edited; the others are references the model may draw on."
            }),
        );
        properties.insert(
            "mask".into(),
            json!({"type": "string", "minLength": 1, "maxLength": MAX_REFERENCE_CHARS,
                   "description": "Reference to a PNG with an alpha channel, the size of the first image: its fully transparent pixels mark the area to change. Not with mask_region."}),
        );
        properties.insert(
            "mask_region".into(),
            json!({
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": 0},
                    "y": {"type": "integer", "minimum": 0},
                    "width": {"type": "integer", "minimum": 1},
                    "height": {"type": "integer", "minimum": 1}
                },
                "required": ["x", "y", "width", "height"],
                "additionalProperties": false,
                "description": "The rectangle of the first image to change, in pixels; the gateway draws the mask. Not with mask."
            }),
        );
        properties.insert(
            "input_fidelity".into(),
            json!({"type": "string", "enum": InputFidelity::ALL.map(InputFidelity::as_str),
                   "description": "How closely to keep faces and details of the input (models that support it)."}),
        );
    }
    schema.insert("required".into(), json!(["prompt", "images"]));
    Arc::new(schema)
}

/// The input schema of `create_upload`.
pub fn upload_input_schema() -> Arc<Map<String, Value>> {
    let schema = json!({
        "type": "object",
        "properties": {
            "content_type": {
                "type": "string",
                "enum": OutputFormat::ALL.map(OutputFormat::mime_type),
                "description": "The image type you will upload."
            }
        },
        "required": ["content_type"],
        "additionalProperties": false
    });
    object(schema)
}

/// Validates `create_upload` arguments: the format of the coming upload.
pub fn parse_upload(arguments: Option<&Map<String, Value>>) -> Result<OutputFormat, String> {
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    if let Some(unknown) = arguments.keys().find(|k| k.as_str() != "content_type") {
        return Err(format!("unknown argument `{unknown}`; expected content_type"));
    }
    let types = OutputFormat::ALL.map(OutputFormat::mime_type).join(", ");
    match arguments.get("content_type") {
        Some(Value::String(value)) => OutputFormat::ALL
            .into_iter()
            .find(|f| f.mime_type() == value)
            .ok_or_else(|| format!("`content_type` must be one of {types} (got {value:?})")),
        _ => Err(format!("`content_type` is required: one of {types}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Result<GenerateImageArgs, String> {
        parse(v.as_object())
    }

    #[test]
    fn argument_errors_are_tool_results_from_2025_11_25() {
        let cases = [
            (None, false),
            (Some("2025-03-26"), false),
            (Some("2025-06-18"), false),
            (Some("2025-11-25"), true),
            (Some("2026-07-28"), true),
        ];
        for (version, expected) in cases {
            assert_eq!(errors_are_tool_results(version), expected, "{version:?}");
        }
    }

    #[test]
    fn defaults() {
        let a = args(json!({"prompt": "a red fox"})).unwrap();
        assert_eq!(a.style, Style::Default);
        assert_eq!(
            a.size,
            ImageSize {
                width: 1024,
                height: 1024
            }
        );
        assert_eq!(a.n, 1);
        let a = args(json!({"prompt": "x", "style": "anime", "size": "1536x1024", "n": 4})).unwrap();
        assert_eq!(
            (a.style, a.size.width, a.size.height, a.n),
            (Style::Anime, 1536, 1024, 4)
        );
    }

    #[test]
    fn errors_name_the_field() {
        let long = "é".repeat(MAX_PROMPT_CHARS + 1);
        let cases = [
            (json!({}), "`prompt` is required"),
            (json!({"prompt": 5}), "`prompt` must be a string"),
            (json!({"prompt": ""}), "`prompt` must be 1 to 4000"),
            (json!({"prompt": "   "}), "`prompt` must be 1 to 4000"),
            (json!({"prompt": long}), "(got 4001)"),
            (json!({"prompt": "x", "style": "cubism"}), "`style` must be one of"),
            (json!({"prompt": "x", "size": "big"}), "`size` must be WIDTHxHEIGHT"),
            (json!({"prompt": "x", "size": "0x512"}), "`size` must be WIDTHxHEIGHT"),
            (
                json!({"prompt": "x", "size": "99999x512"}),
                "`size` must be WIDTHxHEIGHT",
            ),
            (
                json!({"prompt": "x", "quality": "hd"}),
                "`quality` must be one of low, medium, high, auto",
            ),
            (
                json!({"prompt": "x", "background": "clear"}),
                "`background` must be one of transparent",
            ),
            (
                json!({"prompt": "x", "output_format": "gif"}),
                "`output_format` must be one of png, jpeg, webp",
            ),
            (
                json!({"prompt": "x", "output_format": 1}),
                "`output_format` must be a string",
            ),
            (
                json!({"prompt": "x", "output_compression": 101}),
                "`output_compression` must be an integer from 0 to 100",
            ),
            (json!({"prompt": "x", "size": 1024}), "`size` must be a string"),
            (json!({"prompt": "x", "n": 0}), "`n` must be an integer from 1 to 4"),
            (json!({"prompt": "x", "n": 5}), "`n` must be an integer from 1 to 4"),
            (json!({"prompt": "x", "n": 1.5}), "`n` must be an integer"),
            (json!({"prompt": "x", "n": "2"}), "`n` must be an integer"),
            (json!({"prompt": "x", "seed": 1}), "unknown argument `seed`"),
        ];
        for (input, expected) in cases {
            let err = args(input.clone()).unwrap_err();
            assert!(err.contains(expected), "{input}: {err}");
        }
        assert!(args(json!({"prompt": "é".repeat(MAX_PROMPT_CHARS)})).is_ok());
    }

    #[test]
    fn schema_matches_the_validator() {
        let schema = input_schema();
        assert_eq!(schema["properties"]["size"]["examples"], json!(SIZES));
        assert_eq!(schema["properties"]["output_format"]["default"], json!("png"));
        let mut names: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        names.sort();
        let mut expected = ARGUMENTS.to_vec();
        expected.sort();
        assert_eq!(names, expected, "the schema and the parser know the same arguments");
        assert_eq!(schema["properties"]["n"]["maximum"], json!(MAX_IMAGES));
        assert_eq!(schema["required"], json!(["prompt"]));
    }
}
