//! Retention: images older than GATEWAY_RETENTION_DAYS are deleted by the
//! sweeper (personal data is kept under 30 days); newer ones stay.

use std::time::{Duration, Instant};

use gateway_tests::stack::http_client;
use gateway_tests::{Stack, StackOptions};
use serde_json::{json, Value};

#[tokio::test]
async fn sweeper_deletes_images_past_retention() {
    let options = StackOptions {
        upstream_env: vec![("GATEWAY_RETENTION_SWEEP_SECS".into(), "1".into())],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let old = generate_as(&stack, "alice", "an old photograph").await;
    let fresh = generate_as(&stack, "alice", "an old photograph").await;
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

/// An organisation named like one of the store's own prefixes (`uploads`,
/// `audit`, `tasks`, …) would share that prefix's retention and erasure
/// (organisation `uploads` lost its images to the sweeper after a day, not
/// 29). The edge refuses such a caller, 403 with the reason, before
/// anything reaches the upstream: nothing of the organisation is stored.
#[tokio::test]
async fn an_organisation_named_like_a_store_prefix_is_refused() {
    let stack = Stack::start().await.unwrap();
    for org in ["uploads", "audit"] {
        let reply = http_client()
            .post(&stack.mcp_url)
            .bearer_auth(stack.token("alice", org))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .json(&json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                "params": {"name": "generate_image", "arguments": {"prompt": "a parcel"}}}))
            .send()
            .await
            .unwrap();
        let status = reply.status();
        let body: Value = reply.json().await.unwrap();
        assert_eq!(status, 403, "{org}: {body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("\"{org}\" is reserved")), "{org}: {body}");
        assert_eq!(body["id"], 7, "answered with the request's id: {body}");
    }
    let images: Vec<String> = stored(&stack, "uploads")
        .into_iter()
        .chain(stored(&stack, "audit"))
        .filter(|key| key.ends_with(".png"))
        .collect();
    assert!(images.is_empty(), "{images:?}");
    assert!(
        stack.audit_events().is_empty(),
        "the upstream ran nothing: {:?}",
        stack.audit_events()
    );
}

/// The edge's list of reserved organisation names is the store's own (the
/// filter cannot import the upstream's).
#[test]
fn the_edge_reserves_the_stores_prefixes() {
    assert_eq!(
        mcp_edge_filter::org_names::RESERVED,
        mcp_image_gateway::storage::store::RESERVED_PREFIXES
    );
}

/// Files under the stack's store (`{state_dir}/images`) below `prefix`.
fn stored(stack: &Stack, prefix: &str) -> Vec<String> {
    let root = stack.state_dir.join("images");
    let mut found = Vec::new();
    let mut dirs = vec![root.join(prefix)];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                found.push(path.strip_prefix(&root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

async fn generate_as(stack: &Stack, user: &str, prompt: &str) -> String {
    let reply = gateway_tests::mcp_client::call_http(
        &stack.mcp_url,
        &stack.token(user, "acme"),
        "2025-11-25",
        "generate_image",
        json!({"prompt": prompt}),
    )
    .await;
    gateway_tests::mcp_client::structured(&reply)["image_urls"][0]
        .as_str()
        .unwrap()
        .to_string()
}

/// `mcp-image-gateway erase --org acme --user alice`: exactly alice's
/// images, upload, task record and kept prompts go, their links answer 410
/// Gone; bob's stay; the audit records the counts (not the contents, not
/// alice's id) and still verifies, the chained prompt hashes intact.
#[tokio::test]
async fn erasure_takes_exactly_one_users_data() {
    use rmcp::model::{CallToolRequestParams, CallToolResponse, GetTaskParams};
    let options = StackOptions {
        upstream_env: vec![("GATEWAY_LOG_PROMPTS".into(), "true".into())],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let alice = stack.token("alice", "acme");
    let alice_link = generate_as(&stack, "alice", "a portrait of alice").await;
    let bob_link = generate_as(&stack, "bob", "a portrait of bob").await;
    // Alice also uploads an image and runs a generation as a task.
    let ticket = gateway_tests::mcp_client::call_http(
        &stack.mcp_url,
        &alice,
        "2025-11-25",
        "create_upload",
        json!({"content_type": "image/png"}),
    )
    .await;
    let ticket = gateway_tests::mcp_client::structured(&ticket).clone();
    let put = http_client()
        .put(ticket["upload_url"].as_str().unwrap())
        .header("content-type", "image/png")
        .body(gateway_tests::fake_openai::solid_png(64, 64))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let client = gateway_tests::mcp_client::connect_with_tasks(&stack.mcp_url, &alice)
        .await
        .unwrap();
    let arguments = json!({"prompt": "alice's task"}).as_object().cloned().unwrap();
    let CallToolResponse::Task(created) = client
        .call_tool_once(CallToolRequestParams::new("generate_image").with_arguments(arguments))
        .await
        .unwrap()
    else {
        panic!("expected a task")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get_task(GetTaskParams::new(&created.task.task_id))
        .await
        .unwrap()
        .task
        .status()
        .is_terminal()
    {
        assert!(Instant::now() < deadline, "the task did not finish");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Opted-in prompts are kept apart from the chain, under their owner (3: 2 alice, 1 bob).
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored(&stack, "audit-prompts/acme").len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", stored(&stack, "audit-prompts/acme"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored(&stack, "acme").len(), 3, "alice's 2 images and bob's 1");

    let before_erasure = chrono::Utc::now().to_rfc3339();
    let (report, ok) = stack.gateway_command(&["erase", "--org", "acme", "--user", "alice"]);
    assert!(ok, "{report}");
    assert_eq!(report["event"], "erasure");
    assert_eq!(
        (
            &report["images"],
            &report["uploads"],
            &report["tasks"],
            &report["prompts"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(2)),
        "{report}"
    );
    assert!(
        !report.to_string().contains("alice"),
        "the audit names a pseudonym, not the user: {report}"
    );

    // Exactly alice's objects are gone; bob's stay.
    let bob_key = bob_link
        .split_once("/images/")
        .unwrap()
        .1
        .split('?')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(stored(&stack, "acme"), [bob_key]);
    assert!(stored(&stack, "uploads/acme").is_empty());
    assert!(
        stored(&stack, "tasks/acme").is_empty(),
        "{:?}",
        stored(&stack, "tasks/acme")
    );
    assert_eq!(stored(&stack, "audit-prompts/acme").len(), 1, "bob's prompt stays");
    let gone = http_client().get(&alice_link).send().await.unwrap();
    assert_eq!(gone.status(), 410);
    assert!(gone.text().await.unwrap().contains("erased"));
    assert_eq!(http_client().get(&bob_link).send().await.unwrap().status(), 200);

    // The chain still verifies, the erasure in it; the chained events hold
    // prompt hashes, never the text.
    let (verified, ok) = stack.gateway_command(&["audit", "verify"]);
    assert!(ok, "{verified}");
    // A period alone verifies too: the erasure's chain is in it.
    let (period, ok) = stack.gateway_command(&["audit", "verify", "--since", &before_erasure]);
    assert!(ok, "{period}");
    assert!(period["replicas"].as_u64().unwrap() >= 1, "{period}");
    assert!(period["segments"].as_u64().unwrap() <= verified["segments"].as_u64().unwrap());
    let chained = || -> String {
        stored(&stack, "audit")
            .iter()
            .map(|key| std::fs::read_to_string(stack.state_dir.join("images").join(key)).unwrap())
            .collect()
    };
    // The replica stores its open segment about once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    while chained().matches("prompt_sha256").count() < 3 {
        assert!(Instant::now() < deadline, "{}", chained());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let chained = chained();
    assert!(chained.contains("\"event\":\"erasure\""), "{chained}");
    assert!(!chained.contains("a portrait of"), "a prompt's text is in the chain");
}

/// `mcp-image-gateway evidence`: the bundle holds what an auditor reads,
/// every file is in the manifest with its SHA-256 and controls, the audit
/// verifies with the erasure in its lifecycle events, and no secret of the
/// settings (API keys, the assertion key, a Redis password, key hashes) is
/// anywhere in it.
#[tokio::test]
async fn evidence_bundle_matches_its_manifest() {
    let stack = Stack::start().await.unwrap();
    generate_as(&stack, "alice", "a harbour").await;
    generate_as(&stack, "bob", "a lighthouse").await;
    let (_, ok) = stack.gateway_command(&["erase", "--org", "acme", "--user", "bob"]);
    assert!(ok);
    let settings = stack.state_dir.join("edge-settings.json");
    std::fs::write(&settings, stack.filter_config().to_string()).unwrap();
    let sbom = stack.state_dir.join("mcp-image-gateway.cdx.json");
    std::fs::write(&sbom, r#"{"bomFormat":"CycloneDX"}"#).unwrap();
    let out = stack.state_dir.join("evidence");
    let secrets = ["sk-stability-evidence-secret", "hunter2"];
    let output = std::process::Command::new(gateway_tests::stack::upstream_binary().unwrap())
        .current_dir(gateway_tests::stack::workspace_root())
        .args([
            "evidence",
            "--out",
            out.to_str().unwrap(),
            "--edge-settings",
            settings.to_str().unwrap(),
        ])
        .args(["--include", sbom.to_str().unwrap()])
        .env("GATEWAY_STATE_DIR", &stack.state_dir)
        .env("STABILITY_API_KEY", secrets[0])
        .env(
            "GATEWAY_BUDGET_REDIS_URL",
            format!("redis://gw:{}@127.0.0.1:6390/0", secrets[1]),
        )
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let read = |path: &str| std::fs::read(out.join(path)).unwrap();
    let manifest: Value = serde_json::from_slice(&read("manifest.json")).unwrap();
    let listed: Vec<&Value> = manifest["files"].as_array().unwrap().iter().collect();
    let mut on_disk = Vec::new();
    let mut dirs = vec![out.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            match entry.path() {
                p if p.is_dir() => dirs.push(p),
                p => on_disk.push(p.strip_prefix(&out).unwrap().to_string_lossy().into_owned()),
            }
        }
    }
    on_disk.retain(|p| p != "manifest.json");
    on_disk.sort();
    let mut names: Vec<String> = listed.iter().map(|f| f["path"].as_str().unwrap().to_string()).collect();
    names.sort();
    assert_eq!(names, on_disk, "the manifest lists exactly the bundle's files");
    use sha2::Digest;
    for file in &listed {
        let bytes = read(file["path"].as_str().unwrap());
        assert_eq!(file["sha256"], hex::encode(sha2::Sha256::digest(&bytes)), "{file}");
        assert!(
            !file["controls"].as_array().unwrap().is_empty(),
            "{file} supports no control"
        );
    }
    for expected in [
        "settings/edge.json",
        "settings/upstream.json",
        "audit/verification.json",
        "audit/lifecycle.json",
        "retention.json",
        "tls.json",
        "access-controls/tool-access.json",
        "access-controls/upstream__networkpolicy.yaml",
        "access-controls/istio__authorizationpolicy.yaml",
        "sbom/mcp-image-gateway.cdx.json",
        "bench/edge.md",
    ] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
    let json = |path: &str| -> Value { serde_json::from_slice(&read(path)).unwrap() };
    assert_eq!(
        json("audit/verification.json")["ok"],
        true,
        "{}",
        json("audit/verification.json")
    );
    let lifecycle = json("audit/lifecycle.json");
    assert!(
        lifecycle["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "erasure"),
        "{lifecycle}"
    );
    assert_eq!(json("tls.json")["edge_listener"]["minimum"], "TLSv1_3");
    assert_eq!(json("retention.json")["images_days"], 29);
    let edge = json("settings/edge.json");
    assert_eq!(
        edge["sha256"],
        hex::encode(sha2::Sha256::digest(std::fs::read(&settings).unwrap()))
    );

    // No secret anywhere in the bundle.
    let mut secrets: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    let filter = stack.filter_config();
    if let Some(key) = filter["identity_assertion"]["key"].as_str() {
        secrets.push(key.to_string());
    }
    for api_key in filter["api_keys"].as_array().into_iter().flatten() {
        secrets.extend(api_key["sha256"].as_str().map(str::to_string));
    }
    assert!(secrets.len() >= 3, "the stack has secrets to look for: {secrets:?}");
    for file in &listed {
        let text = String::from_utf8_lossy(&read(file["path"].as_str().unwrap())).into_owned();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "{secret} in {}", file["path"]);
        }
    }
}

/// Erasure wins over a running task: alice's task is still generating when
/// she is erased; once it has finished, nothing of hers is in the store
/// (no image, owner record, task record, lease or kept prompt) and a second
/// erasure finds nothing.
#[tokio::test]
async fn a_task_running_through_an_erasure_leaves_nothing_behind() {
    use gateway_tests::fake_openai::FakeOptions;
    use rmcp::model::{CallToolRequestParams, CallToolResponse};
    let stack = Stack::start_with(StackOptions {
        backend: gateway_tests::Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                latency: Duration::from_secs(4),
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![("GATEWAY_LOG_PROMPTS".into(), "true".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = gateway_tests::mcp_client::connect_with_tasks(&stack.mcp_url, &stack.token("alice", "acme"))
        .await
        .unwrap();
    let arguments = json!({"prompt": "a slow sunrise"}).as_object().cloned().unwrap();
    let CallToolResponse::Task(created) = client
        .call_tool_once(CallToolRequestParams::new("generate_image").with_arguments(arguments))
        .await
        .unwrap()
    else {
        panic!("expected a task")
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (report, ok) = stack.gateway_command(&["erase", "--org", "acme", "--user", "alice"]);
    assert!(ok, "{report}");
    assert_eq!(report["tasks"], 1, "the running task's record went: {report}");
    // The generation ends (delivered or stopped): its call is audited.
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack.audit_events().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the task {} never ended",
            created.task.task_id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The writer stores kept prompts about once a second.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let left: Vec<String> = [
        "acme",
        "tasks/acme",
        "owners/acme",
        "audit-prompts/acme",
        "uploads/acme",
    ]
    .iter()
    .flat_map(|prefix| stored(&stack, prefix))
    .collect();
    assert!(left.is_empty(), "alice's data outlived her erasure: {left:?}");
    let (again, ok) = stack.gateway_command(&["erase", "--org", "acme", "--user", "alice"]);
    assert!(ok, "{again}");
    assert_eq!(
        (&again["images"], &again["uploads"], &again["tasks"], &again["prompts"]),
        (&json!(0), &json!(0), &json!(0), &json!(0)),
        "{again}"
    );
    client.cancel().await.unwrap();
}
