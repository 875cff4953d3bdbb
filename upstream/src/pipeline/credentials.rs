//! The Content Credentials stage: every image of a generation gets its
//! signed C2PA manifest (`provenance::sign`) just before it is stored,
//! whichever model made it, on the blocking pool. The state's policy says
//! what an unsignable image means: `required` ends the call, `best_effort`
//! delivers it unsigned; both count it.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Semaphore;

use crate::media::types::OutputFormat;
use crate::pipeline::run::ImageCall;
use crate::provenance::manifest::{ImageFacts, Source};
use crate::provenance::sign;
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
    let count = images.len();
    let model = generation.model.clone();
    let metrics = state.metrics.clone();
    // Bounded: each signing holds a permit until its blocking task ends,
    // even one the timeout below has given up on.
    let permit = signing_permits()
        .clone()
        .acquire_owned()
        .await
        .expect("the signing semaphore is never closed");
    let signing = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let now = chrono::Utc::now().timestamp();
        let source = source.as_ref().map(|(bytes, format)| Source { bytes, format: *format });
        // The source is read once however many images the edit makes.
        let ingredient = source.as_ref().map(|s| guarded(|| sign::source_ingredient(s)));
        images
            .into_iter()
            .map(|(bytes, format)| {
                let facts = ImageFacts {
                    model: &model,
                    provider,
                    format,
                    source,
                };
                let started = Instant::now();
                let signed = match &ingredient {
                    Some(Err(error)) => Err(error.clone()),
                    Some(Ok(ingredient)) => guarded(|| sign::sign_with(&bytes, &facts, Some(ingredient), &key, now)),
                    None => guarded(|| sign::sign_with(&bytes, &facts, None, &key, now)),
                };
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
    let stopped = |why: String| {
        let error = ProvenanceError::SigningFailed(why);
        failed(state, &error, count);
        match policy {
            Policy::Required => Err(error),
            _ => Ok(unsigned()),
        }
    };
    let signed = match tokio::time::timeout(SIGNING_TIMEOUT, signing).await {
        Ok(Ok(signed)) => signed,
        Ok(Err(e)) => return stopped(format!("the signer stopped: {e}")),
        Err(_) => return stopped(format!("not done in {SIGNING_TIMEOUT:?}")),
    };
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

/// Longest one call's signing may take before its images count as failed.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(20);

/// Calls signing at once, process-wide: two per CPU, so untrusted source
/// manifests cannot take every core.
fn signing_permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Arc::new(Semaphore::new(2 * cpus))
    })
}

/// Runs `f`, a panic in it (in c2pa, on hostile input) becoming a signing
/// failure like any other.
fn guarded<T>(f: impl FnOnce() -> Result<T, ProvenanceError>) -> Result<T, ProvenanceError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(ProvenanceError::SigningFailed("the signer panicked".into())))
}

/// Counts and logs `images` that could not be signed.
fn failed(state: &AppState, error: &ProvenanceError, images: usize) {
    let policy = state.provenance.policy.as_str();
    tracing::warn!(
        reason = error.reason(),
        policy,
        detail = error.detail(),
        "an image could not be signed: {error}"
    );
    state
        .metrics
        .signing_failures
        .get_or_create(&SigningFailureLabels {
            reason: error.reason().into(),
            policy: policy.into(),
        })
        .inc_by(images as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_signing_is_a_signing_failure() {
        let result: Result<(), _> = guarded(|| panic!("hostile manifest"));
        assert_eq!(result.unwrap_err().reason(), "signing_failed");
        assert_eq!(guarded(|| Ok(1)).unwrap(), 1);
    }
}
