//! The trust boundary and the replies strict clients check: the upstream
//! believes only the filter's signed identity assertion (forged, stale,
//! replayed or foreign-key assertions get 401 and generate nothing), both
//! the assertion keys and the link-signing keys rotate without downtime, and
//! the edge's errors carry the request id, SEP-1303 tool errors and portable
//! schemas.

use gateway_tests::stack::http_client;
use gateway_tests::{Stack, StackOptions};
use jwt_simple::prelude::*;
use mcp_image_gateway::protocol::schema::has_type_arrays;
use mcp_image_gateway::storage::keyring::Keyring;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{json, Value};

const UPSTREAM_REQUESTS: &str = "cluster.mcp_upstream.upstream_rq_total";

fn headers(token: Option<&str>, version: &'static str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "accept",
        HeaderValue::from_static("application/json, text/event-stream"),
    );
    headers.insert("mcp-protocol-version", HeaderValue::from_static(version));
    if let Some(token) = token {
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    headers
}

fn generate(id: u64, arguments: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": arguments}})
}

/// An assertion as the filter would sign it, with the stack's own key.
fn assertion(stack: &Stack, kid: Option<&str>, org: &str, jti: &str, issued_at: u64) -> String {
    let custom = json!({"org": org, "scope": "images:generate", "rid": "forged"});
    assertion_with(stack, kid, custom, jti, issued_at)
}

fn assertion_with(stack: &Stack, kid: Option<&str>, custom: Value, jti: &str, issued_at: u64) -> String {
    let ring = Keyring::from_file(&stack.state_dir.join("identity.keys"), 32).unwrap();
    let (newest, secret) = ring.newest();
    let claims = JWTClaims {
        issued_at: Some(UnixTimeStamp::from_secs(issued_at)),
        expires_at: Some(UnixTimeStamp::from_secs(issued_at + 30)),
        invalid_before: None,
        issuer: Some("mcp-edge".into()),
        subject: Some("mallory".into()),
        audiences: Some(Audiences::AsString("mcp-upstream".into())),
        jwt_id: Some(jti.into()),
        nonce: None,
        custom,
    };
    HS256Key::from_bytes(secret)
        .with_key_id(kid.unwrap_or(newest))
        .authenticate(claims)
        .unwrap()
}

async fn metric(url: &str, series: &str) -> u64 {
    let text = http_client().get(url).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn the_upstream_believes_only_fresh_signed_assertions() {
    let stack = Stack::start().await.unwrap();
    let direct = format!("{}/mcp", stack.upstream_url);
    let now = chrono::Utc::now().timestamp() as u64;
    let body = generate(1, json!({"prompt": "bill someone else"}));
    let post = |extra: Vec<(&'static str, String)>| {
        let mut h = headers(None, "2025-06-18");
        for (name, value) in extra {
            h.insert(name, HeaderValue::from_str(&value).unwrap());
        }
        http_client().post(&direct).headers(h).json(&body).send()
    };

    let fresh = assertion(&stack, None, "evil", "jti-1", now);
    let cases = [
        (
            "bare identity headers",
            vec![("x-mcp-user", "root".to_string()), ("x-mcp-org", "evil".to_string())],
            "no identity assertion",
        ),
        (
            "stale assertion",
            vec![("x-mcp-identity", assertion(&stack, None, "evil", "jti-2", now - 120))],
            "expired or is too old",
        ),
        (
            "assertion under a key the upstream does not hold",
            vec![(
                "x-mcp-identity",
                assertion(&stack, Some("edge-retired"), "evil", "jti-3", now),
            )],
            "does not hold",
        ),
        (
            "tampered assertion",
            vec![("x-mcp-identity", format!("{}x", &fresh[..fresh.len() - 1]))],
            "invalid",
        ),
    ];
    for (name, extra, message) in cases {
        let response = post(extra).await.unwrap();
        assert_eq!(response.status(), 401, "case: {name}");
        let reply: Value = response.json().await.unwrap();
        assert_eq!(reply["error"]["code"], -32001, "case {name}: {reply}");
        assert!(
            reply["error"]["message"].as_str().unwrap().contains(message),
            "case {name}: {reply}"
        );
    }
    // A valid assertion works once (this is what only the filter can mint)...
    let first = post(vec![("x-mcp-identity", fresh.clone())]).await.unwrap();
    assert_eq!(first.status(), 200);
    // ...and a replay of it is refused.
    let replay = post(vec![("x-mcp-identity", fresh.clone())]).await.unwrap();
    assert_eq!(replay.status(), 401);
    let reply: Value = replay.json().await.unwrap();
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("already used"),
        "{reply}"
    );

    for (result, count) in [
        ("missing", 1),
        ("stale", 1),
        ("unknown_key", 1),
        ("invalid", 1),
        ("replayed", 1),
        ("ok", 1),
    ] {
        let series = format!("mcp_gateway_identity_assertions_total{{result=\"{result}\"}} ");
        assert_eq!(metric(&stack.metrics_url, &series).await, count, "{series}");
    }
    // Refused requests generated nothing: one image (the valid call), no audit for them.
    let calls: Vec<Value> = stack
        .audit_events()
        .into_iter()
        .filter(|e| e["fields"]["event"] == "tool_call")
        .collect();
    assert_eq!(calls.len(), 1, "{calls:?}");

    // Through Envoy a client's own assertion header is replaced by the filter's.
    let mut h = headers(Some(&stack.token("alice", "acme")), "2025-06-18");
    h.insert("x-mcp-identity", HeaderValue::from_str(&fresh).unwrap());
    h.insert("x-mcp-org", HeaderValue::from_static("evil"));
    let reply: Value = http_client()
        .post(&stack.mcp_url)
        .headers(h)
        .json(&generate(2, json!({"prompt": "through the gateway"})))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = reply["result"]["structuredContent"]["image_urls"][0].as_str().unwrap();
    assert!(url.contains("/images/acme/"), "{reply}");
    let last = stack
        .audit_events()
        .into_iter()
        .rfind(|e| e["fields"]["event"] == "tool_call")
        .unwrap();
    assert_eq!(
        (last["fields"]["user"].as_str(), last["fields"]["org"].as_str()),
        (Some("alice"), Some("acme"))
    );
    assert!(last["fields"]["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty() && r != "forged"));
}

/// Behind the edge, the upstream serves MCP at exactly `/mcp` (the path the
/// edge checks) and holds each call to the rights the assertion carries.
#[tokio::test]
async fn the_upstream_holds_calls_to_the_asserted_rights_at_the_checked_path() {
    let stack = Stack::start().await.unwrap();
    let now = chrono::Utc::now().timestamp() as u64;
    let call = |path: &str, custom: Value, jti: &str| {
        let mut h = headers(None, "2025-06-18");
        let token = assertion_with(&stack, None, custom, jti, now);
        h.insert("x-mcp-identity", HeaderValue::from_str(&token).unwrap());
        http_client()
            .post(format!("{}{path}", stack.upstream_url))
            .headers(h)
            .json(&generate(4, json!({"prompt": "around the edge"})))
            .send()
    };
    let claims = |extra: Value| {
        let mut claims = json!({"org": "acme", "scope": "images:generate", "rid": "r"});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    };
    for (n, path) in ["/mcp/", "/mcp/x", "/mcp/tools/call"].into_iter().enumerate() {
        let response = call(path, claims(json!({})), &format!("p{n}")).await.unwrap();
        assert_eq!(response.status(), 404, "{path} is not the MCP endpoint");
    }
    let refused = [
        (json!({"tools": ["list_models"]}), "\"generate_image\" is not available"),
        (json!({"no_calls": true}), "lacks the scope"),
    ];
    for (n, (extra, message)) in refused.into_iter().enumerate() {
        let reply: Value = call("/mcp", claims(extra), &format!("r{n}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (reply["error"]["code"].as_i64(), &reply["id"]),
            (Some(-32602), &json!(4)),
            "{reply}"
        );
        assert!(reply["error"]["message"].as_str().unwrap().contains(message), "{reply}");
    }
    let calls = stack
        .audit_events()
        .into_iter()
        .filter(|e| e["fields"]["event"] == "tool_call")
        .count();
    assert_eq!(calls, 0, "nothing ran");
}

/// The gate comes before the body: a request without a valid assertion is
/// refused on its headers, the upstream neither waiting for its body nor
/// holding it (here a body that never ends).
#[tokio::test]
async fn requests_without_an_assertion_are_refused_before_their_body() {
    let stack = Stack::start().await.unwrap();
    let (mut open, chunks) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    open.try_send(Ok(
        br#"{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"#.to_vec(),
    ))
    .unwrap();
    let send = http_client()
        .post(format!("{}/mcp", stack.upstream_url))
        .headers(headers(None, "2025-06-18"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let response = tokio::time::timeout(std::time::Duration::from_secs(20), send)
        .await
        .expect("refused without waiting for the body")
        .unwrap();
    assert_eq!(response.status(), 401);
    let series = "mcp_gateway_identity_assertions_total{result=\"missing\"} ";
    assert_eq!(metric(&stack.metrics_url, series).await, 1);
    drop(open);
}

/// Rotation: the upstream accepts the old and the new key; the filter moves
/// from one to the other by a hot restart; a key the upstream does not hold
/// is refused. The first key reaches the filter through Envoy's environment
/// (`key_env`), as a Kubernetes Secret would.
#[tokio::test]
async fn identity_keys_rotate_without_downtime() {
    let (old, new, stray) = ("a1".repeat(32), "b2".repeat(32), "c3".repeat(32));
    let dir = std::env::temp_dir().join(format!("rotation-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("identity.keys");
    std::fs::write(&keys, format!("edge-old {old}\nedge-new {new}\n")).unwrap();
    std::env::set_var("MCP_IDENTITY_ASSERTION_KEY", &old);
    let mut stack = Stack::start_with(StackOptions {
        filter_patch: json!({"identity_assertion": {"key_id": "edge-old", "key_env": "MCP_IDENTITY_ASSERTION_KEY"}}),
        upstream_env: vec![("GATEWAY_IDENTITY_KEYS_FILE".into(), keys.display().to_string())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    let call = |stack_url: String| {
        let headers = headers(Some(&token), "2025-06-18");
        let list = list.clone();
        async move {
            http_client()
                .post(stack_url)
                .headers(headers)
                .json(&list)
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(call(stack.mcp_url.clone()).await.status(), 200, "old key");
    stack
        .hot_restart_with(json!({"identity_assertion": {"key_id": "edge-new", "key": new}}))
        .await
        .unwrap();
    assert_eq!(call(stack.mcp_url.clone()).await.status(), 200, "new key");
    stack
        .hot_restart_with(json!({"identity_assertion": {"key_id": "edge-stray", "key": stray}}))
        .await
        .unwrap();
    let refused = call(stack.mcp_url.clone()).await;
    assert_eq!(refused.status(), 401, "a key the upstream does not hold");
    let reply: Value = refused.json().await.unwrap();
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("does not hold"),
        "{reply}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// Link keys: links carry their key id; after a rotation old links still
/// work and new ones use the new key; once the old key is removed its links
/// get 403.
#[tokio::test]
async fn links_survive_a_url_key_rotation_until_the_key_is_removed() {
    let mut stack = Stack::start().await.unwrap();
    let token = stack.token("alice", "acme");
    let link = |stack: &Stack, id: u64| {
        let mcp_url = stack.mcp_url.clone();
        let headers = headers(Some(&token), "2025-06-18");
        async move {
            let reply: Value = http_client()
                .post(mcp_url)
                .headers(headers)
                .json(&generate(id, json!({"prompt": "a rotating lighthouse"})))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            reply["result"]["structuredContent"]["image_urls"][0]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let status = |url: String| async move { http_client().get(url).send().await.unwrap().status().as_u16() };
    let before = link(&stack, 1).await;
    assert!(before.contains("&kid=url-1&"), "{before}");
    assert_eq!(status(before.clone()).await, 200);

    let original = std::fs::read_to_string(stack.state_dir.join("url-signing.key")).unwrap();
    let rotated = stack.state_dir.join("url-rotated.key");
    std::fs::write(&rotated, format!("{original}url-2 {}\n", "d4".repeat(32))).unwrap();
    let rotated_env = rotated.display().to_string();
    stack
        .restart_upstream("upstream", "KILL", &[("GATEWAY_URL_SIGNING_KEY_FILE", &rotated_env)])
        .await
        .unwrap();
    assert_eq!(status(before.clone()).await, 200, "a link from before the rotation");
    let after = link(&stack, 2).await;
    assert!(after.contains("&kid=url-2&"), "the newest key signs: {after}");
    assert_eq!(status(after.clone()).await, 200);

    let retired = stack.state_dir.join("url-retired.key");
    std::fs::write(&retired, format!("url-2 {}\n", "d4".repeat(32))).unwrap();
    let retired_env = retired.display().to_string();
    stack
        .restart_upstream("upstream", "KILL", &[("GATEWAY_URL_SIGNING_KEY_FILE", &retired_env)])
        .await
        .unwrap();
    let gone = http_client().get(&before).send().await.unwrap();
    assert_eq!(gone.status(), 403);
    let body: Value = gone.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("retired key"), "{body}");
    assert_eq!(status(after).await, 200);
}

/// Head-time refusals answer with the request's id; -32022 says what is
/// supported and what was asked for; bad argument values are tool errors
/// for 2025-11-25 and later (at the edge and in the upstream), -32602 before;
/// tool schemas carry no `type` arrays.
#[tokio::test]
async fn replies_strict_clients_can_match() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("alice", "acme");
    let client = http_client();
    let send = |headers: HeaderMap, body: Value| client.post(&stack.mcp_url).headers(headers).json(&body).send();

    // Unsupported version: decided on the header, answered with the body's id.
    let response = send(
        headers(Some(&token), "2024-11-05"),
        json!({"jsonrpc": "2.0", "id": "v-1", "method": "tools/list"}),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let reply: Value = response.json().await.unwrap();
    assert_eq!(reply["id"], "v-1", "{reply}");
    assert_eq!(reply["error"]["code"], -32022);
    assert_eq!(reply["error"]["data"]["requested"], "2024-11-05");
    assert_eq!(
        reply["error"]["data"]["supported"],
        json!(["2025-06-18", "2025-11-25", "2026-07-28"])
    );

    // SEP-1303 at the edge: `n` out of range.
    let upstream_before = stack.envoy_stat(UPSTREAM_REQUESTS).await;
    let mut v2026 = headers(Some(&token), "2026-07-28");
    v2026.insert("mcp-method", HeaderValue::from_static("tools/call"));
    v2026.insert("mcp-name", HeaderValue::from_static("generate_image"));
    for (version_headers, result_type) in [(headers(Some(&token), "2025-11-25"), None), (v2026, Some("complete"))] {
        let reply: Value = send(version_headers, generate(41, json!({"prompt": "x", "n": 99})))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(reply["id"], 41);
        assert_eq!(reply["result"]["isError"], true, "{reply}");
        assert!(reply["result"]["content"][0]["text"].as_str().unwrap().contains("`n`"));
        assert_eq!(reply["result"]["resultType"].as_str(), result_type, "{reply}");
    }
    assert_eq!(
        stack.envoy_stat(UPSTREAM_REQUESTS).await,
        upstream_before,
        "the edge answered"
    );

    // SEP-1303 in the upstream: a style the edge does not check.
    let reply: Value = send(
        headers(Some(&token), "2025-11-25"),
        generate(42, json!({"prompt": "x", "style": "cubism"})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(reply["id"], 42);
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("`style`"),
        "{reply}"
    );
    let legacy: Value = send(
        headers(Some(&token), "2025-06-18"),
        generate(43, json!({"prompt": "x", "style": "cubism"})),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (legacy["id"].clone(), legacy["error"]["code"].clone()),
        (json!(43), json!(-32602)),
        "{legacy}"
    );

    // Portable schemas.
    let tools: Value = send(
        headers(Some(&token), "2025-11-25"),
        json!({"jsonrpc": "2.0", "id": 44, "method": "tools/list"}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let tools = tools["result"]["tools"].as_array().unwrap();
    assert!(tools.len() >= 2);
    for tool in tools {
        assert!(!has_type_arrays(&tool["inputSchema"]), "{tool}");
        assert!(!has_type_arrays(&tool["outputSchema"]), "{tool}");
    }

    // Rate limited (bob spends the dev config's burst of 40): 429 with the id.
    let bob = stack.token("bob", "acme");
    let mut limited = None;
    for id in 100..200 {
        let response = send(
            headers(Some(&bob), "2025-06-18"),
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
        )
        .await
        .unwrap();
        if response.status() == 429 {
            limited = Some((id, response.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (id, reply) = limited.expect("the burst ran out");
    assert_eq!(reply["id"], id, "{reply}");
    assert_eq!(reply["error"]["code"], -32029, "{reply}");
}
