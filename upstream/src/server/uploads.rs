//! `PUT /uploads/{org}/{id}`: the local store's upload URL (see
//! `storage::uploads` for the ticket it belongs to).

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde_json::json;

use crate::media::types::OutputFormat;
use crate::state::AppState;
use crate::storage::signed_url::LinkError;
use crate::storage::store::StorageError;

/// `PUT /uploads/{org}/{id}?ct=…&max=…&expires=…&kid=…&sig=…`.
pub async fn put_upload(
    State(state): State<AppState>,
    Path((org, id)): Path<(String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let field = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    let format = OutputFormat::ALL.into_iter().find(|f| f.as_str() == field("ct"));
    let (Some(format), Ok(max_bytes), Ok(expires)) =
        (format, field("max").parse::<usize>(), field("expires").parse::<i64>())
    else {
        return refuse(
            StatusCode::FORBIDDEN,
            "the upload URL is incomplete; use the URL create_upload returned",
        );
    };
    let now = Utc::now().timestamp();
    match state.signer.verify_upload(
        &org,
        &id,
        format.as_str(),
        max_bytes,
        expires,
        field("kid"),
        field("sig"),
        now,
    ) {
        Ok(()) => {}
        Err(LinkError::Expired) => {
            return refuse(
                StatusCode::FORBIDDEN,
                "the upload URL has expired; call create_upload again",
            )
        }
        Err(LinkError::BadSignature | LinkError::UnknownKey) => {
            return refuse(StatusCode::FORBIDDEN, "the upload URL signature is invalid")
        }
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if !content_type.eq_ignore_ascii_case(format.mime_type()) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!(
                "send the bytes with Content-Type: {} as create_upload said",
                format.mime_type()
            ),
        );
    }
    let bytes = match read_within(body, max_bytes).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the upload is over its limit of {max_bytes} bytes; nothing was stored"),
            )
        }
        Err(BodyError::Broken) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "the upload body was cut off; nothing was stored",
            )
        }
    };
    if !format.matches(&bytes) {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &format!("the bytes are not a {} image; nothing was stored", format.as_str()),
        );
    }
    let size = bytes.len();
    match state.store.put_upload(&org, &id, bytes, format.mime_type()).await {
        Ok(()) => (
            StatusCode::CREATED,
            Json(json!({"reference": format!("upload://{id}"), "bytes": size})),
        )
            .into_response(),
        Err(StorageError::AlreadyExists) => refuse(
            StatusCode::CONFLICT,
            "this upload URL was already used; call create_upload for another",
        ),
        Err(StorageError::InvalidKey) => refuse(StatusCode::FORBIDDEN, "the upload URL is invalid"),
        Err(error) => {
            tracing::error!(%error, "storing an upload failed");
            refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the upload could not be stored; try again shortly",
            )
        }
    }
}

enum BodyError {
    TooLarge,
    Broken,
}

/// The body if it has at most `max_bytes`. An oversized body is still read
/// (and dropped) up to a bound before the 413 goes out: a server that
/// answers and closes mid-upload makes the proxy see a reset, not the 413.
async fn read_within(body: Body, max_bytes: usize) -> Result<bytes::Bytes, BodyError> {
    use futures::StreamExt;
    let drain_limit = max_bytes.saturating_mul(4).saturating_add(1 << 20);
    let mut stream = body.into_data_stream();
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Broken)?;
        seen = seen.saturating_add(chunk.len());
        if seen > drain_limit {
            return Err(BodyError::TooLarge);
        }
        if seen <= max_bytes {
            kept.extend_from_slice(&chunk);
        }
    }
    if seen > max_bytes {
        return Err(BodyError::TooLarge);
    }
    Ok(kept.freeze())
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(json!({"error": status.canonical_reason(), "message": message})),
    )
        .into_response()
}
