//! Signing keys fetched by the filter from the IAM's JWKS URL through an
//! Envoy cluster: loaded at start, rotated on refresh, and kept when a
//! refresh fails or the settings change live. And several identity
//! providers at once (`jwt.issuers`), each with its own JWKS URL, rendered
//! into an Envoy cluster from `jwks_uri.url`, its own claims (Entra- and
//! Okta-shaped tokens), rotation of one leaving the other alone, and the
//! step-up 403 naming every scope a call needs.

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

const TENANT: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const OKTA_AUDIENCE: &str = "https://images.example.com/mcp";

fn entra_issuer() -> String {
    format!("https://login.microsoftonline.com/{TENANT}/v2.0")
}

const OKTA_ISSUER: &str = "https://acme.okta.com/oauth2/default";

fn jwks_of(public_jwk: String) -> String {
    let key: serde_json::Value = serde_json::from_str(&public_jwk).unwrap();
    json!({"keys": [key]}).to_string()
}

/// An MCP POST with `token`: the status, the `WWW-Authenticate` header, the body.
async fn mcp(stack: &Stack, token: &str, body: serde_json::Value) -> (u16, String, serde_json::Value) {
    let response = http_client()
        .post(&stack.mcp_url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await.unwrap_or_default();
    // A JSON reply, or the JSON of an SSE reply's data line.
    let json = serde_json::from_str(&text)
        .ok()
        .or_else(|| {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .find_map(|d| serde_json::from_str(d.trim()).ok())
        })
        .unwrap_or(serde_json::Value::Null);
    (status, challenge, json)
}

fn tool_call(id: u64, tool: &str, arguments: serde_json::Value) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
}

#[tokio::test]
async fn several_identity_providers_at_once() {
    several_identity_providers(Edge::Wasm).await;
}

#[tokio::test]
async fn dynamic_module_several_identity_providers_at_once() {
    several_identity_providers(Edge::DynamicModule).await;
}

/// An Entra-shaped IdP (audience `api://…`, organisation in `tid`, `scp` a
/// string) and an Okta-shaped one (`scp` an array, organisation in `org`),
/// each serving its own JWKS; the Okta one rotates its key.
async fn several_identity_providers(edge: Edge) {
    let entra_key = ES256KeyPair::generate().with_key_id("nOo3ZDrODXEK1jKWhXslHR_KXEg");
    let (okta_old, okta_new) = (
        Ed25519KeyPair::generate().with_key_id("okta-1"),
        Ed25519KeyPair::generate().with_key_id("okta-2"),
    );
    let entra_jwks: Jwks = Arc::new(Mutex::new((StatusCode::OK, jwks_of(entra_key.public_key().to_jwk()))));
    let okta_jwks: Jwks = Arc::new(Mutex::new((StatusCode::OK, jwks_of(okta_old.public_key().to_jwk()))));
    let (entra_port, okta_port) = (serve_jwks(entra_jwks).await, serve_jwks(okta_jwks.clone()).await);
    let patch = json!({
        "jwt": {"issuers": [
            {"issuer": entra_issuer(), "audiences": ["api://mcp-image-gateway"], "org_claim": "/tid",
             "scope_claim": "scp",
             "jwks_uri": {"url": format!("http://127.0.0.1:{entra_port}/jwks.json"), "refresh_seconds": 1, "retry_seconds": 1}},
            {"issuer": OKTA_ISSUER, "audiences": [OKTA_AUDIENCE], "scope_claim": "scp",
             "jwks_uri": {"url": format!("http://localhost:{okta_port}/jwks.json"), "refresh_seconds": 1, "retry_seconds": 1}}
        ]},
        "tool_access": {"scopes": {"edit_image": "images:edit"}}
    });
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        edge,
        ..Default::default()
    })
    .await
    .unwrap();

    // Each URL became a cluster of its own, and Envoy runs it.
    let clusters = http_client()
        .get(format!("{}/clusters", stack.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        format!("jwks_127_0_0_1_{entra_port}"),
        format!("jwks_localhost_{okta_port}"),
    ] {
        // The readable name, then the endpoint's hash.
        assert!(clusters.contains(&format!("{name}_")), "no cluster {name}");
    }

    let entra = |custom: serde_json::Value| {
        let claims = Claims::with_custom_claims(custom, Duration::from_secs(600).into())
            .with_issuer(entra_issuer())
            .with_audience("api://mcp-image-gateway")
            .with_subject("00000000-0000-0000-66f3-3332eca7ea81");
        entra_key.sign(claims).unwrap()
    };
    let okta = |key: &Ed25519KeyPair, scp: serde_json::Value| {
        let claims = Claims::with_custom_claims(json!({"org": "globex", "scp": scp}), Duration::from_secs(600).into())
            .with_issuer(OKTA_ISSUER)
            .with_audience(OKTA_AUDIENCE)
            .with_subject("00u1okta");
        key.sign(claims).unwrap()
    };
    let entra_token = entra(json!({"tid": TENANT, "scp": "images:generate images:edit"}));
    let okta_token = okta(&okta_old, json!(["images:generate"]));
    let generate = tool_call(1, "generate_image", json!({"prompt": "a lighthouse"}));

    // Both admitted (once each issuer's keys are fetched), with the organisation where each IdP puts it.
    eventually(&stack, &entra_token, 200).await;
    eventually(&stack, &okta_token, 200).await;
    for token in [&entra_token, &okta_token] {
        let (status, _, body) = mcp(&stack, token, generate.clone()).await;
        assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "{body}");
    }
    let calls: Vec<(String, String)> = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["tool"] == "generate_image")
        .map(|e| {
            let fields = &e["fields"];
            (
                fields["user"].as_str().unwrap_or_default().to_string(),
                fields["org"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        calls.contains(&("00000000-0000-0000-66f3-3332eca7ea81".into(), TENANT.into())),
        "{calls:?}"
    );
    assert!(calls.contains(&("00u1okta".into(), "globex".into())), "{calls:?}");

    // Step-up: the 403 names every scope the call needs, held or not.
    let edit = tool_call(2, "edit_image", json!({"prompt": "x", "images": ["image://none"]}));
    for token in [
        okta(&okta_old, json!(["images:generate"])),
        entra(json!({"tid": TENANT})),
    ] {
        let (status, challenge, _) = mcp(&stack, &token, edit.clone()).await;
        assert_eq!(status, 403, "{challenge}");
        assert!(
            challenge.contains(r#"error="insufficient_scope", scope="images:generate images:edit""#),
            "{challenge}"
        );
    }

    // A token claiming one issuer, signed by the other's key; an issuer not trusted.
    let forged = {
        let claims = Claims::with_custom_claims(
            json!({"tid": TENANT, "scp": "images:generate"}),
            Duration::from_secs(600).into(),
        )
        .with_issuer(entra_issuer())
        .with_audience("api://mcp-image-gateway")
        .with_subject("mallory");
        okta_old.sign(claims).unwrap()
    };
    let stranger = {
        let claims = Claims::with_custom_claims(json!({"org": "globex"}), Duration::from_secs(600).into())
            .with_issuer("https://evil.example.com")
            .with_audience(OKTA_AUDIENCE)
            .with_subject("mallory");
        okta_old.sign(claims).unwrap()
    };
    let (status, _, body) = mcp(&stack, &forged, generate.clone()).await;
    assert_eq!(status, 401, "{body}");
    let (status, challenge, _) = mcp(&stack, &stranger, generate.clone()).await;
    assert_eq!(status, 401);
    assert!(challenge.contains("issuer is not trusted"), "{challenge}");

    // The Okta IdP rotates: its new key's tokens pass, its old key's are refused,
    // and the Entra IdP's are untouched.
    *okta_jwks.lock().unwrap() = (StatusCode::OK, jwks_of(okta_new.public_key().to_jwk()));
    let rotated = okta(&okta_new, json!(["images:generate"]));
    eventually(&stack, &rotated, 200).await;
    eventually(&stack, &okta_token, 401).await;
    let list = json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"});
    assert_eq!(
        mcp(&stack, &entra_token, list).await.0,
        200,
        "the other issuer is untouched"
    );
}
