//! Arbitrary bytes as a foreign image (an edit's uploaded or referenced
//! source, a provider's output) through the reading of its C2PA manifest
//! for an ingredient: any input must yield an ingredient or an error,
//! within the fuzzer's time and memory limits, never a panic (the pipeline
//! guards against one, but a panic in c2pa is a bug to report).
//!
//! The first byte picks the format the bytes are presented as (PNG, JPEG,
//! WebP) and which reading runs (an edit's input, a provider's output);
//! the rest is the image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_image_gateway::media::types::OutputFormat;
use mcp_image_gateway::provenance::manifest::{ImageFacts, Source};
use mcp_image_gateway::provenance::sign;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let format = match selector % 3 {
        0 => OutputFormat::Png,
        1 => OutputFormat::Jpeg,
        _ => OutputFormat::Webp,
    };
    if selector / 3 % 2 == 0 {
        let mut budget = sign::MAX_FOREIGN_MANIFEST_BYTES;
        let _ = sign::input_ingredient(&Source { bytes, format }, 0, &mut budget);
    } else {
        let facts = ImageFacts {
            model: "gpt-image-1",
            provider: "openai",
            format,
            edit: None,
        };
        let _ = sign::provider_ingredient(bytes, &facts);
    }
});
