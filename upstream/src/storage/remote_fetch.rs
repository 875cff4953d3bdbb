//! `https://` image references, for hosts on the operator's allow-list
//! (`GATEWAY_EDIT_URL_HOSTS`; empty, the default, turns them off). A server-side
//! fetch of a caller's URL is the classic SSRF hole, so: https only; the
//! host must be listed; its addresses are resolved here and every one must
//! be public (no loopback, private, link-local, metadata, CGNAT, multicast
//! or reserved ranges), and the connection goes to an address that was
//! checked (no second DNS answer); redirects are followed by hand, at most
//! three, each checked the same way; time and size are capped, and the
//! bytes are checked as an image afterwards like any other input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

const MAX_REDIRECTS: usize = 3;

/// Settings and client policy for remote references.
#[derive(Debug, Clone)]
pub struct RemoteFetch {
    /// Hosts allowed: `cdn.example.com`, `.example.com` for any subdomain,
    /// or `*` for any host (still public addresses only).
    pub hosts: Vec<String>,
    pub timeout: Duration,
    pub max_bytes: usize,
    /// Development and tests only: `http://` and loopback addresses are
    /// fetched too (never private or link-local ones).
    pub allow_loopback: bool,
    /// Redirects followed (each checked like the first URL); 0 refuses any.
    pub max_redirects: usize,
}

impl RemoteFetch {
    pub fn enabled(&self) -> bool {
        !self.hosts.is_empty()
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.iter().any(|allowed| {
            let allowed = allowed.to_ascii_lowercase();
            if allowed == "*" {
                return true;
            }
            match allowed.strip_prefix('.') {
                Some(domain) => host == domain || host.ends_with(&allowed),
                None => host == allowed,
            }
        })
    }

    /// Fetches `url` under the rules above.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, String> {
        self.fetch_typed(url).await.map(|(body, _)| body)
    }

    /// Fetches `url`; the body and its `Content-Type`. The whole fetch, name
    /// resolution included, is bounded by twice the timeout.
    pub async fn fetch_typed(&self, url: &str) -> Result<(Bytes, Option<String>), String> {
        tokio::time::timeout(self.timeout * 2, self.fetch_inner(url))
            .await
            .map_err(|_| format!("took longer than {} s", (self.timeout * 2).as_secs()))?
    }

    async fn fetch_inner(&self, url: &str) -> Result<(Bytes, Option<String>), String> {
        let mut current = reqwest::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
        for _ in 0..=self.max_redirects.min(MAX_REDIRECTS) {
            let address = self.checked_address(&current).await?;
            let host = current.host_str().unwrap_or_default().to_string();
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .timeout(self.timeout)
                .resolve(&host, address)
                .build()
                .map_err(|e| format!("cannot be fetched ({e})"))?;
            let response = client
                .get(current.clone())
                .send()
                .await
                .map_err(|e| format!("could not be fetched ({e})"))?;
            if response.status().is_redirection() && self.max_redirects == 0 {
                return Err(format!(
                    "answered HTTP {} (redirects are not followed)",
                    response.status().as_u16()
                ));
            }
            if response.status().is_redirection() {
                let location = response
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or("redirected without a Location")?;
                current = current
                    .join(location)
                    .map_err(|e| format!("redirected to an invalid URL ({e})"))?;
                continue;
            }
            if !response.status().is_success() {
                return Err(format!("answered HTTP {}", response.status().as_u16()));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            if response.content_length().is_some_and(|n| n > self.max_bytes as u64) {
                return Err(format!("is larger than {} bytes", self.max_bytes));
            }
            let mut body = Vec::new();
            let mut stream = response.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| format!("could not be read ({e})"))?;
                if body.len() + chunk.len() > self.max_bytes {
                    return Err(format!("is larger than {} bytes", self.max_bytes));
                }
                body.extend_from_slice(&chunk);
            }
            return Ok((Bytes::from(body), content_type));
        }
        Err(format!(
            "redirected more than {} times",
            self.max_redirects.min(MAX_REDIRECTS)
        ))
    }

    /// The address to connect to for `url`, once every check passed.
    async fn checked_address(&self, url: &reqwest::Url) -> Result<SocketAddr, String> {
        let loopback_http = self.allow_loopback && url.scheme() == "http";
        if url.scheme() != "https" && !loopback_http {
            return Err(format!("uses {}: only https is fetched", url.scheme()));
        }
        let host = url.host_str().ok_or("has no host")?;
        if !self.host_allowed(host) {
            return Err(format!("is on host {host}, which is not on this gateway's allow-list"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let addresses: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .map_err(|e| format!("host {host} does not resolve ({e})"))?
            .collect();
        if addresses.is_empty() {
            return Err(format!("host {host} does not resolve"));
        }
        let allowed = |ip: IpAddr| self.allow_loopback && ip.is_loopback();
        if let Some(bad) = addresses.iter().find(|a| forbidden(a.ip()) && !allowed(a.ip())) {
            return Err(format!(
                "host {host} resolves to {}, a private or reserved address",
                bad.ip()
            ));
        }
        if loopback_http && addresses.iter().any(|a| !a.ip().is_loopback()) {
            return Err(format!(
                "uses http on host {host}: only https is fetched beyond loopback"
            ));
        }
        Ok(addresses[0])
    }
}

/// Addresses a server-side fetch must never reach.
pub fn forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let segments = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local (incl. fd00:ec2::254)
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] == 0x64 && segments[1] == 0xff9b) // NAT64 of anything
                || segments[0] == 0x2001 && segments[1] == 0x0db8 // documentation
                || v6 == Ipv6Addr::from([0u8; 16])
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // 169.254/16: cloud metadata
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_reserved_addresses_are_forbidden() {
        let forbidden_ones = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ];
        for ip in forbidden_ones {
            assert!(forbidden(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"] {
            assert!(!forbidden(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_list_matching() {
        let fetch = RemoteFetch {
            hosts: vec!["cdn.example.com".into(), ".images.example.org".into()],
            timeout: Duration::from_secs(1),
            max_bytes: 10,
            allow_loopback: false,
            max_redirects: 3,
        };
        assert!(fetch.host_allowed("cdn.example.com"));
        assert!(fetch.host_allowed("CDN.example.com."));
        assert!(fetch.host_allowed("a.images.example.org"));
        assert!(fetch.host_allowed("images.example.org"));
        assert!(!fetch.host_allowed("evil-cdn.example.com"));
        assert!(!fetch.host_allowed("cdn.example.com.evil.net"));
    }

    #[tokio::test]
    async fn listed_hosts_resolving_to_private_addresses_are_refused() {
        let fetch = RemoteFetch {
            hosts: vec!["localhost".into(), "127.0.0.1".into()],
            timeout: Duration::from_secs(1),
            max_bytes: 10,
            allow_loopback: false,
            max_redirects: 3,
        };
        for url in ["https://localhost/x.png", "https://127.0.0.1:8443/x.png"] {
            let error = fetch.fetch(url).await.unwrap_err();
            assert!(error.contains("private or reserved"), "{url}: {error}");
        }
        let error = fetch.fetch("http://localhost/x.png").await.unwrap_err();
        assert!(error.contains("only https"), "{error}");
        let error = fetch.fetch("https://example.net/x.png").await.unwrap_err();
        assert!(error.contains("allow-list"), "{error}");
    }
}
