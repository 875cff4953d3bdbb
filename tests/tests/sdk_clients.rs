//! The official MCP SDKs (Python 2.x in every protocol era, TypeScript)
//! call `generate_image` through Envoy and the edge filter: the strict
//! transport rules at the edge must not break real clients.

use std::process::Command;

use gateway_tests::png_info::dimensions;
use gateway_tests::stack::{http_client, workspace_root};
use gateway_tests::Stack;
use serde_json::Value;

fn run_client(program: &str, args: &[&str]) -> Value {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run `make test-clients`)"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

async fn check_result(report: &Value, size: (u32, u32), images: usize, field: &str) {
    let mut tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    tools.sort();
    assert_eq!(
        tools,
        ["create_upload", "edit_image", "generate_image", "list_models"],
        "{report}"
    );
    assert_eq!(report["is_error"], false, "{report}");
    let urls = report["structured"]["image_urls"].as_array().unwrap();
    assert_eq!(urls.len(), images, "{report}");
    for url in urls {
        let bytes = http_client()
            .get(url.as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), size);
    }
    // Every SDK here speaks 2025-11-25 or later: a bad argument is a tool
    // error the model can read (SEP-1303), naming the field.
    assert_eq!(report["invalid_arguments"]["tool_error"], true, "{report}");
    let message = report["invalid_arguments"]["message"].as_str().unwrap();
    assert!(message.contains(field), "{report}");
}

#[tokio::test]
async fn python_sdk_in_every_protocol_era() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("pat", "acme");
    let python = workspace_root().join(".venv/bin/python");
    let script = "tests/clients/python_sdk_client.py";
    for (mode, expected_version) in [
        ("legacy", "2025-11-25"),
        ("auto", "2026-07-28"),
        ("2026-07-28", "2026-07-28"),
    ] {
        let report = run_client(python.to_str().unwrap(), &[script, &stack.mcp_url, &token, mode]);
        assert_eq!(report["protocol_version"], expected_version, "mode {mode}: {report}");
        check_result(&report, (1024, 1536), 1, "`n`").await;
    }
    // `n: 9` dies at the edge, so only the three successes reach the upstream's audit log.
    assert_eq!(stack.audit_events().len(), 3);
}

#[tokio::test]
async fn typescript_sdk() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("tess", "acme");
    let report = run_client("node", &["tests/clients/ts_sdk_client.mjs", &stack.mcp_url, &token]);
    check_result(&report, (1024, 1024), 2, "`size`").await;
}

/// The edit flow as a Python SDK user writes it: generate, create_upload +
/// PUT, edit the upload by region, edit the generated image by its link.
#[tokio::test]
async fn python_sdk_edits_by_upload_and_by_link() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("pat", "acme");
    let png = stack.state_dir.join("photo.png");
    std::fs::write(&png, gateway_tests::fake_openai::solid_png(1024, 768)).unwrap();
    let python = workspace_root().join(".venv/bin/python");
    let report = run_client(
        python.to_str().unwrap(),
        &[
            "tests/clients/python_edit_client.py",
            &stack.mcp_url,
            &token,
            png.to_str().unwrap(),
        ],
    );
    assert_eq!(report["put_status"], 201, "{report}");
    assert_eq!(
        report["tools"],
        serde_json::json!(["create_upload", "edit_image", "generate_image", "list_models"])
    );
    for (step, size) in [("from_upload", (1024, 768)), ("from_link", (1024, 1024))] {
        assert_eq!(report[step]["is_error"], false, "{step}: {report}");
        let out = &report[step]["structured"];
        assert_eq!(
            out["size"],
            format!("{}x{}", size.0, size.1),
            "{step}: the input's size is kept"
        );
        let url = out["image_urls"][0].as_str().unwrap();
        let bytes = http_client().get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), size, "{step}");
    }
}
