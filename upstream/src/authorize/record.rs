//! What the authorization server tells operators: a counter and an audit
//! event for every sign-in, token, registration and refusal. The user is a
//! pseudonym (a keyed hash), never a token, code, secret or verifier.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignInLabels {
    idp: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    grant: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The counters (prefix `mcp_authz`).
pub struct AuthzMetrics {
    registry: Registry,
    sign_ins: Family<SignInLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    registrations: Family<OutcomeLabels, Counter>,
    client_documents: Family<OutcomeLabels, Counter>,
    rate_limited: Counter,
}

impl Default for AuthzMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("mcp_authz");
        let sign_ins = Family::<SignInLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let registrations = Family::<OutcomeLabels, Counter>::default();
        let client_documents = Family::<OutcomeLabels, Counter>::default();
        let rate_limited = Counter::default();
        registry.register(
            "sign_ins",
            "Browser sign-ins by IdP (dev or the issuer) and outcome (success, denied, failed)",
            sign_ins.clone(),
        );
        registry.register(
            "token_requests",
            "Token endpoint requests by grant type and outcome (issued or the OAuth error code)",
            tokens.clone(),
        );
        registry.register(
            "registrations",
            "Dynamic client registrations by outcome",
            registrations.clone(),
        );
        registry.register(
            "client_metadata_documents",
            "Client ID Metadata Document lookups by outcome (fetched, cached, refused)",
            client_documents.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests refused by the per-client-IP rate limit",
            rate_limited.clone(),
        );
        Self {
            registry,
            sign_ins,
            tokens,
            registrations,
            client_documents,
            rate_limited,
        }
    }
}

impl AuthzMetrics {
    pub fn sign_in(&self, idp: &str, outcome: &str) {
        self.sign_ins
            .get_or_create(&SignInLabels {
                idp: idp.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn token(&self, grant: &str, outcome: &str) {
        self.tokens
            .get_or_create(&TokenLabels {
                grant: grant.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn registration(&self, outcome: &str) {
        self.registrations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn client_document(&self, outcome: &str) {
        self.client_documents
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn rate_limited(&self) {
        self.rate_limited.inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// One audited authorization event.
#[derive(Debug, Default)]
pub struct AuthzEvent<'a> {
    /// `sign_in`, `token`, `register`, `authorize`.
    pub action: &'a str,
    /// `success` or the OAuth error code.
    pub outcome: &'a str,
    pub client_id: &'a str,
    pub user_pseudonym: Option<&'a str>,
    pub org: Option<&'a str>,
    pub idp: &'a str,
    pub grant: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub client_ip: Option<&'a str>,
    pub detail: Option<&'a str>,
}

impl AuthzEvent<'_> {
    pub fn emit(&self) {
        tracing::info!(
            target: "audit",
            event = "authorization",
            action = self.action,
            outcome = self.outcome,
            client_id = self.client_id,
            user_pseudonym = self.user_pseudonym,
            org = self.org,
            idp = self.idp,
            grant = self.grant,
            scope = self.scope,
            client_ip = self.client_ip,
            detail = self.detail,
        );
    }
}
