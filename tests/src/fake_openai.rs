//! A stand-in for OpenAI's Images API, following the public reference
//! (https://platform.openai.com/docs/api-reference/images/create) and its
//! error guide (https://platform.openai.com/docs/guides/error-codes):
//! `POST /v1/images/generations` with a bearer key; JSON body `model`,
//! `prompt`, `n`, `size`, `quality`, `background`, `output_format`,
//! `output_compression`, `moderation`, `user`, `stream`, `partial_images`;
//! answers `{created, data: [{b64_json}], background, output_format,
//! quality, size, usage}`; errors `{"error": {message, type, param, code}}`
//! with `x-ratelimit-*` headers and `retry-after` on 429.
//!
//! Content moderation cannot be reproduced, so a prompt containing
//! `[[blocked]]` stands for one the safety system refuses.
//!
//! It also answers the moderations endpoint
//! (https://platform.openai.com/docs/api-reference/moderations/create):
//! `POST /v1/moderations` `{"model", "input"}`, `input` a string, a list of
//! strings, or a list of parts `{"type": "text", "text"}` /
//! `{"type": "image_url", "image_url": {"url": "data:…;base64,…" | "https://…"}}`;
//! answers `{id, model, results: [{flagged, categories,
//! category_scores, category_applied_input_types}]}` with every category
//! of `omni-moderation-latest`. A text, or an image's bytes, holding
//! `[[flag:CATEGORY]]` is flagged in that category; a prompt holding
//! `[[unsafe-image:CATEGORY]]` makes the image endpoints draw a PNG that
//! carries that flag (a `tEXt` chunk), so a generated image gets flagged.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

/// Marker that makes the fake refuse a prompt as its moderation would.
pub const BLOCKED_MARKER: &str = "[[blocked]]";
/// Marker that makes the fake draw PNGs of random pixels, which barely
/// compress (about 3 bytes a pixel: 1200x1024 is about 3.5 MiB).
pub const NOISE_MARKER: &str = "[[noise]]";
/// A prompt with this marker gets a PNG carrying Content Credentials of the
/// provider's own, as OpenAI's images do (signed under `provider_root()`).
pub const SIGNED_MARKER: &str = "[[signed]]";

/// The provider's signing CA and key (made once per test process): the
/// root of the manifests `SIGNED_MARKER` images carry.
fn provider_signer() -> &'static (
    mcp_image_gateway::provenance::dev_ca::DevCa,
    mcp_image_gateway::provenance::SigningKey,
) {
    static SIGNER: std::sync::OnceLock<(
        mcp_image_gateway::provenance::dev_ca::DevCa,
        mcp_image_gateway::provenance::SigningKey,
    )> = std::sync::OnceLock::new();
    SIGNER.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("fake-openai-c2pa-{}", std::process::id()));
        let ca = mcp_image_gateway::provenance::dev_ca::init(&dir).expect("provider CA");
        let (chain, key) =
            mcp_image_gateway::provenance::dev_ca::issue(&ca, "fake OpenAI signer").expect("provider cert");
        let key = mcp_image_gateway::provenance::SigningKey::from_pem(chain.into_bytes(), key.into_bytes())
            .expect("provider key");
        (ca, key)
    })
}

/// The PEM root `SIGNED_MARKER` images are signed under.
pub fn provider_root() -> String {
    std::fs::read_to_string(&provider_signer().0.root).unwrap_or_default()
}

/// A `width` x `height` PNG with Content Credentials signed elsewhere (by
/// the fake provider's test root), as a user might upload.
pub fn signed_png(width: u32, height: u32) -> Vec<u8> {
    provider_signed(solid_png(width, height), "a camera app")
}

/// `png` with the provider's own Content Credentials.
fn provider_signed(png: Vec<u8>, model: &str) -> Vec<u8> {
    use mcp_image_gateway::media::types::OutputFormat;
    use mcp_image_gateway::provenance::manifest::ImageFacts;
    let facts = ImageFacts {
        model,
        provider: "fake OpenAI",
        format: OutputFormat::Png,
        edit: None,
    };
    mcp_image_gateway::provenance::sign::sign(&png, &facts, &provider_signer().1, chrono::Utc::now().timestamp())
        .map(|signed| signed.bytes().to_vec())
        .unwrap_or(png)
}
/// Marker that makes the fake answer with `HUGE_ANSWER_BYTES` of JSON,
/// streamed without a length and never held (a provider, or whatever
/// answers at its address, that does not stop).
pub const HUGE_ANSWER_MARKER: &str = "[[huge-answer]]";
pub const HUGE_ANSWER_BYTES: usize = 200 * 1024 * 1024;
/// `[[flag:CATEGORY]]`: what the moderation fake flags, in a text or in an image's bytes.
pub fn flag_marker(category: &str) -> String {
    format!("[[flag:{category}]]")
}
/// `[[unsafe-image:CATEGORY]]` in a prompt: the image drawn carries `flag_marker(CATEGORY)`.
pub fn unsafe_image_marker(category: &str) -> String {
    format!("[[unsafe-image:{category}]]")
}
/// The categories of `omni-moderation-latest`.
pub const MODERATION_CATEGORIES: [&str; 13] = [
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
];
const STANDARD_SIZES: [&str; 4] = ["1024x1024", "1536x1024", "1024x1536", "auto"];
const KNOWN_PARAMS: [&str; 12] = [
    "model",
    "prompt",
    "n",
    "size",
    "quality",
    "background",
    "output_format",
    "output_compression",
    "moderation",
    "user",
    "stream",
    "partial_images",
];

/// How the fake behaves.
#[derive(Debug, Clone, Default)]
pub struct FakeOptions {
    /// Images per minute before 429 `rate_limit_exceeded`; `None` = unlimited.
    pub images_per_minute: Option<u32>,
    /// Simulated generation time.
    pub latency: Duration,
    /// Models that answer 500 `server_error` (a provider outage).
    pub failing_models: Vec<String>,
    /// Answer as a self-hosted server with the classic Images API (LocalAI):
    /// any model name, `response_format` (`url` by default, or `b64_json`),
    /// GPT-image parameters refused as unknown, no `usage`.
    pub compatible: bool,
    /// A request quota per model, refilled whole at the end of each window
    /// (from the model's first request): every answer carries OpenAI's
    /// `x-ratelimit-{limit,remaining,reset}-requests`; past it, 429
    /// `rate_limit_exceeded` with `retry-after`.
    pub request_quota: Option<RequestQuota>,
    /// The key callers must present (else a fresh one).
    pub api_key: Option<String>,
    /// The first this many generations answer 200 and then drop the
    /// connection half-way through the body: the image was made, and is
    /// billed (`billed`), but the client never reads it whole.
    pub cut_off_answers: u32,
    /// The PNG every PNG generation answers with, whatever the size asked
    /// (benches: a photo-like 1024x1024 that compresses like a real one);
    /// else a solid colour of the size asked.
    pub png: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy)]
pub struct RequestQuota {
    pub limit: u32,
    pub window: Duration,
}

/// A running fake.
pub struct FakeOpenAi {
    pub base_url: String,
    pub api_key: String,
    state: Arc<FakeState>,
    _server: tokio::task::JoinHandle<()>,
}

/// A provider fault switched on for a while (`make soak`, through
/// `POST /_fake/fault`; not part of OpenAI's API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 500 `server_error`, as during an outage.
    ServerError,
    /// 429 `rate_limit_exceeded` with `retry-after: 1` and the `x-ratelimit-*` headers.
    RateLimited,
    /// No answer for ten minutes (the client's timeout decides).
    Hang,
}

struct FakeState {
    /// The fault in force and until when.
    fault: Mutex<Option<(Fault, Instant)>>,
    /// The usage (input, output tokens) of every generation answered 200,
    /// those cut off included: what OpenAI would bill.
    billed: Mutex<Vec<(u64, u64)>>,
    /// Answers cut off so far (`FakeOptions::cut_off_answers`).
    cut_off: std::sync::atomic::AtomicU32,
    api_key: String,
    options: FakeOptions,
    requests: Mutex<Vec<Value>>,
    /// The `traceparent` of each generation request, in order.
    traceparents: Mutex<Vec<Option<String>>>,
    served: Mutex<VecDeque<(Instant, u32)>>,
    /// Per model: when its quota window started and the requests it counted.
    windows: Mutex<std::collections::HashMap<String, (Instant, u32)>>,
    /// Generation requests being answered now, and the most at once.
    in_flight: std::sync::atomic::AtomicU32,
    max_in_flight: std::sync::atomic::AtomicU32,
    /// 429s answered for the request quota, per model.
    quota_refusals: Mutex<std::collections::HashMap<String, u32>>,
    /// Encoded images by (format, width, height): encoding is the fake's own
    /// cost, and a load test should measure the gateway, not the fake.
    images: Mutex<std::collections::HashMap<(String, u32, u32), Arc<String>>>,
    /// Every moderation request: its model, texts and how many images.
    moderations: Mutex<Vec<Value>>,
    /// The moderations endpoint answers 503 (an outage) while set.
    moderation_down: std::sync::atomic::AtomicBool,
}

impl FakeOpenAi {
    pub async fn start(options: FakeOptions) -> anyhow::Result<FakeOpenAi> {
        Self::start_on("127.0.0.1:0", options).await
    }

    /// Starts on `address` (`127.0.0.1:0` picks a port).
    pub async fn start_on(address: &str, options: FakeOptions) -> anyhow::Result<FakeOpenAi> {
        let api_key = options
            .api_key
            .clone()
            .unwrap_or_else(|| format!("sk-test-{}", uuid::Uuid::new_v4().simple()));
        let state = Arc::new(FakeState {
            fault: Mutex::new(None),
            billed: Mutex::new(Vec::new()),
            cut_off: Default::default(),
            api_key: api_key.clone(),
            options,
            requests: Mutex::new(Vec::new()),
            traceparents: Mutex::new(Vec::new()),
            served: Mutex::new(VecDeque::new()),
            windows: Mutex::new(std::collections::HashMap::new()),
            quota_refusals: Mutex::new(std::collections::HashMap::new()),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            images: Mutex::new(std::collections::HashMap::new()),
            moderations: Mutex::new(Vec::new()),
            moderation_down: Default::default(),
        });
        let app = Router::new()
            .route("/v1/images/generations", post(generate))
            .route("/v1/images/edits", post(edit))
            .route("/v1/moderations", post(moderate))
            .route("/_fake/fault", post(set_fault_route))
            .route("/_fake/stats", axum::routing::get(stats_route))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(address).await?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeOpenAi {
            base_url,
            api_key,
            state,
            _server: server,
        })
    }

    /// Switches `fault` on for `duration` (`None` clears it).
    pub fn set_fault(&self, fault: Option<Fault>, duration: Duration) {
        set_fault(&self.state, fault, duration);
    }

    /// The `traceparent` header of each generation request, in order.
    pub fn traceparents(&self) -> Vec<Option<String>> {
        self.state.traceparents.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// JSON bodies of every request received, in order.
    /// The most requests the fake was answering at once.
    pub fn max_in_flight(&self) -> u32 {
        self.state.max_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The 429s answered for `model`'s request quota.
    pub fn quota_refusals(&self, model: &str) -> u32 {
        self.state
            .quota_refusals
            .lock()
            .map(|r| r.get(model).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn requests(&self) -> Vec<Value> {
        self.state.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The usage (input, output tokens) of every generation billed.
    pub fn billed(&self) -> Vec<(u64, u64)> {
        self.state.billed.lock().map(|b| b.clone()).unwrap_or_default()
    }

    /// Every moderation request: `{"model", "texts": [...], "images": N}`.
    pub fn moderations(&self) -> Vec<Value> {
        self.state.moderations.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Switches a moderation outage on or off (503 `server_error`).
    pub fn set_moderation_down(&self, down: bool) {
        self.state
            .moderation_down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }
}

/// `POST /v1/moderations`, checked as the API documents it.
async fn moderate(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    if state.moderation_down.load(std::sync::atomic::Ordering::SeqCst) {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "The server is overloaded or not ready yet.",
            "server_error",
            None,
            None,
        );
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid(
            "We could not parse the JSON body of your request.",
            "body",
            "invalid_json",
        );
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("omni-moderation-latest");
    if !matches!(
        model,
        "omni-moderation-latest" | "omni-moderation-2024-09-26" | "text-moderation-latest"
    ) {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        );
    }
    // (type, bytes to look for markers in)
    let mut parts: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let mut texts = Vec::new();
    match request.get("input") {
        Some(Value::String(text)) => parts.push(("text", text.clone().into_bytes())),
        Some(Value::Array(items)) if !items.is_empty() => {
            for item in items {
                match item {
                    Value::String(text) => parts.push(("text", text.clone().into_bytes())),
                    Value::Object(part) => match part.get("type").and_then(Value::as_str) {
                        Some("text") => match part.get("text").and_then(Value::as_str) {
                            Some(text) => parts.push(("text", text.as_bytes().to_vec())),
                            None => {
                                return invalid(
                                    "Missing required parameter: 'input[].text'.",
                                    "input",
                                    "missing_required_parameter",
                                )
                            }
                        },
                        Some("image_url") => {
                            let url = part
                                .get("image_url")
                                .and_then(|u| u.get("url"))
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            let data = url
                                .split_once(";base64,")
                                .filter(|(head, _)| {
                                    ["data:image/png", "data:image/jpeg", "data:image/webp", "data:image/gif"]
                                        .contains(head)
                                })
                                .and_then(|(_, b64)| base64::engine::general_purpose::STANDARD.decode(b64).ok());
                            match data {
                                Some(bytes) if image_kind(&bytes).is_some() => parts.push(("image", bytes)),
                                _ if url.starts_with("https://") => parts.push(("image", Vec::new())),
                                _ => return invalid("Invalid image URL: expected a data URL of a PNG, JPEG, WebP or GIF image, or an https URL.", "input", "invalid_image_url"),
                            }
                        }
                        _ => {
                            return invalid(
                                "Invalid value for 'input[].type': expected 'text' or 'image_url'.",
                                "input",
                                "invalid_value",
                            )
                        }
                    },
                    _ => return invalid("Invalid type for 'input'.", "input", "invalid_type"),
                }
            }
        }
        _ => {
            return invalid(
                "Missing required parameter: 'input'.",
                "input",
                "missing_required_parameter",
            )
        }
    }
    if parts.iter().filter(|(kind, _)| *kind == "image").count() > 1 {
        return invalid("Only one image can be moderated per request.", "input", "invalid_value");
    }
    for (kind, bytes) in &parts {
        if *kind == "text" {
            texts.push(Value::String(String::from_utf8_lossy(bytes).into_owned()));
        }
    }
    let images = parts.iter().filter(|(kind, _)| *kind == "image").count();
    if let Ok(mut moderations) = state.moderations.lock() {
        moderations.push(json!({"model": model, "texts": texts, "images": images}));
    }
    let mut categories = serde_json::Map::new();
    let mut scores = serde_json::Map::new();
    let mut applied = serde_json::Map::new();
    for category in MODERATION_CATEGORIES {
        let marker = flag_marker(category);
        let hits: Vec<&str> = parts
            .iter()
            .filter(|(_, bytes)| bytes.windows(marker.len()).any(|w| w == marker.as_bytes()))
            .map(|(kind, _)| *kind)
            .collect();
        categories.insert(category.into(), json!(!hits.is_empty()));
        scores.insert(category.into(), json!(if hits.is_empty() { 0.0001 } else { 0.97 }));
        applied.insert(category.into(), json!(hits));
    }
    let flagged = categories.values().any(|v| v == &json!(true));
    Json(json!({
        "id": format!("modr-{}", uuid::Uuid::new_v4().simple()),
        "model": "omni-moderation-latest",
        "results": [{
            "flagged": flagged,
            "categories": categories,
            "category_scores": scores,
            "category_applied_input_types": applied,
        }]
    }))
    .into_response()
}

/// The category a prompt's `[[unsafe-image:CATEGORY]]` asks the image to carry.
pub fn unsafe_image_category(prompt: &str) -> Option<&str> {
    let start = prompt.find("[[unsafe-image:")? + "[[unsafe-image:".len();
    let end = prompt[start..].find("]]")?;
    Some(&prompt[start..start + end])
}

/// A small PNG that carries `flag_marker(category)` in a `tEXt` chunk.
pub fn flagged_png(width: u32, height: u32, category: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let _ = encoder.add_text_chunk("Comment".into(), flag_marker(category));
    if let Ok(mut writer) = encoder.write_header() {
        let pixels = vec![200u8; (width * height * 3) as usize];
        let _ = writer.write_image_data(&pixels);
        let _ = writer.finish();
    }
    out
}

fn set_fault(state: &FakeState, fault: Option<Fault>, duration: Duration) {
    if let Ok(mut current) = state.fault.lock() {
        *current = fault.map(|f| (f, Instant::now() + duration));
    }
}

/// `GET /_fake/stats`: requests seen and the most answered at once (for
/// `make bench-stack`; not part of OpenAI's API).
async fn stats_route(State(state): State<Arc<FakeState>>) -> Json<Value> {
    let requests = state.requests.lock().map(|r| r.len()).unwrap_or(0);
    let most = state.max_in_flight.load(std::sync::atomic::Ordering::SeqCst);
    Json(json!({"requests": requests, "max_in_flight": most}))
}

/// `POST /_fake/fault {"kind": "server_error"|"rate_limited"|"hang"|"none", "seconds": N}`.
async fn set_fault_route(State(state): State<Arc<FakeState>>, Json(body): Json<Value>) -> StatusCode {
    let fault = match body["kind"].as_str() {
        Some("server_error") => Some(Fault::ServerError),
        Some("rate_limited") => Some(Fault::RateLimited),
        Some("hang") => Some(Fault::Hang),
        Some("none") => None,
        _ => return StatusCode::BAD_REQUEST,
    };
    set_fault(
        &state,
        fault,
        Duration::from_secs(body["seconds"].as_u64().unwrap_or(10)),
    );
    StatusCode::NO_CONTENT
}

/// The injected fault's answer, while one is in force.
async fn injected_fault(state: &FakeState, model: &str) -> Option<Response> {
    let fault = state
        .fault
        .lock()
        .ok()
        .and_then(|f| *f)
        .filter(|(_, until)| Instant::now() < *until)
        .map(|(fault, _)| fault)?;
    Some(match fault {
        Fault::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        ),
        Fault::RateLimited => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit reached for {model} in organization org-test on requests per min (RPM): Limit 5, Used 5, Requested 1. Please try again in 1s."),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
            let h = response.headers_mut();
            h.insert("retry-after", HeaderValue::from(1));
            h.insert("x-ratelimit-limit-requests", HeaderValue::from(5));
            h.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
            h.insert("x-ratelimit-reset-requests", HeaderValue::from_static("1s"));
            response
        }
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(600)).await;
            error(StatusCode::GATEWAY_TIMEOUT, "timeout", "server_error", None, None)
        }
    })
}

fn error(status: StatusCode, message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, Json(body)).into_response()
}

fn invalid(message: &str, param: &str, code: &str) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        message,
        "invalid_request_error",
        Some(param),
        Some(code),
    )
}

fn sizes_for(model: &str) -> Option<&'static [&'static str]> {
    match model {
        "gpt-image-2" | "gpt-image-1.5" | "gpt-image-1-mini" => Some(&STANDARD_SIZES),
        _ => None,
    }
}

/// `gpt-image-2` also takes custom sizes: multiples of 16, ratio at most 3:1, at most 3840x2160.
fn custom_size_ok(model: &str, size: &str) -> bool {
    let Some((w, h)) = size.split_once('x') else {
        return false;
    };
    let (Ok(w), Ok(h)) = (w.parse::<u32>(), h.parse::<u32>()) else {
        return false;
    };
    model == "gpt-image-2"
        && w % 16 == 0
        && h % 16 == 0
        && w.max(h) <= 3 * w.min(h)
        && w.max(h) <= 3840
        && w.min(h) <= 2160
        && w >= 16
        && h >= 16
}

async fn generate(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
            "invalid_request_error",
            None,
            None,
        );
    };
    if let Ok(mut requests) = state.requests.lock() {
        requests.push(request.clone());
    }
    if let Ok(mut traceparents) = state.traceparents.lock() {
        let traceparent = headers.get("traceparent").and_then(|v| v.to_str().ok());
        traceparents.push(traceparent.map(str::to_string));
    }
    respond(&state, &request).await
}

/// `POST /v1/images/edits`, multipart, as documented for GPT image models:
/// `image[]` files (PNG, JPEG or WebP; 1 to 16), an optional `mask` (a PNG
/// with an alpha channel, the first image's size), `prompt`, the generation
/// options, and `input_fidelity`. Files are checked by their bytes; the
/// request is recorded as JSON with an `edit` summary of its files.
async fn edit(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    mut multipart: axum::extract::Multipart,
) -> Response {
    if let Some(refused) = unauthorized(&state, &headers) {
        return refused;
    }
    let mut fields = serde_json::Map::new();
    let mut images: Vec<(String, axum::body::Bytes)> = Vec::new();
    let mut mask: Option<(String, axum::body::Bytes)> = None;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => {
                return invalid(
                    &format!("Invalid multipart form data: {e}"),
                    "body",
                    "invalid_multipart",
                )
            }
        };
        let name = field.name().unwrap_or_default().to_string();
        let content_type = field.content_type().unwrap_or_default().to_string();
        let is_file = field.file_name().is_some();
        let Ok(bytes) = field.bytes().await else {
            return invalid("Invalid multipart form data.", &name, "invalid_multipart");
        };
        match name.as_str() {
            "image[]" | "image" if is_file => images.push((content_type, bytes)),
            "mask" if is_file => mask = Some((content_type, bytes)),
            _ if is_file => return invalid(&format!("Unknown parameter: '{name}'."), &name, "unknown_parameter"),
            "n" | "output_compression" | "partial_images" => {
                let text = String::from_utf8_lossy(&bytes).to_string();
                let Ok(number) = text.parse::<u64>() else {
                    return invalid(
                        &format!("Invalid '{name}': expected an integer, but got '{text}' instead."),
                        &name,
                        "invalid_type",
                    );
                };
                fields.insert(name, number.into());
            }
            "stream" => {
                fields.insert(name, (bytes.as_ref() == b"true").into());
            }
            _ => {
                fields.insert(name, String::from_utf8_lossy(&bytes).to_string().into());
            }
        }
    }
    let describe = |(content_type, bytes): &(String, axum::body::Bytes)| {
        let dims = crate::png_info::dimensions(bytes).ok();
        json!({"content_type": content_type, "bytes": bytes.len(),
               "width": dims.map(|d| d.0), "height": dims.map(|d| d.1)})
    };
    let mut recorded = fields.clone();
    recorded.insert(
        "edit".into(),
        json!({"images": images.iter().map(describe).collect::<Vec<_>>(), "mask": mask.as_ref().map(describe)}),
    );
    if let Ok(mut requests) = state.requests.lock() {
        requests.push(Value::Object(recorded));
    }
    if images.is_empty() {
        return invalid(
            "Missing required parameter: 'image'.",
            "image",
            "missing_required_parameter",
        );
    }
    if images.len() > 16 {
        return invalid(
            &format!("Invalid 'image': array too long. Expected an array with maximum length 16, but got an array with length {} instead.", images.len()),
            "image",
            "array_above_max_length",
        );
    }
    for (index, (content_type, bytes)) in images.iter().enumerate() {
        let kind = image_kind(bytes);
        if kind.is_none() || kind != Some(content_type.as_str()) {
            return invalid(
                &format!(
                    "Invalid image file or mode for image {}, please check your image file.",
                    index + 1
                ),
                "image",
                "invalid_image_file",
            );
        }
    }
    if let Some((_, bytes)) = &mask {
        let alpha = png::Decoder::new(std::io::Cursor::new(bytes.as_ref()))
            .read_info()
            .map(|reader| {
                let info = reader.info();
                matches!(info.color_type, png::ColorType::Rgba | png::ColorType::GrayscaleAlpha) || info.trns.is_some()
            })
            .unwrap_or(false);
        if image_kind(bytes) != Some("image/png") || !alpha {
            return invalid(
                "Invalid mask image format - mask must be a PNG with an alpha channel.",
                "mask",
                "invalid_image_format",
            );
        }
        let first = crate::png_info::dimensions(&images[0].1).ok();
        if first.is_some() && first != crate::png_info::dimensions(bytes).ok() {
            return invalid(
                "Invalid mask image format - mask size does not match image size",
                "mask",
                "invalid_image_format",
            );
        }
    }
    match fields.remove("input_fidelity") {
        None => {}
        Some(Value::String(v)) if v == "low" || v == "high" => {}
        Some(other) => {
            return invalid(
                &format!(
                    "Invalid value: '{}'. Supported values are: 'low' and 'high'.",
                    other.as_str().unwrap_or_default()
                ),
                "input_fidelity",
                "invalid_value",
            )
        }
    }
    respond(&state, &Value::Object(fields)).await
}

/// The type of an image file by its first bytes.
fn image_kind(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.len() >= 12 && bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

/// The 401 answers of the API, for a missing or wrong key.
fn unauthorized(state: &FakeState, headers: &HeaderMap) -> Option<Response> {
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match key {
        None => Some(error(
            StatusCode::UNAUTHORIZED,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error",
            None,
            None,
        )),
        Some(key) if key != state.api_key => Some(error(
            StatusCode::UNAUTHORIZED,
            &format!("Incorrect API key provided: {key}. You can find your API key at https://platform.openai.com/account/api-keys."),
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        )),
        Some(_) => None,
    }
}

/// Checks the parameters of a generation (or of an edit, once its files
/// were checked) and answers with images, as the Images API does.
/// An answer, counted against the model's request quota when there is
/// one, and in the requests being answered at once.
async fn respond(state: &FakeState, request: &Value) -> Response {
    use std::sync::atomic::Ordering;
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let response = counted(state, request).await;
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

async fn counted(state: &FakeState, request: &Value) -> Response {
    let Some(quota) = state.options.request_quota else {
        return answer(state, request).await;
    };
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("gpt-image-1")
        .to_string();
    let (remaining, reset) = {
        let mut windows = match state.windows.lock() {
            Ok(windows) => windows,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "lock", "server_error", None, None),
        };
        let now = Instant::now();
        let window = windows.entry(model.clone()).or_insert((now, 0));
        if now.duration_since(window.0) >= quota.window {
            *window = (now, 0);
        }
        let reset = quota.window.saturating_sub(now.duration_since(window.0));
        if window.1 >= quota.limit {
            (None, reset)
        } else {
            window.1 += 1;
            (Some(quota.limit - window.1), reset)
        }
    };
    let reset_text = if reset < Duration::from_secs(1) {
        format!("{}ms", reset.as_millis())
    } else {
        format!("{:.3}s", reset.as_secs_f64())
    };
    let mut response = match remaining {
        Some(_) => answer(state, request).await,
        None => {
            if let Ok(mut refusals) = state.quota_refusals.lock() {
                *refusals.entry(model.clone()).or_default() += 1;
            }
            let mut refused = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit reached for {model} in organization org-test on requests per min (RPM): Limit {}, Used {}, Requested 1. Please try again in {reset_text}.", quota.limit, quota.limit),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
            refused.headers_mut().insert(
                "retry-after",
                HeaderValue::from(reset.as_secs_f64().ceil().max(1.0) as u64),
            );
            refused
        }
    };
    let headers = response.headers_mut();
    headers.insert("x-ratelimit-limit-requests", HeaderValue::from(quota.limit));
    headers.insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from(remaining.unwrap_or(0)),
    );
    if let Ok(value) = HeaderValue::from_str(&reset_text) {
        headers.insert("x-ratelimit-reset-requests", value);
    }
    response
}

async fn answer(state: &FakeState, request: &Value) -> Response {
    let Some(fields) = request.as_object() else {
        return invalid(
            "Invalid type for request body: expected an object.",
            "body",
            "invalid_type",
        );
    };
    if state.options.compatible {
        tokio::time::sleep(state.options.latency).await;
        return classic(fields);
    }
    if let Some(unknown) = fields.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
        return invalid(
            &format!("Unknown parameter: '{unknown}'."),
            unknown,
            "unknown_parameter",
        );
    }
    let model = fields.get("model").and_then(Value::as_str).unwrap_or("gpt-image-1");
    let Some(sizes) = sizes_for(model) else {
        return error(
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist or you do not have access to it."),
            "invalid_request_error",
            None,
            Some("model_not_found"),
        );
    };
    let Some(prompt) = fields.get("prompt").and_then(Value::as_str) else {
        return invalid(
            "Missing required parameter: 'prompt'.",
            "prompt",
            "missing_required_parameter",
        );
    };
    if prompt.chars().count() > 32_000 {
        return invalid(
            &format!("Invalid 'prompt': string too long. Expected a string with maximum length 32000, but got a string with length {} instead.", prompt.chars().count()),
            "prompt",
            "string_above_max_length",
        );
    }
    let n = fields.get("n").map_or(Some(1), Value::as_u64).unwrap_or(0);
    if n == 0 {
        return invalid(
            &format!("Invalid 'n': integer below minimum value. Expected a value >= 1, but got {n} instead."),
            "n",
            "integer_below_min_value",
        );
    }
    if n > 10 {
        return invalid(
            &format!("Invalid 'n': integer above maximum value. Expected a value <= 10, but got {n} instead."),
            "n",
            "integer_above_max_value",
        );
    }
    let size = fields.get("size").and_then(Value::as_str).unwrap_or("auto");
    if !sizes.contains(&size) && !custom_size_ok(model, size) {
        return invalid(
            &format!(
                "Invalid value: '{size}'. Supported values are: '1024x1024', '1024x1536', '1536x1024', and 'auto'."
            ),
            "size",
            "invalid_value",
        );
    }
    #[allow(clippy::result_large_err)] // the error is the answer sent, once
    let choice = |field: &str, allowed: &[&str], default: &'static str| -> Result<String, Response> {
        match fields.get(field) {
            None => Ok(default.to_string()),
            Some(Value::String(v)) if allowed.contains(&v.as_str()) => Ok(v.clone()),
            Some(other) => Err(invalid(
                &format!(
                    "Invalid value: '{}'. Supported values are: {}.",
                    other.as_str().unwrap_or_default(),
                    allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ")
                ),
                field,
                "invalid_value",
            )),
        }
    };
    let quality = match choice("quality", &["low", "medium", "high", "auto"], "auto") {
        Ok(v) => v,
        Err(response) => return response,
    };
    let background = match choice("background", &["transparent", "opaque", "auto"], "auto") {
        Ok(v) => v,
        Err(response) => return response,
    };
    let output_format = match choice("output_format", &["png", "jpeg", "webp"], "png") {
        Ok(v) => v,
        Err(response) => return response,
    };
    if let Err(response) = choice("moderation", &["low", "auto"], "auto") {
        return response;
    }
    if let Some(compression) = fields.get("output_compression") {
        if output_format == "png" || compression.as_u64().is_none_or(|c| c > 100) {
            return invalid(
                "Invalid 'output_compression': only supported for jpeg and webp output, as an integer from 0 to 100.",
                "output_compression",
                "invalid_value",
            );
        }
    }
    if background == "transparent" && model == "gpt-image-2" {
        return error(
            StatusCode::BAD_REQUEST,
            "Transparent background is not supported for this model.",
            "image_generation_user_error",
            Some("background"),
            None,
        );
    }
    if background == "transparent" && output_format == "jpeg" {
        return invalid(
            "Transparent background requires output_format png or webp.",
            "background",
            "invalid_value",
        );
    }
    if let Some(response) = injected_fault(state, model).await {
        return response;
    }
    if state.options.failing_models.iter().any(|m| m == model) {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
            None,
        );
    }
    if prompt.contains(BLOCKED_MARKER) {
        return error(
            StatusCode::BAD_REQUEST,
            "Your request was rejected as a result of our safety system. Your request may contain content that is not allowed by our safety system.",
            "image_generation_user_error",
            None,
            Some("moderation_blocked"),
        );
    }
    if prompt.contains(HUGE_ANSWER_MARKER) {
        return huge_answer();
    }
    if let Some(limit) = state.options.images_per_minute {
        let now = Instant::now();
        let mut served = match state.served.lock() {
            Ok(served) => served,
            Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR, "lock", "server_error", None, None),
        };
        while served
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(60))
        {
            served.pop_front();
        }
        let used: u32 = served.iter().map(|(_, n)| n).sum();
        if used + n as u32 > limit {
            let wait = served
                .front()
                .map_or(60, |(t, _)| 60 - now.duration_since(*t).as_secs().min(59));
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit reached for {model} in organization org-test on images per minute (IPM): Limit {limit}, Used {used}, Requested {n}. Please try again in {wait}s."),
                "requests",
                None,
                Some("rate_limit_exceeded"),
            );
            let h = response.headers_mut();
            h.insert("retry-after", HeaderValue::from(wait));
            h.insert("x-ratelimit-limit-requests", HeaderValue::from(limit));
            h.insert("x-ratelimit-remaining-requests", HeaderValue::from(0));
            h.insert(
                "x-ratelimit-reset-requests",
                HeaderValue::from_str(&format!("{wait}s")).unwrap_or(HeaderValue::from_static("60s")),
            );
            return response;
        }
        served.push_back((now, n as u32));
    }
    let stream = fields.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let partial_images = fields.get("partial_images").and_then(Value::as_u64).unwrap_or(0);
    if partial_images > 3 {
        return invalid(
            &format!("Invalid 'partial_images': integer above maximum value. Expected a value <= 3, but got {partial_images} instead."),
            "partial_images",
            "integer_above_max_value",
        );
    }
    if !stream {
        tokio::time::sleep(state.options.latency).await;
    }
    let (width, height) = match size {
        "auto" => (1024, 1024),
        other => {
            let (w, h) = other.split_once('x').unwrap_or(("1024", "1024"));
            (w.parse().unwrap_or(1024), h.parse().unwrap_or(1024))
        }
    };
    let cache_key = (output_format.clone(), width, height);
    let cached = if prompt.contains(NOISE_MARKER) {
        Some(Arc::new(
            base64::engine::general_purpose::STANDARD.encode(noisy_png(width, height)),
        ))
    } else if let Some(category) = unsafe_image_category(prompt) {
        Some(Arc::new(
            base64::engine::general_purpose::STANDARD.encode(flagged_png(width, height, category)),
        ))
    } else if prompt.contains(SIGNED_MARKER) {
        Some(Arc::new(
            base64::engine::general_purpose::STANDARD.encode(provider_signed(solid_png(width, height), model)),
        ))
    } else {
        state
            .images
            .lock()
            .ok()
            .and_then(|images| images.get(&cache_key).cloned())
    };
    let b64 = match cached {
        Some(b64) => b64,
        None => {
            let image = match output_format.as_str() {
                "jpeg" => solid_jpeg(width, height),
                "webp" => solid_webp(width, height),
                _ => state.options.png.clone().unwrap_or_else(|| solid_png(width, height)),
            };
            let b64 = Arc::new(base64::engine::general_purpose::STANDARD.encode(&image));
            if let Ok(mut images) = state.images.lock() {
                images.insert(cache_key, b64.clone());
            }
            b64
        }
    };
    let data: Vec<Value> = (0..n).map(|_| json!({"b64_json": b64.as_str()})).collect();
    let text_tokens = (prompt.len() / 4).max(1) as u64;
    let output_tokens = 1056 * n;
    if let Ok(mut billed) = state.billed.lock() {
        billed.push((text_tokens, output_tokens));
    }
    if stream {
        return streamed(
            state.options.latency,
            partial_images,
            b64.as_str(),
            &fields_for_stream(fields, width, height),
            output_tokens_for(n),
            (prompt.len() / 4).max(1) as u64,
        );
    }
    let body = json!({
        "created": chrono::Utc::now().timestamp(),
        "data": data,
        "background": if background == "transparent" { "transparent" } else { "opaque" },
        "output_format": output_format,
        "quality": if quality == "auto" { "medium" } else { quality.as_str() },
        "size": format!("{width}x{height}"),
        "usage": {
            "input_tokens": text_tokens,
            "input_tokens_details": {"image_tokens": 0, "text_tokens": text_tokens},
            "output_tokens": output_tokens,
            "total_tokens": text_tokens + output_tokens
        }
    });
    let cut = state.options.cut_off_answers;
    let counted = state.cut_off.fetch_update(
        std::sync::atomic::Ordering::SeqCst,
        std::sync::atomic::Ordering::SeqCst,
        |done| (done < cut).then_some(done + 1),
    );
    if counted.is_ok() {
        return cut_off(body.to_string());
    }
    let mut response = (StatusCode::OK, Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-request-id", HeaderValue::from_static("req_fake"));
    response
}

/// A 200 whose body stops half-way: the connection is dropped after the
/// first half (chunked, so the client sees an unfinished answer).
fn cut_off(body: String) -> Response {
    let mut first = body.into_bytes();
    first.truncate(first.len() / 2);
    let chunks = [
        Ok(axum::body::Bytes::from(first)),
        Err(std::io::Error::other("the fake drops the connection")),
    ];
    let mut response = axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

fn output_tokens_for(n: u64) -> u64 {
    1056 * n
}

/// The image fields every stream event repeats.
fn fields_for_stream(fields: &serde_json::Map<String, Value>, width: u32, height: u32) -> Value {
    json!({
        "size": format!("{width}x{height}"),
        "quality": fields.get("quality").and_then(Value::as_str).map(|q| if q == "auto" { "medium" } else { q }).unwrap_or("medium"),
        "background": "opaque",
        "output_format": fields.get("output_format").and_then(Value::as_str).unwrap_or("png"),
    })
}

/// `stream: true`: `image_generation.partial_image` events spread over the
/// generation time, then `image_generation.completed` with the usage.
fn streamed(
    latency: Duration,
    partials: u64,
    b64: &str,
    image: &Value,
    output_tokens: u64,
    text_tokens: u64,
) -> Response {
    let step = latency / (partials as u32 + 1);
    let mut events = Vec::new();
    for index in 0..partials {
        let mut event = image.clone();
        event["type"] = json!("image_generation.partial_image");
        event["b64_json"] = json!(b64);
        event["created_at"] = json!(chrono::Utc::now().timestamp());
        event["partial_image_index"] = json!(index);
        events.push(("image_generation.partial_image", event));
    }
    let mut completed = image.clone();
    completed["type"] = json!("image_generation.completed");
    completed["b64_json"] = json!(b64);
    completed["created_at"] = json!(chrono::Utc::now().timestamp());
    completed["usage"] = json!({
        "input_tokens": text_tokens,
        "input_tokens_details": {"image_tokens": 0, "text_tokens": text_tokens},
        "output_tokens": output_tokens,
        "total_tokens": text_tokens + output_tokens
    });
    events.push(("image_generation.completed", completed));
    let body = futures::stream::unfold(events.into_iter(), move |mut events| async move {
        let (name, data) = events.next()?;
        tokio::time::sleep(step).await;
        let chunk = format!("event: {name}\ndata: {data}\n\n");
        Some((
            Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(chunk)),
            events,
        ))
    });
    let mut response = axum::body::Body::from_stream(body).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/event-stream"));
    response
}

/// The classic Images API of self-hosted servers.
fn classic(fields: &serde_json::Map<String, Value>) -> Response {
    const CLASSIC_PARAMS: [&str; 6] = ["model", "prompt", "n", "size", "response_format", "user"];
    if let Some(unknown) = fields.keys().find(|k| !CLASSIC_PARAMS.contains(&k.as_str())) {
        return invalid(
            &format!("Unknown parameter: '{unknown}'."),
            unknown,
            "unknown_parameter",
        );
    }
    let Some(prompt) = fields.get("prompt").and_then(Value::as_str).filter(|p| !p.is_empty()) else {
        return invalid(
            "Missing required parameter: 'prompt'.",
            "prompt",
            "missing_required_parameter",
        );
    };
    let n = fields.get("n").and_then(Value::as_u64).unwrap_or(1).clamp(1, 10);
    let size = fields.get("size").and_then(Value::as_str).unwrap_or("512x512");
    let Some((width, height)) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
    else {
        return invalid(&format!("Invalid size: '{size}'."), "size", "invalid_value");
    };
    let image = match unsafe_image_category(prompt) {
        Some(category) => flagged_png(width, height, category),
        None => solid_png(width, height),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    let data: Vec<Value> = match fields.get("response_format").and_then(Value::as_str) {
        Some("b64_json") => (0..n).map(|_| json!({"b64_json": b64})).collect(),
        _ => (0..n)
            .map(|i| json!({"url": format!("http://127.0.0.1/generated/{i}.png")}))
            .collect(),
    };
    (
        StatusCode::OK,
        Json(json!({"created": chrono::Utc::now().timestamp(), "data": data})),
    )
        .into_response()
}

/// A valid baseline JPEG of the given size.
pub fn solid_jpeg(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let pixels = vec![96u8; (width * height * 3) as usize];
    let encoder = jpeg_encoder::Encoder::new(&mut out, 80);
    let _ = encoder.encode(
        &pixels,
        width.min(65_535) as u16,
        height.min(65_535) as u16,
        jpeg_encoder::ColorType::Rgb,
    );
    out
}

/// A valid lossless WebP of the given size.
pub fn solid_webp(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let pixels = vec![96u8; (width * height * 3) as usize];
    let _ = image_webp::WebPEncoder::new(&mut out).encode(&pixels, width, height, image_webp::ColorType::Rgb8);
    out
}

/// `HUGE_ANSWER_BYTES` of a generation answer whose `b64_json` never ends
/// soon enough, produced chunk by chunk as the client reads.
fn huge_answer() -> Response {
    const CHUNK: usize = 64 * 1024;
    static FILLER: [u8; CHUNK] = [b'A'; CHUNK];
    let head = axum::body::Bytes::from_static(b"{\"created\":0,\"data\":[{\"b64_json\":\"");
    let tail = axum::body::Bytes::from_static(b"\"}]}");
    let filler = (0..HUGE_ANSWER_BYTES / CHUNK).map(|_| axum::body::Bytes::from_static(&FILLER));
    let chunks = std::iter::once(head)
        .chain(filler)
        .chain(std::iter::once(tail))
        .map(Ok::<_, std::convert::Infallible>);
    let mut response = axum::body::Body::from_stream(futures::stream::iter(chunks)).into_response();
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    response
}

/// A valid PNG of random pixels (they barely compress).
pub fn noisy_png(width: u32, height: u32) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let pixels: Vec<u8> = (0..u64::from(width) * u64::from(height) * 3)
        .map(|_| {
            // xorshift64: cheap, and enough to defeat deflate.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    if let Ok(mut writer) = encoder.write_header() {
        let _ = writer.write_image_data(&pixels);
        let _ = writer.finish();
    }
    out
}

/// A small, valid PNG of the given size.
pub fn solid_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    if let Ok(mut writer) = encoder.write_header() {
        let pixels = vec![96u8; (width * height * 3) as usize];
        let _ = writer.write_image_data(&pixels);
        let _ = writer.finish();
    }
    out
}
