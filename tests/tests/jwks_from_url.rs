//! Signing keys fetched by the filter from the IAM's JWKS URL through an
//! Envoy cluster: loaded at start, rotated on refresh, and kept when a
//! refresh fails or the settings change live.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use gateway_tests::stack::{http_client, Edge};
use gateway_tests::{Stack, StackOptions};
use jwt_simple::prelude::*;
use mcp_image_gateway::cli::devkit;
use serde_json::json;

type Jwks = Arc<Mutex<(StatusCode, String)>>;

async fn serve_jwks(jwks: Jwks) -> u16 {
    let app = axum::Router::new()
        .route(
            "/jwks.json",
            get(|State(jwks): State<Jwks>| async move {
                let (status, body) = jwks.lock().unwrap().clone();
                (status, [("content-type", "application/json")], body)
            }),
        )
        .with_state(jwks);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

async fn status(stack: &Stack, token: &str) -> u16 {
    http_client()
        .post(&stack.mcp_url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Polls until `token` gets `expected`, for at most 10 s.
async fn eventually(stack: &Stack, token: &str, expected: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = 0;
    while Instant::now() < deadline {
        last = status(stack, token).await;
        if last == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("expected {expected}, still {last} after 10 s");
}

#[tokio::test]
async fn keys_load_rotate_and_survive_a_failed_refresh() {
    keys_load_rotate_and_survive(Edge::Wasm).await;
}

/// The dynamic-module build: one fetch loop on Envoy's main thread, the
/// keys published to every worker.
#[tokio::test]
async fn dynamic_module_keys_load_rotate_and_survive_a_failed_refresh() {
    keys_load_rotate_and_survive(Edge::DynamicModule).await;
}

async fn keys_load_rotate_and_survive(edge: Edge) {
    let jwks: Jwks = Arc::new(Mutex::new((StatusCode::SERVICE_UNAVAILABLE, String::new())));
    let port = serve_jwks(jwks.clone()).await;
    let cluster = format!(
        "  - name: iam_jwks\n    type: STATIC\n    connect_timeout: 1s\n    load_assignment:\n      cluster_name: iam_jwks\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n"
    );
    let patch = json!({"jwt": {
        "issuer": "https://iam.test",
        "audiences": ["placeholder"],
        "jwks_uri": {"cluster": "iam_jwks", "path": "/jwks.json", "authority": "iam.test", "refresh_seconds": 1, "retry_seconds": 1}
    }});
    // The audience is fixed here ("placeholder") because the stack picks its port later.
    let options = StackOptions {
        filter_patch: patch,
        extra_clusters: cluster,
        edge,
        live_settings: true,
        ..Default::default()
    };
    let mut stack = Stack::start_with(options).await.unwrap();
    let dev_token = devkit::mint_token(
        &stack.state_dir,
        &devkit::TokenRequest {
            issuer: "https://iam.test".into(),
            subject: "alice".into(),
            org: "acme".into(),
            audience: "placeholder".into(),
            scope: devkit::TOOLS_SCOPE.into(),
            valid_for_secs: 3600,
            issued_at: None,
        },
    )
    .unwrap();

    // No keys yet (the IAM answers 503): JWT callers get 503 with Retry-After, not 401.
    let response = http_client()
        .post(&stack.mcp_url)
        .header("authorization", format!("Bearer {dev_token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");

    // The IAM comes up with the dev key.
    *jwks.lock().unwrap() = (StatusCode::OK, devkit::jwks(&stack.state_dir).unwrap().to_string());
    eventually(&stack, &dev_token, 200).await;

    // Rotation: the IAM now publishes only a new key.
    let rotated = ES256KeyPair::generate().with_key_id("rotated-1");
    let public: serde_json::Value = serde_json::from_str(&rotated.public_key().to_jwk()).unwrap();
    *jwks.lock().unwrap() = (StatusCode::OK, json!({"keys": [public]}).to_string());
    let claims = Claims::with_custom_claims(
        json!({"org": "acme", "scope": devkit::TOOLS_SCOPE}),
        Duration::from_secs(600).into(),
    )
    .with_issuer("https://iam.test")
    .with_audience("placeholder")
    .with_subject("alice");
    let rotated_token = rotated.sign(claims).unwrap();
    eventually(&stack, &rotated_token, 200).await;
    eventually(&stack, &dev_token, 401).await;
    // Every worker's VM refreshes on its own (every `refresh_seconds`, checked
    // on the filter's 100 ms tick): let each one load the rotated keys before
    // the IAM fails, or one that has not yet would rightly keep the old keys.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The IAM fails: the last good keys stay in use.
    *jwks.lock().unwrap() = (StatusCode::INTERNAL_SERVER_ERROR, "oops".into());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(status(&stack, &rotated_token).await, 200);

    let metrics = stack.prometheus().await;
    let count = |result: &str| -> u64 {
        let name = stack.edge_metric("mcp_edge_jwks_refreshes_total");
        let prefix = format!("{name}{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert!(count("ok") >= 2, "{metrics}");
    assert!(count("failed") >= 2, "{metrics}");

    // A settings change while the IAM is down: the new settings start with
    // the keys already fetched, not with none (which would be 503s).
    let sha = stack.edit_settings(|s| s["max_prompt_chars"] = json!(3000)).unwrap();
    stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();
    for _ in 0..6 {
        assert_eq!(status(&stack, &rotated_token).await, 200, "keys kept across the change");
    }
}
