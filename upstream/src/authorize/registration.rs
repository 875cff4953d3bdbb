//! `POST /oauth/register`: dynamic client registration (RFC 7591), for the
//! clients that do not yet use Client ID Metadata Documents.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::clients::{self, RegistrationRequest};
use super::record::AuthzEvent;
use super::{client_ip, oauth_error, too_many, Authz};

pub async fn register(State(authz): State<Arc<Authz>>, headers: HeaderMap, body: Bytes) -> Response {
    let ip = client_ip(&headers);
    if !authz.admit(&ip) {
        return too_many(&authz);
    }
    let request: RegistrationRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return refuse(
                &authz,
                &ip,
                "invalid_client_metadata",
                &format!("the registration is not valid JSON metadata ({error})"),
            )
        }
    };
    let now = super::idp::unix_now();
    let client = match clients::register(&authz.keys, &request, now) {
        Ok(client) => client,
        Err(error) => return refuse(&authz, &ip, error.code, &error.message),
    };
    authz.metrics.registration("registered");
    AuthzEvent {
        action: "register",
        outcome: "success",
        client_id: &client.id,
        idp: authz.vouch.label(),
        client_ip: Some(&ip),
        detail: Some(&client.name),
        ..AuthzEvent::default()
    }
    .emit();
    let method = if client.confidential {
        request
            .token_endpoint_auth_method
            .clone()
            .unwrap_or_else(|| "client_secret_basic".into())
    } else {
        "none".to_string()
    };
    let mut answer = json!({
        "client_id": client.id,
        "client_id_issued_at": now,
        "client_name": client.name,
        "redirect_uris": client.redirect_uris,
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
    });
    if client.confidential {
        answer["client_secret"] = json!(clients::client_secret(&authz.keys, &client.id));
        answer["client_secret_expires_at"] = json!(0);
    }
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

fn refuse(authz: &Authz, ip: &str, code: &'static str, message: &str) -> Response {
    authz.metrics.registration(code);
    AuthzEvent {
        action: "register",
        outcome: code,
        idp: authz.vouch.label(),
        client_ip: Some(ip),
        detail: Some(message),
        ..AuthzEvent::default()
    }
    .emit();
    oauth_error(StatusCode::BAD_REQUEST, code, message)
}
