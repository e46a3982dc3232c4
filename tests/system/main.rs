//! System tests: the real `flotilla` binary as a process on loopback ports,
//! driven by real HTTP (reqwest) and gRPC (tonic) clients.

mod auth;
mod backup;
mod ca;
mod config;
mod disk;
mod envoy;
mod example;
mod gen_envoy;
mod grow;
mod grpc_node;
mod ha;
mod hostile;
mod ingress;
mod k8s;
mod kv;
mod lifecycle;
mod openapi;
mod partition;
mod peer_tls;
mod public_tls;
mod scaled;
mod schema;
mod status_page;
mod support;
mod systemd;
mod xds;
mod xds_tls;
