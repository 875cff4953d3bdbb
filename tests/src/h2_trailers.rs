//! An HTTP/2 client (h2c, prior knowledge) that ends a request's body with a
//! trailers frame instead of a DATA frame with END_STREAM: the shape of
//! request the edge must check exactly as it checks one ending in DATA.

use std::time::Duration;

use anyhow::Context;
use reqwest::header::HeaderMap;

/// What came back.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// POSTs `body` to `url` with `headers`, then ends the stream with a
/// trailers frame (`x-body-checksum`). An empty `body` sends no DATA at all:
/// the trailers end a stream whose headers did not.
pub async fn post_with_trailers(url: &str, headers: &HeaderMap, body: &[u8]) -> anyhow::Result<Answer> {
    let parsed: reqwest::Url = url.parse()?;
    let host = parsed.host_str().context("the URL has no host")?;
    let port = parsed.port_or_known_default().context("the URL has no port")?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    let (client, connection) = h2::client::handshake(tcp).await?;
    let driver = tokio::spawn(connection);
    let answer = tokio::time::timeout(Duration::from_secs(30), exchange(client, url, headers, body)).await;
    driver.abort();
    answer.context("no answer within 30 s")?
}

async fn exchange(
    client: h2::client::SendRequest<bytes::Bytes>,
    url: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> anyhow::Result<Answer> {
    let mut client = client.ready().await?;
    let mut request = http::Request::builder().method("POST").uri(url);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let (response, mut stream) = client.send_request(request.body(())?, false)?;
    if !body.is_empty() {
        stream.send_data(bytes::Bytes::copy_from_slice(body), false)?;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-body-checksum", "0".parse()?);
    stream.send_trailers(trailers)?;
    let (parts, mut received) = response.await?.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = received.data().await {
        let chunk = chunk?;
        let _ = received.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
