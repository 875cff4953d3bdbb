//! Admins change limits in the Envoy config; an Envoy hot restart applies
//! them without dropping the generations already in flight.

use std::time::Duration;

use gateway_tests::fake_openai::FakeOptions;
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use serde_json::{json, Value};

async fn generate(url: String, token: String, n: u64) -> (u16, Value) {
    let body = json!({"jsonrpc": "2.0", "id": n, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a slow sunrise", "n": n}}});
    let response = http_client()
        .post(url)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or_default())
}

#[tokio::test]
async fn hot_restart_applies_new_limits_without_dropping_in_flight_calls() {
    let slow = FakeOptions {
        latency: Duration::from_secs(3),
        ..FakeOptions::default()
    };
    let options = StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: slow,
        },
        ..StackOptions::default()
    };
    let mut stack = Stack::start_with(options).await.unwrap();
    let token = stack.token("alice", "acme");

    let in_flight = tokio::spawn(generate(stack.mcp_url.clone(), token.clone(), 2));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        stack.fake.as_ref().unwrap().requests().len(),
        1,
        "the slow call reached the provider"
    );

    stack.hot_restart_with(json!({"max_images_per_call": 1})).await.unwrap();

    // New requests meet the new limit at the edge ...
    let (status, body) = generate(stack.mcp_url.clone(), token.clone(), 2).await;
    assert_eq!(status, 200);
    assert_eq!(body["error"]["code"], -32602, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("from 1 to 1"),
        "{body}"
    );
    // ... while the call admitted under the old config completes normally.
    let (status, body) = in_flight.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["isError"], false, "{body}");
    assert_eq!(
        body["result"]["structuredContent"]["image_urls"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        stack.fake.as_ref().unwrap().requests().len(),
        1,
        "the refused call never reached the provider"
    );
}
