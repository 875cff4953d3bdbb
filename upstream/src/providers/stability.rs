//! Stability AI's Stable Diffusion 3.5 models on
//! `POST {base}/v2beta/stable-image/generate/sd3`
//! (https://platform.stability.ai/docs/api-reference#tag/Generate/paths/~1v2beta~1stable-image~1generate~1sd3/post):
//! a multipart form (`prompt`, `mode`, `aspect_ratio`, `model`, `output_format`,
//! `seed`), `Accept: image/*`, the image bytes back with `finish-reason` and
//! `seed` headers; errors as `{"id", "name", "errors": [...]}`. One image per
//! request, so `n` images are `n` requests.
//!
//! The model draws at about one megapixel in a fixed set of aspect ratios:
//! the capability table lists those sizes, and a size maps to its ratio.
//!
//! Edits go to the in-painting service, `POST {base}/v2beta/stable-image/edit/inpaint`
//! (model `stable-image-inpaint` in the capability table): `image`, `mask`,
//! `prompt`, `output_format`. Its mask is greyscale, white where to paint;
//! ours is alpha-transparent where to paint, so it is converted. The result
//! has the input image's size.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;

use super::{response_body, BackendError, EditInputs, GeneratedImage, Generation, ImageBackend, ImageRequest};
use crate::media::types::ImageSize;
use crate::media::types::OutputFormat;

pub const DEFAULT_BASE_URL: &str = "https://api.stability.ai";
pub const DEFAULT_MODEL: &str = "sd3.5-large";
pub const MODEL_SETTING: &str = "STABILITY_MODEL";

/// The sizes SD3 draws, by the `aspect_ratio` that asks for them.
pub const SIZES: [(&str, u32, u32); 9] = [
    ("1:1", 1024, 1024),
    ("16:9", 1344, 768),
    ("9:16", 768, 1344),
    ("21:9", 1536, 640),
    ("9:21", 640, 1536),
    ("3:2", 1216, 832),
    ("2:3", 832, 1216),
    ("5:4", 1088, 896),
    ("4:5", 896, 1088),
];

/// The `aspect_ratio` for a size SD3 draws.
pub fn aspect_ratio(size: ImageSize) -> Option<&'static str> {
    SIZES
        .iter()
        .find(|(_, w, h)| (*w, *h) == (size.width, size.height))
        .map(|(ratio, _, _)| *ratio)
}

#[derive(Debug, Clone)]
pub struct StabilitySettings {
    pub api_key: String,
    pub base_url: String,
    pub model: String,
    pub timeout: Duration,
    /// The gateway's cap per image (`GATEWAY_MAX_IMAGE_BYTES`): it bounds
    /// how much of an answer (one image's bytes) is read.
    pub max_image_bytes: usize,
}

pub struct StabilityBackend {
    settings: StabilitySettings,
    http: reqwest::Client,
}

impl StabilityBackend {
    pub fn new(settings: StabilitySettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(Self { settings, http })
    }

    async fn one(&self, request: &ImageRequest, ratio: &'static str) -> Result<GeneratedImage, BackendError> {
        let form = reqwest::multipart::Form::new()
            .text("prompt", request.prompt.clone())
            .text("mode", "text-to-image")
            .text("aspect_ratio", ratio)
            .text("model", self.settings.model.clone())
            .text("output_format", request.output_format.as_str());
        self.send("generate/sd3", form, request).await
    }

    /// One in-painted image of `edit`'s first image.
    async fn inpaint(&self, request: &ImageRequest, edit: &EditInputs) -> Result<GeneratedImage, BackendError> {
        let first = edit
            .images
            .first()
            .ok_or_else(|| BackendError::BadRequest("no image to edit".into()))?;
        let file = |bytes: Bytes, name: &str, mime: &str| {
            reqwest::multipart::Part::stream_with_length(reqwest::Body::from(bytes.clone()), bytes.len() as u64)
                .file_name(name.to_string())
                .mime_str(mime)
                .map_err(|e| BackendError::InvalidResponse(format!("cannot build the in-painting request: {e}")))
        };
        let mut form = reqwest::multipart::Form::new()
            .part(
                "image",
                file(
                    first.bytes.clone(),
                    &format!("image.{}", first.format.extension()),
                    first.format.mime_type(),
                )?,
            )
            .text("prompt", request.prompt.clone())
            .text("output_format", request.output_format.as_str());
        if let Some(mask) = &edit.mask {
            // A full decode and encode of the mask: off the runtime.
            let mask = mask.clone();
            let painted = crate::media::blocking::run("converting the mask for in-painting", move || {
                crate::media::input::paint_where_transparent(&mask)
            })
            .await
            .map_err(BackendError::InvalidResponse)?
            .map_err(BackendError::BadRequest)?;
            form = form.part("mask", file(painted, "mask.png", "image/png")?);
        }
        self.send("edit/inpaint", form, request).await
    }

    /// Sends one form to `{base}/v2beta/stable-image/{path}` and reads the image.
    async fn send(
        &self,
        path: &str,
        form: reqwest::multipart::Form,
        request: &ImageRequest,
    ) -> Result<GeneratedImage, BackendError> {
        let url = format!(
            "{}/v2beta/stable-image/{path}",
            self.settings.base_url.trim_end_matches('/')
        );
        let response = self
            .http
            .post(&url)
            .bearer_auth(&self.settings.api_key)
            .header(reqwest::header::ACCEPT, "image/*")
            .headers(crate::telemetry::traces::outgoing_headers())
            .multipart(form)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after").and_then(|v| v.trim().parse().ok());
        let finish_reason = header("finish-reason");
        let limit = response_body::raw_image_limit(self.settings.max_image_bytes);
        let bytes = response_body::read(response, limit)
            .await
            .map_err(|e| e.into_backend(transport_error))?;
        if status != 200 {
            return Err(map_error(status, retry_after, &bytes, &self.settings.model));
        }
        if finish_reason.as_deref() == Some("CONTENT_FILTERED") {
            // The image came back blurred by the provider's filter: never stored.
            return Err(BackendError::ContentRefused(
                "the provider's content filter blurred the image".into(),
            ));
        }
        if !request.output_format.matches(&bytes) {
            return Err(BackendError::InvalidResponse(format!(
                "the image is not {} as requested",
                request.output_format.as_str()
            )));
        }
        Ok(GeneratedImage {
            bytes: Bytes::from(bytes.to_vec()),
            format: request.output_format,
        })
    }
}

/// A transport failure: never sent (`Transport`) or the answer lost after
/// it went out (`AnswerLost`, which the budget counts).
fn transport_error(error: reqwest::Error) -> BackendError {
    let sent = !super::never_sent(&error);
    let message = error.without_url().to_string();
    if sent {
        BackendError::AnswerLost(message)
    } else {
        BackendError::Transport(message)
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    name: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
}

/// Maps a Stability error answer to a cause the caller can act on.
fn map_error(status: u16, retry_after: Option<u64>, body: &[u8], model: &str) -> BackendError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let name = parsed.as_ref().and_then(|e| e.name.clone()).unwrap_or_default();
    let message = parsed
        .as_ref()
        .map(|e| e.errors.join("; "))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    match (status, name.as_str()) {
        (403, "content_moderation") => BackendError::ContentRefused(message),
        (401, _) | (403, _) => BackendError::Unauthorized(message),
        (404, _) => BackendError::ModelNotFound {
            model: model.to_string(),
            setting: MODEL_SETTING,
        },
        (400, _) if message.contains("model") && message.contains(model) => BackendError::ModelNotFound {
            model: model.to_string(),
            setting: MODEL_SETTING,
        },
        (429, _) => BackendError::RateLimited {
            retry_after_secs: retry_after.or(Some(10)),
        },
        (400..=499, _) => BackendError::BadRequest(message),
        _ => BackendError::Provider { status, message },
    }
}

#[async_trait]
impl ImageBackend for StabilityBackend {
    fn kind(&self) -> &'static str {
        "stability"
    }

    fn model(&self) -> &str {
        &self.settings.model
    }

    async fn generate(&self, request: &ImageRequest) -> Result<Generation, BackendError> {
        if let Some(edit) = &request.edit {
            let first = edit.images.first().map(|i| (i.width, i.height));
            if first != Some((request.size.width, request.size.height)) {
                return Err(BackendError::BadRequest(format!(
                    "Stability in-painting keeps the input's size{}; omit `size` or pass that size",
                    first.map(|(w, h)| format!(" ({w}x{h})")).unwrap_or_default()
                )));
            }
            let calls = (0..request.n).map(|_| self.inpaint(request, edit));
            let images = futures::future::try_join_all(calls).await?;
            return Ok(Generation {
                images,
                model: self.settings.model.clone(),
                usage: None,
                quota: None,
            });
        }
        let ratio = aspect_ratio(request.size).ok_or_else(|| {
            BackendError::BadRequest(format!(
                "{} draws only these sizes: {}",
                self.settings.model,
                sizes_list()
            ))
        })?;
        if request.output_format == OutputFormat::Webp {
            return Err(BackendError::BadRequest(
                "Stable Diffusion 3.5 returns png or jpeg".into(),
            ));
        }
        // One image per request; the n requests run side by side.
        let calls = (0..request.n).map(|_| self.one(request, ratio));
        let images = futures::future::try_join_all(calls).await?;
        Ok(Generation {
            images,
            model: self.settings.model.clone(),
            usage: None,
            quota: None,
        })
    }
}

fn sizes_list() -> String {
    SIZES
        .iter()
        .map(|(_, w, h)| format!("{w}x{h}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_map_to_aspect_ratios() {
        let size = |w, h| ImageSize { width: w, height: h };
        assert_eq!(aspect_ratio(size(1024, 1024)), Some("1:1"));
        assert_eq!(aspect_ratio(size(1344, 768)), Some("16:9"));
        assert_eq!(aspect_ratio(size(1536, 1024)), None);
    }

    #[test]
    fn error_mapping() {
        let body =
            |name: &str, error: &str| serde_json::json!({"id": "a1b2", "name": name, "errors": [error]}).to_string();
        let cases = [
            (
                403,
                body(
                    "content_moderation",
                    "Your request was flagged by our content moderation system.",
                ),
                "content_refused",
            ),
            (
                401,
                body("unauthorized", "Missing or invalid API key"),
                "provider_unauthorized",
            ),
            (
                400,
                body("bad_request", "prompt: cannot be empty"),
                "provider_bad_request",
            ),
            (
                400,
                body(
                    "bad_request",
                    "model: must be one of sd3.5-large, sd3.5-medium (got sd9)",
                ),
                "model_not_found",
            ),
            (
                429,
                body(
                    "rate_limit_exceeded",
                    "You have exceeded the rate limit of 150 requests within a 10 second period.",
                ),
                "rate_limited",
            ),
            (
                500,
                body("internal_error", "An unexpected server error has occurred."),
                "provider_error",
            ),
            (502, "<html>bad gateway</html>".to_string(), "provider_error"),
        ];
        for (status, body, class) in cases {
            let model = if body.contains("sd9") { "sd9" } else { "sd3.5-large" };
            assert_eq!(
                map_error(status, None, body.as_bytes(), model).class(),
                class,
                "{status} {body}"
            );
        }
        let refused = map_error(403, None, body("content_moderation", "flagged").as_bytes(), "m").to_string();
        assert!(
            refused.contains("content policy") && refused.contains("flagged"),
            "{refused}"
        );
    }
}
