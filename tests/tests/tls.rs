//! The optional TLS listener accepts TLS 1.3 only: a TLS 1.2 handshake
//! fails, a TLS 1.3 client gets through to the MCP endpoint.

use std::process::{Command, Stdio};

use gateway_tests::{Stack, StackOptions};

fn handshake(port: u16, version_flag: &str) -> (bool, String) {
    let output = Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            version_flag,
            "-servername",
            "localhost",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success() && text.contains("Cipher is"), text)
}

#[tokio::test]
async fn tls_listener_accepts_only_tls_1_3() {
    let stack = Stack::start_with(StackOptions {
        tls: true,
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let (ok12, text12) = handshake(stack.tls_port, "-tls1_2");
    assert!(!ok12, "TLS 1.2 must fail:\n{text12}");
    let (ok13, text13) = handshake(stack.tls_port, "-tls1_3");
    assert!(ok13 && text13.contains("TLSv1.3"), "TLS 1.3 must work:\n{text13}");

    // An HTTPS MCP request trusting the development certificate.
    let cert = std::fs::read(stack.state_dir.join("tls.crt")).unwrap();
    let client = reqwest::Client::builder()
        .no_proxy()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let response = client
        .post(format!("https://localhost:{}/mcp", stack.tls_port))
        .bearer_auth(stack.token("alice", "acme"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // ALPN picks HTTP/2: the edge filter serves it the same way.
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    let body: serde_json::Value = response.json().await.unwrap();
    let tools = body["result"]["tools"].as_array().unwrap();
    assert!(tools.iter().any(|t| t["name"] == "generate_image"), "{body}");
}
