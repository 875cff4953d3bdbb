//! The global rate-limit service for tests: Debian's `redis-server` and the
//! workspace's `mcp-ratelimit`, on free loopback ports; stopped on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::stack::{free_port, target_dir};

/// Redis plus one rate-limit service in front of it.
pub struct RateLimitService {
    pub grpc_port: u16,
    pub redis_port: u16,
    dir: PathBuf,
    redis: Child,
    service: Option<Child>,
}

pub fn ratelimit_binary() -> anyhow::Result<PathBuf> {
    let path = target_dir().join("debug/mcp-ratelimit");
    if !path.exists() {
        bail!(
            "{} is missing: run `make test` (or `cargo build -p mcp-ratelimit`) first",
            path.display()
        );
    }
    Ok(path)
}

impl RateLimitService {
    /// Starts Redis and the service with `limits` (the limits file's JSON).
    pub async fn start(limits: &serde_json::Value) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("mcp-rl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("limits.json"), limits.to_string())?;
        let redis_port = free_port();
        let redis = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &redis_port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("redis.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server (apt-get install redis-server; `make test-clients` does it)")?;
        let mut this = Self {
            grpc_port: free_port(),
            redis_port,
            dir,
            redis,
            service: None,
        };
        this.wait_for_port(redis_port, "redis-server").await?;
        this.start_service().await?;
        Ok(this)
    }

    /// (Re)starts the gRPC service on its port.
    pub async fn start_service(&mut self) -> anyhow::Result<()> {
        let child = Command::new(ratelimit_binary()?)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.grpc_port))
            .arg("--limits")
            .arg(self.dir.join("limits.json"))
            .arg("--redis-url")
            .arg(format!("redis://127.0.0.1:{}", self.redis_port))
            .env("RUST_LOG", "info,mcp_ratelimit=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("ratelimit.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting mcp-ratelimit")?;
        self.service = Some(child);
        self.wait_for_port(self.grpc_port, "mcp-ratelimit").await
    }

    /// Stops the gRPC service (Redis keeps the counts).
    pub fn stop_service(&mut self) {
        if let Some(mut child) = self.service.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The service's log (one JSON line per event).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ratelimit.log")).unwrap_or_default()
    }

    /// An Envoy cluster named `name` for the service (gRPC needs HTTP/2).
    pub fn envoy_cluster(&self, name: &str) -> String {
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{ http2_protocol_options: {{}} }}\n    load_assignment:\n      cluster_name: {name}\n      endpoints:\n      - lb_endpoints:\n        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {} }} }} }}\n",
            self.grpc_port
        )
    }

    async fn wait_for_port(&mut self, port: u16, name: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(());
            }
            let exited = match name {
                "redis-server" => self.redis.try_wait().ok().flatten(),
                _ => self.service.as_mut().and_then(|c| c.try_wait().ok().flatten()),
            };
            if let Some(status) = exited {
                bail!("{name} exited with {status}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("{name} did not listen on port {port} within 20 s")
    }
}

impl Drop for RateLimitService {
    fn drop(&mut self) {
        self.stop_service();
        let _ = self.redis.kill();
        let _ = self.redis.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
