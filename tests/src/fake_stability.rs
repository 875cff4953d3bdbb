//! A stand-in for Stability AI's Stable Diffusion 3.5 endpoint, following its
//! API reference (https://platform.stability.ai/docs/api-reference,
//! "Generate → SD3"): `POST /v2beta/stable-image/generate/sd3` with
//! `authorization: Bearer KEY` and `accept: image/*` (or `application/json`);
//! a multipart form with `prompt` (required, ≤ 10,000 characters), `mode`,
//! `aspect_ratio`, `model`, `seed`, `output_format` (`png` | `jpeg`),
//! `negative_prompt`; answers the image bytes with `finish-reason` and `seed`
//! headers. Errors are `{"id", "name", "errors": [...]}`: 400 `bad_request`,
//! 401 `unauthorized`, 403 `content_moderation`, 429 `rate_limit_exceeded`,
//! 500 `internal_error`.
//!
//! Also the in-painting service, `POST /v2beta/stable-image/edit/inpaint`
//! ("Edit → Inpaint"): `image` (PNG, JPEG or WebP, 4,096 to 9,437,184 pixels,
//! aspect ratio within 1:2.5 to 2.5:1), optional `mask` (greyscale, white
//! where to paint, the image's size), `prompt`, `output_format`
//! (`png` | `jpeg` | `webp`); the answer is an image of the input's size.
//!
//! A prompt containing `[[blocked]]` stands for one the moderation refuses,
//! `[[filtered]]` for one whose image comes back blurred (`CONTENT_FILTERED`).

use std::sync::{Arc, Mutex};

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::fake_openai::{solid_jpeg, solid_png, BLOCKED_MARKER};

pub const FILTERED_MARKER: &str = "[[filtered]]";
const MODELS: [&str; 4] = ["sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium", "sd3.5-flash"];
const RATIOS: [(&str, u32, u32); 9] = [
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

pub struct FakeStability {
    pub base_url: String,
    pub api_key: String,
    state: Arc<FakeState>,
    _server: tokio::task::JoinHandle<()>,
}

struct FakeState {
    api_key: String,
    /// Requests per 10 s before 429, like the real service's 150.
    rate_limit: Option<usize>,
    requests: Mutex<Vec<Value>>,
}

impl FakeStability {
    pub async fn start(rate_limit: Option<usize>) -> anyhow::Result<FakeStability> {
        let api_key = format!("sk-stab-{}", uuid::Uuid::new_v4().simple());
        let state = Arc::new(FakeState {
            api_key: api_key.clone(),
            rate_limit,
            requests: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v2beta/stable-image/generate/sd3", post(generate))
            .route("/v2beta/stable-image/edit/inpaint", post(inpaint))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeStability {
            base_url,
            api_key,
            state,
            _server: server,
        })
    }

    /// The form fields of every request received (as a JSON object), in order.
    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

fn error(status: StatusCode, name: &str, message: &str) -> Response {
    let id = uuid::Uuid::new_v4().simple().to_string();
    (status, Json(json!({"id": id, "name": name, "errors": [message]}))).into_response()
}

async fn generate(State(state): State<Arc<FakeState>>, headers: HeaderMap, mut form: Multipart) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key != Some(state.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "Missing or invalid API key");
    }
    let accept = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if accept != "image/*" && accept != "application/json" {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "accept: must be one of image/* or application/json",
        );
    }
    let mut fields = serde_json::Map::new();
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let value = field.text().await.unwrap_or_default();
                fields.insert(name, Value::String(value));
            }
            Ok(None) => break,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "body: must be multipart/form-data",
                )
            }
        }
    }
    let index = {
        let mut requests = match state.requests.lock() {
            Ok(requests) => requests,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "lock"),
        };
        requests.push(Value::Object(fields.clone()));
        requests.len()
    };
    if state.rate_limit.is_some_and(|limit| index > limit) {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "You have exceeded the rate limit of 150 requests within a 10 second period, and have been timed out for 60 seconds.",
        );
        response.headers_mut().insert("retry-after", HeaderValue::from(60));
        return response;
    }
    let text = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or_default().to_string();
    let prompt = text("prompt");
    if prompt.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "prompt: cannot be empty");
    }
    if prompt.chars().count() > 10_000 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "prompt: must be at most 10000 characters",
        );
    }
    let model = match text("model").as_str() {
        "" => "sd3.5-large".to_string(),
        m if MODELS.contains(&m) => m.to_string(),
        other => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("model: must be one of {} (got {other})", MODELS.join(", ")),
            )
        }
    };
    let ratio = match text("aspect_ratio").as_str() {
        "" => "1:1".to_string(),
        r => r.to_string(),
    };
    let Some((_, width, height)) = RATIOS.iter().find(|(r, _, _)| *r == ratio) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "aspect_ratio: must be one of 16:9, 1:1, 21:9, 2:3, 3:2, 4:5, 5:4, 9:16, 9:21",
        );
    };
    let format = match text("output_format").as_str() {
        "" | "png" => "png",
        "jpeg" => "jpeg",
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "output_format: must be one of png or jpeg",
            )
        }
    };
    if prompt.contains(BLOCKED_MARKER) {
        return error(
            StatusCode::FORBIDDEN,
            "content_moderation",
            "Your request was flagged by our content moderation system, as a result your request was denied and you were not charged.",
        );
    }
    let image = match (format, crate::fake_openai::unsafe_image_category(&prompt)) {
        ("jpeg", _) => solid_jpeg(*width, *height),
        (_, Some(category)) => crate::fake_openai::flagged_png(*width, *height, category),
        _ => solid_png(*width, *height),
    };
    let finish = if prompt.contains(FILTERED_MARKER) {
        "CONTENT_FILTERED"
    } else {
        "SUCCESS"
    };
    let seed = 12345u32;
    let _ = model;
    if accept == "application/json" {
        use base64::Engine;
        let body = json!({
            "image": base64::engine::general_purpose::STANDARD.encode(&image),
            "finish_reason": finish,
            "seed": seed,
        });
        return (StatusCode::OK, Json(body)).into_response();
    }
    let mut response = (StatusCode::OK, image).into_response();
    let h = response.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static(if format == "jpeg" { "image/jpeg" } else { "image/png" }),
    );
    h.insert("finish-reason", HeaderValue::from_static(finish));
    h.insert("seed", HeaderValue::from(seed));
    response
}

/// `POST /v2beta/stable-image/edit/inpaint`.
async fn inpaint(State(state): State<Arc<FakeState>>, headers: HeaderMap, mut form: Multipart) -> Response {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key != Some(state.api_key.as_str()) {
        return error(StatusCode::UNAUTHORIZED, "unauthorized", "Missing or invalid API key");
    }
    if headers.get("accept").and_then(|v| v.to_str().ok()) != Some("image/*") {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "accept: must be one of image/* or application/json",
        );
    }
    let mut fields = serde_json::Map::new();
    let mut image: Option<(String, Vec<u8>)> = None;
    let mut mask: Option<Vec<u8>> = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                let content_type = field.content_type().unwrap_or_default().to_string();
                let bytes = field.bytes().await.unwrap_or_default().to_vec();
                match name.as_str() {
                    "image" => image = Some((content_type, bytes)),
                    "mask" => mask = Some(bytes),
                    _ => {
                        fields.insert(name, Value::String(String::from_utf8_lossy(&bytes).to_string()));
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "body: must be multipart/form-data",
                )
            }
        }
    }
    let png_info = |bytes: &[u8]| {
        png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .ok()
            .map(|r| (r.info().width, r.info().height, r.info().color_type))
    };
    let mut recorded = fields.clone();
    recorded.insert("endpoint".into(), "inpaint".into());
    recorded.insert(
        "image".into(),
        json!(image
            .as_ref()
            .map(|(ct, b)| json!({"content_type": ct, "size": png_info(b).map(|(w, h, _)| [w, h])}))),
    );
    recorded.insert(
        "mask".into(),
        json!(mask
            .as_ref()
            .map(|b| json!({"size": png_info(b).map(|(w, h, _)| [w, h]),
            "greyscale": png_info(b).is_some_and(|(_, _, c)| c == png::ColorType::Grayscale)}))),
    );
    if let Ok(mut requests) = state.requests.lock() {
        requests.push(Value::Object(recorded));
    }
    let Some((_, image)) = image else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "image: is required");
    };
    let Some((width, height, _)) = png_info(&image) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "image: must be a valid png, jpeg or webp image",
        );
    };
    let pixels = u64::from(width) * u64::from(height);
    let ratio = f64::from(width.max(height)) / f64::from(width.min(height).max(1));
    if !(4096..=9_437_184).contains(&pixels) || ratio > 2.5 {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "image: must have between 4,096 and 9,437,184 pixels and an aspect ratio between 1:2.5 and 2.5:1",
        );
    }
    if let Some(mask) = &mask {
        match png_info(mask) {
            Some((w, h, png::ColorType::Grayscale)) if (w, h) == (width, height) => {}
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "mask: must be a greyscale image the size of image",
                )
            }
        }
    }
    let prompt = fields.get("prompt").and_then(Value::as_str).unwrap_or_default();
    if prompt.trim().is_empty() {
        return error(StatusCode::BAD_REQUEST, "bad_request", "prompt: cannot be empty");
    }
    if prompt.contains(BLOCKED_MARKER) {
        return error(
            StatusCode::FORBIDDEN,
            "content_moderation",
            "Your request was flagged by our content moderation system, as a result your request was denied and you were not charged.",
        );
    }
    let format = fields
        .get("output_format")
        .and_then(Value::as_str)
        .unwrap_or("png")
        .to_string();
    let (bytes, content_type) = match format.as_str() {
        "png" => (solid_png(width, height), "image/png"),
        "jpeg" => (solid_jpeg(width, height), "image/jpeg"),
        "webp" => (crate::fake_openai::solid_webp(width, height), "image/webp"),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "output_format: must be one of jpeg, png, webp",
            )
        }
    };
    let mut response = (StatusCode::OK, bytes).into_response();
    let h = response.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    h.insert("finish-reason", HeaderValue::from_static("SUCCESS"));
    h.insert("seed", HeaderValue::from(54321u32));
    response
}
