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
