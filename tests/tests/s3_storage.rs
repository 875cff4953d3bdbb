//! Images stored in a real S3-compatible server (s3s-fs, SigV4-checking):
//! the tool returns presigned GET URLs that work, and tampered or expired
//! links are refused by the store itself.

use std::time::Duration;

use gateway_tests::mcp_client::{connect, generate};
use gateway_tests::png_info::dimensions;
use gateway_tests::s3_server::S3Server;
use gateway_tests::stack::http_client;
use gateway_tests::{Stack, StackOptions};
use serde_json::json;

#[tokio::test]
async fn presigned_links_work_and_refuse_tampering_and_expiry() {
    let s3 = S3Server::start("images").await.unwrap();
    let options = StackOptions {
        upstream_env: s3.upstream_env(),
        url_ttl_secs: 4,
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();

    let result = generate(
        &client,
        json!({"prompt": "a harbour at dawn", "size": "1536x1024", "n": 2}),
    )
    .await
    .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let urls: Vec<String> = result.structured_content.unwrap()["image_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    assert_eq!(urls.len(), 2);
    // Two images, each with its owner record (erasure on request finds it by that).
    let stored = s3.objects();
    let images = stored.iter().filter(|k| k.starts_with("acme/")).count();
    let owners = stored.iter().filter(|k| k.starts_with("owners/acme/")).count();
    assert_eq!((images, owners, stored.len()), (2, 2, 4), "{stored:?}");
    for url in &urls {
        assert!(url.starts_with(&format!("{}/images/acme/", s3.endpoint)), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
        let response = http_client().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "image/png");
        assert_eq!(dimensions(&response.bytes().await.unwrap()).unwrap(), (1536, 1024));
    }

    let url = &urls[0];
    let (head, signature) = url.rsplit_once("X-Amz-Signature=").unwrap();
    let flipped = format!(
        "{head}X-Amz-Signature={}{}",
        if signature.starts_with('0') { "1" } else { "0" },
        &signature[1..]
    );
    let other_key = url.replacen("/images/acme/", "/images/globex/", 1);
    for (name, tampered) in [("signature", flipped), ("key", other_key)] {
        let status = http_client().get(&tampered).send().await.unwrap().status();
        assert_eq!(status, 403, "tampered {name}");
    }

    tokio::time::sleep(Duration::from_secs(5)).await;
    let expired = http_client().get(url).send().await.unwrap();
    assert_eq!(expired.status(), 403, "expired link");
    assert!(expired.text().await.unwrap().contains("expired"));
    client.cancel().await.unwrap();
}

/// The store goes down: the call is a tool error that says so, nothing is
/// billed, and the audit event records the storage failure.
#[tokio::test]
async fn store_outage_is_a_clear_error_and_nothing_is_billed() {
    let mut s3 = S3Server::start("images").await.unwrap();
    let options = StackOptions {
        upstream_env: s3.upstream_env(),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let ok = generate(&client, json!({"prompt": "a harbour"})).await.unwrap();
    assert_eq!(ok.is_error, Some(false), "{ok:?}");

    s3.stop();
    let failed = generate(&client, json!({"prompt": "a harbour", "n": 2})).await.unwrap();
    assert_eq!(failed.is_error, Some(true), "{failed:?}");
    let text = serde_json::to_string(&failed.content).unwrap();
    assert!(text.contains("could not be stored; nothing was saved"), "{text}");

    let events = stack.audit_events();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        (
            events[1]["fields"]["outcome"].clone(),
            events[1]["fields"]["error_class"].clone()
        ),
        (json!("ToolError"), json!("storage_failed"))
    );
    assert_eq!(events[1]["fields"]["images_stored"], 0);
    let billed: Vec<serde_json::Value> = stack
        .log("upstream")
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "billing")
        .collect();
    assert_eq!(billed.len(), 1, "only the delivered call is billed: {billed:?}");
    client.cancel().await.unwrap();
}

/// Uploads for edits on S3 are presigned PUTs: the bytes go straight to the
/// bucket (the store checks the signature), then edit_image reads them.
#[tokio::test]
async fn uploads_go_straight_to_the_bucket_with_a_presigned_put() {
    let s3 = S3Server::start("images").await.unwrap();
    let stack = Stack::start_with(StackOptions {
        upstream_env: s3.upstream_env(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let call = |tool: &str, arguments: serde_json::Value| {
        let request = http_client()
            .post(&stack.mcp_url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                "params": {"name": tool, "arguments": arguments}}));
        async move { request.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
    };
    let ticket = call("create_upload", json!({"content_type": "image/png"})).await;
    let ticket = &ticket["result"]["structuredContent"];
    let url = ticket["upload_url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/images/uploads/acme/", s3.endpoint)),
        "{url}"
    );
    assert!(url.contains("X-Amz-Signature="), "{url}");
    let image = gateway_tests::fake_openai::solid_png(1024, 1024);
    let tampered = url.replacen("/uploads/acme/", "/uploads/globex/", 1);
    let refused = http_client().put(&tampered).body(image.clone()).send().await.unwrap();
    assert_eq!(refused.status(), 403, "the store checks the signature");
    let put = http_client()
        .put(&url)
        .header("content-type", "image/png")
        .body(image)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let reference = ticket["reference"].as_str().unwrap();
    let edited = call("edit_image", json!({"prompt": "a boat", "images": [reference]})).await;
    assert_eq!(edited["result"]["isError"], false, "{edited}");
    let link = edited["result"]["structuredContent"]["image_urls"][0].as_str().unwrap();
    assert!(link.starts_with(&s3.endpoint), "{link}");
    let bytes = http_client().get(link).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(dimensions(&bytes).unwrap(), (1024, 1024));
}

/// A bucket the gateway serves its own signed links for
/// (`GATEWAY_STORAGE_PRESIGN=false`: callers never reach the bucket): the
/// images are in the bucket, the links are the gateway's and work, a
/// tampered one is refused, and the audit chain's segments land in the
/// bucket and verify.
#[tokio::test]
async fn a_bucket_behind_the_gateways_links_holds_images_and_the_audit_chain() {
    let s3 = S3Server::start("images").await.unwrap();
    let mut upstream_env = s3.upstream_env();
    upstream_env.push(("GATEWAY_STORAGE_PRESIGN".into(), "false".into()));
    let stack = Stack::start_with(StackOptions {
        upstream_env: upstream_env.clone(),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(&client, json!({"prompt": "a harbour at dawn", "n": 2}))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let urls: Vec<String> = result.structured_content.unwrap()["image_urls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    for url in &urls {
        assert!(url.starts_with(&stack.base_url), "the gateway's own link: {url}");
        let response = http_client().get(url).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        let bytes = response.bytes().await.unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), (1024, 1024));
    }
    let images = s3.objects().iter().filter(|k| k.starts_with("acme/")).count();
    assert_eq!(images, 2, "the images are in the bucket");
    let tampered = urls[0].replace("sig=", "sig=0");
    assert_eq!(http_client().get(&tampered).send().await.unwrap().status(), 403);
    // The audit chain is in the bucket too (written about once a second).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let report = loop {
        let verified = std::process::Command::new(gateway_tests::stack::upstream_binary().unwrap())
            .args(["audit", "verify"])
            .env("GATEWAY_STATE_DIR", &stack.state_dir)
            .envs(upstream_env.clone())
            .output()
            .unwrap();
        assert!(
            verified.status.success(),
            "{}",
            String::from_utf8_lossy(&verified.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&verified.stdout).unwrap();
        if report["events"].as_u64().unwrap_or(0) >= 2 || std::time::Instant::now() > deadline {
            break report;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(report["events"].as_u64().unwrap() >= 2, "{report}");
    assert!(
        !stack.state_dir.join("images/audit").exists(),
        "nothing on the local disk"
    );
}

/// GCS, live against the fake-gcs-server emulator, as far as it goes: the
/// gateway reads an image through object_store's GCS client
/// (`resources/read` through Envoy), and `audit verify` lists and reads a
/// signed audit segment from the bucket and names an event edited there.
/// The emulator does not take object_store's XML-API `PUT`, so the test
/// seeds objects through the JSON API, and a generation fails cleanly at
/// storing (a tool error, nothing billed): that gap, and V4-signed links,
/// stay unchecked here (README, "Tamper-evident audit").
#[tokio::test]
async fn gcs_emulator_reads_and_verifies_what_the_bucket_holds() {
    use base64::Engine;
    use mcp_image_gateway::storage::keyring::Keyring;
    use mcp_image_gateway::telemetry::audit_chain::Chain;
    let gcs = gateway_tests::gcs_server::GcsServer::start("images").await.unwrap();
    let options = StackOptions {
        upstream_env: gcs.upstream_env(),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    // An image and a closed, signed audit segment, as a writer would leave them.
    let image = gateway_tests::fake_openai::solid_png(96, 64);
    let key = format!("acme/2026/12/04/{}.png", uuid::Uuid::new_v4());
    gcs.upload(&key, image.clone(), "image/png").await.unwrap();
    let keys = Keyring::from_file(&stack.state_dir.join("audit.keys"), 32).unwrap();
    let mut chain = Chain::new("seeded".into());
    for n in 0..3 {
        chain.push(json!({"event": "tool_call", "tool": "generate_image", "n": n}));
    }
    let now = chrono::Utc::now();
    let (segment, text) = chain.close(&keys, now);
    gcs.upload(&segment, text.clone().into_bytes(), "application/x-ndjson")
        .await
        .unwrap();
    let (anchor, end) = chain.anchor(&keys, now, now, true);
    gcs.upload(&anchor, end.into_bytes(), "application/json").await.unwrap();

    let uri = format!("image://{key}");
    let token = stack.token("alice", "acme");
    let reply = gateway_tests::mcp_client::rpc(
        &stack.mcp_url,
        &token,
        "2025-11-25",
        "resources/read",
        json!({"uri": uri}),
    )
    .await;
    let blob = reply["result"]["contents"][0]["blob"]
        .as_str()
        .unwrap_or_else(|| panic!("{reply}"));
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(blob).unwrap(), image);

    let (report, ok) = stack.gateway_command(&["audit", "verify"]);
    assert!(ok, "{report}");
    assert_eq!(
        (&report["segments"], &report["events"]),
        (&json!(1), &json!(3)),
        "{report}"
    );
    gcs.upload(
        &segment,
        text.replacen("\"n\":1", "\"n\":7", 1).into_bytes(),
        "application/x-ndjson",
    )
    .await
    .unwrap();
    let (report, ok) = stack.gateway_command(&["audit", "verify"]);
    assert!(!ok, "{report}");
    assert!(
        report["broken"]
            .as_str()
            .unwrap()
            .contains("event 2 does not follow event 1"),
        "{report}"
    );

    // The emulator's missing XML-API PUT: a generation cannot be stored.
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(&client, json!({"prompt": "a bucket"})).await.unwrap();
    assert_eq!(result.is_error, Some(true), "{result:?}");
    assert!(format!("{result:?}").contains("could not be stored"), "{result:?}");
    assert!(!gcs
        .objects()
        .await
        .unwrap()
        .iter()
        .any(|o| o.starts_with("acme/") && *o != key));
}
