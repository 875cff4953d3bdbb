use jwt_simple::prelude::*;
use serde_json::json;

use super::*;
use crate::jwt::{JwksEndpoint, JwtSpec};

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
        issuer: Some(ISS.into()),
        audiences: Some(vec![AUD.into()]),
        leeway_seconds: 30,
        jwks: Some(jwks),
        ..JwtSpec::default()
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
        issuer: Some(ISS.into()),
        audiences: Some(vec![AUD.into()]),
        jwks: Some(jwks),
        ..JwtSpec::default()
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
        issuer: Some(ISS.into()),
        audiences: Some(vec![AUD.into()]),
        leeway_seconds: 30,
        jwks_uri: Some(crate::jwt::JwksUriSpec {
            url: None,
            cluster: Some("iam".into()),
            path: Some("/jwks".into()),
            authority: Some("iam".into()),
            refresh_seconds: 60,
            retry_seconds: 5,
            timeout_ms: 1000,
        }),
        ..JwtSpec::default()
    })
    .unwrap();
    let es_token = k.es.sign(good_claims()).unwrap();
    let ed_token = k.ed.sign(good_claims()).unwrap();
    assert!(!remote.has_keys());
    assert_eq!(remote.verify_token(&es_token, NOW), Err(AuthError::KeysNotLoaded));
    let jwk = |public: String| serde_json::from_str::<Value>(&public).unwrap();
    let es_only = remote
        .replace_keys(0, &json!({"keys": [jwk(k.es.public_key().to_jwk())]}))
        .unwrap();
    assert_eq!(es_only.len(), 1);
    let (_, es_key) = remote.verify_token_with_key(&es_token, NOW).unwrap();
    assert!(es_only.holds(es_key), "a token names the key that verified it");
    // The same key again, its members in another order and with extra ones: the same key.
    let mut reordered: Map<String, Value> = jwk(k.es.public_key().to_jwk()).as_object().unwrap().clone();
    reordered.insert("use".into(), json!("sig"));
    let reordered: Map<String, Value> = reordered.into_iter().rev().collect();
    assert!(remote
        .replace_keys(0, &json!({"keys": [reordered]}))
        .unwrap()
        .holds(es_key));
    // Another key under the same `kid` is another key.
    let stranger = remote
        .replace_keys(0, &json!({"keys": [jwk(k.stranger.public_key().to_jwk())]}))
        .unwrap();
    assert!(!stranger.holds(es_key));
    remote
        .replace_keys(0, &json!({"keys": [jwk(k.es.public_key().to_jwk())]}))
        .unwrap();
    assert!(remote.verify_token(&es_token, NOW).is_ok());
    // Rotation: the new set replaces the old one.
    remote
        .replace_keys(0, &json!({"keys": [jwk(k.ed.public_key().to_jwk())]}))
        .unwrap();
    assert!(remote.verify_token(&ed_token, NOW).is_ok());
    assert_eq!(remote.verify_token(&es_token, NOW), Err(AuthError::UnknownKey));
    // A broken document leaves the last good keys in place.
    assert!(remote.replace_keys(0, &json!({"keys": []})).is_err());
    assert!(remote.replace_keys(0, &json!("garbage")).is_err());
    assert!(remote.verify_token(&ed_token, NOW).is_ok());
}

const ENTRA: &str = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
const OKTA: &str = "https://acme.okta.com/oauth2/default";
const M2M: &str = "https://m2m.example.test";
const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

struct IdpKeys {
    entra: ES256KeyPair,
    okta: Ed25519KeyPair,
    /// The machine-to-machine IdP's key, under the same `kid` as Entra's.
    m2m: ES256KeyPair,
}

fn idp_keys() -> &'static IdpKeys {
    static KEYS: std::sync::OnceLock<IdpKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| IdpKeys {
        entra: ES256KeyPair::generate().with_key_id("k1"),
        okta: Ed25519KeyPair::generate().with_key_id("okta-1"),
        m2m: ES256KeyPair::generate().with_key_id("k1"),
    })
}

/// Three IdPs at once, each with its own claim rules.
fn several() -> JwtVerifier {
    let k = idp_keys();
    let jwks = |public: String| json!({"keys": [serde_json::from_str::<Value>(&public).unwrap()]});
    let spec: JwtSpec = serde_json::from_value(json!({"issuers": [
        {"issuer": ENTRA, "audiences": ["api://mcp-image-gateway"], "org_claim": "/tid",
         "scope_claim": "scp", "jwks": jwks(k.entra.public_key().to_jwk())},
        {"issuer": OKTA, "audiences": [AUD], "user_claim": "uid", "scope_claim": "scp",
         "allowed_orgs": ["acme", "initech"], "jwks": jwks(k.okta.public_key().to_jwk())},
        {"issuer": M2M, "audiences": [AUD], "org": "robots", "jwks": jwks(k.m2m.public_key().to_jwk())}
    ]}))
    .unwrap();
    JwtVerifier::from_spec(&spec).unwrap()
}

fn idp_claims(iss: Option<&str>, aud: &str, custom: Value) -> JWTClaims<Value> {
    let c = claims(custom, NOW - 60, 3600).with_audience(aud);
    match iss {
        Some(iss) => c.with_issuer(iss),
        None => c,
    }
}

#[test]
fn several_issuers_each_with_its_own_claims() {
    let k = idp_keys();
    let v = several();
    let entra = |custom: Value| idp_claims(Some(ENTRA), "api://mcp-image-gateway", custom);
    let okta = |custom: Value| idp_claims(Some(OKTA), AUD, custom);
    let ok = |user: &str, org: &str, scopes: &[&str]| {
        Ok((
            user.to_string(),
            org.to_string(),
            scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        ))
    };
    /// User, organisation, scopes.
    type Caller = (String, String, Vec<String>);
    let cases: Vec<(&str, String, Result<Caller, AuthError>)> = vec![
        (
            "entra: org from the /tid pointer, scp a string",
            k.entra
                .sign(entra(
                    json!({"sub": "u-1", "tid": TENANT, "scp": "images:generate images:edit"}),
                ))
                .unwrap(),
            ok("u-1", TENANT, &["images:generate", "images:edit"]),
        ),
        (
            "okta: user claim uid, scp an array",
            k.okta
                .sign(okta(
                    json!({"sub": "00u1", "uid": "alice@acme", "org": "acme", "scp": ["images:generate", 7, "x"]}),
                ))
                .unwrap(),
            ok("alice@acme", "acme", &["images:generate", "x"]),
        ),
        (
            "okta: array elements split like the string form",
            k.okta
                .sign(okta(
                    json!({"sub": "00u1", "uid": "bob", "org": "initech", "scp": ["images:generate images:admin"]}),
                ))
                .unwrap(),
            ok("bob", "initech", &["images:generate", "images:admin"]),
        ),
        (
            "okta may not vouch for an organisation it is not allowed",
            k.okta
                .sign(okta(
                    json!({"sub": "00u1", "uid": "mallory", "org": "globex", "scp": []}),
                ))
                .unwrap(),
            Err(AuthError::OrgNotAllowed),
        ),
        (
            "fixed org: the token's own org claim is not read",
            k.m2m
                .sign(idp_claims(
                    Some(M2M),
                    AUD,
                    json!({"sub": "svc-1", "org": "acme", "scope": "images:generate"}),
                ))
                .unwrap(),
            ok("svc-1", "robots", &["images:generate"]),
        ),
        (
            "unknown issuer",
            k.entra
                .sign(idp_claims(
                    Some("https://evil.example"),
                    AUD,
                    json!({"sub": "u", "org": "acme"}),
                ))
                .unwrap(),
            Err(AuthError::WrongIssuer),
        ),
        (
            "no issuer",
            k.entra
                .sign(idp_claims(None, AUD, json!({"sub": "u", "org": "acme"})))
                .unwrap(),
            Err(AuthError::WrongIssuer),
        ),
        (
            "entra's iss signed by the m2m IdP's key under the same kid",
            k.m2m.sign(entra(json!({"sub": "u", "tid": TENANT}))).unwrap(),
            Err(AuthError::BadSignature),
        ),
        (
            "entra's iss signed by okta's key",
            k.okta.sign(entra(json!({"sub": "u", "tid": TENANT}))).unwrap(),
            Err(AuthError::UnknownKey),
        ),
        (
            "m2m's iss signed by entra's key under the same kid",
            k.entra
                .sign(idp_claims(Some(M2M), AUD, json!({"sub": "svc-1"})))
                .unwrap(),
            Err(AuthError::BadSignature),
        ),
        (
            "entra audience is its own application's",
            k.entra
                .sign(idp_claims(Some(ENTRA), AUD, json!({"sub": "u", "tid": TENANT})))
                .unwrap(),
            Err(AuthError::WrongAudience),
        ),
        (
            "entra without tid",
            k.entra.sign(entra(json!({"sub": "u", "org": "acme"}))).unwrap(),
            Err(AuthError::MissingOrg),
        ),
        (
            "okta without its user claim",
            k.okta.sign(okta(json!({"sub": "00u1", "org": "acme"}))).unwrap(),
            Err(AuthError::MissingSubject),
        ),
        (
            "a pointer's value must be plain",
            k.entra.sign(entra(json!({"sub": "u", "tid": "../etc"}))).unwrap(),
            Err(AuthError::InvalidIdentity),
        ),
        (
            "payload not JSON",
            format!("{}.{}.c2ln", b64(b"{}"), b64(b"nope")),
            Err(AuthError::MalformedToken),
        ),
    ];
    for (name, token, expected) in cases {
        let got = v.verify_token(&token, NOW).map(|id| (id.user, id.org, id.scopes));
        assert_eq!(got, expected, "case: {name}");
    }
}

#[test]
fn claim_paths_reach_nested_and_registered_claims() {
    let k = keys();
    let spec: JwtSpec = serde_json::from_value(json!({
        "issuer": ISS, "audiences": [AUD], "org_claim": "/ext/org~1unit", "user_claim": "/sub",
        "scope_claim": "/ext/grants",
        "jwks": {"keys": [serde_json::from_str::<Value>(&k.es.public_key().to_jwk()).unwrap()]}
    }))
    .unwrap();
    let v = JwtVerifier::from_spec(&spec).unwrap();
    let token = k.es.sign(good_claims().with_subject("bob")).unwrap();
    assert_eq!(v.verify_token(&token, NOW), Err(AuthError::MissingOrg));
    let nested = claims(
        json!({"ext": {"org/unit": "globex", "grants": ["a", "b"]}}),
        NOW - 60,
        3600,
    )
    .with_issuer(ISS)
    .with_audience(AUD)
    .with_subject("bob");
    let id = v.verify_token(&k.es.sign(nested).unwrap(), NOW).unwrap();
    assert_eq!((id.user.as_str(), id.org.as_str()), ("bob", "globex"));
    assert_eq!(id.scopes, vec!["a".to_string(), "b".to_string()]);
}

#[test]
fn a_refresh_of_one_issuer_keeps_the_others_tokens() {
    let k = idp_keys();
    let v = several();
    let token = k
        .entra
        .sign(idp_claims(
            Some(ENTRA),
            "api://mcp-image-gateway",
            json!({"sub": "u", "tid": TENANT}),
        ))
        .unwrap();
    let (_, entra_key) = v.verify_token_with_key(&token, NOW).unwrap();
    let okta_set = v
        .replace_keys(
            1,
            &json!({"keys": [serde_json::from_str::<Value>(&k.okta.public_key().to_jwk()).unwrap()]}),
        )
        .unwrap();
    assert!(okta_set.keeps(entra_key), "another issuer's refresh keeps the token");
    assert!(!okta_set.holds(entra_key));
    let entra_set = v
        .replace_keys(
            0,
            &json!({"keys": [serde_json::from_str::<Value>(&k.m2m.public_key().to_jwk()).unwrap()]}),
        )
        .unwrap();
    assert!(!entra_set.keeps(entra_key), "its own issuer's rotation drops it");
    assert!(v.replace_keys(3, &json!({"keys": []})).is_err());
}

#[test]
fn issuer_settings_errors_name_the_issuer_and_field() {
    let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1",
        "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]});
    let good = json!({"issuer": "https://a", "audiences": ["x"], "jwks": jwks});
    let with = |patch: Value| {
        let mut issuer = good.clone();
        for (key, value) in patch.as_object().unwrap() {
            issuer[key] = value.clone();
        }
        json!({"issuers": [good.clone(), issuer]})
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "org and org_claim",
            with(json!({"issuer": "https://b", "org": "acme", "org_claim": "tid"})),
            "`jwt.issuers[1]`: set one of `org_claim` and `org`",
        ),
        (
            "fixed org not plain",
            with(json!({"issuer": "https://b", "org": "a/b"})),
            "`jwt.issuers[1]`: `org` must be a plain identifier",
        ),
        (
            "empty pointer",
            with(json!({"issuer": "https://b", "org_claim": "/"})),
            "`jwt.issuers[1]`: `org_claim` must be a claim name, or a JSON pointer",
        ),
        (
            "empty scope claim",
            with(json!({"issuer": "https://b", "scope_claim": ""})),
            "`jwt.issuers[1]`: `scope_claim`",
        ),
        (
            "duplicate issuer",
            with(json!({})),
            "`jwt.issuers[1]`: the issuer \"https://a\" is listed twice",
        ),
        (
            "no audience",
            with(json!({"issuer": "https://b", "audiences": []})),
            "`jwt.issuers[1]`: `audiences`",
        ),
        (
            "plain http off loopback",
            with(json!({"issuer": "https://b", "jwks": null, "jwks_uri": {"url": "http://idp.example.com/keys"}})),
            "`jwt.issuers[1]`: `jwks_uri.url`: keys are fetched over https",
        ),
        (
            "url and cluster",
            with(json!({"issuer": "https://b", "jwks": null,
                "jwks_uri": {"url": "https://idp.example.com/keys", "cluster": "c"}})),
            "`jwt.issuers[1]`: `jwks_uri`: give `url`, or `cluster`",
        ),
        (
            "both jwks sources",
            with(json!({"issuer": "https://b", "jwks_uri": {"url": "https://idp.example.com/keys"}})),
            "`jwt.issuers[1]`: set exactly one of `jwks` and `jwks_uri`",
        ),
        (
            "empty list",
            json!({"issuers": []}),
            "`jwt`: `issuers` must list at least one issuer",
        ),
        (
            "list and shorthand",
            json!({"issuers": [good.clone()], "issuer": "https://c"}),
            "`jwt`: list the issuers in `issuers`",
        ),
        (
            "shorthand keeps its location",
            json!({"issuer": "https://c", "audiences": ["x"], "jwks": {"keys": []}}),
            "`jwt`: `jwks` has no usable keys",
        ),
    ];
    for (name, settings, expected) in cases {
        let spec: JwtSpec = serde_json::from_value(settings).unwrap();
        let error = JwtVerifier::from_spec(&spec)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains(expected), "{name}: {error}");
    }
    let unknown: Result<JwtSpec, _> = serde_json::from_value(json!({"issuers": [{"issuer": "i", "audience": ["x"]}]}));
    assert!(unknown.unwrap_err().to_string().contains("unknown field `audience`"));
}

#[test]
fn jwks_urls_become_a_cluster_path_and_authority() {
    /// Cluster, path, authority, TLS; or a part of the refusal.
    type Expected<'a> = Result<(&'a str, &'a str, &'a str, bool), &'a str>;
    let cases: Vec<(&str, Expected)> = vec![
        (
            "https://login.microsoftonline.com/common/discovery/v2.0/keys",
            Ok((
                "jwks_login_microsoftonline_com_443",
                "/common/discovery/v2.0/keys",
                "login.microsoftonline.com",
                true,
            )),
        ),
        (
            "https://IdP.Example.com:8443/keys?tenant=a",
            Ok((
                "jwks_idp_example_com_8443",
                "/keys?tenant=a",
                "idp.example.com:8443",
                true,
            )),
        ),
        (
            "https://idp.example.com",
            Ok(("jwks_idp_example_com_443", "/", "idp.example.com", true)),
        ),
        (
            "http://127.0.0.1:4444/jwks.json",
            Ok(("jwks_127_0_0_1_4444", "/jwks.json", "127.0.0.1:4444", false)),
        ),
        ("http://[::1]:80/k", Ok(("jwks___1_80", "/k", "[::1]", false))),
        (
            "http://localhost:9/k",
            Ok(("jwks_localhost_9", "/k", "localhost:9", false)),
        ),
        ("http://idp.example.com/keys", Err("over https")),
        // Loopback by address, not by a name that starts like one.
        ("http://127.0.0.1.evil.example/keys", Err("over https")),
        ("http://127.evil.example/keys", Err("over https")),
        ("http://[::1]junk/keys", Err("after ']'")),
        ("ftp://idp.example.com/keys", Err("scheme")),
        ("https://user:pw@idp.example.com/keys", Err("credentials")),
        ("https://idp.example.com:0/keys", Err("not a port")),
        ("https://idp.example.com:99999/keys", Err("not a port")),
        ("https:///keys", Err("not a host")),
        ("https://idp_example.com/keys", Err("not a host")),
        ("https://idp.example.com/keys#x", Err("fragment")),
        ("idp.example.com/keys", Err("absolute")),
    ];
    // Different endpoints never share a cluster.
    let cluster = |url: &str| JwksEndpoint::parse(url).unwrap().cluster;
    assert_ne!(cluster("https://a-b.example/k"), cluster("https://a.b.example/k"));
    assert_ne!(cluster("http://127.0.0.1:8443/k"), cluster("https://127.0.0.1:8443/k"));
    assert_eq!(cluster("https://a.example/k"), cluster("https://A.example:443/other"));
    for (url, expected) in cases {
        match (JwksEndpoint::parse(url), expected) {
            (Ok(e), Ok((cluster, path, authority, tls))) => {
                // The readable part, then 8 hex digits of the endpoint's hash.
                let (readable, hash) = e.cluster.rsplit_once('_').unwrap();
                assert_eq!(
                    (readable, e.path.as_str(), e.authority.as_str(), e.tls),
                    (cluster, path, authority, tls),
                    "{url}"
                );
                assert!(hash.len() == 8 && hash.bytes().all(|b| b.is_ascii_hexdigit()), "{url}");
            }
            (Err(error), Err(part)) => assert!(error.contains(part), "{url}: {error}"),
            (got, _) => panic!("{url}: {got:?}"),
        }
    }
}
