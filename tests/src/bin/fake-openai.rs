//! The OpenAI fake as a process, for `make bench-stack`: prints
//! `{"base_url", "api_key"}` on one line, then serves until killed;
//! `--compatible` answers as a self-hosted OpenAI-compatible server; `--png FILE`
//! answers every PNG generation with that file.

use std::time::Duration;

use gateway_tests::fake_openai::{FakeOpenAi, FakeOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut address = "127.0.0.1:0".to_string();
    let mut latency_ms = 0u64;
    let mut compatible = false;
    let mut png = None;
    while let Some(flag) = args.next() {
        if flag == "--compatible" {
            compatible = true;
            continue;
        }
        let value = args.next().unwrap_or_default();
        match flag.as_str() {
            "--listen" => address = value,
            "--latency-ms" => latency_ms = value.parse()?,
            "--png" => png = Some(std::fs::read(&value)?),
            other => {
                anyhow::bail!("unknown flag {other}; expected --listen ADDR --latency-ms N [--png FILE] [--compatible]")
            }
        }
    }
    let fake = FakeOpenAi::start_on(
        &address,
        FakeOptions {
            latency: Duration::from_millis(latency_ms),
            // A self-hosted OpenAI-compatible server (LocalAI's classic Images API).
            compatible,
            png,
            ..FakeOptions::default()
        },
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({"base_url": fake.base_url, "api_key": fake.api_key})
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
