//! Commands beside serving: dev keys and Envoy rendering (`devkit`), live
//! edge settings (`edge_settings`), cost simulation (`cost_sim`), the
//! compliance evidence bundle (`evidence`), the book's settings reference
//! (`reference`), the edge's identity providers (`identity_providers`),
//! checking an image's Content Credentials (`provenance`).

pub mod cost_sim;
pub mod devkit;
pub mod edge_settings;
pub mod evidence;
pub mod identity_providers;
pub mod provenance;
pub mod reference;
