//! Every class of bad request is stopped by the Wasm filter inside real
//! Envoy with a precise answer, and none of them reaches the upstream.

use gateway_tests::h2_trailers::post_with_trailers;
use gateway_tests::stack::{http_client, Edge};
use gateway_tests::{Stack, StackOptions};
use mcp_image_gateway::cli::devkit;
use mcp_image_gateway::storage::signed_url::UrlSigner;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

const UPSTREAM_REQUESTS: &str = "cluster.mcp_upstream.upstream_rq_total";

fn mcp_headers(token: Option<&str>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert("mcp-protocol-version", HeaderValue::from_static("2025-06-18"));
    if let Some(token) = token {
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    headers
}

/// A `tools/call` body padded to exactly `len` bytes.
fn call_body_of_len(len: usize) -> Vec<u8> {
    let head =
        br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"generate_image","arguments":{"prompt":"a"#;
    let tail = br#""}}}"#;
    let mut body = head.to_vec();
    body.resize(len - tail.len(), b'a');
    body.extend_from_slice(tail);
    body
}

fn tamper(token: &str) -> String {
    let (rest, sig) = token.rsplit_once('.').unwrap();
    let mut sig = sig.as_bytes().to_vec();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    format!("{rest}.{}", String::from_utf8(sig).unwrap())
}

struct Case {
    name: &'static str,
    method: &'static str,
    headers: HeaderMap,
    body: Vec<u8>,
    status: u16,
    code: Option<i64>,
    challenge: Option<&'static str>,
}

#[tokio::test]
async fn bad_requests_are_rejected_at_the_edge() {
    bad_requests_are_rejected(Edge::Wasm).await;
}

/// The dynamic-module build answers every case of the table the same way.
#[tokio::test]
async fn dynamic_module_rejects_bad_requests_at_the_edge() {
    bad_requests_are_rejected(Edge::DynamicModule).await;
}

async fn bad_requests_are_rejected(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        edge,
        ..Default::default()
    })
    .await
    .unwrap();
    let good = stack.token("alice", "acme");
    let audience = devkit::audience(&stack.base_url);
    let now = chrono::Utc::now().timestamp() as u64;
    let expired = stack.token_issued_at("alice", "acme", &audience, 3600, Some(now - 7200));
    let wrong_audience = stack.token_with("alice", "acme", "https://other.example/mcp", 3600);
    let stranger_dir = std::env::temp_dir().join(format!("stranger-{}", uuid::Uuid::new_v4()));
    devkit::init(&stranger_dir).unwrap();
    let stranger = devkit::mint_token(
        &stranger_dir,
        &devkit::TokenRequest {
            issuer: devkit::dev_issuer(&stack.base_url),
            subject: "mallory".into(),
            org: "acme".into(),
            audience: audience.clone(),
            scope: String::new(),
            valid_for_secs: 3600,
            issued_at: None,
        },
    )
    .unwrap();
    std::fs::remove_dir_all(&stranger_dir).unwrap();
    let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#.to_vec();
    let call = |arguments: Value| {
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "generate_image", "arguments": arguments}})
            .to_string()
            .into_bytes()
    };
    let with = |name: &'static str, value: &'static str| {
        let mut headers = mcp_headers(Some(&good));
        headers.insert(name, HeaderValue::from_static(value));
        headers
    };
    let mut v2026 = mcp_headers(Some(&good));
    v2026.insert("mcp-protocol-version", HeaderValue::from_static("2026-07-28"));
    v2026.insert("mcp-method", HeaderValue::from_static("tools/call"));
    v2026.insert("mcp-name", HeaderValue::from_static("something_else"));
    let mut non_utf8 = mcp_headers(None);
    non_utf8.insert("authorization", HeaderValue::from_bytes(b"Bearer \xff\xfe").unwrap());

    let cases = vec![
        Case {
            name: "no token",
            method: "POST",
            headers: mcp_headers(None),
            body: list.clone(),
            status: 401,
            code: Some(-32001),
            challenge: Some("Bearer realm=\"mcp-image-gateway\""),
        },
        Case {
            name: "tampered signature",
            method: "POST",
            headers: mcp_headers(Some(&tamper(&good))),
            body: list.clone(),
            status: 401,
            code: Some(-32001),
            challenge: Some("error=\"invalid_token\""),
        },
        Case {
            name: "token from another key",
            method: "POST",
            headers: mcp_headers(Some(&stranger)),
            body: list.clone(),
            status: 401,
            code: Some(-32001),
            challenge: Some("error=\"invalid_token\""),
        },
        Case {
            name: "expired token",
            method: "POST",
            headers: mcp_headers(Some(&expired)),
            body: list.clone(),
            status: 401,
            code: Some(-32001),
            challenge: Some("expired"),
        },
        Case {
            name: "token for another audience",
            method: "POST",
            headers: mcp_headers(Some(&wrong_audience)),
            body: list.clone(),
            status: 401,
            code: Some(-32001),
            challenge: Some("audience"),
        },
        Case {
            name: "non-UTF-8 authorization",
            method: "POST",
            headers: non_utf8,
            body: list.clone(),
            status: 401,
            code: Some(-32001),
            challenge: Some("invalid_token"),
        },
        Case {
            name: "2049-byte body",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: call_body_of_len(2049),
            status: 413,
            code: Some(-32003),
            challenge: None,
        },
        Case {
            name: "not JSON",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: b"hello there".to_vec(),
            status: 400,
            code: Some(-32700),
            challenge: None,
        },
        Case {
            name: "batch",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#.to_vec(),
            status: 400,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "null id",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.to_vec(),
            status: 400,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "wrong jsonrpc version",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: br#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#.to_vec(),
            status: 400,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "empty body",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: Vec::new(),
            status: 400,
            code: Some(-32700),
            challenge: None,
        },
        Case {
            name: "foreign origin (DNS rebinding)",
            method: "POST",
            headers: with("origin", "http://evil.example.com"),
            body: list.clone(),
            status: 403,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "text/plain body",
            method: "POST",
            headers: with("content-type", "text/plain"),
            body: list.clone(),
            status: 415,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "accept without SSE",
            method: "POST",
            headers: with("accept", "application/json"),
            body: list.clone(),
            status: 406,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "unsupported protocol version",
            method: "POST",
            headers: with("mcp-protocol-version", "2024-11-05"),
            body: list.clone(),
            status: 400,
            code: Some(-32022),
            challenge: None,
        },
        Case {
            name: "Mcp-Name disagrees with body",
            method: "POST",
            headers: v2026.clone(),
            body: call(json!({"prompt": "x"})),
            status: 400,
            code: Some(-32020),
            challenge: None,
        },
        Case {
            name: "method not served",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: br#"{"jsonrpc":"2.0","id":1,"method":"sampling/createMessage","params":{}}"#.to_vec(),
            status: 404,
            code: Some(-32601),
            challenge: None,
        },
        Case {
            name: "unknown tool",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"shell","arguments":{}}}"#
                .to_vec(),
            status: 200,
            code: Some(-32602),
            challenge: None,
        },
        Case {
            name: "too many images",
            method: "POST",
            headers: mcp_headers(Some(&good)),
            body: call(json!({"prompt": "x", "n": 9})),
            status: 200,
            code: Some(-32602),
            challenge: None,
        },
        Case {
            name: "GET with a body",
            method: "GET",
            headers: mcp_headers(Some(&good)),
            body: list.clone(),
            status: 400,
            code: Some(-32600),
            challenge: None,
        },
        Case {
            name: "PUT",
            method: "PUT",
            headers: mcp_headers(Some(&good)),
            body: list.clone(),
            status: 405,
            code: Some(-32600),
            challenge: None,
        },
    ];

    let upstream_before = stack.envoy_stat(UPSTREAM_REQUESTS).await;
    let client = http_client();
    for case in &cases {
        let response = client
            .request(case.method.parse().unwrap(), &stack.mcp_url)
            .headers(case.headers.clone())
            .body(case.body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.unwrap();
        check_answer(case, case.name, status, &headers, &body);
    }
    // The same requests over HTTP/2, each body ended by a trailers frame
    // instead of END_STREAM on its last DATA frame: refused alike.
    for case in cases.iter().filter(|case| case.method == "POST") {
        let answer = post_with_trailers(&stack.mcp_url, &case.headers, &case.body)
            .await
            .unwrap();
        let name = format!("{} (HTTP/2, trailers)", case.name);
        check_answer(case, &name, answer.status, &answer.headers, &answer.body);
    }
    assert_eq!(
        stack.envoy_stat(UPSTREAM_REQUESTS).await,
        upstream_before,
        "a rejected request reached the upstream"
    );

    // The edge lets the limit itself through, and Envoy is still healthy.
    let at_limit = client
        .post(&stack.mcp_url)
        .headers(mcp_headers(Some(&good)))
        .body(call_body_of_len(2048))
        .send()
        .await
        .unwrap();
    assert_eq!(at_limit.status(), 200);
    assert_eq!(stack.envoy_stat(UPSTREAM_REQUESTS).await, upstream_before + 1);
    let at_limit = post_with_trailers(&stack.mcp_url, &mcp_headers(Some(&good)), &call_body_of_len(2048))
        .await
        .unwrap();
    assert_eq!(at_limit.status, 200, "{}", String::from_utf8_lossy(&at_limit.body));
    assert_eq!(stack.envoy_stat(UPSTREAM_REQUESTS).await, upstream_before + 2);
}

/// Checks one answer against its case: status, challenge, JSON-RPC code and id.
fn check_answer(case: &Case, name: &str, status: u16, headers: &HeaderMap, body: &[u8]) {
    assert_eq!(status, case.status, "case: {name}: {}", String::from_utf8_lossy(body));
    let challenge = headers.get("www-authenticate").map(|v| v.to_str().unwrap().to_string());
    match case.challenge {
        Some(expected) => {
            let challenge = challenge.unwrap_or_else(|| panic!("case {name}: no WWW-Authenticate"));
            assert!(challenge.starts_with("Bearer "), "case {name}: {challenge}");
            assert!(challenge.contains(expected), "case {name}: {challenge}");
        }
        None => assert!(challenge.is_none(), "case {name}"),
    }
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "case: {name}");
    assert_eq!(body["error"]["code"].as_i64(), case.code, "case: {name}: {body}");
    assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    // Every error answering a readable POSTed request carries its id,
    // even when decided on the headers (401 and 413 answer before reading).
    let request: Option<Value> = serde_json::from_slice(&case.body).ok();
    let expected_id = match (&request, case.method, case.status) {
        (Some(request), "POST", status) if status != 401 && status != 413 => request
            .get("id")
            .filter(|id| id.is_string() || id.is_i64() || id.is_u64())
            .cloned()
            .unwrap_or(Value::Null),
        _ => Value::Null,
    };
    assert_eq!(body["id"], expected_id, "case: {name}: {body}");
}

#[tokio::test]
async fn trailers_do_not_skip_tool_access_or_quotas() {
    trailers_keep_the_body_rules(Edge::Wasm).await;
}

#[tokio::test]
async fn dynamic_module_trailers_do_not_skip_tool_access_or_quotas() {
    trailers_keep_the_body_rules(Edge::DynamicModule).await;
}

/// A body ended by HTTP/2 trailers is held to per-tool access and the daily
/// quota like any other, and what passes reaches the upstream with the
/// caller's identity assertion (the upstream refuses a call without one).
async fn trailers_keep_the_body_rules(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        edge,
        filter_patch: json!({
            "tool_access": {"orgs": {"acme": ["list_models"]}},
            "rate_limits": {"daily_images_per_org": 1},
        }),
        ..Default::default()
    })
    .await
    .unwrap();
    let call = |tool: &str, arguments: Value| {
        json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
            .to_string()
            .into_bytes()
    };
    let send = |token: String, body: Vec<u8>| {
        let url = stack.mcp_url.clone();
        async move {
            post_with_trailers(&url, &mcp_headers(Some(&token)), &body)
                .await
                .unwrap()
        }
    };
    let upstream_before = stack.envoy_stat(UPSTREAM_REQUESTS).await;

    let refused = send(
        stack.token("alice", "acme"),
        call("generate_image", json!({"prompt": "a fox"})),
    )
    .await;
    let body: Value = serde_json::from_slice(&refused.body).unwrap();
    assert_eq!(refused.status, 403, "{body}");
    assert_eq!(
        (body["error"]["code"].as_i64(), &body["id"]),
        (Some(-32602), &json!(5)),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not available to organisation"),
        "{body}"
    );
    assert_eq!(
        stack.envoy_stat(UPSTREAM_REQUESTS).await,
        upstream_before,
        "refused, yet forwarded"
    );

    let allowed = send(stack.token("alice", "acme"), call("list_models", json!({}))).await;
    let text = String::from_utf8_lossy(&allowed.body);
    assert_eq!(allowed.status, 200, "{text}");
    assert!(
        text.contains("\"result\"") && !text.contains("\"isError\":true"),
        "{text}"
    );

    let generated = send(
        stack.token("bob", "beta"),
        call("generate_image", json!({"prompt": "a fox"})),
    )
    .await;
    let text = String::from_utf8_lossy(&generated.body);
    assert_eq!(generated.status, 200, "{text}");
    assert!(
        text.contains("\"result\"") && !text.contains("\"isError\":true"),
        "{text}"
    );
    let over = send(
        stack.token("bob", "beta"),
        call("generate_image", json!({"prompt": "a hare"})),
    )
    .await;
    let body: Value = serde_json::from_slice(&over.body).unwrap();
    assert_eq!(over.status, 429, "the day's one image is spent: {body}");
    assert_eq!(body["id"], json!(5), "{body}");
    assert_eq!(stack.envoy_stat(UPSTREAM_REQUESTS).await, upstream_before + 2);
}

#[tokio::test]
async fn oversized_chunked_body_is_rejected_while_streaming() {
    oversized_chunked_body(Edge::Wasm).await;
}

#[tokio::test]
async fn dynamic_module_rejects_an_oversized_chunked_body_while_streaming() {
    oversized_chunked_body(Edge::DynamicModule).await;
}

async fn oversized_chunked_body(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        edge,
        ..Default::default()
    })
    .await
    .unwrap();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        call_body_of_len(4096).chunks(512).map(|c| Ok(c.to_vec())).collect();
    let response = http_client()
        .post(&stack.mcp_url)
        .headers(mcp_headers(Some(&stack.token("alice", "acme"))))
        .body(reqwest::Body::wrap_stream(futures_stream(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(stack.envoy_stat(UPSTREAM_REQUESTS).await, 0);
}

fn futures_stream(
    chunks: Vec<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_core_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_core_stream::iter(chunks)
}

mod futures_core_stream {
    pub use futures::stream::{iter, Stream};
}

#[tokio::test]
async fn client_identity_headers_are_replaced_by_verified_ones() {
    let stack = Stack::start().await.unwrap();
    let mut headers = mcp_headers(Some(&stack.token("alice", "acme")));
    headers.insert("x-mcp-org", HeaderValue::from_static("evil"));
    headers.insert("x-mcp-user", HeaderValue::from_static("root"));
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "spoof"}}});
    let response = http_client()
        .post(&stack.mcp_url)
        .headers(headers)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reply: Value = response.json().await.unwrap();
    let url = reply["result"]["structuredContent"]["image_urls"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(url.contains("/images/acme/"), "{url}");
    let call = stack
        .audit_events()
        .into_iter()
        .find(|e| e["fields"]["event"] == "tool_call")
        .unwrap();
    assert_eq!(
        (call["fields"]["user"].as_str(), call["fields"]["org"].as_str()),
        (Some("alice"), Some("acme"))
    );
}

#[tokio::test]
async fn image_links_need_a_valid_unexpired_signature() {
    let stack = Stack::start().await.unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "links"}}});
    let reply: Value = http_client()
        .post(&stack.mcp_url)
        .headers(mcp_headers(Some(&stack.token("alice", "acme"))))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = reply["result"]["structuredContent"]["image_urls"][0]
        .as_str()
        .unwrap()
        .to_string();
    let (path, query) = url.split_once('?').unwrap();
    let key = path.split_once("/images/").unwrap().1.to_string();
    let sig = query.split_once("sig=").unwrap().1;
    let expires: i64 = query
        .split('&')
        .find_map(|p| p.strip_prefix("expires="))
        .unwrap()
        .parse()
        .unwrap();
    let kid = query.split('&').find_map(|p| p.strip_prefix("kid=")).unwrap();
    let signer = UrlSigner::new(stack.url_keys().unwrap(), &stack.base_url).unwrap();
    let past = chrono::Utc::now().timestamp() - 60;
    let other_key = key.replace(".png", "0.png");

    let flipped = format!("{}{}", if sig.starts_with('0') { "1" } else { "0" }, &sig[1..]);
    let cases = [
        ("valid link, no bearer token", url.clone(), 200, ""),
        (
            "tampered signature",
            format!("{path}?expires={expires}&kid={kid}&sig={flipped}"),
            403,
            "signature is invalid",
        ),
        (
            "extended expiry",
            format!("{path}?expires={}&kid={kid}&sig={sig}", expires + 3600),
            403,
            "signature is invalid",
        ),
        (
            "other key, same signature",
            format!(
                "{}/images/{other_key}?expires={expires}&kid={kid}&sig={sig}",
                stack.base_url
            ),
            403,
            "signature is invalid",
        ),
        ("expired link", signer.url(&key, past), 403, "expired"),
        ("missing signature", format!("{path}?expires={expires}"), 403, "missing"),
        (
            "signed but never stored",
            signer.url(&other_key, expires),
            404,
            "no longer exists",
        ),
    ];
    for (name, url, status, message) in cases {
        let response = http_client().get(&url).send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "case: {name}");
        if status != 200 {
            let body: Value = response.json().await.unwrap();
            assert!(
                body["message"].as_str().unwrap().contains(message),
                "case {name}: {body}"
            );
        }
    }
    let post = http_client().post(&url).body("x").send().await.unwrap();
    // Only GET/HEAD bypass the filter; anything else needs a bearer token.
    assert_eq!(post.status(), 401);
}

/// Header count and size are bounded by Envoy before any filter runs.
#[tokio::test]
async fn oversized_headers_are_refused() {
    let stack = Stack::start().await.unwrap();
    let mut many = mcp_headers(Some(&stack.token("alice", "acme")));
    for i in 0..70 {
        many.insert(
            reqwest::header::HeaderName::from_bytes(format!("x-filler-{i}").as_bytes()).unwrap(),
            HeaderValue::from_static("1"),
        );
    }
    let mut huge = mcp_headers(Some(&stack.token("alice", "acme")));
    huge.insert("x-filler", HeaderValue::from_str(&"a".repeat(17 * 1024)).unwrap());
    let before = stack.envoy_stat(UPSTREAM_REQUESTS).await;
    for (name, headers) in [("70 headers", many), ("17 KiB header", huge)] {
        let response = http_client()
            .post(&stack.mcp_url)
            .headers(headers)
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 431, "{name}");
    }
    assert_eq!(stack.envoy_stat(UPSTREAM_REQUESTS).await, before);
}
