//! Graceful shutdown as Kubernetes drives it: on SIGTERM the upstream fails
//! readiness (so it is taken out of rotation) while staying alive, then exits.

use std::time::{Duration, Instant};

use gateway_tests::stack::http_client;
use gateway_tests::{Stack, StackOptions};

#[tokio::test]
async fn sigterm_fails_readiness_then_exits() {
    let options = StackOptions {
        upstream_env: vec![("GATEWAY_DRAIN_DELAY_SECS".into(), "2".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start_with(options).await.unwrap();
    let ready = format!("{}/readyz", stack.upstream_url);
    let healthy = format!("{}/healthz", stack.upstream_url);
    assert_eq!(http_client().get(&ready).send().await.unwrap().status(), 200);
    stack.signal("upstream", "TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        http_client().get(&ready).send().await.unwrap().status(),
        503,
        "not ready while draining"
    );
    assert_eq!(
        http_client().get(&healthy).send().await.unwrap().status(),
        200,
        "still alive while draining"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stack.exited("upstream") {
        assert!(Instant::now() < deadline, "the upstream did not exit after draining");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A generation in flight when SIGTERM arrives still completes before the
/// upstream exits.
#[tokio::test]
async fn in_flight_generation_finishes_after_sigterm() {
    use gateway_tests::fake_openai::FakeOptions;
    use gateway_tests::Backend;
    let slow = FakeOptions {
        latency: Duration::from_secs(3),
        ..FakeOptions::default()
    };
    let options = StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: slow,
        },
        upstream_env: vec![("GATEWAY_DRAIN_DELAY_SECS".into(), "0".into())],
        ..StackOptions::default()
    };
    let mut stack = Stack::start_with(options).await.unwrap();
    let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a last light"}}});
    let request = http_client()
        .post(&stack.mcp_url)
        .bearer_auth(stack.token("alice", "acme"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send();
    let in_flight = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stack.signal("upstream", "TERM");
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let reply: serde_json::Value = response.json().await.unwrap();
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !stack.exited("upstream") {
        assert!(
            Instant::now() < deadline,
            "the upstream did not exit after its last call"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
