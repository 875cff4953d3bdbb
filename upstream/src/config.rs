//! Service configuration: command-line flags, each also settable by an
//! environment variable. Validated once at start with messages naming the
//! setting.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::providers::openai::{self, OpenAiSettings};
use crate::routing::catalog::ModelCatalog;

/// Longest signed-link lifetime accepted (7 days, S3's presign limit).
pub const MAX_URL_TTL_SECS: u64 = 7 * 24 * 3600;

/// Which model backend to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// `openai` when OPENAI_API_KEY is set, else `offline-preview`.
    Auto,
    /// OpenAI's GPT image models (OPENAI_*).
    Openai,
    /// A self-hosted server speaking the OpenAI Images API (OPENAI_COMPATIBLE_*).
    OpenaiCompatible,
    /// Stability AI's Stable Diffusion 3.5 (STABILITY_*).
    Stability,
    /// A deterministic abstract PNG from the prompt's hash: not a model, for
    /// development and tests.
    OfflinePreview,
}

/// Settings of `mcp-image-gateway serve` (serialised, secrets redacted, into the evidence bundle).
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct ServeConfig {
    /// Address to listen on (only Envoy should reach it).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Address of the Prometheus `/metrics` listener (scraped directly, not through Envoy).
    #[arg(long, env = "GATEWAY_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
    /// Public origin clients use, for signed links (scheme://host:port).
    #[arg(long, env = "GATEWAY_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub public_base_url: String,
    /// Folder for local state (images, keys) when no other location is set.
    #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
    pub state_dir: PathBuf,
    /// Image store URL: `file:///path`; `s3://bucket`, with the standard
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` and, for
    /// S3-compatible stores, `AWS_ENDPOINT` / `AWS_ALLOW_HTTP`; or `gs://bucket`,
    /// with `GOOGLE_SERVICE_ACCOUNT` or the instance's credentials. Default
    /// `file://{state_dir}/images`.
    #[arg(long, env = "GATEWAY_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Links straight to the bucket (S3/GCS presigned URLs); `false` serves
    /// them through this service's signed `/images` links instead (stores
    /// that cannot presign, such as a GCS emulator without OAuth).
    #[arg(long, env = "GATEWAY_STORAGE_PRESIGN", default_value_t = true, action = clap::ArgAction::Set)]
    pub storage_presign: bool,
    /// Keys for signed image links, one `KEY_ID HEX` line each (at least 32
    /// bytes), the newest last: it signs, every listed key verifies (links
    /// carry `kid`); a bare hex line is the key `default`. Default
    /// `{state_dir}/url-signing.key`.
    #[arg(long, env = "GATEWAY_URL_SIGNING_KEY_FILE")]
    pub url_signing_key_file: Option<PathBuf>,
    /// Per-organisation monthly budgets in USD (`{"default_usd": 50, "orgs":
    /// {"acme": 500}}`); none without it.
    #[arg(long, env = "GATEWAY_BUDGETS_FILE")]
    pub budgets_file: Option<PathBuf>,
    /// Redis shared by every replica for budget totals (`redis://host:6379`);
    /// without it one replica keeps them in memory.
    #[arg(long, env = "GATEWAY_BUDGET_REDIS_URL")]
    pub budget_redis_url: Option<String>,
    /// Redis shared by every replica for provider quota readings (default:
    /// the budget store's); without one each replica learns from its own answers.
    #[arg(long, env = "GATEWAY_CAPACITY_REDIS_URL")]
    pub capacity_redis_url: Option<String>,
    /// Seconds a running task's lease lasts; renewed every third of it. A task
    /// whose replica died is reported failed once its lease lapses.
    #[arg(long, env = "GATEWAY_TASK_LEASE_SECS", default_value_t = 30)]
    pub task_lease_secs: u64,
    /// Keys the edge filter signs identity assertions with, one `KEY_ID HEX`
    /// line each (two during a rotation); default `{state_dir}/identity.keys`.
    #[arg(long, env = "GATEWAY_IDENTITY_KEYS_FILE")]
    pub identity_keys_file: Option<PathBuf>,
    /// Content Credentials (C2PA) on every stored image: `required` (an image
    /// that cannot be signed is not delivered: a tool error naming why,
    /// nothing stored or billed), `best_effort` (delivered unsigned, counted)
    /// or `off`.
    #[arg(long, env = "GATEWAY_PROVENANCE", value_enum, default_value_t = crate::provenance::Policy::Required)]
    pub provenance: crate::provenance::Policy,
    /// The Content Credentials signing certificate chain (PEM, the signing
    /// certificate first, then its issuers; ES256 or Ed25519), re-read when it
    /// changes. Default `{state_dir}/provenance/signer.pem` (made by `dev-init`).
    #[arg(long, env = "GATEWAY_PROVENANCE_CERT_FILE")]
    pub provenance_cert_file: Option<PathBuf>,
    /// The signing certificate's private key (PKCS#8 PEM), re-read when it
    /// changes. Default `{state_dir}/provenance/signer.key`.
    #[arg(long, env = "GATEWAY_PROVENANCE_KEY_FILE")]
    pub provenance_key_file: Option<PathBuf>,
    /// An RFC 3161 time-stamp authority (http or https URL) that time-stamps
    /// every Content Credentials signature, so manifests stay valid after the
    /// signing certificate expires. An authority that fails or takes over 3 s
    /// costs the image its time-stamp (counted), never its credentials. Unset:
    /// no time-stamps.
    #[arg(long, env = "GATEWAY_PROVENANCE_TSA_URL", value_parser = crate::provenance::time_stamp::TimeStampAuthority::new)]
    pub provenance_tsa_url: Option<crate::provenance::time_stamp::TimeStampAuthority>,
    /// Lifetime of signed image links, in seconds (at most 7 days, S3's presign limit).
    #[arg(long, env = "GATEWAY_URL_TTL_SECS", default_value_t = 86_400)]
    pub url_ttl_secs: u64,
    /// Host names (optionally host:port) the MCP endpoint accepts in `Host`;
    /// comma separated. Loopback and the public base URL's host are always allowed.
    #[arg(long, env = "GATEWAY_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// The primary model's backend.
    #[arg(long, env = "GATEWAY_BACKEND", value_enum, default_value_t = BackendChoice::Auto)]
    pub backend: BackendChoice,
    /// Days images are kept (1 to 29: GDPR, under 30; links may not outlive
    /// them); a sweeper in every replica deletes older ones.
    #[arg(long, env = "GATEWAY_RETENTION_DAYS", default_value_t = 29)]
    pub retention_days: u32,
    /// Hours uploads (`create_upload`) are kept before the sweeper deletes them.
    #[arg(long, env = "GATEWAY_UPLOAD_RETENTION_HOURS", default_value_t = 24)]
    pub upload_retention_hours: u32,
    /// Days audit segments are kept (SOC 2 looks back a year).
    #[arg(long, env = "GATEWAY_AUDIT_RETENTION_DAYS", default_value_t = 400)]
    pub audit_retention_days: u32,
    /// The keyring that signs audit segments (`KEY_ID HEX_SECRET` lines, the
    /// newest last); the tamper-evident audit runs when it exists. Default
    /// `{state_dir}/audit.keys` (made by `dev-init`).
    #[arg(long, env = "GATEWAY_AUDIT_KEYS_FILE")]
    pub audit_keys_file: Option<PathBuf>,
    /// Events per audit segment before it is closed.
    #[arg(long, env = "GATEWAY_AUDIT_SEGMENT_EVENTS", default_value_t = 10_000)]
    pub audit_segment_events: usize,
    /// Seconds an audit segment stays open (closed by age even when idle);
    /// the run's anchor is written at least this often.
    #[arg(long, env = "GATEWAY_AUDIT_SEGMENT_SECS", default_value_t = 300)]
    pub audit_segment_secs: u64,
    /// How long an upload URL stays valid, in seconds.
    #[arg(long, env = "GATEWAY_UPLOAD_TTL_SECS", default_value_t = 900)]
    pub upload_ttl_secs: u64,
    /// Largest upload, in bytes (also the largest input image of an edit).
    #[arg(long, env = "GATEWAY_UPLOAD_MAX_BYTES", default_value_t = 20 * 1024 * 1024)]
    pub upload_max_bytes: usize,
    /// Largest total of input bytes one edit reads, across its references.
    #[arg(long, env = "GATEWAY_EDIT_MAX_INPUT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub edit_max_input_bytes: usize,
    /// Largest input image in pixels (header-checked before decoding: bombs).
    #[arg(long, env = "GATEWAY_EDIT_MAX_PIXELS", default_value_t = 40_000_000)]
    pub edit_max_pixels: u64,
    /// Hosts whose https URLs edit_image may fetch (`cdn.example.com`, or
    /// `.example.com` for subdomains); comma separated; empty turns https references off.
    #[arg(long, env = "GATEWAY_EDIT_URL_HOSTS", value_delimiter = ',')]
    pub edit_url_hosts: Vec<String>,
    /// Seconds between retention sweeps.
    #[arg(long, env = "GATEWAY_RETENTION_SWEEP_SECS", default_value_t = 3600)]
    pub retention_sweep_secs: u64,
    /// Log prompts in audit events (default: only their SHA-256).
    #[arg(long, env = "GATEWAY_LOG_PROMPTS", default_value_t = false)]
    pub log_prompts: bool,
    /// USD per million input tokens reported by the provider.
    #[arg(long, env = "GATEWAY_PRICE_INPUT_PER_MTOK_USD", default_value_t = 5.0)]
    pub price_input_per_mtok: f64,
    /// USD per million output (image) tokens reported by the provider.
    #[arg(long, env = "GATEWAY_PRICE_OUTPUT_PER_MTOK_USD", default_value_t = 40.0)]
    pub price_output_per_mtok: f64,
    /// USD per image when the provider reports no usage (0 for the offline preview).
    #[arg(long, env = "GATEWAY_PRICE_PER_IMAGE_USD", default_value_t = 0.0)]
    pub price_per_image: f64,
    /// Largest image accepted from a model, in bytes; larger ones are a tool
    /// error and are not stored. It also bounds how much of a provider's answer
    /// is read: the images asked for as base64 (Stability: one image's bytes)
    /// plus 1 MiB; a longer answer is cut off there and is a tool error.
    #[arg(long, env = "GATEWAY_MAX_IMAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_image_bytes: usize,
    /// Largest `resources/read` reply (an image inlined as base64): keep it
    /// within the edge filter's `max_response_bytes`, whose default it is.
    /// Larger images are refused with an error carrying their signed link.
    #[arg(long, env = "GATEWAY_MAX_RESOURCE_REPLY_BYTES", default_value_t = mcp_edge_filter::config::DEFAULT_MAX_RESPONSE_BYTES)]
    pub max_resource_reply_bytes: usize,
    /// Seconds between `generating` progress notifications (heartbeats) while a model works.
    #[arg(long, env = "GATEWAY_PROGRESS_INTERVAL_SECS", default_value_t = 10)]
    pub progress_interval_secs: u64,
    /// Seconds between a stop signal and closing the listener, while readiness
    /// already fails (load balancers stop sending new calls).
    #[arg(long, env = "GATEWAY_DRAIN_DELAY_SECS", default_value_t = 5)]
    pub drain_delay_secs: u64,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long, env = "GATEWAY_SHUTDOWN_GRACE_SECS", default_value_t = 330)]
    pub shutdown_grace_secs: u64,
    /// OpenAI API key (enables the `openai` backend under `auto`).
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    pub openai_api_key: Option<String>,
    /// A file holding the OpenAI API key (a Secret mounted as a file), read at start.
    #[arg(long, env = "OPENAI_API_KEY_FILE", conflicts_with = "openai_api_key")]
    pub openai_api_key_file: Option<PathBuf>,
    /// OpenAI API base URL (any server speaking the Images API).
    #[arg(long, env = "OPENAI_BASE_URL", default_value = openai::DEFAULT_BASE_URL)]
    pub openai_base_url: String,
    /// OpenAI image model (the primary model under the `openai` backend).
    #[arg(long, env = "OPENAI_IMAGE_MODEL", default_value = openai::DEFAULT_MODEL)]
    pub openai_image_model: String,
    /// OpenAI's `moderation` level, sent with every OpenAI request.
    #[arg(long, env = "OPENAI_MODERATION", default_value = "auto", value_parser = ["auto", "low"])]
    pub openai_moderation: String,
    /// Routes (JSON): model chains by rule (prompt length, keywords and
    /// patterns, tools, sizes, styles, qualities, backgrounds, organisations,
    /// number of images), by organisation, by style and a `default`, each a
    /// chain, a `cheapest` chain or weighted arms; the models each organisation
    /// may choose (`selectable`); the organisations that may use a model's
    /// reserve (`priority_orgs`).
    #[arg(long, env = "GATEWAY_ROUTES_FILE")]
    pub routes_file: Option<PathBuf>,
    /// A JSON model capability table replacing the built-in one
    /// (`upstream/src/routing/models.json`): sizes, qualities, formats,
    /// transparency, edits, prices, and a self-hosted pool's reserve and
    /// concurrency.
    #[arg(long, env = "GATEWAY_MODELS_FILE")]
    pub models_file: Option<PathBuf>,
    /// How often the admin files (routes, models, budgets, content policy, keyrings) are
    /// looked at for changes, in seconds; SIGHUP re-reads them at once.
    #[arg(long, env = "GATEWAY_ADMIN_FILES_POLL_SECS", default_value_t = 1)]
    pub admin_files_poll_secs: u64,
    /// Stability AI API key (the `stability` backend: SD3.5, one request per image).
    #[arg(long, env = "STABILITY_API_KEY", hide_env_values = true)]
    pub stability_api_key: Option<String>,
    /// A file holding the Stability API key, read at start.
    #[arg(long, env = "STABILITY_API_KEY_FILE", conflicts_with = "stability_api_key")]
    pub stability_api_key_file: Option<PathBuf>,
    /// Stability AI API base URL.
    #[arg(long, env = "STABILITY_BASE_URL", default_value = crate::providers::stability::DEFAULT_BASE_URL)]
    pub stability_base_url: String,
    /// Stability model (`POST /v2beta/stable-image/generate/sd3`).
    #[arg(long, env = "STABILITY_MODEL", default_value = crate::providers::stability::DEFAULT_MODEL)]
    pub stability_model: String,
    /// Timeout for one Stability call, in seconds (SD3.5 answers in seconds).
    #[arg(long, env = "STABILITY_TIMEOUT_SECS", default_value_t = 120)]
    pub stability_timeout_secs: u64,
    /// Timeout for one call to the OpenAI-compatible server, in seconds.
    #[arg(long, env = "OPENAI_COMPATIBLE_TIMEOUT_SECS", default_value_t = 300)]
    pub openai_compatible_timeout_secs: u64,
    /// Base URL of a self-hosted server speaking the classic OpenAI Images API
    /// (LocalAI and the like: `response_format: b64_json`, PNG only, no
    /// GPT-image options), e.g. `http://localai:8080/v1`.
    #[arg(long, env = "OPENAI_COMPATIBLE_BASE_URL")]
    pub openai_compatible_base_url: Option<String>,
    /// API key of the OpenAI-compatible server, if it wants one.
    #[arg(long, env = "OPENAI_COMPATIBLE_API_KEY", hide_env_values = true)]
    pub openai_compatible_api_key: Option<String>,
    /// A file holding the OpenAI-compatible server's API key, read at start.
    #[arg(
        long,
        env = "OPENAI_COMPATIBLE_API_KEY_FILE",
        conflicts_with = "openai_compatible_api_key"
    )]
    pub openai_compatible_api_key_file: Option<PathBuf>,
    /// The OpenAI-compatible server's model name.
    #[arg(long, env = "OPENAI_COMPATIBLE_MODEL", default_value = "stablediffusion")]
    pub openai_compatible_model: String,
    /// OpenAI organisation id, sent as `OpenAI-Organization`.
    #[arg(long, env = "OPENAI_ORGANIZATION")]
    pub openai_organization: Option<String>,
    /// Models tried in order when the primary fails, comma separated:
    /// `provider:model`, or a bare name that binds to the provider of its
    /// capability row (`offline-preview` goes to the offline renderer,
    /// `sd3.5-large` to Stability; a name the table does not know stops the
    /// start), e.g. `gpt-image-1.5,stability:sd3.5-large`.
    #[arg(long, env = "GATEWAY_FALLBACK_MODELS", value_delimiter = ',')]
    pub fallback_models: Vec<String>,
    /// Attempts per model on rate limits, 5xx and network errors (jittered backoff, `Retry-After` honoured).
    #[arg(long, env = "GATEWAY_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Longest wait between attempts, in seconds; a longer `Retry-After` moves on at once.
    #[arg(long, env = "GATEWAY_RETRY_MAX_DELAY_SECS", default_value_t = 20)]
    pub retry_max_delay_secs: u64,
    /// The most a call spends with the models, in seconds: pool waits,
    /// attempts, backoff and fallbacks together (an attempt is cut at it).
    /// Keep it under Envoy's `/mcp` route timeout (600 s) with room to store
    /// and sign; every provider timeout must fit inside it.
    #[arg(long, env = "GATEWAY_CALL_DEADLINE_SECS", default_value_t = crate::routing::chain::DEFAULT_CALL_DEADLINE.as_secs())]
    pub call_deadline_secs: u64,
    /// Consecutive failed calls after which a model is skipped for a while.
    #[arg(long, env = "GATEWAY_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds an opened circuit breaker skips its model.
    #[arg(long, env = "GATEWAY_BREAKER_OPEN_SECS", default_value_t = 30)]
    pub breaker_open_secs: u64,
    /// Timeout for one provider call, in seconds (image models can take minutes).
    #[arg(long, env = "OPENAI_TIMEOUT_SECS", default_value_t = 300)]
    pub openai_timeout_secs: u64,
    /// The content policy (JSON): per organisation, denied terms, whether the
    /// moderation model checks prompts and images, what happens when it is
    /// unavailable, which categories refuse from which score, and OpenAI's
    /// own moderation level; re-read while running like the other admin files.
    /// Without it nothing is checked.
    #[arg(long, env = "GATEWAY_CONTENT_POLICY_FILE")]
    pub content_policy_file: Option<PathBuf>,
    /// The moderation model's API base URL (`POST {base}/moderations`, OpenAI's
    /// or a server speaking it); default OPENAI_BASE_URL.
    #[arg(long, env = "GATEWAY_MODERATION_BASE_URL")]
    pub moderation_base_url: Option<String>,
    /// The moderation model's API key; default OPENAI_API_KEY.
    #[arg(long, env = "GATEWAY_MODERATION_API_KEY", hide_env_values = true)]
    pub moderation_api_key: Option<String>,
    /// The moderation model.
    #[arg(long, env = "GATEWAY_MODERATION_MODEL", default_value = crate::providers::moderation::DEFAULT_MODEL)]
    pub moderation_model: String,
    /// Timeout for one moderation request, in seconds.
    #[arg(long, env = "GATEWAY_MODERATION_TIMEOUT_SECS", default_value_t = 10)]
    pub moderation_timeout_secs: u64,
    /// Attempts per moderation check, the first included (transient failures are retried).
    #[arg(long, env = "GATEWAY_MODERATION_MAX_ATTEMPTS", default_value_t = 2)]
    pub moderation_max_attempts: u32,
}

impl ServeConfig {
    /// Reads the provider keys given as files (`*_API_KEY_FILE`) into their
    /// settings: a Secret mounted as a file stays out of the environment.
    pub fn read_key_files(&mut self) -> anyhow::Result<()> {
        for (file, key) in [
            (&self.openai_api_key_file, &mut self.openai_api_key),
            (&self.stability_api_key_file, &mut self.stability_api_key),
            (
                &self.openai_compatible_api_key_file,
                &mut self.openai_compatible_api_key,
            ),
        ] {
            if let Some(path) = file {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("reading the API key file {}: {e}", path.display()))?;
                *key = Some(text.trim().to_string());
            }
        }
        Ok(())
    }

    /// Checks values that the flag parser cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=MAX_URL_TTL_SECS).contains(&self.url_ttl_secs),
            "GATEWAY_URL_TTL_SECS must be between 1 and {MAX_URL_TTL_SECS} (got {})",
            self.url_ttl_secs
        );
        anyhow::ensure!(
            self.public_base_url.starts_with("http://") || self.public_base_url.starts_with("https://"),
            "GATEWAY_PUBLIC_BASE_URL must start with http:// or https:// (got {:?})",
            self.public_base_url
        );
        if self.backend == BackendChoice::Openai {
            anyhow::ensure!(
                self.openai_api_key.as_deref().is_some_and(|k| !k.is_empty()),
                "GATEWAY_BACKEND=openai needs OPENAI_API_KEY"
            );
        }
        for route in self.routes(&self.catalog()?)? {
            match route.0 {
                BackendChoice::Stability => anyhow::ensure!(
                    self.stability_api_key.as_deref().is_some_and(|k| !k.is_empty()),
                    "the stability backend needs STABILITY_API_KEY"
                ),
                BackendChoice::OpenaiCompatible => anyhow::ensure!(
                    self.openai_compatible_base_url
                        .as_deref()
                        .is_some_and(|u| u.starts_with("http")),
                    "the openai-compatible backend needs OPENAI_COMPATIBLE_BASE_URL (http:// or https://)"
                ),
                _ => {}
            }
        }
        anyhow::ensure!(
            !self.openai_image_model.is_empty(),
            "OPENAI_IMAGE_MODEL must not be empty"
        );
        anyhow::ensure!(
            self.call_deadline_secs >= 1,
            "GATEWAY_CALL_DEADLINE_SECS must be at least 1"
        );
        // Timeouts that fit inside each other: one attempt inside the call's
        // deadline (which is inside Envoy's route timeout, a test checks).
        for (setting, secs) in self.provider_timeouts() {
            anyhow::ensure!(
                secs <= self.call_deadline_secs,
                "{setting} ({secs} s) is longer than GATEWAY_CALL_DEADLINE_SECS ({} s), the most a whole call may spend with the models: lower it, or raise the deadline (and Envoy's /mcp route timeout with it)",
                self.call_deadline_secs
            );
        }
        Ok(())
    }

    /// The moderation model's client settings (OpenAI's base URL and key unless set apart).
    pub fn moderation_settings(&self) -> crate::providers::moderation::ModerationSettings {
        crate::providers::moderation::ModerationSettings {
            base_url: self
                .moderation_base_url
                .clone()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| self.openai_base_url.clone()),
            api_key: self
                .moderation_api_key
                .clone()
                .or_else(|| self.openai_api_key.clone())
                .unwrap_or_default(),
            model: self.moderation_model.clone(),
            timeout: Duration::from_secs(self.moderation_timeout_secs.max(1)),
        }
    }

    /// The moderation model's retries: a check sits before every generation,
    /// so its attempts are short and its deadline is theirs.
    pub fn moderation_retry(&self) -> crate::routing::chain::RetryPolicy {
        let attempts = self.moderation_max_attempts.max(1);
        crate::routing::chain::RetryPolicy {
            max_attempts: attempts,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            call_deadline: Duration::from_secs(self.moderation_timeout_secs.max(1) * u64::from(attempts) + 2),
        }
    }

    /// Each provider's timeout for one attempt, by its setting.
    fn provider_timeouts(&self) -> [(&'static str, u64); 3] {
        [
            ("OPENAI_TIMEOUT_SECS", self.openai_timeout_secs),
            ("STABILITY_TIMEOUT_SECS", self.stability_timeout_secs),
            ("OPENAI_COMPATIBLE_TIMEOUT_SECS", self.openai_compatible_timeout_secs),
        ]
    }

    /// The longest a call can spend with the models: every attempt to its
    /// timeout with the longest backoff between, cut at the call's deadline.
    pub fn longest_with_models(&self) -> Duration {
        let attempt = self
            .provider_timeouts()
            .iter()
            .map(|(_, secs)| *secs)
            .max()
            .unwrap_or(0);
        let attempts = u64::from(self.max_attempts.max(1));
        let unbounded = attempt * attempts + self.retry_max_delay_secs * (attempts - 1);
        Duration::from_secs(unbounded.min(self.call_deadline_secs))
    }

    pub fn retry_policy(&self) -> crate::routing::chain::RetryPolicy {
        crate::routing::chain::RetryPolicy {
            max_attempts: self.max_attempts.max(1),
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(self.retry_max_delay_secs),
            call_deadline: Duration::from_secs(self.call_deadline_secs),
        }
    }

    pub fn breaker_policy(&self) -> crate::routing::chain::BreakerPolicy {
        crate::routing::chain::BreakerPolicy {
            failure_threshold: self.breaker_failures.max(1),
            open_for: Duration::from_secs(self.breaker_open_secs),
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    pub fn url_ttl(&self) -> Duration {
        Duration::from_secs(self.url_ttl_secs)
    }

    /// The image store these settings name.
    pub fn image_store(&self) -> anyhow::Result<crate::storage::store::ImageStore> {
        let store = crate::storage::store::ImageStore::from_url(&self.storage_url())?;
        Ok(if self.storage_presign {
            store
        } else {
            store.without_presigning()
        })
    }

    pub fn storage_url(&self) -> String {
        self.storage_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", absolute(&self.state_dir.join("images")).display()))
    }

    pub fn identity_keys_file(&self) -> PathBuf {
        self.identity_keys_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("identity.keys"))
    }

    pub fn provenance_cert_file(&self) -> PathBuf {
        self.provenance_cert_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("provenance").join("signer.pem"))
    }

    pub fn provenance_key_file(&self) -> PathBuf {
        self.provenance_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("provenance").join("signer.key"))
    }

    /// The Content Credentials settings, with the key read from its files.
    pub fn provenance(&self) -> crate::provenance::Provenance {
        crate::provenance::Provenance::load(
            self.provenance,
            &self.provenance_cert_file(),
            &self.provenance_key_file(),
            self.provenance_tsa_url.as_ref(),
        )
    }

    /// The admin files this service reads and re-reads while running:
    /// `routes`, `models`, `budgets` where given, both keyrings, and the
    /// Content Credentials certificate and key unless provenance is off.
    pub fn admin_files(&self) -> Vec<(&'static str, PathBuf)> {
        let signing = self.provenance != crate::provenance::Policy::Off;
        let optional = [
            ("routes", self.routes_file.clone()),
            ("models", self.models_file.clone()),
            ("budgets", self.budgets_file.clone()),
            ("content_policy", self.content_policy_file.clone()),
            ("provenance_cert", signing.then(|| self.provenance_cert_file())),
            ("provenance_key", signing.then(|| self.provenance_key_file())),
        ];
        optional
            .into_iter()
            .filter_map(|(name, path)| path.map(|path| (name, path)))
            .chain([
                ("url_keys", self.url_signing_key_file()),
                ("identity_keys", self.identity_keys_file()),
            ])
            .collect()
    }

    /// The keyring that signs and checks audit segments.
    pub fn audit_keys(&self) -> anyhow::Result<crate::storage::keyring::Keyring> {
        crate::storage::keyring::Keyring::from_file(&self.audit_keys_file(), 32)
            .map_err(|e| anyhow::anyhow!("audit keys: {e:#} (GATEWAY_AUDIT_KEYS_FILE)"))
    }

    pub fn audit_keys_file(&self) -> PathBuf {
        self.audit_keys_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("audit.keys"))
    }

    pub fn url_signing_key_file(&self) -> PathBuf {
        self.url_signing_key_file
            .clone()
            .unwrap_or_else(|| self.state_dir.join("url-signing.key"))
    }

    /// The chain of (provider, model): the primary, then `GATEWAY_FALLBACK_MODELS`
    /// entries, each `model` (the primary's provider) or `provider:model`.
    /// Where provider quota readings are shared, if anywhere.
    pub fn capacity_redis_url(&self) -> Option<&str> {
        self.capacity_redis_url
            .as_deref()
            .or(self.budget_redis_url.as_deref())
            .filter(|u| !u.is_empty())
    }

    /// The model capability table: `GATEWAY_MODELS_FILE`, else the built-in one.
    pub fn catalog(&self) -> anyhow::Result<ModelCatalog> {
        Ok(match &self.models_file {
            Some(path) => ModelCatalog::from_file(path)?,
            None => ModelCatalog::builtin()?,
        })
    }

    /// The built-in chain: the primary model, then `GATEWAY_FALLBACK_MODELS`.
    pub fn routes(&self, catalog: &ModelCatalog) -> anyhow::Result<Vec<(BackendChoice, String)>> {
        let primary = self.resolved_backend();
        let mut routes = vec![(primary, self.model_of(primary))];
        for entry in self.fallback_models.iter().filter(|m| !m.is_empty()) {
            routes.push(
                self.route_entry(entry, catalog)
                    .map_err(|e| anyhow::anyhow!("GATEWAY_FALLBACK_MODELS: {e:#}"))?,
            );
        }
        Ok(routes)
    }

    /// The built-in chain as route entries (`provider:model`).
    pub fn default_chain_entries(&self, catalog: &ModelCatalog) -> anyhow::Result<Vec<String>> {
        Ok(self
            .routes(catalog)?
            .into_iter()
            .map(|(provider, model)| format!("{}:{model}", provider.entry_name()))
            .collect())
    }

    /// A chain entry bound to its provider: `provider:model` as written; a
    /// bare name to the provider its capability row names (else, for the
    /// primary's own model or a row without one, the primary's provider). A
    /// name the table does not know has no provider to go to: refused.
    pub fn route_entry(&self, entry: &str, catalog: &ModelCatalog) -> anyhow::Result<(BackendChoice, String)> {
        let (provider, model) = parse_route(entry)?;
        if let Some(provider) = provider {
            return Ok((provider, model));
        }
        let primary = self.resolved_backend();
        if model == self.model_of(primary) {
            return Ok((primary, model));
        }
        match catalog.get(&model) {
            Some(row) => match row.provider.as_deref() {
                Some(name) => Ok((BackendChoice::from_entry_name(name)?, model)),
                None => Ok((primary, model)),
            },
            None => anyhow::bail!(
                "no provider knows the model {model:?}: it is not in the model table (GATEWAY_MODELS_FILE); write it as provider:model (openai, openai-compatible, stability, offline-preview) or add its row with a provider"
            ),
        }
    }

    fn model_of(&self, provider: BackendChoice) -> String {
        match provider {
            BackendChoice::Stability => self.stability_model.clone(),
            BackendChoice::OpenaiCompatible => self.openai_compatible_model.clone(),
            BackendChoice::OfflinePreview => crate::providers::offline_preview::MODEL.to_string(),
            _ => self.openai_image_model.clone(),
        }
    }

    /// The backend `auto` resolves to.
    pub fn resolved_backend(&self) -> BackendChoice {
        match self.backend {
            BackendChoice::Auto if self.openai_api_key.as_deref().is_some_and(|k| !k.is_empty()) => {
                BackendChoice::Openai
            }
            BackendChoice::Auto => BackendChoice::OfflinePreview,
            other => other,
        }
    }

    pub fn openai_settings(&self) -> OpenAiSettings {
        OpenAiSettings {
            api_key: self.openai_api_key.clone().unwrap_or_default(),
            base_url: self.openai_base_url.clone(),
            model: self.openai_image_model.clone(),
            organization: self.openai_organization.clone(),
            timeout: Duration::from_secs(self.openai_timeout_secs),
            moderation: self.openai_moderation.clone(),
            dialect: crate::providers::openai::Dialect::OpenAi,
            max_image_bytes: self.max_image_bytes,
        }
    }

    /// `Host` values the MCP endpoint accepts.
    pub fn allowed_hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if let Some(authority) = self.public_base_url.split("://").nth(1) {
            let authority = authority.split('/').next().unwrap_or_default();
            hosts.push(authority.to_string());
        }
        hosts.extend(self.allowed_hosts.iter().filter(|h| !h.is_empty()).cloned());
        hosts
    }
}

/// `model` or `provider:model` (provider: openai, openai-compatible, stability).
impl BackendChoice {
    /// The provider a route entry or capability row names.
    pub fn from_entry_name(name: &str) -> anyhow::Result<Self> {
        Ok(match name.trim() {
            "openai" => BackendChoice::Openai,
            "openai-compatible" => BackendChoice::OpenaiCompatible,
            "stability" => BackendChoice::Stability,
            "offline-preview" => BackendChoice::OfflinePreview,
            other => {
                anyhow::bail!("unknown provider {other:?} (openai, openai-compatible, stability, offline-preview)")
            }
        })
    }

    /// The provider's name in route entries (`provider:model`).
    pub fn entry_name(self) -> &'static str {
        match self {
            BackendChoice::Openai | BackendChoice::Auto => "openai",
            BackendChoice::OpenaiCompatible => "openai-compatible",
            BackendChoice::Stability => "stability",
            BackendChoice::OfflinePreview => "offline-preview",
        }
    }
}

fn parse_route(entry: &str) -> anyhow::Result<(Option<BackendChoice>, String)> {
    let Some((provider, model)) = entry.split_once(':') else {
        return Ok((None, entry.trim().to_string()));
    };
    let provider = BackendChoice::from_entry_name(provider).map_err(|e| anyhow::anyhow!("entry {entry:?}: {e}"))?;
    anyhow::ensure!(!model.trim().is_empty(), "entry {entry:?} names no model");
    Ok((Some(provider), model.trim().to_string()))
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: ServeConfig,
    }

    fn config(args: &[&str]) -> ServeConfig {
        Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .unwrap()
            .serve
    }

    #[test]
    fn bare_fallback_names_bind_to_their_rows_provider() {
        let catalog = ModelCatalog::builtin().unwrap();
        let openai = ["--backend", "openai", "--openai-api-key", "sk-test"];
        let chain = |fallbacks: &str| {
            let mut args = openai.to_vec();
            args.extend(["--fallback-models", fallbacks]);
            config(&args).routes(&catalog)
        };
        let bound = chain("offline-preview,gpt-image-1.5,sd3.5-large,openai-compatible:my-sdxl").unwrap();
        assert_eq!(
            bound,
            vec![
                (BackendChoice::Openai, "gpt-image-2".to_string()),
                (BackendChoice::OfflinePreview, "offline-preview".to_string()),
                (BackendChoice::Openai, "gpt-image-1.5".to_string()),
                (BackendChoice::Stability, "sd3.5-large".to_string()),
                (BackendChoice::OpenaiCompatible, "my-sdxl".to_string()),
            ]
        );
        let unknown = chain("gpt-image-9").unwrap_err().to_string();
        assert!(
            unknown.contains("GATEWAY_FALLBACK_MODELS")
                && unknown.contains("\"gpt-image-9\"")
                && unknown.contains("provider:model"),
            "{unknown}"
        );
        let bad_provider = chain("dall-e:3").unwrap_err().to_string();
        assert!(bad_provider.contains("unknown provider \"dall-e\""), "{bad_provider}");
    }

    #[test]
    fn provider_keys_can_come_from_files() {
        let dir = std::env::temp_dir().join(format!("key-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("openai.key");
        std::fs::write(&file, "sk-from-file\n").unwrap();
        let mut from_file = config(&["--openai-api-key-file", file.to_str().unwrap()]);
        from_file.read_key_files().unwrap();
        assert_eq!(from_file.openai_api_key.as_deref(), Some("sk-from-file"));
        assert_eq!(from_file.resolved_backend(), BackendChoice::Openai);
        let mut missing = config(&["--stability-api-key-file", dir.join("absent").to_str().unwrap()]);
        assert!(missing.read_key_files().unwrap_err().to_string().contains("absent"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The `timeout` of Envoy's `/mcp` route in an Envoy config, in seconds.
    fn mcp_route_timeout(envoy_config: &str) -> u64 {
        let route = envoy_config.split("match: { path: /mcp }").nth(1).unwrap();
        let timeout = route.split("timeout: ").nth(1).unwrap();
        timeout.split('s').next().unwrap().trim().parse().unwrap()
    }

    #[test]
    fn a_calls_time_with_the_models_fits_inside_envoys_route_timeout() {
        // Storing and signing come after the models, inside the same route timeout.
        const STORE_AND_SIGN_SECS: u64 = 30;
        let configs = [
            include_str!("../../envoy/envoy.yaml.tmpl"),
            include_str!("../../deploy/gateway/envoy.yaml"),
        ];
        let serve = config(&[]);
        let longest = serve.longest_with_models().as_secs();
        for envoy in configs {
            let route = mcp_route_timeout(envoy);
            assert!(
                longest + STORE_AND_SIGN_SECS < route,
                "a call may spend {longest} s with the models, past Envoy's {route} s"
            );
        }
        // A provider timeout that cannot fit inside the deadline stops the start.
        let too_long = config(&["--openai-timeout-secs", "900"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            too_long.contains("OPENAI_TIMEOUT_SECS (900 s)") && too_long.contains("GATEWAY_CALL_DEADLINE_SECS"),
            "{too_long}"
        );
        assert!(serve.validate().is_ok());
    }
}
