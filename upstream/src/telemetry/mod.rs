//! What the service tells operators: Prometheus metrics, JSON audit and
//! billing events, OpenTelemetry traces. Depends on nothing else here.

pub mod audit;
pub mod audit_chain;
pub mod audit_sink;
pub mod metrics;
pub mod traces;

use sha2::{Digest, Sha256};

/// Hex SHA-256 of a settings file's bytes, valid or not: the hash that
/// metrics, audit events and `check-settings` name a file by.
pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
