//! The other providers through Envoy: Stability AI's SD3.5 and an
//! OpenAI-compatible self-hosted server, each against a fake of its wire format.

use gateway_tests::fake_openai::{FakeOptions, BLOCKED_MARKER};
use gateway_tests::fake_stability::FILTERED_MARKER;
use gateway_tests::mcp_client::{connect, generate, list_models, text_of};
use gateway_tests::png_info::dimensions;
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use serde_json::json;

#[tokio::test]
async fn stability_sd3_end_to_end() {
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeStability { rate_limit: None },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let fake = stack.stability.as_ref().unwrap();

    // n images are n multipart requests; 1344x768 is SD3's 16:9.
    let result = generate(&client, json!({"prompt": "a glacier", "size": "1344x768", "n": 2}))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let structured = result.structured_content.unwrap();
    assert_eq!(structured["model"], "sd3.5-large");
    assert!(
        (structured["estimated_cost_usd"].as_f64().unwrap() - 0.13).abs() < 1e-9,
        "{structured}"
    );
    for url in structured["image_urls"].as_array().unwrap() {
        let bytes = http_client()
            .get(url.as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), (1344, 768));
    }
    let sent = fake.requests();
    assert_eq!(sent.len(), 2);
    for (field, value) in [
        ("aspect_ratio", "16:9"),
        ("model", "sd3.5-large"),
        ("mode", "text-to-image"),
        ("output_format", "png"),
        ("prompt", "a glacier"),
    ] {
        assert_eq!(sent[0][field], value, "{field} in {}", sent[0]);
    }

    // Refusals are tool errors; nothing is stored; a blurred image is never kept.
    for marker in [BLOCKED_MARKER, FILTERED_MARKER] {
        let result = generate(&client, json!({"prompt": format!("a cat {marker}")}))
            .await
            .unwrap();
        assert_eq!(result.is_error, Some(true), "{marker}");
        assert!(
            text_of(&result).contains("content policy"),
            "{marker}: {}",
            text_of(&result)
        );
    }
    // Options SD3 does not have are refused before any request.
    let before = fake.requests().len();
    for (arguments, expected) in [
        (
            json!({"prompt": "x", "quality": "high"}),
            "`quality` high is not available on sd3.5-large",
        ),
        (
            json!({"prompt": "x", "size": "1536x1024"}),
            "`size` 1536x1024 is not available on sd3.5-large",
        ),
        (json!({"prompt": "x", "output_format": "webp"}), "`output_format` webp"),
    ] {
        let result = generate(&client, arguments.clone()).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{arguments}");
        assert!(text_of(&result).contains(expected), "{arguments}: {}", text_of(&result));
    }
    assert_eq!(fake.requests().len(), before);
    let stored: u64 = stack
        .audit_events()
        .iter()
        .map(|e| e["fields"]["images_stored"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(stored, 2, "only the successful call stored images");
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn openai_compatible_server_end_to_end() {
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "stablediffusion".into(),
            options: FakeOptions {
                compatible: true,
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![("GATEWAY_BACKEND".into(), "openai-compatible".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(&client, json!({"prompt": "a lighthouse", "size": "1024x1536"}))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let structured = result.structured_content.unwrap();
    assert_eq!(structured["model"], "stablediffusion");
    let url = structured["image_urls"][0].as_str().unwrap();
    let bytes = http_client().get(url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(dimensions(&bytes).unwrap(), (1024, 1536));
    // The classic dialect: b64_json asked for, no GPT-image parameters sent.
    let sent = &stack.fake.as_ref().unwrap().requests()[0];
    assert_eq!(sent["response_format"], "b64_json");
    for gpt_only in ["quality", "background", "moderation", "output_format"] {
        assert!(sent.get(gpt_only).is_none(), "{gpt_only} sent: {sent}");
    }
    // What such a server cannot do is a clear tool error, not a provider 400.
    let result = generate(&client, json!({"prompt": "x", "output_format": "webp"}))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(true));
    assert!(
        text_of(&result).contains("PNGs without transparency only"),
        "{}",
        text_of(&result)
    );
    let listed = list_models(&client).await.unwrap();
    assert_eq!(listed["models"][0]["backend"], "openai-compatible");
    client.cancel().await.unwrap();
}
