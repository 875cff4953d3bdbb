//! Provider answers, read within a bound. Whatever answers at a provider's
//! address can send a body of any length, or one without end: read whole
//! before any check, it would all be held. Here a declared `Content-Length`
//! over the limit is refused before a byte is read, and chunks are counted
//! as they arrive: a call holds at most the limit of an answer, and fails
//! with an error that names it. Every provider client reads through here.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::BackendError;

/// Room for what surrounds the images of an answer: JSON fields, usage,
/// server-sent event framing, error envelopes.
pub const ENVELOPE_BYTES: usize = 1024 * 1024;

/// The length of `bytes` bytes as padded base64 (a third more).
pub const fn base64_len(bytes: usize) -> usize {
    bytes.div_ceil(3).saturating_mul(4)
}

/// The most read of an answer carrying `images` base64-encoded images of at
/// most `max_image_bytes` each (`GATEWAY_MAX_IMAGE_BYTES`).
pub fn base64_images_limit(images: usize, max_image_bytes: usize) -> usize {
    images
        .saturating_mul(base64_len(max_image_bytes))
        .saturating_add(ENVELOPE_BYTES)
}

/// The most read of an answer that is one image's bytes.
pub fn raw_image_limit(max_image_bytes: usize) -> usize {
    max_image_bytes.saturating_add(ENVELOPE_BYTES)
}

/// Why an answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Longer than the limit: nothing past it was read.
    #[error("the answer is over the gateway's limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("{0}")]
    Transport(#[source] reqwest::Error),
}

impl ReadError {
    /// The caller's error: the limit in words, or the transport failure as
    /// `transport` words it.
    pub fn into_backend(self, transport: impl FnOnce(reqwest::Error) -> BackendError) -> BackendError {
        match self {
            ReadError::TooLarge { limit } => too_large(limit),
            ReadError::Transport(error) => transport(error),
        }
    }

    /// The `ReadError` behind `error`, when a reader wrapped one (a stream
    /// parser's error around a bounded body).
    pub fn find<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a ReadError> {
        let mut cause = Some(error);
        while let Some(current) = cause {
            if let Some(found) = current.downcast_ref::<ReadError>() {
                return Some(found);
            }
            cause = current.source();
        }
        None
    }
}

/// An answer over the limit, as the caller reads it.
pub fn too_large(limit: usize) -> BackendError {
    BackendError::InvalidResponse(format!(
        "its answer was over the gateway's limit of {limit} bytes (GATEWAY_MAX_IMAGE_BYTES for each image asked for, as the provider encodes it, plus {} KiB); the rest was not read",
        ENVELOPE_BYTES / 1024
    ))
}

/// Reads `response`'s body, at most `limit` bytes of it.
pub async fn read(response: reqwest::Response, limit: usize) -> Result<Bytes, ReadError> {
    let declared = response.content_length();
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(ReadError::TooLarge { limit });
    }
    // A declared length is a promise, not a reservation: grow as bytes arrive.
    let mut body = BytesMut::with_capacity(declared.map_or(0, |length| length.min(1 << 20) as usize));
    let mut chunks = std::pin::pin!(bounded(response.bytes_stream(), limit));
    while let Some(chunk) = chunks.next().await {
        body.extend_from_slice(&chunk?);
    }
    Ok(body.freeze())
}

/// `chunks` while their total stays within `limit`; then one `TooLarge`
/// and the end (nothing more is pulled from the connection).
pub fn bounded(
    chunks: impl Stream<Item = Result<Bytes, reqwest::Error>>,
    limit: usize,
) -> impl Stream<Item = Result<Bytes, ReadError>> {
    chunks.scan((0usize, false), move |(seen, over), chunk| {
        let item = match chunk {
            _ if *over => None,
            Err(error) => Some(Err(ReadError::Transport(error))),
            Ok(chunk) => {
                *seen = seen.saturating_add(chunk.len());
                *over = *seen > limit;
                Some(if *over {
                    Err(ReadError::TooLarge { limit })
                } else {
                    Ok(chunk)
                })
            }
        };
        futures::future::ready(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server answering every connection with `length` bytes in 8 KiB
    /// chunks, declaring the length or not; its URL.
    async fn server(length: usize, declared: bool) -> String {
        let app = axum::Router::new().fallback(move || async move {
            let chunks = (0..length.div_ceil(8192))
                .map(move |i| Ok::<_, std::convert::Infallible>(Bytes::from(vec![b'a'; 8192.min(length - i * 8192)])));
            let mut response =
                axum::response::Response::new(axum::body::Body::from_stream(futures::stream::iter(chunks)));
            if declared {
                response
                    .headers_mut()
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(length));
            }
            response
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    async fn get(url: &str) -> reqwest::Response {
        reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn answers_within_the_limit_are_read_whole_and_longer_ones_refused() {
        let cases = [
            ("declared, within", 100_000, true, Some(100_000)),
            ("streamed, within", 100_000, false, Some(100_000)),
            ("exactly the limit", 200_000, false, Some(200_000)),
            ("declared, over", 300_000, true, None),
            ("streamed, over", 3_000_000, false, None),
        ];
        for (name, length, declared, expected) in cases {
            let read = read(get(&server(length, declared).await).await, 200_000).await;
            match (read, expected) {
                (Ok(bytes), Some(length)) => assert_eq!(bytes.len(), length, "{name}"),
                (Err(ReadError::TooLarge { limit: 200_000 }), None) => {}
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
        let message = too_large(200_000).to_string();
        assert!(
            message.contains("limit of 200000 bytes") && message.contains("GATEWAY_MAX_IMAGE_BYTES"),
            "{message}"
        );
    }

    #[tokio::test]
    async fn a_bounded_stream_ends_at_the_limit() {
        let response = get(&server(1_000_000, false).await).await;
        let items: Vec<_> = bounded(response.bytes_stream(), 20_000).collect().await;
        let passed: usize = items.iter().filter_map(|i| i.as_ref().ok()).map(Bytes::len).sum();
        assert!(passed <= 20_000, "{passed}");
        assert!(matches!(items.last(), Some(Err(ReadError::TooLarge { limit: 20_000 }))));
        // A parser's error around it still tells the cause.
        let wrapped = sse_stream::Error::Body(Box::new(ReadError::TooLarge { limit: 7 }));
        assert!(matches!(
            ReadError::find(&wrapped),
            Some(ReadError::TooLarge { limit: 7 })
        ));
    }

    #[test]
    fn limits_leave_room_for_base64_and_the_envelope() {
        assert_eq!(base64_len(3), 4);
        assert_eq!(base64_len(4), 8);
        let four_mib = 4 * 1024 * 1024;
        assert_eq!(base64_images_limit(2, four_mib), 2 * 5_592_408 + ENVELOPE_BYTES);
        assert_eq!(raw_image_limit(four_mib), four_mib + ENVELOPE_BYTES);
    }
}
