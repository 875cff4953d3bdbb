//! HTTP wiring: the MCP endpoint, signed image links and health checks.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio_util::sync::CancellationToken;

use crate::admin_files::{AdminFiles, Live};
use crate::backends::offline_preview::OfflinePreview;
use crate::backends::openai::OpenAiBackend;
use crate::backends::router::ModelRouter;
use crate::backends::ImageBackend;
use crate::config::{BackendChoice, ServeConfig};
use crate::identity::AssertionVerifier;
use crate::keyring::Keyring;
use crate::mcp::ImageTools;
use crate::models::ModelCatalog;
use crate::routing::{Routes, RoutesSpec};
use crate::signed_url::UrlSigner;
use crate::storage::ImageStore;

/// Shared state of the service.
#[derive(Clone)]
pub struct AppState {
    /// The primary model and its fallbacks.
    pub backend: Arc<ModelRouter>,
    pub store: ImageStore,
    pub signer: UrlSigner,
    /// Checks the edge's signed identity assertion on every MCP request.
    pub identity: Arc<AssertionVerifier>,
    pub url_ttl: Duration,
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Interval of `generating` progress heartbeats.
    pub progress_interval: Duration,
    /// Largest image accepted from a model (the PRD's 4 MiB output cap).
    pub max_image_bytes: usize,
    /// Set once a stop signal arrived: readiness fails while calls drain.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Prices for models missing from the capability table.
    pub pricing: crate::pricing::Pricing,
    /// What each model can do, and its prices.
    pub catalog: Arc<ModelCatalog>,
    /// Chains chosen by rule, organisation or style (`GATEWAY_ROUTES_FILE`).
    pub routes: Arc<Routes>,
    /// Generations running as tasks (they outlive their request); a graceful
    /// shutdown waits for them like for in-flight calls.
    pub tasks: tokio_util::task::TaskTracker,
    /// Log prompt text in audit events (else only its hash).
    pub log_prompts: bool,
    /// Lifetime of a running task's lease (`task_lease.rs`).
    pub task_lease: Duration,
    /// Upload URLs: lifetime and size limit.
    pub uploads: crate::uploads::UploadSettings,
    /// Bounds on an edit's input images.
    pub edit_limits: crate::edit::EditLimits,
    /// `https://` references of edits (off without an allow-list).
    pub remote: crate::remote_fetch::RemoteFetch,
    /// Per-organisation monthly budgets.
    pub budgets: crate::budget::Budgets,
}

impl AppState {
    /// Builds the state from validated configuration (connecting to the
    /// budget store when one is configured).
    pub async fn from_config(config: &ServeConfig) -> anyhow::Result<Self> {
        let metrics = crate::metrics::Metrics::new();
        let parts = AdminParts::read(config)?;
        let budgets = match (&config.budget_redis_url, parts.budgets) {
            (_, None) => crate::budget::Budgets::none(metrics.clone()),
            (redis, Some(settings)) => {
                let store: Arc<dyn crate::budget::BudgetStore> = match redis {
                    Some(url) => Arc::new(crate::budget::redis::RedisBudgets::connect(url).await?),
                    None => Arc::new(crate::budget::memory::MemoryBudgets::default()),
                };
                crate::budget::Budgets::new(settings, store, Arc::new(chrono::Utc::now), metrics.clone())
            }
        };
        let AdminParts {
            catalog,
            backend,
            routes,
            url_keys,
            identity_keys,
            ..
        } = parts;
        Ok(Self {
            backend,
            store: ImageStore::from_url(&config.storage_url())?,
            signer: UrlSigner::new(url_keys, &config.public_base_url)?,
            identity: Arc::new(AssertionVerifier::new(&identity_keys)),
            url_ttl: config.url_ttl(),
            metrics,
            budgets,
            progress_interval: Duration::from_secs(config.progress_interval_secs.max(1)),
            max_image_bytes: config.max_image_bytes,
            draining: Arc::default(),
            pricing: crate::pricing::Pricing {
                input_per_million_tokens: config.price_input_per_mtok,
                output_per_million_tokens: config.price_output_per_mtok,
                per_image: config.price_per_image,
            },
            log_prompts: config.log_prompts,
            task_lease: Duration::from_secs(config.task_lease_secs.clamp(3, 3600)),
            uploads: crate::uploads::UploadSettings {
                ttl: Duration::from_secs(config.upload_ttl_secs.max(1)),
                max_bytes: config.upload_max_bytes,
            },
            edit_limits: crate::edit::EditLimits {
                input: crate::image_input::InputLimits {
                    max_bytes: config.upload_max_bytes,
                    max_pixels: config.edit_max_pixels,
                },
                max_total_bytes: config.edit_max_input_bytes,
            },
            remote: crate::remote_fetch::RemoteFetch {
                hosts: config
                    .edit_url_hosts
                    .iter()
                    .filter(|h| !h.is_empty())
                    .cloned()
                    .collect(),
                timeout: Duration::from_secs(10),
                max_bytes: config.upload_max_bytes,
            },
            catalog,
            routes: Arc::new(routes),
            tasks: tokio_util::task::TaskTracker::new(),
        })
    }

    /// This state with its admin files (routes, models, budgets, keyrings)
    /// read again: validated whole, or refused with the reason. Everything
    /// else (metrics, budget totals, the assertion replay memory, tasks,
    /// storage) carries over; model chains are rebuilt (their breakers
    /// start closed).
    pub fn reload(&self, config: &ServeConfig) -> anyhow::Result<Self> {
        let parts = AdminParts::read(config)?;
        Ok(Self {
            backend: parts.backend,
            signer: UrlSigner::new(parts.url_keys, &config.public_base_url)?,
            identity: Arc::new(self.identity.with_keys(&parts.identity_keys)),
            budgets: match parts.budgets {
                Some(settings) => self.budgets.with_settings(settings),
                None => self.budgets.clone(),
            },
            catalog: parts.catalog,
            routes: Arc::new(parts.routes),
            ..self.clone()
        })
    }

    /// Prices of `model`: its row of the capability table, else the configured defaults.
    pub fn pricing_for(&self, model: &str) -> crate::pricing::Pricing {
        self.catalog.get(model).map_or(self.pricing, |m| m.pricing())
    }
}

/// What the admin files say, read and checked together (a models change
/// can invalidate a route).
struct AdminParts {
    catalog: Arc<ModelCatalog>,
    backend: Arc<ModelRouter>,
    routes: Routes,
    url_keys: Keyring,
    identity_keys: Keyring,
    budgets: Option<crate::budget::BudgetSettings>,
}

impl AdminParts {
    fn read(config: &ServeConfig) -> anyhow::Result<Self> {
        let budgets = config
            .budgets_file
            .as_ref()
            .map(|path| crate::budget::BudgetSettings::from_file(path))
            .transpose()?;
        let catalog = Arc::new(match &config.models_file {
            Some(path) => ModelCatalog::from_file(path)?,
            None => ModelCatalog::builtin()?,
        });
        let mut built: std::collections::HashMap<String, Arc<dyn ImageBackend>> = std::collections::HashMap::new();
        let mut backend_for = |provider: BackendChoice, model: String| -> anyhow::Result<Arc<dyn ImageBackend>> {
            let key = format!("{provider:?}:{model}");
            if let Some(backend) = built.get(&key) {
                return Ok(backend.clone());
            }
            let backend = build_backend(config, provider, model)?;
            built.insert(key, backend.clone());
            Ok(backend)
        };
        let mut backends: Vec<Arc<dyn ImageBackend>> = Vec::new();
        for (provider, model) in config.routes() {
            backends.push(backend_for(provider, model)?);
        }
        let backend = Arc::new(
            ModelRouter::new(backends, config.retry_policy(), config.breaker_policy()).with_catalog(catalog.clone()),
        );
        let routes = match &config.routes_file {
            Some(path) => Routes::new(RoutesSpec::from_file(path)?, config.default_chain_entries(), |chain| {
                let mut chain_backends = Vec::with_capacity(chain.len());
                for entry in chain {
                    let (provider, model) = config.route_entry(entry)?;
                    chain_backends.push(backend_for(provider, model)?);
                }
                Ok(
                    ModelRouter::new(chain_backends, config.retry_policy(), config.breaker_policy())
                        .with_catalog(catalog.clone()),
                )
            })?,
            None => Routes::none(config.default_chain_entries()),
        };
        let url_keys = Keyring::from_file(&config.url_signing_key_file(), crate::signed_url::MIN_SECRET_BYTES)
            .map_err(|e| {
                anyhow::anyhow!(
                    "URL signing keys: {e:#} (run `mcp-image-gateway dev-init` or set GATEWAY_URL_SIGNING_KEY_FILE)"
                )
            })?;
        let identity_keys = Keyring::from_file(&config.identity_keys_file(), crate::identity::MIN_KEY_BYTES)
            .map_err(|e| anyhow::anyhow!("identity assertion keys: {e:#} (run `mcp-image-gateway dev-init` or set GATEWAY_IDENTITY_KEYS_FILE)"))?;
        Ok(Self {
            catalog,
            backend,
            routes,
            url_keys,
            identity_keys,
            budgets,
        })
    }
}

/// One provider client for `model`.
fn build_backend(
    config: &ServeConfig,
    provider: BackendChoice,
    model: String,
) -> anyhow::Result<Arc<dyn ImageBackend>> {
    Ok(match provider {
        BackendChoice::Openai => Arc::new(OpenAiBackend::new(crate::backends::openai::OpenAiSettings {
            model,
            ..config.openai_settings()
        })?),
        BackendChoice::OpenaiCompatible => Arc::new(crate::backends::openai_compatible::backend(
            config.openai_compatible_base_url.as_deref().unwrap_or_default(),
            config.openai_compatible_api_key.as_deref(),
            &model,
            Duration::from_secs(config.openai_compatible_timeout_secs),
        )?),
        BackendChoice::Stability => Arc::new(crate::backends::stability::StabilityBackend::new(
            crate::backends::stability::StabilitySettings {
                api_key: config.stability_api_key.clone().unwrap_or_default(),
                base_url: config.stability_base_url.clone(),
                model,
                timeout: Duration::from_secs(config.stability_timeout_secs),
            },
        )?),
        BackendChoice::OfflinePreview | BackendChoice::Auto => Arc::new(OfflinePreview),
    })
}

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
    // Outermost first: time every request, then refuse any without a valid
    // identity assertion before rmcp sees it.
    let mcp = Router::new()
        .fallback_service(mcp)
        .layer(axum::middleware::from_fn_with_state(
            live.clone(),
            crate::identity::require_assertion,
        ))
        .layer(axum::middleware::from_fn_with_state(metrics, record_mcp_request));
    Router::new()
        .nest("/mcp", mcp)
        .route("/images/{*key}", get(crate::images::get_image))
        .route("/uploads/{org}/{id}", axum::routing::put(crate::uploads::put_upload))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readiness))
        .with_state(live)
}

/// Deletes images older than `retention` and uploads older than
/// `upload_retention` every `every`, until shutdown.
fn spawn_retention_sweeper(
    store: ImageStore,
    (retention, upload_retention): (chrono::Duration, chrono::Duration),
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
            match store.sweep(now - retention, now - upload_retention).await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "retention sweep deleted expired images"),
                Err(error) => tracing::warn!(%error, "retention sweep failed; retrying next time"),
            }
        }
    });
}

/// Times each MCP request by its JSON-RPC method. Bodies are small (the
/// edge caps them at 2 KiB), so reading one to find the method is cheap.
async fn record_mcp_request(
    axum::extract::State(metrics): axum::extract::State<Arc<crate::metrics::Metrics>>,
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
    let traced = crate::traces::enabled().then(|| {
        let message = crate::traces::Message {
            method: &method,
            body: parsed.as_ref(),
            protocol_version: parts.headers.get("mcp-protocol-version").and_then(|v| v.to_str().ok()),
        };
        crate::traces::server_span(&message, &parts.headers)
    });
    if let Some((_, ids)) = &traced {
        parts.extensions.insert(ids.clone());
    }
    let method = if crate::metrics::KNOWN_METHODS.contains(&method.as_str()) || method.starts_with("HTTP ") {
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
    let labels = crate::metrics::RpcLabels {
        method,
        status: response.status().as_u16().to_string(),
    };
    metrics
        .rpc_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}

/// Puts how a message ended on its span; a JSON reply (small: one result)
/// is read to tell a JSON-RPC error or a tool error from a success.
async fn record_reply(span: &tracing::Span, response: axum::response::Response) -> axum::response::Response {
    let status = response.status().as_u16();
    let is_json = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        crate::traces::record_outcome(span, status, None);
        return response;
    }
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 8 * 1024 * 1024).await.unwrap_or_default();
    let reply: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
    crate::traces::record_outcome(span, status, reply.as_ref());
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
pub fn metrics_router(metrics: Arc<crate::metrics::Metrics>) -> Router {
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
pub async fn serve(config: ServeConfig, stop: CancellationToken) -> anyhow::Result<()> {
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
        ),
        Duration::from_secs(config.retention_sweep_secs.max(1)),
        shutdown.clone(),
    );
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
    Ok(())
}
