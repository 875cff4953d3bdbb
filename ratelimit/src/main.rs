//! `mcp-ratelimit`: serves `envoy.service.ratelimit.v3.RateLimitService` over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use envoy_types::pb::envoy::service::ratelimit::v3::rate_limit_service_server::RateLimitServiceServer;
use mcp_ratelimit::{limits_file, service::GlobalRateLimiter};

#[derive(Parser)]
#[command(
    name = "mcp-ratelimit",
    version,
    about = "Global rate limits for the MCP gateway's Envoy replicas"
)]
struct Cli {
    /// Address for gRPC (HTTP/2 cleartext; Envoy connects through a cluster).
    #[arg(long, env = "RATELIMIT_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// The limits file (JSON array of limitador limits).
    #[arg(long, env = "RATELIMIT_LIMITS_FILE")]
    limits: PathBuf,
    /// Redis holding the shared counters, e.g. redis://127.0.0.1:6379. `memory`
    /// keeps them in this process (one replica only; development).
    #[arg(long, env = "RATELIMIT_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let limits = limits_file::load(&cli.limits)?;
    let count = limits.len();
    let limiter = if cli.redis_url == "memory" {
        GlobalRateLimiter::in_memory(limits)?
    } else {
        GlobalRateLimiter::with_redis(&cli.redis_url, limits).await?
    };
    let listener = tokio::net::TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(address = %local, limits = count, store = %store_name(&cli.redis_url), "rate-limit service listening");
    tonic::transport::Server::builder()
        .add_service(RateLimitServiceServer::new(limiter))
        .serve_with_incoming_shutdown(tonic::transport::server::TcpIncoming::from(listener), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .context("the gRPC server failed")?;
    Ok(())
}

fn store_name(url: &str) -> &str {
    if url == "memory" {
        "memory"
    } else {
        "redis"
    }
}
