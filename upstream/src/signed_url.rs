//! HMAC-signed image links for stores that cannot presign (the local
//! filesystem): `{base}/images/{key}?expires={unix}&sig={hex}` where `sig` is
//! HMAC-SHA256 over `"{key}\n{expires}"` with a server secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link has expired")]
    Expired,
    #[error("the link signature is invalid")]
    BadSignature,
}

/// Signs and verifies image links.
#[derive(Clone)]
pub struct UrlSigner {
    secret: Vec<u8>,
    base_url: String,
}

impl UrlSigner {
    /// `base_url` is the public origin clients use (scheme, host, port).
    pub fn new(secret: Vec<u8>, base_url: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "the URL signing secret must be at least {MIN_SECRET_BYTES} bytes"
        );
        Ok(Self {
            secret,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    fn mac(&self, key: &str, expires: i64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable!());
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The signature for `key` valid until `expires` (Unix seconds).
    pub fn signature(&self, key: &str, expires: i64) -> String {
        hex::encode(self.mac(key, expires).finalize().into_bytes())
    }

    /// The full public URL for `key`, valid until `expires`.
    pub fn url(&self, key: &str, expires: i64) -> String {
        format!(
            "{}/images/{}?expires={}&sig={}",
            self.base_url,
            key,
            expires,
            self.signature(key, expires)
        )
    }

    /// Checks a presented link at time `now` (Unix seconds), in constant time.
    pub fn verify(&self, key: &str, expires: i64, sig: &str, now: i64) -> Result<(), LinkError> {
        let sig = hex::decode(sig).map_err(|_| LinkError::BadSignature)?;
        self.mac(key, expires)
            .verify_slice(&sig)
            .map_err(|_| LinkError::BadSignature)?;
        // Checked after the MAC so a forged far-future expiry is a bad signature.
        if now > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> UrlSigner {
        UrlSigner::new(vec![7u8; 32], "http://127.0.0.1:8080/").unwrap()
    }

    #[test]
    fn url_shape_and_round_trip() {
        let s = signer();
        let url = s.url("acme/2026/11/24/x.png", 2_000);
        assert!(
            url.starts_with("http://127.0.0.1:8080/images/acme/2026/11/24/x.png?expires=2000&sig="),
            "{url}"
        );
        let sig = url.rsplit_once("sig=").unwrap().1;
        assert_eq!(sig.len(), 64);
        assert_eq!(s.verify("acme/2026/11/24/x.png", 2_000, sig, 1_999), Ok(()));
        assert_eq!(s.verify("acme/2026/11/24/x.png", 2_000, sig, 2_000), Ok(()));
    }

    #[test]
    fn refusals() {
        let s = signer();
        let sig = s.signature("k.png", 2_000);
        let cases = [
            ("expired", "k.png", 2_000, sig.clone(), 2_001, LinkError::Expired),
            ("other key", "j.png", 2_000, sig.clone(), 1_000, LinkError::BadSignature),
            (
                "extended expiry",
                "k.png",
                9_000,
                sig.clone(),
                1_000,
                LinkError::BadSignature,
            ),
            (
                "not hex",
                "k.png",
                2_000,
                "zz".to_string(),
                1_000,
                LinkError::BadSignature,
            ),
            (
                "truncated",
                "k.png",
                2_000,
                sig[..62].to_string(),
                1_000,
                LinkError::BadSignature,
            ),
            ("empty", "k.png", 2_000, String::new(), 1_000, LinkError::BadSignature),
        ];
        for (name, key, expires, sig, now, expected) in cases {
            assert_eq!(s.verify(key, expires, &sig, now), Err(expected), "case: {name}");
        }
        let other = UrlSigner::new(vec![8u8; 32], "http://x").unwrap();
        assert_eq!(other.verify("k.png", 2_000, &sig, 1_000), Err(LinkError::BadSignature));
    }

    #[test]
    fn short_secret_is_refused() {
        assert!(UrlSigner::new(vec![1; 16], "http://x").is_err());
    }
}
