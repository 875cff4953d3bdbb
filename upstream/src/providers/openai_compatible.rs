//! Self-hosted image servers that speak OpenAI's Images API (LocalAI, vLLM-style
//! gateways, on-prem deployments): the same `POST {base}/images/generations`
//! wire format and error envelope as `openai`, in its classic form —
//! `response_format: "b64_json"` asked for explicitly, PNG only, none of the
//! GPT-image options (`quality`, `background`, `moderation`, ...), which such
//! servers refuse as unknown parameters. The HTTP client is `openai`'s.

use std::time::Duration;

use super::openai::{Dialect, OpenAiBackend, OpenAiSettings};

/// The setting an operator changes when the server's model name changes.
pub const MODEL_SETTING: &str = "OPENAI_COMPATIBLE_MODEL";

/// A backend for the server at `base_url` (e.g. `http://localai:8080/v1`).
pub fn backend(
    base_url: &str,
    api_key: Option<&str>,
    model: &str,
    timeout: Duration,
    max_image_bytes: usize,
) -> anyhow::Result<OpenAiBackend> {
    OpenAiBackend::new(OpenAiSettings {
        api_key: api_key.unwrap_or_default().to_string(),
        base_url: base_url.to_string(),
        model: model.to_string(),
        organization: None,
        timeout,
        moderation: String::new(),
        dialect: Dialect::Compatible,
        max_image_bytes,
    })
}
