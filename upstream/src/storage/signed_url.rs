//! HMAC-signed image links for stores that cannot presign (the local
//! filesystem): `{base}/images/{key}?expires={unix}&kid={id}&sig={hex}` where
//! `sig` is HMAC-SHA256 over `"{key}\n{expires}"` with the secret named `kid`.
//! The newest key of the ring signs; links of any listed key verify, so
//! keys rotate without breaking links (a link without `kid` predates
//! rotation and names the legacy key).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::storage::keyring::{Keyring, LEGACY_KEY_ID};

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
    #[error("the link was signed with a key that has been retired")]
    UnknownKey,
}

/// Signs and verifies image links.
#[derive(Clone)]
pub struct UrlSigner {
    keys: Keyring,
    base_url: String,
}

impl UrlSigner {
    /// `base_url` is the public origin clients use (scheme, host, port).
    pub fn new(keys: Keyring, base_url: &str) -> anyhow::Result<Self> {
        for (id, secret) in keys.iter() {
            anyhow::ensure!(
                secret.len() >= MIN_SECRET_BYTES,
                "the URL signing secret {id:?} must be at least {MIN_SECRET_BYTES} bytes"
            );
        }
        Ok(Self {
            keys,
            base_url: base_url.trim_end_matches('/').to_string(),
        })
    }

    /// The public origin links are made for.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn mac(secret: &[u8], key: &str, expires: i64) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
        mac.update(key.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// An upload URL: `PUT {base}/uploads/{org}/{id}?ct=…&max=…&expires=…&kid=…&sig=…`.
    /// The MAC covers a message no image key can spell (it starts with
    /// `upload\n`), so an image link's signature never opens an upload.
    pub fn upload_url(&self, org: &str, id: &str, format: &str, max_bytes: usize, expires: i64) -> String {
        let (kid, sig) = self.signature(&upload_message(org, id, format, max_bytes), expires);
        format!(
            "{}/uploads/{org}/{id}?ct={format}&max={max_bytes}&expires={expires}&kid={kid}&sig={sig}",
            self.base_url
        )
    }

    /// Checks a presented upload URL at `now` (Unix seconds).
    #[allow(clippy::too_many_arguments)]
    pub fn verify_upload(
        &self,
        org: &str,
        id: &str,
        format: &str,
        max_bytes: usize,
        expires: i64,
        kid: &str,
        sig: &str,
        now: i64,
    ) -> Result<(), LinkError> {
        self.check(&upload_message(org, id, format, max_bytes), expires, kid, sig, now)
    }

    /// The signing key's id and the signature for `key` (an image key, or an
    /// upload's message) valid until `expires` (Unix seconds).
    pub fn signature(&self, key: &str, expires: i64) -> (&str, String) {
        let (kid, secret) = self.keys.newest();
        (
            kid,
            hex::encode(Self::mac(secret, key, expires).finalize().into_bytes()),
        )
    }

    /// The full public URL for `key`, valid until `expires`.
    pub fn url(&self, key: &str, expires: i64) -> String {
        let (kid, sig) = self.signature(key, expires);
        format!("{}/images/{key}?expires={expires}&kid={kid}&sig={sig}", self.base_url)
    }

    /// Checks a presented link at time `now` (Unix seconds), in constant time;
    /// `kid` is `None` for links from before key rotation.
    pub fn verify(&self, key: &str, expires: i64, kid: Option<&str>, sig: &str, now: i64) -> Result<(), LinkError> {
        self.check(key, expires, kid.unwrap_or(LEGACY_KEY_ID), sig, now)
    }

    /// The one check of links and upload URLs: the key named `kid`, the MAC
    /// over `message` and `expires`, then the expiry.
    fn check(&self, message: &str, expires: i64, kid: &str, sig: &str, now: i64) -> Result<(), LinkError> {
        let secret = self.keys.get(kid).ok_or(LinkError::UnknownKey)?;
        let sig = hex::decode(sig).map_err(|_| LinkError::BadSignature)?;
        Self::mac(secret, message, expires)
            .verify_slice(&sig)
            .map_err(|_| LinkError::BadSignature)?;
        // Checked after the MAC so a forged far-future expiry is a bad signature.
        if now > expires {
            return Err(LinkError::Expired);
        }
        Ok(())
    }
}

fn upload_message(org: &str, id: &str, format: &str, max_bytes: usize) -> String {
    format!("upload\n{org}/{id}\n{format}\n{max_bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(text: &str) -> Keyring {
        Keyring::parse(text, MIN_SECRET_BYTES).unwrap()
    }

    fn signer() -> UrlSigner {
        UrlSigner::new(ring(&"07".repeat(32)), "http://127.0.0.1:8080/").unwrap()
    }

    #[test]
    fn url_shape_and_round_trip() {
        let s = signer();
        let url = s.url("acme/2026/11/24/x.png", 2_000);
        assert!(
            url.starts_with("http://127.0.0.1:8080/images/acme/2026/11/24/x.png?expires=2000&kid=default&sig="),
            "{url}"
        );
        let sig = url.rsplit_once("sig=").unwrap().1;
        assert_eq!(sig.len(), 64);
        assert_eq!(s.verify("acme/2026/11/24/x.png", 2_000, None, sig, 1_999), Ok(()));
        assert_eq!(
            s.verify("acme/2026/11/24/x.png", 2_000, Some("default"), sig, 2_000),
            Ok(())
        );
    }

    #[test]
    fn refusals() {
        let s = signer();
        let (_, sig) = s.signature("k.png", 2_000);
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
            assert_eq!(s.verify(key, expires, None, &sig, now), Err(expected), "case: {name}");
        }
        let other = UrlSigner::new(ring(&"08".repeat(32)), "http://x").unwrap();
        assert_eq!(
            other.verify("k.png", 2_000, None, &sig, 1_000),
            Err(LinkError::BadSignature)
        );
        assert_eq!(
            s.verify("k.png", 2_000, Some("nope"), &sig, 1_000),
            Err(LinkError::UnknownKey)
        );
    }

    #[test]
    fn upload_urls_bind_org_id_type_and_size() {
        let s = signer();
        let url = s.upload_url("acme", "u1", "png", 100, 2_000);
        let query: std::collections::HashMap<_, _> = url
            .split_once('?')
            .unwrap()
            .1
            .split('&')
            .filter_map(|p| p.split_once('='))
            .collect();
        let (kid, sig) = (query["kid"], query["sig"]);
        assert_eq!(
            s.verify_upload("acme", "u1", "png", 100, 2_000, kid, sig, 1_000),
            Ok(())
        );
        let cases = [
            (
                "other org",
                "globex",
                "u1",
                "png",
                100,
                2_000,
                1_000,
                LinkError::BadSignature,
            ),
            (
                "other id",
                "acme",
                "u2",
                "png",
                100,
                2_000,
                1_000,
                LinkError::BadSignature,
            ),
            (
                "other type",
                "acme",
                "u1",
                "jpeg",
                100,
                2_000,
                1_000,
                LinkError::BadSignature,
            ),
            (
                "bigger",
                "acme",
                "u1",
                "png",
                101,
                2_000,
                1_000,
                LinkError::BadSignature,
            ),
            ("expired", "acme", "u1", "png", 100, 2_000, 2_001, LinkError::Expired),
        ];
        for (name, org, id, format, max, expires, now, expected) in cases {
            assert_eq!(
                s.verify_upload(org, id, format, max, expires, kid, sig, now),
                Err(expected),
                "case: {name}"
            );
        }
        // An image link's signature does not open an upload, nor the reverse.
        let (_, image_sig) = s.signature("acme/u1", 2_000);
        assert_eq!(
            s.verify_upload("acme", "u1", "png", 100, 2_000, kid, &image_sig, 1_000),
            Err(LinkError::BadSignature)
        );
    }

    #[test]
    fn links_survive_a_rotation_until_their_key_is_removed() {
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        let before = UrlSigner::new(ring(&format!("k1 {a}")), "http://x").unwrap();
        let (kid, sig) = before.signature("k.png", 2_000);
        assert_eq!(kid, "k1");
        let rotated = UrlSigner::new(ring(&format!("k1 {a}\nk2 {b}")), "http://x").unwrap();
        assert_eq!(rotated.signature("k.png", 2_000).0, "k2", "the newest key signs");
        assert_eq!(rotated.verify("k.png", 2_000, Some("k1"), &sig, 1_000), Ok(()));
        let retired = UrlSigner::new(ring(&format!("k2 {b}")), "http://x").unwrap();
        assert_eq!(
            retired.verify("k.png", 2_000, Some("k1"), &sig, 1_000),
            Err(LinkError::UnknownKey)
        );
    }
}
