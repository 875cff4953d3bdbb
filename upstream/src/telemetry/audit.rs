//! Audit and billing events: exactly one structured JSON line per finished
//! `tools/call`, on the `audit` tracing target.

use serde::Serialize;

/// How a tool call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Images generated, stored and signed.
    Success,
    /// The tool ran and failed in a way the caller sees (`isError: true`).
    ToolError,
    /// The call was refused before running (bad arguments, no identity).
    Rejected,
    /// The client cancelled the call; nothing was stored.
    Cancelled,
}

/// One finished tool call.
#[derive(Debug, Clone, Serialize)]
pub struct ToolCallEvent<'a> {
    pub request_id: &'a str,
    pub user: &'a str,
    pub org: &'a str,
    pub key_id: &'a str,
    pub tool: &'a str,
    pub backend: &'a str,
    pub model: &'a str,
    /// Preferred models that did not serve this call (0: the primary did).
    pub fallbacks: u32,
    pub style: &'a str,
    pub size: &'a str,
    pub n: u8,
    pub images_stored: usize,
    pub latency_ms: u64,
    /// Of which waiting for the model.
    pub model_ms: u64,
    /// The gateway's own time (latency less model time), with µs precision.
    pub processing_ms: f64,
    pub outcome: Outcome,
    pub error_class: Option<&'a str>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// Estimated provider cost of the call in USD (0 when nothing was generated).
    pub cost_usd: f64,
    /// SHA-256 of the prompt: correlates calls without keeping their text.
    pub prompt_sha256: &'a str,
    /// The prompt itself, only when `GATEWAY_LOG_PROMPTS` is on.
    pub prompt: Option<&'a str>,
    /// The arm of a weighted route that served the call.
    pub arm: Option<&'a str>,
    /// The model the caller asked for, when it did.
    pub requested_model: Option<&'a str>,
    /// The trace and span the call ran in, when traces are exported.
    pub trace: Option<&'a crate::telemetry::traces::TraceIds>,
}

impl ToolCallEvent<'_> {
    /// Writes the event as one JSON log line.
    pub fn emit(&self) {
        tracing::info!(
            target: "audit",
            event = "tool_call",
            method = "tools/call",
            request_id = self.request_id,
            user = self.user,
            org = self.org,
            key_id = self.key_id,
            tool = self.tool,
            backend = self.backend,
            model = self.model,
            fallbacks = self.fallbacks,
            style = self.style,
            size = self.size,
            n = self.n,
            images_stored = self.images_stored,
            latency_ms = self.latency_ms,
            model_ms = self.model_ms,
            processing_ms = self.processing_ms,
            outcome = ?self.outcome,
            error_class = self.error_class,
            input_tokens = self.input_tokens,
            output_tokens = self.output_tokens,
            cost_usd = self.cost_usd,
            prompt_sha256 = self.prompt_sha256,
            prompt = self.prompt,
            arm = self.arm,
            requested_model = self.requested_model,
            trace_id = self.trace.map(|t| t.trace_id.as_str()),
            span_id = self.trace.map(|t| t.span_id.as_str()),
        );
    }
}

/// A billable generation: images produced by a model (stored or not).
#[derive(Debug, Clone, Serialize)]
pub struct BillingEvent<'a> {
    pub request_id: &'a str,
    pub org: &'a str,
    pub user: &'a str,
    pub key_id: &'a str,
    pub model: &'a str,
    pub size: &'a str,
    pub images: usize,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cost_usd: f64,
    /// `tokens` (provider-reported usage × token prices) or `per_image`.
    pub priced_by: &'a str,
    /// The images were withheld by the content policy: made and paid for, never delivered.
    pub blocked: bool,
    /// The trace and span the call ran in, when traces are exported.
    pub trace: Option<&'a crate::telemetry::traces::TraceIds>,
}

impl BillingEvent<'_> {
    /// Writes the event as one JSON log line on the `billing` target.
    pub fn emit(&self) {
        tracing::info!(
            target: "billing",
            event = "image_generation",
            request_id = self.request_id,
            org = self.org,
            user = self.user,
            key_id = self.key_id,
            model = self.model,
            size = self.size,
            images = self.images,
            input_tokens = self.input_tokens,
            output_tokens = self.output_tokens,
            cost_usd = self.cost_usd,
            priced_by = self.priced_by,
            blocked = self.blocked,
            trace_id = self.trace.map(|t| t.trace_id.as_str()),
            span_id = self.trace.map(|t| t.span_id.as_str()),
        );
    }
}

/// A call refused by the content policy (or by the provider's own safety
/// system): where, why and by which rule; the prompt as its hash only.
#[derive(Debug, Clone, Serialize)]
pub struct ContentRefusalEvent<'a> {
    pub request_id: &'a str,
    pub org: &'a str,
    pub user: &'a str,
    /// `prompt`, `image` or `provider`.
    pub stage: &'a str,
    pub category: &'a str,
    /// `deny_terms`, `moderation:<model>` or `provider:<model>` (the model that refused).
    pub rule: &'a str,
    /// Where in the policy file the rule came from (`default`, `orgs.<org>`).
    pub policy: Option<&'a str>,
    pub prompt_sha256: &'a str,
}

/// A prompt or images let through unchecked: the moderation model could
/// not answer and the organisation's policy says `allow`.
pub struct ContentUncheckedEvent<'a> {
    pub request_id: &'a str,
    pub org: &'a str,
    pub user: &'a str,
    /// `prompt` or `image`.
    pub stage: &'a str,
    /// Why the moderation model did not answer (`provider_unreachable`, …).
    pub error_class: &'a str,
    /// Where in the policy file the `allow` came from (`default`, `orgs.<org>`).
    pub policy: &'a str,
}

impl ContentUncheckedEvent<'_> {
    /// Writes the event as one JSON log line on the `audit` target.
    pub fn emit(&self) {
        tracing::info!(
            target: "audit",
            event = "content_unchecked",
            request_id = self.request_id,
            org = self.org,
            user = self.user,
            stage = self.stage,
            error_class = self.error_class,
            policy = self.policy,
        );
    }
}

impl ContentRefusalEvent<'_> {
    /// Writes the event as one JSON log line on the `audit` target.
    pub fn emit(&self) {
        tracing::info!(
            target: "audit",
            event = "content_refusal",
            request_id = self.request_id,
            org = self.org,
            user = self.user,
            stage = self.stage,
            category = self.category,
            rule = self.rule,
            policy = self.policy,
            prompt_sha256 = self.prompt_sha256,
        );
    }
}
