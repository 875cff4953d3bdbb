//! The Content Credentials stage: every image of a generation gets its
//! signed C2PA manifest (`provenance::sign`) just before it is stored,
//! whichever model made it, on the blocking pool. The state's policy says
//! what an unsignable image means: `required` ends the call, `best_effort`
//! delivers it unsigned; both count it.

use std::io::Cursor;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use object_store::PutPayload;
use tokio::sync::Semaphore;

use crate::media::input::{self, Region};
use crate::media::types::OutputFormat;
use crate::pipeline::run::ImageCall;
use crate::provenance::manifest::{EditFacts, ImageFacts, Source};
use crate::provenance::sign;
use crate::provenance::{Credentials, Policy, ProvenanceError};
use crate::providers::{EditInputs, Generation};
use crate::state::AppState;
use crate::telemetry::metrics::{FormatLabels, SigningFailureLabels};

/// The images to store, and what each one's Content Credentials say
/// (`None`: delivered without, under `best_effort` or `off`).
pub(crate) struct Credentialed {
    pub files: Vec<(PutPayload, OutputFormat)>,
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
        files: generation
            .images
            .iter()
            .map(|i| (i.bytes.clone().into(), i.format))
            .collect(),
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
    let edit = call.edit.clone();
    let images: Vec<_> = generation.images.iter().map(|i| (i.bytes.clone(), i.format)).collect();
    let count = images.len();
    let model = generation.model.clone();
    let metrics = state.metrics.clone();
    let stopped = |why: String| {
        let error = ProvenanceError::SigningFailed(why);
        failed(state, &error, count);
        match policy {
            Policy::Required => Err(error),
            _ => Ok(unsigned()),
        }
    };
    // Bounded: each signing holds a permit until its blocking task ends,
    // even one the timeout below has given up on; waiting for one is
    // bounded too.
    let permit = match tokio::time::timeout(SIGNING_TIMEOUT, signing_permits().clone().acquire_owned()).await {
        Ok(Ok(permit)) => permit,
        Ok(Err(_)) => return stopped("the signer is shut down".into()),
        Err(_) => return stopped(format!("no signer free in {SIGNING_TIMEOUT:?}")),
    };
    let signing = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let now = chrono::Utc::now().timestamp();
        let inputs: Vec<Source<'_>> = edit
            .iter()
            .flat_map(|edit| &edit.images)
            .map(|image| Source {
                bytes: &image.bytes,
                format: image.format,
            })
            .collect();
        // Each input is read once however many images the edit makes.
        let ingredients = guarded(|| sign::input_ingredients(&inputs));
        let changed = edit.as_deref().and_then(|edit| caught(|| changed_region(edit)));
        images
            .into_iter()
            .map(|(bytes, format)| {
                let facts = ImageFacts {
                    model: &model,
                    provider,
                    format,
                    edit: edit.as_ref().map(|_| EditFacts {
                        inputs: &inputs,
                        region: changed.and_then(|(region, source)| caught(|| in_output(region, source, &bytes))),
                    }),
                };
                let started = Instant::now();
                let signed = match &ingredients {
                    Err(error) => Err(error.clone()),
                    Ok(ingredients) => guarded(|| sign::sign_with(&bytes, &facts, ingredients, &key, now)),
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
            Ok(mut signed) => {
                if let Some(why) = signed.time_stamp_failure.take() {
                    tracing::warn!(detail = %why, "an image was signed without a time-stamp");
                    state.metrics.time_stamp_failures.inc();
                }
                if let Some(from) = signed.credentials.edited_from.as_mut() {
                    from.reference = call.sources.first().cloned();
                }
                state
                    .metrics
                    .images_signed
                    .get_or_create(&FormatLabels {
                        format: format.as_str().into(),
                    })
                    .inc();
                out.files.push((signed.payload, format));
                out.credentials.push(Some(signed.credentials));
            }
            Err(error) => {
                failed(state, &error, 1);
                if policy == Policy::Required {
                    return Err(error);
                }
                out.files.push((original.into(), format));
                out.credentials.push(None);
            }
        }
    }
    Ok(out)
}

/// An in-paint's changed rectangle, in the pixels of the edited image
/// (whose width and height come with it): the bounds of its mask's
/// transparent pixels, or the `mask_region` it was drawn from.
fn changed_region(edit: &EditInputs) -> Option<(Region, (u32, u32))> {
    let source = edit.images.first()?;
    let region = match edit.region {
        Some(region) => region,
        None => input::mask_bounds(edit.mask.as_ref()?).ok()??,
    };
    Some((region, (source.width, source.height)))
}

/// `region` of a source of `source` pixels, in the pixels of `output` (an
/// edit may be made at another size); `None` when its size is unreadable.
fn in_output(region: Region, source: (u32, u32), output: &[u8]) -> Option<Region> {
    let to = image::ImageReader::new(Cursor::new(output))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    Some(scaled(region, source, to))
}

/// `region` of a `from`-sized image in a `to`-sized one, rounded outwards.
fn scaled(region: Region, from: (u32, u32), to: (u32, u32)) -> Region {
    if from == to {
        return region;
    }
    let axis = |start: u32, length: u32, from: u32, to: u32| {
        let (from, to) = (u64::from(from.max(1)), u64::from(to));
        let low = (u64::from(start) * to / from).min(to);
        let high = (u64::from(start) + u64::from(length))
            .saturating_mul(to)
            .div_ceil(from)
            .clamp(low, to);
        (low as u32, (high - low) as u32)
    };
    let (x, width) = axis(region.x, region.width, from.0, to.0);
    let (y, height) = axis(region.y, region.height, from.1, to.1);
    Region { x, y, width, height }
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

/// `f`'s answer, or none if it panics: a manifest's optional detail (the
/// changed region) never costs the image its Content Credentials.
fn caught<T>(f: impl FnOnce() -> Option<T>) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).ok().flatten()
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

    #[test]
    fn a_region_follows_the_edit_to_its_output_size() {
        let region = Region {
            x: 100,
            y: 600,
            width: 200,
            height: 150,
        };
        assert_eq!(scaled(region, (1024, 1024), (1024, 1024)), region);
        let half = Region {
            x: 50,
            y: 300,
            width: 100,
            height: 75,
        };
        assert_eq!(scaled(region, (1024, 1024), (512, 512)), half);
        // Rounded outwards, and never past the edge.
        let odd = Region {
            x: 1,
            y: 1,
            width: 1,
            height: 2,
        };
        let out = scaled(odd, (3, 3), (2, 2));
        assert_eq!((out.x, out.y, out.width, out.height), (0, 0, 2, 2));
        // A region past its source's edge stays inside the output.
        let outside = Region {
            x: 7,
            y: 14,
            width: 1,
            height: u32::MAX,
        };
        let out = scaled(outside, (8, 8), (16, 16));
        assert!(out.x + out.width <= 16 && out.y + out.height <= 16, "{out:?}");
    }
}
