//! The node's edge: its listeners and what answers on them. The public
//! listener's ingress (routing-table lookup, locality and forwarding,
//! authentication and authorization, limits, metrics), the admin listener,
//! and the accept loop both run on.
//!
//! **Architecture Invariant:** the edge knows services only through the
//! catalogue and the registry; what it shares with the xDS server (headers,
//! the health path, the retry policy) lives in `protocol`.

pub mod admin;
pub mod forward;
pub mod ingress;
pub mod json_line;
pub mod server;
