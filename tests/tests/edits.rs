//! `edit_image` and `create_upload` through Envoy: images by reference,
//! in-painting by region or mask, uploads by one-time signed PUT, the checks
//! that run before any provider call, the OpenAI edits wire format, and
//! edits as tasks across two replicas.

use std::time::{Duration, Instant};

use gateway_tests::fake_openai::{solid_png, FakeOptions};
use gateway_tests::mcp_client::{call_http, connect_with_tasks, structured, tool_error};
use gateway_tests::stack::http_client;
use gateway_tests::{Backend, Stack, StackOptions};
use rmcp::model::{CallToolRequestParams, CallToolResponse, GetTaskParams, TaskPayload};
use serde_json::{json, Value};

/// One `tools/call` through Envoy (2025-11-25); returns the JSON-RPC reply.
async fn call(stack: &Stack, token: &str, tool: &str, arguments: Value) -> Value {
    call_http(&stack.mcp_url, token, "2025-11-25", tool, arguments).await
}

/// The same in a given protocol revision (of the initialize era).
async fn call_as(stack: &Stack, token: &str, version: &str, tool: &str, arguments: Value) -> Value {
    call_http(&stack.mcp_url, token, version, tool, arguments).await
}

async fn fetch(url: &str) -> Vec<u8> {
    let response = http_client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.bytes().await.unwrap().to_vec()
}

/// RGBA pixels of a PNG.
fn pixels(png_bytes: &[u8]) -> (u32, u32, Vec<[u8; 4]>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut buffer = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buffer).unwrap();
    let channels = info.color_type.samples();
    let data = &buffer[..info.buffer_size()];
    let pixels = data
        .chunks_exact(channels)
        .map(|c| match channels {
            4 => [c[0], c[1], c[2], c[3]],
            3 => [c[0], c[1], c[2], 255],
            _ => panic!("unexpected PNG colour type"),
        })
        .collect();
    (info.width, info.height, pixels)
}

async fn generate(stack: &Stack, token: &str) -> String {
    let reply = call(stack, token, "generate_image", json!({"prompt": "a harbour at dawn"})).await;
    structured(&reply)["image_urls"][0].as_str().unwrap().to_string()
}

/// A stack started with `options`, alice's token (org acme) and one image
/// she generated (its link): where every edit test begins.
async fn stack_with_image(options: StackOptions) -> (Stack, String, String) {
    let stack = Stack::start_with(options).await.unwrap();
    let token = stack.token("alice", "acme");
    let original = generate(&stack, &token).await;
    (stack, token, original)
}

/// A created upload: (upload URL, reference).
async fn create_upload(stack: &Stack, token: &str, content_type: &str) -> (String, String) {
    let reply = call(stack, token, "create_upload", json!({"content_type": content_type})).await;
    let ticket = structured(&reply);
    assert_eq!(ticket["method"], "PUT");
    assert_eq!(ticket["headers"]["Content-Type"], content_type);
    (
        ticket["upload_url"].as_str().unwrap().to_string(),
        ticket["reference"].as_str().unwrap().to_string(),
    )
}

async fn put(url: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    let response = http_client()
        .put(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A small PNG declaring `width` x `height`: its header and the start of
/// a zlib stream, as a decompression bomb begins.
fn bomb(width: u32, height: u32) -> Vec<u8> {
    let crc32 = |bytes: &[u8]| {
        let mut crc = 0xFFFF_FFFFu32;
        for &byte in bytes {
            crc ^= u32::from(byte);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [(&b"IHDR"[..], ihdr), (&b"IDAT"[..], vec![0x78, 0x9c, 0x63, 0x00])] {
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.extend_from_slice(&chunk);
        out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    out
}

/// A transparent RGBA PNG (a mask that would change everything).
fn clear_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgba);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer
        .write_image_data(&vec![0; (width * height * 4) as usize])
        .unwrap();
    writer.finish().unwrap();
    out
}

#[tokio::test]
async fn in_painting_a_region_changes_only_that_region() {
    let (stack, token, original) = stack_with_image(StackOptions::default()).await;
    let region = json!({"x": 96, "y": 160, "width": 320, "height": 200});
    let reply = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "add a red boat", "images": [original], "mask_region": region}),
    )
    .await;
    let out = structured(&reply);
    assert_eq!(out["size"], "1024x1024", "the first image's size is kept: {out}");
    assert_eq!(out["source_images"][0], original.as_str());
    assert_eq!(out["model"], "offline-preview");
    let edited = out["image_urls"][0].as_str().unwrap().to_string();
    let (w, h, before) = pixels(&fetch(&original).await);
    let (w2, h2, after) = pixels(&fetch(&edited).await);
    assert_eq!((w, h), (w2, h2));
    let (mut inside_changed, mut outside_changed) = (0, 0);
    for (index, (a, b)) in before.iter().zip(&after).enumerate() {
        let (x, y) = (index as u32 % w, index as u32 / w);
        let inside = (96..416).contains(&x) && (160..360).contains(&y);
        let changed = a[..3] != b[..3];
        if inside && changed {
            inside_changed += 1;
        }
        if !inside && changed {
            outside_changed += 1;
        }
    }
    assert_eq!(outside_changed, 0, "pixels outside the region are untouched");
    assert_eq!(inside_changed, 320 * 200, "every pixel inside the region changed");

    // The short image:// form works as well, and the edit of an edit, from
    // a 2025-06-18 client too (the 2026-07-28 era is the task test's).
    let key = edited.split_once("/images/").unwrap().1.split('?').next().unwrap();
    let again = call_as(
        &stack,
        &token,
        "2025-06-18",
        "edit_image",
        json!({"prompt": "make it night", "images": [format!("image://{key}")]}),
    )
    .await;
    structured(&again);

    // Another organisation gets "not found" for the same references.
    let mallory = stack.token("mallory", "globex");
    for reference in [original.clone(), format!("image://{key}")] {
        let refused = call(
            &stack,
            &mallory,
            "edit_image",
            json!({"prompt": "x", "images": [reference]}),
        )
        .await;
        assert!(tool_error(&refused).contains("was not found"), "{refused}");
    }
    let events: Vec<Value> = stack
        .audit_events()
        .into_iter()
        .filter(|e| e["fields"]["tool"] == "edit_image")
        .collect();
    assert_eq!(
        events.iter().filter(|e| e["fields"]["outcome"] == "Success").count(),
        2,
        "{events:?}"
    );
}

#[tokio::test]
async fn uploads_are_one_time_signed_and_checked() {
    let stack = Stack::start_with(StackOptions {
        upstream_env: vec![
            ("GATEWAY_UPLOAD_MAX_BYTES".into(), "400000".into()),
            ("GATEWAY_EDIT_URL_HOSTS".into(), "127.0.0.1,localhost".into()),
        ],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");

    let (url, reference) = create_upload(&stack, &token, "image/png").await;
    assert!(url.starts_with(&format!("{}/uploads/acme/", stack.base_url)), "{url}");
    assert!(reference.starts_with("upload://"));
    // Before the bytes are there, the reference is not usable.
    let early = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": [reference]}),
    )
    .await;
    assert!(tool_error(&early).contains("PUT the bytes"), "{early}");
    let (status, body) = put(&url, "image/png", solid_png(1024, 1024)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["reference"], reference.as_str());
    let (again, body) = put(&url, "image/png", solid_png(1024, 1024)).await;
    assert_eq!(again, 409, "one time only: {body}");
    let edited = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": [reference]}),
    )
    .await;
    assert_eq!(structured(&edited)["size"], "1024x1024");
    let mallory = stack.token("mallory", "globex");
    let refused = call(
        &stack,
        &mallory,
        "edit_image",
        json!({"prompt": "x", "images": [reference]}),
    )
    .await;
    assert!(tool_error(&refused).contains("not found"), "{refused}");

    // Tampered, expired, wrong type, too large.
    let (url, reference) = create_upload(&stack, &token, "image/png").await;
    let tampered = url.replace("max=400000", "max=900000");
    assert_eq!(put(&tampered, "image/png", solid_png(8, 8)).await.0, 403);
    let expired = {
        let signer =
            mcp_image_gateway::storage::signed_url::UrlSigner::new(stack.url_keys().unwrap(), &stack.base_url).unwrap();
        let id = reference.trim_start_matches("upload://");
        signer.upload_url("acme", id, "png", 400_000, chrono::Utc::now().timestamp() - 5)
    };
    let (status, body) = put(&expired, "image/png", solid_png(8, 8)).await;
    assert_eq!(status, 403);
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");
    assert_eq!(put(&url, "image/jpeg", solid_png(8, 8)).await.0, 415, "type as signed");
    assert_eq!(
        put(&url, "image/png", b"not an image".to_vec()).await.0,
        415,
        "bytes are checked"
    );
    let mut big = solid_png(8, 8);
    big.resize(500_000, 0);
    let (status, body) = put(&url, "image/png", big).await;
    assert_eq!(status, 413, "{body}");
    let nothing = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": [reference]}),
    )
    .await;
    assert!(
        tool_error(&nothing).contains("PUT the bytes"),
        "nothing was stored: {nothing}"
    );

    // Inputs checked before any model: a decompression bomb, a mask of the
    // wrong size, local files, private addresses, non-references.
    let (bomb_url, bomb_ref) = create_upload(&stack, &token, "image/png").await;
    assert_eq!(put(&bomb_url, "image/png", bomb(100_000, 100_000)).await.0, 201);
    let (mask_url, mask_ref) = create_upload(&stack, &token, "image/png").await;
    assert_eq!(put(&mask_url, "image/png", clear_png(512, 512)).await.0, 201);
    let image = generate(&stack, &token).await;
    let cases = [
        (json!({"images": [bomb_ref]}), "100000x100000"),
        (json!({"images": [image.clone()], "mask": mask_ref}), "must match"),
        (json!({"images": ["file:///etc/passwd"]}), "never read"),
        (json!({"images": ["/etc/passwd"]}), "never read"),
        (json!({"images": ["https://127.0.0.1:1/x.png"]}), "private or reserved"),
        (json!({"images": ["https://example.com/x.png"]}), "allow-list"),
        (
            json!({"images": [image.clone()], "mask_region": {"x": 1000, "y": 0, "width": 100, "height": 10}}),
            "inside",
        ),
    ];
    let images_before = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["outcome"] == "Success")
        .count();
    for (mut arguments, message) in cases {
        arguments["prompt"] = json!("x");
        let reply = call(&stack, &token, "edit_image", arguments.clone()).await;
        let text = tool_error(&reply);
        assert!(text.contains(message), "{arguments}: {text}");
    }
    let images_after = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["outcome"] == "Success")
        .count();
    assert_eq!(images_before, images_after, "nothing was generated");
    // Both a mask and a region, or no images: argument errors.
    let both = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": [image], "mask": "upload://x", "mask_region": {"x": 0, "y": 0, "width": 1, "height": 1}}),
    )
    .await;
    assert!(tool_error(&both).contains("not both"));
}

#[tokio::test]
async fn openai_edits_are_multipart_with_every_part_checked() {
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions::default(),
        },
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let first = generate(&stack, &token).await;
    let second = generate(&stack, &token).await;
    let fake = stack.fake.as_ref().unwrap();
    let before = fake.requests().len();
    let reply = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "blend them", "images": [first, second], "input_fidelity": "high",
               "mask_region": {"x": 0, "y": 0, "width": 512, "height": 512}, "quality": "low"}),
    )
    .await;
    let out = structured(&reply);
    assert_eq!(out["model"], "gpt-image-2");
    let requests = fake.requests();
    assert_eq!(requests.len(), before + 1);
    let sent = &requests[before];
    assert_eq!(sent["prompt"], "blend them");
    assert_eq!(sent["model"], "gpt-image-2");
    assert_eq!(sent["input_fidelity"], "high");
    assert_eq!(sent["quality"], "low");
    assert_eq!(sent["size"], "1024x1024");
    assert!(sent.get("moderation").is_none(), "edits take no moderation parameter");
    let files = &sent["edit"];
    assert_eq!(files["images"].as_array().unwrap().len(), 2, "{files}");
    assert_eq!(files["images"][0]["content_type"], "image/png");
    assert_eq!(files["mask"]["width"], 1024);
    assert_eq!(files["mask"]["content_type"], "image/png");
    let (_, _, edited) = pixels(&fetch(out["image_urls"][0].as_str().unwrap()).await);
    assert!(!edited.is_empty());

    // Refused before the provider: a reference that is not an image of ours.
    let refused = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": ["data:image/png;base64,AAAA"]}),
    )
    .await;
    tool_error(&refused);
    assert_eq!(
        fake.requests().len(),
        before + 1,
        "no provider call for a refused input"
    );
}

#[tokio::test]
async fn an_edit_falls_back_to_the_next_model_that_edits() {
    let (stack, token, original) = stack_with_image(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions {
                failing_models: vec!["gpt-image-2".into()],
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![
            ("GATEWAY_FALLBACK_MODELS".into(), "gpt-image-1.5".into()),
            ("GATEWAY_MAX_ATTEMPTS".into(), "1".into()),
        ],
        ..StackOptions::default()
    })
    .await;
    let reply = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": [original]}),
    )
    .await;
    assert_eq!(structured(&reply)["model"], "gpt-image-1.5");
    let fake = stack.fake.as_ref().unwrap();
    let edits: Vec<Value> = fake
        .requests()
        .into_iter()
        .filter(|r| r.get("edit").is_some())
        .collect();
    let models: Vec<&str> = edits.iter().map(|r| r["model"].as_str().unwrap()).collect();
    assert_eq!(models, ["gpt-image-2", "gpt-image-1.5"]);
}

#[tokio::test]
async fn an_edit_runs_as_a_task_on_either_replica() {
    let (stack, token, original) = stack_with_image(StackOptions {
        upstream_replicas: 2,
        ..StackOptions::default()
    })
    .await;
    let client = connect_with_tasks(&stack.mcp_url, &token).await.unwrap();
    let arguments = json!({"prompt": "a lighthouse", "images": [original],
        "mask_region": {"x": 0, "y": 0, "width": 64, "height": 64}});
    let response = client
        .call_tool_once(
            CallToolRequestParams::new("edit_image").with_arguments(arguments.as_object().cloned().unwrap()),
        )
        .await
        .unwrap();
    let CallToolResponse::Task(created) = response else {
        panic!("expected a task, got {response:?}")
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let task = loop {
        let task = client
            .get_task(GetTaskParams::new(created.task.task_id.clone()))
            .await
            .unwrap()
            .task;
        if task.status().is_terminal() || Instant::now() > deadline {
            break task;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let TaskPayload::Completed { result } = &task.payload else {
        panic!("{task:?}")
    };
    assert_eq!(result["isError"], false, "{result:?}");
    let url = result["structuredContent"]["image_urls"][0].as_str().unwrap();
    fetch(url).await;
    client.cancel().await.unwrap();
}

/// Stability's in-painting service serves edits (`stable-image-inpaint`
/// behind SD3.5, which does not edit): our transparent-where-to-paint mask
/// goes out as its greyscale white-where-to-paint mask, the size kept.
#[tokio::test]
async fn stability_in_paints_with_its_own_mask_form() {
    let (stack, token, original) = stack_with_image(StackOptions {
        backend: Backend::FakeStability { rate_limit: None },
        upstream_env: vec![(
            "GATEWAY_FALLBACK_MODELS".into(),
            "stability:stable-image-inpaint".into(),
        )],
        ..StackOptions::default()
    })
    .await;
    let reply = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "a red door", "images": [original],
               "mask_region": {"x": 10, "y": 10, "width": 100, "height": 100}}),
    )
    .await;
    let out = structured(&reply);
    assert_eq!(
        out["model"], "stable-image-inpaint",
        "sd3.5-large was skipped: it does not edit"
    );
    assert_eq!(out["size"], "1024x1024");
    let fake = stack.stability.as_ref().unwrap();
    let sent = fake
        .requests()
        .into_iter()
        .find(|r| r["endpoint"] == "inpaint")
        .unwrap();
    assert_eq!(sent["prompt"], "a red door");
    assert_eq!(sent["image"]["size"], json!([1024, 1024]));
    assert_eq!(sent["mask"]["size"], json!([1024, 1024]));
    assert_eq!(sent["mask"]["greyscale"], true);
    // Generations still go to SD3.5: the in-painting model does not draw from a prompt alone.
    let generated = call(&stack, &token, "generate_image", json!({"prompt": "x"})).await;
    assert_eq!(structured(&generated)["model"], "sd3.5-large");
}

/// Edits draw on the organisation's daily image quota at the edge, like generations.
#[tokio::test]
async fn edits_count_against_the_daily_image_quota() {
    let (stack, token, original) = stack_with_image(StackOptions {
        filter_patch: json!({"rate_limits": {"daily_images_per_org": 3}}),
        ..StackOptions::default()
    })
    .await;
    let edit = json!({"prompt": "x", "images": [original], "n": 2});
    structured(&call(&stack, &token, "edit_image", edit.clone()).await);
    let refused = call(&stack, &token, "edit_image", edit).await;
    assert_eq!(
        refused["error"]["code"], -32029,
        "1 + 2 images used, 2 more would pass 3: {refused}"
    );
}

/// Self-hosted OpenAI-compatible servers get the classic edits dialect:
/// one `image` part, the mask, `response_format: b64_json`.
#[tokio::test]
async fn openai_compatible_servers_get_the_classic_edit_form() {
    let (stack, token, original) = stack_with_image(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "sdxl-local".into(),
            options: FakeOptions {
                compatible: true,
                ..FakeOptions::default()
            },
        },
        upstream_env: vec![("GATEWAY_BACKEND".into(), "openai-compatible".into())],
        ..StackOptions::default()
    })
    .await;
    let reply = call(
        &stack,
        &token,
        "edit_image",
        json!({"prompt": "x", "images": [original.clone(), original],
               "mask_region": {"x": 0, "y": 0, "width": 8, "height": 8}}),
    )
    .await;
    assert_eq!(structured(&reply)["model"], "sdxl-local");
    let fake = stack.fake.as_ref().unwrap();
    let sent = fake.requests().into_iter().find(|r| r.get("edit").is_some()).unwrap();
    assert_eq!(
        sent["edit"]["images"].as_array().unwrap().len(),
        1,
        "the classic API takes one image"
    );
    assert_eq!(sent["edit"]["mask"]["width"], 1024);
    assert_eq!(sent["response_format"], "b64_json");
    assert!(sent.get("quality").is_none());
}

/// A region edit of a 40 MP image (the input limit): its mask is drawn off
/// the async runtime (`media::blocking`), so other calls keep being answered
/// while it is encoded, even by an upstream with one runtime worker (a pod
/// with one CPU). Their latencies are printed for the report, never
/// asserted (a timed assertion would flake on a busy machine).
#[tokio::test]
async fn a_forty_megapixel_region_edit_leaves_other_calls_answered() {
    let stack = Stack::start_with(StackOptions {
        backend: Backend::FakeOpenAi {
            model: "gpt-image-2".into(),
            options: FakeOptions::default(),
        },
        upstream_env: vec![("TOKIO_WORKER_THREADS".into(), "1".into())],
        ..StackOptions::default()
    })
    .await
    .unwrap();
    let token = stack.token("alice", "acme");
    let (url, reference) = create_upload(&stack, &token, "image/png").await;
    let (status, body) = put(&url, "image/png", solid_png(8000, 5000)).await;
    assert_eq!(status, 201, "{body}");

    let edit = {
        let (mcp_url, token) = (stack.mcp_url.clone(), token.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let arguments = json!({"prompt": "a boat", "images": [reference],
                                   "mask_region": {"x": 100, "y": 100, "width": 4000, "height": 3000}});
            let reply = call_http(&mcp_url, &token, "2025-11-25", "edit_image", arguments).await;
            (reply, started.elapsed())
        })
    };
    let other = stack.token("bob", "acme");
    let mut latencies = Vec::new();
    // Within bob's burst (40) of the development rate limits.
    while !edit.is_finished() && latencies.len() < 35 {
        let started = Instant::now();
        let reply = gateway_tests::mcp_client::rpc(&stack.mcp_url, &other, "2025-11-25", "tools/list", json!({})).await;
        assert!(reply["result"]["tools"].is_array(), "{reply}");
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (reply, took) = edit.await.unwrap();
    let sent = structured(&reply);
    assert!(sent["image_urls"][0].is_string(), "{reply}");
    let fake = stack.fake.as_ref().unwrap();
    let mask = fake
        .requests()
        .into_iter()
        .find_map(|r| r.get("edit").cloned())
        .unwrap()["mask"]
        .clone();
    assert_eq!(
        (mask["width"].as_u64(), mask["height"].as_u64()),
        (Some(8000), Some(5000))
    );
    latencies.sort();
    eprintln!(
        "40 MP region edit took {took:?}; {} tools/list calls meanwhile: median {:?}, max {:?}",
        latencies.len(),
        latencies.get(latencies.len() / 2),
        latencies.last()
    );
}
