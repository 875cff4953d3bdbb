//! What the authorization server must remember between requests, shared by
//! every replica: sign-ins in progress, authorization codes and refresh
//! tokens. Each is a record under a random key with a lifetime, read once:
//! `take` removes what it returns, so a code or a refresh token can be
//! redeemed exactly once even when two replicas race for it. Redis when
//! replicas share it (`GATEWAY_AUTHZ_REDIS_URL`); memory for one replica.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

/// The kinds of record, each its own key space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A sign-in between `/oauth/authorize` and the code.
    Pending,
    /// An authorization code.
    Code,
    /// A refresh token (stored by its hash).
    Refresh,
    /// A refresh token already used (its hash → its sign-in's family), to
    /// catch a replay.
    UsedRefresh,
    /// A sign-in family whose refresh token was replayed: all of it revoked.
    RevokedFamily,
    /// An identity assertion's `jti`, once used.
    Assertion,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Pending => "mcp-authz:pending:",
            Kind::Code => "mcp-authz:code:",
            Kind::Refresh => "mcp-authz:refresh:",
            Kind::UsedRefresh => "mcp-authz:used-refresh:",
            Kind::RevokedFamily => "mcp-authz:revoked:",
            Kind::Assertion => "mcp-authz:jti:",
        }
    }
}

/// One trait for both stores.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Stores `value` under `key` for `ttl`; an existing record is replaced.
    async fn put(&self, kind: Kind, key: &str, value: String, ttl: Duration) -> Result<(), String>;
    /// Stores `value` only if no live record has `key`; says whether it did
    /// (a marker that something was seen once, e.g. an assertion's `jti`).
    async fn put_new(&self, kind: Kind, key: &str, value: String, ttl: Duration) -> Result<bool, String>;
    /// Removes and returns the record, if it exists and has not expired.
    async fn take(&self, kind: Kind, key: &str) -> Result<Option<String>, String>;
    /// Returns the record without removing it.
    async fn get(&self, kind: Kind, key: &str) -> Result<Option<String>, String>;
}
