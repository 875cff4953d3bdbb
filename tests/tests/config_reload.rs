//! Admins change limits: live through ECDS from a watched settings file
//! (applied in seconds, counters kept, bad files refused, per-tool access),
//! or by an Envoy hot restart, which keeps in-flight generations but starts
//! shared-data counters afresh.

use std::time::Duration;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use gateway_tests::fake_openai::FakeOptions;
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use mcp_image_gateway::cli::{devkit, edge_settings};
use serde_json::{json, Value};

async fn generate(url: String, token: String, n: u64) -> (u16, Value) {
    let params = json!({"name": "generate_image", "arguments": {"prompt": "a slow sunrise", "n": n}});
    post_rpc(
        &url,
        &token,
        json!({"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": params}),
    )
    .await
}

/// One JSON-RPC message through the gateway (protocol 2025-06-18); (status, reply).
async fn post_rpc(url: &str, token: &str, body: Value) -> (u16, Value) {
    let response = http_client()
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
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

// ---- Live settings (ECDS): applied in seconds, nothing resets ----

use gateway_tests::stack::Edge;
use std::time::Instant;

fn live(edge: Edge, patch: Value) -> StackOptions {
    StackOptions {
        live_settings: true,
        edge,
        envoy_concurrency: 1,
        filter_patch: patch,
        ..StackOptions::default()
    }
}

/// Envoy's PID and restart epoch: a settings change must keep both.
async fn envoy_identity(stack: &Stack) -> (u64, u64) {
    let info: Value = http_client()
        .get(format!("{}/server_info", stack.admin_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let epoch = info["command_line_options"]["restart_epoch"].as_u64().unwrap_or(0);
    let pid = stack.envoy_pid();
    (pid, epoch)
}

/// Whether the upstream's metrics show `needle` within 3 s.
async fn metric_shows(stack: &Stack, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if stack.upstream_metrics().await.contains(needle) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Token-cache (hits, misses) so far (after the Wasm build's 100 ms flush).
async fn token_cache_lookups(stack: &Stack) -> (u64, u64) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let name = stack.edge_metric("mcp_edge_token_cache_lookups_total");
    let metrics = stack.prometheus().await;
    let count = |result: &str| {
        let prefix = format!("{name}{{result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (count("hit"), count("miss"))
}

async fn rejected_updates(stack: &Stack) -> u64 {
    stack
        .envoy_stat("extension_config_discovery.http_filter.mcp_edge.update_rejected")
        .await
}

#[tokio::test]
async fn live_settings_apply_without_restart_and_keep_quotas_wasm() {
    live_settings_apply_without_restart_and_keep_quotas(Edge::Wasm).await;
}

#[tokio::test]
async fn live_settings_apply_without_restart_and_keep_quotas_native() {
    live_settings_apply_without_restart_and_keep_quotas(Edge::DynamicModule).await;
}

async fn live_settings_apply_without_restart_and_keep_quotas(edge: Edge) {
    let patch = json!({"rate_limits": {"daily_images_per_org": 10,
        "per_caller": {"requests_per_second": 10, "burst": 40}}});
    let mut stack = Stack::start_with(live(edge, patch)).await.unwrap();
    let token = stack.token("alice", "acme");
    let before = envoy_identity(&stack).await;
    for n in [1, 2] {
        let (status, body) = generate(stack.mcp_url.clone(), token.clone(), n).await;
        assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "{body}");
    }

    // One worker: its token cache holds alice's token from here on.
    let (hits_before, misses_before) = token_cache_lookups(&stack).await;
    assert_eq!(
        (hits_before, misses_before),
        (1, 1),
        "one signature check, then the cache"
    );

    // Tightened: the 3 images spent before the change stay spent.
    let sha = stack
        .edit_settings(|s| s["rate_limits"]["daily_images_per_org"] = json!(5))
        .unwrap();
    let took = stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();
    let (status, body) = generate(stack.mcp_url.clone(), token.clone(), 2).await;
    assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "{body}");
    let (status, body) = generate(stack.mcp_url.clone(), token.clone(), 1).await;
    assert_eq!((status, body["error"]["code"].clone()), (429, json!(-32029)), "{body}");
    assert_eq!(body["id"], 1, "{body}");
    // Two more lookups, both hits: the token cache survived the change. (The
    // native build's counters belong to the configuration's stats scope and
    // start again from zero with new settings; the Wasm build's persist.)
    let (hits, misses) = token_cache_lookups(&stack).await;
    let (hits_before, misses_before) = match edge {
        Edge::Wasm => (hits_before, misses_before),
        Edge::DynamicModule => (0, 0),
    };
    assert_eq!(
        (hits - hits_before, misses - misses_before),
        (2, 0),
        "the token cache survived the change"
    );

    // Loosened: two more, then the new limit again.
    let sha = stack
        .edit_settings(|s| s["rate_limits"]["daily_images_per_org"] = json!(7))
        .unwrap();
    stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();
    let (status, body) = generate(stack.mcp_url.clone(), token.clone(), 2).await;
    assert_eq!((status, &body["result"]["isError"]), (200, &json!(false)), "{body}");
    let (status, _) = generate(stack.mcp_url.clone(), token.clone(), 1).await;
    assert_eq!(status, 429, "7 of 7 spent across two changes");

    // A bad file never applies: each is refused by the filter inside Envoy,
    // logged with the field, counted, and the running settings stay.
    let good_sha = sha;
    let good = stack.settings();
    let mut bad_unknown = good.clone();
    bad_unknown["max_body"] = json!(1);
    let mut bad_range = good.clone();
    bad_range["max_body_bytes"] = json!(0);
    let mut bad_keys = good.clone();
    bad_keys["jwt"]["jwks"] = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "not-a-key"}]});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("invalid JSON", b"{\"max_body_bytes\": 10,".to_vec(), "not valid JSON"),
        (
            "unknown field",
            bad_unknown.to_string().into_bytes(),
            "unknown field `max_body`",
        ),
        (
            "out of range",
            bad_range.to_string().into_bytes(),
            "`max_body_bytes` must be between",
        ),
        (
            "JWKS without usable keys",
            bad_keys.to_string().into_bytes(),
            "`jwt`: `jwks",
        ),
    ];
    for (index, (name, bytes, field)) in cases.iter().enumerate() {
        let rejected = rejected_updates(&stack).await;
        stack.write_settings(bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while rejected_updates(&stack).await == rejected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            rejected_updates(&stack).await,
            rejected + 1,
            "{name}: Envoy refused the update"
        );
        assert!(
            stack.log("envoy").contains(field),
            "{name}: Envoy's log names {field:?}"
        );
        assert!(
            edge_settings::runs(&http_client(), &stack.admin_url, &good_sha, Duration::ZERO).await,
            "{name}: the running settings stay"
        );
        let rejected_events = |events: &[Value]| -> Vec<Value> {
            events
                .iter()
                .filter(|e| e["fields"]["result"] == "rejected")
                .cloned()
                .collect()
        };
        let events = stack
            .settings_events_when(Duration::from_secs(5), |events| rejected_events(events).len() > index)
            .await;
        let event = rejected_events(&events)
            .into_iter()
            .nth(index)
            .unwrap_or_else(|| panic!("{name}: audited as rejected: {events:?}"));
        assert!(event["fields"]["reason"].as_str().unwrap().contains(field), "{event}");
    }
    let (status, _) = generate(stack.mcp_url.clone(), token.clone(), 1).await;
    assert_eq!(status, 429, "the quota still holds after the refused files");

    assert_eq!(
        envoy_identity(&stack).await,
        before,
        "same Envoy process, same restart epoch"
    );
    let applied: Vec<Value> = stack
        .settings_events()
        .into_iter()
        .filter(|e| e["fields"]["result"] == "applied")
        .collect();
    assert_eq!(applied.len(), 2, "{applied:?}");
    assert_eq!(
        applied[0]["fields"]["changed_fields"],
        "rate_limits.daily_images_per_org"
    );
    assert!(applied[1]["fields"]["sha256_before"] == applied[0]["fields"]["sha256_after"]);
    let info = stack.prometheus().await;
    assert!(
        info.contains(&format!("settings_info{{sha256=\"{good_sha}\"}} 1")),
        "{info}"
    );
    eprintln!("{edge:?}: settings applied {took:?} after the file changed");
}

#[tokio::test]
async fn per_tool_access_applies_live_and_lists_only_callable_tools() {
    let mut stack = Stack::start_with(live(Edge::Wasm, json!({}))).await.unwrap();
    let alice = stack.token("alice", "acme");
    let bob = stack.token("bob", "globex");
    let names = |reply: &Value| -> Vec<String> {
        let mut names: Vec<String> = reply["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("{reply}"))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    };
    assert_eq!(names(&rpc(&stack, &alice, "tools/list", json!({})).await.1).len(), 4);

    let sha = stack
        .edit_settings(|s| {
            s["tool_access"] = json!({
                "scopes": {"edit_image": "images:edit", "create_upload": "images:edit"},
                "orgs": {"globex": ["generate_image", "list_models"]}
            })
        })
        .unwrap();
    stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();

    // Alice's token has images:generate only: no edit tools in her list, and a call is 403.
    let (_, list) = rpc(&stack, &alice, "tools/list", json!({})).await;
    assert_eq!(names(&list), vec!["generate_image", "list_models"]);
    let (status, reply) = rpc(
        &stack,
        &alice,
        "tools/call",
        json!({"name": "create_upload", "arguments": {"content_type": "image/png"}}),
    )
    .await;
    assert_eq!((status, reply["id"].clone()), (403, json!(7)), "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("calling create_upload needs the \"images:edit\" scope"));
    // A token with the scope sees and calls them.
    let audience = devkit::audience(&stack.base_url);
    let editor = stack.token_full("carol", "acme", &audience, "images:generate images:edit", 3600, None);
    let (_, list) = rpc(&stack, &editor, "tools/list", json!({})).await;
    assert_eq!(names(&list).len(), 4);

    // Globex may call two tools; others are refused by name.
    let (_, list) = rpc(&stack, &bob, "tools/list", json!({})).await;
    assert_eq!(names(&list), vec!["generate_image", "list_models"]);
    let (status, reply) = rpc(
        &stack,
        &bob,
        "tools/call",
        json!({"name": "edit_image", "arguments": {"prompt": "x", "images": ["image://x"]}}),
    )
    .await;
    assert_eq!(
        (status, reply["error"]["code"].clone(), reply["id"].clone()),
        (403, json!(-32602), json!(7)),
        "{reply}"
    );
    assert!(reply["error"]["message"]
        .as_str()
        .unwrap()
        .contains("\"edit_image\" is not available to organisation \"globex\""));
    // Nothing refused reached the upstream.
    assert!(stack
        .audit_events()
        .iter()
        .all(|e| e["fields"]["tool"] != "edit_image" && e["fields"]["tool"] != "create_upload"));
}

/// One JSON-RPC request (id 7) through the gateway; (status, reply).
async fn rpc(stack: &Stack, token: &str, method: &str, params: Value) -> (u16, Value) {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    post_rpc(&stack.mcp_url, token, body).await
}

/// 200 requests/s for 20 s through Envoy while the settings change 10 times:
/// no request fails, the quota's arithmetic is exact across the changes,
/// and Envoy is the same process throughout.
#[tokio::test]
async fn settings_change_ten_times_under_load() {
    let patch = json!({"rate_limits": {
        "per_caller": {"requests_per_second": 500, "burst": 1000},
        "per_org": {"requests_per_second": 1000, "burst": 2000},
        "daily_images_per_org": 4}});
    let mut options = live(Edge::Wasm, patch);
    options.envoy_concurrency = 2;
    let mut stack = Stack::start_with(options).await.unwrap();
    let before = envoy_identity(&stack).await;
    let load_token = stack.token("loader", "loadco");
    let quota_token = stack.token("quinn", "quotaco");

    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(
        stack.mcp_url.clone(),
        load_token,
        200,
        Duration::from_secs(20),
        stop.clone(),
    ));
    let started = Instant::now();
    let (mut granted, mut refused, mut expected_granted) = (0u64, 0u64, 0u64);
    for change in 0..10u64 {
        // Quota in force after this change: 4, 5, ... ; each round asks for 2 images.
        let quota = 4 + change;
        let sha = stack
            .edit_settings(|s| {
                s["rate_limits"]["daily_images_per_org"] = json!(quota);
                s["max_prompt_chars"] = json!(4000 - change);
            })
            .unwrap();
        stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();
        for _ in 0..2 {
            let spent = granted;
            let (status, body) = generate(stack.mcp_url.clone(), quota_token.clone(), 1).await;
            match status {
                200 => granted += 1,
                429 => refused += 1,
                other => panic!("unexpected {other}: {body}"),
            }
            expected_granted += u64::from(spent < quota);
        }
        assert_eq!(
            granted, expected_granted,
            "after change {change}: {granted} granted, {refused} refused"
        );
        let next = Duration::from_secs(2 * (change + 1));
        tokio::time::sleep(next.saturating_sub(started.elapsed())).await;
    }
    stop.store(true, Ordering::Release);
    let (sent, failed) = load.await.unwrap();
    assert!(sent >= 3_600, "the load ran at about 200/s: {sent} sent");
    assert!(
        failed.is_empty(),
        "{} of {sent} load requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert_eq!((granted, refused), (13, 7), "quota 4→13 over 10 changes, 20 asks");
    assert_eq!(
        envoy_identity(&stack).await,
        before,
        "same Envoy process, same restart epoch"
    );
}

/// Sends `list_models` calls at `per_second` for `duration`; returns how
/// many were sent and the failures (status and body).
async fn steady_load(
    url: String,
    token: String,
    per_second: u64,
    duration: Duration,
    stop: Arc<AtomicBool>,
) -> (u64, Vec<String>) {
    let client = http_client();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / per_second));
    let deadline = Instant::now() + duration;
    let mut calls = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while Instant::now() < deadline && !stop.load(Ordering::Acquire) {
        ticker.tick().await;
        sent += 1;
        let request = client
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18")
            .json(&json!({"jsonrpc": "2.0", "id": sent, "method": "tools/call",
                "params": {"name": "list_models", "arguments": {}}}));
        calls.spawn(async move {
            match request.send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let body: Value = response.json().await.unwrap_or_default();
                    (status == 200 && body["result"]["isError"] == false)
                        .then_some(())
                        .ok_or_else(|| format!("{status} {body}"))
                }
                Err(error) => Err(error.to_string()),
            }
        });
    }
    let mut failed = Vec::new();
    while let Some(outcome) = calls.join_next().await {
        if let Ok(Err(failure)) = outcome {
            failed.push(failure);
        }
    }
    (sent, failed)
}

/// The upstream's admin files apply while it runs: a routes change reaches
/// new calls within seconds (and on SIGHUP), a call in flight finishes on
/// the chain it started with, a bad file is refused and the running one
/// stays, and every change is audited and reported by hash.
#[tokio::test]
async fn upstream_admin_files_reload_without_disturbing_calls_in_flight() {
    let routes = std::env::temp_dir().join(format!("routes-{}.json", uuid::Uuid::new_v4()));
    let write = |value: Value| {
        let staging = routes.with_extension("saving");
        std::fs::write(&staging, value.to_string()).unwrap();
        std::fs::rename(&staging, &routes).unwrap();
        mcp_image_gateway::telemetry::sha256(value.to_string().as_bytes())
    };
    let first = write(json!({"orgs": {"acme": ["gpt-image-1.5"]}}));
    let slow = FakeOptions {
        latency: Duration::from_secs(2),
        ..FakeOptions::default()
    };
    let mut stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: slow,
        },
        upstream_env: vec![
            ("GATEWAY_ROUTES_FILE".into(), routes.display().to_string()),
            ("GATEWAY_ADMIN_FILES_POLL_SECS".into(), "1".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let running = format!("admin_file_info{{file=\"routes\",sha256=\"{first}\"}} 1");
    assert!(metric_shows(&stack, &running).await);

    let in_flight = tokio::spawn(generate(stack.mcp_url.clone(), token.clone(), 1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = write(json!({"orgs": {"acme": ["gpt-image-1-mini"]}}));
    // Applied within the poll interval, while the first call still runs.
    let applied = format!("sha256=\"{second}\"}} 1");
    assert!(
        metric_shows(&stack, &applied).await,
        "the routes change applied: {}",
        stack.log_tail("upstream")
    );
    let (_, body) = generate(stack.mcp_url.clone(), token.clone(), 1).await;
    assert_eq!(
        body["result"]["structuredContent"]["model"], "gpt-image-1-mini",
        "{body}"
    );
    let (_, body) = in_flight.await.unwrap();
    assert_eq!(
        body["result"]["structuredContent"]["model"], "gpt-image-1.5",
        "the call in flight kept its chain: {body}"
    );

    // A route to a model nobody serves is refused; the running routes stay.
    let bad = write(json!({"orgs": {"acme": ["no-such-provider:nothing"]}}));
    let refused = "admin_file_reloads_total{file=\"routes\",result=\"rejected\"} 1";
    assert!(
        metric_shows(&stack, refused).await,
        "the bad file was refused: {}",
        stack.log_tail("upstream")
    );
    let (_, body) = generate(stack.mcp_url.clone(), token.clone(), 1).await;
    assert_eq!(
        body["result"]["structuredContent"]["model"], "gpt-image-1-mini",
        "{body}"
    );

    // SIGHUP re-reads at once (the poll would too, within a second).
    let third = write(json!({"orgs": {"acme": ["gpt-image-2"]}}));
    stack.signal("upstream", "HUP");
    let applied = format!("sha256=\"{third}\"}} 1");
    assert!(metric_shows(&stack, &applied).await, "SIGHUP applied the file");
    assert!(
        !stack.exited("upstream"),
        "SIGHUP reloads, it does not stop the service"
    );

    let changes: Vec<Value> = stack
        .audit_events()
        .into_iter()
        .filter(|e| e["fields"]["event"] == "settings_change")
        .collect();
    let summary: Vec<(String, String)> = changes
        .iter()
        .map(|e| {
            (
                e["fields"]["result"].as_str().unwrap_or_default().to_string(),
                e["fields"]["sha256_after"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("applied".to_string(), second.clone()),
            ("rejected".to_string(), bad),
            ("applied".to_string(), third)
        ]
    );
    assert!(
        changes[1]["fields"]["reason"]
            .as_str()
            .unwrap()
            .contains("no-such-provider"),
        "{}",
        changes[1]
    );
    assert_eq!(changes[2]["fields"]["sha256_before"], json!(second));
    let _ = std::fs::remove_file(routes);
}

/// The mesh path: istiod delivers a `WasmPlugin` to the gateways as an ECDS
/// resource whose settings are its `pluginConfig` as JSON. The repository's
/// WasmPlugin, pushed that way into a running Envoy, is applied live; going
/// back to the previous settings is too, without a restart.
#[tokio::test]
async fn istio_wasmplugin_plugin_config_applies_as_an_ecds_update() {
    // The WasmPlugin takes the assertion key from the gateway's environment.
    std::env::set_var("MCP_IDENTITY_ASSERTION_KEY", "ab".repeat(32));
    let mut stack = Stack::start_with(live(Edge::Wasm, json!({}))).await.unwrap();
    let before = envoy_identity(&stack).await;
    let python = gateway_tests::stack::workspace_root().join(".venv/bin/python");
    let output = std::process::Command::new(python)
        .args([
            "-c",
            "import json,yaml; d=yaml.safe_load(open('deploy/istio/wasmplugin.yaml')); print(json.dumps(d['spec']['pluginConfig']))",
        ])
        .current_dir(gateway_tests::stack::workspace_root())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let plugin_config = String::from_utf8(output.stdout).unwrap();
    let previous = stack.settings();

    let sha = stack.write_settings(plugin_config.trim().as_bytes()).unwrap();
    stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();
    let sha = stack.edit_settings(|s| *s = previous).unwrap();
    stack.wait_settings(&sha, Duration::from_secs(2)).await.unwrap();
    let token = stack.token("alice", "acme");
    let (status, _) = rpc(&stack, &token, "tools/list", json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(envoy_identity(&stack).await, before);
}
