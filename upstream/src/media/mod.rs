//! Image facts every stage shares: output options and sizes, reading and
//! checking input images, style presets. Depends on nothing else here.

pub mod blocking;
pub mod input;
pub mod style;
pub mod types;
