//! The Content Credentials signing key: an X.509 chain (leaf first, PEM)
//! and its private key (PKCS#8 PEM), ES256 or Ed25519, read from the files
//! the settings name. Checked when read: the chain parses, the key is the
//! leaf's, the leaf may sign (key usage digitalSignature) and is within its
//! validity (checked again per image, since a long-running replica can
//! outlive it), so a reload to a bad certificate is refused.

use std::path::Path;
use std::sync::Arc;

use c2pa::SigningAlg;

use super::signer::KeySigner;
use super::time_stamp::{TimeStampAuthority, TimeStamped};

/// A loaded signing key and what the tool result says about it.
pub struct SigningKey {
    /// The key, parsed once for every image it signs.
    raw: Arc<KeySigner>,
    /// The certificate's organisation, else its common name.
    pub signer: String,
    /// Validity of the leaf certificate, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf's serial number (hex), to tell certificates apart in logs.
    pub serial: String,
    /// The RFC 3161 authority that time-stamps its signatures, if any.
    authority: Option<TimeStampAuthority>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("signer", &self.signer)
            .field("serial", &self.serial)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads and checks the chain and key files.
    pub fn from_files(chain: &Path, key: &Path) -> Result<Self, String> {
        let chain_pem = std::fs::read(chain).map_err(|e| format!("reading {}: {e}", chain.display()))?;
        let key_pem = std::fs::read(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
        Self::from_pem(chain_pem, key_pem)
    }

    /// Checks a chain (leaf first) and its private key, both PEM.
    pub fn from_pem(chain_pem: Vec<u8>, key_pem: Vec<u8>) -> Result<Self, String> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&chain_pem)
            .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
        let leaf = pem
            .parse_x509()
            .map_err(|e| format!("the signing certificate does not parse: {e}"))?;
        let spki = leaf.public_key();
        let alg = match spki.algorithm.algorithm.to_id_string().as_str() {
            "1.2.840.10045.2.1" => SigningAlg::Es256,
            "1.3.101.112" => SigningAlg::Ed25519,
            other => {
                return Err(format!(
                    "the signing certificate's key type {other} is not ES256 or Ed25519"
                ))
            }
        };
        // Parsed once here for every image it will sign; also checks the key is the leaf's.
        let raw = Arc::new(KeySigner::new(&chain_pem, &key_pem, alg)?);
        // C2PA signing certificates must allow digitalSignature; one that
        // does not would make every manifest invalid.
        let signs = leaf
            .key_usage()
            .ok()
            .flatten()
            .is_some_and(|usage| usage.value.digital_signature());
        if !signs {
            return Err("the signing certificate's key usage does not include digitalSignature".into());
        }
        let subject = leaf.subject();
        let signer = subject
            .iter_organization()
            .next()
            .or_else(|| subject.iter_common_name().next())
            .and_then(|attribute| attribute.as_str().ok())
            .map(str::to_string)
            .unwrap_or_else(|| subject.to_string());
        let validity = leaf.validity();
        let key = Self {
            raw,
            signer,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            serial: leaf.raw_serial_as_string(),
            authority: None,
        };
        // Refused now rather than failing every image: a reload keeps the old key.
        key.valid_at(chrono::Utc::now().timestamp())
            .map_err(|why| format!("the signing certificate {why}"))?;
        Ok(key)
    }

    /// Whether the leaf is valid at `now` (Unix seconds): `Err` says how not.
    pub fn valid_at(&self, now: i64) -> Result<(), String> {
        let at = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        };
        if now < self.not_before {
            return Err(format!("is not valid before {}", at(self.not_before)));
        }
        if now > self.not_after {
            return Err(format!("expired at {}", at(self.not_after)));
        }
        Ok(())
    }

    /// This key, its signatures time-stamped by `authority`.
    pub fn time_stamped_by(self, authority: Option<TimeStampAuthority>) -> Self {
        Self { authority, ..self }
    }

    /// A c2pa signer over this key, time-stamping with the key's authority if it has one.
    pub fn signer(&self) -> TimeStamped {
        TimeStamped::new(self.raw.clone(), self.authority.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused() {
        let dir = std::env::temp_dir().join(format!("prov-keys-{}", uuid::Uuid::new_v4()));
        let ca = crate::provenance::dev_ca::init(&dir).unwrap();
        let (chain, key) = crate::provenance::dev_ca::issue(&ca, "second").unwrap();
        let first_key = std::fs::read(&ca.key).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        let good = SigningKey::from_pem(chain.clone().into_bytes(), key.into_bytes()).unwrap();
        assert_eq!(good.signer, "MCP Image Gateway (development)");
        assert!(good.valid_at(chrono::Utc::now().timestamp()).is_ok());
        let error = SigningKey::from_pem(chain.into_bytes(), first_key).unwrap_err();
        assert!(error.contains("not the signing certificate's"), "{error}");
        assert!(SigningKey::from_pem(b"not pem".to_vec(), b"x".to_vec()).is_err());
    }
}

#[cfg(test)]
mod ed25519_tests {
    use super::*;

    fn ed25519_certificate() -> (String, String) {
        certificate(|_| {})
    }

    fn certificate(change: impl FnOnce(&mut rcgen::CertificateParams)) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        change(&mut params);
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn an_expired_or_not_signing_certificate_is_refused_at_load() {
        let load = |(chain, key): (String, String)| SigningKey::from_pem(chain.into_bytes(), key.into_bytes());
        let expired = load(certificate(|p| {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }))
        .unwrap_err();
        assert!(expired.contains("expired"), "{expired}");
        let future = load(certificate(|p| p.not_before = rcgen::date_time_ymd(2990, 1, 1))).unwrap_err();
        assert!(future.contains("not valid before"), "{future}");
        let no_signing = load(certificate(|p| {
            p.key_usages = vec![rcgen::KeyUsagePurpose::KeyEncipherment]
        }))
        .unwrap_err();
        assert!(no_signing.contains("digitalSignature"), "{no_signing}");
        let no_usage = load(certificate(|p| p.key_usages = vec![])).unwrap_err();
        assert!(no_usage.contains("digitalSignature"), "{no_usage}");
    }

    #[test]
    fn an_ed25519_key_that_is_not_the_certificates_is_refused() {
        let (chain, key) = ed25519_certificate();
        let (_, other_key) = ed25519_certificate();
        assert!(SigningKey::from_pem(chain.clone().into_bytes(), key.into_bytes()).is_ok());
        let error = SigningKey::from_pem(chain.into_bytes(), other_key.into_bytes()).unwrap_err();
        assert!(error.contains("not the signing certificate's"), "{error}");
    }
}
