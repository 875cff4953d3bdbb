//! Generated images as MCP resources (`resources/read`): the caller's
//! organisation may read its own images by the link a tool returned (or
//! `image://{key}`); anyone else gets "not found", so existence is not revealed.

use base64::Engine;
use rmcp::model::{ReadResourceResponse, ReadResourceResult, ResourceContents};
use rmcp::ErrorData;

use crate::identity::Caller;
use crate::protocol::tools::ImageTools;
use crate::storage::references::belongs_to;
use crate::storage::store::{self, StorageError};

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
        let bytes = match self.state.store.get(&key).await {
            Ok(bytes) => bytes,
            Err(StorageError::NotFound | StorageError::InvalidKey) => return Err(not_found()),
            Err(error) => {
                tracing::error!(%key, %error, "reading an image resource failed");
                return Err(ErrorData::internal_error(
                    "the image store is unavailable; try again shortly",
                    None,
                ));
            }
        };
        let blob = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let contents = ResourceContents::blob(blob, uri.to_string()).with_mime_type(format.mime_type());
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}
