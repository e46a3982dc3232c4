//! Which nodes exist and what they run: the topology file a cluster's nodes
//! share, and the registry of live instances built from it and from the
//! nodes' heartbeats. The ingress's forwarding, the xDS resources and
//! `gen-envoy` all read the registry; nothing else keeps its own list.

pub mod registry;
pub mod topology;
