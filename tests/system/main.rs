//! System tests: the real `flotilla` binary as a process on loopback ports,
//! driven by real HTTP (reqwest) and gRPC (tonic) clients.

mod auth;
mod config;
mod envoy;
mod example;
mod ha;
mod ingress;
mod kv;
mod lifecycle;
mod linearizability;
mod support;
mod xds;
