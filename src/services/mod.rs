//! The services shipped with flotilla.

pub mod accounts;
pub mod echo;
pub mod kv;
