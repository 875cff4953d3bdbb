//! The deployment artefacts are valid: Kubernetes manifests against the
//! 1.30 schema and through Checkov with no failed check, NetworkPolicies
//! allowing exactly the architecture's flows, the filter settings in the
//! Istio WasmPlugin and the gateway config accepted by the filter itself, the
//! rendered Envoy config current and valid, and the OCI image layout well
//! formed; and every alert has its runbook page in the book, and every page its alert.

use std::collections::BTreeSet;
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

/// What `program` writes on stdout (its stderr may carry warnings).
fn stdout_of(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The gateway's filter settings read the identity assertion key from
/// Envoy's environment (a Secret in the cluster); give it one here.
fn with_assertion_key_env() {
    std::env::set_var("MCP_IDENTITY_ASSERTION_KEY", "ab".repeat(32));
}

#[test]
fn kubernetes_manifests_validate_offline() {
    let validate = workspace_root().join(".venv/bin/kubernetes-validate");
    let files = [
        "deploy/namespace/namespace.yaml",
        "deploy/namespace/networkpolicy.yaml",
        "deploy/upstream/configmap.yaml",
        "deploy/upstream/content-policy.yaml",
        "deploy/upstream/deployment.yaml",
        "deploy/upstream/service.yaml",
        "deploy/upstream/pdb.yaml",
        "deploy/upstream/hpa.yaml",
        "deploy/upstream/networkpolicy.yaml",
        "deploy/gateway/deployment.yaml",
        "deploy/gateway/service.yaml",
        "deploy/gateway/pdb.yaml",
        "deploy/gateway/hpa.yaml",
        "deploy/gateway/networkpolicy.yaml",
        "deploy/ratelimit/deployment.yaml",
        "deploy/ratelimit/redis.yaml",
        "deploy/ratelimit/networkpolicy.yaml",
        "deploy/onprem/networkpolicy.yaml",
        "deploy/onprem/configmap-patch.yaml",
        "deploy/onprem/content-policy-patch.yaml",
        "deploy/models/sd3-pool.yaml",
        "deploy/models/networkpolicy.yaml",
        "deploy/istio/networkpolicy.yaml",
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
    with_assertion_key_env();
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
    let config = FilterConfig::from_json(&gateway).unwrap();
    assert!(config.assertion.is_some(), "the gateway signs identity assertions");
    let unset = String::from_utf8(gateway)
        .unwrap()
        .replace("MCP_IDENTITY_ASSERTION_KEY", "MCP_IDENTITY_ASSERTION_KEY_UNSET");
    assert!(
        FilterConfig::from_json(unset.as_bytes()).is_err(),
        "a missing key is refused at configure time"
    );
}

/// The content policy in deploy/ is one the upstream accepts, mounted where
/// the upstream reads it.
#[test]
fn the_content_policy_in_deploy_is_accepted() {
    let policies_in = |file: &str| {
        let config = &load(file)[0];
        let text = config["data"]["content-policy.json"].as_str().unwrap().to_string();
        let spec: mcp_image_gateway::policy::rules::PolicyFileSpec = serde_json::from_str(&text).unwrap();
        mcp_image_gateway::policy::rules::ContentPolicies::new(&spec).unwrap()
    };
    // On-prem has no moderation model in the cluster: its patch checks terms only.
    let onprem = policies_in("deploy/onprem/content-policy-patch.yaml");
    assert!(!onprem.for_org("anyone").moderates_prompts());
    assert_eq!(onprem.for_org("anyone").denied_term("a bazooka"), Some("weapons"));
    let kustomization = std::fs::read_to_string(workspace_root().join("deploy/onprem/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("content-policy-patch.yaml"));
    let policies = policies_in("deploy/upstream/content-policy.yaml");
    // Every model it names is one the shipped catalogue knows (else the upstream refuses the file).
    let catalog = mcp_image_gateway::routing::catalog::ModelCatalog::builtin().unwrap();
    policies.check_image_models(|m| catalog.get(m).is_some()).unwrap();
    assert!(policies.for_org("kids-app").moderates_images_of("gpt-image-2"));
    assert!(!policies.for_org("anyone").moderates_images_of("gpt-image-2"));
    assert_eq!(policies.for_org("anyone").denied_term("a Bazooka"), Some("weapons"));
    let upstream = std::fs::read_to_string(workspace_root().join("deploy/upstream/deployment.yaml")).unwrap();
    assert!(upstream.contains("value: /etc/mcp/policy/content-policy.json"));
    assert!(upstream.contains("name: mcp-content-policy"));
}

/// The YAML documents of a file under the workspace, as JSON.
fn load(file: &str) -> Vec<Value> {
    let python = workspace_root().join(".venv/bin/python");
    let script = format!("import json,yaml; print(json.dumps(list(yaml.safe_load_all(open('{file}')))))");
    serde_json::from_str(run(python.to_str().unwrap(), &["-c", &script]).trim()).unwrap()
}

/// The self-hosted GPU pool: a Deployment asking for a GPU on GPU nodes,
/// ready when its server answers, and a KEDA ScaledObject (valid against
/// KEDA's CRD schema) scaling it from zero on metrics the upstream exports.
#[test]
fn the_gpu_pool_scales_from_zero_on_the_gateways_demand() {
    let out = run(
        "node",
        &["tests/clients/validate_keda.mjs", "deploy/models/scaledobject.yaml"],
    );
    assert_eq!(out.trim(), "valid ScaledObject sd3-pool", "{out}");
    let pool = load("deploy/models/sd3-pool.yaml");
    let deployment = pool.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let spec = &deployment["spec"]["template"]["spec"];
    let container = &spec["containers"][0];
    assert_eq!(container["resources"]["requests"]["nvidia.com/gpu"], "1");
    assert_eq!(container["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(spec["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert!(spec["tolerations"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["key"] == "nvidia.com/gpu"));
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    let config = pool.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let model_config: String = config["data"]["sd3-medium.yaml"].as_str().unwrap().to_string();
    assert!(model_config.starts_with("name: sd3-medium\n"), "{model_config}");

    let scaled = &load("deploy/models/scaledobject.yaml")[0];
    assert_eq!(scaled["spec"]["scaleTargetRef"]["name"], deployment["metadata"]["name"]);
    assert_eq!(scaled["spec"]["minReplicaCount"], 0);
    let trigger = &scaled["spec"]["triggers"][0];
    assert_eq!(trigger["type"], "prometheus");
    let query = trigger["metadata"]["query"].as_str().unwrap();
    // Every series the query reads is one the upstream writes, through the
    // calls the pool code makes, for this model.
    let metrics = mcp_image_gateway::telemetry::metrics::Metrics::new();
    metrics.pool_queued("sd3-medium", "acme", 1);
    metrics.pool_in_flight("sd3-medium", "acme", 1);
    metrics.capacity_spill("sd3-medium", "unavailable");
    let exposition = metrics.encode();
    for (series, written) in [
        (
            "mcp_gateway_pool_queued{model=\"sd3-medium\"}",
            "mcp_gateway_pool_queued{model=\"sd3-medium\",org=\"acme\"} 1",
        ),
        (
            "mcp_gateway_pool_in_flight{model=\"sd3-medium\"}",
            "mcp_gateway_pool_in_flight{model=\"sd3-medium\",org=\"acme\"} 1",
        ),
        (
            "mcp_gateway_capacity_spills_total{model=\"sd3-medium\",reason=\"unavailable\"}",
            "mcp_gateway_capacity_spills_total{model=\"sd3-medium\",reason=\"unavailable\"} 1",
        ),
    ] {
        assert!(exposition.contains(written), "{written} in\n{exposition}");
        assert!(query.contains(series), "{series} in {query}");
    }
}

/// In Istio the edge's decision reaches span tags through an `EnvoyFilter`
/// on the ingress gateway's connection manager: the same tags as the Envoy
/// template's tracing block.
#[test]
fn istio_span_tags_match_the_envoy_template() {
    let patch = &load("deploy/istio/trace-tags.yaml")[0];
    assert_eq!(
        (patch["apiVersion"].as_str(), patch["kind"].as_str()),
        (Some("networking.istio.io/v1alpha3"), Some("EnvoyFilter"))
    );
    assert_eq!(patch["spec"]["workloadSelector"]["labels"]["istio"], "ingressgateway");
    let config = &patch["spec"]["configPatches"][0];
    assert_eq!(config["applyTo"], "NETWORK_FILTER");
    assert_eq!(config["match"]["context"], "GATEWAY");
    assert_eq!(
        config["match"]["listener"]["filterChain"]["filter"]["name"],
        "envoy.filters.network.http_connection_manager"
    );
    assert_eq!(config["patch"]["operation"], "MERGE");
    let hcm = &config["patch"]["value"]["typed_config"];
    assert_eq!(
        hcm["@type"],
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let template = std::fs::read_to_string(workspace_root().join("envoy/tracing.yaml.tmpl")).unwrap();
    let rendered = template
        .replace("${SAMPLING_PERCENT}", "100")
        .replace("${SERVICE_NAME}", "edge");
    let dir = std::env::temp_dir().join(format!("tags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tracing.yaml");
    std::fs::write(&file, rendered).unwrap();
    let envoy = &load(file.to_str().unwrap())[0];
    let _ = std::fs::remove_dir_all(&dir);
    let tags = envoy["tracing"]["custom_tags"].as_array().unwrap();
    assert!(tags.len() >= 9);
    assert_eq!(&hcm["tracing"]["custom_tags"], &envoy["tracing"]["custom_tags"]);
    // Istio's Wasm filter state carries the `wasm.` prefix: every tag reads it.
    assert!(tags
        .iter()
        .all(|t| t["value"].as_str().unwrap().contains("%FILTER_STATE(wasm.mcp_edge.")));
}

/// The upstream takes MCP traffic only from the gateway, in both variants:
/// a NetworkPolicy in the base manifests, and in Istio an AuthorizationPolicy
/// for the ingress gateway's identity with mTLS required.
#[test]
fn only_the_gateway_reaches_the_upstream() {
    let kustomization = std::fs::read_to_string(workspace_root().join("deploy/upstream/kustomization.yaml")).unwrap();
    assert!(kustomization.contains("- networkpolicy.yaml"));
    let policy = &load("deploy/upstream/networkpolicy.yaml")[0];
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "mcp-upstream"
    );
    let rules = policy["spec"]["ingress"].as_array().unwrap();
    let port_of = |rule: &Value| rule["ports"][0]["port"].as_u64().unwrap();
    let mcp = rules.iter().find(|r| port_of(r) == 8081).unwrap();
    assert_eq!(
        mcp["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        "mcp-gateway"
    );
    let metrics = rules.iter().find(|r| port_of(r) == 9464).unwrap();
    assert_eq!(
        metrics["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
    assert_eq!(rules.len(), 2, "no other ingress");

    let istio = load("deploy/istio/authorizationpolicy.yaml");
    let authz = istio.iter().find(|d| d["kind"] == "AuthorizationPolicy").unwrap();
    assert_eq!(authz["apiVersion"], "security.istio.io/v1");
    assert_eq!(authz["spec"]["action"], "ALLOW");
    let rules = authz["spec"]["rules"].as_array().unwrap();
    let to_port = |rule: &Value| rule["to"][0]["operation"]["ports"][0].as_str().unwrap().to_string();
    let mcp = rules.iter().find(|r| to_port(r) == "8081").unwrap();
    assert_eq!(
        mcp["from"][0]["source"]["principals"],
        serde_json::json!(["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"])
    );
    assert!(rules.iter().all(|r| ["8081", "9464"].contains(&to_port(r).as_str())));
    // Traces: the Telemetry resource names a provider the mesh config declares.
    let telemetry = &load("deploy/istio/telemetry.yaml")[0];
    assert_eq!(
        (telemetry["apiVersion"].as_str(), telemetry["kind"].as_str()),
        (Some("telemetry.istio.io/v1"), Some("Telemetry"))
    );
    let provider = telemetry["spec"]["tracing"][0]["providers"][0]["name"].clone();
    let mesh = &load("deploy/istio/mesh-tracing.yaml")[0];
    let declared = mesh["spec"]["meshConfig"]["extensionProviders"].as_array().unwrap();
    let otel = declared
        .iter()
        .find(|p| p["name"] == provider)
        .expect("the provider is declared");
    assert_eq!(otel["opentelemetry"]["port"], 4317);
    let upstream = std::fs::read_to_string(workspace_root().join("deploy/upstream/deployment.yaml")).unwrap();
    assert!(upstream.contains(&format!(
        "http://{}:4317",
        otel["opentelemetry"]["service"].as_str().unwrap()
    )));
    let peer = istio.iter().find(|d| d["kind"] == "PeerAuthentication").unwrap();
    assert_eq!(peer["spec"]["mtls"]["mode"], "STRICT");
    for doc in &istio {
        assert_eq!(
            doc["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
            "mcp-upstream"
        );
    }
}

#[test]
fn gateway_envoy_config_is_current_and_valid() {
    with_assertion_key_env();
    // As `make deploy-render` (DEPLOY_OTEL): traces to the cluster's collector.
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "http://otel-collector.observability.svc.cluster.local:4317",
    );
    std::env::set_var("OTEL_SERVICE_NAME", "mcp-image-gateway");
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
            "AUTHORIZE_ADDRESS=mcp-authorize.mcp-images.svc.cluster.local",
            "--set",
            "AUTHORIZE_CLUSTER_TYPE=STRICT_DNS",
            "--set",
            "AUTHORIZE_PORT=8082",
            "--set",
            "XFF_TRUSTED_HOPS=1",
            "--set",
            "UPSTREAM_PORT=8081",
            "--set",
            "WASM_PATH=/etc/envoy-wasm/mcp_edge_filter.wasm",
            "--set",
            r"CORS_ORIGIN_REGEX=^https://app\.example\.com$",
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

/// Checkov, the scanner platform teams put manifests through before they
/// reach a cluster (pinned in scripts/ensure-checkov.sh), fails no check on
/// deploy/ as committed nor as rendered (the base kustomization with the
/// gateway's Envoy config, and the on-prem overlay). A check that does not
/// fit is skipped in the manifest itself (`checkov.io/skipN: ID=reason`),
/// never here.
#[test]
fn checkov_fails_no_check_on_the_manifests() {
    let checkov = stdout_of("scripts/ensure-checkov.sh", &[]).trim().to_string();
    let venv_kubectl = workspace_root().join(&checkov).with_file_name("kubectl");
    let kubectl = if venv_kubectl.exists() {
        venv_kubectl.to_str().unwrap().to_string()
    } else {
        "kubectl".to_string()
    };
    let rendered = std::env::temp_dir().join(format!("checkov-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&rendered).unwrap();
    for (file, kustomization) in [("base.yaml", "deploy"), ("onprem.yaml", "deploy/onprem")] {
        let manifests = stdout_of(&kubectl, &["kustomize", kustomization]);
        std::fs::write(rendered.join(file), manifests).unwrap();
    }
    for (target, at_least) in [("deploy", 400), (rendered.to_str().unwrap(), 600)] {
        // Offline (--skip-download) and bounded: a hung scanner fails the test.
        let output = Command::new("timeout")
            .args(["300", &checkov, "-d", target, "--framework", "kubernetes"])
            .args(["--skip-download", "--compact", "--output", "json"])
            .current_dir(workspace_root())
            .output()
            .unwrap();
        let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
            panic!(
                "checkov on {target}: {e}\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
        });
        let results = &report["results"];
        let failed: Vec<String> = results["failed_checks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                format!(
                    "{} {} {} ({})",
                    c["check_id"], c["resource"], c["file_path"], c["check_name"]
                )
            })
            .collect();
        assert!(failed.is_empty(), "checkov on {target} failed:\n{}", failed.join("\n"));
        assert!(output.status.success(), "checkov on {target} exited {}", output.status);
        let summary = &report["summary"];
        assert_eq!(summary["parsing_errors"], 0, "{summary}");
        assert!(
            summary["passed"].as_u64().unwrap() >= at_least,
            "scanned too little: {summary}"
        );
        for skipped in results["skipped_checks"].as_array().unwrap() {
            let reason = skipped["check_result"]["suppress_comment"].as_str().unwrap_or_default();
            assert!(reason.len() >= 40, "a skip needs its reason: {skipped}");
        }
    }
    std::fs::remove_dir_all(rendered).unwrap();
}

/// Every pod sits behind the namespace's default deny, and its own
/// NetworkPolicy opens exactly the architecture's flows (the README's table);
/// inside the namespace each egress has its ingress on the other side.
#[test]
fn network_policies_allow_exactly_the_architectures_flows() {
    let mut policies = load("deploy/namespace/networkpolicy.yaml");
    let deny = policies[0].clone();
    assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
    assert_eq!(deny["spec"]["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert!(deny["spec"].get("ingress").is_none() && deny["spec"].get("egress").is_none());
    for file in ["gateway", "upstream", "ratelimit", "models", "authorize"] {
        policies.extend(load(&format!("deploy/{file}/networkpolicy.yaml")));
    }
    let peer = |peer: &Value| -> String {
        if let Some(cidr) = peer["ipBlock"]["cidr"].as_str() {
            return format!("{cidr} except {}", peer["ipBlock"]["except"]);
        }
        let pod = peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"].as_str();
        let ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"].as_str();
        format!(
            "{}{}",
            ns.map(|n| format!("ns/{n}")).unwrap_or_default(),
            pod.unwrap_or_default()
        )
    };
    let mut flows = BTreeSet::new();
    for policy in &policies[1..] {
        let spec = &policy["spec"];
        assert_eq!(
            spec["policyTypes"],
            serde_json::json!(["Ingress", "Egress"]),
            "{policy}"
        );
        let pod = spec["podSelector"]["matchLabels"]["app.kubernetes.io/name"]
            .as_str()
            .unwrap();
        for (direction, peers) in [("ingress", "from"), ("egress", "to")] {
            for rule in spec[direction].as_array().into_iter().flatten() {
                for other in rule[peers].as_array().unwrap() {
                    let (from, to) = match direction {
                        "ingress" => (peer(other), pod.to_string()),
                        _ => (pod.to_string(), peer(other)),
                    };
                    for port in rule["ports"].as_array().unwrap() {
                        let port = format!("{}/{}", port["protocol"].as_str().unwrap(), port["port"]);
                        flows.insert(format!("{direction}: {from} -> {to} {port}"));
                    }
                }
            }
        }
    }
    let internet = "0.0.0.0/0 except [\"169.254.0.0/16\"]";
    let dns = |pod: &str| {
        [
            format!("egress: {pod} -> ns/kube-system UDP/53"),
            format!("egress: {pod} -> ns/kube-system TCP/53"),
        ]
    };
    let mut expected: BTreeSet<String> = [
        "ingress: ns/ingress-nginx -> mcp-gateway TCP/8080".to_string(),
        "ingress: ns/monitoring -> mcp-gateway TCP/9901".into(),
        "ingress: mcp-gateway -> mcp-upstream TCP/8081".into(),
        "ingress: ns/monitoring -> mcp-upstream TCP/9464".into(),
        "ingress: mcp-gateway -> mcp-ratelimit TCP/8090".into(),
        "ingress: mcp-ratelimit -> mcp-ratelimit-redis TCP/6379".into(),
        "ingress: mcp-upstream -> mcp-ratelimit-redis TCP/6379".into(),
        "ingress: mcp-upstream -> sd3-pool TCP/8080".into(),
        "egress: mcp-gateway -> mcp-upstream TCP/8081".into(),
        "egress: mcp-gateway -> mcp-ratelimit TCP/8090".into(),
        "egress: mcp-gateway -> ns/observability TCP/4317".into(),
        format!("egress: mcp-gateway -> {internet} TCP/443"),
        "egress: mcp-upstream -> mcp-ratelimit-redis TCP/6379".into(),
        "egress: mcp-upstream -> sd3-pool TCP/8080".into(),
        "egress: mcp-upstream -> ns/observability TCP/4317".into(),
        format!("egress: mcp-upstream -> {internet} TCP/443"),
        "egress: mcp-ratelimit -> mcp-ratelimit-redis TCP/6379".into(),
        format!("egress: sd3-pool -> {internet} TCP/443"),
        // Sign-in: the gateway routes /oauth/* to the authorization server,
        // which keeps its grants in the shared Redis and calls the IdP.
        "ingress: mcp-gateway -> mcp-authorize TCP/8082".into(),
        "ingress: ns/monitoring -> mcp-authorize TCP/8082".into(),
        "egress: mcp-gateway -> mcp-authorize TCP/8082".into(),
        "ingress: mcp-authorize -> mcp-ratelimit-redis TCP/6379".into(),
        "egress: mcp-authorize -> mcp-ratelimit-redis TCP/6379".into(),
        "egress: mcp-authorize -> 0.0.0.0/0 except [\"10.0.0.0/8\",\"172.16.0.0/12\",\"192.168.0.0/16\",\"169.254.0.0/16\"] TCP/443".into(),
    ]
    .into_iter()
    .collect();
    for pod in [
        "mcp-gateway",
        "mcp-upstream",
        "mcp-ratelimit",
        "sd3-pool",
        "mcp-authorize",
    ] {
        expected.extend(dns(pod));
    }
    assert_eq!(flows, expected);
    // Inside the namespace, both ends agree.
    for flow in &flows {
        let Some(egress) = flow.strip_prefix("egress: ") else {
            continue;
        };
        let to = egress.split(' ').nth(2).unwrap();
        if !to.contains('/') && !to.contains('.') {
            assert!(flows.contains(&format!("ingress: {egress}")), "{flow} has no ingress");
        }
    }
    for flow in flows.iter().filter_map(|f| f.strip_prefix("ingress: ")) {
        let from = flow.split(' ').next().unwrap();
        if !from.contains('/') {
            assert!(flows.contains(&format!("egress: {flow}")), "{flow} has no egress");
        }
    }
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

/// The alerts of `rules.yml`, each with its `runbook_url` annotation (if any):
/// read line by line, as the file keeps one alert per `- alert:` block.
fn alerts_and_runbook_urls(rules: &str) -> Vec<(String, Option<String>)> {
    let mut alerts: Vec<(String, Option<String>)> = Vec::new();
    for line in rules.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("- alert:") {
            alerts.push((name.trim().to_string(), None));
        } else if line.starts_with("- record:") {
            alerts.push((String::new(), None));
        } else if let (Some(url), Some(last)) = (line.strip_prefix("runbook_url:"), alerts.last_mut()) {
            last.1 = Some(url.trim().trim_matches('"').to_string());
        }
    }
    alerts.retain(|(name, _)| !name.is_empty());
    alerts
}

/// What is wrong between the alerts and the book's runbook pages: an alert
/// without a `runbook_url` to `runbooks/<alert>.html`, without a page, or whose
/// page the book's SUMMARY.md or its alerts page leaves out (mdBook would
/// not render it; the alerts page lists every runbook); a page
/// without an alert; a page missing one of the five parts; a dashboard panel
/// named (`panel “…”`) that the dashboard does not have.
fn runbook_problems(
    rules: &str,
    pages: &std::collections::BTreeMap<String, String>,
    summary: &str,
    alerts_page: &str,
    panels: &BTreeSet<String>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let alerts = alerts_and_runbook_urls(rules);
    for (alert, url) in &alerts {
        match url {
            Some(url) if url.ends_with(&format!("/runbooks/{alert}.html")) => {}
            Some(url) => problems.push(format!("{alert}: runbook_url {url} is not …/runbooks/{alert}.html")),
            None => problems.push(format!("{alert}: no runbook_url annotation")),
        }
        if !pages.contains_key(alert) {
            problems.push(format!("{alert}: no page docs/src/runbooks/{alert}.md"));
        }
        if !summary.contains(&format!("(runbooks/{alert}.md)")) {
            problems.push(format!("{alert}: its page is not in docs/src/SUMMARY.md"));
        }
        if !alerts_page.contains(&format!("(../runbooks/{alert}.md)")) {
            problems.push(format!("{alert}: not listed in docs/src/operations/alerts.md"));
        }
    }
    for (page, text) in pages {
        if !alerts.iter().any(|(alert, _)| alert == page) {
            problems.push(format!("runbooks/{page}.md: no alert of that name in rules.yml"));
        }
        for part in [
            "## What it means",
            "## Confirm it",
            "## Likely causes",
            "## What to do",
            "## When it is over",
        ] {
            if !text.contains(part) {
                problems.push(format!("runbooks/{page}.md: no \"{part}\""));
            }
        }
        for named in text.split("panel “").skip(1) {
            let title = named.split('”').next().unwrap_or_default();
            if !panels.contains(title) {
                problems.push(format!("runbooks/{page}.md: the dashboard has no panel “{title}”"));
            }
        }
    }
    problems
}

fn dashboard_panel_titles(dashboard: &Value) -> BTreeSet<String> {
    let mut titles = BTreeSet::new();
    let mut stack: Vec<&Value> = dashboard["panels"].as_array().into_iter().flatten().collect();
    while let Some(panel) = stack.pop() {
        if let Some(title) = panel["title"].as_str() {
            titles.insert(title.to_string());
        }
        stack.extend(panel["panels"].as_array().into_iter().flatten());
    }
    titles
}

/// Every Prometheus alert carries a `runbook_url` to its page in the book, and
/// every runbook page belongs to an alert (and names only panels that exist).
#[test]
fn every_alert_has_a_runbook_and_every_runbook_an_alert() {
    let root = workspace_root();
    let rules = std::fs::read_to_string(root.join("envoy/observability/rules.yml")).unwrap();
    let summary = std::fs::read_to_string(root.join("docs/src/SUMMARY.md")).unwrap();
    let alerts_page = std::fs::read_to_string(root.join("docs/src/operations/alerts.md")).unwrap();
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(root.join("envoy/observability/grafana/gateway.json")).unwrap()).unwrap();
    let mut pages = std::collections::BTreeMap::new();
    for entry in std::fs::read_dir(root.join("docs/src/runbooks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            pages.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    assert!(alerts_and_runbook_urls(&rules).len() >= 19, "the alerts were not read");
    let problems = runbook_problems(
        &rules,
        &pages,
        &summary,
        &alerts_page,
        &dashboard_panel_titles(&dashboard),
    );
    assert!(
        problems.is_empty(),
        "alerts and runbooks disagree:\n{}",
        problems.join("\n")
    );

    // The check itself: a new alert without a page, and a page left behind.
    let with_new_alert = format!(
        "{rules}\n      - alert: McpSomethingNew\n        annotations:\n          runbook_url: \"https://x/runbooks/McpSomethingNew.html\"\n"
    );
    let problems = runbook_problems(
        &with_new_alert,
        &pages,
        &summary,
        &alerts_page,
        &dashboard_panel_titles(&dashboard),
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "McpSomethingNew: no page docs/src/runbooks/McpSomethingNew.md"),
        "{problems:?}"
    );
    let mut orphan = pages.clone();
    orphan.insert("McpGone".into(), String::new());
    let problems = runbook_problems(
        &rules,
        &orphan,
        &summary,
        &alerts_page,
        &dashboard_panel_titles(&dashboard),
    );
    assert!(
        problems
            .iter()
            .any(|p| p == "runbooks/McpGone.md: no alert of that name in rules.yml"),
        "{problems:?}"
    );
}
