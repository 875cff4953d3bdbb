//! A provider's rate-limit headers, read from every answer so the gateway
//! sees a model's quota running out before the provider has to refuse.
//!
//! OpenAI (and OpenAI-compatible servers that copy it) send, per kind,
//! `x-ratelimit-limit-{requests,tokens,images}`,
//! `x-ratelimit-remaining-…` and `x-ratelimit-reset-…` (a Go-style
//! duration: `1s`, `6m0s`, `20ms`, `1h2m3.5s`). Servers following the IETF
//! draft send `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`
//! (seconds), read as the request window.

use reqwest::header::HeaderMap;

/// What a provider's quota is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Requests,
    Tokens,
    Images,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Requests, Kind::Tokens, Kind::Images];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Requests => "requests",
            Kind::Tokens => "tokens",
            Kind::Images => "images",
        }
    }
}

/// One window of a provider's quota, as its last answer told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Window {
    pub limit: u64,
    pub remaining: u64,
    /// Until the window refills, from the answer.
    pub reset_ms: u64,
}

/// Every window one answer described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaReading {
    pub windows: Vec<(Kind, Window)>,
}

impl QuotaReading {
    pub fn get(&self, kind: Kind) -> Option<Window> {
        self.windows.iter().find(|(k, _)| *k == kind).map(|(_, w)| *w)
    }
}

/// The windows `headers` describe; `None` when they describe none.
pub fn read(headers: &HeaderMap) -> Option<QuotaReading> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let mut windows = Vec::new();
    for kind in Kind::ALL {
        let name = kind.as_str();
        let limit = text(&format!("x-ratelimit-limit-{name}")).and_then(|v| v.parse().ok());
        let remaining = text(&format!("x-ratelimit-remaining-{name}")).and_then(|v| v.parse().ok());
        let reset = text(&format!("x-ratelimit-reset-{name}")).and_then(duration_ms);
        if let (Some(limit), Some(remaining)) = (limit, remaining) {
            windows.push((
                kind,
                Window {
                    limit,
                    remaining,
                    reset_ms: reset.unwrap_or(0),
                },
            ));
        }
    }
    if windows.iter().all(|(kind, _)| *kind != Kind::Requests) {
        let limit = text("ratelimit-limit").and_then(|v| v.parse().ok());
        let remaining = text("ratelimit-remaining").and_then(|v| v.parse().ok());
        let reset = text("ratelimit-reset").and_then(|v| v.parse::<u64>().ok());
        if let (Some(limit), Some(remaining)) = (limit, remaining) {
            windows.push((
                Kind::Requests,
                Window {
                    limit,
                    remaining,
                    reset_ms: reset.unwrap_or(0).saturating_mul(1000),
                },
            ));
        }
    }
    (!windows.is_empty()).then_some(QuotaReading { windows })
}

/// A Go-style duration (`1h2m3.5s`, `20ms`, `6m0s`) or plain seconds, in ms.
fn duration_ms(text: &str) -> Option<u64> {
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| (seconds * 1000.0).round() as u64);
    }
    if text.is_empty() {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&end| end > 0)?;
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1_000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("1s", Some(1_000)),
            ("6m0s", Some(360_000)),
            ("20ms", Some(20)),
            ("1h2m3.5s", Some(3_723_500)),
            ("0.25s", Some(250)),
            ("30", Some(30_000)),
            ("", None),
            ("soon", None),
            ("5x", None),
            ("-3", None),
        ] {
            assert_eq!(duration_ms(text), ms, "{text:?}");
        }
    }

    #[test]
    fn openai_headers() {
        let reading = read(&headers(&[
            ("x-ratelimit-limit-requests", "60"),
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-tokens", "6m0s"),
        ]))
        .unwrap();
        assert_eq!(
            reading.get(Kind::Requests),
            Some(Window {
                limit: 60,
                remaining: 59,
                reset_ms: 1_000
            })
        );
        assert_eq!(reading.get(Kind::Tokens).unwrap().reset_ms, 360_000);
        assert_eq!(reading.get(Kind::Images), None);
    }

    #[test]
    fn ietf_draft_headers_and_nothing() {
        let reading = read(&headers(&[
            ("RateLimit-Limit", "100"),
            ("RateLimit-Remaining", "7"),
            ("RateLimit-Reset", "12"),
        ]))
        .unwrap();
        assert_eq!(
            reading.get(Kind::Requests),
            Some(Window {
                limit: 100,
                remaining: 7,
                reset_ms: 12_000
            })
        );
        assert_eq!(read(&headers(&[("content-type", "application/json")])), None);
        // A window needs both its limit and what remains.
        assert_eq!(read(&headers(&[("x-ratelimit-remaining-requests", "3")])), None);
    }
}
