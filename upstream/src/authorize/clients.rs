//! Who is asking: MCP clients name themselves by a Client ID Metadata
//! Document (the client id is an HTTPS URL of a JSON document listing its
//! redirect URIs; 2026-07-28's preferred way) or register dynamically
//! (RFC 7591, kept for older clients). Registrations are stateless: the
//! client id carries the registered metadata, sealed with an HMAC under the
//! authorization server's keyring, so every replica knows every client and
//! nothing is stored per client. A confidential registration's secret is an
//! HMAC of its id, so it is checked without being kept either.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use crate::storage::keyring::Keyring;
use crate::storage::remote_fetch::RemoteFetch;

/// Registered client ids start with this (then key id, payload, MAC).
const REGISTERED_PREFIX: &str = "mcpc.";
/// At most this many redirect URIs per client, each at most this long.
const MAX_REDIRECT_URIS: usize = 10;
const MAX_URI_CHARS: usize = 2048;
/// A metadata document larger than this is refused.
pub const MAX_METADATA_BYTES: usize = 5 * 1024;
/// How long a metadata document fetch may take.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(3);

/// A client the authorization server will issue codes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub id: String,
    /// What the consent page shows (never trusted for anything else).
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// Registered with a secret (`client_secret_basic` or `client_secret_post`).
    pub confidential: bool,
}

impl Client {
    /// Whether `uri` is one of the client's redirect URIs: the same string,
    /// except that a loopback `http` URI registered without a port takes
    /// any port (RFC 8252 §7.3: native apps listen on an ephemeral port).
    pub fn accepts_redirect(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|registered| {
            registered == uri || (is_portless_loopback(registered) && without_port(uri).as_deref() == Some(registered))
        })
    }
}

/// Why a registration or a metadata document was refused: the RFC 7591
/// error code and a message a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: &'static str,
    pub message: String,
}

fn invalid_metadata(message: impl Into<String>) -> ClientError {
    ClientError {
        code: "invalid_client_metadata",
        message: message.into(),
    }
}

fn invalid_redirect(message: impl Into<String>) -> ClientError {
    ClientError {
        code: "invalid_redirect_uri",
        message: message.into(),
    }
}

/// A dynamic registration request (RFC 7591 §2), the fields we use.
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrationRequest {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    #[serde(default)]
    pub client_name: Option<String>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    #[serde(default)]
    pub grant_types: Option<Vec<String>>,
    #[serde(default)]
    pub response_types: Option<Vec<String>>,
}

/// What is sealed into a registered client id.
#[derive(Serialize, Deserialize)]
struct Sealed {
    /// Redirect URIs.
    r: Vec<String>,
    /// Name.
    n: String,
    /// Confidential.
    c: bool,
    /// Issued at (Unix seconds).
    t: u64,
}

/// Registers a client: checks its metadata and returns it with its id.
pub fn register(keys: &Keyring, request: &RegistrationRequest, now: u64) -> Result<Client, ClientError> {
    check_redirect_uris(&request.redirect_uris)?;
    let confidential = match request.token_endpoint_auth_method.as_deref() {
        None | Some("none") => false,
        Some("client_secret_basic" | "client_secret_post") => true,
        Some(other) => {
            return Err(invalid_metadata(format!(
                "token_endpoint_auth_method {other:?} is not supported: use none, client_secret_basic or client_secret_post"
            )))
        }
    };
    if let Some(grants) = &request.grant_types {
        if let Some(other) = grants
            .iter()
            .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token" | super::JWT_BEARER))
        {
            return Err(invalid_metadata(format!(
                "grant type {other:?} is not offered to registered clients: authorization_code, refresh_token and (confidential clients) {} are",
                super::JWT_BEARER
            )));
        }
    }
    if let Some(types) = &request.response_types {
        if types.iter().any(|t| t != "code") {
            return Err(invalid_metadata("only the response type \"code\" is supported"));
        }
    }
    let name = display_name(request.client_name.as_deref());
    let sealed = Sealed {
        r: request.redirect_uris.clone(),
        n: name.clone(),
        c: confidential,
        t: now,
    };
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&sealed).unwrap_or_default());
    let (key_id, secret) = keys.newest();
    let body = format!("{REGISTERED_PREFIX}{key_id}.{payload}");
    let id = format!(
        "{body}.{}",
        URL_SAFE_NO_PAD.encode(mac(secret, b"client-id", body.as_bytes()))
    );
    Ok(Client {
        id,
        name,
        redirect_uris: sealed.r,
        confidential,
    })
}

/// The client a registered id names, if its seal holds under a listed key.
pub fn registered(keys: &Keyring, client_id: &str) -> Option<Client> {
    let rest = client_id.strip_prefix(REGISTERED_PREFIX)?;
    let (body, tag) = client_id.rsplit_once('.')?;
    let (key_id, payload) = rest.split_once('.')?;
    let payload = payload.rsplit_once('.').map(|(p, _)| p)?;
    let secret = keys.get(key_id)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
    verify_mac(secret, b"client-id", body.as_bytes(), &tag).then_some(())?;
    let sealed: Sealed = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    Some(Client {
        id: client_id.to_string(),
        name: sealed.n,
        redirect_uris: sealed.r,
        confidential: sealed.c,
    })
}

/// A confidential registered client's secret: derived from its id.
pub fn client_secret(keys: &Keyring, client_id: &str) -> Option<String> {
    let rest = client_id.strip_prefix(REGISTERED_PREFIX)?;
    let (key_id, _) = rest.split_once('.')?;
    let secret = keys.get(key_id)?;
    Some(URL_SAFE_NO_PAD.encode(mac(secret, b"client-secret", client_id.as_bytes())))
}

/// Whether `presented` is the client's secret (compared in constant time).
pub fn secret_matches(keys: &Keyring, client_id: &str, presented: &str) -> bool {
    let Some(rest) = client_id.strip_prefix(REGISTERED_PREFIX) else {
        return false;
    };
    let Some((key_id, _)) = rest.split_once('.') else {
        return false;
    };
    let (Some(secret), Ok(presented)) = (keys.get(key_id), URL_SAFE_NO_PAD.decode(presented)) else {
        return false;
    };
    verify_mac(secret, b"client-secret", client_id.as_bytes(), &presented)
}

/// Whether a client id is a metadata document URL (the rest are registrations).
pub fn is_metadata_url(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// Fetches and checks a Client ID Metadata Document. `fetch` applies the
/// address rules (public addresses only, https; loopback in development).
pub async fn from_metadata_document(fetch: &RemoteFetch, client_id: &str) -> Result<Client, ClientError> {
    let url =
        reqwest::Url::parse(client_id).map_err(|e| invalid_metadata(format!("the client id is not a URL ({e})")))?;
    if url.path() == "/" || url.path().is_empty() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(invalid_metadata(
            "a client id URL must have a path and no fragment or user info",
        ));
    }
    let (body, content_type) = fetch.fetch_typed(client_id).await.map_err(|detail| {
        // The detail may name internal addresses: it goes to the log only.
        tracing::info!(client_id, %detail, "a client metadata document was refused");
        invalid_metadata(public_reason(&detail))
    })?;
    let json = content_type
        .as_deref()
        .and_then(|t| t.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(invalid_metadata(
            "the client metadata document must be served as application/json",
        ));
    }
    parse_metadata_document(client_id, &body)
}

/// What a person may be told of a failed document fetch.
fn public_reason(detail: &str) -> String {
    let reason = if detail.contains("private or reserved") {
        "its host does not resolve to a public address"
    } else if detail.contains("larger than") {
        return format!("the client metadata document is larger than {MAX_METADATA_BYTES} bytes");
    } else if detail.contains("only https") {
        "a client id URL must be https"
    } else if detail.contains("redirects are not followed") {
        "it answered with a redirect, which is not followed"
    } else if detail.contains("took longer") {
        "it took too long"
    } else {
        "it could not be fetched (unreachable, or not HTTP 200)"
    };
    format!("the client metadata document cannot be used: {reason}")
}

/// Checks a fetched metadata document against the URL it came from.
pub fn parse_metadata_document(client_id: &str, body: &[u8]) -> Result<Client, ClientError> {
    if body.len() > MAX_METADATA_BYTES {
        return Err(invalid_metadata(format!(
            "the client metadata document is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    let document: Value = serde_json::from_slice(body)
        .map_err(|e| invalid_metadata(format!("the client metadata document is not JSON ({e})")))?;
    if document.get("client_id").and_then(Value::as_str) != Some(client_id) {
        return Err(invalid_metadata(
            "the client metadata document's client_id is not the URL it was fetched from",
        ));
    }
    match document.get("token_endpoint_auth_method").and_then(Value::as_str) {
        None | Some("none") => {}
        Some(other) => {
            return Err(invalid_metadata(format!(
                "token_endpoint_auth_method {other:?} is not supported for metadata documents: use none"
            )))
        }
    }
    let uris: Vec<String> = document
        .get("redirect_uris")
        .and_then(Value::as_array)
        .map(|uris| uris.iter().filter_map(Value::as_str).map(str::to_string).collect())
        .unwrap_or_default();
    check_redirect_uris(&uris)?;
    Ok(Client {
        id: client_id.to_string(),
        name: display_name(document.get("client_name").and_then(Value::as_str)),
        redirect_uris: uris,
        confidential: false,
    })
}

/// Redirect URIs a client may register: absolute, no fragment; `https`,
/// `http` on loopback only, or a native app's private-use scheme (RFC 8252).
pub fn check_redirect_uris(uris: &[String]) -> Result<(), ClientError> {
    if uris.is_empty() {
        return Err(invalid_redirect("redirect_uris must list at least one URI"));
    }
    if uris.len() > MAX_REDIRECT_URIS {
        return Err(invalid_redirect(format!("at most {MAX_REDIRECT_URIS} redirect URIs")));
    }
    for uri in uris {
        check_redirect_uri(uri).map_err(|reason| invalid_redirect(format!("redirect URI {uri:?}: {reason}")))?;
    }
    Ok(())
}

fn check_redirect_uri(uri: &str) -> Result<(), &'static str> {
    if uri.len() > MAX_URI_CHARS {
        return Err("too long");
    }
    let url = reqwest::Url::parse(uri).map_err(|_| "not an absolute URI")?;
    if url.fragment().is_some() {
        return Err("must not have a fragment");
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback_host(url.host_str().unwrap_or_default()) => Ok(()),
        "http" => Err("http is allowed only on loopback (127.0.0.1, [::1], localhost)"),
        "javascript" | "data" | "file" | "vbscript" | "about" | "blob" | "ftp" | "ws" | "wss" => {
            Err("this scheme cannot receive an authorization response")
        }
        _ => Ok(()),
    }
}

fn is_loopback_host(host: &str) -> bool {
    matches!(host, "127.0.0.1" | "[::1]" | "localhost")
}

fn is_portless_loopback(uri: &str) -> bool {
    reqwest::Url::parse(uri).is_ok_and(|url| {
        url.scheme() == "http" && url.port().is_none() && is_loopback_host(url.host_str().unwrap_or_default())
    })
}

/// `uri` with its port removed, for loopback `http` URIs only.
fn without_port(uri: &str) -> Option<String> {
    let mut url = reqwest::Url::parse(uri).ok()?;
    if url.scheme() != "http" || !is_loopback_host(url.host_str().unwrap_or_default()) {
        return None;
    }
    url.set_port(None).ok()?;
    Some(url.to_string())
}

fn display_name(name: Option<&str>) -> String {
    let name: String = name
        .unwrap_or("an unnamed MCP client")
        .chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect();
    if name.trim().is_empty() {
        "an unnamed MCP client".to_string()
    } else {
        name
    }
}

fn mac(secret: &[u8], purpose: &[u8], message: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length; an empty tag would never verify.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return Vec::new();
    };
    mac.update(purpose);
    mac.update(b"\0");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn verify_mac(secret: &[u8], purpose: &[u8], message: &[u8], tag: &[u8]) -> bool {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(purpose);
    mac.update(b"\0");
    mac.update(message);
    mac.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keyring {
        Keyring::parse(&format!("k1 {}\n", "ab".repeat(32)), 32).unwrap()
    }

    fn request(uris: &[&str], method: Option<&str>) -> RegistrationRequest {
        RegistrationRequest {
            redirect_uris: uris.iter().map(|u| u.to_string()).collect(),
            client_name: Some("Test client".into()),
            token_endpoint_auth_method: method.map(str::to_string),
            grant_types: None,
            response_types: None,
        }
    }

    #[test]
    fn a_registered_id_names_its_client_and_cannot_be_altered() {
        let keys = keys();
        let client = register(&keys, &request(&["http://127.0.0.1:33418/callback"], None), 1).unwrap();
        assert_eq!(registered(&keys, &client.id), Some(client.clone()));
        // Another redirect URI sealed under a forged MAC is refused.
        let forged = register(&keys, &request(&["https://evil.example/cb"], None), 1).unwrap();
        let (forged_body, _) = forged.id.rsplit_once('.').unwrap();
        let (_, tag) = client.id.rsplit_once('.').unwrap();
        assert_eq!(registered(&keys, &format!("{forged_body}.{tag}")), None);
        let other_keys = Keyring::parse(&format!("k1 {}\n", "cd".repeat(32)), 32).unwrap();
        assert_eq!(registered(&other_keys, &client.id), None, "another keyring's id");
        assert_eq!(registered(&keys, "mcpc.k1.e30.AAAA"), None);
        assert_eq!(registered(&keys, "nonsense"), None);
    }

    #[test]
    fn confidential_registrations_get_a_secret_only_they_match() {
        let keys = keys();
        let client = register(
            &keys,
            &request(&["https://app.example/cb"], Some("client_secret_post")),
            1,
        )
        .unwrap();
        assert!(client.confidential);
        let secret = client_secret(&keys, &client.id).unwrap();
        assert!(secret_matches(&keys, &client.id, &secret));
        assert!(!secret_matches(&keys, &client.id, "AAAA"));
        let other = register(
            &keys,
            &request(&["https://app.example/cb2"], Some("client_secret_post")),
            1,
        )
        .unwrap();
        assert!(!secret_matches(&keys, &other.id, &secret));
    }

    #[test]
    fn redirect_uris_follow_the_native_and_web_rules() {
        let keys = keys();
        for (uris, ok) in [
            (vec!["https://claude.ai/api/mcp/auth_callback"], true),
            (vec!["http://127.0.0.1:33418/callback"], true),
            (vec!["http://localhost/callback"], true),
            (vec!["cursor://anysphere.cursor-retrieval/oauth/callback"], true),
            (vec!["http://app.example/callback"], false),
            (vec!["javascript:alert(1)"], false),
            (vec!["https://app.example/cb#frag"], false),
            (vec!["not a uri"], false),
            (vec![], false),
        ] {
            let result = register(&keys, &request(&uris, None), 1);
            assert_eq!(result.is_ok(), ok, "{uris:?}: {result:?}");
            if !ok {
                assert_eq!(result.unwrap_err().code, "invalid_redirect_uri");
            }
        }
        let error = register(&keys, &request(&["https://a.example/cb"], Some("private_key_jwt")), 1).unwrap_err();
        assert_eq!(error.code, "invalid_client_metadata");
    }

    #[test]
    fn redirects_match_exactly_except_a_portless_loopback_registration() {
        let client = Client {
            id: "c".into(),
            name: "n".into(),
            redirect_uris: vec!["https://app.example/cb".into(), "http://127.0.0.1/callback".into()],
            confidential: false,
        };
        assert!(client.accepts_redirect("https://app.example/cb"));
        assert!(!client.accepts_redirect("https://app.example/cb/"));
        assert!(!client.accepts_redirect("https://app.example/cb?x=1"));
        assert!(!client.accepts_redirect("https://app.example:444/cb"));
        assert!(client.accepts_redirect("http://127.0.0.1:51234/callback"));
        assert!(!client.accepts_redirect("http://127.0.0.1:51234/other"));
        assert!(!client.accepts_redirect("http://evil.example:51234/callback"));
    }

    #[test]
    fn metadata_documents_must_name_themselves() {
        let url = "https://client.example/mcp.json";
        let good =
            format!(r#"{{"client_id":"{url}","client_name":"Docs","redirect_uris":["https://client.example/cb"]}}"#);
        let client = parse_metadata_document(url, good.as_bytes()).unwrap();
        assert_eq!(client.redirect_uris, vec!["https://client.example/cb".to_string()]);
        let other = r#"{"client_id":"https://other.example/x.json","redirect_uris":["https://client.example/cb"]}"#;
        assert!(parse_metadata_document(url, other.as_bytes())
            .unwrap_err()
            .message
            .contains("client_id"));
        let big = format!(r#"{{"client_id":"{url}","pad":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES));
        assert!(parse_metadata_document(url, big.as_bytes())
            .unwrap_err()
            .message
            .contains("larger"));
        let secret = format!(
            r#"{{"client_id":"{url}","redirect_uris":["https://client.example/cb"],"token_endpoint_auth_method":"client_secret_basic"}}"#
        );
        assert!(parse_metadata_document(url, secret.as_bytes()).is_err());
    }
}
