//! OpenTelemetry traces of the service: off unless
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (OTLP/gRPC); `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and
//! `OTEL_TRACES_SAMPLER_ARG` behave as the specification defines (the SDK
//! reads them). One SERVER span per MCP message, named and tagged as the
//! OpenTelemetry MCP conventions say, continuing the caller's trace: the
//! message's `params._meta.traceparent` when it has one, else the HTTP
//! `traceparent` Envoy sends. Exporting runs on the SDK's batch thread from
//! a bounded queue: it never blocks or fails a request.

use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::Value;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The running exporter, when traces are on.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// The service's name when `OTEL_SERVICE_NAME` does not say.
const DEFAULT_SERVICE_NAME: &str = "mcp-image-gateway";

/// The `tracing` layer that exports spans, when `OTEL_EXPORTER_OTLP_ENDPOINT`
/// is set; `None` (and nothing running) otherwise.
pub fn layer<S>() -> anyhow::Result<Option<impl tracing_subscriber::Layer<S>>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use tracing_subscriber::Layer;
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map_or(true, |e| e.is_empty()) {
        return Ok(None);
    }
    let exporter = Counting(opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?);
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("mcp-image-gateway");
    let _ = PROVIDER.set(provider);
    // Only what a trace reader needs, at the least cost per span: our own
    // spans and the routing decisions (fallback, retry, breaker) as span
    // events; not the audit and billing events (they carry the trace id
    // already), nor source locations, threads or busy/idle times.
    Ok(Some(
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(ByCallsite(exported)),
    ))
}

/// Our own spans, and the routing decisions as events on them.
fn exported(meta: &tracing::Metadata<'_>) -> bool {
    meta.target().starts_with(CRATE) && (meta.is_span() || meta.target().starts_with(DECISIONS))
}

/// A per-layer filter decided once per callsite from its metadata, so a
/// call pays a cached interest, not a check per span or event.
pub struct ByCallsite(pub fn(&tracing::Metadata<'_>) -> bool);

impl<S> tracing_subscriber::layer::Filter<S> for ByCallsite {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        (self.0)(meta)
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if (self.0)(meta) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }
}

/// Whose spans are exported.
const CRATE: &str = "mcp_image_gateway";

/// Where the routing decisions are logged: those events join the attempt's span.
const DECISIONS: &str = "mcp_image_gateway::routing";

/// Spans the exporter could not deliver (collector down or refusing); the
/// batch queue is bounded, so they are dropped, never waited for.
pub static SPANS_DROPPED: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

/// The OTLP exporter, counting what it fails to deliver.
#[derive(Debug)]
struct Counting<E>(E);

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
        let spans = batch.len() as u64;
        let result = self.0.export(batch).await;
        if result.is_err() {
            SPANS_DROPPED.inc_by(spans);
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: std::time::Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.0.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.0.set_resource(resource);
    }
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    PROVIDER.get().is_some()
}

/// Sends what is still queued (at shutdown).
pub fn flush() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.shutdown();
    }
}

/// The trace and span a request runs in, for its audit events.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TraceIds {
    pub trace_id: String,
    pub span_id: String,
    /// Whether the span is exported (metrics' exemplars point only to those).
    #[serde(skip)]
    pub sampled: bool,
}

/// What the server span says about one MCP message.
pub struct Message<'a> {
    pub method: &'a str,
    pub body: Option<&'a Value>,
    pub protocol_version: Option<&'a str>,
}

/// The SERVER span of one MCP message, a child of the caller's context, and
/// its ids.
pub fn server_span(message: &Message<'_>, headers: &http::HeaderMap) -> (tracing::Span, TraceIds) {
    let params = message.body.and_then(|b| b.get("params"));
    let tool = (message.method == "tools/call")
        .then(|| params.and_then(|p| p.get("name")).and_then(Value::as_str))
        .flatten();
    let name = match tool {
        Some(tool) => format!("{} {tool}", message.method),
        None => message.method.to_string(),
    };
    let id = message.body.and_then(|b| b.get("id")).map(|id| match id {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let span = tracing::info_span!(
        "mcp.server",
        otel.name = %name,
        otel.kind = "server",
        mcp.method.name = message.method,
        mcp.protocol.version = message.protocol_version,
        jsonrpc.request.id = id,
        gen_ai.tool.name = tool,
        gen_ai.operation.name = tool.map(|_| "execute_tool"),
        error.type = tracing::field::Empty,
        rpc.response.status_code = tracing::field::Empty,
    );
    let propagator = TraceContextPropagator::new();
    let meta = params
        .and_then(|p| p.get("_meta"))
        .filter(|m| m.get("traceparent").is_some());
    let parent = match meta {
        Some(meta) => propagator.extract(&MetaCarrier(meta)),
        None => propagator.extract(&HeaderCarrier(headers)),
    };
    let _ = span.set_parent(parent);
    let context = span.context();
    let span_context = context.span().span_context().clone();
    let ids = TraceIds {
        trace_id: span_context.trace_id().to_string(),
        span_id: span_context.span_id().to_string(),
        sampled: span_context.is_sampled(),
    };
    (span, ids)
}

/// Records how the message ended: the JSON-RPC error code, or `tool_error`
/// for a result with `isError: true`, or the HTTP status of a failure.
pub fn record_outcome(span: &tracing::Span, status: u16, reply: Option<&Value>) {
    if let Some(code) = reply.and_then(|r| r.get("error")).and_then(|e| e.get("code")) {
        span.record("rpc.response.status_code", code.to_string());
        span.record("error.type", code.to_string());
    } else if reply.and_then(|r| r.pointer("/result/isError")) == Some(&Value::Bool(true)) {
        span.record("error.type", "tool_error");
    } else if status >= 400 {
        span.record("error.type", status.to_string());
    }
}

/// One GenAI CLIENT span per provider attempt (`{operation} {model}`), as
/// the GenAI conventions name it; its outcome is recorded by
/// `record_attempt`.
pub fn attempt_span(provider: &str, model: &str, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "gen_ai.client",
        otel.name = %format!("generate_content {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "generate_content",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        gen_ai.output.type = "image",
        mcp_gateway.attempt = attempt,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// One GenAI CLIENT span per moderation attempt (`moderation {model}`);
/// its outcome is recorded by `record_attempt` like an image attempt's.
pub fn moderation_span(provider: &str, model: &str, stage: &str, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "gen_ai.client",
        otel.name = %format!("moderation {model}"),
        otel.kind = "client",
        gen_ai.operation.name = "moderation",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        mcp_gateway.policy.stage = stage,
        mcp_gateway.attempt = attempt,
        gen_ai.response.model = tracing::field::Empty,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
        error.type = tracing::field::Empty,
    )
}

/// What an attempt's span says of its result.
pub fn record_attempt(
    span: &tracing::Span,
    response_model: Option<&str>,
    usage: Option<(u64, u64)>,
    error: Option<&str>,
) {
    if let Some(model) = response_model {
        span.record("gen_ai.response.model", model);
    }
    if let Some((input, output)) = usage {
        span.record("gen_ai.usage.input_tokens", input);
        span.record("gen_ai.usage.output_tokens", output);
    }
    if let Some(error) = error {
        span.record("error.type", error);
    }
}

/// A task's generation: its own span, a child of the `tools/call` that
/// started it (it outlives that call). Later `tasks/get` spans link to it
/// (`link_current`), by the `traceparent` stored with the task's lease.
pub fn task_span(tool: &str, task_id: &str) -> tracing::Span {
    tracing::info_span!(
        "mcp_gateway.task",
        otel.name = %format!("task {tool}"),
        gen_ai.tool.name = tool,
        mcp_gateway.task.id = task_id,
    )
}

/// `span`'s context as a `traceparent` value; `None` when traces are off.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let mut headers = HeaderInjector(Vec::new());
    TraceContextPropagator::new().inject_context(&span.context(), &mut headers);
    headers
        .0
        .into_iter()
        .find(|(name, _)| name == "traceparent")
        .map(|(_, value)| value)
}

/// Links the current span to the one `traceparent` names (a task's
/// generation, from a `tasks/get` on any replica).
pub fn link_current(traceparent: &str) {
    let meta = serde_json::json!({ "traceparent": traceparent });
    let context = TraceContextPropagator::new().extract(&MetaCarrier(&meta));
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        tracing::Span::current().add_link(linked);
    }
}

/// `traceparent` (and `tracestate`) of the current span, for a provider
/// request, so a self-hosted server continues the trace; empty when traces
/// are off.
fn outgoing_context() -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    let mut headers = HeaderInjector(Vec::new());
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut headers);
    headers.0
}

/// The current span's context as provider request headers (none when traces are off).
pub fn outgoing_headers() -> reqwest::header::HeaderMap {
    outgoing_context()
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                reqwest::header::HeaderName::from_bytes(name.as_bytes()).ok()?,
                reqwest::header::HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
}

struct HeaderInjector(Vec<(String, String)>);

impl Injector for HeaderInjector {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

struct HeaderCarrier<'a>(&'a http::HeaderMap);

impl Extractor for HeaderCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// `params._meta` of an MCP message, as the MCP conventions carry context.
struct MetaCarrier<'a>(&'a Value);

impl Extractor for MetaCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(Value::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }
}
