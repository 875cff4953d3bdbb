//! The raw signature under a manifest, by `ring` with the private key parsed
//! once per key load: profiling the stack showed parsing the PEM key and
//! deriving its public key for every image, then signing with the pure-Rust
//! P-256, cost more than the rest of a call. c2pa asks for the same bytes
//! either way: a fixed-size `r‖s` for ES256 (COSE), 64 bytes for Ed25519.

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

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
    /// Parses the chain and the PKCS#8 key (both PEM) for `alg`, ES256 or Ed25519.
    pub fn new(chain_pem: &[u8], key_pem: &[u8], alg: c2pa::SigningAlg) -> Result<Self, String> {
        let chain = x509_parser::pem::Pem::iter_from_buffer(chain_pem)
            .map(|pem| pem.map(|pem| pem.contents))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the certificate chain is not PEM: {e}"))?;
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
    fn a_key_of_another_kind_is_refused() {
        let (chain, key) = certificate(&rcgen::PKCS_ED25519);
        let error = KeySigner::new(chain.as_bytes(), key.as_bytes(), c2pa::SigningAlg::Es256)
            .err()
            .unwrap();
        assert!(error.contains("P-256"), "{error}");
        assert!(KeySigner::new(chain.as_bytes(), key.as_bytes(), c2pa::SigningAlg::Es384).is_err());
    }
}
