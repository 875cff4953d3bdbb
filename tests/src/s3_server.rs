//! A real S3-compatible server for storage tests: `s3s-fs` (crates.io),
//! which checks SigV4 signatures and presigned-URL expiry.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::stack::free_port;

/// A running s3s-fs with one bucket; stopped on drop.
pub struct S3Server {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    root: PathBuf,
    child: Child,
}

fn binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("S3S_FS_BIN") {
        return PathBuf::from(bin);
    }
    let cargo_bin = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|home| home.join("bin/s3s-fs"));
    match cargo_bin {
        Some(path) if path.exists() => path,
        _ => PathBuf::from("s3s-fs"),
    }
}

impl S3Server {
    pub async fn start(bucket: &str) -> anyhow::Result<S3Server> {
        let root = std::env::temp_dir().join(format!("s3s-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join(bucket))?;
        let port = free_port();
        let (access_key, secret_key) = (
            "gateway-test".to_string(),
            format!("secret-{}", uuid::Uuid::new_v4().simple()),
        );
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", &access_key, "--secret-key", &secret_key])
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting s3s-fs (install it with `make test-clients` or `cargo install s3s-fs@0.14.1 --features binary --locked`)")?;
        let server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: bucket.to_string(),
            access_key,
            secret_key,
            root,
            child,
        };
        if crate::stack::wait_for_port(port, Duration::from_secs(10)).await {
            return Ok(server);
        }
        bail!("s3s-fs did not listen on {port}")
    }

    /// Stops the server (an outage); the stored files stay.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Upstream environment selecting this server as the image store.
    pub fn upstream_env(&self) -> Vec<(String, String)> {
        [
            ("GATEWAY_STORAGE_URL", format!("s3://{}", self.bucket)),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Objects stored in the bucket (relative paths).
    pub fn objects(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else if let Ok(rel) = path.strip_prefix(base) {
                    out.push(rel.display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        let base = self.root.join(&self.bucket);
        walk(&base, &base, &mut out);
        out.retain(|p| p.ends_with(".png"));
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
