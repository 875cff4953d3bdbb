//! Input images of edits, checked before any provider sees them: the format
//! by the bytes (never a file name or `Content-Type`), the size in bytes,
//! and the pixel count read from the header alone, so a small file that
//! declares 100,000 x 100,000 pixels is refused without allocating for it.
//! Also the mask rules, and the mask drawn from a rectangle (`mask_region`).

use std::io::Cursor;

use bytes::Bytes;
use image::{ImageDecoder, ImageFormat, ImageReader};

use crate::media::types::OutputFormat;

/// Bounds on one input image.
#[derive(Debug, Clone, Copy)]
pub struct InputLimits {
    pub max_bytes: usize,
    pub max_pixels: u64,
}

/// A checked input image.
#[derive(Debug, Clone)]
pub struct InputImage {
    pub bytes: Bytes,
    pub format: OutputFormat,
    pub width: u32,
    pub height: u32,
}

/// A rectangle of the first image, in pixels (`mask_region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

fn image_format(format: OutputFormat) -> ImageFormat {
    match format {
        OutputFormat::Png => ImageFormat::Png,
        OutputFormat::Jpeg => ImageFormat::Jpeg,
        OutputFormat::Webp => ImageFormat::WebP,
    }
}

/// Checks `bytes` as an image; the error says what is wrong in words a
/// caller can act on (the caller adds which reference it was).
pub fn inspect(bytes: Bytes, limits: &InputLimits) -> Result<InputImage, String> {
    if bytes.len() > limits.max_bytes {
        return Err(format!(
            "is {} bytes, over the limit of {} bytes per image",
            bytes.len(),
            limits.max_bytes
        ));
    }
    let format = OutputFormat::ALL
        .into_iter()
        .find(|format| format.matches(&bytes))
        .ok_or("is not a PNG, JPEG or WebP image")?;
    let (width, height) = ImageReader::with_format(Cursor::new(&bytes[..]), image_format(format))
        .into_dimensions()
        .map_err(|e| format!("is not a readable {} image ({e})", format.as_str()))?;
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels || width == 0 || height == 0 {
        return Err(format!(
            "declares {width}x{height} pixels, over the limit of {} pixels",
            limits.max_pixels
        ));
    }
    Ok(InputImage {
        bytes,
        format,
        width,
        height,
    })
}

/// A mask must be a PNG with an alpha channel, the size of the first image.
pub fn check_mask(mask: &InputImage, first: &InputImage) -> Result<(), String> {
    if mask.format != OutputFormat::Png {
        return Err(format!(
            "the mask must be a PNG with an alpha channel (got {})",
            mask.format.as_str()
        ));
    }
    let decoder = image::codecs::png::PngDecoder::new(Cursor::new(&mask.bytes[..]))
        .map_err(|e| format!("the mask is not a readable PNG ({e})"))?;
    if !decoder.color_type().has_alpha() {
        return Err("the mask has no alpha channel: its fully transparent pixels mark the area to change".into());
    }
    if (mask.width, mask.height) != (first.width, first.height) {
        return Err(format!(
            "the mask is {}x{} but the image being edited is {}x{}; they must match",
            mask.width, mask.height, first.width, first.height
        ));
    }
    Ok(())
}

/// Checks a `mask_region` against the first image's size.
pub fn check_region(region: Region, width: u32, height: u32) -> Result<(), String> {
    let fits = region.width > 0
        && region.height > 0
        && region.x.checked_add(region.width).is_some_and(|right| right <= width)
        && region
            .y
            .checked_add(region.height)
            .is_some_and(|bottom| bottom <= height);
    if !fits {
        return Err(format!(
            "`mask_region` {{x: {}, y: {}, width: {}, height: {}}} must be a non-empty rectangle inside the {width}x{height} image",
            region.x, region.y, region.width, region.height
        ));
    }
    Ok(())
}

/// The mask a provider expects for `region`: an RGBA PNG of `width` x
/// `height`, opaque everywhere but fully transparent inside the region.
pub fn region_mask(region: Region, width: u32, height: u32) -> Result<Bytes, String> {
    check_region(region, width, height)?;
    // Two kinds of row: fully opaque, and opaque with a transparent run.
    let opaque_row = [0u8, 0, 0, 255].repeat(width as usize);
    let mut cut_row = opaque_row.clone();
    let (start, end) = (region.x as usize * 4, (region.x + region.width) as usize * 4);
    if let Some(run) = cut_row.get_mut(start..end) {
        run.chunks_exact_mut(4).for_each(|pixel| pixel[3] = 0);
    }
    let mut out = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        // Long runs compress well even at the fastest level; this is on the request path.
        encoder.set_compression(png::Compression::Fast);
        let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
        let mut stream = writer.stream_writer().map_err(|e| e.to_string())?;
        for y in 0..height {
            let inside = (region.y..region.y + region.height).contains(&y);
            let row = if inside { &cut_row } else { &opaque_row };
            std::io::Write::write_all(&mut stream, row).map_err(|e| e.to_string())?;
        }
        stream.finish().map_err(|e| e.to_string())?;
    }
    Ok(Bytes::from(out))
}

/// The smallest rectangle holding every fully transparent pixel of a mask
/// (the area to change; `None`: no such pixel, or an interlaced mask,
/// whose rows come in passes: rare, and its region is then not named),
/// decoded row by row so a large mask costs one row of memory.
pub fn mask_bounds(mask: &[u8]) -> Result<Option<Region>, String> {
    let mut decoder = png::Decoder::new(Cursor::new(mask));
    // Palette and tRNS become an alpha channel; 16-bit samples become 8.
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder
        .read_info()
        .map_err(|e| format!("the mask is not a readable PNG ({e})"))?;
    let (color, _) = reader.output_color_type();
    let channels = color.samples();
    if !matches!(color, png::ColorType::Rgba | png::ColorType::GrayscaleAlpha) || reader.info().interlaced {
        return Ok(None);
    }
    let (width, height) = (reader.info().width, reader.info().height);
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
    let mut y = 0u32;
    while let Some(row) = reader
        .next_row()
        .map_err(|e| format!("the mask is not a readable PNG ({e})"))?
    {
        let clear = |(_, pixel): &(usize, &[u8])| pixel[channels - 1] == 0;
        let mut transparent = row.data().chunks_exact(channels).enumerate().filter(clear);
        if let Some((first, _)) = transparent.next() {
            let last = transparent.next_back().map_or(first, |(last, _)| last);
            (x0, x1) = (x0.min(first as u32), x1.max(last as u32 + 1));
            (y0, y1) = (y0.min(y), y + 1);
        }
        y += 1;
    }
    (x1, y1) = (x1.min(width), y1.min(height));
    Ok((x1 > x0 && y1 > y0).then(|| Region {
        x: x0,
        y: y0,
        width: x1 - x0,
        height: y1 - y0,
    }))
}

/// Our mask (fully transparent where to paint) as the greyscale mask
/// Stability's in-painting takes (white where to paint, black elsewhere).
pub fn paint_where_transparent(mask: &Bytes) -> Result<Bytes, String> {
    let decoded = image::load_from_memory_with_format(mask, ImageFormat::Png)
        .map_err(|e| format!("the mask is not a readable PNG ({e})"))?
        .to_rgba8();
    let (width, height) = decoded.dimensions();
    let grey: Vec<u8> = decoded
        .pixels()
        .map(|pixel| if pixel[3] == 0 { 255 } else { 0 })
        .collect();
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(&grey).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())?;
    Ok(Bytes::from(out))
}

/// Decodes a checked image to RGBA within `max_pixels` (the offline preview's edit).
pub fn decode_rgba(image: &InputImage, max_pixels: u64) -> Result<image::RgbaImage, String> {
    let mut reader = ImageReader::with_format(Cursor::new(&image.bytes[..]), image_format(image.format));
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(max_pixels.saturating_mul(8));
    reader.limits(limits);
    reader
        .decode()
        .map(|decoded| decoded.to_rgba8())
        .map_err(|e| format!("cannot decode the {} image: {e}", image.format.as_str()))
}

/// Bounds on an edit's inputs.
#[derive(Debug, Clone, Copy)]
pub struct EditLimits {
    /// Per input image.
    pub input: InputLimits,
    /// Across all references of one edit.
    pub max_total_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: InputLimits = InputLimits {
        max_bytes: 1 << 20,
        max_pixels: 4096 * 4096,
    };

    /// Opaque black RGBA pixels, fully transparent at (x, y).
    fn pixels_clear_at(width: u32, height: u32, x: u32, y: u32) -> Vec<u8> {
        let mut pixels = [0u8, 0, 0, 255].repeat((width * height) as usize);
        pixels[((y * width + x) * 4 + 3) as usize] = 0;
        pixels
    }

    /// An Adam7-interlaced RGBA PNG (the png crate only writes plain ones).
    fn adam7_rgba(width: u32, height: u32, pixels: &[u8]) -> Vec<u8> {
        const PASSES: [(u32, u32, u32, u32); 7] = [
            (0, 8, 0, 8),
            (4, 8, 0, 8),
            (0, 4, 4, 8),
            (2, 4, 0, 4),
            (0, 2, 2, 4),
            (1, 2, 0, 2),
            (0, 1, 1, 2),
        ];
        let mut raw = Vec::new();
        for (x0, dx, y0, dy) in PASSES {
            for y in (y0..height).step_by(dy as usize) {
                let xs: Vec<u32> = (x0..width).step_by(dx as usize).collect();
                if xs.is_empty() {
                    continue;
                }
                raw.push(0); // filter: none
                for x in xs {
                    let at = ((y * width + x) * 4) as usize;
                    raw.extend_from_slice(&pixels[at..at + 4]);
                }
            }
        }
        let chunk = |out: &mut Vec<u8>, kind: &[u8], data: &[u8]| {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            let mut crc = crc32fast::Hasher::new();
            crc.update(kind);
            crc.update(data);
            out.extend_from_slice(&crc.finalize().to_be_bytes());
        };
        let mut header = Vec::new();
        header.extend_from_slice(&width.to_be_bytes());
        header.extend_from_slice(&height.to_be_bytes());
        header.extend_from_slice(&[8, 6, 0, 0, 1]); // 8-bit RGBA, Adam7
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &header);
        chunk(&mut out, b"IDAT", &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6));
        chunk(&mut out, b"IEND", b"");
        out
    }

    fn png(width: u32, height: u32, color: png::ColorType) -> Bytes {
        let channels = match color {
            png::ColorType::Rgba => 4,
            _ => 3,
        };
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, width, height);
        encoder.set_color(color);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_image_data(&vec![7u8; (width * height * channels) as usize])
            .unwrap();
        writer.finish().unwrap();
        Bytes::from(out)
    }

    /// A small PNG that declares `width` x `height`: its header, then the
    /// start of a zlib stream (what a bomb looks like before inflating).
    fn bomb(width: u32, height: u32) -> Bytes {
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        for (kind, data) in [(&b"IHDR"[..], ihdr), (&b"IDAT"[..], vec![0x78, 0x9c, 0x63, 0x00])] {
            let mut chunk = kind.to_vec();
            chunk.extend_from_slice(&data);
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            out.extend_from_slice(&chunk);
            out.extend_from_slice(&crc32(&chunk).to_be_bytes());
        }
        Bytes::from(out)
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    #[test]
    fn images_are_checked_by_their_bytes_and_header() {
        let ok = inspect(png(64, 32, png::ColorType::Rgb), &LIMITS).unwrap();
        assert_eq!((ok.format, ok.width, ok.height), (OutputFormat::Png, 64, 32));
        let cases = [
            ("text", Bytes::from_static(b"hello, not an image"), "not a PNG"),
            ("bomb", bomb(100_000, 100_000), "over the limit"),
            (
                "truncated",
                Bytes::from_static(b"\x89PNG\r\n\x1a\n\0\0"),
                "not a readable png",
            ),
        ];
        for (name, bytes, message) in cases {
            let error = inspect(bytes, &LIMITS).unwrap_err();
            assert!(error.contains(message), "{name}: {error}");
        }
        let small = InputLimits {
            max_bytes: 10,
            ..LIMITS
        };
        assert!(inspect(png(8, 8, png::ColorType::Rgb), &small)
            .unwrap_err()
            .contains("bytes"));
    }

    #[test]
    fn masks_need_alpha_and_the_same_size() {
        let first = inspect(png(64, 32, png::ColorType::Rgb), &LIMITS).unwrap();
        let good = inspect(png(64, 32, png::ColorType::Rgba), &LIMITS).unwrap();
        assert_eq!(check_mask(&good, &first), Ok(()));
        let opaque = inspect(png(64, 32, png::ColorType::Rgb), &LIMITS).unwrap();
        assert!(check_mask(&opaque, &first).unwrap_err().contains("alpha"));
        let small = inspect(png(32, 32, png::ColorType::Rgba), &LIMITS).unwrap();
        assert!(check_mask(&small, &first).unwrap_err().contains("must match"));
    }

    #[test]
    fn region_masks_are_transparent_exactly_inside() {
        let region = Region {
            x: 2,
            y: 1,
            width: 3,
            height: 2,
        };
        let mask = region_mask(region, 8, 4).unwrap();
        let checked = inspect(mask, &LIMITS).unwrap();
        let rgba = decode_rgba(&checked, LIMITS.max_pixels).unwrap();
        for (x, y, pixel) in rgba.enumerate_pixels() {
            let inside = (2..5).contains(&x) && (1..3).contains(&y);
            assert_eq!(pixel[3], if inside { 0 } else { 255 }, "({x}, {y})");
        }
        let outside = Region {
            x: 6,
            y: 0,
            width: 3,
            height: 1,
        };
        assert!(region_mask(outside, 8, 4).is_err());
        // Stability's form of the same mask: white exactly where ours is clear.
        let painted = paint_where_transparent(&region_mask(region, 8, 4).unwrap()).unwrap();
        let grey = image::load_from_memory(&painted).unwrap().to_luma8();
        for (x, y, pixel) in grey.enumerate_pixels() {
            let inside = (2..5).contains(&x) && (1..3).contains(&y);
            assert_eq!(pixel[0], if inside { 255 } else { 0 }, "({x}, {y})");
        }
    }

    #[test]
    fn a_masks_bounds_hold_every_transparent_pixel() {
        let region = Region {
            x: 2,
            y: 1,
            width: 3,
            height: 2,
        };
        assert_eq!(mask_bounds(&region_mask(region, 8, 4).unwrap()), Ok(Some(region)));
        // Two brush dabs: the rectangle spanning both.
        let mut pixels = [0u8, 0, 0, 255].repeat(10 * 6);
        for (x, y) in [(1usize, 4usize), (7, 2)] {
            pixels[(y * 10 + x) * 4 + 3] = 0;
        }
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 10, 6);
        encoder.set_color(png::ColorType::Rgba);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&pixels).unwrap();
        writer.finish().unwrap();
        let spanned = Region {
            x: 1,
            y: 2,
            width: 7,
            height: 3,
        };
        assert_eq!(mask_bounds(&out), Ok(Some(spanned)));
        assert_eq!(mask_bounds(&png(4, 4, png::ColorType::Rgba)), Ok(None), "nothing clear");
        assert_eq!(mask_bounds(&png(4, 4, png::ColorType::Rgb)), Ok(None), "no alpha");
        assert!(mask_bounds(b"not a png").is_err());
        // Rows of an interlaced mask come in passes: its region is not guessed.
        let mut interlaced = Vec::new();
        {
            let mut encoder = png::Encoder::new(&mut interlaced, 8, 8);
            encoder.set_color(png::ColorType::Rgba);
            encoder.set_depth(png::BitDepth::Eight);
            let mut info = encoder.write_header().unwrap();
            info.write_image_data(&pixels_clear_at(8, 8, 7, 7)).unwrap();
        }
        assert_eq!(
            mask_bounds(&interlaced),
            Ok(Some(Region {
                x: 7,
                y: 7,
                width: 1,
                height: 1
            }))
        );
        let adam7 = adam7_rgba(8, 8, &pixels_clear_at(8, 8, 7, 7));
        let decoded = image::load_from_memory(&adam7).unwrap().to_rgba8();
        assert_eq!(
            (decoded.get_pixel(7, 7)[3], decoded.get_pixel(0, 0)[3]),
            (0, 255),
            "a real interlaced PNG"
        );
        assert_eq!(mask_bounds(&adam7), Ok(None));
    }
}
