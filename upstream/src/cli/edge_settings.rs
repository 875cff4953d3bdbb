//! The edge filter's settings as a file an admin edits (`make run` keeps
//! them in `.state/edge-settings.json`): checked offline with the filter's
//! own validation code (`check-settings`), handed to a running Envoy through
//! ECDS (Envoy watches the rendered resource and applies it without a
//! restart), and every change audited with what changed and whether Envoy
//! took it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::telemetry::sha256;
use anyhow::Context;
use mcp_edge_filter::config::FilterConfig;
use serde_json::Value;

/// The name of the filter and of its ECDS resource.
pub const FILTER_NAME: &str = "mcp_edge";
/// The ECDS file Envoy watches, inside the watched directory.
pub const RESOURCE_FILE: &str = "mcp_edge.yaml";
/// The placeholder of the settings in the Envoy template.
const SETTINGS_PLACEHOLDER: &str = "${FILTER_CONFIG}";

/// Where `render-envoy --ecds-dir DIR` keeps the ECDS resource with the
/// settings left to fill in (beside the watched directory, not in it).
pub fn resource_template_path(ecds_dir: &Path) -> PathBuf {
    ecds_dir.with_extension("resource.tmpl")
}

/// Settings the filter accepted: their SHA-256 (what `mcp_edge_settings_info`
/// reports once Envoy runs them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub sha256: String,
}

/// Checks settings with the filter's own code; the error names the field.
pub fn check(bytes: &[u8]) -> Result<Accepted, String> {
    FilterConfig::from_json(bytes)
        .map(|config| Accepted {
            sha256: config.identity.sha256,
        })
        .map_err(|error| error.to_string())
}

/// An Envoy template split for live settings: the bootstrap, whose
/// `mcp_edge` filter takes its configuration from a watched ECDS file, and
/// the ECDS resource with the settings still to fill in.
#[derive(Debug)]
pub struct EcdsSplit {
    pub bootstrap: String,
    pub resource_template: String,
}

/// Splits a rendered-but-for-settings template (`${FILTER_CONFIG}` still in
/// it) for ECDS from `dir`. The filter block is the one between `- name:
/// mcp_edge` and the router (`devkit::edge_filter_block`).
pub fn split_for_ecds(template: &str, dir: &Path) -> anyhow::Result<EcdsSplit> {
    let std::ops::Range { start, end } = crate::cli::devkit::edge_filter_block(template)?;
    let block = &template[start..end];
    let typed = block
        .find("typed_config:\n")
        .context("the mcp_edge filter has no typed_config")?;
    let type_url = block[typed..]
        .lines()
        .find_map(|line| line.trim().strip_prefix("\"@type\": "))
        .context("the mcp_edge typed_config has no @type")?
        .trim_matches('"')
        .to_string();
    // The typed_config's body, re-indented under the resource.
    let indent = block[..typed].rsplit('\n').next().map_or(0, str::len) + 2;
    let mut resource = format!(
        "resources:\n- \"@type\": type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig\n  name: {FILTER_NAME}\n  typed_config:\n"
    );
    for line in block[typed..].lines().skip(1) {
        let body = line.get(indent.min(line.len())..).unwrap_or_default();
        if line.trim().is_empty() || body.trim_start().starts_with('#') {
            continue;
        }
        resource.push_str("    ");
        resource.push_str(body);
        resource.push('\n');
    }
    // The settings go in as one JSON string (valid YAML), byte for byte.
    let scalar_start = resource
        .find("value: |\n")
        .context("the mcp_edge settings are not a `value: |` block")?;
    let scalar_end = resource[scalar_start..]
        .find(SETTINGS_PLACEHOLDER)
        .map(|at| scalar_start + at + SETTINGS_PLACEHOLDER.len())
        .context("the mcp_edge block has no ${FILTER_CONFIG}")?;
    resource.replace_range(scalar_start..scalar_end, &format!("value: {SETTINGS_PLACEHOLDER}"));
    let discovery = format!(
        "          - name: {FILTER_NAME}\n            config_discovery:\n              config_source:\n                path_config_source:\n                  path: {path}\n                  watched_directory: {{ path: {dir} }}\n              type_urls: [\"{type_url}\"]\n",
        path = dir.join(RESOURCE_FILE).display(),
        dir = dir.display(),
    );
    let mut bootstrap = format!("{}{}{}", &template[..start], discovery, &template[end..]);
    // ECDS needs a node identity.
    if !bootstrap.lines().any(|line| line.starts_with("node:")) {
        bootstrap.insert_str(0, "node: { id: mcp-image-gateway, cluster: mcp-image-gateway }\n");
    }
    Ok(EcdsSplit {
        bootstrap,
        resource_template: resource,
    })
}

/// Sets up live settings from `dir` for an Envoy template and its
/// variables: writes the ECDS resource with `settings` (and its template,
/// for `watch-edge-settings`) and returns the bootstrap to start Envoy with.
pub fn install(
    template: &str,
    vars: &std::collections::BTreeMap<String, String>,
    dir: &Path,
    settings: &[u8],
) -> anyhow::Result<String> {
    let mut vars = vars.clone();
    vars.insert("FILTER_CONFIG".into(), SETTINGS_PLACEHOLDER.into());
    let split = split_for_ecds(&crate::cli::devkit::render(template, &vars)?, dir)?;
    std::fs::write(resource_template_path(dir), &split.resource_template)?;
    write_atomically(
        &dir.join(RESOURCE_FILE),
        &render_resource(&split.resource_template, settings)?,
    )?;
    Ok(split.bootstrap)
}

/// The ECDS resource carrying `settings` (which must be UTF-8: Envoy takes
/// them as a string).
pub fn render_resource(resource_template: &str, settings: &[u8]) -> anyhow::Result<String> {
    let text = std::str::from_utf8(settings).context("the settings file is not UTF-8 text")?;
    Ok(resource_template.replace(SETTINGS_PLACEHOLDER, &serde_json::to_string(text)?))
}

/// Writes `contents` to `path` by renaming a sibling into place, so Envoy's
/// directory watch never reads half a file.
pub fn write_atomically(path: &Path, contents: &str) -> anyhow::Result<()> {
    let dir = path.parent().context("the ECDS path has no directory")?;
    std::fs::create_dir_all(dir)?;
    // Outside the watched directory: only the rename lands in it.
    let staging = dir.with_extension("staging");
    std::fs::write(&staging, contents).with_context(|| format!("writing {}", staging.display()))?;
    std::fs::rename(&staging, path).with_context(|| format!("moving settings into {}", path.display()))
}

/// The dotted names of the fields that differ between two settings
/// documents (objects compared to depth 3; values are never reported, so
/// secrets stay out of the audit).
pub fn changed_fields(before: Option<&Value>, after: Option<&Value>) -> Vec<String> {
    fn walk(prefix: &str, a: Option<&Value>, b: Option<&Value>, depth: usize, out: &mut Vec<String>) {
        if a == b {
            return;
        }
        match (a, b) {
            (Some(Value::Object(a)), Some(Value::Object(b))) if depth < 3 => {
                let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                for key in keys {
                    let name = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    walk(&name, a.get(key), b.get(key), depth + 1, out);
                }
            }
            _ => out.push(if prefix.is_empty() {
                "(whole file)".into()
            } else {
                prefix.into()
            }),
        }
    }
    let mut out = Vec::new();
    walk("", before, after, 0, &mut out);
    out
}

/// What became of one settings change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Envoy runs the new settings.
    Applied,
    /// The filter refused them (the reason names the field); the running
    /// settings stay.
    Rejected(String),
    /// Handed to Envoy, which did not report them running in time.
    Unconfirmed,
}

/// One settings change, for the audit.
#[derive(Debug, Clone)]
pub struct Change {
    pub file: PathBuf,
    pub sha256_before: Option<String>,
    pub sha256_after: String,
    pub changed_fields: Vec<String>,
    pub outcome: Outcome,
}

impl Change {
    /// Writes the change as one audit line, in the stream of call events.
    pub fn emit(&self) {
        let (result, reason) = match &self.outcome {
            Outcome::Applied => ("applied", None),
            Outcome::Rejected(reason) => ("rejected", Some(reason.as_str())),
            Outcome::Unconfirmed => ("unconfirmed", None),
        };
        tracing::info!(
            target: "audit",
            event = "settings_change",
            component = "edge",
            file = %self.file.display(),
            sha256_before = self.sha256_before.as_deref(),
            sha256_after = self.sha256_after.as_str(),
            changed_fields = self.changed_fields.join(","),
            result,
            reason,
        );
    }
}

/// Follows a settings file and keeps Envoy's ECDS resource in step with it.
pub struct Watcher {
    pub settings: PathBuf,
    pub resource_template: String,
    pub resource: PathBuf,
    /// Envoy's admin URL, to confirm which settings it runs.
    pub envoy_admin: Option<String>,
    /// The bytes last handed on, and their JSON.
    last: Option<(Vec<u8>, Option<Value>)>,
    /// The settings Envoy last ran, as far as this watcher knows.
    running: Option<String>,
}

impl Watcher {
    pub fn new(settings: PathBuf, resource_template: String, resource: PathBuf, envoy_admin: Option<String>) -> Self {
        Self {
            settings,
            resource_template,
            resource,
            envoy_admin,
            last: None,
            running: None,
        }
    }

    /// Takes the file as it is now as the running settings (at start, when
    /// Envoy was started with them).
    pub fn settle(&mut self) -> anyhow::Result<()> {
        let bytes = std::fs::read(&self.settings).with_context(|| format!("reading {}", self.settings.display()))?;
        self.running = Some(sha256(&bytes));
        let json = serde_json::from_slice(&bytes).ok();
        self.last = Some((bytes, json));
        Ok(())
    }

    /// Looks at the file once; hands on a change and reports it.
    pub async fn poll(&mut self, http: &reqwest::Client) -> Option<Change> {
        let bytes = std::fs::read(&self.settings).ok()?;
        if self.last.as_ref().is_some_and(|(last, _)| *last == bytes) {
            return None;
        }
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        let before = self.last.as_ref().and_then(|(_, json)| json.as_ref());
        let changed_fields = changed_fields(before, json.as_ref());
        let sha256_after = sha256(&bytes);
        let checked = check(&bytes);
        // Handed on even when refused here: Envoy's own refusal (logged,
        // counted in `extension_config_discovery…update_rejected`) is the
        // path every control plane's bad push takes, and it keeps the
        // running settings.
        let written = render_resource(&self.resource_template, &bytes)
            .and_then(|resource| write_atomically(&self.resource, &resource));
        let outcome = match (checked, written) {
            (_, Err(error)) => Outcome::Rejected(format!("{error:#}")),
            (Err(reason), Ok(())) => Outcome::Rejected(reason),
            (Ok(accepted), Ok(())) => match &self.envoy_admin {
                Some(admin) if !runs(http, admin, &accepted.sha256, Duration::from_secs(5)).await => {
                    Outcome::Unconfirmed
                }
                _ => Outcome::Applied,
            },
        };
        let change = Change {
            file: self.settings.clone(),
            sha256_before: self.running.clone(),
            sha256_after,
            changed_fields,
            outcome,
        };
        if change.outcome == Outcome::Applied {
            self.running = Some(change.sha256_after.clone());
        }
        self.last = Some((bytes, json));
        Some(change)
    }

    /// Polls the file every `interval` until `stop`; logs and audits each change.
    pub async fn run(mut self, interval: Duration, stop: tokio_util::sync::CancellationToken) {
        let http = reqwest::Client::new();
        while !stop.is_cancelled() {
            if let Some(change) = self.poll(&http).await {
                match &change.outcome {
                    Outcome::Rejected(reason) => tracing::warn!(
                        file = %change.file.display(),
                        "edge settings refused, the running settings stay: {reason}"
                    ),
                    Outcome::Applied => tracing::info!(sha256 = change.sha256_after, "edge settings applied"),
                    Outcome::Unconfirmed => tracing::warn!(
                        sha256 = change.sha256_after,
                        "edge settings handed to Envoy, which does not report running them; see Envoy's log"
                    ),
                }
                change.emit();
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => {}
            }
        }
    }
}

/// Whether Envoy's admin reports running the settings `sha256`, within `wait`.
pub async fn runs(http: &reqwest::Client, admin: &str, sha256: &str, wait: Duration) -> bool {
    let needle = format!("settings_info{{sha256=\"{sha256}\"}} 1");
    let deadline = Instant::now() + wait;
    loop {
        let stats = http
            .get(format!("{admin}/stats/prometheus?filter=settings_info"))
            .send()
            .await;
        if let Ok(response) = stats {
            if response.text().await.is_ok_and(|text| text.contains(&needle)) {
                return true;
            }
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const TEMPLATE: &str = "static_resources:\n  listeners:\n        http_filters:\n          - name: mcp_edge\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n              config:\n                # a comment\n                name: mcp_edge\n                configuration:\n                  \"@type\": type.googleapis.com/google.protobuf.StringValue\n                  value: |\n                    ${FILTER_CONFIG}\n          - name: envoy.filters.http.router\n";

    #[test]
    fn split_moves_the_filter_block_into_the_resource() {
        let split = split_for_ecds(TEMPLATE, Path::new("/s/ecds")).unwrap();
        assert!(split.bootstrap.starts_with("node: "));
        assert!(split.bootstrap.contains("path: /s/ecds/mcp_edge.yaml"));
        assert!(split
            .bootstrap
            .contains("type_urls: [\"type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\"]"));
        assert!(!split.bootstrap.contains("FILTER_CONFIG"));
        let settings = "{\n  \"max_body_bytes\": 1000,\n  \"quote\": \"a\\\"b\"\n}\n";
        let resource = render_resource(&split.resource_template, settings.as_bytes()).unwrap();
        assert!(resource.contains("\n    \"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n"));
        assert!(resource.contains("\n      name: mcp_edge\n"), "{resource}");
        assert!(!resource.contains("# a comment"));
        // The settings survive byte for byte inside one JSON string.
        let line = resource
            .lines()
            .find(|l| l.trim_start().starts_with("value: "))
            .unwrap();
        let value: String = serde_json::from_str(line.trim_start().trim_start_matches("value: ")).unwrap();
        assert_eq!(value, settings);
    }

    #[test]
    fn changed_fields_name_paths_not_values() {
        let before = json!({"max_body_bytes": 2048, "rate_limits": {"per_caller": {"burst": 40, "requests_per_second": 10}},
            "jwt": {"issuer": "i"}});
        let after = json!({"max_body_bytes": 2048, "rate_limits": {"per_caller": {"burst": 5, "requests_per_second": 10}},
            "tool_access": {"orgs": {}}, "jwt": {"issuer": "i"}});
        assert_eq!(
            changed_fields(Some(&before), Some(&after)),
            vec!["rate_limits.per_caller.burst", "tool_access"]
        );
        assert_eq!(changed_fields(Some(&before), None), vec!["(whole file)"]);
    }

    #[test]
    fn check_names_the_field() {
        let error = check(br#"{"jwt": {"issuer": "i", "audiences": ["a"], "jwks": {"keys": []}}}"#).unwrap_err();
        assert!(error.contains("`jwks` has no usable keys"), "{error}");
        let error = check(br#"{"max_body": 1}"#).unwrap_err();
        assert!(error.contains("unknown field `max_body`"), "{error}");
    }
}
