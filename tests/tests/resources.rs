//! Generated images as MCP resources: `resources/read` through Envoy returns
//! the image to its organisation only.

use base64::Engine;
use gateway_tests::fake_openai::{FakeOptions, NOISE_MARKER};
use gateway_tests::mcp_client::{connect, generate, McpClient};
use gateway_tests::png_info::dimensions;
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use rmcp::model::{ReadResourceRequestParams, ResourceContents};
use rmcp::ServiceError;
use serde_json::json;

#[tokio::test]
async fn images_are_readable_by_their_organisation_only() {
    let stack = Stack::start().await.unwrap();
    let alice = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let capabilities = alice.peer_info().unwrap().capabilities.clone();
    assert!(capabilities.resources.is_some(), "resources are announced");
    let result = generate(&alice, json!({"prompt": "a harbour", "size": "1536x1024"}))
        .await
        .unwrap();
    let link = result.structured_content.unwrap()["image_urls"][0]
        .as_str()
        .unwrap()
        .to_string();

    // The owner's organisation reads it by the link it was given, and by image://key.
    let key = link
        .split("/images/")
        .nth(1)
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_string();
    let bob = connect(&stack.mcp_url, &stack.token("bob", "acme")).await.unwrap();
    for (client, uri) in [(&alice, link.clone()), (&bob, format!("image://{key}"))] {
        let read = client
            .read_resource(ReadResourceRequestParams::new(uri.clone()))
            .await
            .unwrap();
        let [ResourceContents::BlobResourceContents {
            blob,
            mime_type,
            uri: echoed,
            ..
        }] = read.contents.as_slice()
        else {
            panic!("expected one blob: {read:?}");
        };
        assert_eq!((mime_type.as_deref(), echoed), (Some("image/png"), &uri));
        let png = base64::engine::general_purpose::STANDARD.decode(blob).unwrap();
        assert_eq!(dimensions(&png).unwrap(), (1536, 1024));
    }

    // Another organisation, a made-up key, a path outside the store: "not found", nothing else.
    let mallory = connect(&stack.mcp_url, &stack.token("mallory", "globex"))
        .await
        .unwrap();
    let made_up = format!("image://acme/2026/01/01/{}.png", uuid::Uuid::new_v4());
    for (client, uri) in [
        (&mallory, link.clone()),
        (&alice, made_up),
        (&alice, "file:///etc/passwd".to_string()),
    ] {
        match client.read_resource(ReadResourceRequestParams::new(uri.clone())).await {
            Err(ServiceError::McpError(error)) => {
                // -32002 resource not found (-32602 for 2026-07-28 peers, SEP-2164).
                assert!(matches!(error.code.0, -32002 | -32602), "{uri}: {error:?}");
                assert!(error.message.contains("no image of yours"), "{uri}: {}", error.message);
            }
            other => panic!("{uri}: expected not found, got {other:?}"),
        }
    }
    for client in [alice, bob, mallory] {
        client.cancel().await.unwrap();
    }
}

/// A stack whose images come from the OpenAI fake, with `filter_patch` and
/// `upstream_env` as given.
async fn openai_stack(filter_patch: serde_json::Value, upstream_env: Vec<(String, String)>) -> Stack {
    Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions::default(),
        },
        filter_patch,
        upstream_env,
        ..StackOptions::default()
    })
    .await
    .unwrap()
}

/// Generates a PNG of random pixels of about 3.5 MiB (under the 4 MiB image
/// cap): its link and its bytes as stored.
async fn stored_noise(client: &McpClient) -> (String, Vec<u8>) {
    let prompt = format!("static on a screen {NOISE_MARKER}");
    let result = generate(client, json!({"prompt": prompt, "size": "1200x1024"}))
        .await
        .unwrap();
    assert_eq!(result.is_error, Some(false), "{result:?}");
    let link = result.structured_content.unwrap()["image_urls"][0]
        .as_str()
        .unwrap()
        .to_string();
    let png = http_client()
        .get(&link)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
        .to_vec();
    let mib = png.len() as f64 / (1024.0 * 1024.0);
    assert!((3.4..3.9).contains(&mib), "{mib} MiB");
    (link, png)
}

/// An image near the image cap (4 MiB) grows by a third as base64: the
/// edge's default response cap is sized for it, so the read works.
#[tokio::test]
async fn images_near_the_image_cap_are_readable_as_resources() {
    let stack = openai_stack(json!({}), Vec::new()).await;
    let alice = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let (link, png) = stored_noise(&alice).await;
    let read = alice
        .read_resource(ReadResourceRequestParams::new(link.clone()))
        .await
        .unwrap_or_else(|e| panic!("a {} byte image read as a resource: {e:?}", png.len()));
    let [ResourceContents::BlobResourceContents { blob, .. }] = read.contents.as_slice() else {
        panic!("expected one blob");
    };
    assert!(base64::engine::general_purpose::STANDARD.decode(blob).unwrap() == png);
    alice.cancel().await.unwrap();
}

/// An operator who keeps the edge at 4 MiB (and tells the upstream, as the
/// README says) gets a precise error for an image too large to inline, with
/// the signed link to fetch it from, never the edge's 502.
#[tokio::test]
async fn resources_too_large_to_inline_point_at_their_link() {
    let cap = 4 * 1024 * 1024;
    let stack = openai_stack(
        json!({"max_response_bytes": cap}),
        vec![("GATEWAY_MAX_RESOURCE_REPLY_BYTES".into(), cap.to_string())],
    )
    .await;
    let alice = connect(&stack.mcp_url, &stack.token("alice", "acme")).await.unwrap();
    let (link, png) = stored_noise(&alice).await;
    match alice.read_resource(ReadResourceRequestParams::new(link)).await {
        Err(ServiceError::McpError(error)) => {
            assert_eq!(error.code.0, -32003, "{error:?}");
            assert!(
                error.message.contains(&format!("limit of {cap} bytes")),
                "{}",
                error.message
            );
            assert!(error.message.contains("signed link"), "{}", error.message);
            let data = error.data.unwrap();
            assert_eq!(data["bytes"], png.len());
            let url = data["url"].as_str().unwrap();
            let fetched = http_client().get(url).send().await.unwrap().bytes().await.unwrap();
            assert!(fetched.as_ref() == png.as_slice());
        }
        other => panic!("expected a precise error, got {other:?}"),
    }
    alice.cancel().await.unwrap();
}
