//! Model chains chosen per rule, organisation and style (GATEWAY_ROUTES_FILE),
//! and provider capacity (quotas read from the provider's headers,
//! self-hosted pools' concurrency caps and fair queues), through Envoy
//! against the OpenAI fake.

use gateway_tests::fake_openai::FakeOptions;
use gateway_tests::mcp_client::{connect, generate, list_models};
use gateway_tests::{Backend, Stack, StackOptions};
use serde_json::{json, Value};

#[tokio::test]
async fn calls_take_the_chain_their_rule_org_or_style_selects() {
    let routes = json!({
        "styles": {"anime": ["gpt-image-1.5"]},
        "orgs": {"globex": ["gpt-image-1-mini"]},
        "rules": [{"min_prompt_chars": 200, "route": ["gpt-image-1.5", "gpt-image-2"]}]
    });
    let file = std::env::temp_dir().join(format!("routes-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, routes.to_string()).unwrap();
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions::default(),
        },
        upstream_env: vec![("GATEWAY_ROUTES_FILE".into(), file.display().to_string())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let acme = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let globex = connect(&stack.mcp_url, &stack.token("gus", "globex")).await.unwrap();
    let long = "a very detailed harbour scene ".repeat(8);
    let cases = [
        (&acme, json!({"prompt": "a harbour"}), "gpt-image-2"),
        (&acme, json!({"prompt": "a harbour", "style": "anime"}), "gpt-image-1.5"),
        (
            &globex,
            json!({"prompt": "a harbour", "style": "anime"}),
            "gpt-image-1-mini",
        ),
        (&globex, json!({"prompt": long}), "gpt-image-1.5"),
    ];
    for (client, arguments, expected) in cases {
        let result = generate(client, arguments.clone()).await.unwrap();
        assert_eq!(result.is_error, Some(false), "{arguments}: {result:?}");
        assert_eq!(result.structured_content.unwrap()["model"], expected, "{arguments}");
    }
    let asked: Vec<Value> = stack
        .fake
        .as_ref()
        .unwrap()
        .requests()
        .iter()
        .map(|r| r["model"].clone())
        .collect();
    assert_eq!(
        asked,
        [
            json!("gpt-image-2"),
            json!("gpt-image-1.5"),
            json!("gpt-image-1-mini"),
            json!("gpt-image-1.5")
        ]
    );
    let listed = list_models(&acme).await.unwrap();
    assert_eq!(listed["routes"][0]["when"], "rule 0: prompt of at least 200 characters");
    assert_eq!(
        listed["routes"][1],
        json!({"when": "org globex", "models": ["gpt-image-1-mini"]})
    );
    for client in [acme, globex] {
        client.cancel().await.unwrap();
    }
    let _ = std::fs::remove_file(file);
}

/// Provider quota awareness through Envoy: the OpenAI fake counts a request
/// quota of 8 per 10 s window down and says so in OpenAI's rate-limit
/// headers; the gateway spills before the provider has to refuse (no 429
/// at all), keeps the last 2 for the priority organisation, tells a caller
/// whose chain has no room when to come back (billed nothing), and goes
/// back to the model once the window has reset. The fallback is a bare name
/// that binds to its own provider (`offline-preview`), not to OpenAI.
#[tokio::test]
async fn calls_spill_before_the_provider_quota_runs_out_and_come_back_after_its_reset() {
    let window = std::time::Duration::from_secs(10);
    let dir = std::env::temp_dir().join(format!("capacity-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let builtin = gateway_tests::stack::workspace_root().join("upstream/src/routing/models.json");
    let mut models: Value = serde_json::from_slice(&std::fs::read(builtin).unwrap()).unwrap();
    for row in models.as_array_mut().unwrap() {
        if row["model"] == "gpt-image-2" {
            row["reserve"] = json!({"requests": 2});
        }
    }
    std::fs::write(dir.join("models.json"), models.to_string()).unwrap();
    std::fs::write(
        dir.join("routes.json"),
        json!({"priority_orgs": ["vip"], "orgs": {"solo": ["gpt-image-2"]}}).to_string(),
    )
    .unwrap();
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                request_quota: Some(gateway_tests::fake_openai::RequestQuota { limit: 8, window }),
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![
            ("GATEWAY_FALLBACK_MODELS".into(), "offline-preview".into()),
            (
                "GATEWAY_MODELS_FILE".into(),
                dir.join("models.json").display().to_string(),
            ),
            (
                "GATEWAY_ROUTES_FILE".into(),
                dir.join("routes.json").display().to_string(),
            ),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let acme = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let vip = connect(&stack.mcp_url, &stack.token("val", "vip")).await.unwrap();
    let solo = connect(&stack.mcp_url, &stack.token("sol", "solo")).await.unwrap();
    let served_by = |result: rmcp::model::CallToolResult| {
        assert_eq!(result.is_error, Some(false), "{result:?}");
        result.structured_content.unwrap()["model"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let kite = json!({"prompt": "a kite"});
    // The fake's window starts with the first call.
    let first_call = std::time::Instant::now();
    let mut acme_models = Vec::new();
    for _ in 0..7 {
        acme_models.push(served_by(generate(&acme, kite.clone()).await.unwrap()));
    }
    let expected: Vec<&str> = [["gpt-image-2"; 6].as_slice(), &["offline-preview"]].concat();
    assert_eq!(acme_models, expected, "six calls, then the last two are the reserve's");

    // Solo's chain is gpt-image-2 alone: a tool error saying when to come back.
    let refused = generate(&solo, kite.clone()).await.unwrap();
    assert_eq!(refused.is_error, Some(true), "{refused:?}");
    let content = refused.structured_content.clone().unwrap();
    assert_eq!(content["error"], "no_capacity", "{refused:?}");
    let wait = content["retry_after_seconds"].as_u64().unwrap();
    assert!((1..=10).contains(&wait), "{wait}");
    let text = format!("{:?}", refused.content);
    assert!(text.contains("Nothing was generated or billed"), "{text}");

    // The priority organisation uses the reserve, then spills too.
    let vip_models: Vec<String> = [
        generate(&vip, kite.clone()).await.unwrap(),
        generate(&vip, kite.clone()).await.unwrap(),
        generate(&vip, kite.clone()).await.unwrap(),
    ]
    .into_iter()
    .map(served_by)
    .collect();
    assert_eq!(vip_models, ["gpt-image-2", "gpt-image-2", "offline-preview"]);
    assert!(
        started.elapsed() < window,
        "the run outlasted the quota window; the test means nothing"
    );
    let fake = stack.fake.as_ref().unwrap();
    assert_eq!(
        fake.quota_refusals("gpt-image-2"),
        0,
        "the provider never had to refuse"
    );
    assert_eq!(fake.requests().len(), 8, "exactly the quota went to the provider");
    assert!(
        fake.requests().iter().all(|r| r["model"] == "gpt-image-2"),
        "offline-preview was never sent to OpenAI"
    );

    let metrics = stack.upstream_metrics().await;
    for line in [
        r#"mcp_gateway_provider_ratelimit_limit{model="gpt-image-2",kind="requests"} 8"#,
        r#"mcp_gateway_provider_ratelimit_remaining{model="gpt-image-2",kind="requests"} 0"#,
        r#"mcp_gateway_capacity_spills_total{model="gpt-image-2",reason="reserved"} 2"#,
        r#"mcp_gateway_capacity_spills_total{model="gpt-image-2",reason="exhausted"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    assert!(
        !metrics.contains("mcp_gateway_provider_rate_limited_total{"),
        "{metrics}"
    );

    // Nothing billed for the refused call.
    let billed_solo = stack
        .log("upstream")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["target"] == "billing" && e["fields"]["org"] == "solo")
        .count();
    assert_eq!(billed_solo, 0);

    // Once the window has reset, calls go back to the model.
    tokio::time::sleep((window + std::time::Duration::from_secs(1)).saturating_sub(first_call.elapsed())).await;
    assert_eq!(served_by(generate(&acme, kite.clone()).await.unwrap()), "gpt-image-2");
    assert_eq!(fake.quota_refusals("gpt-image-2"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two upstream replicas share what the provider said through Redis: a
/// quota of 4 runs out across both (Envoy spreads the calls), and neither
/// replica sends the provider a call it would have to refuse. With readings
/// kept per replica, the fifth call would meet a 429.
#[tokio::test]
async fn replicas_share_provider_quota_readings_through_redis() {
    let redis = gateway_tests::redis_server::Redis::start();
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                request_quota: Some(gateway_tests::fake_openai::RequestQuota {
                    limit: 4,
                    window: std::time::Duration::from_secs(60),
                }),
                ..FakeOptions::default()
            },
        },
        upstream_replicas: 2,
        upstream_env: vec![
            ("GATEWAY_FALLBACK_MODELS".into(), "offline-preview".into()),
            ("GATEWAY_CAPACITY_REDIS_URL".into(), redis.url()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let mut models = Vec::new();
    for _ in 0..6 {
        let result = generate(&client, json!({"prompt": "a kite"})).await.unwrap();
        assert_eq!(result.is_error, Some(false), "{result:?}");
        models.push(
            result.structured_content.unwrap()["model"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let expected: Vec<&str> = [["gpt-image-2"; 4].as_slice(), &["offline-preview"; 2]].concat();
    assert_eq!(models, expected);
    assert_eq!(stack.fake.as_ref().unwrap().quota_refusals("gpt-image-2"), 0);
    let served: Vec<usize> = ["upstream", "upstream-2"]
        .iter()
        .map(|name| stack.audit_events_of(name).len())
        .collect();
    assert!(served.iter().all(|&n| n > 0), "both replicas served calls: {served:?}");
    assert_eq!(redis.hget("mcp:quota:gpt-image-2", "requests:limit"), "4");
    assert_eq!(redis.hget("mcp:quota:gpt-image-2", "requests:remaining"), "0");
}

/// A models file: the built-in table plus a self-hosted pool `sdxl-pool`
/// (OpenAI-compatible, PNG only) with `concurrency`.
fn pool_models(dir: &std::path::Path, concurrency: Value) -> String {
    let builtin = gateway_tests::stack::workspace_root().join("upstream/src/routing/models.json");
    let mut models: Value = serde_json::from_slice(&std::fs::read(builtin).unwrap()).unwrap();
    models.as_array_mut().unwrap().push(json!({
        "model": "sdxl-pool", "provider": "openai-compatible",
        "sizes": ["1024x1024"], "qualities": ["auto", "low", "medium", "high"],
        "output_formats": ["png"], "transparent_background": false, "max_images": 1,
        "usd_per_image": 0.0005, "concurrency": concurrency
    }));
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("models.json");
    std::fs::write(&path, models.to_string()).unwrap();
    path.display().to_string()
}

/// A call with a progress token, answered as an event stream: the final
/// result and every progress message.
async fn call_with_progress(stack: &Stack, token: &str, prompt: &str) -> (Value, Vec<String>) {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": prompt},
                   "_meta": {"progressToken": prompt}}});
    let text = gateway_tests::stack::http_client()
        .post(&stack.mcp_url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let messages: Vec<Value> = text
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|data| serde_json::from_str(data).ok())
        .collect();
    let progress = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .filter_map(|m| m["params"]["message"].as_str().map(str::to_string))
        .collect();
    let result = messages
        .into_iter()
        .find(|m| m["id"] == 7)
        .unwrap_or_else(|| panic!("no result in {text}"));
    (result["result"].clone(), progress)
}

/// A burst of three times a pool's cap, spread by Envoy over two upstream
/// replicas sharing slots through Redis: the pool never has more than its
/// cap in flight, every call (a second organisation's too) is served within
/// the queue timeout, and waiting calls hear their place.
#[tokio::test]
async fn a_capped_pool_never_exceeds_its_cap_and_its_line_is_fair() {
    let redis = gateway_tests::redis_server::Redis::start();
    let dir = std::env::temp_dir().join(format!("pool-{}", uuid::Uuid::new_v4()));
    let models = pool_models(
        &dir,
        json!({"max_in_flight": 2, "max_queue": 50, "queue_timeout_secs": 20}),
    );
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "sdxl-pool".into(),
            options: FakeOptions {
                compatible: true,
                latency: std::time::Duration::from_millis(1000),
                ..FakeOptions::default()
            },
        },
        upstream_replicas: 2,
        upstream_env: vec![
            ("GATEWAY_BACKEND".into(), "openai-compatible".into()),
            ("GATEWAY_MODELS_FILE".into(), models),
            ("GATEWAY_CAPACITY_REDIS_URL".into(), redis.url()),
            ("GATEWAY_PROGRESS_INTERVAL_SECS".into(), "30".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let stack = std::sync::Arc::new(stack);
    let started = std::time::Instant::now();
    let acme = stack.token("alice", "acme");
    let mut burst = Vec::new();
    for i in 0..6 {
        let (stack, token) = (stack.clone(), acme.clone());
        burst.push(tokio::spawn(async move {
            call_with_progress(&stack, &token, &format!("acme {i}")).await
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let globex = stack.token("gus", "globex");
    let (single, _) = call_with_progress(&stack, &globex, "globex").await;
    assert_eq!(single["structuredContent"]["model"], "sdxl-pool", "{single}");
    let mut heard_place = false;
    for call in burst {
        let (result, progress) = call.await.unwrap();
        assert_eq!(result["isError"], false, "{result}");
        assert_eq!(result["structuredContent"]["model"], "sdxl-pool", "{result}");
        heard_place |= progress.iter().any(|m| m.starts_with("queued for sdxl-pool"));
    }
    let fake = stack.fake.as_ref().unwrap();
    assert_eq!(fake.requests().len(), 7);
    assert_eq!(
        fake.max_in_flight(),
        2,
        "never more than the cap in flight, and the cap used"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "within the queue timeout"
    );
    assert!(heard_place, "a waiting call heard its place in line");
    let metrics = stack.upstream_metrics().await;
    assert!(
        metrics.contains(r#"mcp_gateway_pool_wait_duration_seconds_count{model="sdxl-pool",org="acme"}"#),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A pool's line serves organisations in turn: one organisation's backlog
/// does not put another's single call behind all of it (one replica, so the
/// order is the line's alone).
#[tokio::test]
async fn a_pools_line_serves_organisations_in_turn() {
    let dir = std::env::temp_dir().join(format!("pool-{}", uuid::Uuid::new_v4()));
    let models = pool_models(
        &dir,
        json!({"max_in_flight": 1, "max_queue": 50, "queue_timeout_secs": 20}),
    );
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "sdxl-pool".into(),
            options: FakeOptions {
                compatible: true,
                latency: std::time::Duration::from_millis(500),
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![
            ("GATEWAY_BACKEND".into(), "openai-compatible".into()),
            ("GATEWAY_MODELS_FILE".into(), models),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let stack = std::sync::Arc::new(stack);
    let acme = stack.token("alice", "acme");
    let mut burst = Vec::new();
    for i in 0..6 {
        let (stack, token) = (stack.clone(), acme.clone());
        burst.push(tokio::spawn(async move {
            let (result, _) = call_with_progress(&stack, &token, &format!("acme {i}")).await;
            (result, std::time::Instant::now())
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (single, _) = call_with_progress(&stack, &stack.token("gus", "globex"), "globex").await;
    let single_done = std::time::Instant::now();
    assert_eq!(single["isError"], false, "{single}");
    let mut after_single = 0;
    for call in burst {
        let (result, done) = call.await.unwrap();
        assert_eq!(result["isError"], false, "{result}");
        after_single += usize::from(done > single_done);
    }
    // First come, first served: the single call last, none of the burst
    // after it. In turn: after the call in flight and at most one waiting.
    assert!(
        after_single >= 4,
        "{after_single} of the burst finished after the single call"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A full line refuses at once with the capacity error (billed nothing);
/// a pool that does not answer (scaled to zero) sends calls down the chain
/// while counting the demand the autoscaler scales on, and takes traffic
/// back once it answers.
#[tokio::test]
async fn a_full_line_refuses_at_once_and_a_pool_at_zero_spills_until_it_answers() {
    let dir = std::env::temp_dir().join(format!("pool-{}", uuid::Uuid::new_v4()));
    let models = pool_models(
        &dir,
        json!({"max_in_flight": 1, "max_queue": 1, "queue_timeout_secs": 20}),
    );
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "sdxl-pool".into(),
            options: FakeOptions {
                compatible: true,
                latency: std::time::Duration::from_millis(1500),
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![
            ("GATEWAY_BACKEND".into(), "openai-compatible".into()),
            ("GATEWAY_MODELS_FILE".into(), models.clone()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let client = std::sync::Arc::new(client);
    let mut calls = Vec::new();
    for i in 0..3 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(150 * i)).await;
            let started = std::time::Instant::now();
            let result = generate(&client, json!({"prompt": format!("kite {i}")})).await.unwrap();
            (result, started.elapsed())
        }));
    }
    let mut outcomes = Vec::new();
    for call in calls {
        outcomes.push(call.await.unwrap());
    }
    let served = outcomes.iter().filter(|(r, _)| r.is_error == Some(false)).count();
    assert_eq!(served, 2, "one ran and one waited: {outcomes:?}");
    let (refused, took) = outcomes.iter().find(|(r, _)| r.is_error == Some(true)).unwrap();
    assert_eq!(refused.structured_content.as_ref().unwrap()["error"], "no_capacity");
    assert!(
        *took < std::time::Duration::from_millis(1000),
        "refused at once: {took:?}"
    );
    let metrics = stack.upstream_metrics().await;
    assert!(
        metrics.contains(r#"mcp_gateway_capacity_spills_total{model="sdxl-pool",reason="queue_full"} 1"#),
        "{metrics}"
    );
    let billed = stack
        .log("upstream")
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["target"] == "billing")
        .count();
    assert_eq!(billed, 2, "the refused call was not billed");
    drop(stack);

    // The pool at zero: nothing listens where it will be.
    let pool_port = gateway_tests::stack::free_port();
    let stack = Stack::start_with(StackOptions {
        upstream_env: vec![
            ("GATEWAY_BACKEND".into(), "openai-compatible".into()),
            ("GATEWAY_MODELS_FILE".into(), models),
            (
                "OPENAI_COMPATIBLE_BASE_URL".into(),
                format!("http://127.0.0.1:{pool_port}/v1"),
            ),
            ("OPENAI_COMPATIBLE_MODEL".into(), "sdxl-pool".into()),
            ("OPENAI_COMPATIBLE_API_KEY".into(), "sk-pool".into()),
            ("GATEWAY_FALLBACK_MODELS".into(), "offline-preview".into()),
            ("GATEWAY_BREAKER_FAILURES".into(), "2".into()),
            ("GATEWAY_BREAKER_OPEN_SECS".into(), "2".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let model_of = |result: rmcp::model::CallToolResult| {
        assert_eq!(result.is_error, Some(false), "{result:?}");
        result.structured_content.unwrap()["model"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for _ in 0..3 {
        let started = std::time::Instant::now();
        assert_eq!(
            model_of(generate(&client, json!({"prompt": "a kite"})).await.unwrap()),
            "offline-preview"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "no retries against a pool at zero"
        );
    }
    let metrics = stack.upstream_metrics().await;
    let demand = metrics
        .lines()
        .find(|l| l.starts_with(r#"mcp_gateway_capacity_spills_total{model="sdxl-pool",reason="unavailable"}"#))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok());
    assert_eq!(demand, Some(3), "every call counted as demand for the pool:\n{metrics}");
    // The pool comes up; after the breaker's pause, traffic returns to it.
    let pool = gateway_tests::fake_openai::FakeOpenAi::start_on(
        &format!("127.0.0.1:{pool_port}"),
        FakeOptions {
            compatible: true,
            api_key: Some("sk-pool".into()),
            ..FakeOptions::default()
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        model_of(generate(&client, json!({"prompt": "a kite"})).await.unwrap()),
        "sdxl-pool"
    );
    assert_eq!(pool.requests().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}
