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
