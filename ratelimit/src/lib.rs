//! Global rate limits shared by every Envoy replica.
//!
//! A small server of Envoy's `envoy.service.ratelimit.v3.RateLimitService`
//! API. The counting is Kuadrant's `limitador` (the library behind
//! limitador-server) with its Redis store, so every replica of this service,
//! and every Envoy calling it, sees one count. What is ours: reading the limits
//! file, turning a `ShouldRateLimit` request into a limitador check, and the
//! answer Envoy (or the edge filter) acts on.

pub mod limits_file;
pub mod service;
