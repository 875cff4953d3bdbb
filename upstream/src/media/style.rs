//! Style presets, applied as documented prompt templates (see the book, docs/src/tools/generate-image.md).

use serde::{Deserialize, Serialize};

/// A style preset the caller may pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Default,
    Photorealistic,
    Illustration,
    Anime,
}

impl Style {
    pub const ALL: [Style; 4] = [Style::Default, Style::Photorealistic, Style::Illustration, Style::Anime];

    pub fn as_str(self) -> &'static str {
        match self {
            Style::Default => "default",
            Style::Photorealistic => "photorealistic",
            Style::Illustration => "illustration",
            Style::Anime => "anime",
        }
    }

    pub fn parse(value: &str) -> Option<Style> {
        Style::ALL.into_iter().find(|s| s.as_str() == value)
    }

    /// The prompt sent to the model for a user prompt in this style.
    pub fn apply(self, prompt: &str) -> String {
        match self {
            Style::Default => prompt.to_string(),
            Style::Photorealistic => format!(
                "A photorealistic image, natural lighting, realistic textures and true-to-life detail: {prompt}"
            ),
            Style::Illustration => {
                format!("A clean digital illustration with bold shapes and a cohesive colour palette: {prompt}")
            }
            Style::Anime => format!("An anime-style illustration with cel shading and expressive characters: {prompt}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_keeps_the_prompt_and_others_wrap_it() {
        assert_eq!(Style::Default.apply("a cat"), "a cat");
        for style in [Style::Photorealistic, Style::Illustration, Style::Anime] {
            let applied = style.apply("a cat");
            assert!(applied.ends_with(": a cat"), "{applied}");
            assert_ne!(applied, "a cat");
        }
        for style in Style::ALL {
            assert_eq!(Style::parse(style.as_str()), Some(style));
        }
        assert_eq!(Style::parse("Anime"), None);
    }
}
