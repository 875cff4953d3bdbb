//! Limits shared by several Envoy replicas: the filter asks the workspace's
//! `mcp-ratelimit` (ratelimit.v3 over gRPC, limitador counting in a real
//! Redis) with `hits_addend` = images, and fails open or closed as configured.

use gateway_tests::ratelimit_service::RateLimitService;
use gateway_tests::stack::{http_client, Edge};
use gateway_tests::{Stack, StackOptions};
use reqwest::header::HeaderMap;
use serde_json::{json, Value};

/// Five images per organisation per day, across every replica.
fn limits() -> Value {
    json!([{
        "namespace": "mcp-gateway", "max_value": 5, "seconds": 86400, "name": "org-daily-images",
        "conditions": [], "variables": ["descriptors[0].org"]
    }])
}

async fn start(service: &RateLimitService, failure_mode: &str, edge: Edge) -> Stack {
    Stack::start_with(StackOptions {
        filter_patch: json!({"global_rate_limit": {"cluster": "ratelimit", "timeout_ms": 500, "failure_mode": failure_mode}}),
        extra_clusters: service.envoy_cluster("ratelimit"),
        edge,
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn generate(url: &str, token: &str, id: u64, n: u64) -> (u16, HeaderMap, Value) {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a kite", "n": n, "size": "1024x1024"}}});
    let response = http_client()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn two_envoys_share_one_image_quota() {
    envoys_share_one_image_quota(Edge::Wasm).await;
}

/// The dynamic-module build asks the same service (gRPC over an HTTP callout).
#[tokio::test]
async fn dynamic_module_envoys_share_one_image_quota() {
    envoys_share_one_image_quota(Edge::DynamicModule).await;
}

async fn envoys_share_one_image_quota(edge: Edge) {
    let service = RateLimitService::start(&limits()).await.unwrap();
    let mut stack = start(&service, "deny", edge).await;
    let first = stack.mcp_url.clone();
    let second = stack.start_another_envoy().await.unwrap();
    let alice = stack.token("alice", "acme");
    let bob = stack.token("bob", "acme");

    // 2 + 2 images through different replicas: both fit in 5.
    let (status, _, body) = generate(&first, &alice, 1, 2).await;
    assert_eq!(
        (status, body["result"]["isError"].clone()),
        (200, json!(false)),
        "{body}"
    );
    let (status, _, body) = generate(&second, &bob, 2, 2).await;
    assert_eq!(
        (status, body["result"]["isError"].clone()),
        (200, json!(false)),
        "{body}"
    );

    // 4 + 2 > 5, whichever replica is asked: 429 with a JSON-RPC error and when to retry.
    for (url, id) in [(&first, 3), (&second, 4)] {
        let (status, headers, body) = generate(url, &alice, id, 2).await;
        assert_eq!(status, 429, "{body}");
        assert_eq!(
            (body["error"]["code"].clone(), body["id"].clone()),
            (json!(-32029), json!(id))
        );
        assert!(
            body["error"]["message"].as_str().unwrap().contains("org-daily-images"),
            "{body}"
        );
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=86_400).contains(&retry), "{retry}");
        assert_eq!(headers["ratelimit-policy"], "\"org-daily-images\";q=5;w=86400");
    }
    // The refused images were not counted: one more still fits, then none.
    let (status, _, body) = generate(&second, &alice, 5, 1).await;
    assert_eq!(status, 200, "{body}");
    let (status, _, _) = generate(&first, &bob, 6, 1).await;
    assert_eq!(status, 429);
    // Another organisation has its own count.
    let (status, _, body) = generate(&first, &stack.token("carol", "globex"), 7, 4).await;
    assert_eq!(
        (status, body["result"]["isError"].clone()),
        (200, json!(false)),
        "{body}"
    );

    // Only the admitted calls reached the upstream: 2 + 2 + 1 + 4 images in four calls.
    let events = stack.audit_events();
    assert_eq!(events.len(), 4, "{events:?}");
    let images: u64 = events.iter().map(|e| e["fields"]["n"].as_u64().unwrap_or(0)).sum();
    assert_eq!(images, 9, "{events:?}");
    if edge == Edge::Wasm {
        assert_eq!(
            stack
                .envoy_stat("wasmcustom.mcp_edge.global_limit_checks_total.result.over_limit")
                .await,
            2
        );
    }
    let prometheus = stack.prometheus().await;
    assert!(
        prometheus.lines().any(|l| l
            == format!(
                "{}{{result=\"over_limit\"}} 2",
                stack.edge_metric("mcp_edge_global_limit_checks_total")
            )),
        "{prometheus}"
    );
    // Listing tools is not an image request: no call to the service.
    let list = http_client()
        .post(&second)
        .header("authorization", format!("Bearer {alice}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":8,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
}

#[tokio::test]
async fn service_down_fails_closed_when_configured() {
    fails_closed(Edge::Wasm).await;
}

#[tokio::test]
async fn dynamic_module_service_down_fails_closed_when_configured() {
    fails_closed(Edge::DynamicModule).await;
}

async fn fails_closed(edge: Edge) {
    let mut service = RateLimitService::start(&limits()).await.unwrap();
    let stack = start(&service, "deny", edge).await;
    let token = stack.token("alice", "acme");
    let (status, _, body) = generate(&stack.mcp_url, &token, 1, 1).await;
    assert_eq!(status, 200, "{body}");

    service.stop_service();
    let (status, headers, body) = generate(&stack.mcp_url, &token, 2, 1).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        (body["error"]["code"].clone(), body["id"].clone()),
        (json!(-32030), json!(2))
    );
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(
        stack.audit_events().len(),
        1,
        "nothing reached the upstream while closed"
    );

    // Back up (Redis kept the count): admitted again, and the count went on from 1.
    service.start_service().await.unwrap();
    let mut admitted = 0;
    for id in 3..9 {
        let (status, _, _) = generate(&stack.mcp_url, &token, id, 1).await;
        if status == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 4, "5 per day, 1 used before the outage");
}

#[tokio::test]
async fn service_down_fails_open_when_configured() {
    let mut service = RateLimitService::start(&limits()).await.unwrap();
    let stack = start(&service, "allow", Edge::Wasm).await;
    let token = stack.token("alice", "acme");
    service.stop_service();
    // Over the shared limit, but the service is down: the local limits alone decide.
    for id in 1..=3 {
        let (status, _, body) = generate(&stack.mcp_url, &token, id, 2).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(stack.audit_events().len(), 3);
    assert_eq!(
        stack
            .envoy_stat("wasmcustom.mcp_edge.global_limit_checks_total.result.failed_open")
            .await,
        3
    );
}
