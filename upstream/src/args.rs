//! `generate_image` arguments: the published JSON Schema and a validator
//! whose errors name the offending field.

use std::sync::Arc;

use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::style::Style;

pub const MAX_PROMPT_CHARS: usize = 4000;
pub const MAX_IMAGES: u64 = 4;
/// Sizes the tool offers, as `WIDTHxHEIGHT`.
pub const SIZES: [&str; 3] = ["1024x1024", "1536x1024", "1024x1536"];

/// An image size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub fn parse(value: &str) -> Option<ImageSize> {
        let (w, h) = value.split_once('x')?;
        Some(ImageSize {
            width: w.parse().ok()?,
            height: h.parse().ok()?,
        })
    }
}

impl std::fmt::Display for ImageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

/// Validated arguments of one `generate_image` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerateImageArgs {
    pub prompt: String,
    pub style: Style,
    pub size: ImageSize,
    pub n: u8,
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
                "enum": SIZES,
                "default": "1024x1024",
                "description": "Image size in pixels, WIDTHxHEIGHT."
            },
            "n": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_IMAGES,
                "default": 1,
                "description": "How many images to generate."
            }
        },
        "required": ["prompt"],
        "additionalProperties": false
    });
    match schema {
        Value::Object(map) => Arc::new(map),
        _ => Arc::new(Map::new()),
    }
}

/// Validates raw tool arguments. The error names the field and the rule.
pub fn parse(arguments: Option<&Map<String, Value>>) -> Result<GenerateImageArgs, String> {
    let empty = Map::new();
    let arguments = arguments.unwrap_or(&empty);
    if let Some(unknown) = arguments
        .keys()
        .find(|k| !matches!(k.as_str(), "prompt" | "style" | "size" | "n"))
    {
        return Err(format!("unknown argument `{unknown}`; expected prompt, style, size, n"));
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
        Some(Value::String(s)) if SIZES.contains(&s.as_str()) => {
            ImageSize::parse(s).ok_or_else(|| format!("`size` {s:?} is malformed"))?
        }
        Some(Value::String(s)) => return Err(format!("`size` must be one of {} (got {s:?})", SIZES.join(", "))),
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
    Ok(GenerateImageArgs { prompt, style, size, n })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: Value) -> Result<GenerateImageArgs, String> {
        parse(v.as_object())
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
            (json!({"prompt": "x", "size": "512x512"}), "`size` must be one of"),
            (json!({"prompt": "x", "size": 1024}), "`size` must be a string"),
            (json!({"prompt": "x", "n": 0}), "`n` must be an integer from 1 to 4"),
            (json!({"prompt": "x", "n": 5}), "`n` must be an integer from 1 to 4"),
            (json!({"prompt": "x", "n": 1.5}), "`n` must be an integer"),
            (json!({"prompt": "x", "n": "2"}), "`n` must be an integer"),
            (json!({"prompt": "x", "quality": "hd"}), "unknown argument `quality`"),
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
        assert_eq!(schema["properties"]["size"]["enum"], json!(SIZES));
        assert_eq!(schema["properties"]["n"]["maximum"], json!(MAX_IMAGES));
        assert_eq!(schema["required"], json!(["prompt"]));
    }
}
