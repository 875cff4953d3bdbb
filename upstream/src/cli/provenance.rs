//! `mcp-image-gateway provenance verify FILE|URL [--anchor PEM]`: reads an
//! image's Content Credentials and says whether they are valid (and
//! trusted, given the root to trust), who signed them, what was done, and
//! the chain of images it was made from. Any C2PA tool can do the same;
//! this one needs nothing but the gateway's binary.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::media::types::OutputFormat;
use crate::provenance::verify::{verify, Report};

/// Largest image fetched or read (the gateway's own images are far smaller).
const MAX_IMAGE_BYTES: usize = 64 * 1024 * 1024;

/// Reads `source` (a path or an http(s) URL) and checks its credentials.
pub async fn check(source: &str, anchor: Option<&PathBuf>) -> anyhow::Result<Report> {
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        fetch(source, MAX_IMAGE_BYTES).await?
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

/// GETs `url` with timeouts, at most 3 redirects, and the body read in
/// chunks that stop at `limit` bytes, whatever the server claims.
async fn fetch(url: &str, limit: usize) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()?;
    let mut response = client.get(url).send().await?.error_for_status()?;
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        anyhow::ensure!(bytes.len() + chunk.len() <= limit, "{url} is over {limit} bytes");
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
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
    let mut depth = 0;
    for ingredient in &report.ingredients {
        let indent = "  ".repeat(depth);
        let component = ingredient["relationship"] == "componentOf";
        out += &format!(
            "{indent}{}: {} signed by {}\n",
            if component { "component" } else { "made from" },
            ingredient["manifest_label"].as_str().unwrap_or("(no manifest)"),
            ingredient["signer"].as_str().unwrap_or("-"),
        );
        for action in ingredient["actions"].as_array().into_iter().flatten() {
            out += &format!("{indent}  action: {}\n", describe(action));
        }
        for failure in ingredient["failures"].as_array().into_iter().flatten() {
            out += &format!("{indent}  ingredient failure: {}\n", failure.as_str().unwrap_or("?"));
        }
        if !component {
            depth += 1;
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
    let region = &action["region"];
    if region.is_object() {
        text += &format!(
            ", region {}x{} at {},{}",
            region["width"], region["height"], region["x"], region["y"]
        );
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

    /// A server on 127.0.0.1 answering every request with `reply`.
    async fn serve(reply: &'static [u8]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = socket.read(&mut request).await;
                    let _ = socket.write_all(reply).await;
                });
            }
        });
        format!("http://{address}/image.png")
    }

    #[tokio::test]
    async fn a_fetch_stops_at_the_limit_and_after_three_redirects() {
        let body = serve(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789abcdefghij").await;
        assert_eq!(fetch(&body, 20).await.unwrap().len(), 20);
        let error = fetch(&body, 10).await.unwrap_err();
        assert!(error.to_string().contains("over 10 bytes"), "{error}");
        let looping = serve(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n").await;
        let error = fetch(&looping, 20).await.unwrap_err();
        assert!(format!("{error:#}").contains("redirect"), "{error:#}");
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
