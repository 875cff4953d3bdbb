//! The image vocabulary every part shares: sizes, qualities, backgrounds,
//! file formats, what a call asks for, and token usage. It depends on
//! nothing else in the crate, so backends, storage, pricing and the tool
//! surface can all use it without importing each other.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An image size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct ImageSize {
    pub width: u32,
    pub height: u32,
}

impl ImageSize {
    pub fn parse(value: &str) -> Option<ImageSize> {
        let (w, h) = value.split_once('x')?;
        let side = |s: &str| {
            let digits = !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit()) && !s.starts_with('0');
            digits.then(|| s.parse::<u32>().ok()).flatten()
        };
        Some(ImageSize {
            width: side(w)?,
            height: side(h)?,
        })
    }
}

impl std::fmt::Display for ImageSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Quality {
    Low,
    Medium,
    High,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    Transparent,
    Opaque,
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    Png,
    Jpeg,
    Webp,
}

/// How closely an edit keeps the input's faces and details (OpenAI's `input_fidelity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputFidelity {
    Low,
    High,
}

impl InputFidelity {
    pub const ALL: [InputFidelity; 2] = [InputFidelity::Low, InputFidelity::High];
    pub fn as_str(self) -> &'static str {
        match self {
            InputFidelity::Low => "low",
            InputFidelity::High => "high",
        }
    }
}

impl Quality {
    pub const ALL: [Quality; 4] = [Quality::Low, Quality::Medium, Quality::High, Quality::Auto];
    pub fn as_str(self) -> &'static str {
        match self {
            Quality::Low => "low",
            Quality::Medium => "medium",
            Quality::High => "high",
            Quality::Auto => "auto",
        }
    }
}

impl Background {
    pub const ALL: [Background; 3] = [Background::Transparent, Background::Opaque, Background::Auto];
    pub fn as_str(self) -> &'static str {
        match self {
            Background::Transparent => "transparent",
            Background::Opaque => "opaque",
            Background::Auto => "auto",
        }
    }
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 3] = [OutputFormat::Png, OutputFormat::Jpeg, OutputFormat::Webp];
    pub fn as_str(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpeg",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn mime_type(self) -> &'static str {
        match self {
            OutputFormat::Png => "image/png",
            OutputFormat::Jpeg => "image/jpeg",
            OutputFormat::Webp => "image/webp",
        }
    }

    /// The file extension of stored images.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Png => "png",
            OutputFormat::Jpeg => "jpg",
            OutputFormat::Webp => "webp",
        }
    }

    pub fn from_extension(extension: &str) -> Option<OutputFormat> {
        OutputFormat::ALL.into_iter().find(|f| f.extension() == extension)
    }

    /// Whether `bytes` start like a file of this format.
    pub fn matches(self, bytes: &[u8]) -> bool {
        match self {
            OutputFormat::Png => bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            OutputFormat::Jpeg => bytes.starts_with(&[0xFF, 0xD8, 0xFF]),
            OutputFormat::Webp => bytes.len() >= 12 && bytes.starts_with(b"RIFF") && bytes.get(8..12) == Some(b"WEBP"),
        }
    }

    /// Whether the format can carry an alpha channel.
    pub fn has_alpha(self) -> bool {
        !matches!(self, OutputFormat::Jpeg)
    }
}

/// What a `generate_image` call asks for, beyond the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageOptions {
    pub size: ImageSize,
    pub n: u8,
    pub quality: Quality,
    pub background: Background,
    pub output_format: OutputFormat,
    /// 0-100, JPEG and WebP only.
    pub output_compression: Option<u8>,
    /// An edit of input images rather than a generation.
    pub edit: bool,
}

/// Token usage as reported by the provider.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
}
