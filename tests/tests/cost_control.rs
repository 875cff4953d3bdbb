//! Model selection and cost control through Envoy: a caller's `model`
//! honoured or refused by its organisation's list, rules on the prompt's
//! content, `cheapest` ordering and its fallback, weighted arms stable per
//! user, per-organisation budgets shared by two replicas through Redis
//! (reservation, settlement from usage, release on failure, refusal at the
//! limit), and the cost simulation of the shipped example configuration.

use std::path::PathBuf;
use std::process::Command;

use chrono::Datelike;
use gateway_tests::fake_openai::{FakeOptions, BLOCKED_MARKER};
use gateway_tests::mcp_client::{call_http, structured, tool_error};
use gateway_tests::stack::{http_client, upstream_binary, workspace_root};
use gateway_tests::{Backend, Stack, StackOptions};
use serde_json::{json, Value};

async fn call(stack: &Stack, token: &str, tool: &str, arguments: Value) -> Value {
    call_http(&stack.mcp_url, token, "2025-11-25", tool, arguments).await
}

/// A config file in a folder of its own (removed by the OS's temp cleaning).
fn write_config(name: &str, value: &Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cost-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    path
}

/// OpenAI's fake behind a default chain of gpt-image-2 then gpt-image-1-mini.
async fn stack_with(routes: Value, failing: &[&str], extra_env: Vec<(String, String)>) -> Stack {
    let mut upstream_env = vec![
        ("GATEWAY_FALLBACK_MODELS".into(), "gpt-image-1-mini".into()),
        ("GATEWAY_MAX_ATTEMPTS".into(), "1".into()),
        (
            "GATEWAY_ROUTES_FILE".into(),
            write_config("routes.json", &routes).display().to_string(),
        ),
    ];
    upstream_env.extend(extra_env);
    Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                failing_models: failing.iter().map(|m| m.to_string()).collect(),
                ..FakeOptions::default()
            },
        },
        upstream_env,
        ..StackOptions::default()
    })
    .await
    .unwrap()
}

fn models_asked(stack: &Stack) -> Vec<String> {
    stack
        .fake
        .as_ref()
        .unwrap()
        .requests()
        .iter()
        .map(|r| r["model"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn callers_choose_among_their_organisations_models() {
    let stack = stack_with(
        json!({"selectable": {"default": ["gpt-image-1-mini"], "orgs": {"acme": ["gpt-image-2", "gpt-image-1-mini"]}}}),
        &["gpt-image-1.5"],
        vec![],
    )
    .await;
    let acme = stack.token("alice", "acme");
    let globex = stack.token("gus", "globex");
    let listed = call(&stack, &acme, "list_models", json!({})).await;
    assert_eq!(
        structured(&listed)["selectable"],
        json!(["gpt-image-2", "gpt-image-1-mini"])
    );
    let listed = call(&stack, &globex, "list_models", json!({})).await;
    assert_eq!(structured(&listed)["selectable"], json!(["gpt-image-1-mini"]));

    let chosen = call(
        &stack,
        &acme,
        "generate_image",
        json!({"prompt": "x", "model": "gpt-image-1-mini"}),
    )
    .await;
    assert_eq!(structured(&chosen)["model"], "gpt-image-1-mini");
    assert_eq!(models_asked(&stack), ["gpt-image-1-mini"]);
    let refused = call(
        &stack,
        &globex,
        "generate_image",
        json!({"prompt": "x", "model": "gpt-image-2"}),
    )
    .await;
    let message = tool_error(&refused);
    assert!(
        message.contains("not available to your organisation") && message.contains("gpt-image-1-mini"),
        "{message}"
    );
    assert_eq!(models_asked(&stack).len(), 1, "a refused choice calls no provider");
    let audit = stack.audit_events();
    let last = audit.last().unwrap();
    assert_eq!(last["fields"]["error_class"], "model_not_allowed");
}

#[tokio::test]
async fn a_chosen_model_falls_back_and_the_result_says_so() {
    let stack = stack_with(
        json!({"selectable": {"default": ["gpt-image-2", "gpt-image-1-mini"]}}),
        &["gpt-image-2"],
        vec![],
    )
    .await;
    let token = stack.token("alice", "acme");
    let reply = call(
        &stack,
        &token,
        "generate_image",
        json!({"prompt": "x", "model": "gpt-image-2"}),
    )
    .await;
    assert_eq!(structured(&reply)["model"], "gpt-image-1-mini");
    let text = reply["result"]["content"][0]["text"].as_str().unwrap();
    assert!(text.contains("requested model gpt-image-2 could not serve"), "{text}");
    assert_eq!(models_asked(&stack), ["gpt-image-2", "gpt-image-1-mini"]);
    let event = stack.audit_events().pop().unwrap();
    assert_eq!(event["fields"]["requested_model"], "gpt-image-2");
    assert_eq!(event["fields"]["fallbacks"], 1);
}

#[tokio::test]
async fn content_rules_and_the_cheapest_strategy() {
    let routes = json!({
        "rules": [{"prompt_keywords": ["logo"], "prompt_patterns": ["\\bsays?\\b"], "route": ["gpt-image-2"]}],
        "default": {"models": ["gpt-image-2", "gpt-image-1-mini"], "strategy": "cheapest"}
    });
    let stack = stack_with(routes.clone(), &[], vec![]).await;
    let token = stack.token("alice", "acme");
    for (prompt, model) in [
        ("a LOGO for a bakery", "gpt-image-2"),
        ("a sign that says hello", "gpt-image-2"),
        ("a quiet bay", "gpt-image-1-mini"),
    ] {
        let reply = call(&stack, &token, "generate_image", json!({"prompt": prompt})).await;
        assert_eq!(structured(&reply)["model"], model, "{prompt}");
    }
    assert_eq!(models_asked(&stack), ["gpt-image-2", "gpt-image-2", "gpt-image-1-mini"]);
    let listed = call(&stack, &token, "list_models", json!({})).await;
    let described: Vec<String> = structured(&listed)["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["when"].as_str().unwrap().to_string())
        .collect();
    assert!(described.iter().any(|w| w.contains("cheapest first")), "{described:?}");

    // The cheapest model failing: up the price list.
    let failing = stack_with(routes, &["gpt-image-1-mini"], vec![]).await;
    let token = failing.token("alice", "acme");
    let reply = call(&failing, &token, "generate_image", json!({"prompt": "a quiet bay"})).await;
    assert_eq!(structured(&reply)["model"], "gpt-image-2");
    assert_eq!(models_asked(&failing), ["gpt-image-1-mini", "gpt-image-2"]);
}

#[tokio::test]
async fn arms_are_stable_per_user_and_reported_everywhere() {
    let stack = stack_with(
        json!({"default": {"assign_by": "user", "arms": [
            {"name": "big", "weight": 50, "models": ["gpt-image-2"]},
            {"name": "mini", "weight": 50, "models": ["gpt-image-1-mini"]}]}}),
        &[],
        vec![],
    )
    .await;
    let mut arms = std::collections::BTreeMap::new();
    for user in 0..12 {
        let token = stack.token(&format!("user{user}"), "acme");
        let first = call(&stack, &token, "generate_image", json!({"prompt": "x"})).await;
        let second = call(&stack, &token, "generate_image", json!({"prompt": "y"})).await;
        let (a, b) = (structured(&first)["arm"].clone(), structured(&second)["arm"].clone());
        assert_eq!(a, b, "user{user} stays on one arm");
        let model = structured(&first)["model"].as_str().unwrap().to_string();
        assert_eq!(model, if a == "big" { "gpt-image-2" } else { "gpt-image-1-mini" });
        *arms.entry(a.as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(arms.len(), 2, "both arms serve some users: {arms:?}");
    let events = stack.audit_events();
    assert!(events.iter().all(|e| e["fields"]["arm"].is_string()), "{events:?}");
    let metrics = stack.upstream_metrics().await;
    for arm in ["big", "mini"] {
        let line = format!(r#"mcp_gateway_route_arm_calls_total{{arm="{arm}",outcome="success"}}"#);
        assert!(metrics.contains(&line), "{line}");
        let cost = format!(
            r#"model="{}",arm="{arm}"}}"#,
            if arm == "big" {
                "gpt-image-2"
            } else {
                "gpt-image-1-mini"
            }
        );
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("mcp_gateway_estimated_cost_usd_total") && l.contains(&cost)),
            "{cost}"
        );
    }
}

#[tokio::test]
async fn budgets_are_reserved_settled_released_and_shared_by_replicas() {
    let redis = gateway_tests::redis_server::Redis::start();
    // A gpt-image-2 call (1,056 output tokens) costs about $0.0423: two fit in $0.10, a third does not.
    let budgets = write_config("budgets.json", &json!({"orgs": {"acme": 0.10, "beta": 10.0}}));
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions::default(),
        },
        upstream_replicas: 2,
        upstream_env: vec![
            ("GATEWAY_BUDGETS_FILE".into(), budgets.display().to_string()),
            (
                "GATEWAY_BUDGET_REDIS_URL".into(),
                format!("redis://127.0.0.1:{}", redis.port),
            ),
            ("GATEWAY_MAX_ATTEMPTS".into(), "1".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let key = format!("mcp-budget:acme:{}", chrono::Utc::now().format("%Y-%m"));
    let first = call(&stack, &token, "generate_image", json!({"prompt": "one"})).await;
    structured(&first);
    let after_one = redis.get(&key);
    // Settled to the provider's usage: the audit event's cost, to the micro-dollar.
    let cost: f64 = stack.audit_events()[0]["fields"]["cost_usd"].as_f64().unwrap();
    assert_eq!(after_one, (cost * 1e6).round() as i64);
    // A refused prompt (the provider's moderation) releases its reservation.
    let blocked = call(
        &stack,
        &token,
        "generate_image",
        json!({"prompt": format!("two {BLOCKED_MARKER}")}),
    )
    .await;
    tool_error(&blocked);
    assert_eq!(redis.get(&key), after_one, "released");
    structured(&call(&stack, &token, "generate_image", json!({"prompt": "three"})).await);
    // Redis holds the month's spend of both calls, whichever replica made them.
    let spent: f64 = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["outcome"] == "Success")
        .map(|e| e["fields"]["cost_usd"].as_f64().unwrap())
        .sum();
    assert!((redis.get(&key) - (spent * 1e6).round() as i64).abs() <= 2, "{spent}");
    // The third call would pass $0.10, whichever replica takes it.
    for _ in 0..2 {
        let refused = call(&stack, &token, "generate_image", json!({"prompt": "four"})).await;
        let message = tool_error(&refused);
        assert!(
            message.contains("monthly image budget of $0.10") && message.contains("resets at"),
            "{message}"
        );
    }
    let generated = stack.fake.as_ref().unwrap().requests().len();
    assert_eq!(generated, 3, "refused calls reach no provider");
    // Months are separate: a spent previous month does not count, a spent
    // current month does (the instant of the turn is unit-tested with an
    // injected clock).
    let beta = stack.token("bea", "beta");
    let now = chrono::Utc::now();
    let last_month = (now.date_naive().with_day(1).unwrap() - chrono::Duration::days(1)).format("%Y-%m");
    redis.set(&format!("mcp-budget:beta:{last_month}"), 10_000_000);
    structured(&call(&stack, &beta, "generate_image", json!({"prompt": "fresh month"})).await);
    redis.set(&format!("mcp-budget:beta:{}", now.format("%Y-%m")), 10_000_000);
    tool_error(&call(&stack, &beta, "generate_image", json!({"prompt": "spent month"})).await);
    // Other organisations have no budget here.
    structured(
        &call(
            &stack,
            &stack.token("gus", "globex"),
            "generate_image",
            json!({"prompt": "x"}),
        )
        .await,
    );
    let listed = call(&stack, &token, "list_models", json!({})).await;
    let budget = &structured(&listed)["budget"];
    assert_eq!(budget["limit_usd"], 0.1);
    assert!(budget["spent_usd"].as_f64().unwrap() > 0.08, "{budget}");
    let mut refusals = 0;
    for url in &stack.metrics_urls {
        let text = http_client().get(url).send().await.unwrap().text().await.unwrap();
        refusals += text
            .lines()
            .find_map(|l| l.strip_prefix(r#"mcp_gateway_budget_refusals_total{org="acme"} "#))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    assert_eq!(refusals, 2, "the replicas refused from the shared total");
}

/// A provider bills an attempt whose answer is lost after its 200 (the
/// connection drops half-way through the body) as it bills the retry that
/// delivered: the organisation's spend counts both.
#[tokio::test]
async fn an_answer_lost_after_its_200_is_spent_beside_the_retry() {
    let budgets = write_config("budgets.json", &json!({"orgs": {"acme": 10.0}}));
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                cut_off_answers: 1,
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![
            ("GATEWAY_BUDGETS_FILE".into(), budgets.display().to_string()),
            ("GATEWAY_MAX_ATTEMPTS".into(), "2".into()),
            ("GATEWAY_RETRY_MAX_DELAY_SECS".into(), "1".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    // 40 characters: the gateway's estimate of the lost attempt counts the
    // prompt's tokens as the fake does (a quarter of its length).
    let prompt = "a lighthouse on a cliff at dawn, in fog.";
    assert_eq!(prompt.len(), 40);
    structured(&call(&stack, &token, "generate_image", json!({"prompt": prompt})).await);
    let fake = stack.fake.as_ref().unwrap();
    assert_eq!(fake.requests().len(), 2, "the lost answer was retried");
    let billed = fake.billed();
    assert_eq!(billed.len(), 2, "{billed:?}");
    // gpt-image-2's prices: $5 per million input tokens, $40 per million output tokens.
    let billed_usd: f64 = billed
        .iter()
        .map(|(input, output)| (*input as f64 * 5.0 + *output as f64 * 40.0) / 1e6)
        .sum();
    let listed = call(&stack, &token, "list_models", json!({})).await;
    let spent = structured(&listed)["budget"]["spent_usd"].as_f64().unwrap();
    assert!(
        (spent - billed_usd).abs() < 1e-6,
        "spent ${spent}, billed ${billed_usd} for two attempts"
    );
}

#[test]
fn the_example_configuration_meets_the_cost_kpi_in_simulation() {
    let dir = workspace_root().join("deploy/examples/cost");
    let out = Command::new(upstream_binary().unwrap())
        .arg("cost-sim")
        .arg("--mix")
        .arg(dir.join("mix.json"))
        .arg("--models")
        .arg(dir.join("models.json"))
        .arg("--default-chain")
        .arg("openai:gpt-image-1-mini")
        .arg("--routes")
        .arg(format!("hosted only={}", dir.join("routes-hosted.json").display()))
        .arg("--routes")
        .arg(format!("on-prem first={}", dir.join("routes.json").display()))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{table}{}", String::from_utf8_lossy(&out.stderr));
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("{name} in\n{table}"))
            .to_string()
    };
    assert!(row("on-prem first").contains("| yes |"), "{table}");
    assert!(row("hosted only").contains("| no |"), "{table}");
}
