//! Named HMAC secrets that rotate without downtime: the newest key signs,
//! every listed key verifies until an operator removes it.
//!
//! File format (a Kubernetes Secret mounted as a file works as is): one key
//! per line, `KEY_ID HEX_SECRET`, oldest first, the newest last; blank lines
//! and `#` comments are ignored. A bare `HEX_SECRET` line (the format before
//! rotation existed) is the key [`LEGACY_KEY_ID`].

use std::path::Path;

use anyhow::{bail, Context};

/// Id of a key written without one; links without a `kid` use it.
pub const LEGACY_KEY_ID: &str = "default";

/// Keys by id, oldest first.
#[derive(Clone)]
pub struct Keyring {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print secrets.
        f.debug_list().entries(self.keys.iter().map(|(id, _)| id)).finish()
    }
}

impl Keyring {
    /// Parses the file format above; every secret must have `min_bytes`.
    pub fn parse(text: &str, min_bytes: usize) -> anyhow::Result<Self> {
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, secret) = match line.split_once(char::is_whitespace) {
                Some((id, secret)) => (id.to_string(), secret.trim()),
                None => (LEGACY_KEY_ID.to_string(), line),
            };
            let line_no = index + 1;
            if !is_key_id(&id) {
                bail!("line {line_no}: key id {id:?} must be 1-64 characters of A-Z a-z 0-9 . _ -");
            }
            let secret =
                hex::decode(secret).map_err(|e| anyhow::anyhow!("line {line_no}: the secret is not hex: {e}"))?;
            if secret.len() < min_bytes {
                bail!("line {line_no}: the secret of {id:?} must be at least {min_bytes} bytes");
            }
            if keys.iter().any(|(known, _)| *known == id) {
                bail!("line {line_no}: key id {id:?} appears twice");
            }
            keys.push((id, secret));
        }
        if keys.is_empty() {
            bail!("no keys: write one `KEY_ID HEX_SECRET` line");
        }
        Ok(Self { keys })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path, min_bytes: usize) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Self::parse(&text, min_bytes).with_context(|| format!("key file {}", path.display()))
    }

    /// The signing key: the newest (last listed).
    pub fn newest(&self) -> (&str, &[u8]) {
        // `parse` refuses an empty ring.
        self.keys
            .last()
            .map(|(id, secret)| (id.as_str(), secret.as_slice()))
            .unwrap_or(("", &[]))
    }

    /// The secret of key `id`, while it is listed.
    pub fn get(&self, id: &str) -> Option<&[u8]> {
        self.keys
            .iter()
            .find(|(known, _)| known == id)
            .map(|(_, secret)| secret.as_slice())
    }

    /// Every key, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.keys.iter().map(|(id, secret)| (id.as_str(), secret.as_slice()))
    }
}

/// Ids travel in URLs and JWT headers: keep them short and plain.
pub fn is_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_signs_and_all_verify() {
        let text = format!(
            "# rotated 2026-11\nold {}\n\nnew {}\n",
            "aa".repeat(32),
            "bb".repeat(32)
        );
        let ring = Keyring::parse(&text, 32).unwrap();
        assert_eq!(ring.newest(), ("new", [0xbb; 32].as_slice()));
        assert_eq!(ring.get("old"), Some([0xaa; 32].as_slice()));
        assert_eq!(ring.get("gone"), None);
        assert_eq!(format!("{ring:?}"), r#"["old", "new"]"#);
    }

    #[test]
    fn a_bare_secret_is_the_legacy_key() {
        let ring = Keyring::parse(&"cc".repeat(32), 32).unwrap();
        assert_eq!(ring.newest().0, LEGACY_KEY_ID);
    }

    #[test]
    fn refusals() {
        let cases = [
            ("empty", String::new()),
            ("short", format!("k {}", "aa".repeat(8))),
            ("not hex", format!("k {}", "zz".repeat(32))),
            ("bad id", format!("k/1 {}", "aa".repeat(32))),
            ("twice", format!("k {0}\nk {0}", "aa".repeat(32))),
        ];
        for (name, text) in cases {
            assert!(Keyring::parse(&text, 32).is_err(), "case: {name}");
        }
    }
}
