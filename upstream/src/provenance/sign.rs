//! Signs one image: its manifest (`manifest`) embedded and signed with the
//! gateway's key, in the image's own format (PNG, JPEG, WebP). The bytes
//! change (the manifest is added), the pixels do not.

use std::io::Cursor;

use bytes::Bytes;
use c2pa::assertions::DataHash;
use object_store::PutPayload;
use sha2::{Digest, Sha256};

use crate::media::types::OutputFormat;

use super::manifest::{self, ImageFacts, Source};
use super::png_chunks::{self, Layout};
use super::{Credentials, EditedFrom, ProvenanceError, SigningKey, TRAINED_ALGORITHMIC_MEDIA};

/// An image with its Content Credentials embedded.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signed image, in parts: a PNG's are the source's own bytes
    /// around the manifest (`bytes` joins them).
    pub payload: PutPayload,
    pub credentials: Credentials,
    /// Why the signature has no time-stamp although an authority is set.
    pub time_stamp_failure: Option<String>,
}

impl Signed {
    /// The signed image in one piece (a copy when it is in parts).
    pub fn bytes(&self) -> Bytes {
        Bytes::from(self.payload.clone())
    }
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

/// An edit's input `index` as an ingredient (`manifest::input_ingredient`:
/// the edited image `parentOf`, the others `componentOf`), carrying its own
/// manifest when it has one and it fits what is left of the call's
/// `budget` of foreign manifest bytes (taken from it); read once per call
/// however many images the edit makes.
pub fn input_ingredient(
    source: &Source<'_>,
    index: usize,
    budget: &mut usize,
) -> Result<c2pa::Ingredient, ProvenanceError> {
    let mime = source.format.mime_type();
    let definition = manifest::input_ingredient(source, index).to_string();
    let definition = c2pa::Ingredient::from_json(&definition).map_err(signing_failed)?;
    let store = c2pa::jumbf_io::load_jumbf_from_memory(mime, source.bytes).map_or(0, |store| store.len());
    if store > *budget {
        return Ok(definition);
    }
    *budget -= store;
    // Deprecated only for its thread-local settings, which are the defaults here.
    #[allow(deprecated)]
    let mut ingredient = c2pa::Ingredient::from_stream(mime, &mut Cursor::new(source.bytes)).map_err(signing_failed)?;
    ingredient
        .set_title(definition.title().unwrap_or_default())
        .set_relationship(definition.relationship().clone())
        .set_label(manifest::input_label(index));
    Ok(ingredient)
}

/// Every input of an edit as its ingredient, in order (`input_ingredient`),
/// their manifests together within `MAX_FOREIGN_MANIFEST_BYTES`: sixteen
/// copies of one image with a large manifest would otherwise put sixteen
/// times the cap into every image the edit makes.
pub fn input_ingredients(inputs: &[Source<'_>]) -> Result<Vec<c2pa::Ingredient>, ProvenanceError> {
    let mut budget = MAX_FOREIGN_MANIFEST_BYTES;
    inputs
        .iter()
        .enumerate()
        .map(|(index, source)| input_ingredient(source, index, &mut budget))
        .collect()
}

/// The label of an ingredient's own manifest, when it validates (an
/// untrusted signer aside: ours is anchored by the validator, not here):
/// a manifest copied onto other pixels must not be named as the source's.
fn validated_label(ingredient: &c2pa::Ingredient) -> Option<String> {
    let state = ingredient.validation_results()?.validation_state();
    (state != c2pa::ValidationState::Invalid).then(|| ingredient.active_manifest().map(str::to_string))?
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
/// the key's validity at `now` (Unix seconds). Reads the edit's inputs
/// itself; a caller signing several images of one edit uses `sign_with`,
/// which also shares the image's bytes rather than copying them.
pub fn sign(image: &[u8], facts: &ImageFacts<'_>, key: &SigningKey, now: i64) -> Result<Signed, ProvenanceError> {
    let inputs = facts.edit.map(|edit| edit.inputs).unwrap_or_default();
    sign_with(
        &Bytes::copy_from_slice(image),
        facts,
        &input_ingredients(inputs)?,
        key,
        now,
    )
}

/// `sign` with the edit's inputs already read (`input_ingredients`).
pub fn sign_with(
    image: &Bytes,
    facts: &ImageFacts<'_>,
    inputs: &[c2pa::Ingredient],
    key: &SigningKey,
    now: i64,
) -> Result<Signed, ProvenanceError> {
    key.valid_at(now).map_err(ProvenanceError::CertificateNotValid)?;
    let signer = key.signer();
    let label = format!("urn:c2pa:{}", uuid::Uuid::new_v4());
    let failed = |e: c2pa::Error| sign_error(facts, e);
    let mut builder = c2pa::Builder::from_context(c2pa::Context::new())
        .with_definition(manifest::definition(facts, &label).to_string())
        .map_err(failed)?;
    for input in inputs {
        builder.add_ingredient(input.clone());
    }
    // A provider image with Content Credentials of its own (OpenAI's): kept
    // as an ingredient, its manifest inside ours, rather than replaced.
    if let Some(provider) = provider_ingredient(image, facts)? {
        builder.add_ingredient(provider);
    }
    let payload = match facts.format {
        // Not handed to c2pa's writer when ours refuses it: that writer
        // would sign a PNG no reader can read (a chunk type it stops at, a
        // second manifest it leaves in place).
        OutputFormat::Png => {
            let layout = png_chunks::layout(image).ok_or_else(|| {
                ProvenanceError::SigningFailed(
                    "the PNG is not as C2PA readers walk one (IHDR first, chunk types of letters, \
                     at most one manifest, every chunk within the image)"
                        .into(),
                )
            })?;
            sign_png(&mut builder, &signer, image, &layout).map_err(failed)?
        }
        _ => {
            let mut signed = Cursor::new(Vec::with_capacity(image.len() + 32 * 1024));
            builder
                .sign(&signer, facts.format.mime_type(), &mut Cursor::new(image), &mut signed)
                .map_err(failed)?;
            PutPayload::from(signed.into_inner())
        }
    };
    Ok(Signed {
        payload,
        time_stamp_failure: signer.failure(),
        credentials: Credentials {
            manifest_label: label,
            signer: key.signer.clone(),
            digital_source_type: TRAINED_ALGORITHMIC_MEDIA.to_string(),
            software_agent: manifest::software_agent(facts.model, facts.provider),
            edited_from: inputs.iter().find(|i| i.is_parent()).map(|parent| EditedFrom {
                reference: None,
                manifest_label: validated_label(parent),
            }),
        },
    })
}

/// Signs a PNG with a data-hashed manifest placed by us (`png_chunks`):
/// the signed image is the source's bytes around the manifest's chunk,
/// hashed where they lie, never copied.
fn sign_png(
    builder: &mut c2pa::Builder,
    signer: &dyn c2pa::Signer,
    image: &Bytes,
    layout: &Layout,
) -> c2pa::Result<PutPayload> {
    let mime = OutputFormat::Png.mime_type();
    let placeholder = builder.data_hashed_placeholder(signer.reserve_size(), mime)?;
    // The data hash covers every byte of the signed PNG but the manifest's
    // chunk, in order: the kept bytes of the source.
    let mut hasher = Sha256::new();
    layout.kept().for_each(|range| hasher.update(&image[range]));
    let mut hash = DataHash::new("jumbf manifest", manifest::HASH_ALG);
    hash.add_exclusion(c2pa::HashRange::new(layout.head.end as u64, placeholder.len() as u64));
    hash.set_hash(hasher.finalize().to_vec());
    let manifest = builder.sign_data_hashed_embeddable(signer, &hash, mime)?;
    // c2pa pads the signed manifest to the placeholder's size; any other
    // size would move the bytes after it out of the excluded range.
    if manifest.len() != placeholder.len() {
        return Err(c2pa::Error::OtherError(
            format!(
                "the signed manifest is {} bytes, its place {}",
                manifest.len(),
                placeholder.len()
            )
            .into(),
        ));
    }
    let head = image.slice(layout.head.clone());
    let tail = layout.tail.iter().map(|range| image.slice(range.clone()));
    Ok(std::iter::once(head)
        .chain([Bytes::from(manifest)])
        .chain(tail)
        .collect())
}
