//! The MCP surface: the tools and their portable schemas, tasks and their
//! leases, resources, and the image studio app.

pub mod resources;
pub mod schema;
pub mod studio;
pub mod task_lease;
pub mod tasks;
pub mod tools;
