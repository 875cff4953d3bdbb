//! Cost estimates: provider-reported token usage times the configured token
//! prices when the provider reports usage, else a price per image.

use crate::media::types::Usage;

/// Prices in USD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pricing {
    pub input_per_million_tokens: f64,
    pub output_per_million_tokens: f64,
    pub per_image: f64,
}

impl Pricing {
    /// The estimated cost of `images` images and how it was priced.
    pub fn cost(&self, usage: Option<Usage>, images: usize) -> (f64, &'static str) {
        match usage {
            Some(usage) => (
                usage.input_tokens as f64 * self.input_per_million_tokens / 1e6
                    + usage.output_tokens as f64 * self.output_per_million_tokens / 1e6,
                "tokens",
            ),
            None => (images as f64 * self.per_image, "per_image"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_when_reported_else_per_image() {
        let pricing = Pricing {
            input_per_million_tokens: 5.0,
            output_per_million_tokens: 40.0,
            per_image: 0.02,
        };
        let (cost, how) = pricing.cost(
            Some(Usage {
                input_tokens: 100_000,
                output_tokens: 50_000,
            }),
            1,
        );
        assert_eq!(how, "tokens");
        assert!((cost - 2.5).abs() < 1e-9, "{cost}");
        assert_eq!(pricing.cost(None, 3), (0.06, "per_image"));
    }
}
