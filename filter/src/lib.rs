//! MCP edge filter for Envoy.
//!
//! Decision logic lives in plain modules (`gate`, `jwt`, `jsonrpc`, `config`)
//! that build and test on the host. Two thin glues carry out their verdicts:
//! `envoy_wasm` (proxy-wasm, the deployed build) and `envoy_native` (an Envoy
//! dynamic module, built with the `dynamic-module` feature for the edge
//! benchmark's native row).

pub mod assertion;
pub mod config;
pub mod credentials;
pub mod gate;
pub mod global_limit;
pub mod header_map;
pub mod jsonrpc;
pub mod jwt;
pub mod leases;
pub mod limits;
pub mod org_names;
pub mod phases;
pub mod policy;
pub mod reply;
pub mod response_cap;
pub mod span_tags;
pub mod stream;
#[cfg(test)]
mod test_support;
pub mod tool_access;
pub mod transport;
pub mod worker_state;

#[cfg(feature = "dynamic-module")]
mod envoy_native;
#[cfg(target_arch = "wasm32")]
mod envoy_wasm;
