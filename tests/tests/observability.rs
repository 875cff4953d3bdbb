//! The monitoring wiring, proven against a real Prometheus: the scrape config
//! and rules pass promtool (rule unit tests included), and after some
//! traffic every expression of the Grafana dashboard returns data.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gateway_tests::stack::{free_port, http_client, workspace_root};
use gateway_tests::{Stack, StackOptions};
use mcp_image_gateway::cli::devkit;
use serde_json::{json, Value};

fn promtool(args: &[&str]) {
    let output = Command::new("promtool")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .expect("promtool");
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn dashboard_exprs() -> Vec<(String, String)> {
    let path = workspace_root().join("envoy/observability/grafana/gateway.json");
    let dashboard: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(dashboard["uid"], "mcp-image-gateway");
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    // Grafana opens an exemplar's trace by its `trace_id` label.
    let sources =
        std::fs::read_to_string(workspace_root().join("envoy/observability/grafana/datasources.yaml")).unwrap();
    assert!(
        sources.contains("exemplarTraceIdDestinations:\n        - name: trace_id"),
        "{sources}"
    );
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables
            .iter()
            .any(|v| v["name"] == "traces" && v["type"] == "datasource"),
        "a traces datasource variable"
    );
    let mut exprs = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "panel ids are unique");
        let grid = &panel["gridPos"];
        assert!(grid["w"].as_u64().unwrap() <= 24 && grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        assert!(
            ["timeseries", "stat"].contains(&panel["type"].as_str().unwrap()),
            "{panel}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}");
        let latency = panel["targets"].as_array().unwrap().iter().any(|t| {
            t["expr"].as_str().unwrap().contains("duration_seconds")
                || t["expr"].as_str().unwrap().contains("rq_time_bucket")
        });
        if latency {
            let link = panel["links"][0]["url"].as_str().unwrap_or_default();
            assert!(
                link.contains("%24%7Btraces%7D"),
                "{}: links to the traces datasource",
                panel["title"]
            );
            assert!(
                panel["targets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["exemplar"] == true),
                "{}: shows exemplars",
                panel["title"]
            );
        }
        for target in panel["targets"].as_array().unwrap() {
            exprs.push((
                panel["title"].as_str().unwrap().to_string(),
                target["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    exprs
}

fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus HTTP API answer, checked to be a success.
async fn prometheus_api(url: String) -> Value {
    let response: Value = http_client().get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(response["status"], "success", "{url}: {response}");
    response
}

async fn query(prometheus: &str, expr: &str) -> Vec<Value> {
    let response = prometheus_api(format!("{prometheus}/api/v1/query?query={}", percent_encode(expr))).await;
    response["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The `trace_id`s of the exemplars Prometheus stored for `series` (last minute).
async fn exemplar_trace_ids(prometheus: &str, series: &str) -> Vec<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let response = prometheus_api(format!(
        "{prometheus}/api/v1/query_exemplars?query={}&start={}&end={}",
        percent_encode(series),
        now - 60,
        now + 1
    ))
    .await;
    response["data"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|series| series["exemplars"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["labels"]["trace_id"].as_str().map(str::to_string))
        .collect()
}

async fn post(stack: &Stack, token: &str, body: Value) -> u16 {
    http_client()
        .post(&stack.mcp_url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn prometheus_rules_and_every_dashboard_query_work() {
    promtool(&["check", "rules", "envoy/observability/rules.yml"]);
    promtool(&["test", "rules", "envoy/observability/rules_test.yml"]);
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 12);

    let patch =
        json!({"rate_limits": {"per_caller": {"requests_per_second": 0.01, "burst": 3}, "daily_images_per_org": 1000}});
    // Budgets and a route with arms, so the cost and budget panels have data.
    let config_dir = std::env::temp_dir().join(format!("obs-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("budgets.json"), r#"{"default_usd": 100}"#).unwrap();
    std::fs::write(
        config_dir.join("routes.json"),
        json!({"default": {"arms": [
            {"name": "a", "weight": 50, "models": ["offline-preview:offline-preview"]},
            {"name": "b", "weight": 50, "models": ["offline-preview:offline-preview"]}]}})
        .to_string(),
    )
    .unwrap();
    // Traced, so latency buckets carry exemplars that lead to the traces.
    let receiver = OtlpReceiver::start().await.unwrap();
    let stack = Stack::start_with(StackOptions {
        filter_patch: patch,
        otlp_endpoint: Some(receiver.endpoint.clone()),
        upstream_env: vec![
            (
                "GATEWAY_BUDGETS_FILE".into(),
                config_dir.join("budgets.json").display().to_string(),
            ),
            (
                "GATEWAY_ROUTES_FILE".into(),
                config_dir.join("routes.json").display().to_string(),
            ),
        ],
        // Sign-ins for the sign-in panel.
        authorize: Some(vec![("GATEWAY_AUTHZ_DEV_SIGN_IN".into(), "true".into())]),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let admin_port = stack.admin_url.rsplit(':').next().unwrap().to_string();
    let authorize_port = stack.authorize_url.rsplit(':').next().unwrap().to_string();
    let metrics_port = stack
        .metrics_url
        .trim_end_matches("/metrics")
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let template = std::fs::read_to_string(workspace_root().join("envoy/observability/prometheus.yml.tmpl")).unwrap();
    let config = devkit::render(
        &template,
        &BTreeMap::from([
            ("SCRAPE_INTERVAL".to_string(), "1s".to_string()),
            (
                "RULES_FILE".to_string(),
                workspace_root()
                    .join("envoy/observability/rules.yml")
                    .display()
                    .to_string(),
            ),
            ("ADMIN_PORT".to_string(), admin_port),
            ("METRICS_PORT".to_string(), metrics_port),
            ("AUTHORIZE_PORT".to_string(), authorize_port),
        ]),
    )
    .unwrap();
    let config_path = stack.state_dir.join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    promtool(&["check", "config", config_path.to_str().unwrap()]);

    let port = free_port();
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            stack.state_dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--enable-feature=exemplar-storage")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let url = format!("http://127.0.0.1:{port}");

    // Traffic of every kind the dashboard shows, over several scrapes.
    let client: Value = http_client()
        .post(format!("{}/oauth/register", stack.base_url))
        .json(&json!({"redirect_uris": [oauth_browser::REDIRECT]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = client["client_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(7);
    let mut round = 0;
    while Instant::now() < deadline {
        round += 1;
        let token = stack.token(&format!("user{round}"), if round % 2 == 0 { "acme" } else { "globex" });
        let call = |args: Value| json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "generate_image", "arguments": args}});
        assert_eq!(post(&stack, &token, call(json!({"prompt": "a kite"}))).await, 200);
        post(&stack, &token, call(json!({"prompt": "a kite", "size": "640 by 480"}))).await;
        post(
            &stack,
            "not-a-token",
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )
        .await;
        // A sign-in, its code redeemed, and a forged code refused.
        let code = oauth_browser::dev_code(&stack, &client_id).await["code"].clone();
        for code in [code.as_str(), "forged"] {
            http_client()
                .post(format!("{}/oauth/token", stack.base_url))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(oauth_browser::form(&[
                    ("grant_type", "authorization_code"),
                    ("code", code),
                    ("client_id", &client_id),
                    ("redirect_uri", oauth_browser::REDIRECT),
                    ("code_verifier", oauth_browser::VERIFIER),
                ]))
                .send()
                .await
                .unwrap();
        }
        let burst = stack.token("burst", "acme");
        for _ in 0..4 {
            post(
                &stack,
                &burst,
                json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut empty = Vec::new();
    for (title, expr) in &exprs {
        if query(&url, expr).await.is_empty() {
            empty.push(format!("{title}: {expr}"));
        }
    }
    assert!(
        query(&url, "mcp:tool_calls:rate5m").await.len() == 1,
        "recording rules evaluate"
    );
    let exemplars = exemplar_trace_ids(&url, "mcp_gateway_tool_call_duration_seconds_bucket").await;
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = std::fs::remove_dir_all(&config_dir);
    // Each exemplar Prometheus kept names a trace the collector holds, whose
    // server span is a tool call.
    assert!(!exemplars.is_empty(), "the tool call histogram carries exemplars");
    let calls: std::collections::HashSet<String> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.name == "tools/call generate_image")
        .map(|s| s.trace_id)
        .collect();
    for trace_id in &exemplars {
        assert!(
            calls.contains(trace_id),
            "exemplar {trace_id} leads to a traced tool call"
        );
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without data:\n{}",
        empty.join("\n")
    );
}

// ---- Traces: Envoy's span for every request, with the edge's decision ----

use gateway_tests::oauth_browser;
use gateway_tests::otlp_receiver::{OtlpReceiver, Span};
use gateway_tests::stack::Edge;

#[tokio::test]
async fn envoy_spans_carry_the_edge_decision_wasm() {
    envoy_spans_carry_the_edge_decision(Edge::Wasm).await;
}

#[tokio::test]
async fn envoy_spans_carry_the_edge_decision_native() {
    envoy_spans_carry_the_edge_decision(Edge::DynamicModule).await;
}

/// One JSON-RPC POST with `auth` (a header name and value); returns the status.
async fn traced_post(stack: &Stack, auth: (&str, &str), body: Value) -> u16 {
    http_client()
        .post(&stack.mcp_url)
        .header(auth.0, auth.1)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn envoy_spans_carry_the_edge_decision(edge: Edge) {
    let receiver = OtlpReceiver::start().await.unwrap();
    let stack = Stack::start_with(StackOptions {
        edge,
        otlp_endpoint: Some(receiver.endpoint.clone()),
        // A small caller bucket, so the third quick call is over the limit.
        filter_patch: json!({"rate_limits": {"per_caller": {"requests_per_second": 0.1, "burst": 2}}}),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let bearer = format!("Bearer {token}");
    let prompt = "a secret lighthouse prompt";
    let call = |id: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "generate_image", "arguments": {"prompt": prompt}}})
    };
    assert_eq!(
        traced_post(&stack, ("authorization", &bearer), call("call-1")).await,
        200
    );
    let api_key = stack.api_key();
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    assert_eq!(traced_post(&stack, ("x-api-key", &api_key), list).await, 200);
    let forged = format!("Bearer {token}x");
    assert_eq!(
        traced_post(&stack, ("authorization", &forged), call("call-2")).await,
        401
    );
    assert_eq!(
        traced_post(&stack, ("authorization", &bearer), call("call-3")).await,
        200
    );
    assert_eq!(
        traced_post(&stack, ("authorization", &bearer), call("call-4")).await,
        429
    );

    let within = Duration::from_secs(15);
    // Envoy's spans (the upstream's carry the same ids).
    let by_id =
        |id: &'static str| move |s: &Span| s.service == "mcp-gateway-edge" && s.attr("jsonrpc.request.id") == id;
    let admitted = receiver
        .wait_for(within, by_id("call-1"))
        .await
        .expect("a span for the admitted call");
    assert_eq!(admitted.service, "mcp-gateway-edge");
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "generate_image"),
        ("mcp_gateway.org", "acme"),
        ("mcp_gateway.credential", "jwt"),
        ("mcp_gateway.edge.decision", "forward"),
        ("mcp_gateway.user", ""),
    ] {
        assert_eq!(admitted.attr(key), value, "{key} on {admitted:?}");
    }
    let by_key = receiver
        .wait_for(within, |s| {
            s.service == "mcp-gateway-edge" && s.attr("mcp.method.name") == "tools/list"
        })
        .await
        .expect("a span for the API-key call");
    assert_eq!(by_key.attr("mcp_gateway.credential"), "api_key");

    let forged_span = receiver.wait_for(within, by_id("call-2")).await;
    // A 401 is answered before the body is read: found by its decision instead.
    let unauthorized = match forged_span {
        Some(span) => span,
        None => receiver
            .wait_for(within, |s| {
                s.service == "mcp-gateway-edge" && s.attr("rpc.response.status_code") == "-32001"
            })
            .await
            .expect("a span for the refused token"),
    };
    assert_eq!(unauthorized.attr("mcp_gateway.edge.decision"), "reject");
    assert!(
        !unauthorized.attr("mcp_gateway.edge.reason").is_empty(),
        "{unauthorized:?}"
    );
    let limited = receiver
        .wait_for(within, by_id("call-4"))
        .await
        .expect("a span for the limited call");
    assert_eq!(limited.attr("mcp_gateway.edge.decision"), "reject");
    assert_eq!(limited.attr("rpc.response.status_code"), "-32029");
    assert_eq!(limited.attr("mcp_gateway.edge.reason"), "rate_limited_caller");

    // The upstream continues Envoy's trace: its SERVER span for the call is
    // a child of Envoy's span, named and tagged as the MCP conventions say,
    // and the call's audit event names that trace and span.
    let server = receiver
        .wait_for(within, |s| {
            s.service == "mcp-image-gateway" && s.attr("jsonrpc.request.id") == "call-1"
        })
        .await
        .expect("the upstream's span for the admitted call");
    assert_eq!(server.name, "tools/call generate_image");
    assert_eq!(server.kind, 2, "SERVER");
    assert_eq!(
        (server.trace_id.as_str(), server.parent_span_id.as_str()),
        (admitted.trace_id.as_str(), admitted.span_id.as_str())
    );
    for (key, value) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "generate_image"),
        ("gen_ai.operation.name", "execute_tool"),
        ("mcp.protocol.version", "2025-06-18"),
    ] {
        assert_eq!(server.attr(key), value, "{key} on {server:?}");
    }
    let audited = stack
        .audit_events()
        .into_iter()
        .find(|e| e["fields"]["event"] == "tool_call")
        .expect("an audit event");
    assert_eq!(audited["fields"]["trace_id"], json!(server.trace_id));
    assert_eq!(audited["fields"]["span_id"], json!(server.span_id));

    // A client's own trace context in `params._meta` is the parent.
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let mut with_meta = call("call-5");
    with_meta["params"]["_meta"] = json!({"traceparent": format!("00-{client_trace}-{client_span}-01")});
    tokio::time::sleep(Duration::from_secs(11)).await; // the bucket refills a token
    assert_eq!(traced_post(&stack, ("authorization", &bearer), with_meta).await, 200);
    let continued = receiver
        .wait_for(within, |s| {
            s.service == "mcp-image-gateway" && s.attr("jsonrpc.request.id") == "call-5"
        })
        .await
        .expect("the upstream's span for the call with _meta");
    assert_eq!(
        (continued.trace_id.as_str(), continued.parent_span_id.as_str()),
        (client_trace, client_span)
    );

    // No secret in any span: bearer tokens, the API key, the prompt.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for span in receiver.spans() {
        let text = format!("{span:?}");
        for secret in [token.as_str(), api_key.as_str(), prompt] {
            assert!(!text.contains(secret), "a secret in {text}");
        }
    }
}

/// Each provider attempt is a GenAI CLIENT span under the message's SERVER
/// span (a retry and a fallback show as three attempts), and each provider
/// request carries that attempt's `traceparent`.
#[tokio::test]
async fn provider_attempts_are_client_spans_and_carry_traceparent() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let fake = gateway_tests::fake_openai::FakeOptions {
        failing_models: vec!["gpt-image-2".into()],
        ..Default::default()
    };
    let stack = Stack::start_with(StackOptions {
        backend: gateway_tests::Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: fake,
        },
        upstream_env: vec![
            ("GATEWAY_FALLBACK_MODELS".into(), "gpt-image-1.5".into()),
            ("GATEWAY_MAX_ATTEMPTS".into(), "2".into()),
            ("GATEWAY_RETRY_MAX_DELAY_SECS".into(), "1".into()),
        ],
        otlp_endpoint: Some(receiver.endpoint.clone()),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let bearer = format!("Bearer {}", stack.token("alice", "acme"));
    let call = json!({"jsonrpc": "2.0", "id": "fb-1", "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a lighthouse"}}});
    assert_eq!(traced_post(&stack, ("authorization", &bearer), call).await, 200);

    let within = Duration::from_secs(15);
    let server = receiver
        .wait_for(within, |s| {
            s.service == "mcp-image-gateway" && s.attr("jsonrpc.request.id") == "fb-1"
        })
        .await
        .expect("the server span");
    let deadline = Instant::now() + within;
    let attempts = loop {
        let mut attempts: Vec<Span> = receiver
            .spans()
            .into_iter()
            .filter(|s| s.kind == 3 && s.trace_id == server.trace_id)
            .collect();
        if attempts.len() >= 3 || Instant::now() > deadline {
            attempts.sort_by_key(|s| {
                (
                    s.attr("gen_ai.request.model") != "gpt-image-2",
                    s.attr("mcp_gateway.attempt"),
                )
            });
            break attempts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let summary: Vec<(String, String, String, String)> = attempts
        .iter()
        .map(|s| {
            (
                s.attr("gen_ai.request.model"),
                s.attr("mcp_gateway.attempt"),
                s.attr("error.type"),
                s.attr("gen_ai.response.model"),
            )
        })
        .collect();
    let row = |m: &str, a: &str, e: &str, r: &str| (m.to_string(), a.to_string(), e.to_string(), r.to_string());
    assert_eq!(
        summary,
        vec![
            row("gpt-image-2", "1", "provider_error", ""),
            row("gpt-image-2", "2", "provider_error", ""),
            row("gpt-image-1.5", "1", "", "gpt-image-1.5"),
        ],
        "{attempts:?}"
    );
    for attempt in &attempts {
        assert_eq!(attempt.parent_span_id, server.span_id, "a child of the server span");
        assert_eq!(
            attempt.name,
            format!("generate_content {}", attempt.attr("gen_ai.request.model"))
        );
        assert_eq!(attempt.attr("gen_ai.provider.name"), "openai");
        assert_eq!(attempt.attr("gen_ai.output.type"), "image");
    }
    // The pipeline's stages are spans of the same call.
    for (stage, key, value) in [
        ("mcp_gateway.route", "mcp_gateway.route.rule", "default"),
        ("mcp_gateway.store", "images", "1"),
        ("mcp_gateway.sign_link", "", ""),
    ] {
        let span = receiver
            .wait_for(within, |s| s.name == stage && s.trace_id == server.trace_id)
            .await
            .unwrap_or_else(|| panic!("a {stage} span"));
        assert_eq!(span.parent_span_id, server.span_id, "{stage}");
        if !key.is_empty() {
            assert_eq!(span.attr(key), value, "{stage}: {span:?}");
        }
    }
    let sent = stack.fake.as_ref().unwrap().traceparents();
    let expected: Vec<Option<String>> = attempts
        .iter()
        .map(|a| Some(format!("00-{}-{}-01", a.trace_id, a.span_id)))
        .collect();
    assert_eq!(sent, expected, "each provider request continues its attempt's span");
}

/// With the collector down, calls are served as usual (export runs off the
/// request path from a bounded queue) and the undelivered spans are counted.
#[tokio::test]
async fn a_collector_down_drops_spans_never_a_call() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let stack = Stack::start_with(StackOptions {
        otlp_endpoint: Some(closed),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let bearer = format!("Bearer {}", stack.token("alice", "acme"));
    for id in ["down-1", "down-2", "down-3"] {
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": "generate_image", "arguments": {"prompt": "a lighthouse"}}});
        let started = Instant::now();
        assert_eq!(traced_post(&stack, ("authorization", &bearer), call).await, 200);
        assert!(started.elapsed() < Duration::from_secs(5), "export never holds a call");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let dropped = loop {
        let metrics = stack.upstream_metrics().await;
        let dropped: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("mcp_gateway_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if dropped > 0 || Instant::now() > deadline {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dropped >= 1, "undelivered spans are counted");
}

/// A task's generation runs in its own span under the `tools/call` that
/// started it, and each later `tasks/get` (its own trace) links to that span.
#[tokio::test]
async fn task_polls_link_to_the_generation_span() {
    use rmcp::model::{CallToolRequestParams, CallToolResponse, GetTaskParams};
    let receiver = OtlpReceiver::start().await.unwrap();
    let stack = Stack::start_with(StackOptions {
        backend: gateway_tests::Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: gateway_tests::fake_openai::FakeOptions {
                latency: Duration::from_millis(1500),
                ..Default::default()
            },
        },
        otlp_endpoint: Some(receiver.endpoint.clone()),
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = gateway_tests::mcp_client::connect_with_tasks(&stack.mcp_url, &stack.token("alice", "acme"))
        .await
        .unwrap();
    let arguments = json!({"prompt": "a lighthouse"}).as_object().cloned().unwrap();
    let created = client
        .call_tool_once(CallToolRequestParams::new("generate_image").with_arguments(arguments))
        .await
        .unwrap();
    let CallToolResponse::Task(created) = created else {
        panic!("expected a task, got {created:?}")
    };
    let task_id = created.task.task_id;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut polls = 0;
    loop {
        let task = client.get_task(GetTaskParams::new(&task_id)).await.unwrap().task;
        polls += 1;
        if task.status().is_terminal() {
            break;
        }
        assert!(Instant::now() < deadline, "the task did not finish: {task:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(polls >= 2, "polled while working and once finished");

    let within = Duration::from_secs(15);
    let generation = receiver
        .wait_for(within, |s| {
            s.name == "task generate_image" && s.attr("mcp_gateway.task.id") == task_id
        })
        .await
        .expect("the generation's span");
    let call = receiver
        .wait_for(within, |s| s.span_id == generation.parent_span_id)
        .await
        .expect("the generation's parent");
    assert_eq!(
        (call.name.as_str(), call.trace_id.as_str()),
        ("tools/call generate_image", generation.trace_id.as_str()),
        "the task span is a child of the call that started it"
    );
    let attempt = receiver
        .wait_for(within, |s| s.kind == 3 && s.trace_id == generation.trace_id)
        .await
        .expect("the provider attempt");
    assert_eq!(
        attempt.parent_span_id, generation.span_id,
        "the attempt runs in the task span"
    );
    let deadline = Instant::now() + within;
    let gets = loop {
        let gets: Vec<Span> = receiver.spans().into_iter().filter(|s| s.name == "tasks/get").collect();
        if gets.len() >= polls || Instant::now() > deadline {
            break gets;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(gets.len(), polls, "one server span per poll");
    for get in &gets {
        assert_ne!(get.trace_id, generation.trace_id, "each poll is its own trace");
        assert_eq!(
            get.links,
            vec![(generation.trace_id.clone(), generation.span_id.clone())],
            "{get:?}"
        );
    }
    client.cancel().await.unwrap();
}

// ---- The tamper-evident audit ----

/// `mcp-image-gateway audit verify` over the stack's store: its JSON report
/// and whether it passed.
fn verify_audit(stack: &Stack) -> (Value, bool) {
    stack.gateway_command(&["audit", "verify"])
}

/// Calls through Envoy leave a hash chain of audit and billing events in
/// the store that verifies; editing, removing or reordering one event in a
/// stored segment is named; a replica killed mid-segment leaves a chain that
/// verifies up to its last written event, its open segment reported.
#[tokio::test]
async fn calls_leave_an_audit_chain_that_verifies_and_tampering_is_named() {
    let stack = Stack::start_with(StackOptions {
        upstream_env: vec![("GATEWAY_AUDIT_SEGMENT_EVENTS".into(), "4".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a kite"}}});
    for _ in 0..3 {
        assert_eq!(post(&stack, &token, call.clone()).await, 200);
    }
    let dir = stack.state_dir.join("images/audit");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (report, ok) = loop {
        let (report, ok) = verify_audit(&stack);
        if report["events"].as_u64().unwrap_or(0) >= 6 || Instant::now() > deadline {
            break (report, ok);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(ok, "{report}");
    assert_eq!(report["broken"], Value::Null);
    assert!(
        report["events"].as_u64().unwrap() >= 6,
        "an audit and a billing event per call: {report}"
    );
    assert!(
        report["segments"].as_u64().unwrap() >= 2,
        "segments of 4 events: {report}"
    );
    // Each audit event of a call is in the chain, with its trace-free fields intact.
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|replica| std::fs::read_dir(replica.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    let first = files[0].clone();
    let original = std::fs::read_to_string(&first).unwrap();
    assert!(original.contains("\"target\":\"audit\"") && original.contains("\"target\":\"billing\""));
    assert!(
        original.lines().last().unwrap().starts_with("{\"close\":"),
        "closed and signed"
    );

    let lines: Vec<&str> = original.lines().collect();
    let tamper = |changed: Vec<String>| std::fs::write(&first, changed.join("\n") + "\n").unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "edited",
            lines
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    if i == 0 {
                        l.replacen("\"event\":{", "\"event\":{\"x\":1,", 1)
                    } else {
                        l.to_string()
                    }
                })
                .collect(),
            "event 1 does not follow event 0",
        ),
        (
            "removed",
            lines
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != 1)
                .map(|(_, l)| l.to_string())
                .collect(),
            "event 1 is missing",
        ),
        (
            "reordered",
            [lines[1], lines[0]]
                .iter()
                .chain(&lines[2..])
                .map(|l| l.to_string())
                .collect(),
            "out of order: event 0 comes after event 1",
        ),
    ];
    for (name, changed, expected) in cases {
        tamper(changed);
        let (report, ok) = verify_audit(&stack);
        assert!(!ok, "{name}: {report}");
        let broken = report["broken"].as_str().unwrap_or_default();
        assert!(
            broken.contains(expected) && broken.contains("0000000000.jsonl"),
            "{name}: {broken}"
        );
    }
    std::fs::write(&first, &original).unwrap();

    // Two more calls (the second opens a new segment), then the replica dies
    // before closing it.
    for _ in 0..2 {
        assert_eq!(post(&stack, &token, call.clone()).await, 200);
    }
    // Killed once the open segment has been written (about once a second).
    let deadline = Instant::now() + Duration::from_secs(10);
    while verify_audit(&stack).0["events"].as_u64().unwrap_or(0) < 10 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack.signal("upstream", "KILL");
    let (report, ok) = verify_audit(&stack);
    assert!(ok, "{report}");
    assert_eq!(report["open_segments"].as_array().unwrap().len(), 1, "{report}");
    assert!(report["events"].as_u64().unwrap() >= 10, "{report}");
}

/// An idle replica closes its open segment by age: with segments of at most
/// 1 s, three calls and then 3 s without any leave every stored segment
/// closed with its signed record (nothing unsigned to rewrite). A replica
/// that stops anchors its end, so `audit verify` reports its run ended, and
/// a tail segment removed afterwards is named.
#[tokio::test]
async fn an_idle_replica_closes_its_audit_segment_by_age() {
    let mut stack = Stack::start_with(StackOptions {
        upstream_env: vec![("GATEWAY_AUDIT_SEGMENT_SECS".into(), "1".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": "a kite"}}});
    for _ in 0..3 {
        assert_eq!(post(&stack, &token, call.clone()).await, 200);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let dir = stack.state_dir.join("images/audit");
    let segments: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|replica| std::fs::read_dir(replica.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .map(|path| (path.display().to_string(), std::fs::read_to_string(&path).unwrap()))
        .collect();
    let events: usize = segments
        .iter()
        .map(|(_, text)| text.lines().filter(|l| l.starts_with("{\"seq\":")).count())
        .sum();
    assert!(events >= 6, "an audit and a billing event per call: {segments:?}");
    for (path, text) in &segments {
        assert!(
            text.lines().last().is_some_and(|l| l.starts_with("{\"close\":")),
            "{path} is still open after 3 s idle:\n{text}"
        );
    }
    let (report, ok) = verify_audit(&stack);
    assert!(ok, "{report}");
    assert_eq!(report["live"].as_array().map(Vec::len), Some(1), "{report}");

    stack.signal("upstream", "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stack.exited("upstream") {
        assert!(Instant::now() < deadline, "the upstream did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (report, ok) = verify_audit(&stack);
    assert!(ok, "{report}");
    assert_eq!(report["ended"].as_array().map(Vec::len), Some(1), "{report}");
    assert_eq!(report["incomplete"], json!([]), "{report}");
    // The run's last segment removed: its signed end says what is missing.
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flat_map(|replica| std::fs::read_dir(replica.unwrap().path()).unwrap())
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    std::fs::remove_file(files.last().unwrap()).unwrap();
    let (report, ok) = verify_audit(&stack);
    assert!(!ok, "{report}");
    assert!(
        report["broken"].as_str().unwrap_or_default().contains("missing"),
        "{report}"
    );
}
