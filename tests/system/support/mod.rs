//! What the system tests share: the real binary as a process on loopback
//! ports ([`Node`]), a three-member cluster of it ([`TestCluster`]), the
//! scaled layout of nine ([`ScaledCluster`]), a real
//! Envoy ([`Envoy`]), a real browser on a page ([`rendered_dom`], [`screenshot`]), a small disk to fill or break ([`SmallDisk`]), hosts of their own for a cluster's members, to partition ([`Net`]), a raw ADS client ([`Ads`]), HTTP and gRPC clients,
//! the accounts a test needs, a linearizability checker, and
//! [`wait_until`], the one way a test waits for something to happen.
//!
//! Test modules import from here only, never from each other.

mod accounts;
mod ads;
mod browser;
mod clients;
pub mod cluster;
mod disk;
mod envoy;
pub mod linearizability;
mod netns;
mod node;
pub mod pods;
mod scaled;
mod wait;

pub use accounts::user_password;
pub use ads::{Ads, CDS, EDS, LDS, decode, request, wait_for_endpoints};
pub use browser::{rendered_dom, rows, screenshot, test_output};
pub use clients::{
    assert_plaintext_refused, authed, authed_for, grpc_channel, http, proxyless_echo,
};
pub use cluster::TestCluster;
pub use disk::SmallDisk;
pub use envoy::{Envoy, envoy_in_front, generate, grpc_echo, repo, validate, wait_routed};
pub use netns::Net;
pub use node::{
    BINARY, Node, NodeConfig, blocking_get, example_binary, free_addr, free_port, run_cli,
    run_cli_with_input,
};
pub use pods::{checkout, grpc_python, openapi_python, openapi_validator};
pub use scaled::ScaledCluster;
pub use wait::{wait_until, wait_until_blocking, wait_until_every};

pub const SECRET: &str = "system-test-secret-7d2f9a4c1e8b6035";
pub const ADMIN: &str = "admin";
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
