//! Horizontal scaling without sticky sessions: one client's consecutive
//! requests are spread over two upstream replicas behind Envoy, and every
//! call succeeds because the upstream keeps no session state.

use gateway_tests::png_info::dimensions;
use gateway_tests::stack::{http_client, workspace_root};
use gateway_tests::{Stack, StackOptions};
use serde_json::Value;

/// Requests Envoy sent to each upstream host, from the admin `/clusters` page.
async fn requests_per_host(stack: &Stack) -> Vec<u64> {
    let text = http_client()
        .get(format!("{}/clusters", stack.admin_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with("mcp_upstream::") && l.contains("::rq_total::"))
        .filter_map(|l| l.rsplit("::").next().and_then(|v| v.parse().ok()))
        .collect()
}

#[tokio::test]
async fn one_client_served_by_two_replicas() {
    let options = StackOptions {
        upstream_replicas: 2,
        envoy_concurrency: 1,
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let token = stack.token("rae", "acme");
    // The Python SDK in 2026-07-28 mode: server/discover, tools/list and tools/call, each its own POST.
    let python = workspace_root().join(".venv/bin/python");
    let output = std::process::Command::new(&python)
        .args([
            "tests/clients/python_sdk_client.py",
            &stack.mcp_url,
            &token,
            "2026-07-28",
        ])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(report["protocol_version"], "2026-07-28");
    assert_eq!(report["is_error"], false, "{report}");
    // Either replica serves the link: they share the store and the link secret.
    let url = report["structured"]["image_urls"][0].as_str().unwrap();
    for _ in 0..2 {
        let bytes = http_client().get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), (1024, 1536));
    }
    let per_host = requests_per_host(&stack).await;
    assert_eq!(per_host.len(), 2, "{per_host:?}");
    assert!(
        per_host.iter().all(|n| *n >= 2),
        "both replicas served this one client: {per_host:?}"
    );
    assert_eq!(
        stack.audit_events().len(),
        1,
        "the generation is audited once, by the replica that ran it"
    );
}
