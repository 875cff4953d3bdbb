//! The content policy through Envoy: denied terms and the moderation model
//! on prompts (before any image provider is called) and on images (before
//! anything is stored), per organisation, from a policy file that changes
//! while the gateway runs. The OpenAI fake answers the moderations endpoint
//! in its documented wire format; every refusal is checked at the provider
//! fakes (no image request), in billing, in the audit and in the metrics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gateway_tests::fake_openai::{
    flag_marker, flagged_png, unsafe_image_marker, FakeOpenAi, FakeOptions, BLOCKED_MARKER,
};
use gateway_tests::mcp_client::{call_http, connect_with_tasks, structured, tool_error};
use gateway_tests::{Backend, Stack, StackOptions};
use rmcp::model::{CallToolRequestParams, CallToolResponse};
use serde_json::{json, Value};

const REVISION: &str = "2025-11-25";

/// Writes the policy file as an editor saving it would (whole, by rename); its SHA-256.
fn write_policy(path: &Path, value: &Value) -> String {
    let staging = path.with_extension("saving");
    std::fs::write(&staging, value.to_string()).unwrap();
    std::fs::rename(&staging, path).unwrap();
    mcp_image_gateway::telemetry::sha256(value.to_string().as_bytes())
}

fn policy_path() -> PathBuf {
    std::env::temp_dir().join(format!("content-policy-{}.json", uuid::Uuid::new_v4()))
}

fn stack_options(backend: Backend, policy: &Path, extra: &[(&str, &str)]) -> StackOptions {
    let mut env = vec![
        ("GATEWAY_CONTENT_POLICY_FILE".to_string(), policy.display().to_string()),
        ("GATEWAY_ADMIN_FILES_POLL_SECS".to_string(), "1".to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    StackOptions {
        backend,
        upstream_env: env,
        ..StackOptions::default()
    }
}

/// Images in the store for organisation `kids`.
fn stored(stack: &Stack) -> Vec<PathBuf> {
    fn list(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                list(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut files = Vec::new();
    list(&stack.state_dir.join("images/kids"), &mut files);
    files.sort();
    files
}

fn events(stack: &Stack, target: &str) -> Vec<Value> {
    stack
        .log("upstream")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["target"] == target)
        .collect()
}

fn refusals(stack: &Stack) -> Vec<Value> {
    events(stack, "audit")
        .into_iter()
        .filter(|e| e["fields"]["event"] == "content_refusal")
        .map(|e| e["fields"].clone())
        .collect()
}

/// The value of one metric series (0 when absent).
async fn metric(stack: &Stack, series: &str) -> f64 {
    stack
        .upstream_metrics()
        .await
        .lines()
        .find_map(|line| {
            line.strip_prefix(series)
                .and_then(|rest| rest.trim().split(' ').next()?.parse().ok())
        })
        .unwrap_or(0.0)
}

async fn metric_shows(stack: &Stack, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if stack.upstream_metrics().await.contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// The refusal's stage and category, from a tool error's structured content.
fn refusal_of(reply: &Value) -> (String, String, String) {
    let text = tool_error(reply);
    let details = &reply["result"]["structuredContent"];
    assert_eq!(details["error"], "content_policy", "{reply}");
    (
        details["stage"].as_str().unwrap_or_default().to_string(),
        details["category"].as_str().unwrap_or_default().to_string(),
        text,
    )
}

/// One `generate_image` call on protocol 2025-11-25: the JSON-RPC reply.
async fn generate(stack: &Stack, token: String, prompt: String) -> Value {
    call_http(
        &stack.mcp_url,
        &token,
        REVISION,
        "generate_image",
        json!({"prompt": prompt}),
    )
    .await
}

/// Per organisation, before any provider: denied terms in every case and
/// accent form, the moderation model's flags, its outage under `refuse`
/// and `allow`, the provider's own refusal kept off the fallback, and old
/// clients' -32602; each refusal audited without the prompt, counted, and
/// never billed.
#[tokio::test]
async fn prompts_are_checked_per_organisation_before_any_provider_is_called() {
    let policy = policy_path();
    write_policy(
        &policy,
        &json!({
            "default": {"deny_terms": {"weapons": ["bazooka", "grenade*"]},
                        "moderation": "prompts", "when_moderation_unavailable": "refuse"},
            "orgs": {"design": {"deny_terms": {}, "moderation": "off"},
                     "lenient": {"when_moderation_unavailable": "allow"}}
        }),
    );
    let backend = Backend::FakeOpenAi {
        model: "gpt-image-2".into(),
        options: FakeOptions::default(),
    };
    let stack = Stack::start_with(stack_options(
        backend,
        &policy,
        &[("GATEWAY_FALLBACK_MODELS", "gpt-image-1.5")],
    ))
    .await
    .unwrap();
    let fake = stack.fake.as_ref().unwrap();
    let acme = stack.token("alice", "acme");
    let call = |token: &str, prompt: &str| generate(&stack, token.to_string(), prompt.to_string());

    // A denied term, in every case and accent form: refused before anything is asked.
    for prompt in ["a Bazooka at dawn", "A BAZOOKA!", "une bazóoka", "two grenades"] {
        let (stage, category, text) = refusal_of(&call(&acme, prompt).await);
        assert_eq!((stage.as_str(), category.as_str()), ("prompt", "weapons"), "{prompt}");
        assert!(
            !text.to_lowercase().contains("bazo") && !text.contains("grenade"),
            "{text}"
        );
    }
    assert!(fake.requests().is_empty(), "no image request");
    assert!(fake.moderations().is_empty(), "denied terms need no moderation request");
    // Whole words only: not inside another word.
    structured(&call(&acme, "a superbazooka-free meadow").await);
    assert_eq!(fake.requests().len(), 1);
    // The same prompt is generated for an organisation whose policy allows it.
    let design = stack.token("dana", "design");
    structured(&call(&design, "a bazooka").await);
    assert_eq!(fake.requests().len(), 2);

    // The moderation model: a flagged prompt is refused, naming its category.
    let before = fake.moderations().len();
    let flagged = format!("a scene {}", flag_marker("violence"));
    let (stage, category, _) = refusal_of(&call(&acme, &flagged).await);
    assert_eq!((stage.as_str(), category.as_str()), ("prompt", "violence"));
    let asked = fake.moderations();
    assert_eq!(asked.len(), before + 1);
    assert_eq!(asked[before]["model"], "omni-moderation-latest");
    assert_eq!(asked[before]["texts"], json!([flagged]));
    assert_eq!(fake.requests().len(), 2, "no image request for a flagged prompt");

    // Old clients hear of a refused prompt as they hear of bad arguments.
    let old = call_http(
        &stack.mcp_url,
        &acme,
        "2025-06-18",
        "generate_image",
        json!({"prompt": "a bazooka"}),
    )
    .await;
    assert_eq!(old["error"]["code"], -32602, "{old}");
    assert_eq!(old["error"]["data"]["category"], "weapons", "{old}");

    // A client with Tasks gets the refusal at once, not a task that fails later.
    let tasks = connect_with_tasks(&stack.mcp_url, &acme).await.unwrap();
    let arguments = json!({"prompt": "a bazooka"}).as_object().cloned().unwrap();
    let response = tasks
        .call_tool_once(CallToolRequestParams::new("generate_image").with_arguments(arguments))
        .await
        .unwrap();
    let CallToolResponse::Complete(result) = response else {
        panic!("a refused prompt starts no task: {response:?}")
    };
    assert_eq!(result.is_error, Some(true));
    assert_eq!(result.structured_content.unwrap()["category"], "weapons");
    tasks.cancel().await.unwrap();

    // The provider's own refusal: the same shape, category `provider`, no fallback.
    let blocked = call(&acme, &format!("a cat {BLOCKED_MARKER}")).await;
    let (stage, category, text) = refusal_of(&blocked);
    assert_eq!((stage.as_str(), category.as_str()), ("provider", "provider"));
    assert!(text.contains("safety system"), "{text}");
    let models: Vec<Value> = fake.requests().iter().map(|r| r["model"].clone()).collect();
    assert!(
        !models.contains(&json!("gpt-image-1.5")),
        "never sent down the chain: {models:?}"
    );

    // Moderation down: `refuse` refuses (nothing generated), `allow` goes on unchecked.
    fake.set_moderation_down(true);
    let images_before = fake.requests().len();
    let (stage, category, _) = refusal_of(&call(&acme, "a quiet lake").await);
    assert_eq!(
        (stage.as_str(), category.as_str()),
        ("prompt", "moderation_unavailable")
    );
    assert_eq!(fake.requests().len(), images_before);
    let lenient = stack.token("lee", "lenient");
    structured(&call(&lenient, "a quiet lake").await);
    assert_eq!(fake.requests().len(), images_before + 1);
    fake.set_moderation_down(false);
    assert!(metric(&stack, "mcp_gateway_content_policy_unchecked_total{stage=\"prompt\",category=\"moderation_unavailable\",org=\"lenient\"}").await >= 1.0);
    // The call let through is audited as unchecked, naming why.
    let unchecked: Vec<Value> = events(&stack, "audit")
        .into_iter()
        .filter(|e| e["fields"]["event"] == "content_unchecked")
        .collect();
    assert_eq!(unchecked.len(), 1, "{unchecked:?}");
    let fields = &unchecked[0]["fields"];
    assert_eq!(
        (
            &fields["org"],
            &fields["stage"],
            &fields["error_class"],
            &fields["policy"]
        ),
        (
            &json!("lenient"),
            &json!("prompt"),
            &json!("provider_error"),
            &json!("orgs.lenient")
        )
    );
    assert!(fields["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(metric(&stack, "mcp_gateway_moderation_errors_total{class=\"provider_error\"}").await >= 1.0);

    // Every refusal: audited with its category and rule, the prompt as a hash only.
    let audited = refusals(&stack);
    let summary: Vec<(String, String, String)> = audited
        .iter()
        .map(|e| {
            let s = |f: &str| e[f].as_str().unwrap_or_default().to_string();
            (s("stage"), s("category"), s("rule"))
        })
        .collect();
    let weapons = ("prompt".to_string(), "weapons".to_string(), "deny_terms".to_string());
    assert_eq!(summary.iter().filter(|s| **s == weapons).count(), 6, "{summary:?}");
    assert!(summary.contains(&(
        "prompt".into(),
        "violence".into(),
        "moderation:omni-moderation-latest".into()
    )));
    assert!(summary.contains(&("provider".into(), "provider".into(), "provider:gpt-image-2".into())));
    assert!(summary.contains(&(
        "prompt".into(),
        "moderation_unavailable".into(),
        "moderation:omni-moderation-latest".into()
    )));
    for event in &audited {
        assert_eq!(event["org"], "acme");
        assert_eq!(event["prompt_sha256"].as_str().map(str::len), Some(64), "{event}");
    }
    let log = stack.log("upstream");
    assert!(!log.contains("azooka") && !log.contains("grenades") && !log.contains("a scene"));
    // Refused calls are not billed: only the three delivered calls are.
    let billing = events(&stack, "billing");
    assert_eq!(billing.len(), 3, "{billing:?}");
    assert!(billing.iter().all(|b| b["fields"]["blocked"] == false));
    // And counted by stage, category and organisation.
    assert_eq!(
        metric(
            &stack,
            "mcp_gateway_content_policy_refusals_total{stage=\"prompt\",category=\"weapons\",org=\"acme\"}"
        )
        .await,
        6.0
    );
    assert_eq!(
        metric(
            &stack,
            "mcp_gateway_content_policy_refusals_total{stage=\"provider\",category=\"provider\",org=\"acme\"}"
        )
        .await,
        1.0
    );
    let _ = std::fs::remove_file(&policy);
}

/// One backend's flagged image: withheld (nothing new in the store), its
/// cost billed and marked blocked, audited and counted.
async fn withheld(stack: &Stack, moderation: &FakeOpenAi, arguments: Value, tool: &str) {
    let token = stack.token("kim", "kids");
    let files = stored(stack);
    let asked = moderation.moderations().len();
    let reply = call_http(&stack.mcp_url, &token, REVISION, tool, arguments).await;
    let (stage, category, text) = refusal_of(&reply);
    assert_eq!(
        (stage.as_str(), category.as_str()),
        ("image", "violence/graphic"),
        "{text}"
    );
    assert!(text.contains("not stored or linked"), "{text}");
    assert_eq!(stored(stack), files, "nothing new in the object store");
    let images: Vec<Value> = moderation.moderations()[asked..].to_vec();
    assert!(
        images.iter().any(|m| m["images"] == 1),
        "the image went to the moderation model: {images:?}"
    );
    let billing = events(stack, "billing");
    let last = &billing.last().expect("the withheld image is billed")["fields"];
    assert_eq!(last["blocked"], true, "{last}");
    assert_eq!(last["org"], "kids");
    let refusal = refusals(stack).pop().unwrap();
    assert_eq!(refusal["stage"], "image");
    assert_eq!(refusal["category"], "violence/graphic");
    assert!(
        metric(
            stack,
            "mcp_gateway_content_policy_refusals_total{stage=\"image\",category=\"violence/graphic\",org=\"kids\"}"
        )
        .await
            >= 1.0
    );
}

/// A generated image is checked before it is stored or linked, whichever
/// backend drew it (OpenAI, a self-hosted server, Stability), an edit's
/// result included; `image_moderation_models` limits which models' images
/// are checked; `moderate_edit_inputs` sends an edit's inputs with its prompt.
#[tokio::test]
async fn flagged_images_are_withheld_from_every_backend() {
    let unsafe_prompt = format!("a street {}", unsafe_image_marker("violence/graphic"));
    let policy = policy_path();
    write_policy(
        &policy,
        &json!({"default": {"moderation": "prompts_and_images"},
                "orgs": {"trusted": {"image_moderation_models": ["gpt-image-1.5"]},
                         "careful": {"moderate_edit_inputs": true}}}),
    );

    // OpenAI: a generation, then an edit of a clean image.
    let backend = Backend::FakeOpenAi {
        model: "gpt-image-2".into(),
        options: FakeOptions::default(),
    };
    let stack = Stack::start_with(stack_options(backend, &policy, &[])).await.unwrap();
    let fake = stack.fake.as_ref().unwrap();
    withheld(&stack, fake, json!({"prompt": unsafe_prompt}), "generate_image").await;
    let kids = stack.token("kim", "kids");
    let clean = call_http(
        &stack.mcp_url,
        &kids,
        REVISION,
        "generate_image",
        json!({"prompt": "a street"}),
    )
    .await;
    let link = structured(&clean)["image_urls"][0].as_str().unwrap().to_string();
    withheld(
        &stack,
        fake,
        json!({"prompt": unsafe_prompt, "images": [link]}),
        "edit_image",
    )
    .await;
    // An edit's own input, where the policy says so: refused before the provider.
    let careful = stack.token("cat", "careful");
    let ticket = call_http(
        &stack.mcp_url,
        &careful,
        REVISION,
        "create_upload",
        json!({"content_type": "image/png"}),
    )
    .await;
    let ticket = structured(&ticket).clone();
    let put = gateway_tests::stack::http_client()
        .put(ticket["upload_url"].as_str().unwrap())
        .header("content-type", "image/png")
        .body(flagged_png(64, 64, "sexual"))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let edits_before = fake.requests().len();
    let moderations_before = fake.moderations().len();
    let reply = call_http(
        &stack.mcp_url,
        &careful,
        REVISION,
        "edit_image",
        json!({"prompt": "make it brighter", "images": [ticket["reference"]]}),
    )
    .await;
    let (stage, category, _) = refusal_of(&reply);
    assert_eq!((stage.as_str(), category.as_str()), ("prompt", "sexual"));
    assert_eq!(fake.requests().len(), edits_before, "no edit request went out");
    // The text and the input, each in its own request (in either order).
    let mut asked: Vec<(u64, usize)> = fake.moderations()[moderations_before..]
        .iter()
        .map(|m| (m["images"].as_u64().unwrap(), m["texts"].as_array().unwrap().len()))
        .collect();
    asked.sort();
    assert_eq!(asked, vec![(0, 1), (1, 0)], "the input went with the prompt");
    // Several inputs: the API takes one image per request, so the text and
    // each image go alone; a clean multi-image edit goes through, however
    // often (no 400s opening the moderation breaker for everyone), and a
    // flagged second input is found.
    let own = call_http(
        &stack.mcp_url,
        &careful,
        REVISION,
        "generate_image",
        json!({"prompt": "a street"}),
    )
    .await;
    let own = structured(&own)["image_urls"][0].as_str().unwrap().to_string();
    let asked_before = fake.moderations().len();
    for _ in 0..4 {
        let reply = call_http(
            &stack.mcp_url,
            &careful,
            REVISION,
            "edit_image",
            json!({"prompt": "make it brighter", "images": [own, own]}),
        )
        .await;
        assert!(structured(&reply)["image_urls"].is_array(), "{reply}");
    }
    let asked = fake.moderations()[asked_before..].to_vec();
    assert!(asked.iter().all(|m| m["images"].as_u64() <= Some(1)), "{asked:?}");
    // Each edit: the text, each input, and the result (this org checks images too).
    assert_eq!(asked.len(), 4 * 4, "the text and each image, per edit: {asked:?}");
    let ticket = call_http(
        &stack.mcp_url,
        &careful,
        REVISION,
        "create_upload",
        json!({"content_type": "image/png"}),
    )
    .await;
    let ticket = structured(&ticket).clone();
    let put = gateway_tests::stack::http_client()
        .put(ticket["upload_url"].as_str().unwrap())
        .header("content-type", "image/png")
        .body(flagged_png(64, 64, "sexual"))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let reply = call_http(
        &stack.mcp_url,
        &careful,
        REVISION,
        "edit_image",
        json!({"prompt": "make it brighter", "images": [own, ticket["reference"]]}),
    )
    .await;
    let (stage, category, _) = refusal_of(&reply);
    assert_eq!((stage.as_str(), category.as_str()), ("prompt", "sexual"));
    // Not this model's images, for an organisation that checks only self-hosted ones.
    let trusted = stack.token("tom", "trusted");
    structured(
        &call_http(
            &stack.mcp_url,
            &trusted,
            REVISION,
            "generate_image",
            json!({"prompt": unsafe_prompt}),
        )
        .await,
    );
    drop(stack);

    // A self-hosted server speaking the classic Images API; the trusted
    // organisation checks its images only (a model the policy names must be
    // one this gateway knows: the catalogue's or a configured chain's).
    write_policy(
        &policy,
        &json!({"default": {"moderation": "prompts_and_images"},
                "orgs": {"trusted": {"image_moderation_models": ["stablediffusion"]}}}),
    );
    let backend = Backend::FakeOpenAi {
        model: "stablediffusion".into(),
        options: FakeOptions {
            compatible: true,
            ..FakeOptions::default()
        },
    };
    let stack = Stack::start_with(stack_options(
        backend,
        &policy,
        &[("GATEWAY_BACKEND", "openai-compatible")],
    ))
    .await
    .unwrap();
    withheld(
        &stack,
        stack.fake.as_ref().unwrap(),
        json!({"prompt": unsafe_prompt}),
        "generate_image",
    )
    .await;
    // The trusted organisation's policy checks this (self-hosted) model's images.
    let trusted = stack.token("tom", "trusted");
    let reply = call_http(
        &stack.mcp_url,
        &trusted,
        REVISION,
        "generate_image",
        json!({"prompt": unsafe_prompt}),
    )
    .await;
    assert_eq!(refusal_of(&reply).0, "image");
    drop(stack);

    // Stability, with the moderation model elsewhere (GATEWAY_MODERATION_*).
    write_policy(&policy, &json!({"default": {"moderation": "prompts_and_images"}}));
    let moderation = FakeOpenAi::start(FakeOptions::default()).await.unwrap();
    let base = format!("{}/v1", moderation.base_url);
    let stack = Stack::start_with(stack_options(
        Backend::FakeStability { rate_limit: None },
        &policy,
        &[
            ("GATEWAY_MODERATION_BASE_URL", base.as_str()),
            ("GATEWAY_MODERATION_API_KEY", moderation.api_key.as_str()),
        ],
    ))
    .await
    .unwrap();
    withheld(&stack, &moderation, json!({"prompt": unsafe_prompt}), "generate_image").await;
    assert_eq!(stack.stability.as_ref().unwrap().requests().len(), 1);
    let _ = std::fs::remove_file(&policy);
}

/// The policy file applies while the gateway runs: a call in flight
/// finishes on the policy it started with, new calls get the new one, a bad
/// file is refused (audited, counted) and the running policy stays.
#[tokio::test]
async fn the_policy_file_changes_live() {
    let policy = policy_path();
    let first = write_policy(&policy, &json!({"default": {"moderation": "prompts_and_images"}}));
    let backend = Backend::FakeOpenAi {
        model: "gpt-image-2".into(),
        options: FakeOptions {
            latency: Duration::from_secs(2),
            ..FakeOptions::default()
        },
    };
    let stack = Stack::start_with(stack_options(backend, &policy, &[])).await.unwrap();
    assert!(metric_shows(&stack, &format!("file=\"content_policy\",sha256=\"{first}\"}} 1")).await);
    let token = stack.token("alice", "acme");
    let unsafe_prompt = format!("a street {}", unsafe_image_marker("violence"));
    let in_flight = {
        let (url, token, prompt) = (stack.mcp_url.clone(), token.clone(), unsafe_prompt.clone());
        tokio::spawn(
            async move { call_http(&url, &token, REVISION, "generate_image", json!({"prompt": prompt})).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = write_policy(
        &policy,
        &json!({"default": {"moderation": "off", "deny_terms": {"kitchenware": ["teapot"]}}}),
    );
    assert!(
        metric_shows(&stack, &format!("sha256=\"{second}\"}} 1")).await,
        "applied: {}",
        stack.log_tail("upstream")
    );
    // New calls run on the new policy: a new denied term, images unchecked.
    let (_, category, _) = refusal_of(
        &call_http(
            &stack.mcp_url,
            &token,
            REVISION,
            "generate_image",
            json!({"prompt": "a Teapot"}),
        )
        .await,
    );
    assert_eq!(category, "kitchenware");
    structured(
        &call_http(
            &stack.mcp_url,
            &token,
            REVISION,
            "generate_image",
            json!({"prompt": unsafe_prompt.clone()}),
        )
        .await,
    );
    // The call in flight kept the policy it started with: its image was checked.
    let (stage, category, _) = refusal_of(&in_flight.await.unwrap());
    assert_eq!((stage.as_str(), category.as_str()), ("image", "violence"));

    // A bad file (an unknown category) is refused; the running policy stays.
    let bad = write_policy(
        &policy,
        &json!({"default": {"moderation": "prompts", "block_categories": {"violent": 0.5}}}),
    );
    assert!(
        metric_shows(
            &stack,
            "admin_file_reloads_total{file=\"content_policy\",result=\"rejected\"} 1"
        )
        .await,
        "refused: {}",
        stack.log_tail("upstream")
    );
    let (_, category, _) = refusal_of(
        &call_http(
            &stack.mcp_url,
            &token,
            REVISION,
            "generate_image",
            json!({"prompt": "teapot"}),
        )
        .await,
    );
    assert_eq!(category, "kitchenware", "the running policy stayed");
    // A model this gateway does not know (a typo would leave images unchecked).
    let unknown = write_policy(
        &policy,
        &json!({"default": {"moderation": "prompts_and_images", "image_moderation_models": ["gpt-image-22"]}}),
    );
    assert!(
        metric_shows(
            &stack,
            "admin_file_reloads_total{file=\"content_policy\",result=\"rejected\"} 2"
        )
        .await,
        "refused: {}",
        stack.log_tail("upstream")
    );
    let changes: Vec<(String, String)> = events(&stack, "audit")
        .iter()
        .filter(|e| e["fields"]["event"] == "settings_change" && e["fields"]["kind"] == "content_policy")
        .map(|e| {
            let f = |k: &str| e["fields"][k].as_str().unwrap_or_default().to_string();
            (f("result"), f("sha256_after"))
        })
        .collect();
    assert_eq!(
        changes,
        vec![
            ("applied".into(), second),
            ("rejected".into(), bad),
            ("rejected".into(), unknown)
        ]
    );
    let unknown_reason = events(&stack, "audit")
        .into_iter()
        .rfind(|e| e["fields"]["result"] == "rejected")
        .unwrap();
    assert!(
        unknown_reason["fields"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown model \"gpt-image-22\""),
        "{unknown_reason}"
    );
    let reason = events(&stack, "audit")
        .into_iter()
        .find(|e| e["fields"]["result"] == "rejected")
        .unwrap();
    assert!(
        reason["fields"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("default.block_categories"),
        "{reason}"
    );
    let _ = std::fs::remove_file(&policy);
}
