//! What each image model can do: the capability table requests are checked
//! against before a provider is called, so a caller learns what the chosen
//! model accepts instead of meeting a provider 400.
//!
//! The built-in table (`models.json`, as of November 2026) is data, not code:
//! `GATEWAY_MODELS_FILE` replaces it with an operator's own copy when a
//! provider adds a model, changes prices or retires one.

use std::collections::BTreeMap;
use std::path::Path;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::media::types::{Background, ImageOptions, ImageSize, OutputFormat, Quality};
use crate::routing::capacity::Reserve;
use crate::routing::pools::PoolLimits;
use crate::routing::pricing::Pricing;

/// Provider names a capability row may give.
pub const PROVIDERS: [&str; 4] = ["openai", "openai-compatible", "stability", "offline-preview"];

const BUILTIN: &str = include_str!("models.json");

/// Sizes beyond the fixed list: any `WxH` within these bounds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomSizes {
    /// Both sides must be multiples of this.
    pub multiple_of: u32,
    /// The long side over the short one, at most.
    pub max_aspect_ratio: f64,
    /// The longest long side, in pixels.
    pub max_long_edge: u32,
    /// The longest short side, in pixels.
    pub max_short_edge: u32,
    /// The fewest pixels in all.
    #[serde(default)]
    pub min_pixels: u64,
}

impl CustomSizes {
    fn accepts(&self, size: ImageSize) -> bool {
        let (long, short) = (size.width.max(size.height), size.width.min(size.height));
        short > 0
            && size.width.is_multiple_of(self.multiple_of)
            && size.height.is_multiple_of(self.multiple_of)
            && f64::from(long) / f64::from(short) <= self.max_aspect_ratio
            && long <= self.max_long_edge
            && short <= self.max_short_edge
            && u64::from(size.width) * u64::from(size.height) >= self.min_pixels
    }

    fn describe(&self) -> String {
        format!(
            "any WIDTHxHEIGHT with both sides multiples of {}, aspect ratio within {}:1, at most {}x{}{}",
            self.multiple_of,
            self.max_aspect_ratio,
            self.max_long_edge,
            self.max_short_edge,
            if self.min_pixels > 0 {
                format!(" and at least {} pixels", self.min_pixels)
            } else {
                String::new()
            }
        )
    }
}

/// One model's row of the table, as written in the file.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelCapabilities {
    /// The provider's model name.
    pub model: String,
    /// The provider that serves it (`openai`, `stability`,
    /// `openai-compatible`, `offline-preview`): where a bare model name in
    /// `GATEWAY_FALLBACK_MODELS` or a routes file binds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Fixed sizes, `WIDTHxHEIGHT`.
    pub sizes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_sizes: Option<CustomSizes>,
    /// The qualities it takes (`low`, `medium`, `high`, `auto`).
    pub qualities: Vec<Quality>,
    /// The formats it writes (`png`, `jpeg`, `webp`).
    pub output_formats: Vec<OutputFormat>,
    /// Whether `background: "transparent"` works.
    pub transparent_background: bool,
    /// Whether the model edits images (`edit_image`).
    #[serde(default)]
    pub edits: bool,
    /// Whether the model draws from a prompt alone (`generate_image`);
    /// false for edit-only services such as Stability's in-painting.
    #[serde(default = "yes")]
    pub generates: bool,
    /// The most images one call may ask for (`n`).
    pub max_images: u8,
    /// Price per million input (prompt and input image) tokens, for cost estimates.
    #[serde(default)]
    pub usd_per_million_input_tokens: f64,
    /// Price per million output (image) tokens, for cost estimates.
    #[serde(default)]
    pub usd_per_million_output_tokens: f64,
    /// Price of one image when the provider reports no token usage.
    #[serde(default)]
    pub usd_per_image: f64,
    /// When the provider shuts the model down (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<String>,
    /// Quota kept for the routes file's `priority_orgs`: below it everyone
    /// else's calls go to the next model of their chain (operators only).
    #[serde(default, skip_serializing)]
    pub reserve: Option<Reserve>,
    /// A self-hosted pool's concurrency cap and wait line (operators only).
    #[serde(default, skip_serializing)]
    pub concurrency: Option<PoolLimits>,
}

impl ModelCapabilities {
    /// Why this model cannot serve `options`, in words a caller can act on.
    pub fn check(&self, options: &ImageOptions) -> Result<(), String> {
        let model = &self.model;
        if options.edit && !self.edits {
            return Err(format!("{model} does not edit images"));
        }
        if !options.edit && !self.generates {
            return Err(format!("{model} only edits images (edit_image)"));
        }
        let size = options.size;
        let fixed = self.sizes.iter().any(|s| ImageSize::parse(s) == Some(size));
        if !fixed && !self.custom_sizes.is_some_and(|c| c.accepts(size)) {
            let mut accepted = self.sizes.join(", ");
            if let Some(custom) = &self.custom_sizes {
                accepted.push_str(", or ");
                accepted.push_str(&custom.describe());
            }
            return Err(format!(
                "`size` {size} is not available on {model}; it accepts {accepted}"
            ));
        }
        if options.n > self.max_images {
            return Err(format!(
                "`n` {} is more than {model} makes per call ({})",
                options.n, self.max_images
            ));
        }
        if !self.qualities.contains(&options.quality) {
            return Err(format!(
                "`quality` {} is not available on {model}; it accepts {}",
                options.quality.as_str(),
                list(self.qualities.iter().map(|q| q.as_str()))
            ));
        }
        if !self.output_formats.contains(&options.output_format) {
            return Err(format!(
                "`output_format` {} is not available on {model}; it accepts {}",
                options.output_format.as_str(),
                list(self.output_formats.iter().map(|f| f.as_str()))
            ));
        }
        if options.background == Background::Transparent {
            if !self.transparent_background {
                return Err(format!(
                    "{model} cannot make transparent backgrounds; use `background` opaque or auto, or a model that can (see list_models)"
                ));
            }
            if !options.output_format.has_alpha() {
                return Err(
                    "a transparent `background` needs `output_format` png or webp (JPEG has no alpha channel)".into(),
                );
            }
        }
        if options.output_compression.is_some() && options.output_format == OutputFormat::Png {
            return Err("`output_compression` applies to jpeg and webp only".into());
        }
        Ok(())
    }

    pub fn pricing(&self) -> Pricing {
        Pricing {
            input_per_million_tokens: self.usd_per_million_input_tokens,
            output_per_million_tokens: self.usd_per_million_output_tokens,
            per_image: self.usd_per_image,
        }
    }
}

fn yes() -> bool {
    true
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// Why a capability table was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read the model table {0}: {1}")]
    Read(String, std::io::Error),
    #[error("the model table {0} is not valid: {1}")]
    Json(String, serde_json::Error),
    #[error("model table {origin}, model {model:?}: {problem}")]
    Invalid {
        origin: String,
        model: String,
        problem: String,
    },
}

/// The table, by model name.
#[derive(Debug, Clone)]
pub struct ModelCatalog {
    models: BTreeMap<String, ModelCapabilities>,
}

impl ModelCatalog {
    /// The built-in table.
    pub fn builtin() -> Result<Self, CatalogError> {
        Self::parse(BUILTIN, "models.json (built in)")
    }

    /// An operator's table (`GATEWAY_MODELS_FILE`), replacing the built-in one.
    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Read(origin.clone(), e))?;
        Self::parse(&text, &origin)
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self, CatalogError> {
        let rows: Vec<ModelCapabilities> =
            serde_json::from_str(text).map_err(|e| CatalogError::Json(origin.to_string(), e))?;
        let mut models = BTreeMap::new();
        for row in rows {
            let invalid = |problem: String| CatalogError::Invalid {
                origin: origin.to_string(),
                model: row.model.clone(),
                problem,
            };
            if let Some(bad) = row.sizes.iter().find(|s| ImageSize::parse(s).is_none()) {
                return Err(invalid(format!("size {bad:?} is not WIDTHxHEIGHT")));
            }
            if row.sizes.is_empty() && row.custom_sizes.is_none() {
                return Err(invalid("no sizes".into()));
            }
            if row.qualities.is_empty() || row.output_formats.is_empty() || row.max_images == 0 {
                return Err(invalid(
                    "qualities, output_formats and max_images must not be empty or 0".into(),
                ));
            }
            if row
                .custom_sizes
                .is_some_and(|c| c.multiple_of == 0 || c.max_aspect_ratio < 1.0)
            {
                return Err(invalid(
                    "custom_sizes needs multiple_of >= 1 and max_aspect_ratio >= 1".into(),
                ));
            }
            let prices = [
                row.usd_per_million_input_tokens,
                row.usd_per_million_output_tokens,
                row.usd_per_image,
            ];
            if prices.iter().any(|p| !p.is_finite() || *p < 0.0) {
                return Err(invalid("prices must be finite and not negative".into()));
            }
            if let Some(provider) = row.provider.as_deref().filter(|p| !PROVIDERS.contains(p)) {
                return Err(invalid(format!(
                    "provider {provider:?} is not one of {}",
                    PROVIDERS.join(", ")
                )));
            }
            if let Some(problem) = row.concurrency.and_then(|c| c.check().err()) {
                return Err(invalid(problem));
            }
            if let Some(problem) = row.reserve.and_then(|r| r.check().err()) {
                return Err(invalid(problem));
            }
            if models.insert(row.model.clone(), row.clone()).is_some() {
                return Err(invalid("listed twice".into()));
            }
        }
        Ok(Self { models })
    }

    pub fn get(&self, model: &str) -> Option<&ModelCapabilities> {
        self.models.get(model)
    }

    /// The provider a bare `model` name belongs to, if its row says.
    pub fn provider_of(&self, model: &str) -> Option<&str> {
        self.get(model)?.provider.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(size: &str) -> ImageOptions {
        ImageOptions {
            size: ImageSize::parse(size).unwrap(),
            n: 1,
            quality: Quality::Auto,
            background: Background::Auto,
            output_format: OutputFormat::Png,
            output_compression: None,
            edit: false,
        }
    }

    #[test]
    fn gpt_image_2_takes_custom_sizes_within_its_bounds() {
        let catalog = ModelCatalog::builtin().unwrap();
        let model = catalog.get("gpt-image-2").unwrap();
        for ok in [
            "1024x1024",
            "3840x2160",
            "2160x3840",
            "1280x720",
            "2400x800",
            "1024x768",
        ] {
            assert!(
                model.check(&options(ok)).is_ok(),
                "{ok}: {:?}",
                model.check(&options(ok))
            );
        }
        let cases = [
            ("1000x1000", "multiples of 16"),   // not a multiple of 16
            ("3856x2160", "at most 3840x2160"), // too wide
            ("2560x2560", "at most 3840x2160"), // short edge over 2160
            ("2496x800", "within 3:1"),         // 3.12:1
            ("512x512", "at least 655360"),     // too few pixels
        ];
        for (size, hint) in cases {
            let error = model.check(&options(size)).unwrap_err();
            assert!(
                error.contains(&format!("`size` {size} is not available on gpt-image-2")),
                "{error}"
            );
            assert!(error.contains(hint), "{size}: {error}");
        }
        let fixed_only = catalog.get("gpt-image-1.5").unwrap();
        let error = fixed_only.check(&options("1280x720")).unwrap_err();
        assert!(error.ends_with("it accepts 1024x1024, 1536x1024, 1024x1536"), "{error}");
    }

    #[test]
    fn options_are_checked_against_the_model() {
        let catalog = ModelCatalog::builtin().unwrap();
        let v2 = catalog.get("gpt-image-2").unwrap();
        let v15 = catalog.get("gpt-image-1.5").unwrap();
        let preview = catalog.get("offline-preview").unwrap();
        let transparent = ImageOptions {
            background: Background::Transparent,
            ..options("1024x1024")
        };
        assert!(v2
            .check(&transparent)
            .unwrap_err()
            .contains("cannot make transparent backgrounds"));
        assert!(v15.check(&transparent).is_ok());
        let transparent_jpeg = ImageOptions {
            output_format: OutputFormat::Jpeg,
            ..transparent
        };
        assert!(v15.check(&transparent_jpeg).unwrap_err().contains("png or webp"));
        let webp = ImageOptions {
            output_format: OutputFormat::Webp,
            output_compression: Some(80),
            ..options("1024x1024")
        };
        assert!(v2.check(&webp).is_ok());
        // offline-preview renders PNG, JPEG and WebP (lossless: the compression is a hint).
        assert!(preview.check(&webp).is_ok());
        let compressed_png = ImageOptions {
            output_compression: Some(50),
            ..options("1024x1024")
        };
        assert!(v2.check(&compressed_png).unwrap_err().contains("jpeg and webp only"));
        let many = ImageOptions {
            n: 5,
            ..options("1024x1024")
        };
        assert!(v2.check(&many).unwrap_err().contains("(4)"));
    }

    #[test]
    fn formats_are_recognised_by_their_bytes() {
        assert!(OutputFormat::Png.matches(b"\x89PNG\r\n\x1a\n...."));
        assert!(OutputFormat::Jpeg.matches(&[0xFF, 0xD8, 0xFF, 0xE0]));
        assert!(OutputFormat::Webp.matches(b"RIFF\x10\x00\x00\x00WEBPVP8 "));
        assert!(!OutputFormat::Webp.matches(b"RIFF\x10\x00\x00\x00WAVE"));
        assert!(!OutputFormat::Png.matches(&[0xFF, 0xD8, 0xFF]));
        assert_eq!(OutputFormat::from_extension("jpg"), Some(OutputFormat::Jpeg));
    }

    #[test]
    fn a_bad_table_is_refused_naming_the_model() {
        let cases = [
            (
                r#"[{"model": "m", "sizes": ["big"], "qualities": ["low"], "output_formats": ["png"], "transparent_background": false, "max_images": 1}]"#,
                "size \"big\"",
            ),
            (
                r#"[{"model": "m", "sizes": [], "qualities": ["low"], "output_formats": ["png"], "transparent_background": false, "max_images": 1}]"#,
                "no sizes",
            ),
            (
                r#"[{"model": "m", "sizes": ["1x1"], "qualities": ["ultra"], "output_formats": ["png"], "transparent_background": false, "max_images": 1}]"#,
                "ultra",
            ),
            (
                r#"[{"model": "m", "sizes": ["1x1"], "qualities": ["low"], "output_formats": ["png"], "transparent_background": false, "max_images": 1, "usd_per_image": -1}]"#,
                "prices",
            ),
        ];
        for (text, expected) in cases {
            let error = ModelCatalog::parse(text, "t.json").unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
    }
}
