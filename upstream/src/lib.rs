//! The MCP image-generation service that sits behind the Envoy edge filter.
//!
//! Envoy and the filter authenticate and validate; this service checks the
//! filter's signed identity assertion (`identity.rs`) and runs the tool:
//! pick a model backend, generate, store, sign links, emit an audit event.

pub mod admin_files;
pub mod args;
pub mod audit;
pub mod backends;
pub mod budget;
pub mod config;
pub mod cost;
pub mod cost_sim;
pub mod devkit;
pub mod edge_settings;
pub mod edit;
pub mod identity;
pub mod image_input;
pub mod image_types;
pub mod images;
pub mod keyring;
pub mod mcp;
pub mod metrics;
pub mod models;
pub mod pipeline;
pub mod portable_schema;
pub mod pricing;
pub mod progress;
pub mod references;
pub mod remote_fetch;
pub mod resources;
pub mod routing;
pub mod server;
pub mod signed_url;
pub mod storage;
pub mod style;
pub mod task_lease;
pub mod tasks;
pub mod traces;
pub mod uploads;
