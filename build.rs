//! Compiles the gRPC APIs in `proto/` with a vendored protoc, so a fresh
//! machine needs nothing from the system, and a descriptor set of the Envoy
//! API messages `gen-envoy` writes as YAML (from the `.proto` files the
//! envoy-types crate ships).

use std::path::{Path, PathBuf};

/// The Envoy messages a generated bootstrap holds, with the extension
/// configs it packs into `Any` fields.
const ENVOY_PROTOS: &[&str] = &[
    "envoy/config/bootstrap/v3/bootstrap.proto",
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(&protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(out_dir.join("flotilla_descriptors.bin"))
        .compile_with_config(
            config,
            &[
                "proto/kv.proto",
                "proto/echo.proto",
                "proto/accounts.proto",
                "proto/peer.proto",
            ],
            &["proto"],
        )?;
    println!("cargo:rerun-if-changed=proto");

    let envoy = envoy_types_protos()?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?).join("envoy_descriptors.bin");
    let mut cmd = std::process::Command::new(&protoc);
    for dir in ["data-plane-api", "xds", "protoc-gen-validate", "googleapis"] {
        cmd.arg(format!("-I{}", envoy.join(dir).display()));
    }
    cmd.arg(format!(
        "-I{}",
        protoc_bin_vendored::include_path()?.display()
    ));
    cmd.arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .args(ENVOY_PROTOS);
    let status = cmd.status()?;
    if !status.success() {
        return Err(format!("protoc failed on the Envoy protos in {}", envoy.display()).into());
    }
    Ok(())
}

/// The `proto/` directory of the envoy-types version in Cargo.lock, in
/// cargo's registry sources.
fn envoy_types_protos() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let lock = std::fs::read_to_string("Cargo.lock")?;
    let version = lock
        .split("[[package]]")
        .find(|p| p.contains("name = \"envoy-types\""))
        .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
        .map(|v| v.trim_end_matches('"').to_owned())
        .ok_or("Cargo.lock names no envoy-types version")?;
    println!("cargo:rerun-if-changed=Cargo.lock");
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let sources = home.join("registry").join("src");
    for index in std::fs::read_dir(&sources)? {
        let dir = index?
            .path()
            .join(format!("envoy-types-{version}"))
            .join("proto");
        if dir.is_dir() {
            return Ok(dir);
        }
    }
    Err(format!(
        "the sources of envoy-types {version} are not under {}: run `cargo fetch`",
        sources.display()
    )
    .into())
}
