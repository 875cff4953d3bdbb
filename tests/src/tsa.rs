//! An RFC 3161 time-stamp authority for tests: OpenSSL's own responder
//! (`openssl ts -reply`, a real TSA implementation from the Debian
//! `openssl` package) behind a one-route HTTP server speaking RFC 3161 §3.4
//! (POST `application/timestamp-query`, answer `application/timestamp-reply`).
//! Its root and time-stamping certificate are made by `openssl` at start.
//! It counts the requests it answered.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

const CONFIG: &str = "
[ tsa ]
default_tsa = tsa_config

[ tsa_config ]
dir = .
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/root.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.4146.2.3
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256

[ root_ext ]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash

[ tsa_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, timeStamping
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

/// A running time-stamp authority.
pub struct TimeStampAuthority {
    /// Where to POST requests.
    pub url: String,
    /// Its root certificate (PEM), for a validator's trust anchors.
    pub root_pem: String,
    state: Arc<Authority>,
    _server: tokio::task::JoinHandle<()>,
}

struct Authority {
    dir: PathBuf,
    answered: AtomicUsize,
}

impl TimeStampAuthority {
    /// Makes its root and signing certificate under `dir` and starts serving.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("tsa.cnf"), CONFIG)?;
        std::fs::write(dir.join("serial"), "01\n")?;
        let steps: [&[&str]; 4] = [
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "root.key",
            ],
            &[
                "req",
                "-new",
                "-x509",
                "-key",
                "root.key",
                "-subj",
                "/CN=Test TSA Root",
                "-days",
                "30",
                "-config",
                "tsa.cnf",
                "-extensions",
                "root_ext",
                "-out",
                "root.pem",
            ],
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "tsa.key",
                "-subj",
                "/CN=Test Time-Stamp Authority",
                "-out",
                "tsa.csr",
            ],
            &[
                "x509",
                "-req",
                "-in",
                "tsa.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "30",
                "-extfile",
                "tsa.cnf",
                "-extensions",
                "tsa_ext",
                "-out",
                "tsa.pem",
            ],
        ];
        for args in steps {
            openssl(dir, args)?;
        }
        let state = Arc::new(Authority {
            dir: dir.to_path_buf(),
            answered: AtomicUsize::new(0),
        });
        let app = Router::new().route("/", post(answer)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self {
            url,
            root_pem: std::fs::read_to_string(dir.join("root.pem"))?,
            state,
            _server: server,
        })
    }

    /// How many time-stamps it has issued.
    pub fn answered(&self) -> usize {
        self.state.answered.load(Ordering::SeqCst)
    }
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("openssl").args(args).current_dir(dir).output()?;
    anyhow::ensure!(
        output.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(output.stdout)
}

/// One request: `openssl ts -reply` answers it (one at a time: it keeps a serial file).
async fn answer(State(state): State<Arc<Authority>>, headers: HeaderMap, query: Bytes) -> Response {
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/timestamp-query") {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "expected application/timestamp-query",
        )
            .into_response();
    }
    let dir = state.dir.clone();
    let reply = tokio::task::spawn_blocking(move || {
        static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::write(dir.join("query.tsq"), &query)?;
        openssl(
            &dir,
            &[
                "ts",
                "-reply",
                "-config",
                "tsa.cnf",
                "-queryfile",
                "query.tsq",
                "-out",
                "reply.tsr",
            ],
        )?;
        Ok::<_, anyhow::Error>(std::fs::read(dir.join("reply.tsr"))?)
    })
    .await;
    match reply {
        Ok(Ok(reply)) => {
            state.answered.fetch_add(1, Ordering::SeqCst);
            ([("content-type", "application/timestamp-reply")], reply).into_response()
        }
        Ok(Err(e)) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
