//! The image studio MCP App (`io.modelcontextprotocol/ui`): one `ui://`
//! resource, built from `app/` into `upstream/assets/image-studio.html`
//! (self-contained, embedded here), linked from `generate_image` and
//! `edit_image`. Its content policy allows exactly the origins our links
//! and uploads live on, and nothing else.

use rmcp::model::{JsonObject, MetaObject, ReadResourceResult, Resource, ResourceContents};
use serde_json::{json, Value};

use crate::state::AppState;

pub const STUDIO_URI: &str = "ui://image-studio/app.html";
pub const APP_MIME_TYPE: &str = "text/html;profile=mcp-app";
const STUDIO_HTML: &str = include_str!("../../assets/image-studio.html");

/// `_meta` of the tools the studio shows: the MCP Apps link and the older
/// `openai/outputTemplate` for hosts that read only that.
pub fn tool_meta() -> MetaObject {
    object(json!({"ui": {"resourceUri": STUDIO_URI}, "openai/outputTemplate": STUDIO_URI}))
}

/// The studio as `resources/list` shows it.
pub fn listed(origins: &[String]) -> Resource {
    Resource::new(STUDIO_URI, "image-studio")
        .with_title("Image studio")
        .with_description("See the images, draw the region to change and edit them without leaving the host.")
        .with_mime_type(APP_MIME_TYPE)
        .with_size(STUDIO_HTML.len() as u64)
        .with_meta(ui_meta(origins))
}

/// The studio's page, for `resources/read`.
pub fn read(origins: &[String]) -> ReadResourceResult {
    let contents = ResourceContents::text(STUDIO_HTML, STUDIO_URI)
        .with_mime_type(APP_MIME_TYPE)
        .with_meta(ui_meta(origins));
    ReadResourceResult::new(vec![contents])
}

/// Images load from (`resourceDomains`) and masks upload to
/// (`connectDomains`) the same origins: the gateway's, and a bucket's when
/// it presigns. No frames, no other base URI.
fn ui_meta(origins: &[String]) -> MetaObject {
    object(json!({"ui": {
        "csp": {"resourceDomains": origins, "connectDomains": origins},
        "prefersBorder": true,
    }}))
}

/// The origins the studio's images and uploads use: the gateway's public
/// one, and the bucket's when the store presigns.
pub async fn origins(state: &AppState) -> Vec<String> {
    let mut origins: Vec<String> = origin_of(state.signer.base_url()).into_iter().collect();
    if let Some(bucket) = state.store.presigned_origin().await {
        if !origins.contains(&bucket) {
            origins.push(bucket);
        }
    }
    origins
}

/// `scheme://host[:port]` of an absolute URL, lower-cased, without path.
pub fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    (!scheme.is_empty() && !authority.is_empty())
        .then(|| format!("{}://{}", scheme.to_ascii_lowercase(), authority.to_ascii_lowercase()))
}

fn object(value: Value) -> MetaObject {
    match value {
        Value::Object(map) => MetaObject::from(map),
        _ => MetaObject::from(JsonObject::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_drop_paths_and_queries() {
        assert_eq!(
            origin_of("https://GW.example.com/base/").as_deref(),
            Some("https://gw.example.com")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8080").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            origin_of("https://b.s3.amazonaws.com?x=1").as_deref(),
            Some("https://b.s3.amazonaws.com")
        );
        assert_eq!(origin_of("not a url"), None);
    }

    #[test]
    fn the_page_is_self_contained_and_its_policy_names_only_our_origins() {
        assert!(STUDIO_HTML.starts_with("<!doctype html>"));
        assert!(
            !STUDIO_HTML.contains("<script src"),
            "no script may come from elsewhere"
        );
        let origins = vec!["https://gw.example.com".to_string()];
        let read = serde_json::to_value(read(&origins)).unwrap();
        let contents = &read["contents"][0];
        assert_eq!(contents["mimeType"], APP_MIME_TYPE);
        assert_eq!(contents["uri"], STUDIO_URI);
        let csp = &contents["_meta"]["ui"]["csp"];
        assert_eq!(csp["resourceDomains"], json!(["https://gw.example.com"]));
        assert_eq!(csp["connectDomains"], json!(["https://gw.example.com"]));
        assert_eq!(csp.as_object().unwrap().len(), 2, "no frame or base-uri domains");
        let meta = serde_json::to_value(tool_meta()).unwrap();
        assert_eq!(meta["ui"]["resourceUri"], STUDIO_URI);
        assert_eq!(meta["openai/outputTemplate"], STUDIO_URI);
    }
}
