//! The service's shared state: configuration read into clients, stores,
//! keys and limits. Every request works on one snapshot of it (`Live`
//! swaps in a new one when an admin file changes). It depends on the
//! stages' building blocks, never on the pipeline, the MCP surface or the
//! HTTP wiring that use it.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{BackendChoice, ServeConfig};
use crate::identity::AssertionVerifier;
use crate::providers::offline_preview::OfflinePreview;
use crate::providers::openai::OpenAiBackend;
use crate::providers::ImageBackend;
use crate::routing::capacity::{Capacity, QuotaStore};
use crate::routing::catalog::ModelCatalog;
use crate::routing::chain::ModelRouter;
use crate::routing::pools::SlotStore;
use crate::routing::rules::{Routes, RoutesSpec};
use crate::storage::keyring::Keyring;
use crate::storage::signed_url::UrlSigner;
use crate::storage::store::ImageStore;

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
    pub metrics: Arc<crate::telemetry::metrics::Metrics>,
    /// Interval of `generating` progress heartbeats.
    pub progress_interval: Duration,
    /// Largest image accepted from a model (the PRD's 4 MiB output cap).
    pub max_image_bytes: usize,
    /// Largest `resources/read` reply (`protocol::resources`).
    pub max_resource_reply_bytes: usize,
    /// Set once a stop signal arrived: readiness fails while calls drain.
    pub draining: Arc<std::sync::atomic::AtomicBool>,
    /// Prices for models missing from the capability table.
    pub pricing: crate::routing::pricing::Pricing,
    /// What each model can do, and its prices.
    pub catalog: Arc<ModelCatalog>,
    /// Chains chosen by rule, organisation or style (`GATEWAY_ROUTES_FILE`).
    pub routes: Arc<Routes>,
    /// Generations running as tasks (they outlive their request); a graceful
    /// shutdown waits for them like for in-flight calls.
    pub tasks: tokio_util::task::TaskTracker,
    /// Log prompt text in audit events (else only its hash).
    pub log_prompts: bool,
    /// Lifetime of a running task's lease (`protocol::task_lease`).
    pub task_lease: Duration,
    /// Upload URLs: lifetime and size limit.
    pub uploads: crate::storage::uploads::UploadSettings,
    /// Bounds on an edit's input images.
    pub edit_limits: crate::media::input::EditLimits,
    /// `https://` references of edits (off without an allow-list).
    pub remote: crate::storage::remote_fetch::RemoteFetch,
    /// Per-organisation monthly budgets.
    pub budgets: crate::routing::budget::Budgets,
    /// Provider quotas as their answers describe them, shared by replicas.
    pub capacity: Capacity,
    /// Each organisation's content policy (`GATEWAY_CONTENT_POLICY_FILE`).
    pub policies: Arc<crate::policy::rules::ContentPolicies>,
    /// The moderation model the policies ask.
    pub moderator: Arc<crate::policy::moderator::Moderator>,
    /// Content Credentials: the policy and the signing key.
    pub provenance: crate::provenance::Provenance,
}

impl AppState {
    /// Builds the state from validated configuration (connecting to the
    /// budget store when one is configured).
    pub async fn from_config(config: &ServeConfig) -> anyhow::Result<Self> {
        let metrics = crate::telemetry::metrics::Metrics::new();
        let (quotas, slots): (Arc<dyn QuotaStore>, Arc<dyn SlotStore>) = match config.capacity_redis_url() {
            Some(url) => {
                let redis = crate::routing::redis_connection(url, "GATEWAY_CAPACITY_REDIS_URL").await?;
                (
                    Arc::new(crate::routing::capacity::redis::RedisQuotas::new(redis.clone())),
                    Arc::new(crate::routing::pools::redis::RedisSlots::new(redis)),
                )
            }
            None => (
                Arc::new(crate::routing::capacity::memory::MemoryQuotas::default()),
                Arc::new(crate::routing::pools::memory::MemorySlots::default()),
            ),
        };
        let capacity = Capacity::new(quotas, slots, metrics.clone());
        let parts = AdminParts::read(config, &capacity)?;
        let budgets = match (&config.budget_redis_url, parts.budgets) {
            (_, None) => crate::routing::budget::Budgets::none(metrics.clone()),
            (redis, Some(settings)) => {
                let store: Arc<dyn crate::routing::budget::BudgetStore> = match redis {
                    Some(url) => Arc::new(crate::routing::budget::redis::RedisBudgets::connect(url).await?),
                    None => Arc::new(crate::routing::budget::memory::MemoryBudgets::default()),
                };
                crate::routing::budget::Budgets::new(settings, store, Arc::new(chrono::Utc::now), metrics.clone())
            }
        };
        let AdminParts {
            catalog,
            backend,
            routes,
            url_keys,
            identity_keys,
            policies,
            provenance,
            ..
        } = parts;
        let moderator = crate::policy::moderator::Moderator::new(
            crate::providers::moderation::ModerationClient::new(config.moderation_settings())?,
            config.moderation_retry(),
            config.breaker_policy(),
            metrics.clone(),
        );
        // Zero series from the start, so the alert and dashboard see the first failure.
        for reason in crate::provenance::ProvenanceError::REASONS {
            let _ = metrics
                .signing_failures
                .get_or_create(&crate::telemetry::metrics::SigningFailureLabels {
                    reason: reason.into(),
                    policy: provenance.policy.as_str().into(),
                });
        }
        if let Err(why) = &provenance.key {
            if provenance.policy != crate::provenance::Policy::Off {
                tracing::warn!(
                    policy = provenance.policy.as_str(),
                    "no Content Credentials signing key: {why}"
                );
            }
        }
        Ok(Self {
            backend,
            store: config.image_store()?,
            signer: UrlSigner::new(url_keys, &config.public_base_url)?,
            identity: Arc::new(AssertionVerifier::new(&identity_keys)),
            url_ttl: config.url_ttl(),
            metrics,
            budgets,
            progress_interval: Duration::from_secs(config.progress_interval_secs.max(1)),
            max_image_bytes: config.max_image_bytes,
            max_resource_reply_bytes: config.max_resource_reply_bytes,
            draining: Arc::default(),
            pricing: crate::routing::pricing::Pricing {
                input_per_million_tokens: config.price_input_per_mtok,
                output_per_million_tokens: config.price_output_per_mtok,
                per_image: config.price_per_image,
            },
            log_prompts: config.log_prompts,
            task_lease: Duration::from_secs(config.task_lease_secs.clamp(3, 3600)),
            uploads: crate::storage::uploads::UploadSettings {
                ttl: Duration::from_secs(config.upload_ttl_secs.max(1)),
                max_bytes: config.upload_max_bytes,
            },
            edit_limits: crate::media::input::EditLimits {
                input: crate::media::input::InputLimits {
                    max_bytes: config.upload_max_bytes,
                    max_pixels: config.edit_max_pixels,
                },
                max_total_bytes: config.edit_max_input_bytes,
            },
            remote: crate::storage::remote_fetch::RemoteFetch {
                hosts: config
                    .edit_url_hosts
                    .iter()
                    .filter(|h| !h.is_empty())
                    .cloned()
                    .collect(),
                timeout: Duration::from_secs(10),
                max_bytes: config.upload_max_bytes,
                allow_loopback: false,
                max_redirects: 3,
            },
            catalog,
            routes: Arc::new(routes),
            tasks: tokio_util::task::TaskTracker::new(),
            capacity,
            policies: Arc::new(policies),
            moderator: Arc::new(moderator),
            provenance,
        })
    }

    /// This state with its admin files (routes, models, budgets, content policy, keyrings)
    /// read again: validated whole, or refused with the reason. Everything
    /// else (metrics, budget totals, the assertion replay memory, tasks,
    /// storage) carries over; model chains are rebuilt (their breakers
    /// start closed).
    pub fn reload(&self, config: &ServeConfig) -> anyhow::Result<Self> {
        let parts = AdminParts::read(config, &self.capacity)?;
        // A signing key that worked is not given up for one that does not (a
        // rotation caught between its two files is read again at the next change).
        if let (Ok(_), Err(why)) = (&self.provenance.key, &parts.provenance.key) {
            anyhow::bail!("Content Credentials signing key: {why}");
        }
        Ok(Self {
            provenance: parts.provenance,
            backend: parts.backend,
            signer: UrlSigner::new(parts.url_keys, &config.public_base_url)?,
            identity: Arc::new(self.identity.with_keys(&parts.identity_keys)),
            budgets: match parts.budgets {
                Some(settings) => self.budgets.with_settings(settings),
                None => self.budgets.clone(),
            },
            catalog: parts.catalog,
            routes: Arc::new(parts.routes),
            policies: Arc::new(parts.policies),
            ..self.clone()
        })
    }

    /// Prices of `model`: its row of the capability table, else the configured defaults.
    pub fn pricing_for(&self, model: &str) -> crate::routing::pricing::Pricing {
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
    budgets: Option<crate::routing::budget::BudgetSettings>,
    policies: crate::policy::rules::ContentPolicies,
    provenance: crate::provenance::Provenance,
}

impl AdminParts {
    fn read(config: &ServeConfig, capacity: &Capacity) -> anyhow::Result<Self> {
        let budgets = config
            .budgets_file
            .as_ref()
            .map(|path| crate::routing::budget::BudgetSettings::from_file(path))
            .transpose()?;
        let catalog = Arc::new(config.catalog()?);
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
        for (provider, model) in config.routes(&catalog)? {
            backends.push(backend_for(provider, model)?);
        }
        let backend = Arc::new(
            ModelRouter::new(backends, config.retry_policy(), config.breaker_policy())
                .with_catalog(catalog.clone())
                .with_capacity(capacity.clone()),
        );
        let routes = match &config.routes_file {
            Some(path) => Routes::new(
                RoutesSpec::from_file(path)?,
                config.default_chain_entries(&catalog)?,
                |chain| {
                    let mut chain_backends = Vec::with_capacity(chain.len());
                    for entry in chain {
                        let (provider, model) = config.route_entry(entry, &catalog)?;
                        chain_backends.push(backend_for(provider, model)?);
                    }
                    Ok(
                        ModelRouter::new(chain_backends, config.retry_policy(), config.breaker_policy())
                            .with_catalog(catalog.clone())
                            .with_capacity(capacity.clone()),
                    )
                },
            )?,
            None => Routes::none(config.default_chain_entries(&catalog)?),
        };
        let url_keys = Keyring::from_file(
            &config.url_signing_key_file(),
            crate::storage::signed_url::MIN_SECRET_BYTES,
        )
        .map_err(|e| {
            anyhow::anyhow!(
                "URL signing keys: {e:#} (run `mcp-image-gateway dev-init` or set GATEWAY_URL_SIGNING_KEY_FILE)"
            )
        })?;
        let identity_keys = Keyring::from_file(&config.identity_keys_file(), crate::identity::MIN_KEY_BYTES)
            .map_err(|e| anyhow::anyhow!("identity assertion keys: {e:#} (run `mcp-image-gateway dev-init` or set GATEWAY_IDENTITY_KEYS_FILE)"))?;
        let policies = match &config.content_policy_file {
            Some(path) => {
                let policies = crate::policy::rules::ContentPolicies::from_file(path)?;
                let known = |model: &str| catalog.get(model).is_some() || built.values().any(|b| b.model() == model);
                policies
                    .check_image_models(known)
                    .map_err(|e| anyhow::anyhow!("the content policy file {}: {e}", path.display()))?;
                policies
            }
            None => crate::policy::rules::ContentPolicies::none(),
        };
        Ok(Self {
            catalog,
            backend,
            routes,
            url_keys,
            identity_keys,
            budgets,
            policies,
            provenance: config.provenance(),
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
        BackendChoice::Openai => Arc::new(OpenAiBackend::new(crate::providers::openai::OpenAiSettings {
            model,
            ..config.openai_settings()
        })?),
        BackendChoice::OpenaiCompatible => Arc::new(crate::providers::openai_compatible::backend(
            config.openai_compatible_base_url.as_deref().unwrap_or_default(),
            config.openai_compatible_api_key.as_deref(),
            &model,
            Duration::from_secs(config.openai_compatible_timeout_secs),
            config.max_image_bytes,
        )?),
        BackendChoice::Stability => Arc::new(crate::providers::stability::StabilityBackend::new(
            crate::providers::stability::StabilitySettings {
                api_key: config.stability_api_key.clone().unwrap_or_default(),
                base_url: config.stability_base_url.clone(),
                model,
                timeout: Duration::from_secs(config.stability_timeout_secs),
                max_image_bytes: config.max_image_bytes,
            },
        )?),
        BackendChoice::OfflinePreview | BackendChoice::Auto => Arc::new(OfflinePreview),
    })
}
