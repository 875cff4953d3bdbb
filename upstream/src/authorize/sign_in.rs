//! The browser's part: `GET /oauth/authorize` checks the client and its
//! request, then the person signs in (the development form, or the company
//! IdP through `/oauth/callback`) and consents; the client gets a single-use
//! code at its registered redirect URI, with `iss` (RFC 9207).
//! Every step after the first is bound to the browser that started it (a
//! cookie only it holds, stored as a hash), and errors that cannot be
//! redirected safely (unknown client, unregistered redirect URI) are shown
//! here instead: never an open redirect.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use mcp_edge_filter::jwt::is_safe_identity;
use mcp_edge_filter::org_names;

use super::grants::{self, AuthorizeQuery, Grant, Pending};
use super::record::AuthzEvent;
use super::store::Kind;
use super::{client_ip, pages, too_many, Authz, Vouch, CODE_TTL, SIGN_IN_TTL};

/// The sign-in cookie: `__Host-` on https (no other host or path can set
/// it); plain on the development sign-in's http.
const COOKIE: &str = "mcp_authz";
const HOST_COOKIE: &str = "__Host-mcp_authz";
const DEV_USER: &str = "alice";
const DEV_ORG: &str = "acme";

pub async fn authorize(
    State(authz): State<Arc<Authz>>,
    headers: HeaderMap,
    Query(query): Query<AuthorizeQuery>,
) -> Response {
    let ip = client_ip(&headers);
    if !authz.admit(&ip) {
        return too_many(&authz);
    }
    let Some(client_id) = query.client_id.as_deref() else {
        return page(
            StatusCode::BAD_REQUEST,
            pages::error("Sign-in refused", "The request names no client_id."),
        );
    };
    let client = match authz.client(client_id).await {
        Ok(client) => client,
        Err(error) => {
            refused(&authz, client_id, error.code, &error.message, &ip);
            return page(StatusCode::BAD_REQUEST, pages::error("Unknown client", &error.message));
        }
    };
    let redirect_uri_sent = query.redirect_uri.is_some();
    let redirect_uri = match query.redirect_uri.as_deref() {
        Some(uri) if client.accepts_redirect(uri) => uri.to_string(),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        _ => {
            let message = "The redirect_uri is not one this client registered.";
            refused(&authz, client_id, "invalid_request", message, &ip);
            return page(StatusCode::BAD_REQUEST, pages::error("Sign-in refused", message));
        }
    };
    let (scope, resource) = match grants::check_request(&query, &authz.grantable) {
        Ok(granted) => granted,
        Err(error) => {
            refused(&authz, client_id, error.code, &error.message, &ip);
            // Shown, with a link back: no redirect without the person acting
            // (a registered client must not turn this into an open redirect).
            let back = to_client_url(
                &authz,
                &redirect_uri,
                query.state.as_deref(),
                Err((error.code, &error.message)),
            );
            return page(
                StatusCode::BAD_REQUEST,
                pages::error_with_return(&error.message, &client.name, back.as_deref()),
            );
        }
    };
    // A fresh secret for every sign-in: a cookie planted beforehand is never adopted.
    let browser = grants::random_token();
    let pending = Pending {
        client_id: client.id.clone(),
        client_name: client.name.clone(),
        redirect_uri,
        redirect_uri_sent,
        code_challenge: query.code_challenge.clone().unwrap_or_default(),
        state: query.state.clone(),
        scope,
        resource,
        browser: grants::digest(&browser),
        user: None,
        org: None,
        idp_verifier: None,
        idp_nonce: None,
    };
    let id = grants::random_token();
    if let Err(error) = save(&authz, &id, &pending).await {
        return unavailable(&error);
    }
    let body = match authz.vouch {
        Vouch::Dev => pages::dev_sign_in(&id, &client.name, DEV_USER, DEV_ORG, None),
        Vouch::Idp(_) => consent_page(&id, &pending),
    };
    let mut response = page(StatusCode::OK, body);
    let value = if authz.issuer.starts_with("https://") {
        format!("{HOST_COOKIE}={browser}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=600")
    } else {
        format!("{COOKIE}={browser}; Path=/oauth; HttpOnly; SameSite=Lax; Max-Age=600")
    };
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[derive(Deserialize)]
pub struct SignInForm {
    pending: String,
    user: String,
    org: String,
}

/// The development form's answer: who the person says they are.
pub async fn dev_sign_in(
    State(authz): State<Arc<Authz>>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    if !matches!(authz.vouch, Vouch::Dev) {
        return page(
            StatusCode::NOT_FOUND,
            pages::error(
                "Not here",
                "This server signs in through the company's identity provider.",
            ),
        );
    }
    let mut pending = match resume(&authz, &headers, &form.pending, false).await {
        Ok(pending) => pending,
        Err(response) => return response,
    };
    let (user, org) = (form.user.trim(), form.org.trim());
    let problem = if !is_safe_identity(user) || !is_safe_identity(org) {
        Some("User id and organisation: 1 to 128 letters, digits and - _ . @ | : (not starting with a dot).")
    } else if org_names::is_reserved(org) {
        Some("That organisation name is reserved by the gateway; choose another.")
    } else {
        None
    };
    if let Some(problem) = problem {
        return page(
            StatusCode::BAD_REQUEST,
            pages::dev_sign_in(&form.pending, &pending.client_name, user, org, Some(problem)),
        );
    }
    pending.user = Some(user.to_string());
    pending.org = Some(org.to_string());
    if let Err(error) = save(&authz, &form.pending, &pending).await {
        return unavailable(&error);
    }
    page(StatusCode::OK, consent_page(&form.pending, &pending))
}

#[derive(Deserialize)]
pub struct ConsentForm {
    pending: String,
    decision: String,
}

/// The consent's answer: deny, or go on (to the code, or to the IdP).
pub async fn consent(State(authz): State<Arc<Authz>>, headers: HeaderMap, Form(form): Form<ConsentForm>) -> Response {
    let ip = client_ip(&headers);
    let mut pending = match resume(&authz, &headers, &form.pending, true).await {
        Ok(pending) => pending,
        Err(response) => return response,
    };
    if form.decision != "allow" {
        authz.metrics.sign_in(authz.vouch.label(), "denied");
        refused(
            &authz,
            &pending.client_id,
            "access_denied",
            "the person denied consent",
            &ip,
        );
        return to_client(
            &authz,
            &pending.redirect_uri,
            pending.state.as_deref(),
            Err(("access_denied", "the person denied access")),
        );
    }
    let idp = match &authz.vouch {
        Vouch::Dev => {
            let (Some(user), Some(org)) = (pending.user.clone(), pending.org.clone()) else {
                return page(
                    StatusCode::BAD_REQUEST,
                    pages::error("Sign-in refused", "Sign in before consenting."),
                );
            };
            return issue_code(&authz, &pending, &user, &org, &ip).await;
        }
        Vouch::Idp(idp) => idp,
    };
    let verifier = grants::random_token();
    let nonce = grants::random_token();
    let state = grants::random_token();
    let callback = format!("{}/oauth/callback", authz.origin);
    let url = match idp
        .authorization_url(&callback, &state, &nonce, &grants::pkce_challenge(&verifier))
        .await
    {
        Ok(url) => url,
        Err(error) => {
            authz.metrics.sign_in(authz.vouch.label(), "failed");
            refused(
                &authz,
                &pending.client_id,
                "temporarily_unavailable",
                &error.to_string(),
                &ip,
            );
            let message = "the identity provider cannot be reached; try again later";
            return to_client(
                &authz,
                &pending.redirect_uri,
                pending.state.as_deref(),
                Err(("temporarily_unavailable", message)),
            );
        }
    };
    pending.idp_verifier = Some(verifier);
    pending.idp_nonce = Some(nonce);
    if let Err(error) = save(&authz, &state, &pending).await {
        return unavailable(&error);
    }
    Redirect::to(&url).into_response()
}

#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// The IdP's answer to our own client: verify the user, then the code.
pub async fn callback(
    State(authz): State<Arc<Authz>>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let ip = client_ip(&headers);
    let Vouch::Idp(idp) = &authz.vouch else {
        return page(
            StatusCode::NOT_FOUND,
            pages::error("Not here", "No identity provider is configured."),
        );
    };
    let Some(state) = query.state.as_deref() else {
        return page(
            StatusCode::BAD_REQUEST,
            pages::error("Sign-in refused", "The identity provider's answer has no state."),
        );
    };
    let pending = match resume(&authz, &headers, state, true).await {
        Ok(pending) => pending,
        Err(response) => return response,
    };
    // The detail goes to the audit; the client (anyone can register one)
    // hears only that the sign-in failed.
    let fail = |code: &'static str, detail: String| {
        authz.metrics.sign_in(authz.vouch.label(), "failed");
        refused(&authz, &pending.client_id, code, &detail, &ip);
        let message = "the sign-in at the identity provider failed";
        to_client(
            &authz,
            &pending.redirect_uri,
            pending.state.as_deref(),
            Err((code, message)),
        )
    };
    // RFC 9207: an answer naming another issuer is a mix-up attack.
    if query.iss.as_deref().is_some_and(|iss| iss != idp.settings.issuer) {
        return fail(
            "access_denied",
            "the identity provider's answer names another issuer".into(),
        );
    }
    if let Some(error) = query.error.as_deref() {
        return fail(
            "access_denied",
            format!("the identity provider refused the sign-in ({})", short(error)),
        );
    }
    let (Some(code), Some(verifier), Some(nonce)) = (
        query.code.as_deref(),
        pending.idp_verifier.as_deref(),
        pending.idp_nonce.as_deref(),
    ) else {
        return fail("access_denied", "the identity provider's answer has no code".into());
    };
    let callback = format!("{}/oauth/callback", authz.origin);
    let identity = match idp.sign_in(code, &callback, verifier, nonce).await {
        Ok(identity) => identity,
        Err(error) => return fail("access_denied", error.to_string()),
    };
    if org_names::is_reserved(&identity.org) {
        return fail(
            "access_denied",
            format!("the organisation {:?} is reserved by the gateway", identity.org),
        );
    }
    issue_code(&authz, &pending, &identity.user, &identity.org, &ip).await
}

/// Issues the client's code for a signed-in, consenting person.
async fn issue_code(authz: &Authz, pending: &Pending, user: &str, org: &str, ip: &str) -> Response {
    let grant = Grant {
        client_id: pending.client_id.clone(),
        user: user.to_string(),
        org: org.to_string(),
        scope: pending.scope.clone(),
        resource: pending.resource.clone(),
        idp: authz.vouch.label().to_string(),
        redirect_uri: pending.redirect_uri_sent.then(|| pending.redirect_uri.clone()),
        code_challenge: Some(pending.code_challenge.clone()),
        family: grants::random_token(),
        family_expires_at: super::idp::unix_now() + authz.refresh_ttl.as_secs(),
    };
    let code = grants::random_token();
    let stored = serde_json::to_string(&grant).unwrap_or_default();
    if let Err(error) = authz
        .store
        .put(Kind::Code, &grants::digest(&code), stored, CODE_TTL)
        .await
    {
        return unavailable(&error);
    }
    authz.metrics.sign_in(authz.vouch.label(), "success");
    let pseudonym = authz.pseudonym(user);
    AuthzEvent {
        action: "sign_in",
        outcome: "success",
        client_id: &pending.client_id,
        user_pseudonym: Some(&pseudonym),
        org: Some(org),
        idp: authz.vouch.label(),
        scope: Some(&pending.scope),
        client_ip: Some(ip),
        ..AuthzEvent::default()
    }
    .emit();
    to_client(authz, &pending.redirect_uri, pending.state.as_deref(), Ok(&code))
}

/// The redirect to the client: the code or the error, its state, our issuer.
fn to_client(authz: &Authz, redirect_uri: &str, state: Option<&str>, outcome: Result<&str, (&str, &str)>) -> Response {
    let Some(url) = to_client_url(authz, redirect_uri, state, outcome) else {
        return page(
            StatusCode::BAD_REQUEST,
            pages::error("Sign-in refused", "The redirect URI is not valid."),
        );
    };
    let mut response = Redirect::to(&url).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// The client's redirect URI with the authorization response (RFC 6749 §4.1.2, RFC 9207).
fn to_client_url(
    authz: &Authz,
    redirect_uri: &str,
    state: Option<&str>,
    outcome: Result<&str, (&str, &str)>,
) -> Option<String> {
    let mut url = reqwest::Url::parse(redirect_uri).ok()?;
    {
        let mut pairs = url.query_pairs_mut();
        match outcome {
            Ok(code) => {
                pairs.append_pair("code", code);
            }
            Err((error, description)) => {
                pairs
                    .append_pair("error", error)
                    .append_pair("error_description", description);
            }
        }
        if let Some(state) = state {
            pairs.append_pair("state", state);
        }
        pairs.append_pair("iss", &authz.issuer);
    }
    Some(url.into())
}

/// Loads a sign-in in progress for the browser that started it; `take`
/// consumes it (the last step of each leg).
async fn resume(authz: &Authz, headers: &HeaderMap, id: &str, take: bool) -> Result<Pending, Response> {
    // Our pages send `Referrer-Policy: same-origin`, so browsers name our
    // origin on their form posts: any other (or "null") is another site.
    if let Some(origin) = headers.get(header::ORIGIN) {
        if origin.as_bytes() != authz.origin.as_bytes() {
            return Err(page(
                StatusCode::FORBIDDEN,
                pages::error("Sign-in refused", "This form was sent from another site."),
            ));
        }
    }
    let expired = || {
        page(
            StatusCode::BAD_REQUEST,
            pages::error("Sign-in expired", "This sign-in has expired or was already used."),
        )
    };
    if !grants::is_random_token(id) {
        return Err(expired());
    }
    let stored = match authz.store.get(Kind::Pending, id).await {
        Ok(Some(stored)) => stored,
        Ok(None) => return Err(expired()),
        Err(error) => return Err(unavailable(&error)),
    };
    let pending: Pending = serde_json::from_str(&stored).map_err(|_| unavailable("a stored sign-in is unreadable"))?;
    let browser = cookie(headers).map(|c| grants::digest(&c));
    if browser.as_deref() != Some(pending.browser.as_str()) {
        return Err(page(
            StatusCode::FORBIDDEN,
            pages::error(
                "Sign-in refused",
                "This sign-in was started in another browser (or its cookie is gone).",
            ),
        ));
    }
    // Consumed only once the browser is known: a stranger who learns an id
    // cannot burn someone's sign-in.
    if take {
        match authz.store.take(Kind::Pending, id).await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(expired()),
            Err(error) => return Err(unavailable(&error)),
        }
    }
    Ok(pending)
}

async fn save(authz: &Authz, id: &str, pending: &Pending) -> Result<(), String> {
    let stored = serde_json::to_string(pending).map_err(|e| e.to_string())?;
    authz.store.put(Kind::Pending, id, stored, SIGN_IN_TTL).await
}

fn consent_page(id: &str, pending: &Pending) -> String {
    let host = reqwest::Url::parse(&pending.redirect_uri)
        .ok()
        .map(|u| format!("{}://{}", u.scheme(), u.host_str().unwrap_or_default()))
        .unwrap_or_default();
    let scopes: Vec<String> = pending.scope.split_whitespace().map(str::to_string).collect();
    let who = pending.user.as_deref().zip(pending.org.as_deref());
    pages::consent(id, &pending.client_name, &pending.client_id, &host, &scopes, who)
}

/// The sign-in cookie's value: exactly one, of our shape (two means one
/// was planted beside ours: refused).
fn cookie(headers: &HeaderMap) -> Option<String> {
    let mut values = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE || *name == HOST_COOKIE)
        .map(|(_, value)| value.to_string());
    let first = values.next()?;
    (values.next().is_none() && grants::is_random_token(&first)).then_some(first)
}

fn refused(authz: &Authz, client_id: &str, code: &str, message: &str, ip: &str) {
    AuthzEvent {
        action: "authorize",
        outcome: code,
        client_id,
        idp: authz.vouch.label(),
        client_ip: Some(ip),
        detail: Some(message),
        ..AuthzEvent::default()
    }
    .emit();
}

fn short(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_graphic()).take(64).collect()
}

fn page(status: StatusCode, html: String) -> Response {
    let mut response = (status, Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert("cache-control", HeaderValue::from_static("no-store"));
    headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
    );
    // Same-origin: our own form posts carry our Origin (checked above); nothing leaves.
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

fn unavailable(error: &str) -> Response {
    tracing::error!(%error, "the authorization store failed");
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        pages::error(
            "Try again",
            "The sign-in service is briefly unavailable; start again in a moment.",
        ),
    )
}
