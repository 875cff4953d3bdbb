//! Retention: images older than GATEWAY_RETENTION_DAYS are deleted by the
//! sweeper (personal data is kept under 30 days); newer ones stay.

use std::time::{Duration, Instant};

use gateway_tests::stack::http_client;
use gateway_tests::{Stack, StackOptions};
use serde_json::{json, Value};

async fn generate(stack: &Stack) -> String {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "an old photograph"}}});
    let reply: Value = http_client()
        .post(&stack.mcp_url)
        .bearer_auth(stack.token("alice", "acme"))
        .header("accept", "application/json, text/event-stream")
        .json(&body)
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

#[tokio::test]
async fn sweeper_deletes_images_past_retention() {
    let options = StackOptions {
        upstream_env: vec![("GATEWAY_RETENTION_SWEEP_SECS".into(), "1".into())],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let old = generate(&stack).await;
    let fresh = generate(&stack).await;
    // Backdate the first image by 40 days, as if it had been stored then.
    let key = old.split_once("/images/").unwrap().1.split('?').next().unwrap();
    let file = stack.state_dir.join("images").join(key);
    assert!(file.exists());
    let status = std::process::Command::new("touch")
        .args(["-d", "40 days ago"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while file.exists() {
        assert!(
            Instant::now() < deadline,
            "the sweeper did not delete an image past retention"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_client().get(&old).send().await.unwrap().status(), 404);
    assert_eq!(
        http_client().get(&fresh).send().await.unwrap().status(),
        200,
        "recent images stay"
    );
}
