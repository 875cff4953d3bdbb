//! HTTP wiring: the MCP endpoint, signed image links, uploads and health
//! checks.

pub mod assertion;
pub mod images;
pub mod uploads;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::admin_files::{AdminFiles, Live};
use crate::config::ServeConfig;
use crate::protocol::tools::ImageTools;
use crate::providers::ImageBackend;
use crate::state::AppState;
use crate::storage::store::ImageStore;

/// The service's router.
pub fn router(live: Live, allowed_hosts: Vec<String>, shutdown: CancellationToken) -> Router {
    let tools_state = live.clone();
    let metrics = live.snapshot().metrics;
    // Stateless: any replica can serve any request, no sticky sessions.
    let mcp_config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true)
        .with_allowed_hosts(allowed_hosts)
        .with_cancellation_token(shutdown);
    // One service per request, on the state of the moment it arrived: a
    // call keeps the admin files it started with while they change.
    let mcp = StreamableHttpService::new(
        move || Ok(ImageTools::new(tools_state.snapshot())),
        Arc::new(NeverSessionManager::default()),
        mcp_config,
    );
    // Outermost first: refuse a request without a valid identity assertion
    // on its headers, before its body is read; then time it (which reads the body).
    let mcp = Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(metrics, record_mcp_request))
        .layer(axum::middleware::from_fn_with_state(
            live.clone(),
            assertion::require_assertion,
        ));
    // Exactly `/mcp`: the edge checks that path's messages, and nothing below it.
    Router::new()
        .route_service("/mcp", mcp)
        .route("/images/{*key}", get(images::get_image))
        .route("/uploads/{org}/{id}", axum::routing::put(uploads::put_upload))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .with_state(live)
}

/// Deletes images older than `retention`, uploads older than
/// `upload_retention` and audit segments older than `audit_retention` every
/// `every`, until shutdown.
fn spawn_retention_sweeper(
    store: ImageStore,
    (retention, upload_retention, audit_retention): (chrono::Duration, chrono::Duration, chrono::Duration),
    every: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let now = chrono::Utc::now();
            match store
                .sweep(now - retention, now - upload_retention, now - audit_retention)
                .await
            {
                Ok(0) => {}
                // In the audit, so the evidence bundle can show sweeps performed.
                Ok(deleted) => tracing::info!(
                    target: "audit",
                    event = "retention_sweep",
                    deleted,
                    images_before = %(now - retention).to_rfc3339(),
                    uploads_before = %(now - upload_retention).to_rfc3339(),
                    audit_before = %(now - audit_retention).to_rfc3339(),
                    "retention sweep deleted expired objects"
                ),
                Err(error) => tracing::warn!(%error, "retention sweep failed; retrying next time"),
            }
        }
    });
}

/// Times each MCP request by its JSON-RPC method. Bodies are small (the
/// edge caps them at 2 KiB), so reading one to find the method is cheap;
/// only requests that passed the identity gate get here.
async fn record_mcp_request(
    axum::extract::State(metrics): axum::extract::State<Arc<crate::telemetry::metrics::Metrics>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, 4 * 1024 * 1024).await {
        Ok(bytes) => bytes,
        Err(_) => return (http::StatusCode::PAYLOAD_TOO_LARGE, "request body too large").into_response(),
    };
    let parsed: Option<serde_json::Value> = (parts.method == http::Method::POST)
        .then(|| serde_json::from_slice(&bytes).ok())
        .flatten();
    let method = if parts.method == http::Method::POST {
        match parsed.as_ref().map(|v| v.get("method").and_then(|m| m.as_str())) {
            Some(Some(name)) => name.to_string(),
            Some(None) => "response".to_string(),
            None => "other".to_string(),
        }
    } else {
        format!("HTTP {}", parts.method)
    };
    // The message's server span, continuing the caller's trace; its ids go
    // with the request to the audit events.
    let traced = crate::telemetry::traces::enabled().then(|| {
        let message = crate::telemetry::traces::Message {
            method: &method,
            body: parsed.as_ref(),
            protocol_version: parts.headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok()),
        };
        crate::telemetry::traces::server_span(&message, &parts.headers)
    });
    if let Some((_, ids)) = &traced {
        if let Some(caller) = parts.extensions.get_mut::<crate::identity::Caller>() {
            caller.trace = Some(ids.clone());
        }
        parts.extensions.insert(ids.clone());
    }
    // Not held while the call runs (thousands may be in flight).
    drop(parsed);
    let method = if crate::telemetry::metrics::KNOWN_METHODS.contains(&method.as_str()) || method.starts_with("HTTP ") {
        method
    } else {
        "other".to_string()
    };
    let started = std::time::Instant::now();
    let run = next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes)));
    let response = match &traced {
        Some((span, _)) => {
            use tracing::Instrument;
            let response = run.instrument(span.clone()).await;
            record_reply(span, response).await
        }
        None => run.await,
    };
    let labels = crate::telemetry::metrics::RpcLabels {
        method,
        status: response.status().as_u16().to_string(),
    };
    metrics.rpc_seconds.get_or_create(&labels).observe(
        started.elapsed().as_secs_f64(),
        crate::telemetry::metrics::exemplar(traced.as_ref().map(|(_, ids)| ids)),
        None,
    );
    response
}

/// Puts how a message ended on its span; a JSON reply (small: one result)
/// is read to tell a JSON-RPC error or a tool error from a success. A large
/// one (an image read as a resource, up to `GATEWAY_MAX_RESOURCE_REPLY_BYTES`)
/// is a result: it passes untouched, never parsed nor cut.
async fn record_reply(span: &tracing::Span, response: axum::response::Response) -> axum::response::Response {
    use axum::body::HttpBody;
    const READ_AT_MOST: u64 = 1024 * 1024;
    let status = response.status().as_u16();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = response.body().size_hint().upper().is_some_and(|n| n <= READ_AT_MOST);
    if !is_json || !small {
        crate::telemetry::traces::record_outcome(span, status, None);
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, READ_AT_MOST as usize)
        .await
        .unwrap_or_default();
    let reply: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    crate::telemetry::traces::record_outcome(span, status, reply.as_ref());
    axum::response::Response::from_parts(parts, axum::body::Body::from(bytes))
}

/// Ready unless draining after a stop signal.
async fn readiness(axum::extract::State(state): axum::extract::State<AppState>) -> (http::StatusCode, &'static str) {
    if state.draining.load(std::sync::atomic::Ordering::SeqCst) {
        (http::StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (http::StatusCode::OK, "ready")
    }
}

/// `GET /metrics` on the metrics listener (not routed by Envoy).
pub fn metrics_router(metrics: Arc<crate::telemetry::metrics::Metrics>) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    )
}

/// Runs the service until `shutdown` is cancelled.
pub async fn serve(mut config: ServeConfig, stop: CancellationToken) -> anyhow::Result<()> {
    config.read_key_files()?;
    config.validate()?;
    let config = Arc::new(config);
    let state = AppState::from_config(&config).await?;
    // On a stop signal: fail readiness first so load balancers take this
    // replica out, then stop accepting and let in-flight calls finish.
    let shutdown = CancellationToken::new();
    let draining = state.draining.clone();
    let drain_delay = Duration::from_secs(config.drain_delay_secs);
    let stop_then_drain = shutdown.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        draining.store(true, std::sync::atomic::Ordering::SeqCst);
        tokio::time::sleep(drain_delay).await;
        stop_then_drain.cancel();
    });
    tracing::info!(
        listen = %config.listen,
        backend = state.backend.kind(),
        model = state.backend.model(),
        storage = state.store.description(),
        "starting mcp-image-gateway"
    );
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} for metrics: {e}", config.metrics_listen))?;
    let metrics_app = metrics_router(state.metrics.clone());
    let metrics_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let stopping = async move { metrics_shutdown.cancelled().await };
        if let Err(error) = axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(stopping)
            .await
        {
            tracing::error!(%error, "metrics listener failed");
        }
    });
    spawn_retention_sweeper(
        state.store.clone(),
        (
            chrono::Duration::days(i64::from(config.retention_days)),
            chrono::Duration::hours(i64::from(config.upload_retention_hours)),
            chrono::Duration::days(i64::from(config.audit_retention_days)),
        ),
        Duration::from_secs(config.retention_sweep_secs.max(1)),
        shutdown.clone(),
    );
    // The tamper-evident audit, when its keyring exists; it closes its
    // segment after the calls have drained.
    let audit_stop = CancellationToken::new();
    let audit_writer = match config.audit_keys() {
        Ok(keys) => Some(crate::telemetry::audit_sink::start(
            state.store.clone(),
            keys,
            crate::telemetry::audit_sink::SegmentLimits {
                max_events: config.audit_segment_events.max(1),
                max_age: Duration::from_secs(config.audit_segment_secs.max(1)),
            },
            audit_stop.clone(),
        )),
        Err(error) => {
            tracing::warn!(%error, "no audit keyring: the tamper-evident audit is off (stdout keeps every event)");
            None
        }
    };
    // rmcp ends its in-flight calls when this token is cancelled: only at the
    // hard stop, so a graceful shutdown lets running generations finish.
    let hard_stop = CancellationToken::new();
    let tasks = state.tasks.clone();
    let live = Live::new(state);
    let admin_files = AdminFiles::of(&config);
    admin_files.report(&live.snapshot());
    let allowed_hosts = config.allowed_hosts();
    let reload_every = Duration::from_secs(config.admin_files_poll_secs.max(1));
    admin_files.spawn(live.clone(), config.clone(), reload_every, shutdown.clone());
    let app = router(live, allowed_hosts, hard_stop.clone());
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let grace = config.shutdown_grace();
    let stopping = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move { stopping.cancelled().await });
    // In-flight generations (calls and tasks) get `grace` to finish after a
    // stop signal; then we exit regardless.
    let drained = async {
        server.await?;
        tasks.close();
        tasks.wait().await;
        Ok::<(), std::io::Error>(())
    };
    tokio::select! {
        result = drained => result?,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish in time; exiting");
        }
    }
    hard_stop.cancel();
    audit_stop.cancel();
    if let Some(writer) = audit_writer {
        let _ = tokio::time::timeout(Duration::from_secs(10), writer).await;
    }
    Ok(())
}
