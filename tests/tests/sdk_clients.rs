//! The official MCP SDKs (Python 2.x in every protocol era, TypeScript)
//! call `generate_image` through Envoy and the edge filter: the strict
//! transport rules at the edge must not break real clients.

use gateway_tests::png_info::dimensions;
use gateway_tests::stack::{http_client, run_client, workspace_root};
use gateway_tests::Stack;
use serde_json::Value;

async fn check_result(report: &Value, size: (u32, u32), images: usize, field: &str) {
    let mut tools: Vec<&str> = report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    tools.sort();
    assert_eq!(
        tools,
        ["create_upload", "edit_image", "generate_image", "list_models"],
        "{report}"
    );
    assert_eq!(report["is_error"], false, "{report}");
    let urls = report["structured"]["image_urls"].as_array().unwrap();
    assert_eq!(urls.len(), images, "{report}");
    for url in urls {
        let bytes = http_client()
            .get(url.as_str().unwrap())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), size);
    }
    // Every SDK here speaks 2025-11-25 or later: a bad argument is a tool
    // error the model can read (SEP-1303), naming the field.
    assert_eq!(report["invalid_arguments"]["tool_error"], true, "{report}");
    let message = report["invalid_arguments"]["message"].as_str().unwrap();
    assert!(message.contains(field), "{report}");
}

#[tokio::test]
async fn python_sdk_in_every_protocol_era() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("pat", "acme");
    let python = workspace_root().join(".venv/bin/python");
    let script = "tests/clients/python_sdk_client.py";
    for (mode, expected_version) in [
        ("legacy", "2025-11-25"),
        ("auto", "2026-07-28"),
        ("2026-07-28", "2026-07-28"),
    ] {
        let report = run_client(python.to_str().unwrap(), &[script, &stack.mcp_url, &token, mode]);
        assert_eq!(report["protocol_version"], expected_version, "mode {mode}: {report}");
        check_result(&report, (1024, 1536), 1, "`n`").await;
    }
    // `n: 9` dies at the edge, so only the three successes reach the upstream's audit log.
    assert_eq!(stack.audit_events().len(), 3);
}

#[tokio::test]
async fn typescript_sdk() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("tess", "acme");
    let report = run_client("node", &["tests/clients/ts_sdk_client.mjs", &stack.mcp_url, &token]);
    check_result(&report, (1024, 1024), 2, "`size`").await;
}

/// The edit flow as a Python SDK user writes it: generate, create_upload +
/// PUT, edit the upload by region, edit the generated image by its link.
#[tokio::test]
async fn python_sdk_edits_by_upload_and_by_link() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("pat", "acme");
    let png = stack.state_dir.join("photo.png");
    std::fs::write(&png, gateway_tests::fake_openai::solid_png(1024, 768)).unwrap();
    let python = workspace_root().join(".venv/bin/python");
    let report = run_client(
        python.to_str().unwrap(),
        &[
            "tests/clients/python_edit_client.py",
            &stack.mcp_url,
            &token,
            png.to_str().unwrap(),
        ],
    );
    assert_eq!(report["put_status"], 201, "{report}");
    assert_eq!(
        report["tools"],
        serde_json::json!(["create_upload", "edit_image", "generate_image", "list_models"])
    );
    for (step, size) in [("from_upload", (1024, 768)), ("from_link", (1024, 1024))] {
        assert_eq!(report[step]["is_error"], false, "{step}: {report}");
        let out = &report[step]["structured"];
        assert_eq!(
            out["size"],
            format!("{}x{}", size.0, size.1),
            "{step}: the input's size is kept"
        );
        let url = out["image_urls"][0].as_str().unwrap();
        let bytes = http_client().get(url).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(dimensions(&bytes).unwrap(), size, "{step}");
    }
}

/// RGB of each pixel of a PNG link (the offline preview's output).
async fn pixels(url: &str) -> (u32, u32, Vec<[u8; 3]>) {
    let bytes = http_client().get(url).send().await.unwrap().bytes().await.unwrap();
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes.to_vec()));
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{url} is not in colour");
    buf.truncate(info.buffer_size());
    let rgb = buf.chunks(channels).map(|p| [p[0], p[1], p[2]]).collect();
    (info.width, info.height, rgb)
}

/// Which pixels differ between two images of one size.
async fn changed(original: &Value, edited: &Value) -> (u32, Vec<bool>) {
    let (w, h, before) = pixels(original.as_str().unwrap()).await;
    let (w2, h2, after) = pixels(edited.as_str().unwrap()).await;
    assert_eq!((w, h), (w2, h2), "an edit keeps the image's size");
    let diff = before.iter().zip(&after).map(|(a, b)| a != b).collect();
    (w, diff)
}

/// Pixels inside the region all changed, and none outside it.
async fn only_region_changed(case: &Value) {
    let (width, diff) = changed(&case["original"], &case["edited"]).await;
    let r = |k: &str| case["region"][k].as_u64().unwrap() as u32;
    let (x0, y0, x1, y1) = (r("x"), r("y"), r("x") + r("width"), r("y") + r("height"));
    for (i, changed) in diff.iter().enumerate() {
        let (x, y) = (i as u32 % width, i as u32 / width);
        let inside = (x0..x1).contains(&x) && (y0..y1).contains(&y);
        assert_eq!(*changed, inside, "pixel ({x}, {y}) of {case}");
    }
}

/// The image studio MCP App in headless Debian Chromium: a host built on
/// the SDK's AppBridge calls generate_image through Envoy and renders the
/// app; a person draws a rectangle, paints a brush stroke, and works by
/// keyboard alone; the offline preview shows exactly which pixels the
/// edits touched.
#[tokio::test]
async fn image_studio_in_a_browser() {
    let stack = Stack::start().await.unwrap();
    let token = stack.token("dana", "acme");
    let out = stack.state_dir.to_str().unwrap().to_string();
    let report = run_client("node", &["app/test/studio.mjs", &stack.mcp_url, &token, &out]);

    // The tool links the app; the app's policy names only the gateway.
    let uri = "ui://image-studio/app.html";
    let origin = stack.base_url.trim_end_matches('/');
    assert_eq!(report["host"]["uri"], uri, "{report}");
    assert_eq!(report["host"]["mimeType"], "text/html;profile=mcp-app");
    assert_eq!(report["host"]["toolMeta"]["openai/outputTemplate"], uri);
    assert_eq!(
        report["host"]["csp"],
        serde_json::json!({"resourceDomains": [origin], "connectDomains": [origin]})
    );

    // Only authenticated callers read it: without a token the edge refuses.
    let anonymous = http_client()
        .post(&stack.mcp_url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .json(&serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": uri}}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(anonymous.headers().contains_key("www-authenticate"));

    // The selected image's Content Credentials, as the app shows them: the
    // model, AI-made, the signer, and for an edit the image it came from.
    let generated = &report["host"]["generated"]["content_credentials"][0];
    let shown = &report["credentials"]["generated"];
    assert_eq!(shown["Made by"], generated["software_agent"], "{report}");
    assert_eq!(shown["Made by"], "offline-preview (offline-preview)");
    assert_eq!(shown["Kind"], "AI-generated (trained algorithmic media)");
    assert_eq!(shown["Signed by"], generated["signer"]);
    assert_eq!(shown["Manifest"], generated["manifest_label"]);
    assert!(shown.get("Edited from").is_none(), "{shown}");
    let edited = &report["credentials"]["edited"];
    assert_eq!(edited["Edited from"], "Image 1", "{report}");
    assert_eq!(edited["Signed by"], generated["signer"]);
    assert_ne!(edited["Manifest"], generated["manifest_label"]);

    only_region_changed(&report["rect"]).await;
    only_region_changed(&report["keyboard"]).await;
    assert_eq!(
        report["keyboard"]["region"],
        serde_json::json!({"x": 100, "y": 600, "width": 200, "height": 150})
    );

    // The brush: every point the stroke passed changed; nothing beyond its reach did.
    let brush = &report["brush"];
    let (width, diff) = changed(&brush["original"], &brush["edited"]).await;
    let points: Vec<(f64, f64)> = brush["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["x"].as_f64().unwrap(), p["y"].as_f64().unwrap()))
        .collect();
    // Half the brush, plus a display pixel or two of pointer rounding (at ~2 image pixels each).
    let reach = brush["width"].as_f64().unwrap() / 2.0 + 4.0;
    let near_stroke = |x: f64, y: f64| {
        points.windows(2).any(|seg| {
            let ((ax, ay), (bx, by)) = (seg[0], seg[1]);
            let (dx, dy) = (bx - ax, by - ay);
            let t = (((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy)).clamp(0.0, 1.0);
            ((x - ax - t * dx).powi(2) + (y - ay - t * dy).powi(2)).sqrt() <= reach
        })
    };
    let mut count = 0;
    for (i, changed) in diff.iter().enumerate().filter(|(_, c)| **c) {
        let (x, y) = ((i as u32 % width) as f64, (i as u32 / width) as f64);
        assert!(
            *changed && near_stroke(x, y),
            "pixel ({x}, {y}) changed away from the stroke {points:?} reach {reach}"
        );
        count += 1;
    }
    for (x, y) in &points {
        assert!(
            diff[(*y as u32 * width + *x as u32) as usize],
            "stroke point ({x}, {y}) unchanged"
        );
    }
    assert!(count > 1000, "the stroke changed only {count} pixels");

    // Variations, open and download went through the host.
    assert_eq!(report["variation_label"], "Image 5: a lighthouse at dusk");
    assert_eq!(report["opened"], serde_json::json!([report["selected"]]));
    assert_eq!(report["downloads"][0]["contents"][0]["uri"], report["selected"]);
    // Theme and size follow the host.
    assert_ne!(report["dark_background"], "rgb(255, 255, 255)", "{report}");
    assert!(report["sizes"].as_u64().unwrap() > 0, "the app reports its size");
    // The CSP: nothing reaches another origin, our images do.
    let probe = &report["csp_probe"];
    assert_eq!(probe["fetchOther"], "blocked", "{probe}");
    assert_eq!(probe["imgOther"], "blocked", "{probe}");
    assert_eq!(probe["fetchOurs"], 200, "{probe}");
    let directives: Vec<&str> = probe["violations"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["directive"].as_str())
        .collect();
    assert!(
        directives.contains(&"connect-src") && directives.contains(&"img-src"),
        "{probe}"
    );
    assert_eq!(
        report["probes_received"], 0,
        "a blocked request reached the other origin"
    );
    // Allowed: the violations provoked above, and the host's GET /mcp that a
    // stateless server answers 405 (the SDK then works without a stream).
    let errors: Vec<&Value> = report["console_errors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            let text = e["text"].as_str().unwrap_or_default();
            let provoked = text.contains("Content Security Policy") || text.contains("probe-");
            let stream_refused = e["url"] == stack.mcp_url.as_str() && text.contains("405");
            !provoked && !stream_refused
        })
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    let shot = std::fs::read(stack.state_dir.join("image-studio.png")).unwrap();
    assert!(dimensions(&shot).is_ok(), "a screenshot of the studio is saved");
    // Kept for a person to look at (docs/src/images/image-studio.png is a copy of one).
    std::fs::write(workspace_root().join("target/image-studio.png"), &shot).unwrap();
    // Every edit was a real call through the edge: 1 generation, 3 edits, 1 variation.
    let tools: Vec<String> = stack
        .audit_events()
        .iter()
        .filter(|e| e["fields"]["event"] == "tool_call")
        .filter_map(|e| e["fields"]["tool"].as_str().map(str::to_string))
        .collect();
    assert_eq!(tools.iter().filter(|t| *t == "edit_image").count(), 3, "{tools:?}");
    assert_eq!(tools.iter().filter(|t| *t == "generate_image").count(), 2, "{tools:?}");
}
