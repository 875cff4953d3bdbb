//! Prometheus metrics (OpenMetrics text via `prometheus-client`), served on
//! a listener of their own that Envoy does not route to. Labels are bounded:
//! tool, outcome, backend kind, model, org, size, error class — never user
//! ids or prompts.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::registry::Registry;

use crate::telemetry::traces::TraceIds;

/// A latency histogram whose buckets keep an exemplar: the trace of the
/// last observation that fell in them (OpenMetrics), so a dashboard can jump
/// from a slow bucket to a trace.
pub type Seconds = HistogramWithExemplars<TraceExemplar>;

/// An exemplar's labels: the trace it was measured in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceExemplar {
    pub trace_id: String,
}

/// The exemplar for an observation made in `trace` (sampled traces only:
/// an unsampled trace id leads nowhere).
pub fn exemplar(trace: Option<&TraceIds>) -> Option<TraceExemplar> {
    trace.filter(|t| t.sampled).map(|t| TraceExemplar {
        trace_id: t.trace_id.clone(),
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub tool: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ImageLabels {
    pub org: String,
    pub model: String,
    pub size: String,
    /// The arm of a weighted route (empty without one).
    pub arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CostLabels {
    pub org: String,
    pub model: String,
    pub arm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArmLabels {
    pub arm: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// The JSON-RPC method (`tools/call`, `initialize`, ...), `other` beyond the known set.
    pub method: String,
    pub status: String,
}

/// JSON-RPC methods kept as label values; anything else is `other`.
pub const KNOWN_METHODS: [&str; 12] = [
    "initialize",
    "ping",
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "notifications/initialized",
    "notifications/cancelled",
    "tasks/get",
    "tasks/result",
    "response",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OrgLabels {
    pub org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

/// An admin file (`routes`, `models`, `budgets`, `url_keys`, `identity_keys`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabels {
    pub file: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileNameLabels {
    pub file: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileHashLabels {
    pub file: String,
    pub sha256: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuotaLabels {
    pub model: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpillLabels {
    pub model: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub operation: String,
}

/// A content-policy refusal: where it happened, why, and for whom.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    /// `prompt`, `image` or `provider`.
    pub stage: String,
    pub category: String,
    pub org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// `prompt` or `image`.
    pub stage: String,
    pub outcome: String,
}

/// Every metric of the service, registered once.
pub struct Metrics {
    registry: Registry,
    pub tool_calls: Family<CallLabels, Counter>,
    pub tool_call_seconds: Family<CallLabels, Seconds>,
    pub in_flight: Gauge,
    pub images: Family<ImageLabels, Counter>,
    pub model_seconds: Family<ModelLabels, Seconds>,
    pub fallbacks: Counter,
    pub errors: Family<ErrorLabels, Counter>,
    pub storage_seconds: Family<OpLabels, Seconds>,
    pub cost_usd: Family<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    pub arm_calls: Family<ArmLabels, Counter>,
    pub budget_usd: Family<OrgLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub budget_spent_usd: Family<OrgLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub budget_refusals: Family<OrgLabels, Counter>,
    pub budget_store_errors: Counter,
    pub rpc_seconds: Family<RpcLabels, Seconds>,
    pub identity_assertions: Family<ResultLabels, Counter>,
    pub admin_file_reloads: Family<FileLabels, Counter>,
    pub admin_file_info: Family<FileHashLabels, Gauge>,
    pub admin_file_changed: Family<FileNameLabels, Gauge>,
    pub provider_limit: Family<QuotaLabels, Gauge>,
    pub provider_remaining: Family<QuotaLabels, Gauge>,
    pub provider_reset: Family<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub provider_rate_limited: Family<ModelNameLabels, Counter>,
    pub capacity_spills: Family<SpillLabels, Counter>,
    pub pool_in_flight: Family<PoolOrgLabels, Gauge>,
    pub pool_queued: Family<PoolOrgLabels, Gauge>,
    pub pool_wait_seconds: Family<PoolOrgLabels, Seconds>,
    pub content_refusals: Family<RefusalLabels, Counter>,
    pub moderation_seconds: Family<StageLabels, Seconds>,
    pub moderation_errors: Family<ErrorLabels, Counter>,
    pub moderation_unchecked: Family<RefusalLabels, Counter>,
    pub images_signed: Family<FormatLabels, Counter>,
    pub signing_failures: Family<SigningFailureLabels, Counter>,
    pub signing_seconds: Family<FormatLabels, Seconds>,
    pub time_stamp_failures: Counter,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FormatLabels {
    pub format: String,
}

/// Why an image could not be signed, and what the policy did with it
/// (`required`: not delivered; `best_effort`: delivered unsigned).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SigningFailureLabels {
    pub reason: String,
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOrgLabels {
    pub model: String,
    pub org: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelNameLabels {
    pub model: String,
}

fn seconds_histogram() -> Seconds {
    // 1 ms .. ~5.5 min: from edge-rejected calls to slow high-quality generations.
    Seconds::new(exponential_buckets(0.001, 2.0, 19))
}

fn signing_histogram() -> Seconds {
    // Fine below 10 ms, where signing one image belongs (the 5 ms p99 budget
    // reads straight off a bucket), up to the 20 s signing timeout.
    Seconds::new(
        [
            0.0005, 0.001, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5, 2.0, 20.0,
        ]
        .into_iter(),
    )
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("mcp_gateway");
        let tool_calls = Family::<CallLabels, Counter>::default();
        let tool_call_seconds =
            Family::<CallLabels, Seconds>::new_with_constructor(seconds_histogram as fn() -> Seconds);
        let in_flight = Gauge::default();
        let images = Family::<ImageLabels, Counter>::default();
        let model_seconds = Family::<ModelLabels, Seconds>::new_with_constructor(seconds_histogram as fn() -> Seconds);
        let fallbacks = Counter::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let storage_seconds = Family::<OpLabels, Seconds>::new_with_constructor(seconds_histogram as fn() -> Seconds);
        registry.register("tool_calls", "Finished MCP tool calls", tool_calls.clone());
        registry.register(
            "tool_call_duration_seconds",
            "Tool call latency, model time included",
            tool_call_seconds.clone(),
        );
        registry.register("tool_calls_in_flight", "Tool calls being served now", in_flight.clone());
        registry.register("images_generated", "Images generated and stored", images.clone());
        registry.register(
            "model_request_duration_seconds",
            "Model backend latency per call",
            model_seconds.clone(),
        );
        registry.register("model_fallbacks", "Calls served by a fallback model", fallbacks.clone());
        registry.register("errors", "Failed tool calls by class", errors.clone());
        registry.register(
            "storage_operation_duration_seconds",
            "Image store latency",
            storage_seconds.clone(),
        );
        let cost_usd = Family::<CostLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "estimated_cost_usd",
            "Estimated provider cost by organisation, model and route arm",
            cost_usd.clone(),
        );
        let arm_calls = Family::<ArmLabels, Counter>::default();
        registry.register(
            "route_arm_calls",
            "Image tool calls by the arm of a weighted route and outcome",
            arm_calls.clone(),
        );
        let budget_usd = Family::<OrgLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register("budget_usd", "Monthly budget by organisation", budget_usd.clone());
        let budget_spent_usd = Family::<OrgLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "budget_spent_usd",
            "Spent or reserved this month by organisation (as last seen by this replica)",
            budget_spent_usd.clone(),
        );
        let budget_refusals = Family::<OrgLabels, Counter>::default();
        registry.register(
            "budget_refusals",
            "Calls refused because the organisation's monthly budget would be exceeded",
            budget_refusals.clone(),
        );
        let budget_store_errors = Counter::default();
        registry.register(
            "budget_store_errors",
            "Budget store failures (calls then go ahead unchecked)",
            budget_store_errors.clone(),
        );
        let rpc_seconds = Family::<RpcLabels, Seconds>::new_with_constructor(seconds_histogram as fn() -> Seconds);
        registry.register(
            "mcp_request_duration_seconds",
            "MCP requests by JSON-RPC method and HTTP status (time to the response head)",
            rpc_seconds.clone(),
        );
        let identity_assertions = Family::<ResultLabels, Counter>::default();
        registry.register(
            "identity_assertions",
            "Identity assertions checked on MCP requests, by result (anything but ok is a 401)",
            identity_assertions.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans the OTLP exporter could not deliver and dropped (the collector is down or refusing)",
            crate::telemetry::traces::SPANS_DROPPED.clone(),
        );
        registry.register(
            "audit_events_dropped",
            "Audit events the tamper-evident audit's writer could not keep up with and dropped (stdout still has them)",
            crate::telemetry::audit_sink::DROPPED.clone(),
        );
        let admin_file_reloads = Family::<FileLabels, Counter>::default();
        registry.register(
            "admin_file_reloads",
            "Changes of admin files (routes, models, budgets, keyrings) seen, by result: applied or rejected",
            admin_file_reloads.clone(),
        );
        let admin_file_info = Family::<FileHashLabels, Gauge>::default();
        registry.register(
            "admin_file_info",
            "1 for the SHA-256 of each admin file this replica runs on",
            admin_file_info.clone(),
        );
        let admin_file_changed = Family::<FileNameLabels, Gauge>::default();
        registry.register(
            "admin_file_changed_at_seconds",
            "When each admin file's running content was last applied (Unix seconds)",
            admin_file_changed.clone(),
        );
        let provider_limit = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "provider_ratelimit_limit",
            "A model's provider quota window, as its last answer said (kind: requests, tokens, images)",
            provider_limit.clone(),
        );
        let provider_remaining = Family::<QuotaLabels, Gauge>::default();
        registry.register(
            "provider_ratelimit_remaining",
            "What remains of a model's provider quota window, as its last answer said",
            provider_remaining.clone(),
        );
        let provider_reset = Family::<QuotaLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "provider_ratelimit_reset_seconds",
            "Seconds until a model's provider quota window refills, as its last answer said",
            provider_reset.clone(),
        );
        let provider_rate_limited = Family::<ModelNameLabels, Counter>::default();
        registry.register(
            "provider_rate_limited",
            "Provider 429 answers by model (the gateway should have spilled first)",
            provider_rate_limited.clone(),
        );
        let capacity_spills = Family::<SpillLabels, Counter>::default();
        registry.register(
            "capacity_spills",
            "Calls sent past a model before its provider had to refuse (reason: reserved, exhausted, refused)",
            capacity_spills.clone(),
        );
        let pool_in_flight = Family::<PoolOrgLabels, Gauge>::default();
        registry.register(
            "pool_in_flight",
            "Calls this replica has in flight on a self-hosted pool (its slots), by organisation",
            pool_in_flight.clone(),
        );
        let pool_queued = Family::<PoolOrgLabels, Gauge>::default();
        registry.register(
            "pool_queued",
            "Calls waiting on this replica for a slot of a self-hosted pool, by organisation",
            pool_queued.clone(),
        );
        let pool_wait_seconds =
            Family::<PoolOrgLabels, Seconds>::new_with_constructor(seconds_histogram as fn() -> Seconds);
        registry.register(
            "pool_wait_duration_seconds",
            "How long calls waited for a slot of a self-hosted pool",
            pool_wait_seconds.clone(),
        );
        let content_refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "content_policy_refusals",
            "Calls refused by the content policy, by stage (prompt, image, provider), category and organisation",
            content_refusals.clone(),
        );
        let moderation_seconds =
            Family::<StageLabels, Seconds>::new_with_constructor(seconds_histogram as fn() -> Seconds);
        registry.register(
            "moderation_request_duration_seconds",
            "Moderation model latency per check (retries included), by stage and outcome (clear, flagged, error)",
            moderation_seconds.clone(),
        );
        let moderation_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "moderation_errors",
            "Moderation requests that failed, by error class (breaker_open when skipped)",
            moderation_errors.clone(),
        );
        let moderation_unchecked = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "content_policy_unchecked",
            "Prompts or images let through unchecked because moderation was unavailable and the policy says allow",
            moderation_unchecked.clone(),
        );
        let images_signed = Family::<FormatLabels, Counter>::default();
        registry.register(
            "images_signed",
            "Images stored with the gateway's Content Credentials (C2PA), by format",
            images_signed.clone(),
        );
        let signing_failures = Family::<SigningFailureLabels, Counter>::default();
        registry.register(
            "content_credentials_failures",
            "Images that could not be signed, by reason and policy (required: not delivered; best_effort: delivered unsigned)",
            signing_failures.clone(),
        );
        let signing_seconds =
            Family::<FormatLabels, Seconds>::new_with_constructor(signing_histogram as fn() -> Seconds);
        registry.register(
            "content_credentials_signing_duration_seconds",
            "Time to embed and sign one image's Content Credentials, by format",
            signing_seconds.clone(),
        );
        let time_stamp_failures = Counter::default();
        registry.register(
            "content_credentials_time_stamp_failures",
            "Signatures made without an RFC 3161 time-stamp because the time-stamp authority failed",
            time_stamp_failures.clone(),
        );
        Arc::new(Self {
            content_refusals,
            moderation_seconds,
            moderation_errors,
            moderation_unchecked,
            images_signed,
            signing_failures,
            signing_seconds,
            time_stamp_failures,
            pool_in_flight,
            pool_queued,
            pool_wait_seconds,
            provider_limit,
            provider_remaining,
            provider_reset,
            provider_rate_limited,
            capacity_spills,
            admin_file_reloads,
            admin_file_info,
            admin_file_changed,
            arm_calls,
            budget_usd,
            budget_spent_usd,
            budget_refusals,
            budget_store_errors,
            identity_assertions,
            registry,
            tool_calls,
            tool_call_seconds,
            in_flight,
            images,
            model_seconds,
            fallbacks,
            errors,
            storage_seconds,
            cost_usd,
            rpc_seconds,
        })
    }

    /// A provider answer's quota window for `model`.
    pub fn provider_quota(&self, model: &str, kind: &str, limit: u64, remaining: u64, reset_ms: u64) {
        let labels = QuotaLabels {
            model: model.into(),
            kind: kind.into(),
        };
        self.provider_limit
            .get_or_create(&labels)
            .set(limit.min(i64::MAX as u64) as i64);
        self.provider_remaining
            .get_or_create(&labels)
            .set(remaining.min(i64::MAX as u64) as i64);
        self.provider_reset.get_or_create(&labels).set(reset_ms as f64 / 1000.0);
    }

    pub fn provider_rate_limited(&self, model: &str) {
        self.provider_rate_limited
            .get_or_create(&ModelNameLabels { model: model.into() })
            .inc();
    }

    pub fn pool_in_flight(&self, model: &str, org: &str, by: i64) {
        self.pool_in_flight
            .get_or_create(&PoolOrgLabels {
                model: model.into(),
                org: org.into(),
            })
            .inc_by(by);
    }

    pub fn pool_queued(&self, model: &str, org: &str, by: i64) {
        self.pool_queued
            .get_or_create(&PoolOrgLabels {
                model: model.into(),
                org: org.into(),
            })
            .inc_by(by);
    }

    pub fn pool_waited(&self, model: &str, org: &str, waited: Duration) {
        self.pool_wait_seconds
            .get_or_create(&PoolOrgLabels {
                model: model.into(),
                org: org.into(),
            })
            .observe(waited.as_secs_f64(), None, None);
    }

    pub fn capacity_spill(&self, model: &str, reason: &str) {
        self.capacity_spills
            .get_or_create(&SpillLabels {
                model: model.into(),
                reason: reason.into(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn budget_limit(&self, org: &str, usd: f64) {
        self.budget_usd.get_or_create(&OrgLabels { org: org.into() }).set(usd);
    }

    pub fn budget_spent(&self, org: &str, usd: f64) {
        self.budget_spent_usd
            .get_or_create(&OrgLabels { org: org.into() })
            .set(usd);
    }

    pub fn budget_refused(&self, org: &str) {
        self.budget_refusals.get_or_create(&OrgLabels { org: org.into() }).inc();
    }

    pub fn budget_store_error(&self) {
        self.budget_store_errors.inc();
    }

    /// Counts one identity assertion check (`ok` or the refusal's label).
    pub fn identity_assertion(&self, result: &str) {
        self.identity_assertions
            .get_or_create(&ResultLabels { result: result.into() })
            .inc();
    }

    pub fn call_finished(
        &self,
        tool: &str,
        outcome: &str,
        elapsed: Duration,
        error_class: Option<&str>,
        trace: Option<&TraceIds>,
    ) {
        let labels = CallLabels {
            tool: tool.into(),
            outcome: outcome.into(),
        };
        self.tool_calls.get_or_create(&labels).inc();
        self.tool_call_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64(), exemplar(trace), None);
        if let Some(class) = error_class {
            self.errors.get_or_create(&ErrorLabels { class: class.into() }).inc();
        }
    }
}

/// Counts a tool call as in flight until dropped.
pub struct InFlight(Arc<Metrics>);

impl InFlight {
    pub fn start(metrics: &Arc<Metrics>) -> Self {
        metrics.in_flight.inc();
        Self(metrics.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_families() {
        let metrics = Metrics::new();
        let sampled = TraceIds {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            sampled: true,
        };
        let unsampled = TraceIds {
            trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
            sampled: false,
            ..sampled.clone()
        };
        metrics.call_finished(
            "generate_image",
            "success",
            Duration::from_millis(20),
            None,
            Some(&sampled),
        );
        metrics.call_finished(
            "generate_image",
            "tool_error",
            Duration::from_millis(5),
            Some("rate_limited"),
            Some(&unsampled),
        );
        {
            let _guard = InFlight::start(&metrics);
            assert_eq!(metrics.in_flight.get(), 1);
        }
        assert_eq!(metrics.in_flight.get(), 0);
        let text = metrics.encode();
        assert!(
            text.contains(r#"mcp_gateway_tool_calls_total{tool="generate_image",outcome="success"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"mcp_gateway_errors_total{class="rate_limited"} 1"#),
            "{text}"
        );
        assert!(text.contains("mcp_gateway_tool_call_duration_seconds_bucket"), "{text}");
        // The sampled call's bucket carries its trace as an exemplar; the unsampled one's none.
        let exemplars: Vec<&str> = text.lines().filter(|l| l.contains(" # {")).collect();
        assert_eq!(exemplars.len(), 1, "{text}");
        assert!(
            exemplars[0].ends_with(
                r#"{le="0.032",tool="generate_image",outcome="success"} 1 # {trace_id="4bf92f3577b34da6a3ce929d0e0e4736"} 0.02"#
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
