//! The deployment artefacts are valid: Kubernetes manifests against the
//! 1.30 schema, the filter settings in the Istio WasmPlugin and the gateway
//! config accepted by the filter itself, the rendered Envoy config current
//! and valid, and the OCI image layout well formed.

use std::process::Command;

use gateway_tests::stack::{envoy_binary, workspace_root};
use mcp_edge_filter::config::FilterConfig;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{program} {args:?}:\n{text}");
    text
}

#[test]
fn kubernetes_manifests_validate_offline() {
    let validate = workspace_root().join(".venv/bin/kubernetes-validate");
    let files = [
        "deploy/namespace.yaml",
        "deploy/upstream/configmap.yaml",
        "deploy/upstream/deployment.yaml",
        "deploy/upstream/service.yaml",
        "deploy/upstream/pdb.yaml",
        "deploy/upstream/hpa.yaml",
        "deploy/gateway/deployment.yaml",
        "deploy/gateway/service.yaml",
        "deploy/ratelimit/deployment.yaml",
        "deploy/ratelimit/redis.yaml",
        "deploy/onprem/networkpolicy.yaml",
        "deploy/onprem/configmap-patch.yaml",
    ];
    let mut args = vec!["--strict", "-k", "1.30.0"];
    args.extend(files);
    let out = run(validate.to_str().unwrap(), &args);
    let resources: usize = files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(workspace_root().join(f)).unwrap();
            1 + text.lines().filter(|l| *l == "---").count()
        })
        .sum();
    assert_eq!(out.matches("passed for resource").count(), resources, "{out}");
}

#[test]
fn filter_settings_in_deploy_are_accepted_by_the_filter() {
    let python = workspace_root().join(".venv/bin/python");
    let plugin = run(
        python.to_str().unwrap(),
        &[
            "-c",
            "import json,yaml,sys; d=yaml.safe_load(open('deploy/istio/wasmplugin.yaml')); print(json.dumps(d))",
        ],
    );
    let plugin: Value = serde_json::from_str(plugin.trim()).unwrap();
    assert_eq!(plugin["apiVersion"], "extensions.istio.io/v1alpha1");
    assert_eq!(plugin["kind"], "WasmPlugin");
    assert!(plugin["spec"]["url"].as_str().unwrap().starts_with("oci://"));
    let config = plugin["spec"]["pluginConfig"].to_string();
    FilterConfig::from_json(config.as_bytes()).unwrap_or_else(|e| panic!("WasmPlugin pluginConfig refused: {e}"));
    let gateway = std::fs::read(workspace_root().join("deploy/gateway/filter-config.json")).unwrap();
    FilterConfig::from_json(&gateway).unwrap_or_else(|e| panic!("gateway filter-config.json refused: {e}"));
    let limits = mcp_ratelimit::limits_file::load(&workspace_root().join("deploy/ratelimit/limits.json"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(limits.iter().any(|l| l.name() == Some("org-daily-images")));
}

#[test]
fn gateway_envoy_config_is_current_and_valid() {
    let dir = std::env::temp_dir().join(format!("deploy-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let fresh = dir.join("envoy.yaml");
    let bin = workspace_root().join("target/debug/mcp-image-gateway");
    run(
        bin.to_str().unwrap(),
        &[
            "render-envoy",
            "--template",
            "envoy/envoy.yaml.tmpl",
            "--out",
            fresh.to_str().unwrap(),
            "--set",
            "LISTEN_ADDRESS=0.0.0.0",
            "--set",
            "LISTEN_PORT=8080",
            "--set",
            "ADMIN_ADDRESS=0.0.0.0",
            "--set",
            "ADMIN_PORT=9901",
            "--set",
            "UPSTREAM_ADDRESS=mcp-upstream.mcp-images.svc.cluster.local",
            "--set",
            "UPSTREAM_CLUSTER_TYPE=STRICT_DNS",
            "--set",
            "UPSTREAM_PORT=8081",
            "--set",
            "WASM_PATH=/etc/envoy-wasm/mcp_edge_filter.wasm",
            "--set-file",
            "FILTER_CONFIG=deploy/gateway/filter-config.json",
            "--set-file",
            "EXTRA_CLUSTERS=deploy/gateway/clusters.yaml",
        ],
    );
    let committed = std::fs::read_to_string(workspace_root().join("deploy/gateway/envoy.yaml")).unwrap();
    let fresh_text = std::fs::read_to_string(&fresh).unwrap();
    assert_eq!(
        committed, fresh_text,
        "deploy/gateway/envoy.yaml is stale: run `make deploy-render`"
    );
    // Validate with the filter where this machine has it.
    let wasm = workspace_root().join("target/wasm32-wasip1/release/mcp_edge_filter.wasm");
    let local = fresh_text.replace("/etc/envoy-wasm/mcp_edge_filter.wasm", wasm.to_str().unwrap());
    std::fs::write(&fresh, local).unwrap();
    let out = run(
        envoy_binary().to_str().unwrap(),
        &["--mode", "validate", "-c", fresh.to_str().unwrap()],
    );
    assert!(out.contains("OK"), "{out}");
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn oci_image_layout_holds_the_filter() {
    let dir = std::env::temp_dir().join(format!("oci-{}", uuid::Uuid::new_v4()));
    let wasm = workspace_root().join("target/wasm32-wasip1/release/mcp_edge_filter.wasm");
    run(
        "python3",
        &[
            "scripts/build-wasm-oci.py",
            wasm.to_str().unwrap(),
            dir.to_str().unwrap(),
            "9.9.9",
        ],
    );
    let blob = |digest: &str| {
        let bytes = std::fs::read(dir.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).unwrap();
        assert_eq!(
            format!("sha256:{}", hex(&Sha256::digest(&bytes))),
            digest,
            "blob content matches its digest"
        );
        bytes
    };
    let layout: Value = serde_json::from_slice(&std::fs::read(dir.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(layout["imageLayoutVersion"], "1.0.0");
    let index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(entry["annotations"]["org.opencontainers.image.ref.name"], "9.9.9");
    let manifest: Value = serde_json::from_slice(&blob(entry["digest"].as_str().unwrap())).unwrap();
    assert_eq!(manifest["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    blob(manifest["config"]["digest"].as_str().unwrap());
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
    let layer_path = dir
        .join("blobs/sha256")
        .join(layer["digest"].as_str().unwrap().trim_start_matches("sha256:"));
    blob(layer["digest"].as_str().unwrap());
    let extract = dir.join("extract");
    std::fs::create_dir_all(&extract).unwrap();
    run(
        "tar",
        &["-xzf", layer_path.to_str().unwrap(), "-C", extract.to_str().unwrap()],
    );
    assert_eq!(
        std::fs::read(extract.join("plugin.wasm")).unwrap(),
        std::fs::read(&wasm).unwrap()
    );
    std::fs::remove_dir_all(dir).unwrap();
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
