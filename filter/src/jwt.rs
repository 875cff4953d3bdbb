//! IAM JWT verification for one or several trusted issuers (identity
//! providers). A token is routed to its issuer by its (unverified) `iss`,
//! then verified with that issuer's keys only: keys from a JWKS, selected by
//! `kid` and `alg`, signature and registered claims checked by `jwt-simple`.
//! The identity is read where that issuer puts it: the user claim, the
//! organisation (a claim, a JSON pointer such as Entra's `/tid`, or a fixed
//! organisation), and the scopes (a space-separated string or an array, as
//! Entra's and Okta's `scp`).

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_simple::algorithms::{
    ECDSAP256PublicKeyLike, ES256PublicKey, Ed25519PublicKey, EdDSAPublicKeyLike, RS256PublicKey, RSAPublicKeyLike,
};
use jwt_simple::common::VerificationOptions;
use jwt_simple::prelude::{Duration, JWTClaims, UnixTimeStamp};
use jwt_simple::token::Token;
use jwt_simple::JWTError;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8192;

/// A caller whose token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub org: String,
    pub scopes: Vec<String>,
    /// Unix seconds after which the token is no longer valid (`u64::MAX` for API keys).
    pub expires_at: u64,
    /// The API key's id, for API-key callers.
    pub key_id: Option<String>,
}

/// Why a bearer token was refused. Each variant is one cause, reported to the
/// client in `WWW-Authenticate` and counted by cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token: send `Authorization: Bearer <JWT>`")]
    MissingToken,
    #[error("the Authorization header is not of the form `Bearer <token>`")]
    MalformedHeader,
    #[error("the bearer token is not a well-formed JWT")]
    MalformedToken,
    #[error("the token's `alg` is not accepted (allowed: RS256, ES256, EdDSA)")]
    UnsupportedAlgorithm,
    #[error("the token's `kid` does not match any configured key")]
    UnknownKey,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token has no `exp` claim")]
    MissingExpiry,
    #[error("the token's issuer is not trusted")]
    WrongIssuer,
    #[error("the token's audience is not this server")]
    WrongAudience,
    #[error("the token has no user claim (`sub`, unless its issuer names another)")]
    MissingSubject,
    #[error("the token has no organisation claim")]
    MissingOrg,
    #[error("the token's subject or organisation contains characters that are not allowed")]
    InvalidIdentity,
    #[error("the token's issuer may not vouch for its organisation")]
    OrgNotAllowed,
    #[error("the API key is not valid")]
    UnknownApiKey,
    #[error("the identity provider's keys are not loaded yet; retry shortly")]
    KeysNotLoaded,
}

impl AuthError {
    /// A stable label for metrics and logs.
    pub fn cause(self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::MalformedHeader => "malformed_header",
            AuthError::MalformedToken => "malformed_token",
            AuthError::UnsupportedAlgorithm => "unsupported_alg",
            AuthError::UnknownKey => "unknown_kid",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::MissingExpiry => "missing_exp",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingSubject => "missing_sub",
            AuthError::MissingOrg => "missing_org",
            AuthError::InvalidIdentity => "invalid_identity",
            AuthError::OrgNotAllowed => "org_not_allowed",
            AuthError::UnknownApiKey => "unknown_api_key",
            AuthError::KeysNotLoaded => "jwks_not_loaded",
        }
    }
}

/// Why an issuer's settings or a JWKS could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum JwtVerifierError {
    #[error("`jwks` must be an object with a `keys` array")]
    NotAJwks,
    #[error("`jwks.keys[{index}]`: {reason}")]
    BadKey { index: usize, reason: String },
    #[error("`jwks` has no usable keys")]
    NoKeys,
    #[error("`issuer` must not be empty")]
    EmptyIssuer,
    #[error("`audiences` must list at least one audience")]
    NoAudience,
    #[error("set exactly one of `jwks` and `jwks_uri`")]
    KeySource,
    #[error("`jwks_uri`: give `url`, or `cluster`, `path` (starting with '/') and `authority`; and periods must be at least 1")]
    BadUri,
    #[error("`jwks_uri.url`: {0}")]
    BadUrl(String),
    #[error("set one of `org_claim` and `org`, not both")]
    OrgSource,
    #[error("`{0}` must be a claim name, or a JSON pointer starting with '/' (e.g. \"/tid\")")]
    BadClaim(&'static str),
    #[error("`org` must be a plain identifier (letters, digits, '-', '_', '.', '@', '|', ':')")]
    BadOrg,
    #[error("the issuer {0:?} is listed twice")]
    DuplicateIssuer(String),
    #[error("`issuers` must list at least one issuer")]
    NoIssuers,
    #[error("list the issuers in `issuers`, or give one with the shorthand (`issuer`, `audiences`, …), not both")]
    Shorthand,
    #[error("no issuer {0} in these settings")]
    NoSuchIssuer(usize),
}

/// A settings error and where it is: `jwt` (the shorthand) or `jwt.issuers[N]`.
#[derive(Debug, thiserror::Error)]
#[error("`{at}`: {cause}")]
pub struct JwtSettingsError {
    pub at: String,
    pub cause: JwtVerifierError,
}

enum PublicKey {
    Rs256(Box<RS256PublicKey>),
    Es256(ES256PublicKey),
    EdDsa(Ed25519PublicKey),
}

impl PublicKey {
    fn alg(&self) -> &'static str {
        match self {
            PublicKey::Rs256(_) => "RS256",
            PublicKey::Es256(_) => "ES256",
            PublicKey::EdDsa(_) => "EdDSA",
        }
    }
}

struct KeyEntry {
    kid: Option<String>,
    key: PublicKey,
    material: u64,
}

/// Names one signing key by what verification rests on: the issuer it
/// belongs to (its place in the settings), its `kid` and its public
/// material. A verified token remembers it, so a JWKS refresh of one issuer
/// drops only the tokens whose key left that issuer's set. (64 bits of
/// SHA-256: the keys compared are a handful from one trusted JWKS.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyFingerprint {
    pub(crate) issuer: usize,
    pub(crate) material: u64,
}

fn material_of(jwk: &Value) -> u64 {
    let mut hash = Sha256::new();
    for member in ["kid", "kty", "crv", "n", "e", "x", "y"] {
        // Values as JSON text (strings quoted): no two key sets hash alike by shifting.
        let value = jwk.get(member).map(Value::to_string).unwrap_or_default();
        hash.update(member.as_bytes());
        hash.update(b"=");
        hash.update(value.as_bytes());
        hash.update(b";");
    }
    let digest: [u8; 32] = hash.finalize().into();
    digest.first_chunk().map_or(0, |bytes| u64::from_le_bytes(*bytes))
}

/// The keys a fetched JWKS loaded for one issuer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    issuer: usize,
    keys: Vec<u64>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `key` is one of these keys.
    pub fn holds(&self, key: KeyFingerprint) -> bool {
        key.issuer == self.issuer && self.keys.contains(&key.material)
    }

    /// Whether a token verified by `key` stays verified after this set
    /// replaced its issuer's keys: other issuers' tokens are untouched.
    pub fn keeps(&self, key: KeyFingerprint) -> bool {
        key.issuer != self.issuer || self.keys.contains(&key.material)
    }
}

/// Where the organisation of a token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OrgSource {
    Claim(ClaimPath),
    Fixed(String),
}

/// A claim by name (`org`) or by JSON pointer (`/tid`, `/ext/org`).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ClaimPath {
    Name(String),
    Pointer(String),
}

impl ClaimPath {
    fn parse(value: &str, field: &'static str) -> Result<Self, JwtVerifierError> {
        match value.strip_prefix('/') {
            Some(rest) if !rest.is_empty() => Ok(Self::Pointer(value.to_string())),
            None if !value.is_empty() => Ok(Self::Name(value.to_string())),
            _ => Err(JwtVerifierError::BadClaim(field)),
        }
    }

    fn find<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        match self {
            Self::Name(name) => claims.get(name),
            Self::Pointer(pointer) => claims.pointer(pointer),
        }
    }
}

/// One trusted issuer: its keys and where its tokens carry the identity.
struct IssuerVerifier {
    /// Replaced whole when a fetched JWKS arrives (the VM is single-threaded).
    keys: RefCell<Rc<Vec<KeyEntry>>>,
    remote: Option<JwksRemote>,
    issuer: String,
    audiences: HashSet<String>,
    org: OrgSource,
    /// The organisations this issuer may name (empty: any).
    allowed_orgs: Vec<String>,
    user: ClaimPath,
    scope: ClaimPath,
}

/// Verifies bearer tokens against the trusted issuers' keys and claim rules.
pub struct JwtVerifier {
    issuers: Vec<IssuerVerifier>,
    leeway_seconds: u64,
    /// A fingerprint of the trust rules (issuers, audiences, claims, key
    /// sources): cached verifications are reused only under the same.
    rules: u64,
}

impl JwtVerifier {
    /// Builds a verifier from its settings, loading every inline key; an
    /// error names the issuer (`jwt.issuers[N]`, or `jwt` for the shorthand).
    pub fn from_spec(spec: &JwtSpec) -> Result<Self, JwtSettingsError> {
        let specs = spec.issuer_specs()?;
        let mut issuers: Vec<IssuerVerifier> = Vec::with_capacity(specs.len());
        for (index, issuer) in specs.iter().enumerate() {
            let at = || {
                if spec.issuers.is_empty() {
                    "jwt".to_string()
                } else {
                    format!("jwt.issuers[{index}]")
                }
            };
            let located = |cause| JwtSettingsError { at: at(), cause };
            if issuers.iter().any(|known| known.issuer == issuer.issuer) {
                return Err(located(JwtVerifierError::DuplicateIssuer(issuer.issuer.clone())));
            }
            issuers.push(IssuerVerifier::from_spec(issuer).map_err(located)?);
        }
        let digest = Sha256::digest(format!("{specs:?}").as_bytes());
        let rules = digest.first_chunk().map_or(0, |bytes| u64::from_le_bytes(*bytes));
        Ok(Self {
            issuers,
            leeway_seconds: spec.leeway_seconds,
            rules,
        })
    }

    /// The fingerprint of these trust rules (see `rules`).
    pub fn rules(&self) -> u64 {
        self.rules
    }

    /// How many keys a fetched JWKS holds, or why none of it can be used
    /// (checked once before a multi-threaded host hands it to every worker).
    pub fn check_keys(jwks: &Value) -> Result<usize, JwtVerifierError> {
        load_jwks(jwks).map(|keys| keys.len())
    }

    /// Replaces issuer `issuer`'s key set with a fetched JWKS; on error the
    /// old keys stay. Returns the keys loaded (verified tokens of that
    /// issuer's other keys are to be dropped).
    pub fn replace_keys(&self, issuer: usize, jwks: &Value) -> Result<KeySet, JwtVerifierError> {
        let verifier = self.issuers.get(issuer).ok_or(JwtVerifierError::NoSuchIssuer(issuer))?;
        let keys = load_jwks(jwks)?;
        let loaded = KeySet {
            issuer,
            keys: keys.iter().map(|entry| entry.material).collect(),
        };
        *verifier.keys.borrow_mut() = Rc::new(keys);
        Ok(loaded)
    }

    /// Takes the keys `previous` fetched from the same JWKS URLs, so new
    /// settings verify tokens at once instead of waiting for a fetch.
    /// Returns the issuers that took keys.
    pub fn adopt_keys(&self, previous: &JwtVerifier) -> Vec<usize> {
        let mut adopted = Vec::new();
        for (index, verifier) in self.issuers.iter().enumerate() {
            let Some(remote) = &verifier.remote else { continue };
            let source = previous
                .issuers
                .iter()
                .find(|old| old.remote.as_ref() == Some(remote) && !old.keys.borrow().is_empty());
            if let Some(old) = source {
                *verifier.keys.borrow_mut() = old.keys.borrow().clone();
                adopted.push(index);
            }
        }
        adopted
    }

    /// The issuers whose keys are fetched, with where from.
    pub fn remotes(&self) -> impl Iterator<Item = (usize, &JwksRemote)> {
        self.issuers
            .iter()
            .enumerate()
            .filter_map(|(index, issuer)| issuer.remote.as_ref().map(|remote| (index, remote)))
    }

    /// The `iss` of issuer `index`, for log lines.
    pub fn issuer_name(&self, index: usize) -> &str {
        self.issuers.get(index).map_or("", |issuer| issuer.issuer.as_str())
    }

    /// True once every issuer has keys.
    pub fn has_keys(&self) -> bool {
        self.issuers.iter().all(|issuer| !issuer.keys.borrow().is_empty())
    }

    /// Allowed clock skew, in seconds.
    pub fn leeway_seconds(&self) -> u64 {
        self.leeway_seconds
    }

    /// Verifies an `Authorization` header value at time `now` (Unix seconds).
    pub fn verify_header(&self, header: Option<&str>, now: u64) -> Result<Identity, AuthError> {
        let header = header.ok_or(AuthError::MissingToken)?;
        let token = bearer_token(header)?;
        self.verify_token(token, now)
    }

    /// Verifies a compact JWS token at time `now` (Unix seconds).
    pub fn verify_token(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        self.verify_token_with_key(token, now).map(|(identity, _)| identity)
    }

    /// Verifies a token and says which key verified it.
    pub fn verify_token_with_key(&self, token: &str, now: u64) -> Result<(Identity, KeyFingerprint), AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::MalformedToken);
        }
        let (index, issuer) = self.route(token)?;
        let (identity, material) = issuer.verify(token, now, self.leeway_seconds)?;
        Ok((
            identity,
            KeyFingerprint {
                issuer: index,
                material,
            },
        ))
    }

    /// The issuer whose keys may verify `token`. With one issuer there is
    /// nothing to choose (its own check names a wrong `iss`), so the payload
    /// is read only by the verification; with several, its `iss` is read
    /// first. Either runs only on a token-cache miss.
    fn route(&self, token: &str) -> Result<(usize, &IssuerVerifier), AuthError> {
        if let [only] = self.issuers.as_slice() {
            return Ok((0, only));
        }
        let iss = unverified_issuer(token)?;
        self.issuers
            .iter()
            .enumerate()
            .find(|(_, issuer)| issuer.issuer == iss)
            .ok_or(AuthError::WrongIssuer)
    }
}

/// The `iss` a token claims, before anything about it is verified.
fn unverified_issuer(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct Issuer<'a> {
        #[serde(borrow, default)]
        iss: Option<Cow<'a, str>>,
    }
    let mut parts = token.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return Err(AuthError::MalformedToken),
    };
    let json = URL_SAFE_NO_PAD.decode(payload).map_err(|_| AuthError::MalformedToken)?;
    let claims: Issuer<'_> = serde_json::from_slice(&json).map_err(|_| AuthError::MalformedToken)?;
    claims.iss.map(Cow::into_owned).ok_or(AuthError::WrongIssuer)
}

impl IssuerVerifier {
    fn from_spec(spec: &IssuerSpec) -> Result<Self, JwtVerifierError> {
        if spec.issuer.is_empty() {
            return Err(JwtVerifierError::EmptyIssuer);
        }
        if spec.audiences.is_empty() || spec.audiences.iter().any(String::is_empty) {
            return Err(JwtVerifierError::NoAudience);
        }
        let org = match (&spec.org_claim, &spec.org) {
            (Some(_), Some(_)) => return Err(JwtVerifierError::OrgSource),
            (None, Some(org)) if is_safe_identity(org) => OrgSource::Fixed(org.clone()),
            (None, Some(_)) => return Err(JwtVerifierError::BadOrg),
            (claim, None) => OrgSource::Claim(ClaimPath::parse(claim.as_deref().unwrap_or("org"), "org_claim")?),
        };
        let (keys, remote) = match (&spec.jwks, &spec.jwks_uri) {
            (Some(jwks), None) => (load_jwks(jwks)?, None),
            (None, Some(uri)) => (Vec::new(), Some(JwksRemote::from_spec(uri)?)),
            _ => return Err(JwtVerifierError::KeySource),
        };
        Ok(Self {
            keys: RefCell::new(Rc::new(keys)),
            remote,
            issuer: spec.issuer.clone(),
            audiences: spec.audiences.iter().cloned().collect(),
            org,
            allowed_orgs: spec.allowed_orgs.clone(),
            user: ClaimPath::parse(&spec.user_claim, "user_claim")?,
            scope: ClaimPath::parse(&spec.scope_claim, "scope_claim")?,
        })
    }

    /// Verifies `token` with this issuer's keys; returns the identity and
    /// the material of the key that verified it.
    fn verify(&self, token: &str, now: u64, leeway_seconds: u64) -> Result<(Identity, u64), AuthError> {
        let metadata = Token::decode_metadata(token).map_err(|_| AuthError::MalformedToken)?;
        let alg = metadata.algorithm();
        // `none` and HMAC never match: only asymmetric keys are loaded.
        if !matches!(alg, "RS256" | "ES256" | "EdDSA") {
            return Err(AuthError::UnsupportedAlgorithm);
        }
        let kid = metadata.key_id();
        let keys = self.keys.borrow();
        if keys.is_empty() {
            return Err(AuthError::KeysNotLoaded);
        }
        let candidates =
            keys.iter()
                .filter(|entry| entry.key.alg() == alg)
                .filter(|entry| match (kid, entry.kid.as_deref()) {
                    (Some(kid), Some(entry_kid)) => kid == entry_kid,
                    // A token without `kid` may match any key of its algorithm.
                    (None, _) => true,
                    (Some(_), None) => false,
                });
        let options = VerificationOptions {
            allowed_issuers: Some(HashSet::from([self.issuer.clone()])),
            allowed_audiences: Some(self.audiences.clone()),
            time_tolerance: Some(Duration::from_secs(leeway_seconds)),
            artificial_time: Some(UnixTimeStamp::from_secs(now)),
            max_token_length: Some(MAX_TOKEN_BYTES),
            ..VerificationOptions::default()
        };
        let mut last_error = AuthError::UnknownKey;
        for entry in candidates {
            let verified = match &entry.key {
                PublicKey::Rs256(key) => key.verify_token::<Map<String, Value>>(token, Some(options.clone())),
                PublicKey::Es256(key) => key.verify_token::<Map<String, Value>>(token, Some(options.clone())),
                PublicKey::EdDsa(key) => key.verify_token::<Map<String, Value>>(token, Some(options.clone())),
            };
            match verified {
                Ok(claims) => return self.identity_from(claims).map(|identity| (identity, entry.material)),
                Err(error) => {
                    last_error = classify(&error);
                    // Only a bad signature means another key might still match.
                    if last_error != AuthError::BadSignature {
                        return Err(last_error);
                    }
                }
            }
        }
        Err(last_error)
    }

    fn identity_from(&self, claims: JWTClaims<Map<String, Value>>) -> Result<Identity, AuthError> {
        let expires_at = claims.expires_at.ok_or(AuthError::MissingExpiry)?.as_secs();
        // `sub` is parsed into its own field: put it back where claim paths look.
        let mut custom = claims.custom;
        if let Some(subject) = claims.subject {
            custom.insert("sub".into(), Value::String(subject));
        }
        let custom = Value::Object(custom);
        let user = match self.user.find(&custom) {
            Some(Value::String(user)) => user.clone(),
            _ => return Err(AuthError::MissingSubject),
        };
        let org = match &self.org {
            OrgSource::Fixed(org) => org.clone(),
            OrgSource::Claim(path) => match path.find(&custom) {
                Some(Value::String(org)) => org.clone(),
                _ => return Err(AuthError::MissingOrg),
            },
        };
        if !is_safe_identity(&user) || !is_safe_identity(&org) {
            return Err(AuthError::InvalidIdentity);
        }
        // An IdP trusted beside others vouches only for its own organisations.
        if !self.allowed_orgs.is_empty() && !self.allowed_orgs.contains(&org) {
            return Err(AuthError::OrgNotAllowed);
        }
        // Array elements are split like the string form, so every layer
        // reads the same scopes; at most 64 are kept.
        let scopes: Vec<String> = match self.scope.find(&custom) {
            Some(Value::String(scope)) => scope.split_whitespace().take(64).map(str::to_string).collect(),
            Some(Value::Array(scopes)) => scopes
                .iter()
                .filter_map(Value::as_str)
                .flat_map(str::split_whitespace)
                .take(64)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        Ok(Identity {
            user,
            org,
            scopes,
            expires_at,
            key_id: None,
        })
    }
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, RFC 6750).
pub fn bearer_token(header: &str) -> Result<&str, AuthError> {
    let (scheme, token) = header.split_once(' ').ok_or(AuthError::MalformedHeader)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::MalformedHeader);
    }
    let token = token.trim();
    if token.is_empty() || token.contains(' ') {
        return Err(AuthError::MalformedHeader);
    }
    Ok(token)
}

/// Identity values travel in headers and storage paths: keep them plain.
pub fn is_safe_identity(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'|' | b':'))
        && !value.starts_with('.')
}

fn classify(error: &jwt_simple::Error) -> AuthError {
    match error.downcast_ref::<JWTError>() {
        Some(JWTError::TokenHasExpired) => AuthError::Expired,
        Some(JWTError::TokenNotValidYet) | Some(JWTError::ClockDrift) => AuthError::NotYetValid,
        Some(JWTError::RequiredIssuerMismatch) | Some(JWTError::RequiredIssuerMissing) => AuthError::WrongIssuer,
        Some(JWTError::RequiredAudienceMismatch) | Some(JWTError::RequiredAudienceMissing) => AuthError::WrongAudience,
        Some(JWTError::InvalidSignature) => AuthError::BadSignature,
        Some(JWTError::AlgorithmMismatch) => AuthError::UnsupportedAlgorithm,
        Some(JWTError::KeyIdentifierMismatch) => AuthError::UnknownKey,
        _ => AuthError::MalformedToken,
    }
}

fn load_jwks(jwks: &Value) -> Result<Vec<KeyEntry>, JwtVerifierError> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwtVerifierError::NotAJwks)?;
    let mut entries = Vec::with_capacity(keys.len());
    for (index, jwk) in keys.iter().enumerate() {
        let bad = |reason: String| JwtVerifierError::BadKey { index, reason };
        let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or_default();
        let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or_default();
        let kid = jwk.get("kid").and_then(Value::as_str).map(str::to_string);
        // `use: enc` keys are not for signatures.
        if jwk.get("use").and_then(Value::as_str) == Some("enc") {
            continue;
        }
        let text = jwk.to_string();
        let key = match (kty, crv) {
            ("RSA", _) => RS256PublicKey::from_jwk(&text).map(|k| PublicKey::Rs256(Box::new(k))),
            ("EC", "P-256") => ES256PublicKey::from_jwk(&text).map(PublicKey::Es256),
            ("OKP", "Ed25519") => Ed25519PublicKey::from_jwk(&text).map(PublicKey::EdDsa),
            _ => {
                return Err(bad(format!(
                    "unsupported key type kty={kty:?} crv={crv:?} (supported: RSA, EC P-256, OKP Ed25519)"
                )))
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        // A JWK may pin its algorithm; it must agree with the key type.
        if let Some(alg) = jwk.get("alg").and_then(Value::as_str) {
            if alg != key.alg() {
                return Err(bad(format!("`alg` {alg:?} does not fit a {} key", key.alg())));
            }
        }
        entries.push(KeyEntry {
            kid,
            key,
            material: material_of(jwk),
        });
    }
    if entries.is_empty() {
        return Err(JwtVerifierError::NoKeys);
    }
    Ok(entries)
}

/// Where an issuer's keys are fetched: an Envoy cluster, the path and
/// authority to ask it for, and the refresh timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksRemote {
    pub cluster: String,
    pub path: String,
    pub authority: String,
    pub refresh_seconds: u64,
    pub retry_seconds: u64,
    pub timeout_ms: u64,
}

impl JwksRemote {
    fn from_spec(spec: &JwksUriSpec) -> Result<Self, JwtVerifierError> {
        let timing_ok = spec.refresh_seconds >= 1 && spec.retry_seconds >= 1 && spec.timeout_ms >= 1;
        let (cluster, path, authority) = match (&spec.url, &spec.cluster, &spec.path, &spec.authority) {
            (Some(url), None, None, None) if timing_ok => {
                let endpoint = JwksEndpoint::parse(url).map_err(JwtVerifierError::BadUrl)?;
                (endpoint.cluster, endpoint.path, endpoint.authority)
            }
            (None, Some(cluster), Some(path), Some(authority))
                if timing_ok && !cluster.is_empty() && path.starts_with('/') && !authority.is_empty() =>
            {
                (cluster.clone(), path.clone(), authority.clone())
            }
            _ => return Err(JwtVerifierError::BadUri),
        };
        Ok(Self {
            cluster,
            path,
            authority,
            refresh_seconds: spec.refresh_seconds,
            retry_seconds: spec.retry_seconds,
            timeout_ms: spec.timeout_ms,
        })
    }
}

/// A JWKS URL taken apart: what `render-envoy` renders a cluster for and
/// what the filter asks that cluster. One function for both, so the
/// cluster the filter names is the one rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksEndpoint {
    /// `https`, or `http` on a loopback host only.
    pub tls: bool,
    /// The host, lower-case (an IPv6 address without brackets).
    pub host: String,
    pub port: u16,
    /// `Host` to send: the URL's host, and its port unless the scheme's default.
    pub authority: String,
    /// Path and query.
    pub path: String,
    /// `jwks_<host>_<port>`, every character but letters and digits as `_`.
    pub cluster: String,
}

impl JwksEndpoint {
    /// Parses `https://host[:port]/path[?query]` (or `http://` on loopback).
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
        let tls = match scheme {
            "https" => true,
            "http" => false,
            _ => return Err(format!("the scheme must be https, not {scheme:?}")),
        };
        if rest.contains('#') {
            return Err("a fragment is not allowed".into());
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(split);
        if authority.contains('@') {
            return Err("credentials in the URL are not allowed".into());
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed.split_once(']').ok_or("an unclosed '[' in the host")?;
            if !after.is_empty() && !after.starts_with(':') {
                return Err("text after ']' in the host".into());
            }
            (host, after.strip_prefix(':'))
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let host_ok = !host.is_empty()
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'));
        if !host_ok {
            return Err(format!("{host:?} is not a host name or address"));
        }
        let default_port = if tls { 443 } else { 80 };
        let port = match port {
            None => default_port,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{port:?} is not a port"))?,
        };
        let host = host.to_ascii_lowercase();
        // Loopback by address, never by a name's prefix (127.0.0.1.evil.example).
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        if !tls && !loopback {
            return Err("keys are fetched over https (http only from a loopback host)".into());
        }
        let shown = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            shown
        } else {
            format!("{shown}:{port}")
        };
        let path = match path {
            "" => "/".to_string(),
            query if query.starts_with('?') => format!("/{query}"),
            path => path.to_string(),
        };
        // Readable, and injective: the hash of scheme, host and port tells
        // `a-b.example` from `a.b.example`, and http from https.
        let digest = Sha256::digest(format!("{scheme}://{host}:{port}").as_bytes());
        let cluster = format!(
            "jwks_{}_{port}_{}",
            host.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>(),
            digest.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>()
        );
        Ok(Self {
            tls,
            host,
            port,
            authority,
            path,
            cluster,
        })
    }
}

/// Default allowance for clock skew between the IAM and Envoy.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;

/// IAM JWT verification settings: the trusted issuers in `issuers`, or one
/// issuer given with the shorthand (`issuer`, `audiences`, `org_claim`,
/// `jwks` or `jwks_uri`, … directly under `jwt`).
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    /// The trusted issuers (identity providers), several at once: a token
    /// is routed to its issuer by its `iss` and verified with that issuer's
    /// keys only; an `iss` not listed gets 401 `wrong_issuer`.
    #[serde(default)]
    pub issuers: Vec<IssuerSpec>,
    /// Shorthand for one issuer: its `issuer` (the required `iss` claim).
    #[serde(default)]
    pub issuer: Option<String>,
    /// Shorthand for one issuer: its `audiences`.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// Shorthand for one issuer: its `org_claim`.
    #[serde(default)]
    pub org_claim: Option<String>,
    /// Shorthand for one issuer: its fixed `org`.
    #[serde(default)]
    pub org: Option<String>,
    /// Shorthand for one issuer: its `user_claim`.
    #[serde(default)]
    pub user_claim: Option<String>,
    /// Shorthand for one issuer: its `scope_claim`.
    #[serde(default)]
    pub scope_claim: Option<String>,
    /// Shorthand for one issuer: its inline `jwks`.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Shorthand for one issuer: its `jwks_uri`.
    #[serde(default)]
    pub jwks_uri: Option<JwksUriSpec>,
    /// Allowed clock skew for `exp` / `nbf`, in seconds (every issuer).
    #[serde(default = "default_leeway_seconds")]
    pub leeway_seconds: u64,
    /// The realm named in `WWW-Authenticate`.
    #[serde(default = "default_realm")]
    pub realm: String,
}

impl JwtSpec {
    /// The issuers these settings trust: `issuers`, or the one the shorthand gives.
    pub fn issuer_specs(&self) -> Result<Cow<'_, [IssuerSpec]>, JwtSettingsError> {
        let shorthand = self.issuer.is_some()
            || self.audiences.is_some()
            || self.org_claim.is_some()
            || self.org.is_some()
            || self.user_claim.is_some()
            || self.scope_claim.is_some()
            || self.jwks.is_some()
            || self.jwks_uri.is_some();
        let at = |cause| JwtSettingsError {
            at: "jwt".into(),
            cause,
        };
        match (self.issuers.is_empty(), shorthand) {
            (false, false) => Ok(Cow::Borrowed(&self.issuers)),
            (false, true) => Err(at(JwtVerifierError::Shorthand)),
            (true, false) => Err(at(JwtVerifierError::NoIssuers)),
            (true, true) => Ok(Cow::Owned(vec![IssuerSpec {
                issuer: self.issuer.clone().unwrap_or_default(),
                audiences: self.audiences.clone().unwrap_or_default(),
                org_claim: self.org_claim.clone(),
                org: self.org.clone(),
                allowed_orgs: Vec::new(),
                user_claim: self.user_claim.clone().unwrap_or_else(default_user_claim),
                scope_claim: self.scope_claim.clone().unwrap_or_else(default_scope_claim),
                jwks: self.jwks.clone(),
                jwks_uri: self.jwks_uri.clone(),
            }])),
        }
    }
}

/// One trusted issuer (identity provider).
#[derive(Debug, Clone, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct IssuerSpec {
    /// The issuer's `iss`, exactly (e.g. `https://login.microsoftonline.com/<tenant>/v2.0`).
    pub issuer: String,
    /// Accepted `aud` values: the MCP server's resource URL (RFC 8707), or
    /// the IdP application's audience (e.g. Entra's `api://…`).
    pub audiences: Vec<String>,
    /// The claim carrying the caller's organisation: a claim name, or a
    /// JSON pointer when it starts with `/` (`/tid`, `/ext/org`). Default
    /// `org`; set this or `org`, not both.
    #[serde(default)]
    pub org_claim: Option<String>,
    /// A fixed organisation for every token of this issuer (e.g. a
    /// machine-to-machine IdP of one team), instead of `org_claim`.
    #[serde(default)]
    pub org: Option<String>,
    /// The only organisations this issuer may name (empty: any). Set it for
    /// every issuer whose organisation comes from a claim when several are
    /// trusted, so that one IdP cannot vouch for another's tenants; a token
    /// naming another gets 401 `org_not_allowed`.
    #[serde(default)]
    pub allowed_orgs: Vec<String>,
    /// The claim naming the user (name or JSON pointer, as `org_claim`).
    #[serde(default = "default_user_claim")]
    pub user_claim: String,
    /// The claim holding the granted scopes (name or JSON pointer): a
    /// space-separated string (`scope`, Entra's `scp`) or an array of
    /// strings (Okta's `scp`).
    #[serde(default = "default_scope_claim")]
    pub scope_claim: String,
    /// Public keys as a JWKS document (`{"keys": [...]}`), inline: `RSA` keys
    /// verify RS256, `EC` P-256 ES256, `OKP` Ed25519 EdDSA.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Or: where to fetch the JWKS, refreshed on a timer. The last good keys
    /// stay if a refresh fails; this issuer's callers get 503 with
    /// `Retry-After` until the first load.
    #[serde(default)]
    pub jwks_uri: Option<JwksUriSpec>,
}

/// A JWKS fetched from the IdP: by its URL (`render-envoy` renders the
/// Envoy cluster), or through an Envoy cluster named here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JwksUriSpec {
    /// The JWKS URL (`https://…`; `http://` only on loopback), e.g. the IdP
    /// metadata's `jwks_uri`. `render-envoy` renders a cluster for it,
    /// named `jwks_<host>_<port>` (TLS with SNI and the host's certificate
    /// checked for https), which the filter fetches through. Instead of
    /// `cluster`, `path` and `authority`.
    #[serde(default)]
    pub url: Option<String>,
    /// Envoy cluster that reaches the IdP.
    #[serde(default)]
    pub cluster: Option<String>,
    /// Path of the JWKS, e.g. `/.well-known/jwks.json`.
    #[serde(default)]
    pub path: Option<String>,
    /// `Host`/`:authority` to send.
    #[serde(default)]
    pub authority: Option<String>,
    /// Seconds between refreshes after a successful fetch.
    #[serde(default = "default_jwks_refresh_seconds")]
    pub refresh_seconds: u64,
    /// Seconds between retries while fetches fail.
    #[serde(default = "default_jwks_retry_seconds")]
    pub retry_seconds: u64,
    /// How long one fetch may take, in milliseconds.
    #[serde(default = "default_jwks_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_jwks_refresh_seconds() -> u64 {
    300
}
fn default_jwks_retry_seconds() -> u64 {
    5
}
fn default_jwks_timeout_ms() -> u64 {
    5000
}

fn default_user_claim() -> String {
    "sub".to_string()
}
fn default_scope_claim() -> String {
    "scope".to_string()
}
fn default_leeway_seconds() -> u64 {
    DEFAULT_LEEWAY_SECONDS
}
fn default_realm() -> String {
    "mcp-image-gateway".to_string()
}

#[cfg(test)]
#[path = "jwt_tests.rs"]
mod tests;
