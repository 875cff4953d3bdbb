//! The MCP tool surface: `generate_image`, `edit_image`, `create_upload`,
//! `list_models`, and the handler's tasks and resources entry points. Each
//! tool validates, then hands a prepared call to the one pipeline
//! (`pipeline::run`); tasks, progress and resources have modules of their own.

use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use rmcp::handler::server::common::schema_for_output;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::Extension;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelTaskParams, ContentBlock, DetailedTask,
    GetTaskParams, GetTaskResult, Implementation, JsonObject, ReadResourceRequestParams, ReadResourceResponse,
    ServerCapabilities, ServerConfig, TaskPayload,
};
use rmcp::service::RequestContext;
use rmcp::{tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Serialize;

use crate::identity::Caller;
use crate::pipeline::args;
use crate::pipeline::progress::Progress;
use crate::pipeline::run::{self, Ended, GenerateImageOutput, ImageCall, Unfinished};
use crate::pipeline::screen;
use crate::state::AppState;
use crate::storage::uploads::UploadTicket;
use crate::telemetry::audit::Outcome;

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
    pub capabilities: Option<crate::routing::catalog::ModelCapabilities>,
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
    /// Models your organisation may ask for by name (`model` of generate_image and edit_image).
    pub selectable: Vec<String>,
    /// Your organisation's monthly budget, when one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<crate::routing::budget::BudgetStatus>,
}

/// A routing rule and the chain it selects.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RouteInfo {
    pub when: String,
    pub models: Vec<String>,
}

/// The MCP server handler: one per request (stateless), so what every
/// request shares — the tools and their schemas — is built once.
#[derive(Clone)]
pub struct ImageTools {
    pub(crate) state: AppState,
    tool_router: Arc<ToolRouter<Self>>,
}

#[tool_router]
impl ImageTools {
    pub fn new(state: AppState) -> Self {
        static TOOLS: std::sync::OnceLock<Arc<ToolRouter<ImageTools>>> = std::sync::OnceLock::new();
        let tool_router = TOOLS
            .get_or_init(|| {
                let mut tool_router = Self::tool_router();
                for route in tool_router.map.values_mut() {
                    let (input, output) = portable_schemas(&route.attr);
                    route.attr.input_schema = input;
                    route.attr.output_schema = output;
                    if matches!(route.attr.name.as_ref(), "generate_image" | "edit_image") {
                        route.attr.meta = Some(super::studio::tool_meta());
                    }
                }
                Arc::new(tool_router)
            })
            .clone();
        Self { state, tool_router }
    }

    /// Lists the image models this gateway routes to and what a call may ask of them.
    #[tool(
        name = "list_models",
        description = "List the image models this gateway uses (primary first, then fallbacks), the models your organisation may ask for by name, and the sizes, styles and limits generate_image and edit_image accept.",
        annotations(read_only_hint = true, idempotent_hint = true)
    )]
    async fn list_models(&self, Extension(parts): Extension<Parts>) -> Result<rmcp::Json<ModelList>, ErrorData> {
        let caller = caller_in(&parts)?;
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
            styles: crate::media::style::Style::ALL
                .iter()
                .map(|s| s.as_str().to_string())
                .collect(),
            output_formats: crate::media::types::OutputFormat::ALL
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
            selectable: self.state.routes.selectable(&caller.org),
            budget: self.state.budgets.status(&caller.org).await,
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
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.image_tool("generate_image", arguments, context).await
    }

    /// Edit or in-paint images passed by reference.
    #[tool(
        name = "edit_image",
        description = "Edit an image, or in-paint part of it. `images` are references (image://… or a link from generate_image/edit_image, upload://… from create_upload): the first is edited, the others guide the model. Limit the change with `mask` (a PNG whose transparent pixels mark the area) or `mask_region` ({x, y, width, height} in pixels). Returns signed links like generate_image.",
        input_schema = args::edit_input_schema(),
        output_schema = schema_for_output::<GenerateImageOutput>()
    )]
    async fn edit_image(
        &self,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.image_tool("edit_image", arguments, context).await
    }

    /// A one-time URL to upload an image for `edit_image`.
    #[tool(
        name = "create_upload",
        description = "Get a one-time URL to upload an image (or mask) for edit_image: PUT the bytes there with the given headers, then pass the returned reference (upload://…) to edit_image. The URL expires after a few minutes and takes up to max_bytes.",
        input_schema = args::upload_input_schema(),
        output_schema = schema_for_output::<UploadTicket>()
    )]
    async fn create_upload(
        &self,
        arguments: JsonObject,
        Extension(parts): Extension<Parts>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller_in(&parts)?;
        let format = match args::parse_upload(Some(&arguments)) {
            Ok(format) => format,
            Err(message) => return argument_refusal(&parts, message),
        };
        match self
            .state
            .uploads
            .ticket(&self.state.store, &self.state.signer, &caller.org, &caller.user, format)
            .await
        {
            Ok(ticket) => {
                let structured = serde_json::to_value(&ticket).unwrap_or_default();
                let summary = format!(
                    "PUT the image to upload_url with the headers given (at most {} bytes, before {}), then pass {} to edit_image.",
                    ticket.max_bytes, ticket.expires_at, ticket.reference
                );
                let mut result = CallToolResult::success(vec![
                    ContentBlock::text(summary),
                    ContentBlock::text(structured.to_string()),
                ]);
                result.structured_content = Some(structured);
                Ok(result)
            }
            Err(message) => Ok(CallToolResult::error(vec![ContentBlock::text(message)])),
        }
    }
}

impl ImageTools {
    /// A `model` the caller's organisation may not choose is refused before
    /// anything else happens (the pipeline selects by the same rule).
    fn check_model_choice(&self, caller: &Caller, args: &args::GenerateImageArgs) -> Result<(), String> {
        match &args.model {
            Some(model) => self.state.routes.choose(&caller.org, model).map(|_| ()),
            None => Ok(()),
        }
    }
}

/// Tools that make images (and may run as tasks).
const IMAGE_TOOLS: [&str; 2] = ["generate_image", "edit_image"];

impl ImageTools {
    /// One image tool call: prepare, then the pipeline.
    async fn image_tool(
        &self,
        tool: &'static str,
        arguments: JsonObject,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let started = Instant::now();
        // Borrowed, not cloned: a call may wait a long time in a pool's line.
        let parts = context.extensions.get::<Parts>().ok_or_else(no_identity)?;
        let caller = caller_in(parts)?;
        // Boxed so its size is not carried through the whole call.
        let call = match Box::pin(self.prepare(tool, &caller, Some(&arguments), started, parts)).await {
            Ok(call) => call,
            Err(refusal) => return refusal,
        };
        let progress = Progress::for_request(&context, self.state.progress_interval);
        let cancelled = context.ct.clone();
        // Not held while the call waits for a model (thousands may).
        drop((arguments, context));
        // If the client goes away mid-call, the transport drops this future:
        // the guard still writes the call's one audit event.
        let mut unfinished = Unfinished {
            state: &self.state,
            caller: &caller,
            call: &call,
            started,
            armed: true,
        };
        let result = run::run(&self.state, &caller, &call, started, progress, cancelled).await;
        unfinished.armed = false;
        Ok(result)
    }

    /// An image tool call from a client that declared Tasks: checked, then started as a task.
    async fn call_as_task(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let started = Instant::now();
        let parts = context.extensions.get::<Parts>().ok_or_else(no_identity)?;
        let caller = caller_in(parts)?;
        let call = match self
            .prepare(&request.name, &caller, request.arguments.as_ref(), started, parts)
            .await
        {
            Ok(call) => call,
            Err(refusal) => return refusal.map(CallToolResponse::Complete),
        };
        self.start_task(caller, call, started).await
    }

    /// Validates a call of `tool` and, for an edit, reads and checks its
    /// inputs. The refusal is the answer to send: bad arguments follow the
    /// client's revision (SEP-1303); unusable inputs are tool errors.
    async fn prepare(
        &self,
        tool: &str,
        caller: &Caller,
        arguments: Option<&JsonObject>,
        started: Instant,
        parts: &Parts,
    ) -> Result<ImageCall, Refusal> {
        let rejected = |class: &'static str| {
            run::audit(
                &self.state,
                caller,
                tool,
                None,
                started,
                Ended::failed(Outcome::Rejected, class),
            );
        };
        let call = if tool == "edit_image" {
            let edit = args::parse_edit(arguments).map_err(|message| {
                rejected("invalid_arguments");
                argument_refusal(parts, message)
            })?;
            crate::pipeline::edit::prepare(&self.state, caller, edit)
                .await
                .map_err(|message| {
                    rejected("invalid_input");
                    Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
                })?
        } else {
            let args = args::parse(arguments).map_err(|message| {
                rejected("invalid_arguments");
                argument_refusal(parts, message)
            })?;
            self.check_model_choice(caller, &args).map_err(|message| {
                rejected("model_not_allowed");
                Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
            })?;
            ImageCall {
                tool: "generate_image",
                args,
                edit: None,
                notes: Vec::new(),
                sources: Vec::new(),
            }
        };
        self.screen_prompt(caller, call, started, parts).await
    }

    /// The content policy's prompt check, before any image provider is
    /// called: a refusal costs nothing, and follows the client's revision
    /// like bad arguments (SEP-1303), naming the category.
    async fn screen_prompt(
        &self,
        caller: &Caller,
        call: ImageCall,
        started: Instant,
        parts: &Parts,
    ) -> Result<ImageCall, Refusal> {
        let policy = screen::policy_of(&self.state, caller);
        if policy.is_off() {
            return Ok(call);
        }
        let Err(refused) = screen::prompt(&self.state, caller, &policy, &call).await else {
            return Ok(call);
        };
        screen::record(&self.state, caller, &call.args.prompt, Some(&policy), &refused);
        run::audit(
            &self.state,
            caller,
            call.tool,
            Some(&call.args),
            started,
            Ended::failed(Outcome::Rejected, refused.error_class()),
        );
        let version = parts.headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok());
        if args::errors_are_tool_results(version) {
            Err(Ok(screen::tool_error(&refused, None)))
        } else {
            Err(Err(ErrorData::invalid_params(
                screen::message(&refused, None),
                Some(screen::details(&refused)),
            )))
        }
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
            let input = std::sync::Arc::new(crate::protocol::schema::portable(&tool.input_schema));
            let output = tool
                .output_schema
                .as_ref()
                .map(|schema| std::sync::Arc::new(crate::protocol::schema::portable(schema)));
            (input, output)
        })
        .clone()
}

/// The verified caller of a request.
pub(crate) fn caller_of(context: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    let parts = context.extensions.get::<Parts>().ok_or_else(no_identity)?;
    caller_in(parts)
}

/// The caller `server::assertion` verified; never anything the client sent.
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

/// Bad arguments: a tool error the model can correct for clients on
/// 2025-11-25 and later (SEP-1303), -32602 for older ones.
fn argument_refusal(parts: &Parts, message: String) -> Refusal {
    let version = parts.headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok());
    if args::errors_are_tool_results(version) {
        Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
    } else {
        Err(ErrorData::invalid_params(message, None))
    }
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
        // The edge decided this already; a call that got past it runs nothing it may not.
        caller_of(&context)?
            .may_call(&request.name)
            .map_err(|message| ErrorData::invalid_params(message, None))?;
        let wants_task = context.client_capabilities().is_some_and(|c| c.supports_tasks());
        if wants_task && IMAGE_TOOLS.contains(&request.name.as_ref()) {
            // Boxed: a plain call's future (held while it waits for a model) stays small.
            return Box::pin(self.call_as_task(request, context)).await;
        }
        let call = rmcp::handler::server::tool::ToolCallContext::new(self, request, context);
        self.tool_router.call(call).await
    }

    async fn get_task(
        &self,
        request: GetTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<GetTaskResult, ErrorData> {
        // Boxed, as `cancel_task`: the request's task is sized to its
        // largest method future, and every waiting tool call would pay it.
        Box::pin(async move {
            let caller = caller_of(&context)?;
            let task = self.read_task(&caller, &request.task_id).await?;
            Ok(GetTaskResult::new(task))
        })
        .await
    }

    /// Marks the task cancelled in the shared record; the replica running it
    /// sees the mark within a poll interval, stops the provider call and
    /// stores nothing. A task that ended first keeps its end (`finish_task`).
    async fn cancel_task(
        &self,
        request: CancelTaskParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        Box::pin(async move {
            let caller = caller_of(&context)?;
            let task = self.read_task(&caller, &request.task_id).await?;
            if task.status().is_terminal() {
                return Ok(());
            }
            let mut marked = task.task;
            marked.last_updated_at = chrono::Utc::now().to_rfc3339();
            marked.status_message = Some("cancelled by the client".into());
            let cancelled = DetailedTask::new(marked, TaskPayload::Cancelled);
            match self.finish_task(&caller, &cancelled).await? {
                crate::storage::store::TaskEnd::Erased => Err(ErrorData::invalid_params(
                    format!("no task {} of yours", request.task_id),
                    None,
                )),
                _ => Ok(()),
            }
        })
        .await
    }

    /// The tools, less those the edge's per-tool access keeps from this
    /// caller (the assertion's `tools`): a list shows only what its reader
    /// may call.
    async fn list_tools(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, ErrorData> {
        let hints = context
            .protocol_version()
            .is_some_and(|version| version >= rmcp::model::ProtocolVersion::V_2026_07_28);
        let visible = caller_of(&context).ok().and_then(|caller| caller.tools);
        let mut tools = self.tool_router.list_all();
        if let Some(visible) = &visible {
            tools.retain(|tool| visible.iter().any(|name| name == tool.name.as_ref()));
        }
        // A list cut to its reader is that reader's alone.
        let scope = match visible {
            Some(_) => rmcp::model::CacheScope::Private,
            None => rmcp::model::CacheScope::Public,
        };
        Ok(rmcp::model::ListToolsResult {
            result_type: Some(rmcp::model::ResultType::COMPLETE),
            tools,
            meta: None,
            next_cursor: None,
            ttl_ms: hints.then_some(0),
            cache_scope: hints.then_some(scope),
        })
    }

    /// The studio app (`protocol::studio`), and images as MCP resources for
    /// their own organisation only (`protocol::resources`).
    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let caller = caller_of(&context)?;
        if request.uri == super::studio::STUDIO_URI {
            return Ok(super::studio::read(&super::studio::origins(&self.state).await).into());
        }
        self.read_image_resource(&caller, &request.uri).await
    }

    /// The image studio app; images are read by their links, not listed.
    async fn list_resources(
        &self,
        _request: Option<rmcp::model::PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        caller_of(&context)?;
        let studio = super::studio::listed(&super::studio::origins(&self.state).await);
        Ok(rmcp::model::ListResourcesResult::with_all_items(vec![studio]))
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
                "Call generate_image with a prompt to create images; the result holds signed links valid for 24 hours. To change an image, call edit_image with its link (or image://… / upload://… from create_upload) and, to change only part of it, mask_region {x, y, width, height}. list_models tells which sizes, qualities, formats and backgrounds each model supports, and which models edit.",
            )
    }
}
