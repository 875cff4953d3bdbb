//! Where images live and how callers reach them: the object store
//! (`store`), signed links and their keyrings, image references, upload
//! tickets, fetching allow-listed remote references, and erasure on request.

pub mod erasure;
pub mod keyring;
pub mod references;
pub mod remote_fetch;
pub mod signed_url;
pub mod store;
pub mod uploads;
