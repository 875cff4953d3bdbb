//! Generated images as MCP resources: `resources/read` through Envoy returns
//! the image to its organisation only.

use base64::Engine;
use gateway_tests::mcp_client::{connect, generate};
use gateway_tests::png_info::dimensions;
use gateway_tests::Stack;
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
