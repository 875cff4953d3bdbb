//! The MCP tool surface: `generate_image`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use chrono::{SecondsFormat, Utc};
use http::request::Parts;
use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CancelTaskParams, CreateTaskResult, DetailedTask, GetTaskParams,
    GetTaskResult, ProgressNotificationParam, ProgressToken, ReadResourceRequestParams, ReadResourceResponse,
    ReadResourceResult, ResourceContents, Task, TaskPayload, TaskStatus,
};
use rmcp::model::{
    CallToolResult, ContentBlock, Implementation, JsonObject, Resource, ServerCapabilities, ServerConfig,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::args::{self, GenerateImageArgs};
use crate::audit::{BillingEvent, Outcome, ToolCallEvent};
use crate::backends::{ImageBackend, ImageRequest, PartialImage};
use crate::identity::Caller;
use crate::metrics::{ImageLabels, InFlight, ModelLabels, OpLabels, OrgLabels};
use crate::server::AppState;
use crate::task_lease::Lease;

/// Structured result of `generate_image`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct GenerateImageOutput {
    /// Signed links to the images, one per image.
    pub image_urls: Vec<String>,
    /// When the links stop working (RFC 3339, UTC).
    pub expires_at: String,
    /// The model that produced the images (`offline-preview` when no provider is configured).
    pub model: String,
    /// The style preset applied.
    pub style: String,
    /// Image size, WIDTHxHEIGHT.
    pub size: String,
    /// File format of the images (`png`, `jpeg` or `webp`).
    pub output_format: String,
    /// Estimated provider cost of this call in USD.
    pub estimated_cost_usd: f64,
}

/// One model the gateway routes to.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ModelInfo {
    /// The provider's model name.
    pub model: String,
    /// The backend that serves it (`openai`, `offline-preview`).
    pub backend: String,
    /// `primary`, or `fallback` (tried in order when the primary fails, or
    /// first when only it can serve what was asked).
    pub role: String,
    /// What the model accepts (sizes, qualities, formats, transparency, prices),
    /// when the capability table knows it.
    pub capabilities: Option<crate::models::ModelCapabilities>,
}

/// Structured result of `list_models`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ModelList {
    pub models: Vec<ModelInfo>,
    /// Sizes `generate_image` accepts, WIDTHxHEIGHT.
    pub sizes: Vec<String>,
    /// Style presets.
    pub styles: Vec<String>,
    pub output_formats: Vec<String>,
    pub max_images_per_call: u8,
    pub max_prompt_chars: u32,
    /// How long returned links stay valid.
    pub link_validity_secs: u64,
    /// Chains that replace the models above for some calls (by rule, organisation or style).
    pub routes: Vec<RouteInfo>,
}

/// A routing rule and the chain it selects.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RouteInfo {
    pub when: String,
    pub models: Vec<String>,
}

/// The MCP server handler.
#[derive(Clone)]
pub struct ImageTools {
    state: AppState,
    tool_router: ToolRouter<Self>,
}

#[tool_router]
impl ImageTools {
    pub fn new(state: AppState) -> Self {
        let mut tool_router = Self::tool_router();
        for route in tool_router.map.values_mut() {
            let (input, output) = portable_schemas(&route.attr);
            route.attr.input_schema = input;
            route.attr.output_schema = output;
        }
        Self { state, tool_router }
    }

    /// Lists the image models this gateway routes to and what a call may ask of them.
    #[tool(
        name = "list_models",
        description = "List the image models this gateway uses (primary first, then fallbacks) and the sizes, styles and limits generate_image accepts.",
        annotations(read_only_hint = true, idempotent_hint = true)
    )]
    async fn list_models(&self) -> Result<rmcp::Json<ModelList>, ErrorData> {
        let models = self
            .state
            .backend
            .backends()
            .enumerate()
            .map(|(index, backend)| ModelInfo {
                model: backend.model().to_string(),
                backend: backend.kind().to_string(),
                role: if index == 0 { "primary" } else { "fallback" }.to_string(),
                capabilities: self.state.catalog.get(backend.model()).cloned(),
            })
            .collect();
        Ok(rmcp::Json(ModelList {
            models,
            sizes: args::SIZES.iter().map(|s| s.to_string()).collect(),
            styles: crate::style::Style::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            output_formats: crate::models::OutputFormat::ALL
                .iter()
                .map(|f| f.as_str().to_string())
                .collect(),
            max_images_per_call: args::MAX_IMAGES as u8,
            max_prompt_chars: args::MAX_PROMPT_CHARS as u32,
            link_validity_secs: self.state.url_ttl.as_secs(),
            routes: self
                .state
                .routes
                .describe()
                .into_iter()
                .map(|(when, models)| RouteInfo { when, models })
                .collect(),
        }))
    }

    /// Generate images from a text prompt. Returns signed HTTPS links to PNG files.
    #[tool(
        name = "generate_image",
        description = "Generate images from a text prompt. Returns signed links to the images (PNG unless output_format says otherwise) that stay valid for at least 24 hours. Sizes, qualities, formats and transparent backgrounds depend on the model: see list_models.",
        input_schema = args::input_schema(),
        output_schema = schema_for_output::<GenerateImageOutput>()
    )]
    async fn generate_image(
        &self,
        arguments: JsonObject,
        Extension(parts): Extension<Parts>,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        let caller = caller_in(&parts)?;
        let args = match self.parse_arguments(&caller, Some(&arguments), started, &parts) {
            Ok(args) => args,
            Err(refusal) => return refusal,
        };
        let progress = Progress::for_request(&context, self.state.progress_interval);
        // If the client goes away mid-call, the transport drops this future:
        // the guard still writes the call's one audit event.
        let mut unfinished = Unfinished {
            tools: self.clone(),
            caller: caller.clone(),
            args: args.clone(),
            started,
            armed: true,
        };
        let result = self.run(&caller, &args, started, progress, context.ct.clone()).await;
        unfinished.armed = false;
        Ok(result)
    }
}

/// A tool's schemas without `type` arrays, computed once per tool (a router
/// is built per request).
fn portable_schemas(tool: &rmcp::model::Tool) -> (std::sync::Arc<JsonObject>, Option<std::sync::Arc<JsonObject>>) {
    type Schemas = (std::sync::Arc<JsonObject>, Option<std::sync::Arc<JsonObject>>);
    static CACHE: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<String, Schemas>>> =
        std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(tool.name.to_string())
        .or_insert_with(|| {
            let input = std::sync::Arc::new(crate::portable_schema::portable(&tool.input_schema));
            let output = tool
                .output_schema
                .as_ref()
                .map(|schema| std::sync::Arc::new(crate::portable_schema::portable(schema)));
            (input, output)
        })
        .clone()
}

/// Clock skew allowed between replicas when judging a lease.
const LEASE_SKEW_MS: u64 = 2_000;
/// The poll interval suggested to clients.
const TASK_POLL: Duration = Duration::from_secs(2);
/// How often a running task's record is re-read for a cancellation mark (one
/// small read per running task; generations take seconds to minutes).
const CANCEL_CHECK: Duration = Duration::from_secs(1);
/// How long task records are kept (the retention sweeper removes them later).
const TASK_TTL_MS: u64 = 24 * 3600 * 1000;

/// The verified caller of a request.
fn caller_of(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    let parts = context.extensions.get::<Parts>().ok_or_else(no_identity)?;
    caller_in(parts)
}

/// The caller `identity::require_assertion` verified; never anything the client sent.
pub(crate) fn caller_in(parts: &Parts) -> Result<Caller, ErrorData> {
    parts.extensions.get::<Caller>().cloned().ok_or_else(no_identity)
}

fn no_identity() -> ErrorData {
    ErrorData::invalid_request(
        "no verified identity on this request; the service must be reached through the gateway",
        None,
    )
}

/// What a call with bad arguments answers: a tool error result or a JSON-RPC error.
type Refusal = Result<CallToolResult, ErrorData>;

impl ImageTools {
    /// Validated arguments, or the refusal naming the field (audited as
    /// rejected): a tool error the model can correct for clients on
    /// 2025-11-25 and later (SEP-1303), -32602 for older ones.
    fn parse_arguments(
        &self,
        caller: &Caller,
        arguments: Option<&JsonObject>,
        started: Instant,
        parts: &Parts,
    ) -> Result<GenerateImageArgs, Refusal> {
        args::parse(arguments).map_err(|message| {
            self.audit(
                caller,
                None,
                started,
                Ended::failed(Outcome::Rejected, "invalid_arguments"),
            );
            let version = parts.headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok());
            if args::errors_are_tool_results(version) {
                Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
            } else {
                Err(ErrorData::invalid_params(message, None))
            }
        })
    }

    async fn start_task(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        let caller = caller_of(&context)?;
        let parts = context.extensions.get::<Parts>().ok_or_else(no_identity)?;
        let args = match self.parse_arguments(&caller, request.arguments.as_ref(), started, parts) {
            Ok(args) => args,
            Err(refusal) => return refusal.map(CallToolResponse::Complete),
        };
        let now = Utc::now().to_rfc3339();
        let task = Task::new(uuid::Uuid::new_v4().to_string(), TaskStatus::Working, now.clone(), now)
            .with_ttl_ms(TASK_TTL_MS)
            .with_poll_interval_ms(TASK_POLL.as_millis() as u64)
            .with_status_message("generating");
        // Durable before the client hears of it, so tasks/get on any replica
        // finds it; the lease first, so a record never exists without one.
        self.renew_lease(&caller, &task.task_id).await?;
        self.write_task(&caller, &DetailedTask::new(task.clone(), TaskPayload::Working))
            .await?;
        tracing::info!(task_id = %task.task_id, org = %caller.org, "task started");
        let tools = self.clone();
        let seed = task.clone();
        self.state.tasks.spawn(async move {
            let cancelled = CancellationToken::new();
            let lease_lost = Arc::new(AtomicBool::new(false));
            let watch = tools.watch_task(
                caller.clone(),
                seed.task_id.clone(),
                cancelled.clone(),
                lease_lost.clone(),
            );
            // The watcher only trips the token (run then stops the provider
            // call, stores nothing and audits); it never finishes by itself.
            let result = tokio::select! {
                result = tools.run(&caller, &args, started, None, cancelled.clone()) => result,
                _ = watch => return,
            };
            cancelled.cancel();
            // Stopped for a lost lease: readers report the lapse; nothing was stored.
            if lease_lost.load(Ordering::SeqCst) && result.is_error == Some(true) {
                return;
            }
            if cancelled_in_store(&tools, &caller, &seed.task_id).await {
                return;
            }
            let result = match serde_json::to_value(&result) {
                Ok(serde_json::Value::Object(result)) => result,
                _ => JsonObject::new(),
            };
            let mut finished = seed;
            finished.last_updated_at = Utc::now().to_rfc3339();
            finished.status_message = None;
            let done = DetailedTask::new(finished, TaskPayload::Completed { result });
            if let Err(error) = tools.write_task(&caller, &done).await {
                tracing::error!(?error, "recording a finished task failed");
            }
        });
        Ok(CallToolResponse::Task(CreateTaskResult::new(task)))
    }

    /// Keeps a running task's lease fresh and trips `cancelled` when the
    /// task's record says it was cancelled (by any replica), or when the lease
    /// could not be renewed before it lapses (then `lease_lost` is set).
    async fn watch_task(
        &self,
        caller: Caller,
        task_id: String,
        cancelled: CancellationToken,
        lease_lost: Arc<AtomicBool>,
    ) {
        let period = self.state.task_lease;
        let mut renewed_at = Instant::now();
        loop {
            tokio::time::sleep(CANCEL_CHECK).await;
            if cancelled.is_cancelled() {
                std::future::pending::<()>().await;
            }
            if renewed_at.elapsed() >= period / 3 {
                match self.renew_lease(&caller, &task_id).await {
                    Ok(()) => renewed_at = Instant::now(),
                    Err(_) if renewed_at.elapsed() + 2 * CANCEL_CHECK >= period => {
                        tracing::error!(task_id, "the task's lease could not be renewed; stopping it");
                        lease_lost.store(true, Ordering::SeqCst);
                        cancelled.cancel();
                        std::future::pending::<()>().await;
                    }
                    Err(_) => {}
                }
            }
            if cancelled_in_store(self, &caller, &task_id).await {
                cancelled.cancel();
                std::future::pending::<()>().await;
            }
        }
    }

    /// Extends the task's lease by one period from now.
    async fn renew_lease(&self, caller: &Caller, task_id: &str) -> Result<(), ErrorData> {
        let until_ms = Utc::now().timestamp_millis().max(0) as u64 + self.state.task_lease.as_millis() as u64;
        let lease =
            serde_json::to_vec(&Lease { until_ms }).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        self.state
            .store
            .put_task_lease(&caller.org, task_id, lease.into())
            .await
            .map_err(|error| {
                tracing::warn!(%error, task_id, "renewing a task lease failed");
                ErrorData::internal_error("the task store is unavailable; try again shortly", None)
            })
    }

    /// A `working` record whose lease lapsed (its replica died) becomes
    /// `failed`, recorded so every replica answers the same.
    async fn settle_lapsed(&self, caller: &Caller, task: DetailedTask) -> DetailedTask {
        if task.status() != TaskStatus::Working {
            return task;
        }
        let lease = match self.state.store.get_task_lease(&caller.org, &task.task.task_id).await {
            Ok(bytes) => serde_json::from_slice::<Lease>(&bytes).ok(),
            Err(crate::storage::StorageError::NotFound) => None,
            // Unknown: do not declare a task dead on a store hiccup.
            Err(_) => return task,
        };
        let created_ms = chrono::DateTime::parse_from_rfc3339(&task.task.created_at)
            .map_or(0, |t| t.timestamp_millis().max(0) as u64);
        let now_ms = Utc::now().timestamp_millis().max(0) as u64;
        let period_ms = self.state.task_lease.as_millis() as u64;
        // Allow for clock skew between the replica that renews and this one.
        if !crate::task_lease::lapsed(lease, created_ms, now_ms.saturating_sub(LEASE_SKEW_MS), period_ms) {
            return task;
        }
        let until = lease.map_or(created_ms + period_ms, |l| l.until_ms);
        let failed = crate::task_lease::failed(&task, until, Utc::now().to_rfc3339());
        tracing::warn!(
            task_id = task.task.task_id,
            "task lease lapsed; recording the task as failed"
        );
        if let Err(error) = self.write_task(caller, &failed).await {
            tracing::warn!(?error, "recording a lapsed task failed");
        }
        failed
    }

    async fn read_task(&self, caller: &Caller, task_id: &str) -> Result<DetailedTask, ErrorData> {
        let unknown = || ErrorData::invalid_params(format!("no task {task_id} of yours"), None);
        let bytes = match self.state.store.get_task(&caller.org, task_id).await {
            Ok(bytes) => bytes,
            Err(crate::storage::StorageError::NotFound | crate::storage::StorageError::InvalidKey) => {
                return Err(unknown())
            }
            Err(error) => {
                tracing::error!(%error, "reading a task failed");
                return Err(ErrorData::internal_error(
                    "the task store is unavailable; try again shortly",
                    None,
                ));
            }
        };
        let task: DetailedTask = serde_json::from_slice(&bytes).map_err(|_| unknown())?;
        Ok(self.settle_lapsed(caller, task).await)
    }

    async fn write_task(&self, caller: &Caller, task: &DetailedTask) -> Result<(), ErrorData> {
        let bytes = serde_json::to_vec(task).map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        self.state
            .store
            .put_task(&caller.org, &task.task.task_id, bytes.into())
            .await
            .map_err(|error| {
                tracing::error!(%error, "writing a task failed");
                ErrorData::internal_error("the task store is unavailable; try again shortly", None)
            })
    }
}

async fn cancelled_in_store(tools: &ImageTools, caller: &Caller, task_id: &str) -> bool {
    matches!(tools.read_task(caller, task_id).await, Ok(task) if task.status() == TaskStatus::Cancelled)
}

/// A call whose future may be dropped before it ends (client disconnect).
struct Unfinished {
    tools: ImageTools,
    caller: Caller,
    args: GenerateImageArgs,
    started: Instant,
    armed: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.armed {
            let ended = Ended::failed(Outcome::Cancelled, "client_gone");
            self.tools.audit(&self.caller, Some(&self.args), self.started, ended);
        }
    }
}

/// Progress notifications for one call, when the client asked for them.
pub struct Progress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    step: f64,
    interval: Duration,
}

impl Progress {
    fn for_request(context: &RequestContext<RoleServer>, interval: Duration) -> Option<Progress> {
        let token = context.meta.get_progress_token()?;
        Some(Progress {
            peer: context.peer.clone(),
            token,
            step: 0.0,
            interval,
        })
    }

    /// Sends the next notification; progress only ever increases.
    async fn send(&mut self, message: String) {
        self.step += 1.0;
        let param = ProgressNotificationParam::new(self.token.clone(), self.step).with_message(message);
        if let Err(error) = self.peer.notify_progress(param).await {
            tracing::debug!(%error, "progress notification not delivered");
        }
    }
}

/// Sends `generating` heartbeats every `progress.interval` until `work` ends,
/// so clients and proxies keep a long call alive.
/// Also reports partial images as a streaming backend announces them.
async fn with_heartbeats<T>(
    progress: &mut Option<Progress>,
    mut partials: Option<tokio::sync::mpsc::UnboundedReceiver<PartialImage>>,
    work: impl std::future::Future<Output = T>,
) -> T {
    let Some(progress) = progress.as_mut() else {
        return work.await;
    };
    let started = Instant::now();
    tokio::pin!(work);
    let mut ticker = tokio::time::interval(progress.interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                progress.send(format!("generating ({} s)", started.elapsed().as_secs())).await;
            }
            Some(partial) = async { match partials.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                progress.send(format!("partial image {} received", partial.index + 1)).await;
            }
        }
    }
}

impl ImageTools {
    /// Generates, stores and signs; every failure is a tool error the caller sees.
    async fn run(
        &self,
        caller: &Caller,
        args: &GenerateImageArgs,
        started: Instant,
        mut progress: Option<Progress>,
        cancelled: CancellationToken,
    ) -> CallToolResult {
        let _in_flight = InFlight::start(&self.state.metrics);
        let request = ImageRequest {
            prompt: args.style.apply(&args.prompt),
            size: args.size,
            n: args.n,
            quality: args.quality,
            background: args.background,
            output_format: args.output_format,
            output_compression: args.output_compression,
            user: caller.provider_user(),
            partials: None,
        };
        // The chain for this call: a rule, the organisation's or the style's, else the default.
        let router = match self.state.routes.select(&caller.org, args) {
            Some((why, router)) => {
                tracing::debug!(route = %why, "routed");
                router
            }
            None => self.state.backend.clone(),
        };
        // Checked against the capability table before any provider is called.
        if let Err(why) = router.check(&request) {
            self.audit(
                caller,
                Some(args),
                started,
                Ended::failed(Outcome::Rejected, "unsupported_by_model"),
            );
            return CallToolResult::error(vec![ContentBlock::text(format!(
                "{why}. Nothing was generated; call list_models to see what each model accepts."
            ))]);
        }
        if let Some(progress) = progress.as_mut() {
            progress.send(format!("generating with {}", router.model())).await;
        }
        // With a progress token, a streaming backend reports partial images.
        let (request, partials) = if progress.is_some() {
            let (sink, partials) = tokio::sync::mpsc::unbounded_channel();
            (
                ImageRequest {
                    partials: Some(sink),
                    ..request
                },
                Some(partials),
            )
        } else {
            (request, None)
        };
        let model_started = Instant::now();
        // A cancelled call stops the backend request: nothing is stored or billed.
        let routed = tokio::select! {
            routed = with_heartbeats(&mut progress, partials, router.generate(&request)) => routed,
            _ = cancelled.cancelled() => {
                self.audit(caller, Some(args), started, Ended::failed(Outcome::Cancelled, "cancelled"));
                return CallToolResult::error(vec![ContentBlock::text("The generation was cancelled; nothing was stored.")]);
            }
        };
        let model_time = model_started.elapsed();
        let (model_label, outcome_label) = match &routed {
            Ok(routed) => (routed.generation.model.clone(), "success"),
            Err(error) => (router.model().to_string(), error.class()),
        };
        self.state
            .metrics
            .model_seconds
            .get_or_create(&ModelLabels {
                model: model_label,
                outcome: outcome_label.into(),
            })
            .observe(model_started.elapsed().as_secs_f64());
        let (generation, routed_fallbacks) = match routed {
            Ok(routed) => (routed.generation, routed.fallbacks),
            Err(error) => {
                self.audit(
                    caller,
                    Some(args),
                    started,
                    Ended::failed(Outcome::ToolError, error.class()),
                );
                return CallToolResult::error(vec![ContentBlock::text(error.to_string())]);
            }
        };
        let largest = generation
            .images
            .iter()
            .map(|i| i.bytes.len())
            .max()
            .unwrap_or_default();
        if largest > self.state.max_image_bytes {
            self.audit(
                caller,
                Some(args),
                started,
                Ended::after(
                    &generation,
                    routed_fallbacks,
                    Outcome::ToolError,
                    Some("image_too_large"),
                    0,
                )
                .model_time(model_time),
            );
            return CallToolResult::error(vec![ContentBlock::text(format!(
                "The generated image is {largest} bytes, over the gateway's output limit of {} bytes; nothing was stored. Try a smaller size.",
                self.state.max_image_bytes
            ))]);
        }
        if let Some(progress) = progress.as_mut() {
            progress.send("storing".to_string()).await;
        }
        let now = Utc::now();
        let files: Vec<_> = generation.images.iter().map(|i| (i.bytes.clone(), i.format)).collect();
        let storage_started = Instant::now();
        let stored = self.state.store.put_all(&caller.org, &files, now).await;
        self.state
            .metrics
            .storage_seconds
            .get_or_create(&OpLabels {
                operation: "put".into(),
            })
            .observe(storage_started.elapsed().as_secs_f64());
        let keys = match stored {
            Ok(keys) => keys,
            Err(error) => {
                tracing::error!(%error, "storing generated images failed");
                self.audit(
                    caller,
                    Some(args),
                    started,
                    Ended::after(
                        &generation,
                        routed_fallbacks,
                        Outcome::ToolError,
                        Some("storage_failed"),
                        0,
                    )
                    .model_time(model_time),
                );
                return CallToolResult::error(vec![ContentBlock::text(
                    "The images were generated but could not be stored; nothing was saved. Try again shortly.",
                )]);
            }
        };
        let expires = now + self.state.url_ttl;
        let mut urls = Vec::with_capacity(keys.len());
        for key in &keys {
            match self.state.store.presigned_url(key, self.state.url_ttl).await {
                Ok(Some(url)) => urls.push(url),
                Ok(None) => urls.push(self.state.signer.url(key, expires.timestamp())),
                Err(error) => {
                    tracing::error!(%error, "presigning an image link failed");
                    self.state.store.delete_all(&keys).await;
                    self.audit(
                        caller,
                        Some(args),
                        started,
                        Ended::after(
                            &generation,
                            routed_fallbacks,
                            Outcome::ToolError,
                            Some("storage_failed"),
                            0,
                        )
                        .model_time(model_time),
                    );
                    return CallToolResult::error(vec![ContentBlock::text(
                        "The images were generated but no link could be signed; nothing was kept. Try again shortly.",
                    )]);
                }
            }
        }
        let output = GenerateImageOutput {
            image_urls: urls.clone(),
            expires_at: expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            model: generation.model.clone(),
            style: args.style.as_str().to_string(),
            size: args.size.to_string(),
            output_format: args.output_format.as_str().to_string(),
            estimated_cost_usd: self
                .state
                .pricing_for(&generation.model)
                .cost(generation.usage, generation.images.len())
                .0,
        };
        self.audit(
            caller,
            Some(args),
            started,
            Ended::after(&generation, routed_fallbacks, Outcome::Success, None, keys.len()).model_time(model_time),
        );
        result_for(&output, generation.model == crate::backends::offline_preview::MODEL)
    }

    fn audit(&self, caller: &Caller, args: Option<&GenerateImageArgs>, started: Instant, ended: Ended<'_>) {
        let size = args.map(|a| a.size.to_string()).unwrap_or_default();
        let primary = self.state.backend.primary();
        let metrics = &self.state.metrics;
        let outcome = match ended.outcome {
            Outcome::Success => "success",
            Outcome::ToolError => "tool_error",
            Outcome::Rejected => "rejected",
            Outcome::Cancelled => "cancelled",
        };
        metrics.call_finished("generate_image", outcome, started.elapsed(), ended.error_class);
        if ended.images_stored > 0 {
            let labels = ImageLabels {
                org: caller.org.clone(),
                model: ended.model.unwrap_or_default().to_string(),
                size: size.clone(),
            };
            metrics.images.get_or_create(&labels).inc_by(ended.images_stored as u64);
        }
        if ended.fallbacks > 0 && ended.outcome == Outcome::Success {
            metrics.fallbacks.inc();
        }
        let prompt_sha256 = args
            .map(|a| hex::encode(Sha256::digest(a.prompt.as_bytes())))
            .unwrap_or_default();
        let (cost_usd, priced_by) = match ended.generated {
            0 => (0.0, "none"),
            images => self
                .state
                .pricing_for(ended.model.unwrap_or_default())
                .cost(ended.usage, images),
        };
        if ended.generated > 0 {
            metrics
                .cost_usd
                .get_or_create(&OrgLabels {
                    org: caller.org.clone(),
                })
                .inc_by(cost_usd);
        }
        // The caller is billed for delivered images only; what the provider
        // charged for undelivered ones shows in the audit event's cost.
        if ended.outcome == Outcome::Success {
            BillingEvent {
                request_id: &caller.request_id,
                org: &caller.org,
                user: &caller.user,
                key_id: &caller.key_id,
                model: ended.model.unwrap_or_default(),
                size: &size,
                images: ended.generated,
                input_tokens: ended.usage.map(|u| u.input_tokens),
                output_tokens: ended.usage.map(|u| u.output_tokens),
                cost_usd,
                priced_by,
            }
            .emit();
        }
        ToolCallEvent {
            cost_usd,
            prompt_sha256: &prompt_sha256,
            prompt: args.filter(|_| self.state.log_prompts).map(|a| a.prompt.as_str()),
            request_id: &caller.request_id,
            user: &caller.user,
            org: &caller.org,
            key_id: &caller.key_id,
            tool: "generate_image",
            backend: primary.map(|b| b.kind()).unwrap_or_default(),
            model: ended.model.or(primary.map(|b| b.model())).unwrap_or_default(),
            fallbacks: ended.fallbacks,
            style: args.map(|a| a.style.as_str()).unwrap_or_default(),
            size: &size,
            n: args.map(|a| a.n).unwrap_or_default(),
            images_stored: ended.images_stored,
            latency_ms: started.elapsed().as_millis() as u64,
            model_ms: ended.model_us / 1000,
            processing_ms: (started.elapsed().as_micros() as u64).saturating_sub(ended.model_us) as f64 / 1000.0,
            outcome: ended.outcome,
            error_class: ended.error_class,
            input_tokens: ended.usage.map(|u| u.input_tokens),
            output_tokens: ended.usage.map(|u| u.output_tokens),
        }
        .emit();
    }
}

/// How a tool call ended, for its audit event.
struct Ended<'a> {
    outcome: Outcome,
    error_class: Option<&'a str>,
    images_stored: usize,
    usage: Option<crate::backends::Usage>,
    /// The model that served the call, when one did.
    model: Option<&'a str>,
    /// Images the model produced (billed even if not stored).
    generated: usize,
    fallbacks: u32,
    /// Time spent waiting for the model (and its retries and fallbacks), µs.
    model_us: u64,
}

impl<'a> Ended<'a> {
    /// A call that got as far as a generation.
    fn after(
        generation: &'a crate::backends::Generation,
        fallbacks: u32,
        outcome: Outcome,
        error_class: Option<&'a str>,
        images_stored: usize,
    ) -> Self {
        Self {
            outcome,
            error_class,
            images_stored,
            usage: generation.usage,
            model: Some(&generation.model),
            generated: generation.images.len(),
            fallbacks,
            model_us: 0,
        }
    }

    fn model_time(mut self, elapsed: Duration) -> Self {
        self.model_us = elapsed.as_micros() as u64;
        self
    }

    fn failed(outcome: Outcome, error_class: &'a str) -> Self {
        Self {
            outcome,
            error_class: Some(error_class),
            images_stored: 0,
            usage: None,
            model: None,
            generated: 0,
            fallbacks: 0,
            model_us: 0,
        }
    }
}

/// Shapes the tool result: structured content, a short text, the same JSON
/// as text for clients without `structuredContent`, and a link per image.
pub fn result_for(output: &GenerateImageOutput, offline_preview: bool) -> CallToolResult {
    let count = output.image_urls.len();
    let mut summary = format!(
        "Generated {count} image{} ({}, style {}) with {}. Links expire at {}.",
        if count == 1 { "" } else { "s" },
        output.size,
        output.style,
        output.model,
        output.expires_at
    );
    if offline_preview {
        summary.push_str(" Note: offline-preview renders a placeholder pattern from the prompt, not a model image; set OPENAI_API_KEY for real images.");
    }
    let structured = serde_json::to_value(output).unwrap_or_default();
    let mut content = vec![ContentBlock::text(summary), ContentBlock::text(structured.to_string())];
    let format = crate::models::OutputFormat::ALL
        .into_iter()
        .find(|f| f.as_str() == output.output_format)
        .unwrap_or(crate::models::OutputFormat::Png);
    for (index, url) in output.image_urls.iter().enumerate() {
        let mut link = Resource::new(url.clone(), format!("image-{}.{}", index + 1, format.extension()));
        link.mime_type = Some(format.mime_type().into());
        link.title = Some(format!("Generated image {} of {count}", index + 1));
        content.push(ContentBlock::resource_link(link));
    }
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(structured);
    result
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for ImageTools {
    /// Tools run as usual; a `generate_image` call from a client that declared
    /// the Tasks extension becomes a task: the call returns at once and the
    /// client polls `tasks/get` (on any replica) for the result.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let wants_task = context.client_capabilities().is_some_and(|c| c.supports_tasks());
        if wants_task && request.name == "generate_image" {
            return self.start_task(request, context).await;
        }
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        let caller = caller_of(&context)?;
        let task = self.read_task(&caller, &request.task_id).await?;
        Ok(GetTaskResult::new(task))
    }

    /// Marks the task cancelled in the shared record; the replica running it
    /// sees the mark within a poll interval, stops the provider call and
    /// stores nothing.
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let caller = caller_of(&context)?;
        let task = self.read_task(&caller, &request.task_id).await?;
        if task.status().is_terminal() {
            return Ok(());
        }
        let mut marked = task.task;
        marked.last_updated_at = Utc::now().to_rfc3339();
        marked.status_message = Some("cancelled by the client".into());
        let cancelled = DetailedTask::new(marked, TaskPayload::Cancelled);
        self.write_task(&caller, &cancelled).await
    }

    /// Generated images as MCP resources: the caller's organisation may read
    /// its own images by the link `generate_image` returned (or `image://{key}`);
    /// anyone else gets "not found", so existence is not revealed.
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = caller_of(&context)?;
        let not_found = || {
            ErrorData::resource_not_found(
                format!("no image of yours at {}", request.uri),
                Some(serde_json::json!({"uri": request.uri})),
            )
        };
        let key = crate::storage::key_in_uri(&request.uri).ok_or_else(not_found)?;
        if key.split('/').next() != Some(caller.org.as_str()) {
            tracing::info!(org = %caller.org, uri = %request.uri, "resources/read of another organisation's image refused");
            return Err(not_found());
        }
        let format = crate::storage::format_of(&key).ok_or_else(not_found)?;
        let bytes = match self.state.store.get(&key).await {
            Ok(bytes) => bytes,
            Err(crate::storage::StorageError::NotFound | crate::storage::StorageError::InvalidKey) => {
                return Err(not_found())
            }
            Err(error) => {
                tracing::error!(%key, %error, "reading an image resource failed");
                return Err(ErrorData::internal_error(
                    "the image store is unavailable; try again shortly",
                    None,
                ));
            }
        };
        let blob = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let contents = ResourceContents::blob(blob, request.uri.clone()).with_mime_type(format.mime_type());
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_tasks()
                .build(),
        )
            .with_server_info(Implementation::new("mcp-image-gateway", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Call generate_image with a prompt to create images; the result holds signed links valid for 24 hours. list_models tells which sizes, qualities, formats and backgrounds each model supports.",
            )
    }
}
