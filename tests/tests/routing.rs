//! Model chains chosen per rule, organisation and style (GATEWAY_ROUTES_FILE),
//! through Envoy against the OpenAI fake.

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
