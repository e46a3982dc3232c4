//! The services shipped with flotilla.

pub mod echo;
pub mod kv;
