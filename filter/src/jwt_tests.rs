use jwt_simple::prelude::*;
use serde_json::json;

use super::*;
use crate::jwt::JwtSpec;

const NOW: u64 = 1_800_000_000;
const ISS: &str = "https://iam.example.test";
const AUD: &str = "https://gw.example.test/mcp";

struct Keys {
    es: ES256KeyPair,
    ed: Ed25519KeyPair,
    rs: RS256KeyPair,
    stranger: ES256KeyPair,
}

fn keys() -> &'static Keys {
    static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| Keys {
        es: ES256KeyPair::generate().with_key_id("es"),
        ed: Ed25519KeyPair::generate().with_key_id("ed"),
        rs: RS256KeyPair::generate(2048).unwrap().with_key_id("rs"),
        stranger: ES256KeyPair::generate().with_key_id("es"),
    })
}

fn verifier() -> JwtVerifier {
    let k = keys();
    let jwks = json!({"keys": [
        serde_json::from_str::<Value>(&k.es.public_key().to_jwk()).unwrap(),
        serde_json::from_str::<Value>(&k.ed.public_key().to_jwk()).unwrap(),
        serde_json::from_str::<Value>(&k.rs.public_key().to_jwk()).unwrap(),
    ]});
    JwtVerifier::from_spec(&JwtSpec {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        org_claim: "org".into(),
        leeway_seconds: 30,
        jwks: Some(jwks),
        jwks_uri: None,
        realm: "r".into(),
    })
    .unwrap()
}

fn claims(custom: Value, valid_from: u64, valid_for: u64) -> JWTClaims<Value> {
    let mut c = Claims::with_custom_claims(custom, Duration::from_secs(valid_for));
    c.issued_at = Some(UnixTimeStamp::from_secs(valid_from));
    c.invalid_before = Some(UnixTimeStamp::from_secs(valid_from));
    c.expires_at = Some(UnixTimeStamp::from_secs(valid_from + valid_for));
    c
}

fn good_claims() -> JWTClaims<Value> {
    claims(json!({"org": "acme", "scope": "images:generate"}), NOW - 60, 3600)
        .with_issuer(ISS)
        .with_audience(AUD)
        .with_subject("alice")
}

fn b64(bytes: &[u8]) -> String {
    use jwt_simple::reexports::ct_codecs::{Base64UrlSafeNoPadding, Encoder};
    Base64UrlSafeNoPadding::encode_to_string(bytes).unwrap()
}

#[test]
fn accepts_each_supported_algorithm() {
    let k = keys();
    let v = verifier();
    for token in [
        k.es.sign(good_claims()).unwrap(),
        k.ed.sign(good_claims()).unwrap(),
        k.rs.sign(good_claims()).unwrap(),
    ] {
        let id = v.verify_token(&token, NOW).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.org, "acme");
        assert_eq!(id.scopes, vec!["images:generate".to_string()]);
        assert_eq!(id.expires_at, NOW - 60 + 3600);
    }
}

#[test]
fn refusals_have_precise_causes() {
    let k = keys();
    let v = verifier();
    let good = k.es.sign(good_claims()).unwrap();
    let (head, rest) = good.split_once('.').unwrap();
    let (payload, sig) = rest.split_once('.').unwrap();
    let mut flipped_sig = sig.to_string().into_bytes();
    flipped_sig[5] = if flipped_sig[5] == b'A' { b'B' } else { b'A' };
    let flipped_sig = String::from_utf8(flipped_sig).unwrap();
    let none_header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let hs_header = b64(br#"{"alg":"HS256","typ":"JWT","kid":"es"}"#);
    let other_payload = b64(
        json!({"sub": "mallory", "org": "acme", "iss": ISS, "aud": AUD, "exp": NOW + 100})
            .to_string()
            .as_bytes(),
    );

    let cases: Vec<(&str, String, AuthError)> = vec![
        (
            "alg none",
            format!("{none_header}.{payload}."),
            AuthError::UnsupportedAlgorithm,
        ),
        (
            "hmac alg",
            format!("{hs_header}.{payload}.{sig}"),
            AuthError::UnsupportedAlgorithm,
        ),
        (
            "tampered signature",
            format!("{head}.{payload}.{flipped_sig}"),
            AuthError::BadSignature,
        ),
        (
            "swapped payload",
            format!("{head}.{other_payload}.{sig}"),
            AuthError::BadSignature,
        ),
        (
            "stranger key, same kid",
            k.stranger.sign(good_claims()).unwrap(),
            AuthError::BadSignature,
        ),
        (
            "unknown kid",
            ES256KeyPair::from_bytes(&k.es.to_bytes())
                .unwrap()
                .with_key_id("nope")
                .sign(good_claims())
                .unwrap(),
            AuthError::UnknownKey,
        ),
        (
            "expired beyond leeway",
            k.es.sign(
                claims(json!({"org": "acme"}), NOW - 4000, 3600)
                    .with_issuer(ISS)
                    .with_audience(AUD)
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::Expired,
        ),
        (
            "not yet valid",
            k.es.sign(
                claims(json!({"org": "acme"}), NOW + 600, 3600)
                    .with_issuer(ISS)
                    .with_audience(AUD)
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::NotYetValid,
        ),
        (
            "wrong issuer",
            k.es.sign(
                claims(json!({"org": "acme"}), NOW, 60)
                    .with_issuer("https://evil")
                    .with_audience(AUD)
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::WrongIssuer,
        ),
        (
            "wrong audience",
            k.es.sign(
                claims(json!({"org": "acme"}), NOW, 60)
                    .with_issuer(ISS)
                    .with_audience("https://other/mcp")
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::WrongAudience,
        ),
        (
            "no subject",
            k.es.sign(
                claims(json!({"org": "acme"}), NOW, 60)
                    .with_issuer(ISS)
                    .with_audience(AUD),
            )
            .unwrap(),
            AuthError::MissingSubject,
        ),
        (
            "no org",
            k.es.sign(
                claims(json!({}), NOW, 60)
                    .with_issuer(ISS)
                    .with_audience(AUD)
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::MissingOrg,
        ),
        (
            "org not a string",
            k.es.sign(
                claims(json!({"org": 7}), NOW, 60)
                    .with_issuer(ISS)
                    .with_audience(AUD)
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::MissingOrg,
        ),
        (
            "org with path traversal",
            k.es.sign(
                claims(json!({"org": "../x"}), NOW, 60)
                    .with_issuer(ISS)
                    .with_audience(AUD)
                    .with_subject("a"),
            )
            .unwrap(),
            AuthError::InvalidIdentity,
        ),
        (
            "subject with newline",
            k.es.sign(
                claims(json!({"org": "acme"}), NOW, 60)
                    .with_issuer(ISS)
                    .with_audience(AUD)
                    .with_subject("a\nb"),
            )
            .unwrap(),
            AuthError::InvalidIdentity,
        ),
        ("garbage", "not-a-jwt".into(), AuthError::MalformedToken),
        ("empty segments", "..".into(), AuthError::MalformedToken),
        ("huge token", "a".repeat(MAX_TOKEN_BYTES + 1), AuthError::MalformedToken),
    ];
    for (name, token, expected) in cases {
        assert_eq!(v.verify_token(&token, NOW), Err(expected), "case: {name}");
    }
}

#[test]
fn leeway_accepts_small_skew() {
    let k = keys();
    let token = k.es.sign(good_claims()).unwrap();
    let expiry = NOW - 60 + 3600;
    assert!(verifier().verify_token(&token, expiry + 20).is_ok());
    assert_eq!(verifier().verify_token(&token, expiry + 40), Err(AuthError::Expired));
}

#[test]
fn authorization_header_forms() {
    let v = verifier();
    let token = keys().ed.sign(good_claims()).unwrap();
    let cases: Vec<(&str, Option<String>, Result<(), AuthError>)> = vec![
        ("absent", None, Err(AuthError::MissingToken)),
        (
            "basic scheme",
            Some("Basic dXNlcjpwYXNz".into()),
            Err(AuthError::MalformedHeader),
        ),
        ("no token", Some("Bearer ".into()), Err(AuthError::MalformedHeader)),
        (
            "no space",
            Some(format!("Bearer{token}")),
            Err(AuthError::MalformedHeader),
        ),
        ("lowercase scheme", Some(format!("bearer {token}")), Ok(())),
        ("canonical", Some(format!("Bearer {token}")), Ok(())),
    ];
    for (name, header, expected) in cases {
        let got = v.verify_header(header.as_deref(), NOW).map(|_| ());
        assert_eq!(got, expected, "case: {name}");
    }
}

#[test]
fn jwks_errors_name_the_key() {
    let spec = |jwks: Value| JwtSpec {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        org_claim: "org".into(),
        leeway_seconds: 0,
        jwks: Some(jwks),
        jwks_uri: None,
        realm: "r".into(),
    };
    let cases = [
        (json!([]), "`jwks` must be an object"),
        (
            json!({"keys": [{"kty": "oct", "k": "AAAA"}]}),
            "`jwks.keys[0]`: unsupported key type",
        ),
        (
            json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}),
            "`jwks.keys[0]`",
        ),
        (json!({"keys": []}), "no usable keys"),
    ];
    for (jwks, expected) in cases {
        let err = JwtVerifier::from_spec(&spec(jwks.clone())).err().expect("refused");
        assert!(err.to_string().contains(expected), "{jwks}: {err}");
    }
}

#[test]
fn fetched_key_sets_replace_the_old_and_bad_ones_are_ignored() {
    let k = keys();
    let remote = JwtVerifier::from_spec(&JwtSpec {
        issuer: ISS.into(),
        audiences: vec![AUD.into()],
        org_claim: "org".into(),
        leeway_seconds: 30,
        jwks: None,
        jwks_uri: Some(crate::jwt::JwksUriSpec {
            cluster: "iam".into(),
            path: "/jwks".into(),
            authority: "iam".into(),
            refresh_seconds: 60,
            retry_seconds: 5,
            timeout_ms: 1000,
        }),
        realm: "r".into(),
    })
    .unwrap();
    let es_token = k.es.sign(good_claims()).unwrap();
    let ed_token = k.ed.sign(good_claims()).unwrap();
    assert!(!remote.has_keys());
    assert_eq!(remote.verify_token(&es_token, NOW), Err(AuthError::KeysNotLoaded));
    let jwk = |public: String| serde_json::from_str::<Value>(&public).unwrap();
    let es_only = remote
        .replace_keys(&json!({"keys": [jwk(k.es.public_key().to_jwk())]}))
        .unwrap();
    assert_eq!(es_only.len(), 1);
    let (_, es_key) = remote.verify_token_with_key(&es_token, NOW).unwrap();
    assert!(es_only.holds(es_key), "a token names the key that verified it");
    // The same key again, its members in another order and with extra ones: the same key.
    let mut reordered: Map<String, Value> = jwk(k.es.public_key().to_jwk()).as_object().unwrap().clone();
    reordered.insert("use".into(), json!("sig"));
    let reordered: Map<String, Value> = reordered.into_iter().rev().collect();
    assert!(remote
        .replace_keys(&json!({"keys": [reordered]}))
        .unwrap()
        .holds(es_key));
    // Another key under the same `kid` is another key.
    let stranger = remote
        .replace_keys(&json!({"keys": [jwk(k.stranger.public_key().to_jwk())]}))
        .unwrap();
    assert!(!stranger.holds(es_key));
    remote
        .replace_keys(&json!({"keys": [jwk(k.es.public_key().to_jwk())]}))
        .unwrap();
    assert!(remote.verify_token(&es_token, NOW).is_ok());
    // Rotation: the new set replaces the old one.
    remote
        .replace_keys(&json!({"keys": [jwk(k.ed.public_key().to_jwk())]}))
        .unwrap();
    assert!(remote.verify_token(&ed_token, NOW).is_ok());
    assert_eq!(remote.verify_token(&es_token, NOW), Err(AuthError::UnknownKey));
    // A broken document leaves the last good keys in place.
    assert!(remote.replace_keys(&json!({"keys": []})).is_err());
    assert!(remote.replace_keys(&json!("garbage")).is_err());
    assert!(remote.verify_token(&ed_token, NOW).is_ok());
}
