//! flotilla: one binary that runs a fleet of services.
//!
//! See ARCHITECTURE.md for the map of this crate.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api_error;
pub mod auth;
pub mod catalogue;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod forward;
pub mod gen_envoy;
pub mod ingress;
pub mod metrics;
pub mod node;
pub mod proto;
pub mod registry;
pub mod routing;
pub mod server;
pub mod service;
pub mod services;
pub(crate) use flotilla_store as store;
pub mod telemetry;
pub mod topology;
pub mod xds;
