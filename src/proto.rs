//! gRPC APIs compiled from `proto/` by `build.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// The descriptors of every proto above (`flotilla.*`), as protoc wrote
/// them: the catalogue checks each gRPC service's declared methods against
/// them.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/flotilla_descriptors.bin"));

pub mod kv {
    tonic::include_proto!("flotilla.kv.v1");
}

pub mod echo {
    tonic::include_proto!("flotilla.echo.v1");
}

pub mod accounts {
    tonic::include_proto!("flotilla.accounts.v1");
}

pub mod peer {
    tonic::include_proto!("flotilla.peer.v1");
}
