//! Where a manifest goes in a PNG: its `caBX` chunk right after `IHDR`, as
//! c2pa places it, with any manifest chunk the image already carried left
//! out (a provider's manifest is kept as an ingredient, not as a second
//! store). Done here so that signing never copies the image: the signed
//! PNG is the source's own bytes around the new chunk, hashed where they
//! lie, where c2pa's writer copies the image through a buffer twice.

use std::ops::Range;

const SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";
const MANIFEST: &[u8; 4] = b"caBX";
const HEADER: &[u8; 4] = b"IHDR";
const END: &[u8; 4] = b"IEND";
/// Length, type and CRC around a chunk's data.
const FRAME: usize = 12;

/// Where a manifest chunk goes in `png`, and what is kept around it.
#[derive(Debug, PartialEq)]
pub struct Layout {
    /// The signature and `IHDR`: the manifest follows them.
    pub head: Range<usize>,
    /// The rest, in order, less any manifest chunk already there (and
    /// whatever follows `IEND`, kept as c2pa keeps it).
    pub tail: Vec<Range<usize>>,
}

impl Layout {
    /// Every kept range in order: the bytes a data hash covers.
    pub fn kept(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        std::iter::once(self.head.clone()).chain(self.tail.iter().cloned())
    }
}

/// The manifest's place in `png`; `None` when its chunks do not walk
/// cleanly to `IEND` or `IHDR` is not first: c2pa's own writer then
/// decides.
pub fn layout(png: &[u8]) -> Option<Layout> {
    let chunks = walk(png)?;
    let header = chunks.first().filter(|c| c.kind == *HEADER)?;
    let mut tail = Vec::with_capacity(2);
    let mut kept = header.span.end;
    for old in chunks.iter().filter(|c| c.kind == *MANIFEST) {
        tail.push(kept..old.span.start);
        kept = old.span.end;
    }
    tail.push(kept..png.len());
    tail.retain(|range| !range.is_empty());
    Some(Layout {
        head: 0..header.span.end,
        tail,
    })
}

struct Chunk {
    kind: [u8; 4],
    span: Range<usize>,
}

/// The chunks from the signature to `IEND`, each within the bytes.
fn walk(png: &[u8]) -> Option<Vec<Chunk>> {
    let mut rest = png.strip_prefix(SIGNATURE)?;
    let mut at = SIGNATURE.len();
    let mut chunks = Vec::with_capacity(8);
    loop {
        let length = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let kind: [u8; 4] = rest.get(4..8)?.try_into().ok()?;
        let size = length.checked_add(FRAME).filter(|size| *size <= rest.len())?;
        chunks.push(Chunk {
            kind,
            span: at..at + size,
        });
        if kind == *END {
            return Some(chunks);
        }
        rest = &rest[size..];
        at += size;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    fn png(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = SIGNATURE.to_vec();
        chunks.iter().for_each(|c| out.extend_from_slice(c));
        out
    }

    /// `png` rebuilt from its layout with `manifest` in its place.
    fn placed(png: &[u8], manifest: &[u8]) -> Vec<u8> {
        let layout = layout(png).expect("a well-formed PNG");
        let mut out = png[layout.head.clone()].to_vec();
        out.extend_from_slice(manifest);
        layout
            .tail
            .iter()
            .for_each(|range| out.extend_from_slice(&png[range.clone()]));
        out
    }

    #[test]
    fn goes_after_the_header_and_replaces_a_manifest_anywhere() {
        let (ihdr, idat, iend) = (chunk(b"IHDR", &[1; 13]), chunk(b"IDAT", &[2; 40]), chunk(b"IEND", &[]));
        let old = chunk(b"caBX", &[9; 30]);
        let new = chunk(b"caBX", &[7; 20]);
        let source = png(&[ihdr.clone(), idat.clone(), old.clone(), iend.clone()]);
        assert_eq!(
            placed(&source, &new),
            png(&[ihdr.clone(), new.clone(), idat.clone(), iend.clone()])
        );
        let first = png(&[ihdr.clone(), old, idat.clone(), iend.clone()]);
        assert_eq!(
            placed(&first, &new),
            png(&[ihdr.clone(), new.clone(), idat.clone(), iend.clone()])
        );
        // Trailing bytes after IEND are kept.
        let mut trailing = png(&[ihdr.clone(), idat.clone(), iend.clone()]);
        trailing.extend_from_slice(b"tail");
        assert!(placed(&trailing, &new).ends_with(b"IEND\0\0\0\0tail"));
        let kept: usize = layout(&source).unwrap().kept().map(|r| r.len()).sum();
        assert_eq!(kept, source.len() - 42, "all but the old manifest");
    }

    #[test]
    fn malformed_chunks_are_left_to_c2pa() {
        let (ihdr, iend) = (chunk(b"IHDR", &[1; 13]), chunk(b"IEND", &[]));
        let mut cut = png(&[ihdr.clone(), chunk(b"IDAT", &[2; 40])]);
        cut.truncate(cut.len() - 5);
        assert_eq!(layout(&cut), None, "a chunk runs past the end");
        assert_eq!(layout(&png(std::slice::from_ref(&ihdr))), None, "no IEND");
        assert_eq!(layout(&png(&[iend.clone(), ihdr])), None, "IHDR not first");
        assert_eq!(layout(b"GIF89a"), None, "not a PNG");
        let huge = [SIGNATURE.as_slice(), &u32::MAX.to_be_bytes(), b"IHDR"].concat();
        assert_eq!(layout(&huge), None, "a length beyond the bytes");
    }
}
