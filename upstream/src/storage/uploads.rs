//! Uploads for `edit_image`: `create_upload` hands out a one-time URL, the
//! client PUTs the image bytes there, and passes the returned `upload://…`
//! reference to `edit_image`. The bytes never cross the 2 KiB MCP request.
//!
//! On the local store the URL is this service's `PUT /uploads/{org}/{id}`
//! (`server::uploads`),
//! HMAC-signed like image links (org, id, type, size limit and expiry are all
//! under the signature); Envoy routes it around the edge filter, as it does
//! image links. It takes the body once (a second PUT gets 409), at most the
//! signed number of bytes (413, nothing stored), with the signed
//! `Content-Type`, and bytes that are really that kind of image (415). On S3
//! and GCS it is a presigned PUT, so the bytes go straight to the bucket;
//! those stores cannot enforce the size or one-time use in the URL, so an
//! edit re-checks the size and the bytes when it reads the upload.

use std::collections::BTreeMap;

use chrono::{SecondsFormat, Utc};
use schemars::JsonSchema;
use serde::Serialize;

use crate::media::types::OutputFormat;
use crate::storage::signed_url::UrlSigner;
use crate::storage::store::ImageStore;

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

/// Upload settings.
#[derive(Debug, Clone, Copy)]
pub struct UploadSettings {
    pub ttl: std::time::Duration,
    pub max_bytes: usize,
}

impl UploadSettings {
    /// A new upload of `org` in `format`.
    pub async fn ticket(
        &self,
        store: &ImageStore,
        signer: &UrlSigner,
        org: &str,
        user: &str,
        format: OutputFormat,
    ) -> Result<UploadTicket, String> {
        let id = uuid::Uuid::new_v4().to_string();
        // Recorded under its owner before it can exist, so erasure finds it.
        store.mark_upload(org, user, &id).await.map_err(|error| {
            tracing::error!(%error, "recording an upload's owner failed");
            "The upload could not be prepared (storage unavailable); try again shortly.".to_string()
        })?;
        let expires = Utc::now() + self.ttl;
        let presigned = store.presigned_upload_url(org, &id, self.ttl).await.map_err(|error| {
            tracing::error!(%error, "presigning an upload failed");
            "The upload could not be prepared (storage unavailable); try again shortly.".to_string()
        })?;
        let upload_url = presigned
            .unwrap_or_else(|| signer.upload_url(org, &id, format.as_str(), self.max_bytes, expires.timestamp()));
        Ok(UploadTicket {
            upload_url,
            method: "PUT".into(),
            headers: BTreeMap::from([("Content-Type".to_string(), format.mime_type().to_string())]),
            reference: format!("upload://{id}"),
            expires_at: expires.to_rfc3339_opts(SecondsFormat::Secs, true),
            max_bytes: self.max_bytes,
        })
    }
}
