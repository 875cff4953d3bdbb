//! What a call will cost before it is made, from the capability table's
//! prices: for token-priced models (OpenAI's GPT image models) the output
//! tokens an image of this quality and size takes, as OpenAI publishes them
//! for 1024x1024 (low 272, medium 1,056, high 4,160; `auto` counted as
//! medium) scaled by the pixel count, plus the prompt's and input images'
//! tokens; for the rest the price per image. Used to order a `cheapest`
//! chain, to reserve against a budget, and by the cost simulation; the
//! provider's reported usage settles the real cost afterwards.

use crate::media::types::{ImageSize, Quality};
use crate::routing::pricing::Pricing;

/// Tokens an input image of an edit adds (OpenAI counts a 1024x1024 input
/// at about this many at low fidelity).
pub const INPUT_IMAGE_TOKENS: u64 = 765;

/// What the estimate depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostInputs {
    pub size: ImageSize,
    pub quality: Quality,
    pub n: u8,
    pub prompt_chars: usize,
    /// Input images of an edit (0 for a generation).
    pub input_images: usize,
}

/// Output tokens of one image.
pub fn output_tokens(quality: Quality, size: ImageSize) -> u64 {
    let per_megapixel: u64 = match quality {
        Quality::Low => 272,
        Quality::Medium | Quality::Auto => 1056,
        Quality::High => 4160,
    };
    let pixels = u64::from(size.width) * u64::from(size.height);
    (per_megapixel * pixels).div_ceil(1024 * 1024)
}

/// Estimated USD for a call priced by `pricing`.
pub fn estimate(pricing: &Pricing, inputs: &CostInputs) -> f64 {
    if pricing.output_per_million_tokens > 0.0 {
        let input_tokens = (inputs.prompt_chars as u64).div_ceil(4) + inputs.input_images as u64 * INPUT_IMAGE_TOKENS;
        let output = output_tokens(inputs.quality, inputs.size) * u64::from(inputs.n);
        input_tokens as f64 * pricing.input_per_million_tokens / 1e6
            + output as f64 * pricing.output_per_million_tokens / 1e6
    } else {
        pricing.per_image * f64::from(inputs.n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(quality: Quality, size: &str, n: u8) -> CostInputs {
        CostInputs {
            size: ImageSize::parse(size).unwrap(),
            quality,
            n,
            prompt_chars: 400,
            input_images: 0,
        }
    }

    #[test]
    fn tokens_follow_quality_and_size() {
        let square = ImageSize::parse("1024x1024").unwrap();
        let wide = ImageSize::parse("1536x1024").unwrap();
        assert_eq!(output_tokens(Quality::Low, square), 272);
        assert_eq!(output_tokens(Quality::Auto, square), 1056);
        assert_eq!(output_tokens(Quality::High, wide), 6240);
    }

    #[test]
    fn hand_computed_estimates() {
        let tokens = Pricing {
            input_per_million_tokens: 5.0,
            output_per_million_tokens: 40.0,
            per_image: 0.0,
        };
        // 100 prompt tokens × $5/M + 2 × 4,160 output tokens × $40/M.
        let high = estimate(&tokens, &inputs(Quality::High, "1024x1024", 2));
        assert!((high - (100.0 * 5.0 + 8320.0 * 40.0) / 1e6).abs() < 1e-12, "{high}");
        let per_image = Pricing {
            input_per_million_tokens: 0.0,
            output_per_million_tokens: 0.0,
            per_image: 0.03,
        };
        assert!((estimate(&per_image, &inputs(Quality::High, "1024x1024", 3)) - 0.09).abs() < 1e-12);
        let edit = CostInputs {
            input_images: 2,
            ..inputs(Quality::Low, "1024x1024", 1)
        };
        let with_inputs = estimate(&tokens, &edit);
        assert!((with_inputs - ((100.0 + 1530.0) * 5.0 + 272.0 * 40.0) / 1e6).abs() < 1e-12);
    }
}
