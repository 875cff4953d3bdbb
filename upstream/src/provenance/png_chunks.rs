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
    /// The rest, in order, less the manifest chunk already there, if any
    /// (and whatever follows `IEND`, kept and hashed as c2pa keeps it).
    pub tail: Vec<Range<usize>>,
}

impl Layout {
    /// Every kept range in order: the bytes a data hash covers.
    pub fn kept(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        std::iter::once(self.head.clone()).chain(self.tail.iter().cloned())
    }
}

/// The manifest's place in `png`; `None` unless it is a PNG as C2PA
/// readers walk one: the signature, `IHDR` first, chunk types of ASCII
/// letters (a reader stops at any other, and would never reach our
/// manifest), each chunk within the bytes up to `IEND`, and at most one
/// manifest already there (two make every reader refuse the file).
pub fn layout(png: &[u8]) -> Option<Layout> {
    if !png.starts_with(SIGNATURE) {
        return None;
    }
    let (kind, header) = chunk(png, SIGNATURE.len())?;
    if kind != *HEADER {
        return None;
    }
    let mut at = header;
    let mut old = None;
    loop {
        let (kind, end) = chunk(png, at)?;
        match &kind {
            MANIFEST if old.is_some() => return None,
            MANIFEST => old = Some(at..end),
            END => break,
            _ => {}
        }
        at = end;
    }
    let tail = match old {
        Some(old) => [header..old.start, old.end..png.len()],
        None => [header..png.len(), png.len()..png.len()],
    };
    Some(Layout {
        head: 0..header,
        tail: tail.into_iter().filter(|range| !range.is_empty()).collect(),
    })
}

/// The type and end of the chunk at `at`, when it lies within `png` and
/// its type is ASCII letters.
fn chunk(png: &[u8], at: usize) -> Option<([u8; 4], usize)> {
    let frame = png.get(at..)?;
    let length = u32::from_be_bytes(frame.get(..4)?.try_into().ok()?) as usize;
    let kind: [u8; 4] = frame.get(4..8)?.try_into().ok()?;
    let size = length.checked_add(FRAME).filter(|size| *size <= frame.len())?;
    kind.iter().all(u8::is_ascii_alphabetic).then_some((kind, at + size))
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
    fn what_readers_refuse_is_refused() {
        let (ihdr, iend) = (chunk(b"IHDR", &[1; 13]), chunk(b"IEND", &[]));
        let mut cut = png(&[ihdr.clone(), chunk(b"IDAT", &[2; 40])]);
        cut.truncate(cut.len() - 5);
        assert_eq!(layout(&cut), None, "cut short, with no IEND");
        let mut long_end = png(std::slice::from_ref(&ihdr));
        long_end.extend_from_slice(&[0, 0, 0, 5, b'I', b'E', b'N', b'D', 0, 0, 0, 0]);
        assert_eq!(layout(&long_end), None, "IEND's length runs past the end");
        assert_eq!(layout(&png(std::slice::from_ref(&ihdr))), None, "no IEND");
        assert_eq!(layout(&png(&[iend.clone(), ihdr.clone()])), None, "IHDR after IEND");
        assert_eq!(layout(b"GIF89a"), None, "not a PNG");
        let idat = chunk(b"IDAT", &[2; 4]);
        let odd = png(&[
            ihdr.clone(),
            chunk(b"\xff\xfe\xfd\xfc", &[]),
            idat.clone(),
            iend.clone(),
        ]);
        assert_eq!(layout(&odd), None, "a chunk type readers refuse");
        let (one, two) = (chunk(b"caBX", &[1]), chunk(b"caBX", &[2]));
        let twice = png(&[ihdr.clone(), one, idat.clone(), two, iend.clone()]);
        assert_eq!(layout(&twice), None, "two manifests: readers refuse the file");
        let before = png(&[chunk(b"tEXt", &[]), ihdr.clone(), idat, iend.clone()]);
        assert_eq!(layout(&before), None, "IHDR not first");
        let huge = [SIGNATURE.as_slice(), &u32::MAX.to_be_bytes(), b"IHDR"].concat();
        assert_eq!(layout(&huge), None, "a length beyond the bytes");
    }
}
