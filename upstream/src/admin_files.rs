//! The upstream's admin files — routes, models, budgets, the content
//! policy and the two keyrings — re-read while it runs: on a change seen by polling and on
//! SIGHUP. The files are validated together (a models change can break a
//! route); good ones replace the state new calls get, a bad one is kept out
//! with a log line, a metric and an audit event, and the running settings
//! stay. A call in flight keeps the state it started with: each request
//! takes one snapshot (`Live`).

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::state::AppState;
use crate::telemetry::sha256;

/// The state new requests get; replaced whole when admin files change.
#[derive(Clone)]
pub struct Live(Arc<RwLock<AppState>>);

impl Live {
    pub fn new(state: AppState) -> Self {
        Self(Arc::new(RwLock::new(state)))
    }

    /// The state as it is now, for one request.
    pub fn snapshot(&self) -> AppState {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    fn replace(&self, state: AppState) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = state;
    }
}

/// Handlers extract `State<AppState>`: each gets the snapshot of its request.
impl FromRef<Live> for AppState {
    fn from_ref(live: &Live) -> AppState {
        live.snapshot()
    }
}

/// One admin file and the content the running state was built from.
struct AdminFile {
    /// `routes`, `models`, `budgets`, `content_policy`, `url_keys`, `identity_keys`.
    name: &'static str,
    path: PathBuf,
    /// SHA-256 of the content running now.
    running: Option<String>,
    /// SHA-256 of content last refused (not reported again until it changes).
    refused: Option<String>,
}

/// The admin files a service was started with.
pub struct AdminFiles {
    files: Vec<AdminFile>,
}

impl AdminFiles {
    /// The files `config` names, as they are now (what the state was built from).
    pub fn of(config: &ServeConfig) -> Self {
        let files = config
            .admin_files()
            .into_iter()
            .map(|(name, path)| AdminFile {
                running: std::fs::read(&path).ok().map(|bytes| sha256(&bytes)),
                name,
                path,
                refused: None,
            })
            .collect();
        Self { files }
    }

    /// Reports the running hashes (at start) and zero reload counts.
    pub fn report(&self, state: &AppState) {
        let now = chrono::Utc::now().timestamp();
        for file in &self.files {
            // Zero series from the start, so rates and alerts see the first change.
            for result in ["applied", "rejected"] {
                let _ = state
                    .metrics
                    .admin_file_reloads
                    .get_or_create(&labels(file.name, result));
            }
            if let Some(sha) = &file.running {
                set_info(state, file.name, sha, 1);
                set_changed(state, file.name, now);
            }
        }
    }

    /// Looks at every file once; when any changed, rebuilds the state from
    /// all of them and swaps it in, or keeps the running one. `forced`
    /// (SIGHUP) rebuilds even when no content changed.
    pub fn check(&mut self, live: &Live, config: &ServeConfig, forced: bool) {
        let current: Vec<Option<String>> = self
            .files
            .iter()
            .map(|file| std::fs::read(&file.path).ok().map(|bytes| sha256(&bytes)))
            .collect();
        let changed: Vec<usize> = (0..self.files.len())
            .filter(|&i| current[i] != self.files[i].running && current[i] != self.files[i].refused)
            .collect();
        if changed.is_empty() && !forced {
            return;
        }
        let state = live.snapshot();
        match state.reload(config) {
            Ok(reloaded) => {
                let now = chrono::Utc::now().timestamp();
                for (file, sha) in self.files.iter_mut().zip(&current) {
                    if file.running == *sha {
                        continue;
                    }
                    if let Some(old) = &file.running {
                        set_info(&reloaded, file.name, old, 0);
                    }
                    if let Some(new) = sha {
                        set_info(&reloaded, file.name, new, 1);
                    }
                    set_changed(&reloaded, file.name, now);
                    reloaded
                        .metrics
                        .admin_file_reloads
                        .get_or_create(&labels(file.name, "applied"))
                        .inc();
                    tracing::info!(file = %file.path.display(), sha256 = sha.as_deref(), "admin file applied");
                    audit(file, sha.as_deref(), "applied", None);
                    file.running = sha.clone();
                    file.refused = None;
                }
                live.replace(reloaded);
            }
            Err(error) => {
                let reason = format!("{error:#}");
                for &i in &changed {
                    let file = &mut self.files[i];
                    state
                        .metrics
                        .admin_file_reloads
                        .get_or_create(&labels(file.name, "rejected"))
                        .inc();
                    tracing::warn!(
                        file = %file.path.display(),
                        "admin file refused, the running settings stay: {reason}"
                    );
                    audit(file, current[i].as_deref(), "rejected", Some(&reason));
                    file.refused = current[i].clone();
                }
            }
        }
    }

    /// Checks every `interval` and on SIGHUP until `stop`.
    pub fn spawn(mut self, live: Live, config: Arc<ServeConfig>, interval: Duration, stop: CancellationToken) {
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hup = std::future::pending::<Option<()>>();
                let forced = tokio::select! {
                    _ = tokio::time::sleep(interval) => false,
                    _ = hup => true,
                    _ = stop.cancelled() => return,
                };
                self.check(&live, &config, forced);
            }
        });
    }
}

fn labels(file: &str, result: &str) -> crate::telemetry::metrics::FileLabels {
    crate::telemetry::metrics::FileLabels {
        file: file.into(),
        result: result.into(),
    }
}

fn set_info(state: &AppState, file: &str, sha: &str, value: i64) {
    let labels = crate::telemetry::metrics::FileHashLabels {
        file: file.into(),
        sha256: sha.into(),
    };
    state.metrics.admin_file_info.get_or_create(&labels).set(value);
}

fn set_changed(state: &AppState, file: &str, at: i64) {
    let labels = crate::telemetry::metrics::FileNameLabels { file: file.into() };
    state.metrics.admin_file_changed.get_or_create(&labels).set(at);
}

/// One audit line per file change, in the stream of call events.
fn audit(file: &AdminFile, sha_after: Option<&str>, result: &str, reason: Option<&str>) {
    tracing::info!(
        target: "audit",
        event = "settings_change",
        component = "upstream",
        file = %file.path.display(),
        kind = file.name,
        sha256_before = file.running.as_deref(),
        sha256_after = sha_after,
        result,
        reason,
    );
}
