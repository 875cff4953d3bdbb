//! Content Credentials (C2PA) on every image the gateway stores: the
//! manifest each image carries (`manifest`), the key and certificate chain
//! that sign it (`keys`, the raw signature by `signer`), the signing itself (`sign`) and the check anyone
//! can run on a delivered image (`verify`), the RFC 3161 time-stamps on
//! the signatures (`time_stamp`), and the development CA (`dev_ca`). It sits beside storage: the
//! pipeline passes every image through `sign` just before it is stored, so
//! the guarantee holds for every provider and every path. Everything here
//! is synchronous and pure of I/O but for reading the key files; the
//! pipeline runs it on the blocking pool.

pub mod dev_ca;
pub mod keys;
pub mod manifest;
pub mod png_chunks;
pub mod sign;
pub mod signer;
pub mod time_stamp;
pub mod verify;

use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::Serialize;

pub use keys::SigningKey;

/// The IPTC digital source type of an image a model made.
pub const TRAINED_ALGORITHMIC_MEDIA: &str = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia";

/// What happens to an image that cannot be signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Not delivered: the call ends in a tool error naming why, nothing is
    /// stored or billed.
    Required,
    /// Delivered without Content Credentials, and counted.
    #[value(name = "best_effort")]
    BestEffort,
    /// No Content Credentials are added.
    Off,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Required => "required",
            Policy::BestEffort => "best_effort",
            Policy::Off => "off",
        }
    }
}

/// Why an image could not be signed. The text is shown to the caller, so
/// it names no file, OS error or c2pa internals: those (`detail`) are only
/// logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProvenanceError {
    #[error("the gateway's Content Credentials signing key is unavailable")]
    KeyUnavailable(String),
    #[error("the gateway's Content Credentials signing certificate {0}")]
    CertificateNotValid(String),
    #[error("{0} images cannot carry Content Credentials here")]
    FormatUnsupported(&'static str),
    #[error("signing the image's Content Credentials failed")]
    SigningFailed(String),
}

impl ProvenanceError {
    /// Every `reason`, for zero series from the start.
    pub const REASONS: [&'static str; 4] = [
        "key_unavailable",
        "certificate_not_valid",
        "format_unsupported",
        "signing_failed",
    ];

    /// What went wrong inside, for the log only.
    pub fn detail(&self) -> &str {
        match self {
            ProvenanceError::KeyUnavailable(detail)
            | ProvenanceError::CertificateNotValid(detail)
            | ProvenanceError::SigningFailed(detail) => detail,
            ProvenanceError::FormatUnsupported(format) => format,
        }
    }

    /// The metric label and audit error class of this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            ProvenanceError::KeyUnavailable(_) => "key_unavailable",
            ProvenanceError::CertificateNotValid(_) => "certificate_not_valid",
            ProvenanceError::FormatUnsupported(_) => "format_unsupported",
            ProvenanceError::SigningFailed(_) => "signing_failed",
        }
    }
}

/// What a delivered image's Content Credentials say, for the tool result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Credentials {
    /// The label of the image's active C2PA manifest (`urn:c2pa:…`).
    pub manifest_label: String,
    /// Who signed it: the signing certificate's organisation (else its common name).
    pub signer: String,
    /// The IPTC digital source type of the image (`…/trainedAlgorithmicMedia` for model output).
    pub digital_source_type: String,
    /// What made it, as the manifest's `softwareAgent` names it: the model and its provider (`gpt-image-1 (openai)`).
    pub software_agent: String,
    /// `edit_image` only: the image this one was edited from (its manifest's `parentOf` ingredient).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_from: Option<EditedFrom>,
}

/// The image an edit started from, as its result names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub struct EditedFrom {
    /// The reference the edit was given for it (the first of `source_images`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// The label of the source's own C2PA manifest, when it carried one (an
    /// image from this gateway: its `content_credentials.manifest_label`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_label: Option<String>,
}

/// The signing settings a state runs with: the policy and, unless it is
/// `off`, the key (or why there is none, said to callers under `required`).
#[derive(Clone)]
pub struct Provenance {
    pub policy: Policy,
    pub key: Result<Arc<SigningKey>, String>,
}

impl Provenance {
    /// Reads the key files (not under `off`). A missing or bad key is kept
    /// as its reason: calls then fail under `required`, go unsigned under
    /// `best_effort`. `authority` time-stamps the signatures.
    pub fn load(policy: Policy, chain: &Path, key: &Path, authority: Option<&time_stamp::TimeStampAuthority>) -> Self {
        let key = match policy {
            Policy::Off => Err("Content Credentials are off".to_string()),
            _ => SigningKey::from_files(chain, key).map(|key| Arc::new(key.time_stamped_by(authority.cloned()))),
        };
        Self { policy, key }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caller_sees_no_internal_detail() {
        let key = ProvenanceError::KeyUnavailable("reading /etc/keys/leaf.pem: Permission denied".into());
        let signing = ProvenanceError::SigningFailed("ClaimEncoding: cbor at offset 12".into());
        for error in [key, signing] {
            let shown = error.to_string();
            assert!(!shown.contains(error.detail()), "{shown}");
            assert!(!shown.contains('(') && !shown.contains('/'), "{shown}");
        }
    }
}
