//! `make run` as a newcomer uses it: start the stack, copy the printed token
//! and example, get a PNG, press Ctrl-C, and find every process gone.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gateway_tests::png_info::dimensions;
use gateway_tests::stack::{envoy_binary, free_port, http_client, workspace_root};
use jwt_simple::prelude::*;
use serde_json::{json, Value};

/// `scripts/run.sh` (what `make run` runs) on these ports and state, with
/// `env` added, in its own process group; returns it and the banner it printed.
fn start_run(
    ports: (u16, u16, u16, u16, u16),
    state: &std::path::Path,
    env: &[(&str, &str)],
) -> (std::process::Child, Vec<String>) {
    let (listen, admin, upstream, metrics, authorize) = ports;
    let mut child = Command::new(workspace_root().join("scripts/run.sh"))
        .env("LISTEN_PORT", listen.to_string())
        .env("ADMIN_PORT", admin.to_string())
        .env("UPSTREAM_PORT", upstream.to_string())
        .env("METRICS_PORT", metrics.to_string())
        .env("AUTHORIZE_PORT", authorize.to_string())
        .env_remove("IDP_ISSUER")
        .env("STATE_DIR", state)
        .env("ENVOY_BIN", envoy_binary())
        .env_remove("OPENAI_API_KEY")
        .env_remove("GATEWAY_PUBLIC_BASE_URL")
        .env_remove("RESET_SETTINGS")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, like a terminal's foreground job receiving Ctrl-C.
        .process_group(0)
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors_tx = lines_tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // Its complaints (a refused settings file, a busy port) join the banner.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = errors_tx.send(line);
        }
    });

    let deadline = Instant::now() + Duration::from_secs(90);
    let mut banner = Vec::new();
    while Instant::now() < deadline {
        match lines.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains("Ctrl-C stops everything");
                banner.push(line);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // It exited: the banner is all there is.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    (child, banner)
}

/// `start_run` on ports that were free a moment ago, picked again when one
/// was taken meanwhile (tests run in parallel, and `run.sh` refuses a busy
/// port); returns the ports too.
fn start_run_on_free_ports(
    state: &std::path::Path,
    env: &[(&str, &str)],
) -> ((u16, u16, u16, u16, u16), std::process::Child, Vec<String>) {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let ports = (free_port(), free_port(), free_port(), free_port(), free_port());
        let (mut child, banner) = start_run(ports, state, env);
        if attempt < 4 && banner.iter().any(|line| line.contains("already in use")) {
            let _ = child.wait();
            continue;
        }
        return (ports, child, banner);
    }
}

/// Ctrl-C to the whole group; waits until every port is free again.
fn ctrl_c(mut child: std::process::Child, ports: [u16; 5]) {
    let pgid = child.id();
    Command::new("kill")
        .args(["-INT", "--", &format!("-{pgid}")])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if status.is_none() {
        let _ = Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
        panic!("make run did not stop on Ctrl-C");
    }
    for port in ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "something still listens on {port} after Ctrl-C"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A `generate_image` call with `prompt`; the JSON-RPC reply.
async fn generate(mcp_url: &str, token: &str, prompt: &str) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "generate_image", "arguments": {"prompt": prompt, "size": "1536x1024"}}});
    http_client()
        .post(mcp_url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json, text/event-stream")
        .header("MCP-Protocol-Version", "2025-06-18")
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn make_run_prints_a_working_example_and_stops_on_ctrl_c() {
    let state = std::env::temp_dir().join(format!("make-run-{}", uuid::Uuid::new_v4()));
    let (ports, child, banner) = start_run_on_free_ports(&state, &[]);
    let (listen, admin, upstream, metrics, authorize) = ports;
    let text = banner.join("\n");
    let mcp_url = format!("http://127.0.0.1:{listen}/mcp");
    assert!(text.contains(&format!("MCP endpoint : {mcp_url}")), "{text}");
    let token_line = banner
        .iter()
        .position(|l| l.contains("Development bearer token"))
        .expect("token printed");
    let token = banner[token_line + 1].trim().to_string();
    assert!(
        text.contains("curl -s") && text.contains("\"mcpServers\""),
        "example and client config printed"
    );

    // The printed example, as a newcomer would paste it.
    let reply = generate(&mcp_url, &token, "a lighthouse at dusk").await;
    let url = reply["result"]["structuredContent"]["image_urls"][0]
        .as_str()
        .expect("an image link")
        .to_string();
    let png = http_client().get(&url).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(dimensions(&png).unwrap(), (1536, 1024));

    // No token at all: a real MCP client follows the 401 to the development
    // sign-in the protected resource metadata names, and signs in.
    assert!(text.contains("claude mcp add --transport http images"), "{text}");
    let signed_in = Command::new(".venv/bin/python")
        .args(["tests/clients/python_oauth_client.py", &mcp_url, "olga", "acme"])
        .current_dir(workspace_root())
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(
        signed_in
            .stdout
            .trim_ascii_end()
            .rsplit(|b| *b == b'\n')
            .next()
            .unwrap_or_default(),
    )
    .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&signed_in.stderr)));
    assert_eq!(report["generated"], true, "{report}");
    assert_eq!(report["sign_ins_before_refresh"], 1, "{report}");

    // The starting content policy is in force: a denied term is refused
    // (2025-06-18: as an argument error), naming its category only.
    assert!(state.join("content-policy.json").exists());
    let denied = generate(&mcp_url, &token, "a bazooka at dusk").await;
    assert_eq!(denied["error"]["code"], -32602, "{denied}");
    assert_eq!(denied["error"]["data"]["category"], "weapons", "{denied}");

    // An admin edits the settings file the banner names; the running
    // Envoy applies it within 2 s.
    let settings_path = state.join("edge-settings.json");
    assert!(text.contains("edge settings: "), "{text}");
    let mut settings: Value = serde_json::from_slice(&std::fs::read(&settings_path).unwrap()).unwrap();
    settings["max_prompt_chars"] = json!(12);
    std::fs::write(&settings_path, serde_json::to_string_pretty(&settings).unwrap()).unwrap();
    let edited = Instant::now();
    let refused = loop {
        let reply = generate(&mcp_url, &token, "a lighthouse at dusk").await;
        if reply["error"].is_object() || reply["result"]["isError"] == true {
            break reply;
        }
        assert!(edited.elapsed() < Duration::from_secs(2), "the edit applied within 2 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.to_string().contains("12"), "{refused}");
    let all = [listen, admin, upstream, metrics, authorize];
    ctrl_c(child, all);

    // The edit outlives a restart.
    let (child, banner) = start_run(ports, &state, &[]);
    assert!(
        banner.iter().any(|l| l.contains("Ctrl-C stops everything")),
        "{banner:?}"
    );
    let reply = generate(&mcp_url, &token, "a lighthouse at dusk").await;
    assert!(
        reply.to_string().contains("12"),
        "the edited limit holds after a restart: {reply}"
    );
    ctrl_c(child, all);
    let _ = std::fs::remove_dir_all(&state);
}

/// `make run IDP_ISSUER=…` against an IdP with OpenID Connect discovery
/// only (as Entra ID): its `jwks_uri` is found and fetched through the
/// cluster `render-envoy` rendered for it, its tokens (organisation in
/// `tid`, scopes in `scp`, its own audience) are admitted beside the
/// development ones, and the protected resource metadata names it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_run_trusts_an_idp_by_its_issuer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let issuer = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    let key = ES256KeyPair::generate().with_key_id("idp-1");
    let public: Value = serde_json::from_str(&key.public_key().to_jwk()).unwrap();
    let metadata = json!({"issuer": issuer, "jwks_uri": format!("{issuer}/discovery/keys")});
    let app = axum::Router::new()
        .route(
            "/.well-known/openid-configuration",
            axum::routing::get(move || async move { axum::Json(metadata) }),
        )
        .route(
            "/discovery/keys",
            axum::routing::get(move || async move { axum::Json(json!({"keys": [public]})) }),
        );
    let idp = tokio::spawn(async move { axum::serve(listener, app).await });

    let state = std::env::temp_dir().join(format!("make-run-idp-{}", uuid::Uuid::new_v4()));
    let env = [
        ("IDP_ISSUER", issuer.as_str()),
        ("IDP_AUDIENCE", "api://mcp-image-gateway"),
        ("IDP_ORG_CLAIM", "/tid"),
        ("IDP_SCOPE_CLAIM", "scp"),
    ];
    let (ports, child, banner) = start_run_on_free_ports(&state, &env);
    let (listen, admin, upstream, metrics, authorize) = ports;
    let text = banner.join("\n");
    assert!(text.contains("Ctrl-C stops everything"), "{text}");
    let mcp_url = format!("http://127.0.0.1:{listen}/mcp");

    let claims = Claims::with_custom_claims(
        json!({"tid": "contoso", "scp": "images:generate"}),
        Duration::from_secs(600).into(),
    )
    .with_issuer(&issuer)
    .with_audience("api://mcp-image-gateway")
    .with_subject("erin");
    let token = key.sign(claims).unwrap();
    // Admitted once the edge has fetched the IdP's keys.
    let deadline = Instant::now() + Duration::from_secs(10);
    let reply = loop {
        let reply = generate(&mcp_url, &token, "a lighthouse at dusk").await;
        if reply["result"]["structuredContent"]["image_urls"][0].is_string() || Instant::now() > deadline {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        reply["result"]["structuredContent"]["image_urls"][0].is_string(),
        "{reply}"
    );
    let dev_token_line = banner
        .iter()
        .position(|l| l.contains("Development bearer token"))
        .unwrap();
    let dev = generate(&mcp_url, banner[dev_token_line + 1].trim(), "a lighthouse at dusk").await;
    assert!(
        dev["result"]["structuredContent"].is_object(),
        "the development issuer stays trusted: {dev}"
    );

    let resource: Value = http_client()
        .get(format!(
            "http://127.0.0.1:{listen}/.well-known/oauth-protected-resource"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resource["authorization_servers"][0], issuer.as_str(), "{resource}");
    let settings: Value = serde_json::from_slice(&std::fs::read(state.join("edge-settings.json")).unwrap()).unwrap();
    assert_eq!(
        settings["jwt"]["issuers"][1]["jwks_uri"]["url"],
        format!("{issuer}/discovery/keys"),
        "{settings:#}"
    );
    ctrl_c(child, [listen, admin, upstream, metrics, authorize]);
    idp.abort();
    let _ = std::fs::remove_dir_all(&state);
}
