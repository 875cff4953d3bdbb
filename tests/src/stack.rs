//! One running gateway stack per test.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mcp_image_gateway::cli::{devkit, edge_settings, identity_providers};

use crate::fake_openai::{FakeOpenAi, FakeOptions};
use crate::fake_stability::FakeStability;

/// Which model backend the upstream runs.
#[derive(Debug, Clone)]
pub enum Backend {
    OfflinePreview,
    /// The OpenAI backend against the in-process fake, with this model.
    FakeOpenAi {
        model: String,
        options: FakeOptions,
    },
    /// The Stability backend against its fake (rate limit in requests, if any).
    FakeStability {
        rate_limit: Option<usize>,
    },
}

/// How to start a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub backend: Backend,
    pub url_ttl_secs: u64,
    /// Top-level fields replacing those of the dev filter configuration.
    pub filter_patch: serde_json::Value,
    /// Envoy worker threads.
    pub envoy_concurrency: u32,
    /// YAML appended to Envoy's cluster list.
    pub extra_clusters: String,
    /// Extra environment for the upstream (storage settings, ...).
    pub upstream_env: Vec<(String, String)>,
    /// Upstream processes behind Envoy (round robin), sharing state and storage.
    pub upstream_replicas: u16,
    /// Also listen with TLS 1.3 (self-signed development certificate).
    pub tls: bool,
    /// How the edge filter is built into Envoy.
    pub edge: Edge,
    /// The filter's settings come live from a watched file (ECDS), as in
    /// `make run`: `Stack::edit_settings` changes them without a restart.
    pub live_settings: bool,
    /// Traces to this OTLP/gRPC endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// Starts the authorization server (`mcp-image-gateway authorize`) with
    /// this environment on top of the stack's (e.g. the development sign-in,
    /// or `IDP_ISSUER`…); its log is `authorize.log` in the state dir.
    pub authorize: Option<Vec<(String, String)>>,
}

/// The edge filter's build: the deployed Wasm filter, or the same decisions
/// as an Envoy dynamic module (`make native-module`, the native build).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Edge {
    #[default]
    Wasm,
    DynamicModule,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            backend: Backend::OfflinePreview,
            url_ttl_secs: 86_400,
            filter_patch: serde_json::json!({}),
            envoy_concurrency: 2,
            extra_clusters: String::new(),
            upstream_env: Vec::new(),
            upstream_replicas: 1,
            tls: false,
            edge: Edge::Wasm,
            live_settings: false,
            otlp_endpoint: None,
            authorize: None,
        }
    }
}

/// A running stack; processes are stopped when it is dropped.
pub struct Stack {
    pub base_url: String,
    /// The authorization server, directly (its `/metrics`); empty unless started.
    pub authorize_url: String,
    pub mcp_url: String,
    pub admin_url: String,
    pub upstream_url: String,
    /// The first replica's Prometheus endpoint.
    pub metrics_url: String,
    /// Every replica's metrics URL (the first is `metrics_url`).
    pub metrics_urls: Vec<String>,
    /// The TLS 1.3 listener's port (0 without TLS).
    pub tls_port: u16,
    pub state_dir: PathBuf,
    pub fake: Option<FakeOpenAi>,
    pub stability: Option<FakeStability>,
    children: Vec<(String, Child)>,
    /// Each upstream replica: name, port, metrics port.
    upstreams: Vec<(String, u16, u16)>,
    /// Environment every upstream replica starts with.
    upstream_env: Vec<(String, String)>,
    envoy_vars: BTreeMap<String, String>,
    filter_config: serde_json::Value,
    edge: Edge,
    live_settings: bool,
    envoy_concurrency: u32,
    restart_epoch: u32,
}

/// The repository root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs one of the SDK client scripts (`tests/clients/`) from the
/// repository root; its last stdout line, as JSON. Panics with its output
/// when it fails.
pub fn run_client(program: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .env("NO_PROXY", "127.0.0.1")
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run `make test-clients`)"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{program}: {e}: {stdout}"))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The built filter; `make test` builds it first.
pub fn wasm_path() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("wasm32-wasip1/release/mcp_edge_filter.wasm");
    if !path.exists() {
        bail!(
            "{} is missing: run `make test` (or `make build`) so the filter is built first",
            path.display()
        );
    }
    Ok(path)
}

/// The edge filter's decisions built as an Envoy dynamic module; `make test`
/// builds it (`make native-module NATIVE_PROFILE=debug`).
pub fn native_module_path() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("debug/libmcp_edge_native.so");
    if !path.exists() {
        bail!(
            "{} is missing: run `make test` (or `make native-module NATIVE_PROFILE=debug`) first",
            path.display()
        );
    }
    Ok(path)
}

/// The built upstream binary.
pub fn upstream_binary() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("debug/mcp-image-gateway");
    if !path.exists() {
        bail!(
            "{} is missing: run `make test` (or `cargo build -p mcp-image-gateway`) first",
            path.display()
        );
    }
    Ok(path)
}

/// Envoy: `$ENVOY_BIN`, else the project venv, else `envoy` on PATH.
pub fn envoy_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("ENVOY_BIN") {
        return PathBuf::from(bin);
    }
    let venv = workspace_root().join(".venv/bin/envoy");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("envoy")
}

/// A port that was free a moment ago.
/// Waits up to `timeout` for something to listen on 127.0.0.1:`port`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// An HTTP client that never uses a proxy and never waits long.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default()
}

impl Stack {
    /// Starts the offline stack.
    pub async fn start() -> anyhow::Result<Stack> {
        Self::start_with(StackOptions::default()).await
    }

    /// Starts a stack; retried on fresh ports if another process took one
    /// of the ports picked (they are only free "a moment ago").
    pub async fn start_with(options: StackOptions) -> anyhow::Result<Stack> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(options.clone()).await {
                Err(error) if attempt < 4 && format!("{error:#}").contains("already in use") => continue,
                other => return other,
            }
        }
    }

    async fn try_start(options: StackOptions) -> anyhow::Result<Stack> {
        let state_dir = std::env::temp_dir().join(format!("mcp-gw-test-{}", uuid::Uuid::new_v4()));
        devkit::init(&state_dir)?;
        let (listen_port, admin_port, upstream_port) = (free_port(), free_port(), free_port());
        let base_url = format!("http://127.0.0.1:{listen_port}");
        let mut stack = Stack {
            authorize_url: String::new(),
            mcp_url: format!("{base_url}/mcp"),
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            upstream_url: format!("http://127.0.0.1:{upstream_port}"),
            metrics_url: String::new(),
            metrics_urls: Vec::new(),
            tls_port: 0,
            base_url: base_url.clone(),
            state_dir: state_dir.clone(),
            fake: None,
            stability: None,
            children: Vec::new(),
            upstreams: Vec::new(),
            upstream_env: Vec::new(),
            envoy_vars: BTreeMap::new(),
            filter_config: serde_json::Value::Null,
            edge: options.edge,
            live_settings: false,
            envoy_concurrency: options.envoy_concurrency,
            restart_epoch: 0,
        };

        let fake_env = match &options.backend {
            Backend::OfflinePreview => vec![("GATEWAY_BACKEND".to_string(), "offline-preview".to_string())],
            Backend::FakeOpenAi { model, options } => {
                let fake = FakeOpenAi::start(options.clone()).await?;
                let env = vec![
                    ("GATEWAY_BACKEND".to_string(), "openai".to_string()),
                    ("OPENAI_API_KEY".to_string(), fake.api_key.clone()),
                    ("OPENAI_BASE_URL".to_string(), format!("{}/v1", fake.base_url)),
                    ("OPENAI_IMAGE_MODEL".to_string(), model.clone()),
                    // The same fake answers the classic dialect when asked to.
                    (
                        "OPENAI_COMPATIBLE_BASE_URL".to_string(),
                        format!("{}/v1", fake.base_url),
                    ),
                    ("OPENAI_COMPATIBLE_MODEL".to_string(), model.clone()),
                    ("OPENAI_COMPATIBLE_API_KEY".to_string(), fake.api_key.clone()),
                ];
                stack.fake = Some(fake);
                env
            }
            Backend::FakeStability { rate_limit } => {
                let fake = FakeStability::start(*rate_limit).await?;
                let env = vec![
                    ("GATEWAY_BACKEND".to_string(), "stability".to_string()),
                    ("STABILITY_API_KEY".to_string(), fake.api_key.clone()),
                    ("STABILITY_BASE_URL".to_string(), fake.base_url.clone()),
                ];
                stack.stability = Some(fake);
                env
            }
        };
        let mut upstream_ports = vec![upstream_port];
        upstream_ports.extend((1..options.upstream_replicas).map(|_| free_port()));
        let metrics_ports: Vec<u16> = upstream_ports.iter().map(|_| free_port()).collect();
        stack.metrics_url = format!("http://127.0.0.1:{}/metrics", metrics_ports[0]);
        stack.metrics_urls = metrics_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}/metrics"))
            .collect();
        let mut upstream_env: Vec<(String, String)> = vec![
            ("PATH".into(), std::env::var("PATH").unwrap_or_default()),
            ("RUST_LOG".into(), "info,rmcp=warn".into()),
            ("GATEWAY_PUBLIC_BASE_URL".into(), base_url.clone()),
            ("GATEWAY_STATE_DIR".into(), state_dir.display().to_string()),
            ("GATEWAY_URL_TTL_SECS".into(), options.url_ttl_secs.to_string()),
        ];
        if let Some(endpoint) = &options.otlp_endpoint {
            upstream_env.push(("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint.clone()));
            upstream_env.push(("OTEL_BSP_SCHEDULE_DELAY".into(), "200".into()));
        }
        upstream_env.extend(fake_env.iter().cloned());
        upstream_env.extend(options.upstream_env.iter().cloned());
        stack.upstream_env = upstream_env;
        for (index, port) in upstream_ports.iter().enumerate() {
            let name = if index == 0 {
                "upstream".to_string()
            } else {
                format!("upstream-{}", index + 1)
            };
            stack.upstreams.push((name.clone(), *port, metrics_ports[index]));
            let upstream = stack.upstream_command(&name, &[])?;
            stack.spawn(&name, upstream)?;
        }
        let authorize_port = free_port();
        if let Some(env) = &options.authorize {
            let mut authorize = Command::new(upstream_binary()?);
            authorize
                .arg("authorize")
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("RUST_LOG", "info")
                .env("GATEWAY_PUBLIC_BASE_URL", &base_url)
                .env("GATEWAY_STATE_DIR", state_dir.display().to_string())
                .env("GATEWAY_AUTHZ_LISTEN", format!("127.0.0.1:{authorize_port}"))
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            stack.spawn("authorize", authorize)?;
            stack.authorize_url = format!("http://127.0.0.1:{authorize_port}");
            if !wait_for_port(authorize_port, Duration::from_secs(30)).await {
                bail!(
                    "the authorization server did not start: {}",
                    std::fs::read_to_string(state_dir.join("authorize.log")).unwrap_or_default()
                );
            }
        }
        let extra_endpoints: String = upstream_ports[1..]
            .iter()
            .map(|port| {
                format!("        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }} }}\n")
            })
            .collect();

        let extra_listeners = if options.tls {
            let (cert, key) = devkit::ensure_dev_certificate(&state_dir)?;
            stack.tls_port = free_port();
            devkit::tls_listener_yaml(&cert, &key, stack.tls_port)
        } else {
            String::new()
        };
        let template = stack.envoy_template()?;
        let mut filter_config = devkit::filter_config(&state_dir, &base_url)?;
        let tracing = devkit::envoy_tracing(
            &std::fs::read_to_string(workspace_root().join("envoy/tracing.yaml.tmpl"))?,
            |name| {
                (name == "OTEL_EXPORTER_OTLP_ENDPOINT")
                    .then(|| options.otlp_endpoint.clone())
                    .flatten()
            },
        )?;
        if tracing.is_some() {
            filter_config["tracing"] = serde_json::json!({});
        }
        if let (Some(config), Some(patch)) = (filter_config.as_object_mut(), options.filter_patch.as_object()) {
            for (key, value) in patch {
                config.insert(key.clone(), value.clone());
            }
        }
        let mut vars = BTreeMap::from([
            ("ADMIN_PORT".to_string(), admin_port.to_string()),
            ("LISTEN_PORT".to_string(), listen_port.to_string()),
            ("UPSTREAM_PORT".to_string(), upstream_port.to_string()),
            ("WASM_PATH".to_string(), wasm_path()?.display().to_string()),
            (
                "EXTRA_CLUSTERS".to_string(),
                format!(
                    "{}{}",
                    options.extra_clusters,
                    tracing.as_ref().map_or("", |t| t.cluster.as_str())
                ),
            ),
            (
                "TRACING".to_string(),
                tracing.as_ref().map_or(String::new(), |t| t.hcm.trim_end().to_string()),
            ),
            ("EXTRA_UPSTREAM_ENDPOINTS".to_string(), extra_endpoints),
            ("EXTRA_LISTENERS".to_string(), extra_listeners),
            ("LISTEN_ADDRESS".to_string(), "127.0.0.1".to_string()),
            // A port another stack also picked fails to bind, and
            // `start_with` tries fresh ones, rather than both Envoys sharing it.
            ("LISTEN_REUSE_PORT".to_string(), "false".to_string()),
            ("ADMIN_ADDRESS".to_string(), "127.0.0.1".to_string()),
            ("UPSTREAM_ADDRESS".to_string(), "127.0.0.1".to_string()),
            ("UPSTREAM_CLUSTER_TYPE".to_string(), "STATIC".to_string()),
            ("AUTHORIZE_ADDRESS".to_string(), "127.0.0.1".to_string()),
            ("AUTHORIZE_PORT".to_string(), authorize_port.to_string()),
            ("AUTHORIZE_CLUSTER_TYPE".to_string(), "STATIC".to_string()),
            ("XFF_TRUSTED_HOPS".to_string(), "0".to_string()),
            (
                "CORS_ORIGIN_REGEX".to_string(),
                devkit::DEV_CORS_ORIGIN_REGEX.to_string(),
            ),
        ]);
        // A cluster per `jwks_uri.url`, as `render-envoy` renders them.
        identity_providers::add_jwks_clusters(&mut vars, &filter_config)?;
        stack.envoy_vars = vars;
        stack.filter_config = filter_config;
        stack.live_settings = options.live_settings;
        let envoy = stack.envoy_command(&template)?;
        stack.spawn("envoy", envoy)?;
        if stack.live_settings {
            let mut watcher = Command::new(upstream_binary()?);
            watcher
                .arg("watch-edge-settings")
                .arg("--settings")
                .arg(stack.settings_path())
                .arg("--ecds-dir")
                .arg(stack.state_dir.join("ecds"))
                .args(["--envoy-admin", &stack.admin_url, "--interval-ms", "100"]);
            stack.spawn("settings-watcher", watcher)?;
        }

        for (index, port) in upstream_ports.iter().enumerate() {
            let name = if index == 0 {
                "upstream".to_string()
            } else {
                format!("upstream-{}", index + 1)
            };
            stack
                .wait_ready(&name, &format!("http://127.0.0.1:{port}/healthz"))
                .await?;
        }
        stack.wait_ready("envoy", &format!("{}/ready", stack.admin_url)).await?;
        Ok(stack)
    }

    /// The Envoy config template, with this stack's build of the edge filter.
    fn envoy_template(&self) -> anyhow::Result<String> {
        let template = std::fs::read_to_string(workspace_root().join("envoy/envoy.yaml.tmpl"))?;
        match self.edge {
            Edge::Wasm => Ok(template),
            Edge::DynamicModule => {
                let block = std::fs::read_to_string(workspace_root().join("envoy/dynamic-module-filter.yaml.tmpl"))?;
                devkit::with_dynamic_module(&template, &block, &native_module_path()?)
            }
        }
    }

    /// The Prometheus name Envoy gives the edge filter's metric `name`
    /// (`mcp_edge_…`): the dynamic module's keep Envoy's prefix.
    pub fn edge_metric(&self, name: &str) -> String {
        match self.edge {
            Edge::Wasm => name.to_string(),
            Edge::DynamicModule => format!("envoy_{name}"),
        }
    }

    /// Renders the Envoy config for the current epoch and builds its command line.
    fn envoy_command(&self, template: &str) -> anyhow::Result<Command> {
        let mut vars = self.envoy_vars.clone();
        vars.insert("FILTER_CONFIG".into(), self.filter_config.to_string());
        let config = self.state_dir.join(format!("envoy-{}.yaml", self.restart_epoch));
        if self.live_settings {
            // As `render-envoy --ecds-dir`: the settings file, the ECDS
            // resource Envoy watches, and a bootstrap that points at it.
            let settings = format!("{}\n", serde_json::to_string_pretty(&self.filter_config)?);
            std::fs::write(self.settings_path(), &settings)?;
            let dir = self.state_dir.join("ecds");
            let bootstrap = edge_settings::install(template, &vars, &dir, settings.as_bytes())?;
            std::fs::write(&config, bootstrap)?;
        } else {
            std::fs::write(&config, devkit::render(template, &vars)?)?;
        }
        let base_id_path = self.state_dir.join("envoy.base-id");
        let mut envoy = Command::new(envoy_binary());
        envoy.arg("-c").arg(&config);
        if self.restart_epoch == 0 {
            envoy
                .arg("--use-dynamic-base-id")
                .arg("--base-id-path")
                .arg(&base_id_path);
        } else {
            let base_id = std::fs::read_to_string(&base_id_path)?;
            envoy.args([
                "--base-id",
                base_id.trim(),
                "--restart-epoch",
                &self.restart_epoch.to_string(),
            ]);
        }
        envoy
            .args([
                "--drain-time-s",
                "5",
                "--parent-shutdown-time-s",
                "20",
                "--log-level",
                "warn",
            ])
            .args(["--concurrency", &self.envoy_concurrency.to_string()])
            .args(["--component-log-level", "wasm:info"]);
        Ok(envoy)
    }

    /// Starts one more Envoy replica with the same configuration (filter,
    /// clusters, upstreams) on its own ports, as a second gateway pod would
    /// run; returns its MCP URL. Stopped with the stack.
    pub async fn start_another_envoy(&mut self) -> anyhow::Result<String> {
        let index = self
            .children
            .iter()
            .filter(|(name, _)| name.starts_with("envoy"))
            .count()
            + 1;
        let name = format!("envoy-replica{index}");
        let (listen_port, admin_port) = (free_port(), free_port());
        let mut vars = self.envoy_vars.clone();
        vars.insert("LISTEN_PORT".into(), listen_port.to_string());
        vars.insert("ADMIN_PORT".into(), admin_port.to_string());
        vars.insert("EXTRA_LISTENERS".into(), String::new());
        vars.insert("FILTER_CONFIG".into(), self.filter_config.to_string());
        let template = self.envoy_template()?;
        let config = self.state_dir.join(format!("{name}.yaml"));
        std::fs::write(&config, devkit::render(&template, &vars)?)?;
        let mut envoy = Command::new(envoy_binary());
        envoy
            .arg("-c")
            .arg(&config)
            .arg("--use-dynamic-base-id")
            .args(["--log-level", "warn", "--component-log-level", "wasm:info"])
            .args(["--concurrency", &self.envoy_concurrency.to_string()]);
        self.spawn(&name, envoy)?;
        self.wait_ready(&name, &format!("http://127.0.0.1:{admin_port}/ready"))
            .await?;
        Ok(format!("http://127.0.0.1:{listen_port}/mcp"))
    }

    /// Applies new filter settings the way an admin would without downtime:
    /// an Envoy hot restart with the changed config. The old process drains
    /// its in-flight requests while the new one takes the listeners.
    pub async fn hot_restart_with(&mut self, filter_patch: serde_json::Value) -> anyhow::Result<()> {
        if let (Some(config), Some(patch)) = (self.filter_config.as_object_mut(), filter_patch.as_object()) {
            for (key, value) in patch {
                config.insert(key.clone(), value.clone());
            }
        }
        self.restart_epoch += 1;
        let template = self.envoy_template()?;
        let envoy = self.envoy_command(&template)?;
        let name = format!("envoy-epoch{}", self.restart_epoch);
        self.spawn(&name, envoy)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let info = http_client()
                .get(format!("{}/server_info", self.admin_url))
                .send()
                .await;
            if let Ok(response) = info {
                let info: serde_json::Value = response.json().await.unwrap_or_default();
                let epoch = info["command_line_options"]["restart_epoch"].as_u64();
                if epoch == Some(u64::from(self.restart_epoch)) && info["state"] == "LIVE" {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "hot restart to epoch {} did not go live:\n{}",
            self.restart_epoch,
            self.log_tail(&name)
        )
    }

    /// The command line of upstream replica `name`, with `extra_env` on top.
    fn upstream_command(&self, name: &str, extra_env: &[(&str, &str)]) -> anyhow::Result<Command> {
        let (_, port, metrics_port) = self
            .upstreams
            .iter()
            .find(|(n, _, _)| n == name)
            .with_context(|| format!("no upstream replica {name}"))?;
        let mut upstream = Command::new(upstream_binary()?);
        upstream
            .arg("serve")
            .env_clear()
            .envs(self.upstream_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .env("GATEWAY_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
            .envs(extra_env.iter().copied());
        Ok(upstream)
    }

    /// Stops upstream replica `name` with `signal` (`KILL` for a crash) and
    /// starts it again on the same ports with `extra_env` added; its log
    /// continues in `{name}.log`.
    pub async fn restart_upstream(
        &mut self,
        name: &str,
        signal: &str,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        self.signal(name, signal);
        if let Some(index) = self.children.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.children.remove(index);
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let command = self.upstream_command(name, extra_env)?;
        self.spawn_appending(name, command)?;
        let port = self.upstreams.iter().find(|(n, _, _)| n == name).map_or(0, |u| u.1);
        self.wait_ready(name, &format!("http://127.0.0.1:{port}/healthz")).await
    }

    fn spawn(&mut self, name: &str, command: Command) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.state_dir.join(format!("{name}.log")))?;
        self.spawn_logging(name, command, log)
    }

    fn spawn_appending(&mut self, name: &str, command: Command) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.state_dir.join(format!("{name}.log")))?;
        self.spawn_logging(name, command, log)
    }

    fn spawn_logging(&mut self, name: &str, mut command: Command, log: std::fs::File) -> anyhow::Result<()> {
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {name} ({command:?})"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    async fn wait_ready(&mut self, name: &str, url: &str) -> anyhow::Result<()> {
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(response) = client.get(url).timeout(Duration::from_secs(2)).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            let exited = self
                .children
                .iter_mut()
                .find_map(|(child_name, child)| child.try_wait().ok().flatten().map(|s| (child_name.clone(), s)));
            if let Some((child_name, status)) = exited {
                bail!(
                    "{child_name} exited with {status} while waiting for {name}:\n{}",
                    self.log_tail(&child_name)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("{name} not ready at {url} within 30 s:\n{}", self.log_tail(name))
    }

    /// The last lines of a process log.
    pub fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.state_dir.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The whole log of a process.
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.state_dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// A dev token for `sub` in `org`, valid for `ttl_secs`.
    /// Runs `mcp-image-gateway ARGS` (audit verify, erase, …) with this
    /// stack's settings (its state folder and upstream environment): its JSON report (the first JSON line of stdout) and
    /// whether it succeeded.
    pub fn gateway_command(&self, args: &[&str]) -> (serde_json::Value, bool) {
        let output = Command::new(upstream_binary().unwrap())
            .args(args)
            .env("GATEWAY_STATE_DIR", &self.state_dir)
            .envs(self.upstream_env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .unwrap_or_else(|| panic!("{args:?}: no report: {}", String::from_utf8_lossy(&output.stderr)));
        (report, output.status.success())
    }

    /// The edge filter's settings this stack's Envoy runs.
    pub fn filter_config(&self) -> &serde_json::Value {
        &self.filter_config
    }

    pub fn token(&self, sub: &str, org: &str) -> String {
        self.token_with(sub, org, &devkit::audience(&self.base_url), 3600)
    }

    pub fn token_with(&self, sub: &str, org: &str, audience: &str, ttl_secs: u64) -> String {
        self.token_issued_at(sub, org, audience, ttl_secs, None)
    }

    /// A token issued at a given Unix time (for expired or future tokens).
    pub fn token_issued_at(
        &self,
        sub: &str,
        org: &str,
        audience: &str,
        ttl_secs: u64,
        issued_at: Option<u64>,
    ) -> String {
        self.token_full(sub, org, audience, devkit::TOOLS_SCOPE, ttl_secs, issued_at)
    }

    /// A token with every claim chosen by the test.
    pub fn token_full(
        &self,
        sub: &str,
        org: &str,
        audience: &str,
        scope: &str,
        ttl_secs: u64,
        issued_at: Option<u64>,
    ) -> String {
        devkit::mint_token(
            &self.state_dir,
            &devkit::TokenRequest {
                issuer: devkit::dev_issuer(&self.base_url),
                subject: sub.into(),
                org: org.into(),
                audience: audience.into(),
                scope: scope.into(),
                valid_for_secs: ttl_secs,
                issued_at,
            },
        )
        .unwrap_or_default()
    }

    /// Sends a signal (e.g. `TERM`) to a process of the stack (`upstream`, `envoy`, ...).
    pub fn signal(&self, name: &str, signal: &str) {
        if let Some((_, child)) = self.children.iter().find(|(n, _)| n == name) {
            let _ = Command::new("kill")
                .args([&format!("-{signal}"), &child.id().to_string()])
                .status();
        }
    }

    /// Whether a process of the stack has exited.
    pub fn exited(&mut self, name: &str) -> bool {
        self.children
            .iter_mut()
            .find(|(n, _)| n == name)
            .is_some_and(|(_, child)| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// The development API key of this stack.
    pub fn api_key(&self) -> String {
        devkit::dev_api_key(&self.state_dir).unwrap_or_default()
    }

    /// Envoy's Prometheus exposition.
    pub async fn prometheus(&self) -> String {
        match http_client()
            .get(format!("{}/stats/prometheus", self.admin_url))
            .send()
            .await
        {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The URL-signing keys of this stack (to forge links in tests).
    pub fn url_keys(&self) -> anyhow::Result<mcp_image_gateway::storage::keyring::Keyring> {
        mcp_image_gateway::storage::keyring::Keyring::from_file(
            &self.state_dir.join("url-signing.key"),
            mcp_image_gateway::storage::signed_url::MIN_SECRET_BYTES,
        )
    }

    /// The filter settings the stack runs (or, live, last wrote).
    pub fn settings(&self) -> serde_json::Value {
        self.filter_config.clone()
    }

    /// The process id of a process of the stack (`upstream`, `envoy`, ...).
    pub fn process_id(&self, name: &str) -> Option<u32> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, child)| child.id())
    }

    /// The process id of the first Envoy.
    pub fn envoy_pid(&self) -> u64 {
        self.children
            .iter()
            .find(|(name, _)| name == "envoy")
            .map_or(0, |(_, child)| u64::from(child.id()))
    }

    /// The first upstream replica's metrics (OpenMetrics text; empty when unreachable).
    pub async fn upstream_metrics(&self) -> String {
        match http_client().get(&self.metrics_url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// The live settings file (`live_settings`).
    pub fn settings_path(&self) -> PathBuf {
        self.state_dir.join("edge-settings.json")
    }

    /// Replaces the live settings file as an editor saving it would (whole,
    /// by rename), with `edit` applied to the current settings; returns the
    /// new file's SHA-256.
    pub fn edit_settings(&mut self, edit: impl FnOnce(&mut serde_json::Value)) -> anyhow::Result<String> {
        edit(&mut self.filter_config);
        let text = format!("{}\n", serde_json::to_string_pretty(&self.filter_config)?);
        self.write_settings(text.as_bytes())
    }

    /// Writes `bytes` as the live settings file (valid or not); returns their SHA-256.
    pub fn write_settings(&self, bytes: &[u8]) -> anyhow::Result<String> {
        let staging = self.state_dir.join("edge-settings.json.saving");
        std::fs::write(&staging, bytes)?;
        std::fs::rename(&staging, self.settings_path())?;
        Ok(mcp_image_gateway::telemetry::sha256(bytes))
    }

    /// Waits until Envoy reports running the settings `sha256`.
    pub async fn wait_settings(&self, sha256: &str, within: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        if edge_settings::runs(&http_client(), &self.admin_url, sha256, within).await {
            return Ok(started.elapsed());
        }
        bail!(
            "Envoy did not report running settings {sha256} within {within:?}:\n{}\n{}",
            self.log_tail("settings-watcher"),
            self.log_tail("envoy")
        )
    }

    /// The settings-change events the watcher audited.
    pub fn settings_events(&self) -> Vec<serde_json::Value> {
        self.audit_events_of("settings-watcher")
    }

    /// The settings-change events once `done` holds for them, or as they are
    /// after `within`. The watcher audits after it has asked Envoy, so an
    /// event can trail Envoy's own counters by a poll.
    pub async fn settings_events_when(
        &self,
        within: Duration,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + within;
        loop {
            let events = self.settings_events();
            if done(&events) || Instant::now() >= deadline {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter from Envoy's admin `/stats`.
    pub async fn envoy_stat(&self, name: &str) -> u64 {
        let text = http_client()
            .get(format!(
                "{}/stats?filter=^{}$",
                self.admin_url,
                name.replace('.', "\\.")
            ))
            .send()
            .await
            .ok();
        let Some(response) = text else { return 0 };
        let body = response.text().await.unwrap_or_default();
        body.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}: ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Audit events every upstream replica logged.
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        let replicas: Vec<String> = self
            .children
            .iter()
            .map(|(n, _)| n.clone())
            .filter(|n| n.starts_with("upstream"))
            .collect();
        replicas.iter().flat_map(|name| self.audit_events_of(name)).collect()
    }

    /// Audit events one upstream replica (`upstream`, `upstream-2`, ...) logged.
    pub fn audit_events_of(&self, name: &str) -> Vec<serde_json::Value> {
        self.log(name)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|event| event["target"] == "audit")
            .collect()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            for (name, _) in &self.children {
                eprintln!(
                    "---- {name} log ({}) ----\n{}",
                    self.state_dir.display(),
                    self.log_tail(name)
                );
            }
        } else {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}
