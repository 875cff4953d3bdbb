//! Long generations: progress notifications (start, heartbeats while the
//! model works, storing) reach an official SDK client through Envoy and the
//! edge filter, in both protocol eras.

use std::time::Duration;

use gateway_tests::fake_openai::FakeOptions;
use gateway_tests::stack::workspace_root;
use gateway_tests::{Backend, Stack, StackOptions};
use serde_json::{json, Value};

#[tokio::test]
async fn progress_heartbeats_reach_the_client() {
    let slow = FakeOptions {
        latency: Duration::from_millis(3500),
        ..FakeOptions::default()
    };
    let options = StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: slow,
        },
        upstream_env: vec![("GATEWAY_PROGRESS_INTERVAL_SECS".into(), "1".into())],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let token = stack.token("alice", "acme");
    let python = workspace_root().join(".venv/bin/python");
    for mode in ["legacy", "2026-07-28"] {
        let output = tokio::process::Command::new(&python)
            .args(["tests/clients/python_progress_client.py", &stack.mcp_url, &token, mode])
            .current_dir(workspace_root())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        assert_eq!(report["is_error"], false, "{mode}: {report}");
        let messages: Vec<&str> = report["updates"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["message"].as_str())
            .collect();
        assert_eq!(
            messages.first(),
            Some(&"generating with gpt-image-2"),
            "{mode}: {messages:?}"
        );
        assert_eq!(messages.last(), Some(&"storing"), "{mode}: {messages:?}");
        // The backend streamed (the client asked for progress): both partial images were announced.
        for partial in ["partial image 1 received", "partial image 2 received"] {
            assert!(messages.contains(&partial), "{mode}: {messages:?}");
        }
        let heartbeats = messages.iter().filter(|m| m.starts_with("generating (")).count();
        assert!(
            heartbeats >= 2,
            "{mode}: a heartbeat every second of a 3.5 s generation: {messages:?}"
        );
        let progress: Vec<f64> = report["updates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["progress"].as_f64().unwrap())
            .collect();
        assert!(
            progress.windows(2).all(|w| w[1] > w[0]),
            "{mode}: progress increases: {progress:?}"
        );
    }
    for sent in stack.fake.as_ref().unwrap().requests() {
        assert_eq!(
            (sent["stream"].clone(), sent["partial_images"].clone()),
            (json!(true), json!(2)),
            "{sent}"
        );
    }
    // The streamed usage still prices the call.
    let billed = stack
        .log("upstream")
        .lines()
        .filter(|l| l.contains("\"billing\"") && l.contains("\"priced_by\":\"tokens\""))
        .count();
    assert_eq!(billed, 2);
}

/// A client that gives up mid-generation: the backend call stops, nothing is
/// stored, and the call still gets its one audit event.
#[tokio::test]
async fn abandoned_calls_store_nothing_and_are_audited_once() {
    let slow = FakeOptions {
        latency: Duration::from_secs(4),
        ..FakeOptions::default()
    };
    let options = StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: slow,
        },
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let token = stack.token("alice", "acme");
    let python = workspace_root().join(".venv/bin/python");
    for (index, mode) in ["legacy", "2026-07-28"].into_iter().enumerate() {
        let output = tokio::process::Command::new(&python)
            .args([
                "tests/clients/python_cancel_client.py",
                &stack.mcp_url,
                &token,
                mode,
                "1",
            ])
            .current_dir(workspace_root())
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(String::from_utf8_lossy(&output.stdout).contains("\"cancelled\": true"));
        // Past the provider's 4 s: a call still running would have stored its image by now.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            stack.fake.as_ref().unwrap().requests().len(),
            index + 1,
            "{mode}: the provider call started"
        );
        assert!(!stack.state_dir.join("images/acme").exists(), "{mode}: nothing stored");
        let calls: Vec<Value> = stack
            .audit_events()
            .into_iter()
            .filter(|e| e["fields"]["event"] == "tool_call")
            .collect();
        assert_eq!(calls.len(), index + 1, "{mode}: one event per call: {calls:?}");
        assert_eq!(calls[index]["fields"]["outcome"], "Cancelled", "{mode}");
        assert_eq!(calls[index]["fields"]["images_stored"], 0);
    }
}
