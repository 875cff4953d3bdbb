//! `POST /oauth/token`: codes (PKCE), refresh tokens (rotated on each use)
//! and identity assertion grants, for the client that authenticates here.
//! A code or refresh token is consumed by its first redemption, good or
//! bad, so a stolen one cannot be tried twice.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::json;

use super::clients::{self, Client};
use super::grants::{self, Grant, OAuthError};
use super::record::AuthzEvent;
use super::store::Kind;
use super::{client_ip, id_jag, oauth_error, too_many, Authz, Vouch, JWT_BEARER};

/// The form, each parameter at most once (RFC 6749 §3.2).
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(body: &[u8]) -> Result<Self, OAuthError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
            .map_err(|_| OAuthError::new("invalid_request", "the body must be application/x-www-form-urlencoded"))?;
        let mut seen = std::collections::HashSet::new();
        if let Some((name, _)) = pairs.iter().find(|(name, _)| !seen.insert(name.as_str())) {
            return Err(OAuthError::new(
                "invalid_request",
                format!("parameter {name:?} is repeated"),
            ));
        }
        Ok(Self(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub async fn token(State(authz): State<Arc<Authz>>, headers: HeaderMap, body: Bytes) -> Response {
    let ip = client_ip(&headers);
    if !authz.admit(&ip) {
        return too_many(&authz);
    }
    let params = match Params::parse(&body) {
        Ok(params) => params,
        Err(error) => return refuse(&authz, "unknown", "", None, &ip, error),
    };
    let grant_type = params.get("grant_type").unwrap_or_default().to_string();
    let label = match grant_type.as_str() {
        "authorization_code" | "refresh_token" => grant_type.as_str(),
        JWT_BEARER => "jwt_bearer",
        _ => "unknown",
    };
    let client = match authenticate(&authz, &headers, &params).await {
        Ok(client) => client,
        Err(error) => return refuse(&authz, label, "", None, &ip, error),
    };
    let issued = match grant_type.as_str() {
        "authorization_code" => by_code(&authz, &client, &params).await,
        "refresh_token" => by_refresh(&authz, &client, &params).await,
        JWT_BEARER => by_assertion(&authz, &client, &params).await,
        "" => Err(OAuthError::new("invalid_request", "grant_type is required")),
        other => Err(OAuthError::new(
            "unsupported_grant_type",
            format!("grant_type {other:?} is not supported"),
        )),
    };
    match issued {
        Ok((grant, scope, refresh)) => answer(&authz, label, &grant, &scope, refresh, &ip).await,
        Err(error) => refuse(&authz, label, &client.id, None, &ip, error),
    }
}

/// The client, by its secret when it has one (Basic or form), else by id.
async fn authenticate(authz: &Authz, headers: &HeaderMap, params: &Params) -> Result<Client, OAuthError> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic ").or_else(|| v.strip_prefix("basic ")))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|pair| {
            let (id, secret) = pair.split_once(':')?;
            Some((form_decode(id), form_decode(secret)))
        });
    let (client_id, secret) = match (basic, params.get("client_id")) {
        (Some((id, _)), Some(form_id)) if id != form_id => {
            return Err(OAuthError::new(
                "invalid_request",
                "client_id differs from the authenticated client",
            ))
        }
        (Some((id, secret)), _) => (id, Some(secret)),
        (None, Some(id)) => (id.to_string(), params.get("client_secret").map(str::to_string)),
        (None, None) => {
            return Err(OAuthError::new(
                "invalid_client",
                "the client is not identified: send client_id",
            ))
        }
    };
    let client = authz
        .client(&client_id)
        .await
        .map_err(|e| OAuthError::new("invalid_client", e.message))?;
    match (client.confidential, secret) {
        (true, Some(secret)) if clients::secret_matches(&authz.keys, &client.id, &secret) => Ok(client),
        (true, _) => Err(OAuthError::new("invalid_client", "client authentication failed")),
        (false, None) => Ok(client),
        (false, Some(_)) => Err(OAuthError::new(
            "invalid_client",
            "this client was registered without a secret (token_endpoint_auth_method none)",
        )),
    }
}

type Issued = (Grant, String, bool);

async fn by_code(authz: &Authz, client: &Client, params: &Params) -> Result<Issued, OAuthError> {
    let code = params
        .get("code")
        .ok_or_else(|| OAuthError::new("invalid_request", "code is required"))?;
    let grant = take(authz, Kind::Code, code, "the code is invalid, expired or already used").await?;
    grants::redeem_code(
        &grant,
        client,
        params.get("redirect_uri"),
        params.get("code_verifier"),
        params.get("resource"),
    )?;
    let scope = grant.scope.clone();
    Ok((grant, scope, true))
}

async fn by_refresh(authz: &Authz, client: &Client, params: &Params) -> Result<Issued, OAuthError> {
    let token = params
        .get("refresh_token")
        .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is required"))?;
    let digest = grants::digest(token);
    let gone = "the refresh token is invalid, expired or already used";
    let Some(stored) = authz.store.take(Kind::Refresh, &digest).await.map_err(store_error)? else {
        // A refresh token used twice was stolen (or its client is broken):
        // every token of that sign-in goes (RFC 9700 §4.14.2).
        if let Some(family) = authz.store.get(Kind::UsedRefresh, &digest).await.map_err(store_error)? {
            authz
                .store
                .put(Kind::RevokedFamily, &family, "revoked".into(), authz.refresh_ttl)
                .await
                .map_err(store_error)?;
            return Err(OAuthError::new(
                "invalid_grant",
                "the refresh token was already used: every token of this sign-in is revoked; sign in again",
            ));
        }
        return Err(OAuthError::new("invalid_grant", gone));
    };
    let grant: Grant = serde_json::from_str(&stored).map_err(|_| OAuthError::new("invalid_grant", gone))?;
    let now = super::idp::unix_now();
    let revoked = authz
        .store
        .get(Kind::RevokedFamily, &grant.family)
        .await
        .map_err(store_error)?;
    if revoked.is_some() || now >= grant.family_expires_at {
        return Err(OAuthError::new(
            "invalid_grant",
            "this sign-in has ended (revoked or past its lifetime); sign in again",
        ));
    }
    let remembered = Duration::from_secs(grant.family_expires_at.saturating_sub(now).max(1));
    authz
        .store
        .put(Kind::UsedRefresh, &digest, grant.family.clone(), remembered)
        .await
        .map_err(store_error)?;
    let scope = grants::refresh_scope(&grant, client, params.get("scope"), params.get("resource"))?;
    Ok((grant, scope, true))
}

async fn by_assertion(authz: &Authz, client: &Client, params: &Params) -> Result<Issued, OAuthError> {
    let Vouch::Idp(idp) = &authz.vouch else {
        return Err(OAuthError::new(
            "unsupported_grant_type",
            "identity assertion grants need a company IdP (IDP_ISSUER)",
        ));
    };
    // An assertion is a bearer credential: only a client that proves who
    // it is may trade one (SEP-990 has the client authenticate).
    if !client.confidential {
        return Err(OAuthError::new(
            "unauthorized_client",
            "identity assertion grants are for confidential clients (register with a client secret)",
        ));
    }
    let assertion = params
        .get("assertion")
        .ok_or_else(|| OAuthError::new("invalid_request", "assertion is required"))?;
    let (identity, claims) = idp
        .verify(assertion, &authz.issuer)
        .await
        .map_err(|e| OAuthError::new("invalid_grant", format!("the assertion is not valid: {e}")))?;
    let header = super::idp::header(assertion).unwrap_or_default();
    id_jag::check(&header, &claims, &client.id, &authz.grantable.resource)?;
    // One use per assertion: its jti is kept until it expires.
    let jti = claims.get("jti").and_then(|v| v.as_str()).unwrap_or_default();
    let key = grants::digest(&format!("{}\0{jti}", idp.settings.issuer));
    let remaining = identity.expires_at.saturating_sub(super::idp::unix_now()).max(1);
    let first = authz
        .store
        .put_new(
            Kind::Assertion,
            &key,
            "used".into(),
            Duration::from_secs(remaining + 60),
        )
        .await
        .map_err(store_error)?;
    if !first {
        return Err(OAuthError::new("invalid_grant", "the assertion was already used"));
    }
    if mcp_edge_filter::org_names::is_reserved(&identity.org) {
        return Err(OAuthError::new(
            "invalid_grant",
            "the assertion's organisation is reserved by the gateway",
        ));
    }
    // The IdP's grant is the ceiling: a client may ask for less, never more.
    let granted_by_idp = claims.get("scope").and_then(|v| v.as_str()).unwrap_or_default();
    let asked = params.get("scope").unwrap_or(granted_by_idp);
    if let Some(extra) = asked
        .split_whitespace()
        .find(|s| !granted_by_idp.split_whitespace().any(|g| g == *s))
    {
        return Err(OAuthError::new(
            "invalid_scope",
            format!("scope {extra:?} is not in the identity provider's assertion"),
        ));
    }
    let scope = grants::check_scope(Some(asked), &authz.grantable)?;
    let grant = Grant {
        client_id: client.id.clone(),
        user: identity.user,
        org: identity.org,
        scope: scope.clone(),
        resource: authz.grantable.resource.clone(),
        idp: idp.settings.issuer.clone(),
        redirect_uri: None,
        code_challenge: None,
        family: String::new(),
        family_expires_at: 0,
    };
    Ok((grant, scope, false))
}

async fn take(authz: &Authz, kind: Kind, secret: &str, gone: &str) -> Result<Grant, OAuthError> {
    let stored = authz
        .store
        .take(kind, &grants::digest(secret))
        .await
        .map_err(store_error)?
        .ok_or_else(|| OAuthError::new("invalid_grant", gone))?;
    serde_json::from_str(&stored).map_err(|_| OAuthError::new("invalid_grant", gone))
}

fn store_error(error: String) -> OAuthError {
    tracing::error!(%error, "the authorization store failed");
    OAuthError::new(
        "temporarily_unavailable",
        "the token service is briefly unavailable; retry",
    )
}

async fn answer(authz: &Authz, label: &str, grant: &Grant, scope: &str, refresh: bool, ip: &str) -> Response {
    let access = match authz.signer.access_token(grant, scope, authz.access_token_secs) {
        Ok(token) => token,
        Err(error) => {
            tracing::error!(%error, "signing an access token failed");
            return oauth_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "the token could not be signed",
            );
        }
    };
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": authz.access_token_secs,
        "scope": scope,
    });
    if refresh {
        let token = grants::random_token();
        let mut kept = grant.clone();
        kept.redirect_uri = None;
        kept.code_challenge = None;
        let stored = serde_json::to_string(&kept).unwrap_or_default();
        // No refresh token outlives its sign-in's family.
        let left = grant.family_expires_at.saturating_sub(super::idp::unix_now());
        let lifetime = authz.refresh_ttl.min(Duration::from_secs(left.max(1)));
        if let Err(error) = authz
            .store
            .put(Kind::Refresh, &grants::digest(&token), stored, lifetime)
            .await
        {
            let error = store_error(error);
            return oauth_error(StatusCode::SERVICE_UNAVAILABLE, error.code, &error.message);
        }
        body["refresh_token"] = json!(token);
    }
    authz.metrics.token(label, "issued");
    let pseudonym = authz.pseudonym(&grant.user);
    AuthzEvent {
        action: "token",
        outcome: "success",
        client_id: &grant.client_id,
        user_pseudonym: Some(&pseudonym),
        org: Some(&grant.org),
        idp: &grant.idp,
        grant: Some(label),
        scope: Some(scope),
        client_ip: Some(ip),
        ..AuthzEvent::default()
    }
    .emit();
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert("pragma", HeaderValue::from_static("no-cache"));
    response
}

fn refuse(authz: &Authz, label: &str, client_id: &str, org: Option<&str>, ip: &str, error: OAuthError) -> Response {
    authz.metrics.token(label, error.code);
    AuthzEvent {
        action: "token",
        outcome: error.code,
        client_id,
        org,
        idp: authz.vouch.label(),
        grant: Some(label),
        client_ip: Some(ip),
        detail: Some(&error.message),
        ..AuthzEvent::default()
    }
    .emit();
    let status = match error.code {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut response = oauth_error(status, error.code, &error.message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"mcp-image-gateway\""),
        );
    }
    response
}

fn form_decode(value: &str) -> String {
    url::form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}
