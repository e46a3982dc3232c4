//! `flotilla ca`: the cluster's certificate authority as files (the first
//! step of issue 17; ADR 0010).
//!
//! - `ca init --out DIR`: makes a CA (ECDSA P-256, five years), or imports
//!   an operator's with `--cert F --key F`; writes `DIR/ca.crt` and
//!   `DIR/ca.key` (mode 0600), never over existing files.
//! - `ca issue --ca DIR --envoy NAME --out DIR2`: a key made here and a
//!   24-hour certificate naming `spiffe://<domain>/envoy/NAME`, with the CA
//!   bundle beside them.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::ExitCode,
    time::SystemTime,
};

use clap::Subcommand;

use super::EX_USAGE;
use crate::tls::{
    ca::{Ca, NODE_LIFETIME, NodeKey, describe},
    identity::Identity,
};

use crate::tls::peer::DEFAULT_DOMAIN;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Make the cluster's CA (or import yours with --cert and --key) into
    /// DIR: ca.crt and ca.key (0600). Existing files are never replaced.
    Init {
        #[arg(long)]
        out: PathBuf,
        /// The trust domain its certificates name.
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
        /// Your CA's certificate (PEM), to import instead of making one.
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Your CA's private key (PEM, PKCS#8).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Issue an Envoy's client certificate from the CA in DIR: NAME.crt,
    /// NAME.key (0600) and ca.crt into OUT.
    Issue {
        /// The directory `ca init` wrote.
        #[arg(long)]
        ca: PathBuf,
        /// The Envoy's name (its node id).
        #[arg(long)]
        envoy: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value = DEFAULT_DOMAIN)]
        domain: String,
    },
}

pub fn run(command: CaCommand) -> ExitCode {
    let result = match command {
        CaCommand::Init {
            out,
            domain,
            cert,
            key,
        } => init(&out, &domain, cert.as_deref().zip(key.as_deref())),
        CaCommand::Issue {
            ca,
            envoy,
            out,
            domain,
        } => issue(&ca, &envoy, &out, &domain),
    };
    match result {
        Ok(said) => {
            println!("{said}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flotilla ca: {e}");
            ExitCode::from(EX_USAGE)
        }
    }
}

fn read(path: &Path, what: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))
}

/// Writes new files only: `secret` ones with mode 0600.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} exists already: it is never replaced (move it away first)",
                path.display()
            )
        } else {
            format!("cannot create {}: {e}", path.display())
        }
    })?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn init(out: &Path, domain: &str, import: Option<(&Path, &Path)>) -> Result<String, String> {
    if domain.is_empty() || domain.contains('/') {
        return Err(format!(
            "--domain `{domain}` is not a trust domain (a DNS-like name such as flotilla.local)"
        ));
    }
    let ca = match import {
        Some((cert, key)) => Ca::import(
            &read(cert, "the CA certificate")?,
            &read(key, "the CA key")?,
        )?,
        None => Ca::generate(domain, SystemTime::now())?,
    };
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let (cert, key) = (out.join("ca.crt"), out.join("ca.key"));
    for path in [&cert, &key] {
        if path.exists() {
            return Err(format!(
                "{} exists already: it is never replaced (move it away first)",
                path.display()
            ));
        }
    }
    write_new(&key, &ca.key_pem(), true)?;
    write_new(&cert, ca.cert_pem(), false)?;
    Ok(format!(
        "{} the CA of trust domain {domain}: {} and {} (keep the key secret)",
        if import.is_some() { "imported" } else { "made" },
        cert.display(),
        key.display()
    ))
}

fn issue(dir: &Path, envoy: &str, out: &Path, domain: &str) -> Result<String, String> {
    let identity = Identity::envoy(envoy)?;
    let ca_pem = read(&dir.join("ca.crt"), "the CA certificate")?;
    let ca = Ca::import(&ca_pem, &read(&dir.join("ca.key"), "the CA key")?)?;
    let key = NodeKey::generate()?;
    let cert = ca.issue(
        &key.request()?,
        &identity,
        domain,
        SystemTime::now(),
        NODE_LIFETIME,
    )?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let (cert_path, key_path) = (
        out.join(format!("{envoy}.crt")),
        out.join(format!("{envoy}.key")),
    );
    write_new(&key_path, &key.pem(), true)?;
    write_new(&cert_path, &cert, false)?;
    let bundle = out.join("ca.crt");
    if !bundle.exists() {
        write_new(&bundle, &ca_pem, false)?;
    }
    let info = describe(&cert, domain)?;
    Ok(format!(
        "issued {} to {}: serial {}, valid until {} (renew it before then)",
        identity.uri(domain),
        cert_path.display(),
        info.serial,
        crate::tls::identity::rfc3339(info.not_after)
    ))
}
