//! Signs one image: its manifest (`manifest`) embedded and signed with the
//! gateway's key, in the image's own format (PNG, JPEG, WebP). The bytes
//! change (the manifest is added), the pixels do not.

use std::io::Cursor;

use bytes::Bytes;

use super::manifest::{self, ImageFacts};
use super::{Credentials, ProvenanceError, SigningKey, TRAINED_ALGORITHMIC_MEDIA};

/// An image with its Content Credentials embedded.
#[derive(Debug, Clone)]
pub struct Signed {
    pub bytes: Bytes,
    pub credentials: Credentials,
}

/// Embeds and signs the manifest of `image` (in `facts.format`), checking
/// the key's validity at `now` (Unix seconds).
pub fn sign(image: &[u8], facts: &ImageFacts<'_>, key: &SigningKey, now: i64) -> Result<Signed, ProvenanceError> {
    key.valid_at(now).map_err(ProvenanceError::CertificateNotValid)?;
    let signer = key.signer().map_err(ProvenanceError::KeyUnavailable)?;
    let label = format!("urn:c2pa:{}", uuid::Uuid::new_v4());
    let failed = |e: c2pa::Error| match e {
        c2pa::Error::UnsupportedType => ProvenanceError::FormatUnsupported(facts.format.as_str()),
        other => ProvenanceError::SigningFailed(other.to_string()),
    };
    let mut builder = c2pa::Builder::from_context(c2pa::Context::new())
        .with_definition(manifest::definition(facts, &label).to_string())
        .map_err(failed)?;
    if let Some(source) = &facts.source {
        builder
            .add_ingredient_from_stream(
                manifest::source_ingredient(source).to_string(),
                source.format.mime_type(),
                &mut Cursor::new(source.bytes),
            )
            .map_err(failed)?;
    }
    // A provider image with Content Credentials of its own (OpenAI's): kept
    // as an ingredient, its manifest inside ours, rather than replaced.
    let mime = facts.format.mime_type();
    if c2pa::jumbf_io::load_jumbf_from_memory(mime, image).is_ok() {
        builder
            .add_ingredient_from_stream(
                manifest::provider_ingredient(facts).to_string(),
                mime,
                &mut Cursor::new(image),
            )
            .map_err(failed)?;
    }
    let mut signed = Cursor::new(Vec::with_capacity(image.len() + 32 * 1024));
    builder
        .sign(
            signer.as_ref(),
            facts.format.mime_type(),
            &mut Cursor::new(image),
            &mut signed,
        )
        .map_err(failed)?;
    Ok(Signed {
        bytes: Bytes::from(signed.into_inner()),
        credentials: Credentials {
            manifest_label: label,
            signer: key.signer.clone(),
            digital_source_type: TRAINED_ALGORITHMIC_MEDIA.to_string(),
        },
    })
}
