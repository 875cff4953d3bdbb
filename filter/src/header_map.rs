//! The request headers as one host call's serialized map, read in place:
//! names and values borrow from that one buffer (the SDK's getter copies
//! every name and value into an allocation of its own, two per header).

/// The pairs of a serialized proxy-wasm map: a `u32` count, a `u32` name
/// length and value length per pair, then each name and each value followed
/// by a NUL. A name or value that is not UTF-8 reads as U+FFFD (never
/// matching a header the filter looks for). `None` when the buffer does not
/// have that shape.
pub fn pairs(buf: &[u8]) -> Option<Vec<(&str, &str)>> {
    let word = |at: usize| -> Option<usize> {
        let bytes = buf.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(bytes.try_into().ok()?) as usize)
    };
    let count = word(0)?;
    let mut sizes = 4usize;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    // Each pair takes at least 10 bytes: a hostile count cannot reserve much.
    let mut out = Vec::with_capacity(count.min(buf.len() / 10));
    for _ in 0..count {
        let (name_len, value_len) = (word(sizes)?, word(sizes + 4)?);
        sizes += 8;
        let name = buf.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len + 1)?;
        let value = buf.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len + 1)?;
        out.push((text(name), text(value)));
    }
    Some(out)
}

/// A header name or value as text: U+FFFD when it is not UTF-8 (the header
/// is present but unreadable; both glues read headers this way).
pub fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or("\u{FFFD}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The map as the host serializes it.
    fn serialize(pairs: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend(*name);
            out.push(0);
            out.extend(*value);
            out.push(0);
        }
        out
    }

    #[test]
    fn reads_pairs_in_place() {
        let buf = serialize(&[
            (b":method", b"POST"),
            (b"authorization", b"Bearer a.b.c"),
            (b"x-empty", b""),
        ]);
        assert_eq!(
            pairs(&buf),
            Some(vec![
                (":method", "POST"),
                ("authorization", "Bearer a.b.c"),
                ("x-empty", "")
            ])
        );
        assert_eq!(pairs(&serialize(&[])), Some(vec![]));
    }

    #[test]
    fn bad_text_and_bad_shapes() {
        let buf = serialize(&[(b"x-bin", b"\xff\xfe")]);
        assert_eq!(pairs(&buf), Some(vec![("x-bin", "\u{FFFD}")]));
        let whole = serialize(&[(b"accept", b"application/json")]);
        for cut in 0..whole.len() - 1 {
            assert_eq!(pairs(&whole[..cut]), None, "cut at {cut}");
        }
        let mut huge = whole.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&huge), None);
        let mut long_name = whole;
        long_name[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pairs(&long_name), None);
    }
}
