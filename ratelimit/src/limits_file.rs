//! The limits file: a JSON array of limitador limits, the same shape as
//! limitador-server's `limits.yaml`:
//!
//! ```json
//! [{"namespace": "mcp-gateway", "max_value": 1000, "seconds": 86400,
//!   "conditions": [], "variables": ["descriptors[0].org"], "name": "org-daily-images"}]
//! ```
//!
//! `namespace` is the `domain` Envoy sends; `descriptors[i].<key>` reads entry
//! `<key>` of the request's i-th descriptor.

use std::path::Path;

use limitador::limit::Limit;

#[derive(Debug, thiserror::Error)]
pub enum LimitsFileError {
    #[error("cannot read the limits file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the limits file {path} is not a JSON array of limits: {source}")]
    Parse { path: String, source: serde_json::Error },
    #[error("limit #{index} ({name}) in {path}: {problem}")]
    Invalid {
        path: String,
        index: usize,
        name: String,
        problem: &'static str,
    },
}

/// Reads and checks the limits file.
pub fn load(path: &Path) -> Result<Vec<Limit>, LimitsFileError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| LimitsFileError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// Parses the limits file's text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<Vec<Limit>, LimitsFileError> {
    let limits: Vec<Limit> = serde_json::from_str(text).map_err(|source| LimitsFileError::Parse {
        path: origin.to_string(),
        source,
    })?;
    for (index, limit) in limits.iter().enumerate() {
        let invalid = |problem| LimitsFileError::Invalid {
            path: origin.to_string(),
            index,
            name: limit.name().unwrap_or("unnamed").to_string(),
            problem,
        };
        if limit.seconds() == 0 {
            return Err(invalid("`seconds` must be at least 1"));
        }
        if limit.max_value() == 0 {
            return Err(invalid("`max_value` must be at least 1 (0 would refuse everything)"));
        }
        if limit.namespace().as_ref().is_empty() {
            return Err(invalid("`namespace` (the Envoy rate-limit domain) must not be empty"));
        }
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limitador_limits() {
        let limits = parse(
            r#"[{"namespace": "mcp-gateway", "max_value": 5, "seconds": 86400, "name": "org-daily-images",
                 "conditions": ["descriptors[0].kind == 'images'"], "variables": ["descriptors[0].org"]}]"#,
            "test",
        )
        .unwrap();
        assert_eq!(limits.len(), 1);
        assert_eq!((limits[0].max_value(), limits[0].seconds()), (5, 86400));
        assert_eq!(limits[0].name(), Some("org-daily-images"));
    }

    #[test]
    fn refuses_bad_limits_naming_them() {
        let cases = [
            (r#"{"namespace": "x"}"#, "not a JSON array"),
            (
                r#"[{"namespace": "x", "max_value": 5, "seconds": 0, "conditions": [], "variables": []}]"#,
                "`seconds`",
            ),
            (
                r#"[{"namespace": "x", "max_value": 0, "seconds": 60, "name": "zero", "conditions": [], "variables": []}]"#,
                "limit #0 (zero)",
            ),
            (
                r#"[{"namespace": "x", "max_value": 1, "seconds": 60, "conditions": ["this is not CEL =="], "variables": []}]"#,
                "not a JSON array",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text, "limits.json").unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
