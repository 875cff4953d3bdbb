//! OpenAI's moderations endpoint and the self-hosted servers that copy it
//! (https://platform.openai.com/docs/api-reference/moderations/create):
//! `POST {base}/moderations` with `{"model": "omni-moderation-latest",
//! "input": [{"type": "text", "text": …} | {"type": "image_url", "image_url":
//! {"url": "data:image/png;base64,…"}}]}`; each of the answer's `results` has
//! `flagged`, `categories` (booleans) and `category_scores` (0 to 1); every
//! result counts. The API moderates at most one image per request. Errors
//! come in the Images API's envelope and map the same way (`openai::map_error`).
//! One request per call here; retries, the breaker, metrics and the GenAI
//! span are `policy::moderator`'s, as the chain's are for image models.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::response_body;
use super::BackendError;

pub const DEFAULT_MODEL: &str = "omni-moderation-latest";
/// The setting an operator changes when the moderation model is retired.
pub const MODEL_SETTING: &str = "GATEWAY_MODERATION_MODEL";
/// A moderation answer is small; anything longer is not one.
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// Where the moderation model is and how long one request may take.
#[derive(Debug, Clone)]
pub struct ModerationSettings {
    pub base_url: String,
    pub api_key: String,
    pub model: String,
    pub timeout: Duration,
}

/// One part of what is moderated.
#[derive(Debug, Clone)]
pub enum ModerationInput {
    Text(String),
    /// An image's bytes and MIME type, sent as a `data:` URL.
    Image {
        bytes: Bytes,
        mime: &'static str,
    },
}

/// The model's verdict on one request (all its `results`, combined).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ModerationResult {
    pub flagged: bool,
    #[serde(default)]
    pub categories: BTreeMap<String, bool>,
    #[serde(default)]
    pub category_scores: BTreeMap<String, f64>,
}

#[derive(Serialize)]
struct Body<'a> {
    model: &'a str,
    input: Vec<Part>,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Part {
    Text { text: String },
    ImageUrl { image_url: ImageUrl },
}

#[derive(Serialize)]
struct ImageUrl {
    url: String,
}

#[derive(Deserialize)]
struct Answer {
    results: Vec<ModerationResult>,
}

/// Client for one moderation endpoint.
pub struct ModerationClient {
    settings: ModerationSettings,
    http: reqwest::Client,
}

impl ModerationClient {
    pub fn new(settings: ModerationSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(Self { settings, http })
    }

    /// The provider, as the GenAI conventions name it, for spans.
    pub fn kind(&self) -> &'static str {
        "openai"
    }

    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// Asks the model about `inputs` (moderated together, as one request).
    pub async fn moderate(&self, inputs: &[ModerationInput]) -> Result<ModerationResult, BackendError> {
        let body = Body {
            model: &self.settings.model,
            input: inputs.iter().map(part).collect(),
        };
        let url = format!("{}/moderations", self.settings.base_url.trim_end_matches('/'));
        let mut call = self
            .http
            .post(url)
            .json(&body)
            .headers(crate::telemetry::traces::outgoing_headers());
        if !self.settings.api_key.is_empty() {
            call = call.bearer_auth(&self.settings.api_key);
        }
        let response = call.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let bytes = response_body::read(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|e| e.into_backend(|e| self.transport_error(&e)))?;
        if !status.is_success() {
            return Err(super::openai::map_error(
                status.as_u16(),
                retry_after,
                &bytes,
                &self.settings.model,
                MODEL_SETTING,
            ));
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| BackendError::InvalidResponse(format!("not a moderation answer: {e}")))?;
        combine(answer.results)
            .ok_or_else(|| BackendError::InvalidResponse("a moderation answer without results".into()))
    }

    fn transport_error(&self, error: &(dyn std::error::Error + 'static)) -> BackendError {
        if super::timed_out_waiting(error) {
            return BackendError::AnswerLost(format!(
                "no moderation answer within {} s (GATEWAY_MODERATION_TIMEOUT_SECS)",
                self.settings.timeout.as_secs()
            ));
        }
        super::transport_error(error, error.to_string())
    }
}

/// Every result of one answer as one verdict: flagged if any is, each
/// category flagged if any flags it, at its highest score (reading only the
/// first would let a later result's flag through).
fn combine(results: Vec<ModerationResult>) -> Option<ModerationResult> {
    results.into_iter().reduce(|mut all, result| {
        all.flagged |= result.flagged;
        for (category, flagged) in result.categories {
            *all.categories.entry(category).or_default() |= flagged;
        }
        for (category, score) in result.category_scores {
            let highest = all.category_scores.entry(category).or_insert(score);
            *highest = highest.max(score);
        }
        all
    })
}

fn part(input: &ModerationInput) -> Part {
    match input {
        ModerationInput::Text(text) => Part::Text { text: text.clone() },
        ModerationInput::Image { bytes, mime } => Part::ImageUrl {
            image_url: ImageUrl {
                url: format!(
                    "data:{mime};base64,{}",
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                ),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_body_is_the_documented_one() {
        let body = Body {
            model: DEFAULT_MODEL,
            input: [
                ModerationInput::Text("a cat".into()),
                ModerationInput::Image {
                    bytes: Bytes::from_static(b"\x89PNG"),
                    mime: "image/png",
                },
            ]
            .iter()
            .map(part)
            .collect(),
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"model": "omni-moderation-latest", "input": [
                {"type": "text", "text": "a cat"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw=="}}
            ]})
        );
    }

    #[test]
    fn an_answer_reads() {
        let answer: Answer = serde_json::from_value(serde_json::json!({
            "id": "modr-1", "model": "omni-moderation-latest",
            "results": [{"flagged": true,
                         "categories": {"violence": true, "sexual": false},
                         "category_scores": {"violence": 0.91, "sexual": 0.01},
                         "category_applied_input_types": {"violence": ["image"], "sexual": []}}]
        }))
        .unwrap();
        let result = &answer.results[0];
        assert!(result.flagged);
        assert_eq!(result.categories.get("violence"), Some(&true));
        assert_eq!(result.category_scores.get("violence"), Some(&0.91));
    }

    #[test]
    fn every_result_counts() {
        let answer: Answer = serde_json::from_value(serde_json::json!({"results": [
            {"flagged": false, "categories": {"violence": false, "hate": false},
             "category_scores": {"violence": 0.2, "hate": 0.01}},
            {"flagged": true, "categories": {"violence": true, "hate": false},
             "category_scores": {"violence": 0.1, "hate": 0.3}}
        ]}))
        .unwrap();
        let result = combine(answer.results).unwrap();
        assert!(result.flagged);
        assert_eq!(result.categories.get("violence"), Some(&true));
        assert_eq!(result.categories.get("hate"), Some(&false));
        assert_eq!(result.category_scores.get("violence"), Some(&0.2));
        assert_eq!(result.category_scores.get("hate"), Some(&0.3));
        assert!(combine(Vec::new()).is_none());
    }
}
