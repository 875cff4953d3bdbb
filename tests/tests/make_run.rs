//! `make run` as a newcomer uses it: start the stack, copy the printed token
//! and example, get a PNG, press Ctrl-C, and find every process gone.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_tests::png_info::dimensions;
use gateway_tests::stack::{envoy_binary, free_port, http_client, workspace_root};
use serde_json::{json, Value};

#[tokio::test]
async fn make_run_prints_a_working_example_and_stops_on_ctrl_c() {
    let (listen, admin, upstream, metrics) = (free_port(), free_port(), free_port(), free_port());
    let state = std::env::temp_dir().join(format!("make-run-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new(workspace_root().join("scripts/run.sh"))
        .env("LISTEN_PORT", listen.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("UPSTREAM_PORT", upstream.to_string())
        .env("METRICS_PORT", metrics.to_string())
        .env("STATE_DIR", &state)
        .env("ENVOY_BIN", envoy_binary())
        .env_remove("OPENAI_API_KEY")
        .env_remove("GATEWAY_PUBLIC_BASE_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group, like a terminal's foreground job receiving Ctrl-C.
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = child.id();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut banner = Vec::new();
    while Instant::now() < deadline {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(200)) {
            let done = line.contains("Ctrl-C stops everything");
            banner.push(line);
            if done {
                break;
            }
        }
    }
    let text = banner.join("\n");
    let mcp_url = format!("http://127.0.0.1:{listen}/mcp");
    assert!(text.contains(&format!("MCP endpoint : {mcp_url}")), "{text}");
    let token_line = banner
        .iter()
        .position(|l| l.contains("Development bearer token"))
        .expect("token printed");
    let token = banner[token_line + 1].trim().to_string();
    assert!(
        text.contains("curl -s") && text.contains("\"mcpServers\""),
        "example and client config printed"
    );

    // The printed example, as a newcomer would paste it.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a lighthouse at dusk", "size": "1536x1024"}}});
    let reply: Value = http_client()
        .post(&mcp_url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = reply["result"]["structuredContent"]["image_urls"][0]
        .as_str()
        .expect("an image link")
        .to_string();
    let png = http_client().get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(dimensions(&png).unwrap(), (1536, 1024));

    // Ctrl-C: SIGINT to the whole foreground group.
    Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
        panic!("make run did not stop on Ctrl-C");
    }
    for port in [listen, admin, upstream, metrics] {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "something still listens on {port} after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let _ = std::fs::remove_dir_all(&state);
}
