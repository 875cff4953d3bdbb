//! Generated images as MCP resources (`resources/read`): the caller's
//! organisation may read its own images by the link a tool returned (or
//! `image://{key}`); anyone else gets "not found", so existence is not revealed.
//!
//! The image travels inline, as base64 in the JSON-RPC reply, which the edge
//! caps (`max_response_bytes`): an image whose reply would not fit the
//! gateway's reply limit (`GATEWAY_MAX_RESOURCE_REPLY_BYTES`, the edge's
//! default cap) is refused with an error carrying its signed link, so the
//! edge never has to cut a reply off with a bare 502.

use base64::Engine;
use rmcp::model::{ErrorCode, ReadResourceResponse, ReadResourceResult, ResourceContents};
use rmcp::ErrorData;

use crate::identity::Caller;
use crate::protocol::tools::ImageTools;
use crate::storage::references::belongs_to;
use crate::storage::store::{self, StorageError};

/// The gateway's code for "too large" (the edge answers oversized requests with it too).
const TOO_LARGE: ErrorCode = ErrorCode(-32003);

/// A reply's bytes besides the base64 and the URI (which it carries twice):
/// the JSON-RPC envelope and the MIME type.
const REPLY_ENVELOPE_BYTES: usize = 1024;

/// The largest image whose `resources/read` reply for `uri` fits `reply_limit`.
pub fn inline_limit(reply_limit: usize, uri: &str) -> usize {
    reply_limit.saturating_sub(REPLY_ENVELOPE_BYTES + 2 * uri.len()) / 4 * 3
}

impl ImageTools {
    pub(crate) async fn read_image_resource(
        &self,
        caller: &Caller,
        uri: &str,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let not_found = || {
            ErrorData::resource_not_found(
                format!("no image of yours at {uri}"),
                Some(serde_json::json!({"uri": uri})),
            )
        };
        let key = store::key_in_uri(uri).ok_or_else(not_found)?;
        if !belongs_to(&key, &caller.org) {
            tracing::info!(org = %caller.org, %uri, "resources/read of another organisation's image refused");
            return Err(not_found());
        }
        let format = store::format_of(&key).ok_or_else(not_found)?;
        let limit = inline_limit(self.state.max_resource_reply_bytes, uri);
        let bytes = match self.state.store.get_limited(&key, limit).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound | StorageError::InvalidKey) => return Err(not_found()),
            Err(StorageError::TooLarge { size, .. }) => return Err(self.too_large_to_inline(uri, &key, size).await),
            Err(error) => {
                tracing::error!(%key, %error, "reading an image resource failed");
                return Err(ErrorData::internal_error(
                    "the image store is unavailable; try again shortly",
                    None,
                ));
            }
        };
        let blob = crate::media::blocking::run("encoding the image", move || {
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        })
        .await
        .map_err(|message| ErrorData::internal_error(message, None))?;
        let contents = ResourceContents::blob(blob, uri.to_string()).with_mime_type(format.mime_type());
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    /// The refusal of an image too large to inline: its size, the limit, and
    /// a fresh signed link to fetch it from instead.
    async fn too_large_to_inline(&self, uri: &str, key: &str, size: u64) -> ErrorData {
        let state = &self.state;
        let url = match state.store.presigned_url(key, state.url_ttl).await {
            Ok(Some(url)) => url,
            _ => state.signer.url(key, (chrono::Utc::now() + state.url_ttl).timestamp()),
        };
        let limit = state.max_resource_reply_bytes;
        ErrorData::new(
            TOO_LARGE,
            format!(
                "The image is {size} bytes: inlined as base64 its reply would be over this gateway's resource reply limit of {limit} bytes (GATEWAY_MAX_RESOURCE_REPLY_BYTES, which the edge's max_response_bytes must allow). Fetch it from its signed link instead: error.data.url."
            ),
            Some(serde_json::json!({"uri": uri, "bytes": size, "limit": limit, "url": url})),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::response_body::base64_len;

    #[test]
    fn the_default_limits_let_the_largest_image_through_the_edge() {
        let uri = format!(
            "https://gw.example.com/images/acme/2026/01/01/{}.png?expires=1&kid=k&sig={}",
            uuid::Uuid::new_v4(),
            "f".repeat(64)
        );
        let reply_limit = mcp_edge_filter::config::DEFAULT_MAX_RESPONSE_BYTES;
        let largest = inline_limit(reply_limit, &uri);
        // GATEWAY_MAX_IMAGE_BYTES's default: 4 MiB.
        assert!(largest >= 4 * 1024 * 1024, "{largest}");
        let reply = base64_len(largest) + 2 * uri.len() + REPLY_ENVELOPE_BYTES;
        assert!(reply <= reply_limit, "{reply} > {reply_limit}");
        // The edge's earlier 4 MiB cap did not fit it.
        assert!(inline_limit(4 * 1024 * 1024, &uri) < 4 * 1024 * 1024);
    }
}
