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
    time::{Duration, SystemTime},
};

use clap::Subcommand;

use super::EX_USAGE;
use crate::tls::{
    ca::{Ca, NodeKey, describe},
    identity::Identity,
    peer::{CaSource, HeldCa, PeerTlsMode, load_ca},
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
    /// Issue an Envoy's client certificate (for the xDS listener's TLS)
    /// from the cluster's CA into OUT: NAME.crt, NAME.key (0600), ca.crt,
    /// and Envoy's file-based SDS resources sds-cert.yaml and sds-ca.yaml
    /// (`gen-envoy --xds-tls OUT` points Envoy at them).
    /// The CA: a db member's config (`--config`, the CA it uses), or the
    /// directory `ca init` wrote (`--ca`).
    Issue {
        /// The directory `ca init` wrote.
        #[arg(long, conflicts_with_all = ["config", "secret_file"], required_unless_present_any = ["config", "secret_file"])]
        ca: Option<PathBuf>,
        /// A db member's config: its cluster's CA (derived from the
        /// cluster secret unless cluster.tls names a directory) and domain.
        #[arg(long, conflicts_with = "secret_file")]
        config: Option<PathBuf>,
        /// The cluster secret's file: the CA derived from it (what a
        /// cluster without `cluster.tls` uses).
        #[arg(long)]
        secret_file: Option<PathBuf>,
        /// Where the files will be read by Envoy, if not where they are
        /// written (a Kubernetes Secret's mount path): the SDS resources
        /// name the files there.
        #[arg(long)]
        mounted_at: Option<PathBuf>,
        /// How long the certificate is valid, in days.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=397))]
        days: u64,
        /// The Envoy's name (its node id).
        #[arg(long)]
        envoy: String,
        #[arg(long)]
        out: PathBuf,
        /// The trust domain (with --ca; a config names its own).
        #[arg(long, conflicts_with = "config")]
        domain: Option<String>,
        /// Replace the files of an earlier issue (each written beside and
        /// renamed over, so that an Envoy watching the directory takes the
        /// renewed certificate whole).
        #[arg(long)]
        renew: bool,
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
            config,
            secret_file,
            mounted_at,
            days,
            envoy,
            out,
            domain,
            renew,
        } => issuer(
            ca.as_deref(),
            config.as_deref(),
            secret_file.as_deref(),
            domain,
            catalogue,
        )
        .and_then(|(held, domain)| {
            issue(
                &held,
                &envoy,
                &Placement {
                    out: &out,
                    mounted_at: mounted_at.as_deref(),
                },
                &domain,
                Duration::from_secs(days * 24 * 3600),
                renew,
            )
        }),
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

/// The CA `ca issue` signs with, and its trust domain.
fn issuer(
    dir: Option<&Path>,
    config: Option<&Path>,
    secret_file: Option<&Path>,
    domain: Option<String>,
    catalogue: &crate::catalogue::Catalogue,
) -> Result<(HeldCa, String), String> {
    if let Some(file) = secret_file {
        let secret = read(file, "the cluster secret")?;
        let domain = domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
        let held = load_ca(&CaSource::Secret, secret.trim(), &domain)?;
        return Ok((held, domain));
    }
    match (dir, config) {
        (Some(dir), _) => {
            let domain = domain.unwrap_or_else(|| DEFAULT_DOMAIN.to_owned());
            let held = load_ca(&CaSource::Dir(dir.to_owned()), "", &domain)?;
            Ok((held, domain))
        }
        (None, Some(config)) => {
            let settings = super::cluster_settings(config, catalogue)
                .map_err(|_| format!("{} is not a usable cluster config", config.display()))?;
            let (crate::cluster::Role::Voter { secret, .. }, PeerTlsMode::On(on)) =
                (&settings.role, &settings.tls)
            else {
                return Err(format!(
                    "{} is not a db member's config with TLS between nodes: give a member's config (it holds the CA), or --ca",
                    config.display()
                ));
            };
            Ok((load_ca(&on.ca, secret, &on.domain)?, on.domain.clone()))
        }
        (None, None) => {
            Err("name the CA: --config (a db member's), --secret-file or --ca DIR".into())
        }
    }
}

/// Writes `text` to `path`: a new file, or with `renew` one written beside
/// it and renamed over it.
fn put(path: &Path, text: &str, secret: bool, renew: bool) -> Result<(), String> {
    if !renew {
        return write_new(path, text, secret);
    }
    let beside = path.with_extension("renewing");
    let _ = std::fs::remove_file(&beside);
    write_new(&beside, text, secret)?;
    std::fs::rename(&beside, path).map_err(|e| {
        format!(
            "cannot rename {} over {}: {e}",
            beside.display(),
            path.display()
        )
    })
}

/// Envoy's file-based SDS resource of a certificate and key.
fn sds_certificate(envoy: &str, cert: &Path, key: &Path) -> String {
    format!(
        "# Envoy SDS resource written by `flotilla ca issue`: {envoy}'s certificate.\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {}\n  tls_certificate:\n    certificate_chain: {{filename: {}}}\n    private_key: {{filename: {}}}\n",
        crate::xds::bootstrap::SDS_CERT,
        cert.display(),
        key.display()
    )
}

/// Envoy's file-based SDS resource of the CA bundle.
fn sds_ca(bundle: &Path) -> String {
    format!(
        "# Envoy SDS resource written by `flotilla ca issue`: the cluster's CA.\nresources:\n- \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n  name: {}\n  validation_context:\n    trusted_ca: {{filename: {}}}\n",
        crate::xds::bootstrap::SDS_CA,
        bundle.display()
    )
}

/// Where `ca issue` writes, and where Envoy will read the files.
struct Placement<'a> {
    out: &'a Path,
    mounted_at: Option<&'a Path>,
}

fn issue(
    held: &HeldCa,
    envoy: &str,
    place: &Placement<'_>,
    domain: &str,
    lifetime: Duration,
    renew: bool,
) -> Result<String, String> {
    let identity = Identity::envoy(envoy)?;
    let key = NodeKey::generate()?;
    let cert = held.ca().issue(
        &key.request()?,
        &identity,
        domain,
        SystemTime::now(),
        lifetime,
    )?;
    let out = place.out;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    let out = out
        .canonicalize()
        .map_err(|e| format!("cannot resolve {}: {e}", out.display()))?;
    let read_at = place.mounted_at.map_or(out.clone(), Path::to_path_buf);
    let (cert_name, key_name) = (format!("{envoy}.crt"), format!("{envoy}.key"));
    put(&out.join(&key_name), &key.pem(), true, renew)?;
    put(&out.join(&cert_name), &cert, false, renew)?;
    put(&out.join("ca.crt"), held.bundle(), false, renew)?;
    use crate::xds::bootstrap::{SDS_CA_FILE, SDS_CERT_FILE};
    put(
        &out.join(SDS_CERT_FILE),
        &sds_certificate(envoy, &read_at.join(&cert_name), &read_at.join(&key_name)),
        false,
        renew,
    )?;
    put(
        &out.join(SDS_CA_FILE),
        &sds_ca(&read_at.join("ca.crt")),
        false,
        renew,
    )?;
    let cert_path = out.join(&cert_name);
    let info = describe(&cert, domain)?;
    Ok(format!(
        "issued {} to {}: serial {}, valid until {} (renew it before then: --renew)",
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
