//! `mcp-image-gateway evidence --out DIR`: what an auditor reads without
//! us, in one folder with a `manifest.json` of every file's SHA-256 and
//! the controls it supports (README, "Compliance evidence"). The pure parts
//! (redaction, summaries, the manifest) test on the host; `collect` is the
//! glue that reads the store, the settings and the repository.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::config::ServeConfig;
use crate::storage::store::ImageStore;
use crate::telemetry::{audit_chain, sha256};

/// Audit events that show the lifecycle controls at work.
const LIFECYCLE_EVENTS: [&str; 3] = ["erasure", "retention_sweep", "settings_change"];
/// Deploy manifests that are access controls.
const ACCESS_KINDS: [&str; 3] = ["NetworkPolicy", "AuthorizationPolicy", "PeerAuthentication"];

/// Where the bundle's inputs are.
pub struct Sources {
    pub out: PathBuf,
    pub edge_settings: Option<PathBuf>,
    pub deploy_dir: PathBuf,
    pub bench_dir: PathBuf,
    pub test_output: PathBuf,
    pub include: Vec<PathBuf>,
    pub since: Option<chrono::DateTime<chrono::Utc>>,
}

/// Controls each file supports, by its path in the bundle.
pub fn controls_of(path: &str) -> Vec<&'static str> {
    let table: [(&str, &[&str]); 9] = [
        ("settings/", &["SOC2 CC8.1", "SOC2 CC6.1"]),
        ("audit/verification", &["SOC2 CC7.2", "SOC2 CC7.3"]),
        ("audit/lifecycle", &["GDPR 5(1)(e)", "GDPR 17", "SOC2 CC8.1"]),
        ("retention", &["GDPR 5(1)(e)"]),
        ("access-controls/", &["SOC2 CC6.1", "SOC2 CC6.6"]),
        ("tls", &["SOC2 CC6.7"]),
        ("sbom/", &["SOC2 CC8.1", "SOC2 CC7.1"]),
        ("tests/", &["SOC2 CC8.1"]),
        ("bench/", &["SOC2 CC7.1"]),
    ];
    table
        .iter()
        .filter(|(prefix, _)| path.starts_with(prefix))
        .flat_map(|(_, controls)| controls.iter().copied())
        .collect()
}

/// Replaces secrets by name (keys, hashes, tokens, passwords) and the
/// password of any URL, everywhere in `value`.
pub fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (name, field) in map.iter_mut() {
                if is_secret_name(name) && !field.is_null() {
                    *field = Value::String("[redacted]".into());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        Value::String(text) => {
            if let Some(clean) = without_url_password(text) {
                *text = clean;
            }
        }
        _ => {}
    }
}

fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let kept = ["_file", "_env", "_id", "_uri", "_url"]
        .iter()
        .any(|s| name.ends_with(s));
    // `sha256` in settings is an API key's hash: not the key, but a guess can be checked against it.
    let exact = ["key", "secret", "hash", "sha256", "token", "password", "private_key"].contains(&name.as_str());
    let suffix = ["_key", "_secret", "_token", "_password", "_hash"]
        .iter()
        .any(|s| name.ends_with(s));
    !kept && (exact || suffix)
}

/// `scheme://user:PASSWORD@host…` with the password replaced.
fn without_url_password(text: &str) -> Option<String> {
    let (scheme, rest) = text.split_once("://")?;
    let (userinfo, host) = rest.split_once('@')?;
    let (user, _) = userinfo.split_once(':')?;
    (!host.contains(' ')).then(|| format!("{scheme}://{user}:[redacted]@{host}"))
}

/// `cargo test` output in numbers: test binaries, passed, failed, ignored.
pub fn test_summary(output: &str) -> Value {
    let mut totals = [0u64; 4];
    for line in output.lines().filter(|l| l.starts_with("test result:")) {
        totals[0] += 1;
        for (index, word) in [(1, "passed"), (2, "failed"), (3, "ignored")] {
            totals[index] += count_before(line, word);
        }
    }
    json!({"test_binaries": totals[0], "passed": totals[1], "failed": totals[2], "ignored": totals[3]})
}

fn count_before(line: &str, word: &str) -> u64 {
    line.split(';')
        .find_map(|part| part.trim().strip_suffix(word)?.trim().rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// The chained events of the lifecycle kinds, at or after `since`.
pub fn lifecycle_events(segments: &[(String, String)], since: Option<&str>) -> Vec<Value> {
    segments
        .iter()
        .flat_map(|(_, text)| text.lines())
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|link| link.get("event").cloned())
        .filter(|event| LIFECYCLE_EVENTS.iter().any(|kind| event["event"] == *kind))
        .filter(|event| match (since, event["time"].as_str().or(event["at"].as_str())) {
            (Some(since), Some(time)) => time >= since,
            _ => true,
        })
        .collect()
}

/// The TLS versions a listener block allows, read off its `tls_params`.
pub fn tls_versions(listener_yaml: &str) -> Value {
    let field = |name: &str| {
        listener_yaml.lines().find_map(|l| {
            l.trim()
                .strip_prefix(name)?
                .trim()
                .strip_prefix(':')
                .map(|v| v.trim().to_string())
        })
    };
    json!({
        "minimum": field("tls_minimum_protocol_version"),
        "maximum": field("tls_maximum_protocol_version"),
    })
}

/// The manifest: every file's path, size, SHA-256 and controls.
pub fn manifest(files: &[(String, Vec<u8>)], generated_at: &str) -> Value {
    let listed: Vec<Value> = files
        .iter()
        .map(|(path, bytes)| {
            json!({"path": path, "bytes": bytes.len(), "sha256": sha256(bytes), "controls": controls_of(path)})
        })
        .collect();
    json!({
        "generated_at": generated_at,
        "gateway_version": env!("CARGO_PKG_VERSION"),
        "files": listed,
    })
}

/// The audit segments in the store (those written since `since`, when
/// given), as `(key, text)`.
pub async fn audit_segments(
    store: &ImageStore,
    since: Option<chrono::DateTime<chrono::Utc>>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut segments = Vec::new();
    for key in store.audit_segments(since).await? {
        let text = store.get_audit(&key).await?;
        segments.push((key, String::from_utf8_lossy(&text).into_owned()));
    }
    Ok(segments)
}

/// Writes the bundle; returns the manifest.
pub async fn collect(config: &ServeConfig, sources: &Sources) -> anyhow::Result<Value> {
    let now = chrono::Utc::now();
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |path: &str, value: &Value| files.push((path.to_string(), pretty(value)));
    let (settings, upstream) = settings(config, sources)?;
    add("settings/edge.json", &settings);
    add("settings/upstream.json", &upstream);
    let keys = config.audit_keys()?;
    let segments = audit_segments(&config.image_store()?, sources.since).await?;
    let report = audit_chain::verify_from(&segments, &keys, sources.since.is_some(), now);
    let since = sources.since.map(|s| s.to_rfc3339());
    let mut verification = report.to_json();
    if let Some(fields) = verification.as_object_mut() {
        fields.insert("checked_at".into(), now.to_rfc3339().into());
        fields.insert("since".into(), json!(since));
        fields.insert("ok".into(), report.broken.is_none().into());
    }
    add("audit/verification.json", &verification);
    add(
        "audit/lifecycle.json",
        &json!({"since": since, "events": lifecycle_events(&segments, since.as_deref())}),
    );
    add(
        "retention.json",
        &json!({
            "images_days": config.retention_days, "uploads_hours": config.upload_retention_hours,
            "audit_days": config.audit_retention_days, "link_validity_secs": config.url_ttl().as_secs(),
        }),
    );
    add("tls.json", &tls(&sources.deploy_dir));
    add(
        "access-controls/tool-access.json",
        &json!({
            "tool_access": settings.get("tool_access"), "tools_call_scope": settings.get("tools_call_scope"),
            "allowed_methods": settings.get("allowed_methods"), "allowed_tools": settings.get("allowed_tools"),
        }),
    );
    files.extend(access_controls(&sources.deploy_dir)?);
    files.extend(summaries(sources)?);
    for path in &sources.include {
        let name = path
            .file_name()
            .context("an --include path without a file name")?
            .to_string_lossy();
        files.push((
            format!("sbom/{name}"),
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ));
    }
    write(&sources.out, files, &now.to_rfc3339())
}

fn pretty(value: &Value) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

/// The edge settings (as Envoy runs them: their hash is the one
/// `mcp_edge_settings_info` shows) and the upstream's, secrets redacted.
fn settings(config: &ServeConfig, sources: &Sources) -> anyhow::Result<(Value, Value)> {
    let edge_path = sources
        .edge_settings
        .clone()
        .unwrap_or_else(|| config.state_dir.join("edge-settings.json"));
    let text =
        std::fs::read(&edge_path).with_context(|| format!("reading the edge settings {}", edge_path.display()))?;
    let mut edge: Value =
        serde_json::from_slice(&text).with_context(|| format!("{} is not JSON", edge_path.display()))?;
    redact(&mut edge);
    let mut edge_out = Map::new();
    edge_out.insert("file".into(), edge_path.display().to_string().into());
    edge_out.insert("sha256".into(), sha256(&text).into());
    if let Value::Object(fields) = edge {
        edge_out.extend(fields);
    }
    let mut upstream = serde_json::to_value(config)?;
    redact(&mut upstream);
    let admin_files: Vec<Value> = config
        .admin_files()
        .into_iter()
        .map(|(name, path)| {
            let sha = std::fs::read(&path).ok().map(|b| sha256(&b));
            json!({"file": name, "path": path.display().to_string(), "sha256": sha})
        })
        .collect();
    Ok((
        Value::Object(edge_out),
        json!({"settings": upstream, "admin_files": admin_files}),
    ))
}

fn tls(deploy_dir: &Path) -> Value {
    let listener = super::devkit::tls_listener_yaml(Path::new("CERT"), Path::new("KEY"), 8443);
    let mesh = read_yaml_files(deploy_dir)
        .into_iter()
        .filter(|(_, text)| text.contains("kind: PeerAuthentication"))
        .map(|(path, text)| json!({"file": path, "mtls_strict": text.contains("mode: STRICT")}))
        .collect::<Vec<_>>();
    json!({"edge_listener": tls_versions(&listener), "mesh_peer_authentication": mesh,
           "provider_calls": "HTTPS with rustls and the webpki roots"})
}

fn access_controls(deploy_dir: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    Ok(read_yaml_files(deploy_dir)
        .into_iter()
        .filter(|(_, text)| ACCESS_KINDS.iter().any(|kind| text.contains(&format!("kind: {kind}"))))
        .map(|(path, text)| {
            (
                format!("access-controls/{}", path.replace('/', "__")),
                text.into_bytes(),
            )
        })
        .collect())
}

fn read_yaml_files(dir: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(next) = dirs.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                if let (Ok(text), Ok(rel)) = (std::fs::read_to_string(&path), path.strip_prefix(dir)) {
                    found.push((rel.display().to_string(), text));
                }
            }
        }
    }
    found.sort();
    found
}

/// The latest test run's numbers and the benchmark tables.
fn summaries(sources: &Sources) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut files = Vec::new();
    if let Ok(output) = std::fs::read_to_string(&sources.test_output) {
        let modified = std::fs::metadata(&sources.test_output)
            .and_then(|m| m.modified())
            .map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339())
            .ok();
        let mut summary = test_summary(&output);
        summary["run_at"] = modified.into();
        files.push(("tests/summary.json".to_string(), pretty(&summary)));
    }
    for (name, path) in read_dir_files(&sources.bench_dir, "md") {
        files.push((format!("bench/{name}"), std::fs::read(path)?));
    }
    Ok(files)
}

fn read_dir_files(dir: &Path, extension: &str) -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
        .collect();
    found.sort();
    found
}

fn write(out: &Path, files: Vec<(String, Vec<u8>)>, generated_at: &str) -> anyhow::Result<Value> {
    for (path, bytes) in &files {
        let target = out.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, bytes).with_context(|| format!("writing {}", target.display()))?;
    }
    let manifest = manifest(&files, generated_at);
    std::fs::write(out.join("manifest.json"), pretty(&manifest))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_by_name_and_in_urls() {
        let mut value = json!({
            "api_keys": [{"hash": "abc", "org": "acme", "key_id": "k1"}],
            "identity_assertion": {"key": "deadbeef", "key_env": "MCP_KEY"},
            "openai_api_key": "sk-live", "url_signing_key_file": "/keys/url",
            "budget_redis_url": "redis://user:hunter2@redis:6379/0", "missing_token": null,
        });
        redact(&mut value);
        let text = value.to_string();
        for secret in ["abc", "deadbeef", "sk-live", "hunter2"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(value["api_keys"][0]["key_id"], "k1");
        assert_eq!(value["identity_assertion"]["key_env"], "MCP_KEY");
        assert_eq!(value["url_signing_key_file"], "/keys/url");
        assert_eq!(value["budget_redis_url"], "redis://user:[redacted]@redis:6379/0");
        assert!(value["missing_token"].is_null());
    }

    #[test]
    fn test_output_is_counted() {
        let output = "test a ... ok\ntest result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1s\n\
                      test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n";
        assert_eq!(
            test_summary(output),
            json!({"test_binaries": 2, "passed": 10, "failed": 2, "ignored": 1})
        );
    }

    #[test]
    fn lifecycle_events_are_picked_by_kind_and_time() {
        let link = |event: Value| json!({"seq": 0, "prev": "0", "event": event}).to_string();
        let text = [
            link(json!({"event": "tool_call", "time": "2026-12-01T00:00:00Z"})),
            link(json!({"event": "erasure", "at": "2026-12-02T00:00:00Z"})),
            link(json!({"event": "retention_sweep", "time": "2026-11-01T00:00:00Z"})),
        ]
        .join("\n");
        let segments = vec![("audit/r/0.jsonl".to_string(), text)];
        assert_eq!(lifecycle_events(&segments, None).len(), 2);
        let recent = lifecycle_events(&segments, Some("2026-11-15T00:00:00Z"));
        assert_eq!(recent.len(), 1);
        assert_eq!(recent[0]["event"], "erasure");
    }

    #[test]
    fn the_manifest_hashes_every_file_and_names_its_controls() {
        let files = vec![("tls.json".to_string(), b"{}".to_vec())];
        let manifest = manifest(&files, "now");
        assert_eq!(manifest["files"][0]["sha256"], sha256(b"{}"));
        assert_eq!(manifest["files"][0]["controls"], json!(["SOC2 CC6.7"]));
        assert_eq!(
            tls_versions("tls_minimum_protocol_version: TLSv1_3\n")["minimum"],
            "TLSv1_3"
        );
    }
}
