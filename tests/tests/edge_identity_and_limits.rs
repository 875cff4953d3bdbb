//! API keys, scopes, protected-resource metadata, rate limits, quotas and
//! the filter's metrics, through real Envoy.

use std::collections::BTreeMap;

use gateway_tests::stack::http_client;
use gateway_tests::stack::Edge;
use gateway_tests::{Stack, StackOptions};
use mcp_image_gateway::cli::devkit;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

fn headers(auth: Option<(&'static str, String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    if let Some((name, value)) = auth {
        headers.insert(name, HeaderValue::from_str(&value).unwrap());
    }
    headers
}

fn bearer(token: &str) -> Option<(&'static str, String)> {
    Some(("authorization", format!("Bearer {token}")))
}

fn call(n: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a kite", "n": n, "size": "1024x1024"}}})
}

const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;

async fn post(stack: &Stack, headers: HeaderMap, body: String) -> (u16, HeaderMap, Value) {
    let response = http_client()
        .post(&stack.mcp_url)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn api_keys_scopes_and_metadata() {
    let stack = Stack::start().await.unwrap();
    let key = stack.api_key();

    // The dev API key works in x-api-key and as an opaque bearer; its id reaches the audit log.
    for auth in [Some(("x-api-key", key.clone())), bearer(&key)] {
        let (status, _, body) = post(&stack, headers(auth), call(1).to_string()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["isError"], false, "{body}");
    }
    let events = stack.audit_events();
    assert_eq!(events.len(), 2);
    assert!(
        events
            .iter()
            .all(|e| e["fields"]["key_id"] == "dev-key" && e["fields"]["org"] == "acme"),
        "{events:?}"
    );

    let (status, headers_out, _) = post(&stack, headers(Some(("x-api-key", "mig_wrong".into()))), LIST.into()).await;
    assert_eq!(status, 401);
    assert!(headers_out["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("invalid_token"));

    // A token without the tools scope may list tools but not call them.
    let audience = devkit::audience(&stack.base_url);
    let reader = stack.token_full("rita", "acme", &audience, "images:read", 3600, None);
    let (status, _, _) = post(&stack, headers(bearer(&reader)), LIST.into()).await;
    assert_eq!(status, 200);
    let (status, headers_out, body) = post(&stack, headers(bearer(&reader)), call(1).to_string()).await;
    assert_eq!(status, 403, "{body}");
    let challenge = headers_out["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\", scope=\"images:generate\""),
        "{challenge}"
    );
    assert!(challenge.contains(&format!(
        "resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
        stack.base_url
    )));
    assert_eq!(body["id"], 1);

    // RFC 9728 metadata, served by the filter without a token, and named by every 401.
    for path in [
        "/.well-known/oauth-protected-resource",
        "/.well-known/oauth-protected-resource/mcp",
    ] {
        let response = http_client()
            .get(format!("{}{path}", stack.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let document: Value = response.json().await.unwrap();
        assert_eq!(document["resource"], audience);
        assert_eq!(
            document["authorization_servers"],
            json!([devkit::dev_issuer(&stack.base_url)])
        );
    }
    let (status, headers_out, _) = post(&stack, headers(None), LIST.into()).await;
    assert_eq!(status, 401);
    assert_eq!(
        headers_out["www-authenticate"],
        format!(
            "Bearer realm=\"mcp-image-gateway\", resource_metadata=\"{}/.well-known/oauth-protected-resource\"",
            stack.base_url
        )
        .as_str()
    );
}

#[tokio::test]
async fn caller_bucket_answers_429_with_ratelimit_headers() {
    let patch = json!({"rate_limits": {"per_caller": {"requests_per_second": 0.01, "burst": 3}}});
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    for _ in 0..3 {
        assert_eq!(post(&stack, headers(bearer(&token)), LIST.into()).await.0, 200);
    }
    let (status, h, body) = post(&stack, headers(bearer(&token)), LIST.into()).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], -32029);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Rate limit exceeded"),
        "{body}"
    );
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=100).contains(&retry), "{retry}");
    assert_eq!(h["ratelimit-policy"], "\"caller\";q=3;w=300");
    assert_eq!(h["ratelimit"].to_str().unwrap(), format!("\"caller\";r=0;t={retry}"));
    // Another user of the same org has a bucket of its own.
    let bob = stack.token("bob", "acme");
    assert_eq!(post(&stack, headers(bearer(&bob)), LIST.into()).await.0, 200);

    let metrics = stack.prometheus().await;
    assert!(
        metrics.contains("mcp_edge_rate_limited_total{reason=\"rate_limited_caller\",org=\"acme\",key=\"jwt\"} 1"),
        "{metrics}"
    );
}

/// Many concurrent requests spread over four Envoy workers cannot take more
/// than the bucket holds: the counters are shared, not per worker.
#[tokio::test]
async fn bucket_holds_across_envoy_workers() {
    bucket_holds(Edge::Wasm).await;
}

/// The dynamic-module build's worker threads share one process-wide store.
#[tokio::test]
async fn dynamic_module_bucket_holds_across_envoy_workers() {
    bucket_holds(Edge::DynamicModule).await;
}

async fn bucket_holds(edge: Edge) {
    let patch = json!({"rate_limits": {"per_org": {"requests_per_second": 0.001, "burst": 12}}});
    let options = StackOptions {
        filter_patch: patch,
        envoy_concurrency: 4,
        edge,
        ..Default::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let tokens: Vec<String> = (0..6).map(|i| stack.token(&format!("user{i}"), "acme")).collect();
    let counts = concurrent_lists(&stack, &tokens, 60).await;
    assert_eq!(counts, BTreeMap::from([(200, 12), (429, 48)]));
}

/// `count` concurrent `tools/list` calls, spread over `tokens`, each on a
/// fresh client (so the connections spread over Envoy's workers); the number
/// of answers by HTTP status.
async fn concurrent_lists(stack: &Stack, tokens: &[String], count: usize) -> BTreeMap<u16, u64> {
    let mut tasks = Vec::new();
    for i in 0..count {
        let url = stack.mcp_url.clone();
        let token = tokens[i % tokens.len()].clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().no_proxy().build().unwrap();
            let response = client
                .post(url)
                .headers(headers(bearer(&token)))
                .body(LIST)
                .send()
                .await
                .unwrap();
            response.status().as_u16()
        }));
    }
    let mut counts = BTreeMap::new();
    for task in tasks {
        *counts.entry(task.await.unwrap()).or_insert(0) += 1;
    }
    counts
}

/// A large bucket is served from per-worker leases (filter/src/leases.rs):
/// across four workers nothing beyond the bucket is admitted, and at most
/// one partial lease per other worker is left unspent.
#[tokio::test]
async fn leased_tokens_never_exceed_the_bucket_across_workers() {
    let patch = json!({"rate_limits": {"per_org": {"requests_per_second": 0.001, "burst": 160}}});
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        envoy_concurrency: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    let tokens: Vec<String> = (0..8).map(|i| stack.token(&format!("user{i}"), "acme")).collect();
    let counts = concurrent_lists(&stack, &tokens, 240).await;
    let admitted = counts.get(&200).copied().unwrap_or(0);
    let stranded = 3 * (mcp_edge_filter::leases::MAX_LEASE - 1);
    assert!(admitted <= 160, "over-admitted: {counts:?}");
    assert!(admitted >= 160 - stranded, "too many tokens left in leases: {counts:?}");
    assert_eq!(counts.get(&429).copied().unwrap_or(0), 240 - admitted, "{counts:?}");
}

#[tokio::test]
async fn daily_image_quota_per_org() {
    let patch = json!({"rate_limits": {"orgs": {"acme": {"daily_images": 5}}}});
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let (status, _, body) = post(&stack, headers(bearer(&token)), call(4).to_string()).await;
    assert_eq!(
        (status, body["result"]["isError"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let (status, h, body) = post(&stack, headers(bearer(&token)), call(2).to_string()).await;
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("used 4 of its 5 images"), "{message}");
    assert!(h["ratelimit-policy"]
        .to_str()
        .unwrap()
        .starts_with("\"org-daily-images\";q=5;w=86400"));
    let (status, _, _) = post(&stack, headers(bearer(&token)), call(1).to_string()).await;
    assert_eq!(status, 200, "the last image still fits");
    // Another org is not affected.
    let globex = stack.token("gina", "globex");
    assert_eq!(post(&stack, headers(bearer(&globex)), call(4).to_string()).await.0, 200);
}

#[tokio::test]
async fn decisions_show_in_envoy_prometheus_stats() {
    decisions_show_in_prometheus(Edge::Wasm).await;
}

/// The dynamic-module build counts the same decisions under the same labels.
#[tokio::test]
async fn dynamic_module_decisions_show_in_envoy_prometheus_stats() {
    decisions_show_in_prometheus(Edge::DynamicModule).await;
}

async fn decisions_show_in_prometheus(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        edge,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    for _ in 0..3 {
        assert_eq!(post(&stack, headers(bearer(&token)), LIST.into()).await.0, 200);
    }
    assert_eq!(post(&stack, headers(None), LIST.into()).await.0, 401);
    assert_eq!(post(&stack, headers(bearer(&token)), "[]".into()).await.0, 400);
    // Forwarded requests and cache lookups reach Envoy's stats on the
    // filter's next tick (100 ms); refusals at once.
    let name = |metric: &str| stack.edge_metric(metric);
    let forwarded = format!(
        "{}{{decision=\"forward\",reason=\"ok\"}} 3",
        name("mcp_edge_requests_total")
    );
    let mut metrics = stack.prometheus().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    // Each worker flushes on its own tick: wait for all four lookups too.
    let lookups = |metrics: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&name("mcp_edge_token_cache_lookups_total{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    while !(metrics.lines().any(|l| l == forwarded) && lookups(&metrics) >= 4) && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        metrics = stack.prometheus().await;
    }
    let value = |line_start: &str| -> u64 {
        let line_start = name(line_start);
        metrics
            .lines()
            .find(|l| l.starts_with(&line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{line_start} missing in:\n{metrics}"))
    };
    assert_eq!(value("mcp_edge_requests_total{decision=\"forward\",reason=\"ok\"}"), 3);
    assert_eq!(
        value("mcp_edge_requests_total{decision=\"reject\",reason=\"missing_token\"}"),
        1
    );
    assert_eq!(
        value("mcp_edge_requests_total{decision=\"reject\",reason=\"invalid_request\"}"),
        1
    );
    assert_eq!(value("mcp_edge_auth_failures_total{cause=\"missing_token\"}"), 1);
    let hits = value("mcp_edge_token_cache_lookups_total{result=\"hit\"}");
    let misses = value("mcp_edge_token_cache_lookups_total{result=\"miss\"}");
    assert_eq!(hits + misses, 4, "one lookup per authenticated request");
    assert!(misses <= 2, "at most one signature check per worker: {misses}");
}

/// The output cap: a response larger than `max_response_bytes` is replaced
/// by a JSON-RPC error for the same request id (lowered here to provoke it).
#[tokio::test]
async fn oversized_upstream_response_becomes_a_jsonrpc_error() {
    oversized_response(Edge::Wasm).await;
}

#[tokio::test]
async fn dynamic_module_oversized_upstream_response_becomes_a_jsonrpc_error() {
    oversized_response(Edge::DynamicModule).await;
}

async fn oversized_response(edge: Edge) {
    let patch = json!({"max_response_bytes": 2500});
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        edge,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let (status, _, body) = post(&stack, headers(bearer(&token)), call(1).to_string()).await;
    assert_eq!(status, 200, "a one-image result fits: {body}");
    let (status, _, body) = post(&stack, headers(bearer(&token)), call(4).to_string()).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["id"], 1, "{body}");
    assert_eq!(body["error"]["code"], -32603);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("output limit of 2500 bytes"),
        "{body}"
    );
}

/// The same decision core built as an Envoy dynamic module (the edge
/// benchmark's native row) through real Envoy and the real upstream: the
/// upstream accepts its identity assertion, spoofed identity headers are
/// dropped, and buckets, quotas and JSON-RPC refusals answer as the Wasm
/// filter does.
#[tokio::test]
async fn dynamic_module_build_makes_the_same_decisions() {
    let patch = json!({"rate_limits": {
        "per_caller": {"requests_per_second": 0.01, "burst": 3},
        "orgs": {"acme": {"daily_images": 5}}}});
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        edge: Edge::DynamicModule,
        ..Default::default()
    })
    .await
    .unwrap();
    let alice = stack.token("alice", "acme");
    let mut spoofed = headers(bearer(&alice));
    spoofed.insert("x-mcp-user", HeaderValue::from_static("mallory"));
    let (status, _, body) = post(&stack, spoofed, call(1).to_string()).await;
    assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "{body}");
    let events = stack.audit_events();
    let fields = &events.last().expect("an audit event")["fields"];
    assert_eq!(
        (fields["user"].as_str(), fields["org"].as_str()),
        (Some("alice"), Some("acme"))
    );

    for _ in 0..2 {
        assert_eq!(post(&stack, headers(bearer(&alice)), LIST.into()).await.0, 200);
    }
    let (status, h, body) = post(&stack, headers(bearer(&alice)), LIST.into()).await;
    assert_eq!((status, &body["error"]["code"]), (429, &json!(-32029)), "{body}");
    assert_eq!(h["ratelimit-policy"], "\"caller\";q=3;w=300");

    let bob = stack.token("bob", "acme");
    assert_eq!(post(&stack, headers(bearer(&bob)), call(4).to_string()).await.0, 200);
    let (status, _, body) = post(&stack, headers(bearer(&bob)), call(1).to_string()).await;
    assert_eq!(status, 429, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("used 5 of its 5 images"), "{message}");

    let carol = stack.token("carol", "acme");
    let (status, _, body) = post(&stack, headers(bearer(&carol)), r#"{"jsonrpc":"2.0","id":7,"#.into()).await;
    assert_eq!((status, &body["error"]["code"]), (400, &json!(-32700)), "{body}");
    let big = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {"pad": "x".repeat(4096)}});
    assert_eq!(post(&stack, headers(bearer(&carol)), big.to_string()).await.0, 413);
    let (status, h, _) = post(&stack, headers(None), LIST.into()).await;
    assert_eq!(status, 401);
    assert!(h.contains_key("www-authenticate"));
    // RFC 9728 metadata, served by the module itself.
    let response = http_client()
        .get(format!("{}/.well-known/oauth-protected-resource", stack.base_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "max-age=3600");
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["resource"], devkit::audience(&stack.base_url));

    // Built against this Envoy's ABI: a mismatch would only be a warning.
    assert!(!stack.log("envoy").contains("ABI version"), "{}", stack.log("envoy"));

    let metrics = stack.prometheus().await;
    for line in [
        "envoy_mcp_edge_rate_limited_total{reason=\"rate_limited_caller\",org=\"acme\",key=\"jwt\"} 1",
        "envoy_mcp_edge_quota_images{kind=\"used\",org=\"acme\"} 5",
        "envoy_mcp_edge_quota_images{kind=\"limit\",org=\"acme\"} 5",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing in:\n{metrics}");
    }
}

/// The output cap on a stream (SSE, no declared length): the stream is cut
/// where it passes the cap and ends with a JSON-RPC error event for the
/// request's id.
#[tokio::test]
async fn streamed_response_over_the_cap_is_cut_off_with_an_error_event() {
    streamed_response_cut_off(Edge::Wasm).await;
}

#[tokio::test]
async fn dynamic_module_cuts_off_a_streamed_response_over_the_cap() {
    streamed_response_cut_off(Edge::DynamicModule).await;
}

async fn streamed_response_cut_off(edge: Edge) {
    let stack = Stack::start_with(StackOptions {
        filter_patch: json!({"max_response_bytes": 700}),
        edge,
        ..Default::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let mut h = headers(bearer(&token));
    h.insert("mcp-protocol-version", HeaderValue::from_static("2025-06-18"));
    let body = json!({"jsonrpc": "2.0", "id": 41, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a kite", "n": 4},
                   "_meta": {"progressToken": "p1"}}});
    let response = http_client()
        .post(&stack.mcp_url)
        .headers(h)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let streamed = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream");
    assert!(streamed, "{:?}", response.headers());
    assert_eq!(response.status(), 200, "the stream had started");
    let text = response.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap_or_default();
    let data: Value = serde_json::from_str(last.trim_start_matches("event: message\ndata: ")).unwrap();
    assert_eq!(
        (data["id"].clone(), data["error"]["code"].clone()),
        (json!(41), json!(-32603)),
        "{text}"
    );
    assert!(data["error"]["message"]
        .as_str()
        .unwrap()
        .contains("output limit of 700 bytes"));
    assert!(
        text.len() <= 700 + last.len() + 2,
        "nothing passes after the cut: {} bytes",
        text.len()
    );
}
