//! Reads a PNG's header.

/// Width and height of a PNG, or an error if the bytes are not a PNG.
pub fn dimensions(bytes: &[u8]) -> anyhow::Result<(u32, u32)> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info()?;
    Ok((reader.info().width, reader.info().height))
}
