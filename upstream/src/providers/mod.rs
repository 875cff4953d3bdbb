//! Provider clients: one `ImageBackend` trait, one module per provider.
//! Which model serves a call, and what happens when it fails, is
//! `routing/`'s business.

pub mod moderation;
pub mod offline_preview;
pub mod openai;
pub mod openai_compatible;
pub mod rate_limits;
pub mod response_body;
pub mod stability;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::media::input::{InputImage, Region};

use crate::media::types::{Background, ImageOptions, ImageSize, InputFidelity, OutputFormat, Quality, Usage};

/// What a backend is asked to draw.
#[derive(Debug, Clone)]
pub struct ImageRequest {
    /// The prompt after the style template was applied.
    pub prompt: String,
    pub size: ImageSize,
    pub n: u8,
    pub quality: Quality,
    pub background: Background,
    pub output_format: OutputFormat,
    pub output_compression: Option<u8>,
    /// An opaque, stable caller id (a hash, never the raw user id).
    pub user: String,
    /// Where a streaming backend reports partial images, and the chain a
    /// queue position (set when the caller asked for progress).
    pub partials: Option<ProgressSink>,
    /// The inputs of an edit (`edit_image`); `None` draws from the prompt alone.
    pub edit: Option<Arc<EditInputs>>,
    /// The provider's own moderation level for this call (the caller's
    /// content policy); `None`: the backend's setting.
    pub moderation: Option<&'static str>,
}

/// What an edit starts from, checked before any provider sees it
/// (`media::input`): the image to change first, then references the model
/// may draw on, and the mask (a PNG with alpha, the first image's size).
#[derive(Debug)]
pub struct EditInputs {
    pub images: Vec<InputImage>,
    pub mask: Option<Bytes>,
    /// The area the mask opens, when the caller gave it as `mask_region`
    /// (Content Credentials name it without decoding the mask again).
    pub region: Option<Region>,
    pub input_fidelity: Option<InputFidelity>,
}

/// A partial image arrived (index from 0); the image itself is not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialImage {
    pub index: u32,
}

/// What a call reports while it runs, besides its heartbeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    Partial(PartialImage),
    /// Waiting for a slot of a self-hosted pool: `ahead` calls go first.
    Queued {
        model: String,
        ahead: usize,
    },
}

pub type ProgressSink = tokio::sync::mpsc::UnboundedSender<Report>;

impl ImageRequest {
    /// What is asked for besides the prompt, for the capability check.
    pub fn options(&self) -> ImageOptions {
        ImageOptions {
            size: self.size,
            n: self.n,
            quality: self.quality,
            background: self.background,
            output_format: self.output_format,
            output_compression: self.output_compression,
            edit: self.edit.is_some(),
        }
    }
}

/// One generated image.
#[derive(Debug, Clone)]
pub struct GeneratedImage {
    pub bytes: Bytes,
    pub format: OutputFormat,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generation {
    pub images: Vec<GeneratedImage>,
    /// The model that served the request, as the provider names it.
    pub model: String,
    pub usage: Option<Usage>,
    /// The provider's quota as its answer described it (rate-limit headers).
    pub quota: Option<rate_limits::QuotaReading>,
}

/// Why a generation failed. The text of each variant is shown to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    #[error("The image request was refused by the provider's content policy: {0}. Rephrase the prompt and try again.")]
    ContentRefused(String),
    #[error("The image provider is rate limiting this gateway{}; try again later.", retry_hint(*.retry_after_secs))]
    RateLimited { retry_after_secs: Option<u64> },
    #[error("The configured image model {model:?} is not available from the provider (it may have been retired). Operators: set {setting} to a current model such as gpt-image-2.")]
    ModelNotFound { model: String, setting: &'static str },
    #[error("The gateway's credentials for the image provider were rejected ({0}). Operators: check the provider API key and organisation.")]
    Unauthorized(String),
    #[error("The image provider rejected the request: {0}")]
    BadRequest(String),
    #[error("The image provider failed (HTTP {status}): {message}")]
    Provider { status: u16, message: String },
    /// The request never went out: no connection (refused, DNS, TLS, connect timeout).
    #[error("The image provider could not be reached: {0}")]
    Transport(String),
    /// The request went out and its answer never came whole (a timeout, a
    /// connection cut mid-answer): the provider may have done the work.
    #[error("The image provider's answer did not arrive: {0}")]
    AnswerLost(String),
    #[error("The image provider returned an unusable response: {0}")]
    InvalidResponse(String),
    /// Raised by the gateway itself, before any provider refuses: every
    /// model of the call's chain is at its provider's quota (or its reserve).
    #[error("No image model has capacity for this call right now: every model it could go to is at its provider's quota. Nothing was generated or billed; try again in {retry_after_secs} s.")]
    NoCapacity { retry_after_secs: u64 },
}

fn retry_hint(retry_after_secs: Option<u64>) -> String {
    retry_after_secs
        .map(|s| format!(" (retry after {s} s)"))
        .unwrap_or_default()
}

impl BackendError {
    /// A stable label for logs and metrics.
    pub fn class(&self) -> &'static str {
        match self {
            BackendError::ContentRefused(_) => "content_refused",
            BackendError::RateLimited { .. } => "rate_limited",
            BackendError::ModelNotFound { .. } => "model_not_found",
            BackendError::Unauthorized(_) => "provider_unauthorized",
            BackendError::BadRequest(_) => "provider_bad_request",
            BackendError::Provider { .. } => "provider_error",
            BackendError::Transport(_) => "provider_unreachable",
            BackendError::AnswerLost(_) => "provider_answer_lost",
            BackendError::InvalidResponse(_) => "provider_invalid_response",
            BackendError::NoCapacity { .. } => "no_capacity",
        }
    }
}

/// Whether a transport failure (`error` or one of its causes) came before
/// the request went out: no connection was made. Anything later (a
/// timeout waiting for the answer, a body cut off) may follow work done.
pub fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<reqwest::Error>() {
            return http.is_connect();
        }
        cause = current.source();
    }
    false
}

/// A transport failure as a `BackendError`: `Transport` when the request
/// never went out, else `AnswerLost`.
pub fn transport_error(error: &(dyn std::error::Error + 'static), message: String) -> BackendError {
    if never_sent(error) {
        BackendError::Transport(message)
    } else {
        BackendError::AnswerLost(message)
    }
}

/// A text-to-image model provider.
#[async_trait]
pub trait ImageBackend: Send + Sync {
    /// The backend's kind, e.g. `openai` or `offline-preview`.
    fn kind(&self) -> &'static str;
    /// The model this backend is configured to use.
    fn model(&self) -> &str;
    /// Generates `request.n` images of `request.size` in `request.output_format`,
    /// or, when `request.edit` is set, edits its first image.
    async fn generate(&self, request: &ImageRequest) -> Result<Generation, BackendError>;
}

/// Whether a request failed waiting for the answer (a timeout once
/// connected, anywhere in the error's chain): the request went out.
pub(super) fn timed_out_waiting(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = cause {
        if let Some(http) = current.downcast_ref::<reqwest::Error>() {
            if http.is_timeout() && !http.is_connect() {
                return true;
            }
        }
        cause = current.source();
    }
    false
}
