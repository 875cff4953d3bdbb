//! The model capability table through Envoy: options reach OpenAI in its
//! wire format, the stored files are what was asked for, requests a model
//! cannot serve go to one that can or are refused before any provider call.

use gateway_tests::fake_openai::FakeOptions;
use gateway_tests::mcp_client::{connect, generate, list_models, text_of};
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use rmcp::model::ContentBlock;
use serde_json::{json, Value};

async fn stack_with(primary: &str, fallbacks: &str) -> Stack {
    Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: primary.into(),
            options: FakeOptions::default(),
        },
        upstream_env: vec![("GATEWAY_FALLBACK_MODELS".into(), fallbacks.into())],
        ..StackOptions::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn options_reach_the_provider_and_the_files_match() {
    let stack = stack_with("gpt-image-2", "").await;
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let result = generate(
        &client,
        json!({"prompt": "a tram at dusk", "size": "1280x720", "quality": "high",
               "output_format": "webp", "output_compression": 70}),
    )
    .await
    .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let structured = result.structured_content.clone().unwrap();
    assert_eq!(
        (structured["size"].clone(), structured["output_format"].clone()),
        (json!("1280x720"), json!("webp"))
    );
    let sent = &stack.fake.as_ref().unwrap().requests()[0];
    for (field, value) in [
        ("size", json!("1280x720")),
        ("quality", json!("high")),
        ("output_format", json!("webp")),
        ("output_compression", json!(70)),
        ("background", json!("auto")),
        ("moderation", json!("auto")),
    ] {
        assert_eq!(sent[field], value, "{field} in {sent}");
    }
    // The link serves a WebP with its content type; the resource link says so too.
    let url = structured["image_urls"][0].as_str().unwrap();
    assert!(url.contains(".webp?"), "{url}");
    let response = http_client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/webp");
    let bytes = response.bytes().await.unwrap();
    assert!(bytes.starts_with(b"RIFF") && &bytes[8..12] == b"WEBP");
    let link = result
        .content
        .iter()
        .find_map(|c| match c {
            ContentBlock::ResourceLink(link) => Some(link.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(link.mime_type.as_deref(), Some("image/webp"));

    let jpeg = generate(&client, json!({"prompt": "a tram", "output_format": "jpeg"}))
        .await
        .unwrap();
    let url = jpeg.structured_content.unwrap()["image_urls"][0]
        .as_str()
        .unwrap()
        .to_string();
    let response = http_client().get(&url).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "image/jpeg");
    assert!(response.bytes().await.unwrap().starts_with(&[0xFF, 0xD8, 0xFF]));
    client.cancel().await.unwrap();
}

#[tokio::test]
async fn requests_a_model_cannot_serve_are_routed_or_refused_before_any_call() {
    let stack = stack_with("gpt-image-2", "gpt-image-1.5").await;
    let client = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let fake = stack.fake.as_ref().unwrap();

    // Only gpt-image-1.5 makes transparent backgrounds: it serves, gpt-image-2 is never asked.
    let result = generate(
        &client,
        json!({"prompt": "a sticker of a fox", "background": "transparent"}),
    )
    .await
    .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    assert_eq!(result.structured_content.unwrap()["model"], "gpt-image-1.5");
    let models: Vec<Value> = fake.requests().iter().map(|r| r["model"].clone()).collect();
    assert_eq!(models, [json!("gpt-image-1.5")]);

    // No model can: a tool error that says why and what to do; nobody is called.
    let cases = [
        (
            json!({"prompt": "x", "background": "transparent", "output_format": "jpeg"}),
            "png or webp",
        ),
        (
            json!({"prompt": "x", "size": "1000x1000"}),
            "`size` 1000x1000 is not available on gpt-image-2",
        ),
        (json!({"prompt": "x", "size": "4096x2160"}), "at most 3840x2160"),
        (json!({"prompt": "x", "output_compression": 50}), "jpeg and webp only"),
    ];
    for (arguments, expected) in cases {
        let result = generate(&client, arguments.clone()).await.unwrap();
        assert_eq!(result.is_error, Some(true), "{arguments}");
        let text = text_of(&result);
        assert!(
            text.contains(expected) && text.contains("list_models"),
            "{arguments}: {text}"
        );
    }
    assert_eq!(fake.requests().len(), 1, "refused requests never reach the provider");
    let refused = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["error_class"] == "unsupported_by_model")
        .count();
    assert_eq!(refused, 4, "{:?}", stack.audit_events());

    // list_models tells what each routed model accepts.
    let listed = list_models(&client).await.unwrap();
    let first = &listed["models"][0];
    assert_eq!(first["model"], "gpt-image-2");
    assert_eq!(first["capabilities"]["transparent_background"], false);
    assert_eq!(first["capabilities"]["custom_sizes"]["multiple_of"], 16);
    assert_eq!(listed["models"][1]["capabilities"]["transparent_background"], true);
    client.cancel().await.unwrap();
}
