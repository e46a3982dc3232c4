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
    /// Every node's certificate, as the running members know them: each
    /// member's own, and the store clients' each issued. Run with a db
    /// member's config.
    Status {
        #[arg(long)]
        config: PathBuf,
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

pub fn run(command: CaCommand, catalogue: &crate::catalogue::Catalogue) -> ExitCode {
    let result = match command {
        CaCommand::Status { config } => status(&config, catalogue),
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

/// `ca status`: a table of every node's certificate.
fn status(config: &Path, catalogue: &crate::catalogue::Catalogue) -> Result<String, String> {
    let settings = super::cluster_settings(config, catalogue)
        .map_err(|_| format!("{} is not a usable cluster config", config.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let members = runtime.block_on(crate::cluster::remote_admin(
        &settings,
        crate::cluster::AdminOp::Status,
    ))?;
    Ok(status_table(&members))
}

/// The members' statuses (`remote_admin`'s) as one row per certificate.
fn status_table(members: &serde_json::Value) -> String {
    let mut rows = vec![[
        "IDENTITY".to_owned(),
        "SERIAL".to_owned(),
        "NOT AFTER".to_owned(),
        "REPORTED BY".to_owned(),
    ]];
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    for m in members.as_array().into_iter().flatten() {
        let name = text(&m["member"]);
        let status = &m["status"];
        if let Some(e) = status["error"].as_str() {
            rows.push([
                format!("({name}: {e})"),
                "-".into(),
                "-".into(),
                name.clone(),
            ]);
            continue;
        }
        if status["tls"].is_null() {
            rows.push([
                format!("({name}: tls: off)"),
                "-".into(),
                "-".into(),
                name.clone(),
            ]);
            continue;
        }
        for (cert, by) in std::iter::once((&status["tls"], format!("{name} (its own)"))).chain(
            status["tls_issued"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| (c, format!("{name} (issued)"))),
        ) {
            rows.push([
                text(&cert["identity"]),
                text(&cert["serial"]),
                text(&cert["not_after"]),
                by,
            ]);
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            r.iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        })
        .collect::<Vec<_>>()
        .join("\n")
}
