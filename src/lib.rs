//! flotilla: one binary that runs a fleet of services.
#![forbid(unsafe_code)]

pub mod metrics;
pub mod store;
