//! Test support: start the real stack (Envoy with the built Wasm filter,
//! the upstream binary, optionally a provider fake) on free loopback ports,
//! wait for readiness, and stop everything on drop.

pub mod fake_openai;
pub mod fake_stability;
pub mod gcs_server;
pub mod h2_trailers;
pub mod stack;

pub use stack::{Backend, Stack, StackOptions};
pub mod mcp_client;
pub mod oauth_browser;
pub mod otlp_receiver;
pub mod png_info;
pub mod ratelimit_service;
pub mod redis_server;
pub mod s3_server;
pub mod test_idp;
pub mod tsa;
