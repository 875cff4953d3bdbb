//! The MCP image-generation service that sits behind the Envoy edge filter.
//!
//! Envoy and the filter authenticate and validate; this service trusts the
//! verified identity headers (`x-mcp-user`, `x-mcp-org`) and runs the tool:
//! pick a model backend, generate, store, sign links, emit an audit event.

pub mod args;
pub mod audit;
pub mod backends;
pub mod config;
pub mod devkit;
pub mod images;
pub mod mcp;
pub mod metrics;
pub mod models;
pub mod pricing;
pub mod routing;
pub mod server;
pub mod signed_url;
pub mod storage;
pub mod style;
