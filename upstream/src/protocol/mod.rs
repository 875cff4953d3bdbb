//! The MCP surface: the tools and their portable schemas, tasks and their
//! leases, resources.

pub mod resources;
pub mod schema;
pub mod task_lease;
pub mod tasks;
pub mod tools;
