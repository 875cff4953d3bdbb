//! The MCP image-generation service that sits behind the Envoy edge filter.
//!
//! Envoy and the filter authenticate and validate; this service checks the
//! filter's signed identity assertion (`identity`) and runs the tool: pick a
//! model, generate, store, sign links, emit an audit event.
//!
//! The folders are the stages, and imports run one way, from the top of
//! this list down (a module uses only those below it):
//! - `cli`: commands beside serving (dev keys, Envoy rendering, live edge
//!   settings, cost simulation);
//! - `authorize`: the OAuth authorization server MCP clients sign in with,
//!   run as a process of its own (`mcp-image-gateway authorize`);
//! - `server`: HTTP wiring (the MCP endpoint, image links, uploads, health);
//! - `protocol`: the MCP surface (tools, tasks, resources, schemas);
//! - `pipeline`: one call from arguments to links;
//! - `admin_files`, `state`, `config`: the shared state, its live reload and
//!   the settings it is built from;
//! - `policy`: the content policy (denied terms, the moderation model);
//! - `identity`: the caller, from the edge's signed assertion;
//! - `storage`, `provenance`, `routing`, `providers`: where images live;
//!   the Content Credentials every stored image carries; which model serves
//!   a call; the provider clients;
//! - `media`, `telemetry`: image facts; metrics, audit and traces.

pub mod admin_files;
pub mod authorize;
pub mod cli;
pub mod config;
pub mod identity;
pub mod media;
pub mod pipeline;
pub mod policy;
pub mod protocol;
pub mod provenance;
pub mod providers;
pub mod routing;
pub mod server;
pub mod state;
pub mod storage;
pub mod telemetry;
