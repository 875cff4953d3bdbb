//! The Content Credentials stage: every image of a generation gets its
//! signed C2PA manifest (`provenance::sign`) just before it is stored,
//! whichever model made it, on the blocking pool. The state's policy says
//! what an unsignable image means: `required` ends the call, `best_effort`
//! delivers it unsigned; both count it.

use std::time::Instant;

use bytes::Bytes;

use crate::media::types::OutputFormat;
use crate::pipeline::run::ImageCall;
use crate::provenance::manifest::{ImageFacts, Source};
use crate::provenance::{Credentials, Policy, ProvenanceError};
use crate::providers::Generation;
use crate::state::AppState;
use crate::telemetry::metrics::{FormatLabels, SigningFailureLabels};

/// The images to store, and what each one's Content Credentials say
/// (`None`: delivered without, under `best_effort` or `off`).
pub(crate) struct Credentialed {
    pub files: Vec<(Bytes, OutputFormat)>,
    pub credentials: Vec<Option<Credentials>>,
}

/// Signs every image of `generation`, made by `provider`; `Err` only under `required`.
pub(crate) async fn sign_images(
    state: &AppState,
    call: &ImageCall,
    generation: &Generation,
    provider: &'static str,
) -> Result<Credentialed, ProvenanceError> {
    let unsigned = || Credentialed {
        files: generation.images.iter().map(|i| (i.bytes.clone(), i.format)).collect(),
        credentials: vec![None; generation.images.len()],
    };
    let policy = state.provenance.policy;
    if policy == Policy::Off {
        return Ok(unsigned());
    }
    let key = match &state.provenance.key {
        Ok(key) => key.clone(),
        Err(why) => {
            let error = ProvenanceError::KeyUnavailable(why.clone());
            failed(state, &error, generation.images.len());
            return match policy {
                Policy::Required => Err(error),
                _ => Ok(unsigned()),
            };
        }
    };
    let source = call
        .edit
        .as_ref()
        .and_then(|edit| edit.images.first())
        .map(|image| (image.bytes.clone(), image.format));
    let images: Vec<_> = generation.images.iter().map(|i| (i.bytes.clone(), i.format)).collect();
    let model = generation.model.clone();
    let metrics = state.metrics.clone();
    let signing = tokio::task::spawn_blocking(move || {
        let now = chrono::Utc::now().timestamp();
        images
            .into_iter()
            .map(|(bytes, format)| {
                let facts = ImageFacts {
                    model: &model,
                    provider,
                    format,
                    source: source.as_ref().map(|(bytes, format)| Source { bytes, format: *format }),
                };
                let started = Instant::now();
                let signed = crate::provenance::sign::sign(&bytes, &facts, &key, now);
                let labels = FormatLabels {
                    format: format.as_str().into(),
                };
                metrics
                    .signing_seconds
                    .get_or_create(&labels)
                    .observe(started.elapsed().as_secs_f64(), None, None);
                (bytes, format, signed)
            })
            .collect::<Vec<_>>()
    });
    let signed = signing
        .await
        .map_err(|e| ProvenanceError::SigningFailed(format!("the signer stopped: {e}")))?;
    let mut out = Credentialed {
        files: Vec::with_capacity(signed.len()),
        credentials: Vec::with_capacity(signed.len()),
    };
    for (original, format, result) in signed {
        match result {
            Ok(signed) => {
                state
                    .metrics
                    .images_signed
                    .get_or_create(&FormatLabels {
                        format: format.as_str().into(),
                    })
                    .inc();
                out.files.push((signed.bytes, format));
                out.credentials.push(Some(signed.credentials));
            }
            Err(error) => {
                failed(state, &error, 1);
                if policy == Policy::Required {
                    return Err(error);
                }
                out.files.push((original, format));
                out.credentials.push(None);
            }
        }
    }
    Ok(out)
}

/// Counts and logs `images` that could not be signed.
fn failed(state: &AppState, error: &ProvenanceError, images: usize) {
    let policy = state.provenance.policy.as_str();
    tracing::warn!(reason = error.reason(), policy, "an image could not be signed: {error}");
    state
        .metrics
        .signing_failures
        .get_or_create(&SigningFailureLabels {
            reason: error.reason().into(),
            policy: policy.into(),
        })
        .inc_by(images as u64);
}
