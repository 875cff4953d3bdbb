//! `mcp-image-gateway provenance verify FILE|URL [--anchor PEM]`: reads an
//! image's Content Credentials and says whether they are valid (and
//! trusted, given the root to trust), who signed them, what was done, and
//! the chain of images it was made from. Any C2PA tool can do the same;
//! this one needs nothing but the gateway's binary.

use std::path::PathBuf;

use anyhow::Context;

use crate::media::types::OutputFormat;
use crate::provenance::verify::{verify, Report};

/// Largest image fetched or read (the gateway's own images are far smaller).
const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// Reads `source` (a path or an http(s) URL) and checks its credentials.
pub async fn check(source: &str, anchor: Option<&PathBuf>) -> anyhow::Result<Report> {
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        let response = reqwest::get(source).await?.error_for_status()?;
        if response.content_length().unwrap_or_default() > MAX_IMAGE_BYTES as u64 {
            anyhow::bail!("{source} is over {MAX_IMAGE_BYTES} bytes");
        }
        response.bytes().await?.to_vec()
    } else {
        std::fs::read(source).with_context(|| format!("reading {source}"))?
    };
    anyhow::ensure!(
        bytes.len() <= MAX_IMAGE_BYTES,
        "{source} is over {MAX_IMAGE_BYTES} bytes"
    );
    let format = OutputFormat::ALL
        .into_iter()
        .find(|f| f.matches(&bytes))
        .ok_or_else(|| anyhow::anyhow!("{source} is not a PNG, JPEG or WebP image"))?;
    let anchors = anchor
        .map(|path| std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display())))
        .transpose()?;
    verify(&bytes, format.mime_type(), anchors.as_deref()).map_err(|e| anyhow::anyhow!("{source}: {e}"))
}

/// Whether `report` passes: with an anchor only `Trusted` does (c2pa calls
/// a self-consistent manifest under any other root `Valid`), without one
/// anything not `Invalid`.
pub fn passes(report: &Report, anchored: bool) -> bool {
    if anchored {
        report.state == "Trusted"
    } else {
        report.is_valid()
    }
}

/// The report as lines for a terminal.
pub fn render(report: &Report) -> String {
    let mut out = format!("validation: {}\n", report.state);
    let line = |name: &str, value: Option<&str>| format!("{name}: {}\n", value.unwrap_or("-"));
    out += &line("manifest", report.manifest_label.as_deref());
    out += &line("signer", report.signer.as_deref());
    out += &format!("claim generator: {}\n", report.claim_generator.join(", "));
    for action in &report.actions {
        out += &format!("action: {}\n", describe(action));
    }
    for (depth, ingredient) in report.ingredients.iter().enumerate() {
        out += &format!(
            "{}made from: {} signed by {}\n",
            "  ".repeat(depth),
            ingredient["manifest_label"].as_str().unwrap_or("(no manifest)"),
            ingredient["signer"].as_str().unwrap_or("-"),
        );
        for action in ingredient["actions"].as_array().into_iter().flatten() {
            out += &format!("{}  action: {}\n", "  ".repeat(depth), describe(action));
        }
    }
    for failure in &report.failures {
        out += &format!("failure: {failure}\n");
    }
    out
}

fn describe(action: &serde_json::Value) -> String {
    let mut text = action["action"].as_str().unwrap_or("?").to_string();
    if let Some(agent) = action["software_agent"].as_str() {
        text += &format!(" by {agent}");
    }
    if let Some(source) = action["digital_source_type"].as_str() {
        text += &format!(" ({})", source.rsplit('/').next().unwrap_or(source));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(state: &str) -> Report {
        Report {
            state: state.into(),
            manifest_label: None,
            signer: None,
            claim_generator: vec![],
            actions: vec![],
            ingredients: vec![],
            failures: vec![],
        }
    }

    #[test]
    fn with_an_anchor_only_trusted_passes() {
        assert!(passes(&report("Trusted"), true));
        assert!(!passes(&report("Valid"), true));
        assert!(!passes(&report("Invalid"), true));
        assert!(passes(&report("Valid"), false));
        assert!(!passes(&report("Invalid"), false));
    }
}
