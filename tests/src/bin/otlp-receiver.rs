//! The OTLP/gRPC receiver as a process, for the benchmarks' tracing-on
//! rows: prints `{"endpoint"}` on one line, counts spans (keeping none),
//! and on SIGINT prints `{"spans": N}` and exits.

use gateway_tests::otlp_receiver::OtlpReceiver;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut address = "127.0.0.1:0".to_string();
    while let Some(flag) = args.next() {
        match (flag.as_str(), args.next()) {
            ("--listen", Some(value)) => address = value,
            _ => anyhow::bail!("unknown flag {flag}; expected --listen ADDR"),
        }
    }
    let receiver = OtlpReceiver::start_on(&address, true).await?;
    println!("{}", serde_json::json!({"endpoint": receiver.endpoint}));
    tokio::signal::ctrl_c().await?;
    println!("{}", serde_json::json!({"spans": receiver.count()}));
    Ok(())
}
