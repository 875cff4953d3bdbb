//! `generate_image` driven by the rmcp client through real Envoy and the
//! Wasm filter, with the offline backend and with the OpenAI backend
//! against the provider fake.

use gateway_tests::fake_openai::{FakeOptions, BLOCKED_MARKER, HUGE_ANSWER_BYTES, HUGE_ANSWER_MARKER};
use gateway_tests::mcp_client::{connect, generate, list_models, text_of};
use gateway_tests::png_info::dimensions;
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use rmcp::model::ContentBlock;
use serde_json::{json, Value};

fn openai(model: &str, options: FakeOptions) -> StackOptions {
    StackOptions {
        backend: Backend::FakeOpenAi {
            model: model.into(),
            options,
        },
        ..StackOptions::default()
    }
}

/// Fetches every link through Envoy and returns the PNG sizes.
async fn fetch_all(urls: &[Value]) -> Vec<(u32, u32)> {
    let mut sizes = Vec::new();
    for url in urls {
        let response = http_client().get(url.as_str().unwrap()).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(response.headers()["content-type"], "image/png");
        sizes.push(dimensions(&response.bytes().await.unwrap()).unwrap());
    }
    sizes
}

#[tokio::test]
async fn generate_image_end_to_end_offline() {
    let stack = Stack::start().await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let server = client.peer_info().expect("initialized");
    assert_eq!(
        server.server_info.as_ref().map(|i| i.name.as_str()),
        Some("mcp-image-gateway")
    );

    let tools = client.list_tools(Default::default()).await.unwrap().tools;
    let tool = tools
        .iter()
        .find(|t| t.name == "generate_image")
        .expect("generate_image listed");
    let input = serde_json::to_value(&*tool.input_schema).unwrap();
    assert_eq!(input["required"], json!(["prompt"]));
    assert_eq!(input["properties"]["n"]["maximum"], 4);
    assert_eq!(
        input["properties"]["size"]["examples"],
        json!(["1024x1024", "1536x1024", "1024x1536"])
    );
    let output = serde_json::to_value(tool.output_schema.as_deref().expect("outputSchema")).unwrap();
    assert!(output["properties"]["image_urls"].is_object(), "{output}");

    let models = list_models(&client).await.unwrap();
    assert!(models.is_object(), "list_models is structured: {models}");
    assert_eq!(models["models"][0]["model"], "offline-preview");
    assert_eq!(models["models"][0]["role"], "primary");
    assert_eq!(models["sizes"], json!(["1024x1024", "1536x1024", "1024x1536"]));
    assert_eq!(models["link_validity_secs"], 86_400);
    assert!(tools
        .iter()
        .any(|t| t.name == "list_models" && t.output_schema.is_some()));

    let before = chrono::Utc::now();
    let result = generate(
        &client,
        json!({"prompt": "a lighthouse in a storm", "size": "1536x1024", "n": 2}),
    )
    .await
    .unwrap();
    assert_eq!(result.is_error, Some(false));
    let structured = result.structured_content.clone().expect("structuredContent");
    assert_eq!(structured["model"], "offline-preview");
    assert_eq!(structured["size"], "1536x1024");
    assert_eq!(structured["style"], "default");
    let expires_at = chrono::DateTime::parse_from_rfc3339(structured["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires_at >= before + chrono::Duration::hours(24) - chrono::Duration::seconds(5));
    let urls = structured["image_urls"].as_array().unwrap().clone();
    assert_eq!(urls.len(), 2);
    for url in &urls {
        assert!(
            url.as_str()
                .unwrap()
                .starts_with(&format!("{}/images/acme/", stack.base_url)),
            "{url}"
        );
    }
    let links: Vec<_> = result
        .content
        .iter()
        .filter_map(|c| match c {
            ContentBlock::ResourceLink(link) => Some(link.uri.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        links,
        urls.iter().map(|u| u.as_str().unwrap().to_string()).collect::<Vec<_>>()
    );
    let text = result
        .content
        .iter()
        .find_map(|c| c.as_text())
        .expect("text")
        .text
        .clone();
    assert!(text.contains("offline-preview"), "{text}");

    assert_eq!(fetch_all(&urls).await, vec![(1536, 1024), (1536, 1024)]);

    let events = stack.audit_events();
    let calls: Vec<_> = events.iter().filter(|e| e["fields"]["event"] == "tool_call").collect();
    assert_eq!(calls.len(), 1, "{events:?}");
    let fields = &calls[0]["fields"];
    assert_eq!(
        (fields["user"].as_str(), fields["org"].as_str()),
        (Some("alice"), Some("acme"))
    );
    assert_eq!(fields["outcome"], "Success");
    assert_eq!(fields["images_stored"], 2);
    assert!(
        !fields["request_id"].as_str().unwrap().is_empty(),
        "Envoy's x-request-id reaches the audit log"
    );

    // The upstream's Prometheus metrics, on their own listener ...
    let metrics = stack.upstream_metrics().await;
    for line in [
        r#"mcp_gateway_tool_calls_total{tool="generate_image",outcome="success"} 1"#,
        r#"mcp_gateway_images_generated_total{org="acme",model="offline-preview",size="1536x1024",arm=""} 2"#,
        r#"mcp_gateway_tool_calls_in_flight 0"#,
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} missing in:\n{metrics}");
    }
    assert!(metrics
        .contains(r#"mcp_gateway_model_request_duration_seconds_count{model="offline-preview",outcome="success"} 1"#));
    for method in ["initialize", "tools/list", "tools/call"] {
        let line = format!(r#"mcp_gateway_mcp_request_duration_seconds_count{{method="{method}",status="200"}} "#);
        assert!(metrics.contains(&line), "{line} missing in:\n{metrics}");
    }
    // ... and not reachable through the public listener.
    let public = http_client()
        .get(format!("{}/metrics", stack.base_url))
        .bearer_auth(stack.token("alice", "acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
    client.cancel().await.unwrap();
}

/// rmcp negotiates 2025-11-25: bad argument values are tool errors the
/// model can read and correct (SEP-1303), from the edge (`n`) and from the
/// upstream (the rest); `trust.rs` covers -32602 for 2025-06-18 clients.
#[tokio::test]
async fn invalid_arguments_are_tool_errors_naming_the_field() {
    let stack = Stack::start().await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    assert_eq!(client.peer_info().unwrap().protocol_version.to_string(), "2025-11-25");
    let cases = [
        (json!({"prompt": "x", "n": 9}), "`n`"),
        (json!({"prompt": "x", "size": "640 by 480"}), "`size`"),
        (json!({"prompt": "x", "style": "cubism"}), "`style`"),
        (json!({"n": 1}), "`prompt`"),
    ];
    for (arguments, field) in cases {
        match generate(&client, arguments.clone()).await {
            Ok(result) => {
                assert_eq!(result.is_error, Some(true), "{arguments}: {result:?}");
                let text = text_of(&result);
                assert!(text.contains(field), "{arguments}: {text}");
            }
            other => panic!("{arguments}: expected a tool error, got {other:?}"),
        }
    }
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn openai_backend_through_the_provider_fake() {
    let stack = Stack::start_with(openai("gpt-image-2", FakeOptions::default()))
        .await
        .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(
        &client,
        json!({"prompt": "a red fox", "style": "photorealistic", "size": "1024x1536"}),
    )
    .await
    .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let structured = result.structured_content.unwrap();
    assert_eq!(structured["model"], "gpt-image-2");
    assert!(
        structured["estimated_cost_usd"].as_f64().unwrap() > 0.04,
        "{structured}"
    );
    assert_eq!(
        fetch_all(structured["image_urls"].as_array().unwrap()).await,
        vec![(1024, 1536)]
    );

    let requests = stack.fake.as_ref().unwrap().requests();
    assert_eq!(requests.len(), 1);
    let sent = &requests[0];
    assert_eq!(sent["model"], "gpt-image-2");
    assert_eq!(sent["size"], "1024x1536");
    assert_eq!(sent["n"], 1);
    assert_eq!(sent["output_format"], "png");
    let prompt = sent["prompt"].as_str().unwrap();
    assert!(
        prompt.starts_with("A photorealistic image") && prompt.ends_with(": a red fox"),
        "{prompt}"
    );
    let user = sent["user"].as_str().unwrap();
    assert!(
        user.len() == 32 && !user.contains("alice"),
        "user must be an opaque hash: {user}"
    );

    let call = stack
        .audit_events()
        .into_iter()
        .find(|e| e["fields"]["event"] == "tool_call")
        .unwrap();
    assert_eq!(call["fields"]["output_tokens"], 1056);
    assert_eq!(call["fields"]["prompt_sha256"].as_str().unwrap().len(), 64);
    assert!(
        call["fields"].get("prompt").is_none(),
        "prompts are not logged by default"
    );
    // Billing: provider-reported usage times the token prices (5 / 40 USD per million by default).
    let billing: Vec<_> = stack
        .log("upstream")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == "billing")
        .collect();
    assert_eq!(billing.len(), 1);
    assert_eq!(billing[0]["fields"]["priced_by"], "tokens");
    let cost = billing[0]["fields"]["cost_usd"].as_f64().unwrap();
    let expected = call["fields"]["input_tokens"].as_f64().unwrap() * 5e-6 + 1056.0 * 40e-6;
    assert!((cost - expected).abs() < 1e-9, "{cost} vs {expected}");
}

/// Provider failures are tool errors (`isError: true`) with actionable text,
/// and nothing is stored.
#[tokio::test]
async fn provider_failures_are_actionable_tool_errors() {
    let cases = [
        (
            "gpt-image-1",
            FakeOptions::default(),
            "a cat".to_string(),
            "OPENAI_IMAGE_MODEL",
            "model_not_found",
        ),
        (
            "gpt-image-2",
            FakeOptions::default(),
            format!("a cat {BLOCKED_MARKER}"),
            "content policy",
            "content_refused",
        ),
    ];
    for (model, options, prompt, expected_text, class) in cases {
        let stack = Stack::start_with(openai(model, options)).await.unwrap();
        let client = connect(&stack.mcp_url, &stack.token("bob", "acme")).await.unwrap();
        let result = generate(&client, json!({"prompt": prompt})).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{model}");
        let text = result.content.iter().find_map(|c| c.as_text()).unwrap().text.clone();
        assert!(text.contains(expected_text), "{model}: {text}");
        // A safety refusal names its stage and category, as the content policy's do.
        let details = (class == "content_refused")
            .then(|| json!({"error": "content_policy", "stage": "provider", "category": "provider"}));
        assert_eq!(result.structured_content, details);
        let call = stack
            .audit_events()
            .into_iter()
            .find(|e| e["fields"]["event"] == "tool_call")
            .unwrap();
        assert_eq!(call["fields"]["outcome"], "ToolError");
        assert_eq!(call["fields"]["error_class"], class);
        assert_eq!(call["fields"]["images_stored"], 0);
        assert!(
            !stack.state_dir.join("images/acme").exists(),
            "nothing stored for a failed call"
        );
        client.cancel().await.unwrap();
    }
}

#[tokio::test]
async fn provider_rate_limit_is_reported_with_retry_after() {
    let options = FakeOptions {
        images_per_minute: Some(1),
        ..FakeOptions::default()
    };
    let stack = Stack::start_with(openai("gpt-image-2", options)).await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("carol", "acme")).await.unwrap();
    let first = generate(&client, json!({"prompt": "one"})).await.unwrap();
    assert_eq!(first.is_error, Some(false));
    let second = generate(&client, json!({"prompt": "two"})).await.unwrap();
    assert_eq!(second.is_error, Some(true));
    let text = second.content.iter().find_map(|c| c.as_text()).unwrap().text.clone();
    assert!(text.contains("rate limiting") && text.contains("retry after"), "{text}");
    client.cancel().await.unwrap();
}

/// A provider outage on the primary model: retried, then served by the
/// fallback model; the result and the audit event say which model served.
#[tokio::test]
async fn primary_outage_falls_back_to_the_next_model() {
    let fake = FakeOptions {
        failing_models: vec!["gpt-image-2".into()],
        ..FakeOptions::default()
    };
    let mut options = openai("gpt-image-2", fake);
    options.upstream_env = vec![
        ("GATEWAY_FALLBACK_MODELS".into(), "gpt-image-1.5".into()),
        ("GATEWAY_MAX_ATTEMPTS".into(), "2".into()),
        ("GATEWAY_RETRY_MAX_DELAY_SECS".into(), "1".into()),
    ];
    let stack = Stack::start_with(options).await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(&client, json!({"prompt": "a lighthouse"})).await.unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(result.structured_content.unwrap()["model"], "gpt-image-1.5");
    let models: Vec<String> = stack
        .fake
        .as_ref()
        .unwrap()
        .requests()
        .iter()
        .map(|r| r["model"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(models, ["gpt-image-2", "gpt-image-2", "gpt-image-1.5"]);
    let call = stack
        .audit_events()
        .into_iter()
        .find(|e| e["fields"]["event"] == "tool_call")
        .unwrap();
    assert_eq!(
        (call["fields"]["model"].as_str(), call["fields"]["fallbacks"].as_u64()),
        (Some("gpt-image-1.5"), Some(1))
    );
    client.cancel().await.unwrap();
}

/// The output cap: an image over `GATEWAY_MAX_IMAGE_BYTES` (4 MiB by default,
/// lowered here) is a clear tool error and nothing is stored.
#[tokio::test]
async fn oversized_images_are_refused_and_not_stored() {
    let options = StackOptions {
        upstream_env: vec![("GATEWAY_MAX_IMAGE_BYTES".into(), "2000".into())],
        ..StackOptions::default()
    };
    let stack = Stack::start_with(options).await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(&client, json!({"prompt": "a detailed map", "size": "1536x1024"}))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    let text = result.content.iter().find_map(|c| c.as_text()).unwrap().text.clone();
    assert!(text.contains("over the gateway's output limit of 2000 bytes"), "{text}");
    assert!(!stack.state_dir.join("images/acme").exists());
    let call = stack
        .audit_events()
        .into_iter()
        .find(|e| e["fields"]["event"] == "tool_call")
        .unwrap();
    assert_eq!(call["fields"]["error_class"], "image_too_large");
    client.cancel().await.unwrap();
}

/// The most memory a process has held (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A provider that streams without end (200 MB here): the upstream reads at
/// most its limit (the images asked for, as base64, plus room for the JSON),
/// the call is a tool error naming the limit, and the process lives on with
/// its peak memory nowhere near the answer's size. Both ways of reading an
/// answer: streamed (the rmcp client asks for progress) and whole (a plain POST).
#[tokio::test]
async fn endless_provider_answers_are_cut_at_the_limit() {
    // One attempt per call: retries would read (at most) the limit again.
    let mut options = openai("gpt-image-2", FakeOptions::default());
    options.upstream_env = vec![("GATEWAY_MAX_ATTEMPTS".into(), "1".into())];
    let mut stack = Stack::start_with(options).await.unwrap();
    let token = stack.token("alice", "acme");
    let client = connect(&stack.mcp_url, &token).await.unwrap();
    let warm = generate(&client, json!({"prompt": "a lighthouse"})).await.unwrap();
    assert_eq!(warm.is_error, Some(false), "{warm:?}");
    let pid = stack.process_id("upstream").unwrap();
    let before = peak_rss_kib(pid);

    let prompt = format!("a flood {HUGE_ANSWER_MARKER}");
    let streamed = generate(&client, json!({"prompt": prompt})).await.unwrap();
    let whole = gateway_tests::mcp_client::call_http(
        &stack.mcp_url,
        &token,
        "2025-11-25",
        "generate_image",
        json!({"prompt": prompt}),
    )
    .await;
    let grown_kib = peak_rss_kib(pid).saturating_sub(before);
    eprintln!(
        "two {} MiB answers grew the upstream's peak RSS by {grown_kib} KiB",
        HUGE_ANSWER_BYTES >> 20
    );
    assert_eq!(streamed.is_error, Some(true), "{streamed:?}");
    for text in [text_of(&streamed), gateway_tests::mcp_client::tool_error(&whole)] {
        assert!(
            text.contains("limit of") && text.contains("GATEWAY_MAX_IMAGE_BYTES"),
            "{text}"
        );
    }
    assert!(grown_kib < 100 * 1024, "peak RSS grew by {grown_kib} KiB");

    assert!(!stack.exited("upstream"));
    let after = generate(&client, json!({"prompt": "a lighthouse again"}))
        .await
        .unwrap();
    assert_eq!(after.is_error, Some(false), "{after:?}");
    client.cancel().await.unwrap();
}

/// A provider that does not answer within `OPENAI_TIMEOUT_SECS`: the call is
/// abandoned (after the configured attempts) and is a tool error that says so
/// (the request went out: its answer was lost, not the provider unreachable).
#[tokio::test]
async fn provider_timeout_is_a_tool_error() {
    let slow = FakeOptions {
        latency: std::time::Duration::from_secs(5),
        ..FakeOptions::default()
    };
    let mut options = openai("gpt-image-2", slow);
    options.upstream_env = vec![
        ("OPENAI_TIMEOUT_SECS".into(), "1".into()),
        ("GATEWAY_MAX_ATTEMPTS".into(), "2".into()),
        ("GATEWAY_RETRY_MAX_DELAY_SECS".into(), "1".into()),
    ];
    let stack = Stack::start_with(options).await.unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let started = std::time::Instant::now();
    let result = generate(&client, json!({"prompt": "a slow lighthouse"})).await.unwrap();
    let elapsed = started.elapsed();
    assert_eq!(result.is_error, Some(true), "{result:?}");
    let text = result.content.iter().find_map(|c| c.as_text()).unwrap().text.clone();
    assert!(
        text.contains("answer did not arrive") && text.contains("timed out"),
        "{text}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "two 1 s attempts, not the model's 5 s: {elapsed:?}"
    );
    assert_eq!(stack.fake.as_ref().unwrap().requests().len(), 2, "retried once");
    let events = stack.audit_events();
    assert_eq!(events[0]["fields"]["error_class"], "provider_answer_lost", "{events:?}");
    client.cancel().await.unwrap();
}
