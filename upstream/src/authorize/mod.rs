//! The gateway's OAuth 2.1 authorization server, the one MCP clients find by
//! following the edge's 401 (protected resource metadata → this server's
//! RFC 8414 metadata). It runs as its own process
//! (`mcp-image-gateway authorize`), beside the MCP service rather than in
//! it: Envoy routes `/oauth/*` and the metadata path here, so it is scaled,
//! secured and restarted on its own, and the MCP service stays the image tools.
//!
//! Who vouches for the user is one of two, chosen at start:
//! - the development sign-in of `make run` (a plain form: a user id and an
//!   organisation; never deployed);
//! - the company IdP, by its issuer, through the gateway's one confidential
//!   client there (`idp`): for IdPs without dynamic registration, Client ID
//!   Metadata Documents, or `resource` (Entra, Google, ADFS…).
//!
//! Either way clients get this server's own short-lived access tokens for
//! the MCP URL (`tokens`), with rotating refresh tokens (`store`), and a
//! client already signed in to the IdP may trade the IdP's identity
//! assertion (ID-JAG, SEP-990) for one without a browser (`token_endpoint`).

pub mod clients;
pub mod grants;
pub mod id_jag;
pub mod idp;
pub mod pages;
pub mod record;
pub mod registration;
pub mod sign_in;
pub mod store;
pub mod token_endpoint;
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::storage::keyring::Keyring;
use crate::storage::remote_fetch::RemoteFetch;
use clients::Client;
use grants::Grantable;
use idp::{Idp, IdpSettings};
use record::AuthzMetrics;
use store::GrantStore;
use tokens::TokenSigner;

/// The grant type of identity assertion grants (RFC 7523).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Settings of `mcp-image-gateway authorize`.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthorizeConfig {
    /// Address to listen on (only Envoy should reach it; `/metrics` too, unrouted).
    #[arg(long, env = "GATEWAY_AUTHZ_LISTEN", default_value = "127.0.0.1:8082")]
    pub listen: SocketAddr,
    /// The gateway's public origin: this server's issuer; the MCP URL is `{it}/mcp`.
    #[arg(long, env = "GATEWAY_PUBLIC_BASE_URL", default_value = "http://127.0.0.1:8080")]
    pub public_base_url: String,
    /// Where the development key and keyring are (`make run`) when the files
    /// below are not named.
    #[arg(long, env = "GATEWAY_STATE_DIR", default_value = ".state")]
    pub state_dir: PathBuf,
    /// The private ES256 JWK that signs access tokens (default: the
    /// development key, `{state_dir}/dev-signing-key.jwk`).
    #[arg(long, env = "GATEWAY_AUTHZ_SIGNING_KEY_FILE")]
    pub signing_key_file: Option<PathBuf>,
    /// The keyring sealing registered client ids (default `{state_dir}/authz.keys`).
    #[arg(long, env = "GATEWAY_AUTHZ_KEYS_FILE")]
    pub keys_file: Option<PathBuf>,
    /// The development sign-in form (`make run`): never in production.
    #[arg(long, env = "GATEWAY_AUTHZ_DEV_SIGN_IN", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_sign_in: bool,
    /// The company IdP's issuer: users sign in there (with the client below).
    #[arg(long, env = "IDP_ISSUER")]
    pub idp_issuer: Option<String>,
    /// The gateway's confidential client at the IdP (redirect URI `{public origin}/oauth/callback`).
    #[arg(long, env = "IDP_CLIENT_ID")]
    pub idp_client_id: Option<String>,
    /// Its secret (prefer `IDP_CLIENT_SECRET_FILE`, e.g. a mounted Secret).
    #[arg(long, env = "IDP_CLIENT_SECRET", hide_env_values = true)]
    pub idp_client_secret: Option<String>,
    /// A file holding that secret (a mounted Secret in `deploy/`).
    #[arg(long, env = "IDP_CLIENT_SECRET_FILE")]
    pub idp_client_secret_file: Option<PathBuf>,
    /// Scopes asked of the IdP (OpenID: the ID token says who signed in).
    #[arg(long, env = "IDP_SCOPES", default_value = "openid profile email")]
    pub idp_scopes: String,
    /// Where the IdP's ID token carries the organisation: a claim, or a JSON pointer (`/tid`).
    #[arg(long, env = "IDP_ORG_CLAIM", default_value = "org")]
    pub idp_org_claim: String,
    /// Or one organisation for everyone the IdP signs in.
    #[arg(long, env = "IDP_ORG")]
    pub idp_org: Option<String>,
    /// The claim naming the user (default `sub`).
    #[arg(long, env = "IDP_USER_CLAIM")]
    pub idp_user_claim: Option<String>,
    /// How the gateway authenticates at the IdP's token endpoint.
    #[arg(long, env = "IDP_TOKEN_AUTH", default_value = "client_secret_basic")]
    pub idp_token_auth: String,
    /// Scopes this server grants (comma-separated).
    #[arg(
        long,
        env = "GATEWAY_AUTHZ_SCOPES",
        value_delimiter = ',',
        default_value = "images:generate"
    )]
    pub scopes: Vec<String>,
    /// Access token lifetime.
    #[arg(long, env = "GATEWAY_AUTHZ_ACCESS_TOKEN_SECS", default_value_t = 3600)]
    pub access_token_secs: u64,
    /// Refresh token lifetime (each use rotates it).
    #[arg(long, env = "GATEWAY_AUTHZ_REFRESH_TOKEN_DAYS", default_value_t = 30)]
    pub refresh_token_days: u64,
    /// Shared store for sign-ins, codes and refresh tokens across replicas;
    /// without it they live in this process (one replica).
    #[arg(long, env = "GATEWAY_AUTHZ_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Development and tests only: fetch client metadata documents over
    /// http and from loopback addresses.
    #[arg(long, env = "GATEWAY_AUTHZ_CIMD_ALLOW_LOOPBACK", default_value_t = false, action = clap::ArgAction::Set)]
    pub cimd_allow_loopback: bool,
    /// Requests per minute from one client IP (Envoy's `x-mcp-client-ip`).
    #[arg(long, env = "GATEWAY_AUTHZ_REQUESTS_PER_MINUTE", default_value_t = 120)]
    pub requests_per_minute: u32,
}

/// Where users sign in.
pub enum Vouch {
    Dev,
    Idp(Box<Idp>),
}

impl Vouch {
    /// The label in metrics and audit: `dev` or the IdP's issuer.
    pub fn label(&self) -> &str {
        match self {
            Vouch::Dev => "dev",
            Vouch::Idp(idp) => &idp.settings.issuer,
        }
    }
}

/// The server's state.
pub struct Authz {
    /// The issuer: the gateway's public origin with its `/` (clients compare
    /// issuers as strings, and the Python SDK renders a root URL with it).
    pub issuer: String,
    /// The origin, without the `/`: endpoints hang under it.
    pub origin: String,
    pub grantable: Grantable,
    pub signer: TokenSigner,
    pub keys: Keyring,
    pub vouch: Vouch,
    pub store: Arc<dyn GrantStore>,
    pub metrics: AuthzMetrics,
    pub documents: RemoteFetch,
    document_cache: Mutex<HashMap<String, (Client, Instant)>>,
    /// Metadata documents fetched at once, at most.
    document_fetches: tokio::sync::Semaphore,
    pub access_token_secs: u64,
    pub refresh_ttl: Duration,
    limiter: Mutex<(Instant, HashMap<String, u32>)>,
    requests_per_minute: u32,
}

/// How long a fetched client metadata document is used before fetching again.
const DOCUMENT_CACHE: Duration = Duration::from_secs(300);
/// At most this many documents are cached, and fetched at once.
const MAX_CACHED_DOCUMENTS: usize = 1024;
const MAX_DOCUMENT_FETCHES: usize = 16;
/// Client IPs counted per minute, at most; beyond, new addresses wait.
const MAX_COUNTED_IPS: usize = 50_000;
/// How long a sign-in may take, from the client's request to the code.
pub const SIGN_IN_TTL: Duration = Duration::from_secs(600);
/// Codes are redeemed at once by clients: one minute.
pub const CODE_TTL: Duration = Duration::from_secs(60);

impl Authz {
    pub async fn from_config(config: &AuthorizeConfig) -> anyhow::Result<Arc<Self>> {
        let origin = config.public_base_url.trim_end_matches('/').to_string();
        let issuer = format!("{origin}/");
        let signing_key = config
            .signing_key_file
            .clone()
            .unwrap_or_else(|| config.state_dir.join("dev-signing-key.jwk"));
        let keys_file = config
            .keys_file
            .clone()
            .unwrap_or_else(|| config.state_dir.join("authz.keys"));
        let vouch = match (&config.idp_issuer, config.dev_sign_in) {
            (Some(_), true) => anyhow::bail!("set either GATEWAY_AUTHZ_DEV_SIGN_IN or IDP_ISSUER, not both"),
            (None, false) => anyhow::bail!(
                "no sign-in configured: set IDP_ISSUER, IDP_CLIENT_ID and IDP_CLIENT_SECRET(_FILE) \
                 (or GATEWAY_AUTHZ_DEV_SIGN_IN=true for development)"
            ),
            (None, true) => Vouch::Dev,
            (Some(issuer), false) => Vouch::Idp(Box::new(Idp::new(idp_settings(config, issuer)?)?)),
        };
        let store: Arc<dyn GrantStore> = match &config.redis_url {
            Some(url) => Arc::new(store::redis::RedisGrants::connect(url).await?),
            None => Arc::new(store::memory::MemoryGrants::default()),
        };
        anyhow::ensure!(
            !config.scopes.is_empty(),
            "GATEWAY_AUTHZ_SCOPES must name at least one scope"
        );
        Ok(Arc::new(Self {
            signer: TokenSigner::from_file(&signing_key, &issuer)?,
            keys: Keyring::from_file(&keys_file, 32)
                .with_context(|| format!("the client-id keyring {}", keys_file.display()))?,
            grantable: Grantable {
                resource: format!("{origin}/mcp"),
                scopes: config.scopes.clone(),
            },
            issuer,
            origin,
            vouch,
            store,
            metrics: AuthzMetrics::default(),
            documents: RemoteFetch {
                hosts: vec!["*".into()],
                timeout: clients::METADATA_TIMEOUT,
                max_bytes: clients::MAX_METADATA_BYTES,
                allow_loopback: config.cimd_allow_loopback,
                // The draft: a metadata document is never fetched through a redirect.
                max_redirects: 0,
            },
            document_fetches: tokio::sync::Semaphore::new(MAX_DOCUMENT_FETCHES),
            document_cache: Mutex::new(HashMap::new()),
            access_token_secs: config.access_token_secs.max(60),
            refresh_ttl: Duration::from_secs(config.refresh_token_days.max(1) * 86_400),
            limiter: Mutex::new((Instant::now(), HashMap::new())),
            requests_per_minute: config.requests_per_minute.max(1),
        }))
    }

    /// The client a client id names: a registration, or a metadata document.
    pub async fn client(&self, client_id: &str) -> Result<Client, clients::ClientError> {
        if !clients::is_metadata_url(client_id) {
            return clients::registered(&self.keys, client_id).ok_or(clients::ClientError {
                code: "invalid_client",
                message: "this client id was not issued by this server: register again".into(),
            });
        }
        if let Some((client, at)) = self
            .document_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(client_id)
        {
            if at.elapsed() < DOCUMENT_CACHE {
                self.metrics.client_document("cached");
                return Ok(client.clone());
            }
        }
        let Ok(_permit) = self.document_fetches.try_acquire() else {
            self.metrics.client_document("busy");
            return Err(clients::ClientError {
                code: "temporarily_unavailable",
                message: "too many client metadata documents are being fetched; retry in a moment".into(),
            });
        };
        match clients::from_metadata_document(&self.documents, client_id).await {
            Ok(client) => {
                self.metrics.client_document("fetched");
                let mut cache = self.document_cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED_DOCUMENTS {
                    cache.retain(|_, (_, at)| at.elapsed() < DOCUMENT_CACHE);
                }
                if cache.len() >= MAX_CACHED_DOCUMENTS {
                    cache.clear();
                }
                cache.insert(client_id.to_string(), (client.clone(), Instant::now()));
                Ok(client)
            }
            Err(error) => {
                self.metrics.client_document("refused");
                Err(error)
            }
        }
    }

    /// Whether one more request from `ip` fits this minute's allowance.
    pub fn admit(&self, ip: &str) -> bool {
        let mut limiter = self.limiter.lock().unwrap_or_else(|e| e.into_inner());
        if limiter.0.elapsed() >= Duration::from_secs(60) {
            *limiter = (Instant::now(), HashMap::new());
        }
        if limiter.1.len() >= MAX_COUNTED_IPS && !limiter.1.contains_key(ip) {
            return false;
        }
        let count = limiter.1.entry(ip.to_string()).or_insert(0);
        *count += 1;
        *count <= self.requests_per_minute
    }

    /// A stable pseudonym of a user for audit (not reversible without the key).
    pub fn pseudonym(&self, user: &str) -> String {
        use hmac::{Hmac, Mac};
        let (_, secret) = self.keys.newest();
        let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
            return String::new();
        };
        mac.update(b"user-pseudonym\0");
        mac.update(user.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..12])
    }

    /// This server's RFC 8414 metadata.
    pub fn metadata(&self) -> Value {
        let origin = &self.origin;
        let mut grants = vec!["authorization_code", "refresh_token"];
        if matches!(self.vouch, Vouch::Idp(_)) {
            grants.push(JWT_BEARER);
        }
        json!({
            "issuer": self.issuer,
            "authorization_endpoint": format!("{origin}/oauth/authorize"),
            "token_endpoint": format!("{origin}/oauth/token"),
            "registration_endpoint": format!("{origin}/oauth/register"),
            "jwks_uri": format!("{origin}/oauth/jwks"),
            "scopes_supported": self.grantable.scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": grants,
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "client_id_metadata_document_supported": true,
            "authorization_response_iss_parameter_supported": true,
            "protected_resources": [self.grantable.resource],
        })
    }
}

fn idp_settings(config: &AuthorizeConfig, issuer: &str) -> anyhow::Result<IdpSettings> {
    let client_id = config
        .idp_client_id
        .clone()
        .context("IDP_ISSUER is set: IDP_CLIENT_ID (the gateway's client at the IdP) is required too")?;
    let client_secret = match (&config.idp_client_secret, &config.idp_client_secret_file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("reading IDP_CLIENT_SECRET_FILE {}", path.display()))?
            .trim()
            .to_string(),
        (Some(secret), None) => secret.clone(),
        (None, None) => anyhow::bail!("IDP_ISSUER is set: IDP_CLIENT_SECRET or IDP_CLIENT_SECRET_FILE is required too"),
    };
    anyhow::ensure!(
        matches!(
            config.idp_token_auth.as_str(),
            "client_secret_basic" | "client_secret_post"
        ),
        "IDP_TOKEN_AUTH must be client_secret_basic or client_secret_post"
    );
    Ok(IdpSettings {
        issuer: issuer.to_string(),
        client_id,
        client_secret,
        scopes: config.idp_scopes.clone(),
        org_claim: config.idp_org_claim.clone(),
        org: config.idp_org.clone(),
        user_claim: config.idp_user_claim.clone(),
        token_auth: config.idp_token_auth.clone(),
    })
}

/// Serves until `stop`.
pub async fn serve(config: AuthorizeConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let authz = Authz::from_config(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    tracing::info!(listen = %config.listen, issuer = %authz.issuer, idp = authz.vouch.label(), "starting the authorization server");
    axum::serve(
        listener,
        router(authz).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { stop.cancelled().await })
    .await?;
    Ok(())
}

/// The routes Envoy sends here (and `/metrics`, `/healthz`, which it does not).
pub fn router(authz: Arc<Authz>) -> Router {
    Router::new()
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/oauth/jwks", get(jwks))
        .route("/oauth/register", post(registration::register))
        .route("/oauth/authorize", get(sign_in::authorize))
        .route("/oauth/sign-in", post(sign_in::dev_sign_in))
        .route("/oauth/consent", post(sign_in::consent))
        .route("/oauth/callback", get(sign_in::callback))
        .route("/oauth/token", post(token_endpoint::token))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(16 * 1024))
        .with_state(authz)
}

async fn metadata(State(authz): State<Arc<Authz>>) -> Response {
    cacheable(Json(authz.metadata()))
}

async fn jwks(State(authz): State<Arc<Authz>>) -> Response {
    cacheable(Json(authz.signer.jwks()))
}

async fn metrics(State(authz): State<Arc<Authz>>) -> Response {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        authz.metrics.encode(),
    )
        .into_response()
}

fn cacheable(body: impl IntoResponse) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("public, max-age=300"));
    response
}

/// The caller's IP as Envoy saw it (it overwrites `x-mcp-client-ip`).
pub fn client_ip(headers: &HeaderMap) -> String {
    headers
        .get("x-mcp-client-ip")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .to_string()
}

/// An OAuth error answer (RFC 6749 §5.2): JSON, never cached.
pub fn oauth_error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut response = (status, Json(json!({"error": code, "error_description": message}))).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// 429 for a client IP over its allowance.
pub fn too_many(authz: &Authz) -> Response {
    authz.metrics.rate_limited();
    let mut response = oauth_error(
        StatusCode::TOO_MANY_REQUESTS,
        "temporarily_unavailable",
        "too many requests from this address; retry in a minute",
    );
    response
        .headers_mut()
        .insert("retry-after", HeaderValue::from_static("60"));
    response
}
