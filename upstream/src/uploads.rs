//! Uploads for `edit_image`: `create_upload` hands out a one-time URL, the
//! client PUTs the image bytes there, and passes the returned `upload://…`
//! reference to `edit_image`. The bytes never cross the 2 KiB MCP request.
//!
//! On the local store the URL is this service's `PUT /uploads/{org}/{id}`,
//! HMAC-signed like image links (org, id, type, size limit and expiry are all
//! under the signature); Envoy routes it around the edge filter, as it does
//! image links. It takes the body once (a second PUT gets 409), at most the
//! signed number of bytes (413, nothing stored), with the signed
//! `Content-Type`, and bytes that are really that kind of image (415). On S3
//! and GCS it is a presigned PUT, so the bytes go straight to the bucket;
//! those stores cannot enforce the size or one-time use in the URL, so an
//! edit re-checks the size and the bytes when it reads the upload.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::json;

use crate::image_types::OutputFormat;
use crate::server::AppState;
use crate::signed_url::LinkError;
use crate::storage::StorageError;

/// Structured result of `create_upload`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UploadTicket {
    /// Where to send the image bytes.
    pub upload_url: String,
    /// Always `PUT`.
    pub method: String,
    /// Headers to send with the bytes.
    pub headers: BTreeMap<String, String>,
    /// What to pass to edit_image (in `images` or `mask`) once the bytes are there.
    pub reference: String,
    /// When the upload URL stops working (RFC 3339, UTC).
    pub expires_at: String,
    /// The most bytes the upload takes.
    pub max_bytes: usize,
}

/// A new upload of `org` in `format`.
pub async fn create(state: &AppState, org: &str, format: OutputFormat) -> Result<UploadTicket, String> {
    let id = uuid::Uuid::new_v4().to_string();
    let expires = Utc::now() + state.uploads.ttl;
    let presigned = state
        .store
        .presigned_upload_url(org, &id, state.uploads.ttl)
        .await
        .map_err(|error| {
            tracing::error!(%error, "presigning an upload failed");
            "The upload could not be prepared (storage unavailable); try again shortly.".to_string()
        })?;
    let upload_url = presigned.unwrap_or_else(|| {
        state
            .signer
            .upload_url(org, &id, format.as_str(), state.uploads.max_bytes, expires.timestamp())
    });
    Ok(UploadTicket {
        upload_url,
        method: "PUT".into(),
        headers: BTreeMap::from([("Content-Type".to_string(), format.mime_type().to_string())]),
        reference: format!("upload://{id}"),
        expires_at: expires.to_rfc3339_opts(SecondsFormat::Secs, true),
        max_bytes: state.uploads.max_bytes,
    })
}

/// Upload settings.
#[derive(Debug, Clone, Copy)]
pub struct UploadSettings {
    pub ttl: std::time::Duration,
    pub max_bytes: usize,
}

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
