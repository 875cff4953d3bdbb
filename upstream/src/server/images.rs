//! `GET /images/{key}?expires=…&kid=…&sig=…`: serves a stored image to anyone
//! holding a valid signed link (no bearer token; Envoy routes this path
//! around the edge filter).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::AppState;
use crate::storage::signed_url::LinkError;
use crate::storage::store::StorageError;

pub async fn get_image(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (Some(expires), Some(sig)) = (query.get("expires"), query.get("sig")) else {
        return refuse(
            StatusCode::FORBIDDEN,
            "the link is missing its `expires` or `sig` parameter",
        );
    };
    let Ok(expires) = expires.parse::<i64>() else {
        return refuse(StatusCode::FORBIDDEN, "the link's `expires` is not a Unix timestamp");
    };
    let now = chrono::Utc::now().timestamp();
    let kid = query.get("kid").map(String::as_str);
    match state.signer.verify(&key, expires, kid, sig, now) {
        Ok(()) => {}
        Err(LinkError::Expired) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "the link has expired; call generate_image again for a fresh one",
            )
        }
        Err(LinkError::BadSignature) => return refuse(StatusCode::FORBIDDEN, "the link signature is invalid"),
        Err(LinkError::UnknownKey) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "the link was signed with a retired key; call generate_image again for a fresh one",
            )
        }
    }
    match state.store.get(&key).await {
        Ok(bytes) => (
            [
                (
                    header::CONTENT_TYPE,
                    crate::storage::store::format_of(&key)
                        .map_or("application/octet-stream", |f| f.mime_type())
                        .to_string(),
                ),
                (
                    header::CACHE_CONTROL,
                    format!("private, max-age={}", (expires - now).max(0)),
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
            ],
            bytes,
        )
            .into_response(),
        Err(StorageError::NotFound) if state.store.was_erased(&key).await => {
            refuse(StatusCode::GONE, "the image was erased at its owner's request")
        }
        Err(StorageError::NotFound | StorageError::InvalidKey) => refuse(
            StatusCode::NOT_FOUND,
            "the image no longer exists (images are kept for a limited time)",
        ),
        Err(error) => {
            tracing::error!(%key, %error, "reading an image failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the image store is unavailable; try again shortly",
            )
        }
    }
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": status.canonical_reason(), "message": message})),
    )
        .into_response()
}
