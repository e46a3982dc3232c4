//! gRPC APIs compiled from `proto/` by `build.rs`.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

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
