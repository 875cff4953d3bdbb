//! Arbitrary bytes as a foreign image (an edit's uploaded or referenced
//! source, a provider's output) through the reading of its C2PA manifest
//! for an ingredient: any input must yield an ingredient or an error,
//! within the fuzzer's time and memory limits, never a panic (the pipeline
//! guards against one, but a panic in c2pa is a bug to report).
//!
//! The first byte picks the format the bytes are presented as (PNG, JPEG,
//! WebP) and which reading runs (an edit's input, a provider's output, or
//! where a PNG's manifest would be placed when it is signed); the rest is
//! the image.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mcp_image_gateway::media::types::OutputFormat;
use mcp_image_gateway::provenance::manifest::{ImageFacts, Source};
use mcp_image_gateway::provenance::{png_chunks, sign};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let format = match selector % 3 {
        0 => OutputFormat::Png,
        1 => OutputFormat::Jpeg,
        _ => OutputFormat::Webp,
    };
    match selector / 3 % 3 {
        0 => {
            let mut budget = sign::MAX_FOREIGN_MANIFEST_BYTES;
            let _ = sign::input_ingredient(&Source { bytes, format }, 0, &mut budget);
        }
        1 => {
            let facts = ImageFacts {
                model: "gpt-image-1",
                provider: "openai",
                format,
                edit: None,
            };
            let _ = sign::provider_ingredient(bytes, &facts);
        }
        _ => placement(bytes),
    }
});

/// A PNG's layout keeps its bytes in order, and the PNG rebuilt with a
/// manifest in its place walks back to that one manifest, right after
/// `IHDR`, around the same kept bytes.
fn placement(bytes: &[u8]) {
    let Some(layout) = png_chunks::layout(bytes) else {
        return;
    };
    let mut end = 0;
    for range in layout.kept() {
        assert!(range.start >= end && range.start < range.end && range.end <= bytes.len());
        end = range.end;
    }
    let manifest = [&[0, 0, 0, 1], b"caBX".as_slice(), &[7], &[0, 0, 0, 0]].concat();
    let mut signed = bytes[layout.head.clone()].to_vec();
    signed.extend_from_slice(&manifest);
    layout
        .tail
        .iter()
        .for_each(|range| signed.extend_from_slice(&bytes[range.clone()]));
    let again = png_chunks::layout(&signed).expect("the signed PNG walks");
    assert_eq!(again.head, layout.head);
    let after = layout.head.end + manifest.len();
    assert!(
        again.tail.first().is_none_or(|range| range.start == after),
        "the manifest right after IHDR"
    );
    let kept =
        |png: &[u8], layout: &png_chunks::Layout| layout.kept().flat_map(|r| png[r].to_vec()).collect::<Vec<u8>>();
    assert_eq!(kept(&signed, &again), kept(bytes, &layout), "the same bytes hashed");
    // And c2pa's own reader finds that manifest, not another or none.
    let found = c2pa::jumbf_io::load_jumbf_from_memory("image/png", &signed).ok();
    assert_eq!(found.as_deref(), Some(&[7u8][..]), "c2pa reads our manifest");
}
