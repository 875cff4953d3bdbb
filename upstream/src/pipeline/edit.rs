//! Preparing an `edit_image` call: every reference is read once (within a
//! total byte budget, so many concurrent edits cannot exhaust memory) and
//! checked as an image by its bytes and header; the mask is checked or drawn
//! from `mask_region`; the output size defaults to the first image's where
//! the routed model takes it. Nothing reaches a provider before all of this
//! passed; every refusal names the reference it is about.

use std::sync::Arc;

use bytes::Bytes;

use crate::identity::Caller;
use crate::media::types::{ImageOptions, ImageSize};
use crate::media::{blocking, input};
use crate::pipeline::args::{EditImageArgs, GenerateImageArgs};
use crate::pipeline::run::ImageCall;
use crate::providers::EditInputs;
use crate::routing::catalog::ModelCapabilities;
use crate::state::AppState;
use crate::storage::references::{self, Reference};
use crate::storage::store::StorageError;

/// The prepared call, or a message for the caller.
pub async fn prepare(state: &AppState, caller: &Caller, args: EditImageArgs) -> Result<ImageCall, String> {
    let limits = state.edit_limits;
    let mut budget = limits.max_total_bytes;
    let mut images = Vec::with_capacity(args.images.len());
    for (index, reference) in args.images.iter().enumerate() {
        let label = match index {
            0 => "the image to edit".to_string(),
            n => format!("images[{n}]"),
        };
        let image = read_image(state, caller, reference, budget, &label).await?;
        budget = budget.saturating_sub(image.bytes.len());
        images.push(image);
    }
    let first = images.first().ok_or("`images` is empty")?;
    let mask = match (&args.mask, args.mask_region) {
        (Some(reference), _) => {
            let mask = read_image(state, caller, reference, budget, "the mask").await?;
            input::check_mask(&mask, first)?;
            Some(mask.bytes)
        }
        (None, Some(region)) => Some(draw_region_mask(region, first.width, first.height).await?),
        (None, None) => None,
    };
    let mut base = args.base;
    let mut notes = Vec::new();
    if !args.size_given {
        let own = ImageSize {
            width: first.width,
            height: first.height,
        };
        let capabilities = routed_model(state, caller, &base);
        let (size, note) = choose_size(capabilities, &base, own);
        base.size = size;
        notes.extend(note);
    }
    Ok(ImageCall {
        tool: "edit_image",
        args: base,
        edit: Some(Arc::new(EditInputs {
            images,
            mask,
            region: args.mask_region.filter(|_| args.mask.is_none()),
            input_fidelity: args.input_fidelity,
        })),
        notes,
        sources: args.images,
    })
}

/// Reads one reference within what is left of the edit's budget and checks
/// it as an image; the error names it as `label`.
async fn read_image(
    state: &AppState,
    caller: &Caller,
    reference: &str,
    budget: usize,
    label: &str,
) -> Result<input::InputImage, String> {
    use tracing::Instrument;
    let limits = state.edit_limits.input;
    // The address kind only: a reference's query may hold a signature.
    let span = tracing::info_span!(
        "mcp_gateway.reference.read",
        mcp_gateway.reference.kind = tracing::field::Empty
    );
    let bytes = read(state, caller, reference, budget.min(limits.max_bytes))
        .instrument(span)
        .await
        .map_err(|e| format!("{label} ({}) {e}", short(reference)))?;
    let checking = tracing::info_span!("mcp_gateway.input_check", bytes = bytes.len());
    // A decoder reads the header: off the runtime, and a panic there is this call's error.
    let checked = blocking::run("checking an input image", move || {
        let _checking = checking.entered();
        input::inspect(bytes, &limits)
    })
    .await?;
    checked.map_err(|e| format!("{label} ({}) {e}", short(reference)))
}

/// The mask of `mask_region`, drawn on the blocking pool: up to 40 MP of
/// pixels (`GATEWAY_EDIT_MAX_PIXELS`) to encode, which would stall the
/// runtime's other calls for as long.
async fn draw_region_mask(region: input::Region, width: u32, height: u32) -> Result<Bytes, String> {
    blocking::run("drawing the mask_region mask", move || {
        input::region_mask(region, width, height)
    })
    .await?
}

/// Reads one reference's bytes (at most `limit`).
async fn read(state: &AppState, caller: &Caller, reference: &str, limit: usize) -> Result<Bytes, String> {
    let parsed = references::parse(reference, state.signer.base_url(), state.remote.enabled())?;
    let kind = match &parsed {
        Reference::Stored(_) => "stored",
        Reference::Upload(_) => "upload",
        Reference::Remote(_) => "remote",
    };
    tracing::Span::current().record("mcp_gateway.reference.kind", kind);
    let stored = match parsed {
        Reference::Stored(key) => {
            if !references::belongs_to(&key, &caller.org) {
                tracing::info!(org = %caller.org, "edit of another organisation's image refused");
                return Err(NOT_FOUND.into());
            }
            state.store.get_limited(&key, limit).await
        }
        Reference::Upload(id) => match state.store.get_upload(&caller.org, &id, limit).await {
            Err(StorageError::NotFound) => {
                return Err("was not found: PUT the bytes to the upload URL first (uploads expire after a day)".into())
            }
            other => other,
        },
        Reference::Remote(url) => {
            let fetched = state.remote.fetch(&url).await?;
            if fetched.len() > limit {
                return Err(format!("is over the limit of {limit} bytes"));
            }
            return Ok(fetched);
        }
    };
    stored.map_err(|error| match error {
        StorageError::NotFound | StorageError::InvalidKey => NOT_FOUND.to_string(),
        StorageError::TooLarge { size, limit } => {
            format!("is {size} bytes, over the limit of {limit} bytes (per image, or what is left of the edit's total)")
        }
        other => {
            tracing::error!(error = %other, "reading an edit input failed");
            "could not be read: the image store is unavailable; try again shortly".to_string()
        }
    })
}

const NOT_FOUND: &str = "was not found: no image of your organisation has that reference";

/// The capability row of the model this call would be routed to first.
fn routed_model<'a>(state: &'a AppState, caller: &Caller, args: &GenerateImageArgs) -> Option<&'a ModelCapabilities> {
    let facts = crate::routing::rules::CallFacts {
        org: &caller.org,
        user: &caller.user,
        tool: "edit_image",
        asked: args.asked(),
    };
    let router = match state.routes.select(&facts) {
        Ok(Some(selected)) => selected.router,
        _ => state.backend.clone(),
    };
    let model = router
        .backends()
        .find(|backend| {
            state
                .catalog
                .get(backend.model())
                .is_none_or(|capabilities| capabilities.edits)
        })?
        .model()
        .to_string();
    state.catalog.get(&model)
}

/// The first image's own size where the model takes it, else the model's
/// fixed size nearest in shape (then in area), with a note saying so.
pub fn choose_size(
    capabilities: Option<&ModelCapabilities>,
    args: &GenerateImageArgs,
    own: ImageSize,
) -> (ImageSize, Option<String>) {
    let Some(capabilities) = capabilities else {
        return (own, None);
    };
    let fits = |size: ImageSize| {
        capabilities
            .check(&ImageOptions {
                size,
                n: args.n,
                quality: args.quality,
                background: args.background,
                output_format: args.output_format,
                output_compression: args.output_compression,
                edit: true,
            })
            .is_ok()
    };
    if fits(own) {
        return (own, None);
    }
    let shape = |s: ImageSize| (f64::from(s.width) / f64::from(s.height)).ln();
    let area = |s: ImageSize| f64::from(s.width) * f64::from(s.height);
    let nearest = capabilities
        .sizes
        .iter()
        .filter_map(|s| ImageSize::parse(s))
        .min_by(|a, b| {
            let key = |s: ImageSize| ((shape(s) - shape(own)).abs(), (area(s) - area(own)).abs());
            key(*a).partial_cmp(&key(*b)).unwrap_or(std::cmp::Ordering::Equal)
        });
    match nearest {
        Some(size) => (
            size,
            Some(format!(
                "The image is {own}, which {} does not take, so the edit is {size} (the nearest size it takes; pass `size` to choose).",
                capabilities.model
            )),
        ),
        None => (own, None),
    }
}

/// A reference as quoted in messages (signed links are long).
fn short(reference: &str) -> String {
    let base = reference.split_once('?').map_or(reference, |(base, _)| base);
    if base.chars().count() <= 100 {
        return base.to_string();
    }
    format!("{}…", base.chars().take(100).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::catalog::ModelCatalog;

    fn args() -> GenerateImageArgs {
        crate::pipeline::args::parse(serde_json::json!({"prompt": "x"}).as_object()).unwrap()
    }

    #[test]
    fn the_first_images_size_is_kept_where_the_model_takes_it() {
        let catalog = ModelCatalog::builtin().unwrap();
        let own = |width, height| ImageSize { width, height };
        let mini = catalog.get("gpt-image-1-mini");
        assert_eq!(choose_size(mini, &args(), own(1536, 1024)), (own(1536, 1024), None));
        let (size, note) = choose_size(mini, &args(), own(800, 600));
        assert_eq!(size, own(1536, 1024), "landscape stays landscape");
        assert!(note.unwrap().contains("800x600"));
        let (size, _) = choose_size(mini, &args(), own(600, 900));
        assert_eq!(size, own(1024, 1536));
        let (size, _) = choose_size(mini, &args(), own(512, 512));
        assert_eq!(size, own(1024, 1024));
        // gpt-image-2 takes custom sizes (multiples of 16, ≥ 655,360 px).
        let two = catalog.get("gpt-image-2");
        assert_eq!(choose_size(two, &args(), own(1024, 768)), (own(1024, 768), None));
        assert_eq!(choose_size(None, &args(), own(5, 5)), (own(5, 5), None));
    }

    // One runtime thread (`#[tokio::test]`): while a 10 MP mask is drawn,
    // this task keeps being polled. Drawn on the runtime, the mask would
    // finish before this task ran again.
    #[tokio::test]
    async fn region_masks_are_drawn_while_the_runtime_serves_others() {
        let region = input::Region {
            x: 10,
            y: 10,
            width: 3000,
            height: 2000,
        };
        let mask = tokio::spawn(draw_region_mask(region, 4000, 2500));
        let mut polled = 0u64;
        while !mask.is_finished() {
            tokio::task::yield_now().await;
            polled += 1;
        }
        assert!(polled > 1, "polled {polled} time(s) while the mask was drawn");
        let mask = input::inspect(
            mask.await.unwrap().unwrap(),
            &input::InputLimits {
                max_bytes: usize::MAX,
                max_pixels: 10_000_000,
            },
        )
        .unwrap();
        assert_eq!((mask.width, mask.height), (4000, 2500));
    }

    #[test]
    fn long_references_are_shortened_in_messages() {
        assert_eq!(short("image://a/b.png"), "image://a/b.png");
        assert_eq!(short("http://x/images/k.png?expires=1&sig=ab"), "http://x/images/k.png");
        assert!(short(&"x".repeat(300)).ends_with('…'));
    }
}
