//! `offline-preview`: renders a deterministic PNG, JPEG or WebP (lossless)
//! from the prompt, so the
//! whole gateway runs without a model provider. Not a model: the picture is
//! an abstract pattern seeded by the prompt's hash, labelled as a preview.
//! Its edit is as plain and as visible: every pixel of the masked area (the
//! whole image without a mask) has its colour bits flipped by a pattern
//! seeded by the prompt, and every pixel outside it is left exactly as it
//! was, so anyone can see that the mask was honoured.

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::{BackendError, EditInputs, GeneratedImage, Generation, ImageBackend, ImageRequest};
use crate::media::input::decode_rgba;
use crate::media::types::OutputFormat;

pub const MODEL: &str = "offline-preview";

/// The offline backend.
#[derive(Debug, Default)]
pub struct OfflinePreview;

#[async_trait]
impl ImageBackend for OfflinePreview {
    fn kind(&self) -> &'static str {
        MODEL
    }

    fn model(&self) -> &str {
        MODEL
    }

    async fn generate(&self, request: &ImageRequest) -> Result<Generation, BackendError> {
        let request = request.clone();
        let images = tokio::task::spawn_blocking(move || match &request.edit {
            Some(edit) => (0..request.n)
                .map(|index| render_edit(&request, edit, index))
                .collect::<Result<Vec<_>, _>>(),
            None => (0..request.n)
                .map(|index| {
                    render(
                        &request.prompt,
                        index,
                        request.size.width,
                        request.size.height,
                        request.output_format,
                    )
                })
                .collect::<Result<Vec<_>, _>>(),
        })
        .await
        .map_err(|e| BackendError::InvalidResponse(format!("preview renderer stopped: {e}")))??;
        Ok(Generation {
            images,
            model: MODEL.to_string(),
            usage: None,
            quota: None,
        })
    }
}

/// Renders image `index` for `prompt` in `format`: same inputs, same bytes.
pub fn render(
    prompt: &str,
    index: u8,
    width: u32,
    height: u32,
    format: OutputFormat,
) -> Result<GeneratedImage, BackendError> {
    let seed: [u8; 32] = Sha256::new()
        .chain_update(prompt.as_bytes())
        .chain_update([index])
        .finalize()
        .into();
    let [r0, g0, b0, r1, g1, b1, cx, cy, ..] = seed;
    let (cx, cy) = (
        f32::from(cx) / 255.0 * width as f32,
        f32::from(cy) / 255.0 * height as f32,
    );
    let radius = width.min(height) as f32 * (0.15 + f32::from(seed[8]) / 255.0 * 0.2);
    let stripe = 16 + u32::from(seed[9] % 48);
    let mut pixels = Vec::with_capacity((width * height * 3) as usize);
    for y in 0..height {
        let t = y as f32 / height.max(1) as f32;
        let lerp = |a: u8, b: u8| (f32::from(a) * (1.0 - t) + f32::from(b) * t) as u8;
        let base = [lerp(r0, r1), lerp(g0, g1), lerp(b0, b1)];
        for x in 0..width {
            let (dx, dy) = (x as f32 - cx, y as f32 - cy);
            let inside = dx * dx + dy * dy < radius * radius;
            let band = ((x + y) / stripe) % 2 == 0;
            let px = match (inside, band) {
                (true, _) => [255 - base[0], 255 - base[1], 255 - base[2]],
                (false, true) => base,
                (false, false) => base.map(|c| c.saturating_add(24)),
            };
            pixels.extend_from_slice(&px);
        }
    }
    match format {
        OutputFormat::Png => encode(&pixels, width, height, png::ColorType::Rgb),
        other => encode_with_image(&pixels, width, height, image::ExtendedColorType::Rgb8, other),
    }
}

/// Edit `index` of `request`: the masked pixels of the first input image
/// flipped by a prompt-seeded pattern, the rest unchanged, at `request.size`.
fn render_edit(request: &ImageRequest, edit: &EditInputs, index: u8) -> Result<GeneratedImage, BackendError> {
    let invalid = |e: String| BackendError::BadRequest(e);
    let first = edit.images.first().ok_or_else(|| invalid("no image to edit".into()))?;
    let pixels_limit = u64::from(first.width) * u64::from(first.height);
    let mut picture = decode_rgba(first, pixels_limit).map_err(invalid)?;
    let mask = match &edit.mask {
        Some(mask) => {
            let checked = crate::media::input::inspect(
                mask.clone(),
                &crate::media::input::InputLimits {
                    max_bytes: usize::MAX,
                    max_pixels: pixels_limit,
                },
            )
            .map_err(|e| invalid(format!("the mask {e}")))?;
            Some(decode_rgba(&checked, pixels_limit).map_err(invalid)?)
        }
        None => None,
    };
    let seed: [u8; 32] = Sha256::new()
        .chain_update(request.prompt.as_bytes())
        .chain_update([index])
        .finalize()
        .into();
    for (x, y, pixel) in picture.enumerate_pixels_mut() {
        let editable = mask.as_ref().is_none_or(|m| m.get_pixel(x, y)[3] == 0);
        if editable {
            let flip = seed[((x / 16 + y / 16) % 32) as usize] | 0x80;
            for channel in 0..3 {
                pixel[channel] ^= flip;
            }
        }
    }
    let (width, height) = (request.size.width, request.size.height);
    if (width, height) != picture.dimensions() {
        picture = image::imageops::resize(&picture, width, height, image::imageops::FilterType::Triangle);
    }
    match request.output_format {
        OutputFormat::Png => encode(picture.as_raw(), width, height, png::ColorType::Rgba),
        // JPEG has no alpha: the edit's pixels without it.
        OutputFormat::Jpeg => {
            let rgb = image::DynamicImage::ImageRgba8(picture).to_rgb8();
            encode_with_image(
                rgb.as_raw(),
                width,
                height,
                image::ExtendedColorType::Rgb8,
                OutputFormat::Jpeg,
            )
        }
        OutputFormat::Webp => encode_with_image(
            picture.as_raw(),
            width,
            height,
            image::ExtendedColorType::Rgba8,
            OutputFormat::Webp,
        ),
    }
}

/// JPEG (quality 90) or lossless WebP, with the `image` crate's own encoders.
fn encode_with_image(
    pixels: &[u8],
    width: u32,
    height: u32,
    color: image::ExtendedColorType,
    format: OutputFormat,
) -> Result<GeneratedImage, BackendError> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    let written = match format {
        OutputFormat::Jpeg => {
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90).write_image(pixels, width, height, color)
        }
        _ => image::codecs::webp::WebPEncoder::new_lossless(&mut out).write_image(pixels, width, height, color),
    };
    written.map_err(|e| BackendError::InvalidResponse(e.to_string()))?;
    Ok(GeneratedImage {
        bytes: Bytes::from(out),
        format,
    })
}

fn encode(pixels: &[u8], width: u32, height: u32, color: png::ColorType) -> Result<GeneratedImage, BackendError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    encoder
        .add_text_chunk("Software".into(), "mcp-image-gateway offline-preview".into())
        .and_then(|_| encoder.add_text_chunk("Description".into(), "Offline preview, not a model output".into()))
        .map_err(|e| BackendError::InvalidResponse(e.to_string()))?;
    let mut writer = encoder
        .write_header()
        .map_err(|e| BackendError::InvalidResponse(e.to_string()))?;
    writer
        .write_image_data(pixels)
        .map_err(|e| BackendError::InvalidResponse(e.to_string()))?;
    writer
        .finish()
        .map_err(|e| BackendError::InvalidResponse(e.to_string()))?;
    Ok(GeneratedImage {
        bytes: Bytes::from(out),
        format: OutputFormat::Png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dimensions(png_bytes: &[u8]) -> (u32, u32) {
        let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
        let reader = decoder.read_info().unwrap();
        (reader.info().width, reader.info().height)
    }

    #[test]
    fn deterministic_png_of_the_requested_size() {
        let a = render("a lighthouse", 0, 64, 48, OutputFormat::Png).unwrap();
        let b = render("a lighthouse", 0, 64, 48, OutputFormat::Png).unwrap();
        let c = render("a lighthouse", 1, 64, 48, OutputFormat::Png).unwrap();
        let d = render("a lighthouse at night", 0, 64, 48, OutputFormat::Png).unwrap();
        assert_eq!(a.bytes, b.bytes);
        assert_ne!(a.bytes, c.bytes);
        assert_ne!(a.bytes, d.bytes);
        assert_eq!(&a.bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(dimensions(&a.bytes), (64, 48));
    }

    #[tokio::test]
    async fn generates_n_images() {
        let request = ImageRequest {
            prompt: "x".into(),
            size: crate::media::types::ImageSize { width: 32, height: 16 },
            n: 3,
            quality: crate::media::types::Quality::Auto,
            background: crate::media::types::Background::Auto,
            output_format: crate::media::types::OutputFormat::Png,
            output_compression: None,
            user: "u".into(),
            partials: None,
            edit: None,
            moderation: None,
        };
        let generation = OfflinePreview.generate(&request).await.unwrap();
        assert_eq!(generation.images.len(), 3);
        assert_eq!(generation.model, MODEL);
        assert!(generation.images.iter().all(|i| dimensions(&i.bytes) == (32, 16)));
    }

    #[test]
    fn renders_jpeg_and_webp() {
        for (format, magic) in [
            (OutputFormat::Jpeg, &b"\xff\xd8\xff"[..]),
            (OutputFormat::Webp, &b"RIFF"[..]),
        ] {
            let image = render("a lighthouse", 0, 64, 48, format).unwrap();
            assert_eq!(image.format, format);
            assert!(image.bytes.starts_with(magic), "{format:?}");
            let decoded = image::load_from_memory(&image.bytes).unwrap();
            assert_eq!((decoded.width(), decoded.height()), (64, 48));
        }
    }
}
