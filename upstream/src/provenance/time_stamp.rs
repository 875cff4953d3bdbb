//! RFC 3161 time-stamps on the manifests' signatures, from the authority
//! `GATEWAY_PROVENANCE_TSA_URL` names, so a manifest stays valid after the
//! signing certificate expires. c2pa is built without HTTP clients here, so
//! the request is ours: c2pa builds the `TimeStampReq` (with a nonce), we
//! POST it (bounded in time and size) and hand back the reply, which c2pa
//! embeds (`sigTst2`). An authority that fails costs the image its
//! time-stamp, never its Content Credentials: the failure is kept for the
//! pipeline to count and log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Longest an authority may take to answer one request: a call's images
/// (at most 4) are signed in turn within the pipeline's 20 s, so a dead
/// authority costs each one its time-stamp, not its Content Credentials.
const TIMEOUT: Duration = Duration::from_secs(3);

/// Largest reply taken from an authority: c2pa reserves about 10 KB for the
/// token in the signature's space, and a larger one would fail the whole
/// signing, not just the time-stamp (a token with its chain is a few KiB).
const MAX_REPLY_BYTES: usize = 8 * 1024;

/// After a failure the authority is left alone this long: images are
/// signed without a time-stamp at once instead of each waiting `TIMEOUT`
/// while holding a signing slot.
const QUIET_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// An RFC 3161 time-stamp authority.
#[derive(Clone)]
pub struct TimeStampAuthority {
    url: reqwest::Url,
    client: reqwest::Client,
    /// Not asked again before this, after a failure.
    quiet_until: Arc<Mutex<Option<Instant>>>,
}

impl TimeStampAuthority {
    /// An authority at `url` (http or https).
    pub fn new(url: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("must be http or https, not {}", url.scheme()));
        }
        if url.scheme() == "http" && (!url.username().is_empty() || url.password().is_some()) {
            return Err("credentials in the URL need https".into());
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            url,
            client,
            quiet_until: Arc::default(),
        })
    }

    pub fn url(&self) -> &reqwest::Url {
        &self.url
    }

    /// The authority's DER `TimeStampResp` to the DER `TimeStampReq` `body`.
    /// Blocking: called by c2pa while it signs, on the blocking pool.
    pub fn request(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let quiet_until = || self.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
        if quiet_until().is_some_and(|until| Instant::now() < until) {
            return Err(format!(
                "the time-stamp authority failed less than {QUIET_AFTER_FAILURE:?} ago; not asked"
            ));
        }
        let answer = self.ask(body);
        if answer.is_err() {
            *quiet_until() = Some(Instant::now() + QUIET_AFTER_FAILURE);
        }
        answer
    }

    fn ask(&self, body: Vec<u8>) -> Result<Vec<u8>, String> {
        let asking = async {
            let mut response = self
                .client
                .post(self.url.clone())
                .header("content-type", "application/timestamp-query")
                .body(body)
                .send()
                .await
                .map_err(|e| format!("the time-stamp authority did not answer: {}", e.without_url()))?;
            let kind = response.headers().get("content-type").and_then(|v| v.to_str().ok());
            if !response.status().is_success() || kind != Some("application/timestamp-reply") {
                return Err(format!(
                    "the time-stamp authority answered {} ({})",
                    response.status(),
                    kind.unwrap_or("no content type")
                ));
            }
            let mut reply = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.without_url().to_string())? {
                if reply.len() + chunk.len() > MAX_REPLY_BYTES {
                    return Err(format!(
                        "the time-stamp authority's reply is over {MAX_REPLY_BYTES} bytes"
                    ));
                }
                reply.extend_from_slice(&chunk);
            }
            Ok(reply)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.block_on(asking),
            // Outside the service (the CLI, unit tests): a runtime of its own.
            Err(_) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?
                .block_on(asking),
        }
    }
}

impl TimeStampAuthority {
    /// Its URL less any password or query (where API keys go): what the
    /// settings dump and debug output show.
    fn shown(&self) -> reqwest::Url {
        let mut shown = self.url.clone();
        let _ = shown.set_password(None);
        shown.set_query(None);
        shown.set_fragment(None);
        shown
    }
}

impl serde::Serialize for TimeStampAuthority {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown().as_str())
    }
}

impl std::fmt::Debug for TimeStampAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("TimeStampAuthority")
            .field(&self.shown().as_str())
            .finish()
    }
}

/// A c2pa signer that time-stamps its signatures with `authority`, if
/// there is one; why the last time-stamp failed, if it did, is kept.
pub struct TimeStamped {
    inner: Arc<dyn c2pa::Signer + Send + Sync>,
    authority: Option<TimeStampAuthority>,
    failure: Mutex<Option<String>>,
}

impl TimeStamped {
    /// `inner`'s reserved signature size must have room for a token (c2pa's
    /// own signers and ours keep 10 KB for one).
    pub fn new(inner: Arc<dyn c2pa::Signer + Send + Sync>, authority: Option<TimeStampAuthority>) -> Self {
        Self {
            inner,
            authority,
            failure: Mutex::new(None),
        }
    }

    /// Why the last time-stamp failed (the signature then has none).
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl c2pa::Signer for TimeStamped {
    fn sign(&self, data: &[u8]) -> c2pa::Result<Vec<u8>> {
        self.inner.sign(data)
    }

    fn alg(&self) -> c2pa::SigningAlg {
        self.inner.alg()
    }

    fn certs(&self) -> c2pa::Result<Vec<Vec<u8>>> {
        self.inner.certs()
    }

    fn reserve_size(&self) -> usize {
        self.inner.reserve_size()
    }

    fn time_authority_url(&self) -> Option<String> {
        self.authority.as_ref().map(|authority| authority.url.to_string())
    }

    /// `None` without an authority, or on failure: the manifest is then
    /// signed without a time-stamp.
    fn send_timestamp_request(&self, message: &[u8]) -> Option<c2pa::Result<Vec<u8>>> {
        let authority = self.authority.as_ref()?;
        let asked = self
            .timestamp_request_body(message)
            .map_err(|e| e.to_string())
            .and_then(|body| authority.request(body))
            .and_then(|reply| checked(reply, message));
        match asked {
            Ok(reply) => Some(Ok(reply)),
            Err(why) => {
                *self.failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
                None
            }
        }
    }
}

/// `reply` if it is a time-stamp of `message` signed by its authority's
/// certificate (whose trust validators judge): c2pa would fail the whole
/// signing on a reply it cannot read.
fn checked(reply: Vec<u8>, message: &[u8]) -> Result<Vec<u8>, String> {
    let policy = c2pa::crypto::cose::CertificateTrustPolicy::passthrough();
    let mut log = c2pa::status_tracker::StatusTracker::default();
    c2pa::crypto::time_stamp::verify_time_stamp(&reply, message, &policy, &mut log, false)
        .map_err(|e| format!("the time-stamp authority's reply is not a valid time-stamp: {e}"))?;
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_name_an_authority_and_no_password_is_shown() {
        assert!(TimeStampAuthority::new("http://tsa.example/").is_ok());
        let error = TimeStampAuthority::new("ftp://tsa.example/").unwrap_err();
        assert!(error.contains("http or https"), "{error}");
        assert!(TimeStampAuthority::new("not a url").is_err());
        let secret = TimeStampAuthority::new("https://user:hunter2@tsa.example/tsr?key=k3y").unwrap();
        let shown = serde_json::to_string(&secret).unwrap();
        assert_eq!(shown, "\"https://user@tsa.example/tsr\"");
        let error = TimeStampAuthority::new("http://user:hunter2@tsa.example/").unwrap_err();
        assert!(error.contains("https"), "{error}");
    }

    #[test]
    fn a_failing_authority_is_left_alone_for_a_while() {
        // Nothing listens on port 9 (discard) here: refused at once.
        let authority = TimeStampAuthority::new("http://127.0.0.1:9/").unwrap();
        let first = authority.request(b"query".to_vec()).unwrap_err();
        assert!(first.contains("did not answer"), "{first}");
        let second = authority.request(b"query".to_vec()).unwrap_err();
        assert!(second.contains("not asked"), "{second}");
        assert!(!first.contains("127.0.0.1"), "no URL in the reason: {first}");
    }

    #[test]
    fn a_reply_that_is_no_time_stamp_is_refused() {
        let error = checked(b"<html>busy</html>".to_vec(), b"message").unwrap_err();
        assert!(error.contains("not a valid time-stamp"), "{error}");
    }
}
