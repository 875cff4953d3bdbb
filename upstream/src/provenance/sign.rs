//! Signs one image: its manifest (`manifest`) embedded and signed with the
//! gateway's key, in the image's own format (PNG, JPEG, WebP). The bytes
//! change (the manifest is added), the pixels do not.

use std::io::Cursor;

use bytes::Bytes;

use super::manifest::{self, ImageFacts, Source};
use super::{Credentials, ProvenanceError, SigningKey, TRAINED_ALGORITHMIC_MEDIA};

/// An image with its Content Credentials embedded.
#[derive(Debug, Clone)]
pub struct Signed {
    pub bytes: Bytes,
    pub credentials: Credentials,
}

/// Largest embedded manifest store handed to c2pa from an image we did not
/// sign (an edit's source, a provider's output): a larger one is an attack
/// on the parser, so the image is recorded without it.
pub const MAX_FOREIGN_MANIFEST_BYTES: usize = 1024 * 1024;

/// Whether `image` carries a manifest store small enough to read (found
/// without parsing it: the container is walked, the store only measured).
fn readable_manifest(mime: &str, image: &[u8]) -> bool {
    c2pa::jumbf_io::load_jumbf_from_memory(mime, image).is_ok_and(|store| store.len() <= MAX_FOREIGN_MANIFEST_BYTES)
}

/// An edit's source as a `parentOf` ingredient, read once per call however
/// many images the edit makes. Its manifest is left out when over the cap.
pub fn source_ingredient(source: &Source<'_>) -> Result<c2pa::Ingredient, ProvenanceError> {
    let mime = source.format.mime_type();
    let definition = manifest::source_ingredient(source).to_string();
    let definition = c2pa::Ingredient::from_json(&definition).map_err(signing_failed)?;
    let oversized = c2pa::jumbf_io::load_jumbf_from_memory(mime, source.bytes)
        .is_ok_and(|store| store.len() > MAX_FOREIGN_MANIFEST_BYTES);
    if oversized {
        return Ok(definition);
    }
    // Deprecated only for its thread-local settings, which are the defaults here.
    #[allow(deprecated)]
    let mut ingredient = c2pa::Ingredient::from_stream(mime, &mut Cursor::new(source.bytes)).map_err(signing_failed)?;
    ingredient
        .set_title(definition.title().unwrap_or_default())
        .set_is_parent()
        .set_label(manifest::SOURCE_INGREDIENT);
    Ok(ingredient)
}

fn signing_failed(e: c2pa::Error) -> ProvenanceError {
    ProvenanceError::SigningFailed(e.to_string())
}

/// A provider image's own Content Credentials (OpenAI's) as a
/// `componentOf` ingredient of ours; `None` when it carries none, or one
/// over the cap (then ours replaces it).
pub fn provider_ingredient(image: &[u8], facts: &ImageFacts<'_>) -> Result<Option<c2pa::Ingredient>, ProvenanceError> {
    let mime = facts.format.mime_type();
    if !readable_manifest(mime, image) {
        return Ok(None);
    }
    // Read as `sign_with`'s builder would read it, kept apart to be fuzzed alone.
    let mut reader = c2pa::Builder::from_context(c2pa::Context::new());
    let ingredient = reader
        .add_ingredient_from_stream(
            manifest::provider_ingredient(facts).to_string(),
            mime,
            &mut Cursor::new(image),
        )
        .map_err(|e| sign_error(facts, e))?;
    Ok(Some(ingredient.clone()))
}

fn sign_error(facts: &ImageFacts<'_>, e: c2pa::Error) -> ProvenanceError {
    match e {
        c2pa::Error::UnsupportedType => ProvenanceError::FormatUnsupported(facts.format.as_str()),
        other => signing_failed(other),
    }
}

/// Embeds and signs the manifest of `image` (in `facts.format`), checking
/// the key's validity at `now` (Unix seconds). Reads `facts.source` itself;
/// a caller signing several images of one edit uses `sign_with`.
pub fn sign(image: &[u8], facts: &ImageFacts<'_>, key: &SigningKey, now: i64) -> Result<Signed, ProvenanceError> {
    let source = facts.source.as_ref().map(source_ingredient).transpose()?;
    sign_with(image, facts, source.as_ref(), key, now)
}

/// `sign` with the edit's source already read (`source_ingredient`).
pub fn sign_with(
    image: &[u8],
    facts: &ImageFacts<'_>,
    source: Option<&c2pa::Ingredient>,
    key: &SigningKey,
    now: i64,
) -> Result<Signed, ProvenanceError> {
    key.valid_at(now).map_err(ProvenanceError::CertificateNotValid)?;
    let signer = key.signer().map_err(ProvenanceError::KeyUnavailable)?;
    let label = format!("urn:c2pa:{}", uuid::Uuid::new_v4());
    let failed = |e: c2pa::Error| sign_error(facts, e);
    let mut builder = c2pa::Builder::from_context(c2pa::Context::new())
        .with_definition(manifest::definition(facts, &label).to_string())
        .map_err(failed)?;
    if let Some(source) = source {
        builder.add_ingredient(source.clone());
    }
    // A provider image with Content Credentials of its own (OpenAI's): kept
    // as an ingredient, its manifest inside ours, rather than replaced.
    if let Some(provider) = provider_ingredient(image, facts)? {
        builder.add_ingredient(provider);
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
