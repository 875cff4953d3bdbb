//! The one path every image tool takes once its call is prepared: route →
//! capability check → provider (with heartbeats, cancellation) → output cap
//! → Content Credentials → store → sign links → audit and billing → the
//! tool result. `generate_image`
//! and `edit_image` differ only in what they hand it (`ImageCall::edit`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

use chrono::{SecondsFormat, Utc};
use rmcp::model::{CallToolResult, ContentBlock, Resource};
use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use crate::identity::Caller;
use crate::pipeline::args::GenerateImageArgs;
use crate::pipeline::progress::{with_heartbeats, Progress};
use crate::pipeline::screen;
use crate::providers::{BackendError, EditInputs, ImageBackend, ImageRequest};
use crate::routing::budget::tab::{ModelPrice, Tab};
use crate::routing::chain::Claim;
use crate::routing::rules::{CallFacts, Strategy};
use crate::state::AppState;
use crate::telemetry::audit::{BillingEvent, Outcome, ToolCallEvent};
use crate::telemetry::metrics::{exemplar, ArmLabels, CostLabels, ImageLabels, InFlight, ModelLabels, OpLabels};

/// One call of an image tool, validated and with its inputs read.
#[derive(Debug, Clone)]
pub struct ImageCall {
    /// `generate_image` or `edit_image`.
    pub tool: &'static str,
    pub args: GenerateImageArgs,
    /// The checked inputs of an edit.
    pub edit: Option<Arc<EditInputs>>,
    /// Said in the result's text (e.g. which size an edit was given).
    pub notes: Vec<String>,
    /// The references an edit started from, as the caller gave them.
    pub sources: Vec<String>,
}

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
    /// `edit_image` only: the references the edit started from (the edited image first).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_images: Vec<String>,
    /// The arm of a weighted route that served the call (for comparing arms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
    /// Per image, in the order of `image_urls`: its embedded C2PA Content
    /// Credentials (`null`: delivered without, when the gateway's policy allows).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub content_credentials: Vec<Option<crate::provenance::Credentials>>,
}

/// A call whose future may be dropped before it ends (client disconnect):
/// the guard still writes the call's one audit event.
/// It borrows what the call holds: nothing is copied for it.
pub(crate) struct Unfinished<'a> {
    pub state: &'a AppState,
    pub caller: &'a Caller,
    pub call: &'a ImageCall,
    pub started: Instant,
    pub armed: bool,
}

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if self.armed {
            let ended = Ended::failed(Outcome::Cancelled, "client_gone");
            audit(
                self.state,
                self.caller,
                self.call.tool,
                Some(&self.call.args),
                self.started,
                ended,
            );
        }
    }
}

/// Generates (or edits), stores and signs; every failure is a tool error the caller sees.
pub(crate) async fn run(
    state: &AppState,
    caller: &Caller,
    call: &ImageCall,
    started: Instant,
    mut progress: Option<Progress>,
    cancelled: CancellationToken,
) -> CallToolResult {
    let _in_flight = InFlight::start(&state.metrics);
    let args = &call.args;
    let audit = |ended: Ended<'_>| audit(state, caller, call.tool, Some(args), started, ended);
    // The policy this call started with (its prompt passed it in `prepare`).
    let policy = screen::policy_of(state, caller);
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
        edit: call.edit.clone(),
        moderation: policy.provider_moderation.map(|m| m.as_str()),
    };
    // The chain: the caller's choice, a rule, the organisation's, the style's, else the default.
    let facts = CallFacts {
        org: &caller.org,
        user: &caller.user,
        tool: call.tool,
        asked: args.asked(),
    };
    let routing = tracing::info_span!(
        "mcp_gateway.route",
        mcp_gateway.route.rule = tracing::field::Empty,
        mcp_gateway.route.arm = tracing::field::Empty,
        mcp_gateway.route.model = tracing::field::Empty,
    );
    let selected = match routing.in_scope(|| state.routes.select(&facts)) {
        Ok(selected) => selected,
        Err(message) => {
            audit(Ended::failed(Outcome::Rejected, "model_not_allowed"));
            return CallToolResult::error(vec![ContentBlock::text(message)]);
        }
    };
    let arm = selected.as_ref().and_then(|s| s.arm.clone());
    let requested = selected.as_ref().and_then(|s| s.requested.clone());
    let audit = |ended: Ended<'_>| audit(ended.route(arm.as_deref(), requested.as_deref()));
    let (router, strategy) = match &selected {
        Some(selected) => {
            tracing::debug!(route = %selected.why, arm = ?selected.arm, "routed");
            routing.record("mcp_gateway.route.rule", selected.why.as_str());
            if let Some(arm) = &selected.arm {
                routing.record("mcp_gateway.route.arm", arm.as_str());
            }
            (selected.router.clone(), selected.strategy)
        }
        None => {
            routing.record("mcp_gateway.route.rule", "default");
            (state.backend.clone(), Strategy::InOrder)
        }
    };
    routing.record("mcp_gateway.route.model", router.model());
    drop(routing);
    // Checked against the capability table before any provider is called.
    if let Err(why) = router.check(&request) {
        audit(Ended::failed(Outcome::Rejected, "unsupported_by_model"));
        return CallToolResult::error(vec![ContentBlock::text(format!(
            "{why}. Nothing was generated; call list_models to see what each model accepts."
        ))]);
    }
    // Cost estimates, only where something uses them: a `cheapest` chain's
    // order, or the reservation against the organisation's budget.
    let budgeted = state.budgets.applies_to(&caller.org);
    let estimates = if budgeted || strategy == Strategy::Cheapest {
        estimates(state, &router, call, &request)
    } else {
        Vec::new()
    };
    let dearest = estimates.iter().map(|(_, cost)| *cost).fold(0.0, f64::max);
    // Every provider attempt is written on the call's tab; the reservation
    // settles to it, or, dropped with the call, settles all the same.
    let tab = Arc::new(Tab::new(call_prices(state, &router, &estimates)));
    let reservation = match state
        .budgets
        .reserve(&caller.org, dearest, tab.clone())
        .instrument(tracing::info_span!("mcp_gateway.budget.reserve", usd = dearest))
        .await
    {
        Ok(reservation) => reservation,
        Err(exceeded) => {
            audit(Ended::failed(Outcome::Rejected, "budget_exceeded"));
            return CallToolResult::error(vec![ContentBlock::text(exceeded.to_string())]);
        }
    };
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
    // `cheapest`: the chain's models in order of this request's estimated cost.
    let order = (strategy == Strategy::Cheapest).then(|| {
        let mut by_cost = estimates.clone();
        by_cost.sort_by(|a, b| a.1.total_cmp(&b.1));
        by_cost.into_iter().map(|(index, _)| index).collect::<Vec<_>>()
    });
    let model_started = Instant::now();
    let claim = Claim {
        org: &caller.org,
        priority: state.routes.is_priority(&caller.org),
    };
    // A cancelled call stops the backend request: nothing is stored. An
    // attempt under way may have gone out: its estimate stays spent.
    let generating = router.generate_in(&request, order.as_deref(), claim, Some(&tab));
    let routed = tokio::select! {
        routed = with_heartbeats(&mut progress, partials, generating) => routed,
        _ = cancelled.cancelled() => {
            if let Some(reservation) = reservation {
                reservation.settle().await;
            }
            audit(Ended::failed(Outcome::Cancelled, "cancelled"));
            return CallToolResult::error(vec![ContentBlock::text("The generation was cancelled; nothing was stored.")]);
        }
    };
    let model_time = model_started.elapsed();
    let (model_label, outcome_label) = match &routed {
        Ok(routed) => (routed.generation.model.clone(), "success"),
        Err(error) => (router.model().to_string(), error.class()),
    };
    state
        .metrics
        .model_seconds
        .get_or_create(&ModelLabels {
            model: model_label,
            outcome: outcome_label.into(),
        })
        .observe(
            model_started.elapsed().as_secs_f64(),
            exemplar(caller.trace.as_ref()),
            None,
        );
    // What the provider says the call cost (from its usage, else per image).
    let cost_usd = routed.as_ref().ok().map(|routed| {
        let generation = &routed.generation;
        state
            .pricing_for(&generation.model)
            .cost(generation.usage, generation.images.len())
            .0
    });
    // Settle the reservation to what every attempt may have cost: the one
    // that served at that cost, answers lost after their request at their
    // estimate; nothing when no provider worked on the call.
    if let Some(reservation) = reservation {
        let span = tracing::info_span!("mcp_gateway.budget.settle", usd = tracing::field::Empty);
        let spent = reservation.settle().instrument(span.clone()).await;
        span.record("usd", spent);
    }
    let (generation, routed_fallbacks) = match routed {
        Ok(routed) => (routed.generation, routed.fallbacks),
        Err(BackendError::ContentRefused(says)) => {
            // The provider's own safety system: final, never sent down the chain.
            let refused = screen::Refused {
                stage: screen::Stage::Provider,
                category: "provider".into(),
                rule: format!("provider:{}", tab.last_model().as_deref().unwrap_or(router.model())),
            };
            screen::record(state, caller, &args.prompt, Some(&policy), &refused);
            audit(Ended::failed(Outcome::ToolError, refused.error_class()));
            return screen::tool_error(&refused, Some(&says));
        }
        Err(error) => {
            audit(Ended::failed(Outcome::ToolError, error.class()));
            let mut result = CallToolResult::error(vec![ContentBlock::text(error.to_string())]);
            // A capacity refusal says when to come back, for clients to act on.
            if let BackendError::NoCapacity { retry_after_secs } = error {
                result.structured_content = Some(serde_json::json!({
                    "error": "no_capacity",
                    "retry_after_seconds": retry_after_secs,
                }));
            }
            return result;
        }
    };
    let largest = generation
        .images
        .iter()
        .map(|i| i.bytes.len())
        .max()
        .unwrap_or_default();
    if largest > state.max_image_bytes {
        audit(
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
            state.max_image_bytes
        ))]);
    }
    // Checked before anything is stored or linked; an image withheld for
    // what the check found is billed, marked; one withheld because the
    // check failed (our outage) is not billed.
    if let Err(refused) = screen::images(state, caller, &policy, &generation).await {
        screen::record(state, caller, &args.prompt, Some(&policy), &refused);
        let ended = Ended::after(
            &generation,
            routed_fallbacks,
            Outcome::ToolError,
            Some(refused.error_class()),
            0,
        )
        .model_time(model_time);
        audit(if refused.found_something() {
            ended.blocked()
        } else {
            ended
        });
        return screen::tool_error(&refused, None);
    }
    let provider = router
        .backends()
        .find(|backend| backend.model() == generation.model)
        .map_or("unknown", |backend| backend.kind());
    let signed = match crate::pipeline::credentials::sign_images(state, call, &generation, provider)
        .instrument(tracing::info_span!("mcp_gateway.content_credentials"))
        .await
    {
        Ok(signed) => signed,
        Err(error) => {
            audit(
                Ended::after(
                    &generation,
                    routed_fallbacks,
                    Outcome::ToolError,
                    Some(error.reason()),
                    0,
                )
                .model_time(model_time),
            );
            return CallToolResult::error(vec![ContentBlock::text(format!(
                "The images were generated but not delivered: {error}, and this gateway delivers only images that carry its Content Credentials. Nothing was stored or billed; operators: see the runbook for ContentCredentialsFailing."
            ))]);
        }
    };
    if let Some(progress) = progress.as_mut() {
        progress.send("storing".to_string()).await;
    }
    let now = Utc::now();
    let expires = now + state.url_ttl;
    let urls = match store_and_link(state, caller, &signed.files, now).await {
        Ok(urls) => urls,
        Err(message) => {
            audit(
                Ended::after(
                    &generation,
                    routed_fallbacks,
                    Outcome::ToolError,
                    Some("storage_failed"),
                    0,
                )
                .model_time(model_time),
            );
            return CallToolResult::error(vec![ContentBlock::text(message)]);
        }
    };
    let keys = urls.len();
    let output = GenerateImageOutput {
        image_urls: urls.clone(),
        expires_at: expires.to_rfc3339_opts(SecondsFormat::Secs, true),
        model: generation.model.clone(),
        style: args.style.as_str().to_string(),
        size: args.size.to_string(),
        output_format: args.output_format.as_str().to_string(),
        estimated_cost_usd: cost_usd.unwrap_or_default(),
        source_images: call.sources.clone(),
        arm: arm.clone(),
        content_credentials: signed.credentials,
    };
    audit(Ended::after(&generation, routed_fallbacks, Outcome::Success, None, keys).model_time(model_time));
    let mut notes = call.notes.clone();
    if let Some(requested) = requested.as_deref().filter(|m| *m != generation.model) {
        notes.push(format!(
            "The requested model {requested} could not serve this call; {} did (a fallback).",
            generation.model
        ));
    }
    result_for(
        &output,
        call.edit.is_some(),
        &notes,
        generation.model == crate::providers::offline_preview::MODEL,
    )
}

/// Stores the images and signs a link to each: the links, or what to tell
/// the caller (nothing is kept when a link cannot be signed).
async fn store_and_link(
    state: &AppState,
    caller: &Caller,
    files: &[(object_store::PutPayload, crate::media::types::OutputFormat)],
    now: chrono::DateTime<Utc>,
) -> Result<Vec<String>, &'static str> {
    let storage_started = Instant::now();
    let stored = state
        .store
        .put_all(&caller.org, &caller.user, files, now)
        .instrument(tracing::info_span!("mcp_gateway.store", images = files.len()))
        .await;
    state
        .metrics
        .storage_seconds
        .get_or_create(&OpLabels {
            operation: "put".into(),
        })
        .observe(
            storage_started.elapsed().as_secs_f64(),
            exemplar(caller.trace.as_ref()),
            None,
        );
    let keys = stored.map_err(|error| {
        tracing::error!(%error, "storing generated images failed");
        "The images were generated but could not be stored; nothing was saved. Try again shortly."
    })?;
    let expires = now + state.url_ttl;
    let mut urls = Vec::with_capacity(keys.len());
    for key in &keys {
        let signing = tracing::info_span!("mcp_gateway.sign_link");
        match state.store.presigned_url(key, state.url_ttl).instrument(signing).await {
            Ok(Some(url)) => urls.push(url),
            Ok(None) => urls.push(state.signer.url(key, expires.timestamp())),
            Err(error) => {
                tracing::error!(%error, "presigning an image link failed");
                state.store.delete_all(&keys).await;
                return Err(
                    "The images were generated but no link could be signed; nothing was kept. Try again shortly.",
                );
            }
        }
    }
    Ok(urls)
}

/// The estimated cost of this call on each model of the chain that can
/// serve it, by position in the chain (the capability table's prices; a
/// model without prices counts as free).
fn estimates(
    state: &AppState,
    router: &crate::routing::chain::ModelRouter,
    call: &ImageCall,
    request: &ImageRequest,
) -> Vec<(usize, f64)> {
    let inputs = crate::routing::cost::CostInputs {
        size: call.args.size,
        quality: call.args.quality,
        n: call.args.n,
        prompt_chars: call.args.prompt.chars().count(),
        input_images: call.edit.as_ref().map_or(0, |e| e.images.len()),
    };
    router
        .backends()
        .enumerate()
        .filter(|(_, backend)| router.unsupported(backend.model(), request).is_none())
        .map(|(index, backend)| {
            let pricing = state.pricing_for(backend.model());
            (index, crate::routing::cost::estimate(&pricing, &inputs))
        })
        .collect()
}

/// The prices the call's tab counts with: for each model of the chain that
/// can serve it, its price table and this call's estimate on it.
fn call_prices(
    state: &AppState,
    router: &crate::routing::chain::ModelRouter,
    estimates: &[(usize, f64)],
) -> HashMap<String, ModelPrice> {
    let models: Vec<&str> = router.backends().map(|backend| backend.model()).collect();
    estimates
        .iter()
        .filter_map(|&(index, estimate_usd)| {
            let model = *models.get(index)?;
            let price = ModelPrice {
                pricing: state.pricing_for(model),
                estimate_usd,
            };
            Some((model.to_string(), price))
        })
        .collect()
}

/// Metrics, the audit event and (for delivered images) the billing event of one call.
pub(crate) fn audit(
    state: &AppState,
    caller: &Caller,
    tool: &str,
    args: Option<&GenerateImageArgs>,
    started: Instant,
    ended: Ended<'_>,
) {
    let size = args.map(|a| a.size.to_string()).unwrap_or_default();
    let primary = state.backend.primary();
    let metrics = &state.metrics;
    let outcome = match ended.outcome {
        Outcome::Success => "success",
        Outcome::ToolError => "tool_error",
        Outcome::Rejected => "rejected",
        Outcome::Cancelled => "cancelled",
    };
    metrics.call_finished(
        tool,
        outcome,
        started.elapsed(),
        ended.error_class,
        caller.trace.as_ref(),
    );
    let arm = ended.arm.clone().unwrap_or_default();
    if ended.images_stored > 0 {
        let labels = ImageLabels {
            org: caller.org.clone(),
            model: ended.model.unwrap_or_default().to_string(),
            size: size.clone(),
            arm: arm.clone(),
        };
        metrics.images.get_or_create(&labels).inc_by(ended.images_stored as u64);
    }
    if !arm.is_empty() {
        metrics
            .arm_calls
            .get_or_create(&ArmLabels {
                arm: arm.clone(),
                outcome: outcome.into(),
            })
            .inc();
    }
    if ended.fallbacks > 0 && ended.outcome == Outcome::Success {
        metrics.fallbacks.inc();
    }
    let prompt_sha256 = args
        .map(|a| hex::encode(Sha256::digest(a.prompt.as_bytes())))
        .unwrap_or_default();
    let (cost_usd, priced_by) = match ended.generated {
        0 => (0.0, "none"),
        images => state
            .pricing_for(ended.model.unwrap_or_default())
            .cost(ended.usage, images),
    };
    if ended.generated > 0 {
        metrics
            .cost_usd
            .get_or_create(&CostLabels {
                org: caller.org.clone(),
                model: ended.model.unwrap_or_default().to_string(),
                arm,
            })
            .inc_by(cost_usd);
    }
    // The caller is billed for delivered images, and for images the content
    // policy withheld (marked `blocked`); what the provider charged for
    // other undelivered ones shows in the audit event's cost.
    if ended.outcome == Outcome::Success || (ended.blocked && ended.generated > 0) {
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
            blocked: ended.blocked,
            trace: caller.trace.as_ref(),
        }
        .emit();
    }
    ToolCallEvent {
        cost_usd,
        prompt_sha256: &prompt_sha256,
        prompt: args.filter(|_| state.log_prompts).map(|a| a.prompt.as_str()),
        arm: ended.arm.as_deref(),
        requested_model: ended.requested.as_deref(),
        trace: caller.trace.as_ref(),
        request_id: &caller.request_id,
        user: &caller.user,
        org: &caller.org,
        key_id: &caller.key_id,
        tool,
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

/// How a tool call ended, for its audit event.
pub(crate) struct Ended<'a> {
    outcome: Outcome,
    error_class: Option<&'a str>,
    images_stored: usize,
    usage: Option<crate::media::types::Usage>,
    /// The model that served the call, when one did.
    model: Option<&'a str>,
    /// Images the model produced (billed even if not stored).
    generated: usize,
    fallbacks: u32,
    /// Time spent waiting for the model (and its retries and fallbacks), µs.
    model_us: u64,
    /// The arm of a weighted route, and the model the caller asked for.
    arm: Option<String>,
    requested: Option<String>,
    /// The images were withheld by the content policy (billed, marked).
    blocked: bool,
}

impl<'a> Ended<'a> {
    /// A call that got as far as a generation.
    fn after(
        generation: &'a crate::providers::Generation,
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
            arm: None,
            requested: None,
            blocked: false,
        }
    }

    /// Notes the route that served the call.
    fn route(mut self, arm: Option<&str>, requested: Option<&str>) -> Self {
        self.arm = arm.map(str::to_string);
        self.requested = requested.map(str::to_string);
        self
    }

    fn blocked(mut self) -> Self {
        self.blocked = true;
        self
    }

    fn model_time(mut self, elapsed: Duration) -> Self {
        self.model_us = elapsed.as_micros() as u64;
        self
    }

    pub(crate) fn failed(outcome: Outcome, error_class: &'a str) -> Self {
        Self {
            outcome,
            error_class: Some(error_class),
            images_stored: 0,
            usage: None,
            model: None,
            generated: 0,
            fallbacks: 0,
            model_us: 0,
            arm: None,
            requested: None,
            blocked: false,
        }
    }
}

/// Shapes the tool result: structured content, a short text, the same JSON
/// as text for clients without `structuredContent`, and a link per image.
pub fn result_for(output: &GenerateImageOutput, edit: bool, notes: &[String], offline_preview: bool) -> CallToolResult {
    let count = output.image_urls.len();
    let mut summary = format!(
        "{} {count} image{} ({}, style {}) with {}. Links expire at {}.",
        if edit { "Edited into" } else { "Generated" },
        if count == 1 { "" } else { "s" },
        output.size,
        output.style,
        output.model,
        output.expires_at
    );
    for note in notes {
        summary.push(' ');
        summary.push_str(note);
    }
    let signed = output.content_credentials.iter().flatten().count();
    if signed > 0 {
        summary.push_str(&format!(
            " {signed} of {count} carry the gateway's signed Content Credentials (C2PA), marking them AI-generated."
        ));
    }
    if offline_preview {
        summary.push_str(if edit {
            " Note: offline-preview's edit flips the colours of the masked area and leaves the rest untouched; it is not a model edit. Set OPENAI_API_KEY for real edits."
        } else {
            " Note: offline-preview renders a placeholder pattern from the prompt, not a model image; set OPENAI_API_KEY for real images."
        });
    }
    let structured = serde_json::to_value(output).unwrap_or_default();
    let mut content = vec![ContentBlock::text(summary), ContentBlock::text(structured.to_string())];
    let format = crate::media::types::OutputFormat::ALL
        .into_iter()
        .find(|f| f.as_str() == output.output_format)
        .unwrap_or(crate::media::types::OutputFormat::Png);
    for (index, url) in output.image_urls.iter().enumerate() {
        let mut link = Resource::new(url.clone(), format!("image-{}.{}", index + 1, format.extension()));
        link.mime_type = Some(format.mime_type().into());
        link.title = Some(format!("Image {} of {count}", index + 1));
        content.push(ContentBlock::resource_link(link));
    }
    let mut result = CallToolResult::success(content);
    result.structured_content = Some(structured);
    result
}
