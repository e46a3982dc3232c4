//! flotilla: one binary that runs a fleet of services.
//!
//! See ARCHITECTURE.md for the map of this crate. The top-level modules are
//! layers, listed here from the top down; a module imports only from the
//! layers below it (`architecture_tests` keeps it so).
#![forbid(unsafe_code)]

pub mod auth;
pub mod catalogue;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod envoy;
pub mod mesh;
pub mod node;
pub mod proto;
pub mod protocol;
pub mod service;
pub mod services;
pub mod telemetry;
pub mod tls;
pub mod xds;
pub(crate) use flotilla_store as store;

#[cfg(test)]
mod architecture_tests;
