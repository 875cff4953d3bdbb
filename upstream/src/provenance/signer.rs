//! The raw signature under a manifest, by `ring` with the private key parsed
//! once per key load: profiling the stack showed parsing the PEM key and
//! deriving its public key for every image, then signing with the pure-Rust
//! P-256, cost more than the rest of a call. c2pa asks for the same bytes
//! either way: a fixed-size `r‖s` for ES256 (COSE), 64 bytes for Ed25519.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

/// What c2pa reserves besides the chain: its own signers' figure (claim
/// signature, COSE headers, room for a time-stamp token).
const RESERVE_BESIDES_CHAIN: usize = 1024 + 10_000;

/// A private key ready to sign, with its certificate chain (DER, leaf first).
pub struct KeySigner {
    pair: Pair,
    chain: Vec<Vec<u8>>,
    rng: SystemRandom,
}

enum Pair {
    Es256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl KeySigner {
    /// Parses the chain and the PKCS#8 key (both PEM) for `alg`, ES256 or
    /// Ed25519. Every block of the chain file must be a certificate (each
    /// one goes into every manifest: a private key pasted there would be
    /// published), and the key must be the leaf's.
    pub fn new(chain_pem: &[u8], key_pem: &[u8], alg: c2pa::SigningAlg) -> Result<Self, String> {
        let chain = x509_parser::pem::Pem::iter_from_buffer(chain_pem)
            .map(|pem| {
                let pem = pem.map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
                if pem.label != "CERTIFICATE" {
                    return Err(format!(
                        "the certificate chain file holds a {} block: only certificates belong there",
                        pem.label
                    ));
                }
                Ok(pem.contents)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let leaf = chain.first().ok_or("the certificate chain file holds no certificate")?;
        let (_, leaf) = x509_parser::parse_x509_certificate(leaf)
            .map_err(|e| format!("the signing certificate does not parse: {e}"))?;
        let (_, key) =
            x509_parser::pem::parse_x509_pem(key_pem).map_err(|_| "the private key is not PEM".to_string())?;
        let rng = SystemRandom::new();
        let pair = match alg {
            c2pa::SigningAlg::Es256 => Pair::Es256(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.contents, &rng)
                    .map_err(|e| format!("the private key is not a PKCS#8 P-256 key with its public key: {e}"))?,
            ),
            c2pa::SigningAlg::Ed25519 => Pair::Ed25519(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(&key.contents)
                    .map_err(|e| format!("the private key is not a PKCS#8 Ed25519 key: {e}"))?,
            ),
            other => return Err(format!("{other} keys are not supported (ES256 or Ed25519)")),
        };
        let public = match &pair {
            Pair::Es256(pair) => pair.public_key().as_ref(),
            Pair::Ed25519(pair) => pair.public_key().as_ref(),
        };
        if public != leaf.public_key().subject_public_key.data.as_ref() {
            return Err("the private key is not the signing certificate's".into());
        }
        Ok(Self { pair, chain, rng })
    }
}

impl c2pa::Signer for KeySigner {
    fn sign(&self, data: &[u8]) -> c2pa::Result<Vec<u8>> {
        match &self.pair {
            Pair::Es256(pair) => pair
                .sign(&self.rng, data)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| c2pa::Error::CoseSignature),
            Pair::Ed25519(pair) => Ok(pair.sign(data).as_ref().to_vec()),
        }
    }

    fn alg(&self) -> c2pa::SigningAlg {
        match self.pair {
            Pair::Es256(_) => c2pa::SigningAlg::Es256,
            Pair::Ed25519(_) => c2pa::SigningAlg::Ed25519,
        }
    }

    fn certs(&self) -> c2pa::Result<Vec<Vec<u8>>> {
        Ok(self.chain.clone())
    }

    fn reserve_size(&self) -> usize {
        RESERVE_BESIDES_CHAIN + self.chain.iter().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use c2pa::Signer;
    use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ED25519};

    /// A self-signed certificate and its key, both PEM.
    fn certificate(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        let params = rcgen::CertificateParams::new(vec![]).unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    /// Why `KeySigner::new` refuses a chain and key for ES256.
    fn refusal(chain: &[u8], key: &[u8]) -> String {
        KeySigner::new(chain, key, c2pa::SigningAlg::Es256)
            .err()
            .expect("refused")
    }

    /// What COSE carries, checked with the certificate's public key: `r‖s`
    /// (64 bytes) for ES256, the plain signature for Ed25519.
    #[test]
    fn signatures_are_the_bytes_cose_carries_and_verify_with_the_certificate() {
        for (rcgen_alg, alg, verify) in [
            (
                &rcgen::PKCS_ECDSA_P256_SHA256,
                c2pa::SigningAlg::Es256,
                &ECDSA_P256_SHA256_FIXED as &dyn ring::signature::VerificationAlgorithm,
            ),
            (&rcgen::PKCS_ED25519, c2pa::SigningAlg::Ed25519, &ED25519),
        ] {
            let (chain, key) = certificate(rcgen_alg);
            let signer = KeySigner::new(chain.as_bytes(), key.as_bytes(), alg).unwrap();
            let signature = signer.sign(b"claim").unwrap();
            assert_eq!(signature.len(), 64, "{alg}");
            let (_, pem) = x509_parser::pem::parse_x509_pem(chain.as_bytes()).unwrap();
            let leaf = pem.parse_x509().unwrap();
            let public = UnparsedPublicKey::new(verify, leaf.public_key().subject_public_key.data.to_vec());
            assert!(public.verify(b"claim", &signature).is_ok(), "{alg}");
            assert!(public.verify(b"other claim", &signature).is_err(), "{alg}");
            assert_eq!(signer.alg(), alg);
            assert_eq!(signer.certs().unwrap(), vec![pem.contents.clone()]);
        }
    }

    #[test]
    fn a_chain_file_holding_anything_but_certificates_is_refused() {
        let (chain, key) = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let with_key = format!("{chain}{key}");
        let error = refusal(with_key.as_bytes(), key.as_bytes());
        assert!(error.contains("PRIVATE KEY block"), "{error}");
        assert!(!error.contains("BEGIN"), "no key material in the error: {error}");
        let error = refusal(b"", key.as_bytes());
        assert!(error.contains("no certificate"), "{error}");
    }

    #[test]
    fn a_key_that_is_not_the_leafs_is_refused() {
        let (chain, _) = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let (_, other) = certificate(&rcgen::PKCS_ECDSA_P256_SHA256);
        let error = refusal(chain.as_bytes(), other.as_bytes());
        assert!(error.contains("not the signing certificate's"), "{error}");
    }

    #[test]
    fn a_key_of_another_kind_is_refused() {
        let (chain, key) = certificate(&rcgen::PKCS_ED25519);
        let error = refusal(chain.as_bytes(), key.as_bytes());
        assert!(error.contains("P-256"), "{error}");
        assert!(KeySigner::new(chain.as_bytes(), key.as_bytes(), c2pa::SigningAlg::Es384).is_err());
    }
}
