//! OpenAI's GPT image models on `POST {base}/images/generations` and, for
//! edits, `POST {base}/images/edits` (multipart)
//! (https://platform.openai.com/docs/api-reference/images/create, /createEdit).
//! GPT image models always answer with `b64_json`; errors come as
//! `{"error": {"message", "type", "param", "code"}}`.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::response_body::{self, ReadError};
use super::{BackendError, EditInputs, GeneratedImage, Generation, ImageBackend, ImageRequest};
use crate::media::types::Usage;
use crate::media::types::{Background, OutputFormat};

pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
pub const DEFAULT_MODEL: &str = "gpt-image-2";
/// The setting an operator changes when a model is retired.
pub const MODEL_SETTING: &str = "OPENAI_IMAGE_MODEL";

/// Settings for the OpenAI backend.
#[derive(Debug, Clone)]
pub struct OpenAiSettings {
    pub api_key: String,
    pub base_url: String,
    pub model: String,
    pub organization: Option<String>,
    pub timeout: Duration,
    /// `moderation`: `auto` (the provider's default) or `low`.
    pub moderation: String,
    pub dialect: Dialect,
    /// The gateway's cap per image (`GATEWAY_MAX_IMAGE_BYTES`): it bounds
    /// how much of an answer is read.
    pub max_image_bytes: usize,
}

/// Which flavour of the Images API the server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI's GPT image models: every option, `b64_json` always.
    OpenAi,
    /// Self-hosted servers with the classic API (LocalAI and the like): `b64_json`
    /// must be asked for with `response_format`, PNG only, no GPT-image options.
    Compatible,
}

/// Client for the OpenAI Images API.
pub struct OpenAiBackend {
    settings: OpenAiSettings,
    http: reqwest::Client,
}

impl OpenAiBackend {
    pub fn new(settings: OpenAiSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { settings, http })
    }
}

#[derive(Serialize)]
struct GenerationBody<'a> {
    model: &'a str,
    prompt: &'a str,
    n: u8,
    size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    quality: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    background: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output_compression: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    moderation: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    partial_images: Option<u8>,
    user: &'a str,
}

/// Partial images asked for when streaming (the API allows 0 to 3).
const PARTIAL_IMAGES: u8 = 2;

/// One event of a streamed generation (`image_generation.partial_image`,
/// `image_generation.completed`, or `error`).
#[derive(Deserialize)]
struct StreamEvent {
    #[serde(rename = "type")]
    kind: String,
    b64_json: Option<String>,
    partial_image_index: Option<u32>,
    usage: Option<UsageBody>,
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct GenerationResponse {
    #[allow(dead_code)]
    created: i64,
    data: Vec<ImageData>,
    usage: Option<UsageBody>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
}

#[derive(Deserialize)]
struct UsageBody {
    input_tokens: u64,
    output_tokens: u64,
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    message: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
}

#[async_trait]
impl ImageBackend for OpenAiBackend {
    fn kind(&self) -> &'static str {
        match self.settings.dialect {
            Dialect::OpenAi => "openai",
            Dialect::Compatible => "openai-compatible",
        }
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    async fn generate(&self, request: &ImageRequest) -> Result<Generation, BackendError> {
        // Stream when someone listens for progress (one image per streamed call).
        let streaming = self.settings.dialect == Dialect::OpenAi && request.partials.is_some() && request.n == 1;
        let mut call = match &request.edit {
            Some(edit) => self.edit_call(request, edit, streaming)?,
            None => self.generation_call(request, streaming)?,
        };
        if !self.settings.api_key.is_empty() {
            call = call.bearer_auth(&self.settings.api_key);
        }
        if let Some(org) = &self.settings.organization {
            call = call.header("OpenAI-Organization", org);
        }
        // A self-hosted server continues the trace.
        call = call.headers(crate::telemetry::traces::outgoing_headers());
        let response = call.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        // The quota as this answer describes it, whatever its status.
        let quota = super::rate_limits::read(response.headers());
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        let with_quota = |mut generation: Generation| {
            generation.quota = quota.clone();
            generation
        };
        if streaming && status.is_success() {
            return self.read_stream(response, request).await.map(with_quota);
        }
        let limit = response_body::base64_images_limit(usize::from(request.n), self.settings.max_image_bytes);
        let bytes = response_body::read(response, limit)
            .await
            .map_err(|e| e.into_backend(|e| self.transport_error(&e)))?;
        if !status.is_success() {
            let setting = match self.settings.dialect {
                Dialect::OpenAi => MODEL_SETTING,
                Dialect::Compatible => super::openai_compatible::MODEL_SETTING,
            };
            return Err(map_error(
                status.as_u16(),
                retry_after,
                &bytes,
                &self.settings.model,
                setting,
            ));
        }
        // Megabytes of JSON and base64: parsed and decoded off the runtime.
        let (model, n, format) = (self.settings.model.clone(), request.n, request.output_format);
        crate::media::blocking::run(READING_IMAGES, move || {
            let parsed: GenerationResponse = serde_json::from_slice(&bytes)
                .map_err(|e| BackendError::InvalidResponse(format!("unexpected JSON: {e}")))?;
            decode(parsed, &model, n, format)
        })
        .await
        .map_err(BackendError::InvalidResponse)?
        .map(with_quota)
    }
}

impl OpenAiBackend {
    /// `POST /images/generations` with a JSON body.
    fn generation_call(
        &self,
        request: &ImageRequest,
        streaming: bool,
    ) -> Result<reqwest::RequestBuilder, BackendError> {
        let url = format!("{}/images/generations", self.settings.base_url.trim_end_matches('/'));
        let body = match self.settings.dialect {
            Dialect::OpenAi => GenerationBody {
                model: &self.settings.model,
                prompt: &request.prompt,
                n: request.n,
                size: request.size.to_string(),
                quality: Some(request.quality.as_str()),
                background: Some(request.background.as_str()),
                output_format: Some(request.output_format.as_str()),
                output_compression: request.output_compression,
                moderation: Some(request.moderation.unwrap_or(&self.settings.moderation)),
                response_format: None,
                stream: streaming.then_some(true),
                partial_images: streaming.then_some(PARTIAL_IMAGES),
                user: &request.user,
            },
            Dialect::Compatible => {
                let plain = request.output_format == OutputFormat::Png
                    && request.background != Background::Transparent
                    && request.output_compression.is_none();
                if !plain {
                    return Err(BackendError::BadRequest(format!(
                        "{} (an OpenAI-compatible server) makes PNGs without transparency only",
                        self.settings.model
                    )));
                }
                GenerationBody {
                    model: &self.settings.model,
                    prompt: &request.prompt,
                    n: request.n,
                    size: request.size.to_string(),
                    quality: None,
                    background: None,
                    output_format: None,
                    output_compression: None,
                    moderation: None,
                    response_format: Some("b64_json"),
                    stream: None,
                    partial_images: None,
                    user: &request.user,
                }
            }
        };
        Ok(self.http.post(&url).json(&body))
    }

    /// `POST /images/edits` as multipart: `image[]` parts (the image to edit
    /// first), `mask`, and the options; the classic dialect takes one `image`.
    fn edit_call(
        &self,
        request: &ImageRequest,
        edit: &EditInputs,
        streaming: bool,
    ) -> Result<reqwest::RequestBuilder, BackendError> {
        let url = format!("{}/images/edits", self.settings.base_url.trim_end_matches('/'));
        let file = |bytes: &Bytes, name: String, mime: &str| {
            reqwest::multipart::Part::stream_with_length(reqwest::Body::from(bytes.clone()), bytes.len() as u64)
                .file_name(name)
                .mime_str(mime)
                .map_err(|e| BackendError::InvalidResponse(format!("cannot build the edit request: {e}")))
        };
        let mut form = reqwest::multipart::Form::new()
            .text("model", self.settings.model.clone())
            .text("prompt", request.prompt.clone())
            .text("n", request.n.to_string())
            .text("size", request.size.to_string())
            .text("user", request.user.clone());
        let images: Vec<_> = match self.settings.dialect {
            Dialect::OpenAi => edit.images.iter().collect(),
            Dialect::Compatible => edit.images.iter().take(1).collect(),
        };
        let part_name = match self.settings.dialect {
            Dialect::OpenAi => "image[]",
            Dialect::Compatible => "image",
        };
        for (index, image) in images.into_iter().enumerate() {
            let name = format!("image-{}.{}", index + 1, image.format.extension());
            form = form.part(part_name, file(&image.bytes, name, image.format.mime_type())?);
        }
        if let Some(mask) = &edit.mask {
            form = form.part("mask", file(mask, "mask.png".into(), "image/png")?);
        }
        form = match self.settings.dialect {
            Dialect::OpenAi => {
                let mut form = form
                    .text("quality", request.quality.as_str())
                    .text("background", request.background.as_str())
                    .text("output_format", request.output_format.as_str());
                if let Some(compression) = request.output_compression {
                    form = form.text("output_compression", compression.to_string());
                }
                if let Some(fidelity) = edit.input_fidelity {
                    form = form.text("input_fidelity", fidelity.as_str());
                }
                if streaming {
                    form = form
                        .text("stream", "true")
                        .text("partial_images", PARTIAL_IMAGES.to_string());
                }
                form
            }
            Dialect::Compatible => form.text("response_format", "b64_json"),
        };
        Ok(self.http.post(&url).multipart(form))
    }

    /// A transport failure in words: a timeout waiting for the answer says
    /// so, with the limit. Never sent (no connection) or sent (the answer
    /// lost) as `super::transport_error` tells: the budget counts the second.
    fn transport_error(&self, error: &(dyn std::error::Error + 'static)) -> BackendError {
        if super::timed_out_waiting(error) {
            return BackendError::AnswerLost(format!(
                "no answer within {} s (timed out; OPENAI_TIMEOUT_SECS)",
                self.settings.timeout.as_secs()
            ));
        }
        super::transport_error(error, error.to_string())
    }

    /// Reads `image_generation.*` server-sent events: partial images are
    /// announced to the caller, the completed one is the result.
    async fn read_stream(
        &self,
        response: reqwest::Response,
        request: &ImageRequest,
    ) -> Result<Generation, BackendError> {
        use futures::StreamExt;
        // Partial images come as base64 too.
        let images = usize::from(request.n) + usize::from(PARTIAL_IMAGES);
        let limit = response_body::base64_images_limit(images, self.settings.max_image_bytes);
        let body = response_body::bounded(response.bytes_stream(), limit);
        let mut events = sse_stream::SseStream::from_bytes_stream(body);
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| match ReadError::find(&e) {
                Some(ReadError::TooLarge { limit }) => response_body::too_large(*limit),
                _ => self.transport_error(&e),
            })?;
            let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else {
                continue;
            };
            let parsed: StreamEvent = serde_json::from_str(&data)
                .map_err(|e| BackendError::InvalidResponse(format!("unexpected stream event: {e}")))?;
            match parsed.kind.as_str() {
                "image_generation.partial_image" => {
                    if let Some(sink) = &request.partials {
                        let _ = sink.send(super::Report::Partial(super::PartialImage {
                            index: parsed.partial_image_index.unwrap_or_default(),
                        }));
                    }
                }
                "image_generation.completed" => {
                    let completed = GenerationResponse {
                        created: 0,
                        data: vec![ImageData {
                            b64_json: parsed.b64_json,
                        }],
                        usage: parsed.usage,
                    };
                    let (model, n, format) = (self.settings.model.clone(), request.n, request.output_format);
                    return crate::media::blocking::run(READING_IMAGES, move || decode(completed, &model, n, format))
                        .await
                        .map_err(BackendError::InvalidResponse)?;
                }
                "error" => {
                    let message = parsed.error.map(|e| e.message).unwrap_or_else(|| data.clone());
                    return Err(BackendError::Provider { status: 200, message });
                }
                _ => {}
            }
        }
        Err(BackendError::InvalidResponse(
            "the image stream ended without a completed image".into(),
        ))
    }
}

/// What decoding an answer's images is called in errors.
const READING_IMAGES: &str = "reading the provider's images";

fn decode(parsed: GenerationResponse, model: &str, n: u8, format: OutputFormat) -> Result<Generation, BackendError> {
    if parsed.data.is_empty() || parsed.data.len() > usize::from(n) {
        return Err(BackendError::InvalidResponse(format!(
            "expected {n} image(s), got {}",
            parsed.data.len()
        )));
    }
    let mut images = Vec::with_capacity(parsed.data.len());
    for item in parsed.data {
        let b64 = item
            .b64_json
            .ok_or_else(|| BackendError::InvalidResponse("an image has no b64_json".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|e| BackendError::InvalidResponse(format!("b64_json is not base64: {e}")))?;
        if !format.matches(&bytes) {
            return Err(BackendError::InvalidResponse(format!(
                "the image is not {} as requested",
                format.as_str()
            )));
        }
        images.push(GeneratedImage {
            bytes: Bytes::from(bytes),
            format,
        });
    }
    Ok(Generation {
        images,
        model: model.to_string(),
        usage: parsed.usage.map(|u| Usage {
            input_tokens: u.input_tokens,
            output_tokens: u.output_tokens,
        }),
        quota: None,
    })
}

/// Maps an OpenAI error answer to a cause the caller can act on.
pub(super) fn map_error(
    status: u16,
    retry_after: Option<u64>,
    body: &[u8],
    model: &str,
    setting: &'static str,
) -> BackendError {
    let error = serde_json::from_slice::<ErrorEnvelope>(body).ok().map(|e| e.error);
    let message = error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    let code = error.as_ref().and_then(|e| e.code.as_deref());
    let kind = error.as_ref().and_then(|e| e.kind.as_deref());
    match (status, code) {
        (_, Some("model_not_found")) | (404, _) => BackendError::ModelNotFound {
            model: model.to_string(),
            setting,
        },
        (_, Some("moderation_blocked")) | (_, Some("content_policy_violation")) => {
            BackendError::ContentRefused(message)
        }
        // The same type also covers unsupported options ("Transparent background is
        // not supported for this model."): only moderation codes are refusals.
        (400, _) if kind == Some("image_generation_user_error") && message.contains("safety system") => {
            BackendError::ContentRefused(message)
        }
        (401, _) | (403, _) => BackendError::Unauthorized(message),
        (429, Some("insufficient_quota")) => BackendError::Provider { status, message },
        (429, _) => BackendError::RateLimited {
            retry_after_secs: retry_after,
        },
        (400..=499, _) => BackendError::BadRequest(message),
        _ => BackendError::Provider { status, message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping() {
        let body = |code: &str, kind: &str| {
            serde_json::json!({"error": {"message": "m", "type": kind, "param": null, "code": code}}).to_string()
        };
        let cases = [
            (
                404,
                None,
                body("model_not_found", "invalid_request_error"),
                "model_not_found",
            ),
            (
                400,
                None,
                body("moderation_blocked", "image_generation_user_error"),
                "content_refused",
            ),
            (429, Some(7), body("rate_limit_exceeded", "requests"), "rate_limited"),
            (
                429,
                None,
                body("insufficient_quota", "insufficient_quota"),
                "provider_error",
            ),
            (
                401,
                None,
                body("invalid_api_key", "invalid_request_error"),
                "provider_unauthorized",
            ),
            (403, None, body("", "invalid_request_error"), "provider_unauthorized"),
            (
                400,
                None,
                body("invalid_value", "invalid_request_error"),
                "provider_bad_request",
            ),
            (500, None, body("server_error", "server_error"), "provider_error"),
            (
                400,
                None,
                serde_json::json!({"error": {"message": "Transparent background is not supported for this model.", "type": "image_generation_user_error", "param": "background", "code": null}}).to_string(),
                "provider_bad_request",
            ),
            (502, None, "<html>bad gateway</html>".to_string(), "provider_error"),
        ];
        for (status, retry, body, class) in cases {
            assert_eq!(
                map_error(status, retry, body.as_bytes(), "gpt-image-2", MODEL_SETTING).class(),
                class,
                "{status} {body}"
            );
        }
        let retired = map_error(
            404,
            None,
            body("model_not_found", "x").as_bytes(),
            "gpt-image-1",
            MODEL_SETTING,
        )
        .to_string();
        assert!(
            retired.contains("\"gpt-image-1\"") && retired.contains("OPENAI_IMAGE_MODEL"),
            "{retired}"
        );
        let limited = map_error(429, Some(7), b"{}", "m", MODEL_SETTING).to_string();
        assert!(limited.contains("retry after 7 s"), "{limited}");
    }
}
