//! Image references in `edit_image`: images travel by reference, never
//! inside the MCP request. Accepted:
//!
//! - `image://{key}` and this gateway's own signed links (`{base}/images/{key}?…`),
//!   for images of the caller's organisation;
//! - `upload://{id}` from `create_upload`, once its bytes are there;
//! - `https://` URLs on the operator's host allow-list (off when it is empty),
//!   fetched with SSRF protection (`remote_fetch`).
//!
//! Anything else (`file:`, `http:`, paths, `data:` URLs) is refused. Another
//! organisation's image gets the same "not found" as one that does not exist.

use crate::storage::store;

/// A parsed reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// An image this gateway stored, by key (`{org}/{yyyy}/{mm}/{dd}/{uuid}.{ext}`).
    Stored(String),
    /// An upload of the caller's organisation, by id.
    Upload(String),
    /// An `https://` URL on the allow-list.
    Remote(String),
}

/// What a reference cannot be.
pub fn parse(reference: &str, public_base_url: &str, https_allowed: bool) -> Result<Reference, String> {
    let reference = reference.trim();
    if let Some(key) = reference.strip_prefix("image://") {
        return store::parse_key(key)
            .map(|_| Reference::Stored(key.to_string()))
            .map_err(|_| format!("{reference:?} is not an image of this gateway"));
    }
    if let Some(id) = reference.strip_prefix("upload://") {
        return uuid::Uuid::parse_str(id)
            .map(|id| Reference::Upload(id.to_string()))
            .map_err(|_| format!("{reference:?} is not an upload id from create_upload"));
    }
    let ours = format!("{}/images/", public_base_url.trim_end_matches('/'));
    if reference.starts_with(&ours) {
        return store::key_in_uri(reference)
            .map(Reference::Stored)
            .ok_or_else(|| format!("{reference:?} is not an image link of this gateway"));
    }
    if reference.starts_with("https://") {
        if !https_allowed {
            return Err(format!(
                "{reference:?}: https URLs are not accepted by this gateway; upload the image with create_upload, or pass an image://… reference or a link from generate_image"
            ));
        }
        return Ok(Reference::Remote(reference.to_string()));
    }
    Err(format!(
        "{:?} is not an accepted image reference: use image://…, upload://…, a link returned by this gateway{}. Local paths, file:, http: and data: URLs are never read",
        truncate(reference),
        if https_allowed { ", or an https URL on the operator's allow-list" } else { "" }
    ))
}

/// Whether a stored key belongs to `org` (its first path segment).
pub fn belongs_to(key: &str, org: &str) -> bool {
    key.split('/').next() == Some(org)
}

fn truncate(text: &str) -> String {
    if text.chars().count() <= 80 {
        return text.to_string();
    }
    let short: String = text.chars().take(80).collect();
    format!("{short}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "http://127.0.0.1:8080";
    const KEY: &str = "acme/2026/11/30/0b7c1a52-6a9e-4f71-9d0e-2b1f0c8a7e11.png";

    #[test]
    fn accepted_references() {
        let link = format!("{BASE}/images/{KEY}?expires=1&kid=url-1&sig=ab");
        let cases = [
            (format!("image://{KEY}"), Reference::Stored(KEY.into())),
            (link, Reference::Stored(KEY.into())),
            (
                "upload://0b7c1a52-6a9e-4f71-9d0e-2b1f0c8a7e11".to_string(),
                Reference::Upload("0b7c1a52-6a9e-4f71-9d0e-2b1f0c8a7e11".into()),
            ),
        ];
        for (reference, expected) in cases {
            assert_eq!(parse(&reference, BASE, false), Ok(expected), "{reference}");
        }
        assert_eq!(
            parse("https://cdn.example.com/a.png", BASE, true),
            Ok(Reference::Remote("https://cdn.example.com/a.png".into()))
        );
    }

    #[test]
    fn refused_references() {
        let cases = [
            "file:///etc/passwd",
            "/etc/passwd",
            "../../secrets.png",
            "http://169.254.169.254/latest/meta-data",
            "data:image/png;base64,AAAA",
            "image://acme/../../etc/passwd",
            "upload://not-a-uuid",
            "https://cdn.example.com/a.png",
        ];
        for reference in cases {
            let error = parse(reference, BASE, false).unwrap_err();
            assert!(!error.is_empty(), "{reference}");
        }
        assert!(parse("https://cdn.example.com/a.png", BASE, false)
            .unwrap_err()
            .contains("create_upload"));
    }

    #[test]
    fn organisation_of_a_key() {
        assert!(belongs_to(KEY, "acme"));
        assert!(!belongs_to(KEY, "globex"));
        assert!(!belongs_to(KEY, "acm"));
    }
}
