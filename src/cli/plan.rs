//! What `check-config` prints: the plan a config resolves to (services,
//! listeners, database, limits, budgets, auth, every route and the public
//! ones), starting nothing.

use crate::{
    catalogue::routing::Protocol,
    catalogue::{Access, Services},
    config::Config,
};

/// The resolved plan, as `check-config` prints it.
pub fn plan(config: &Config, catalogue: &Services) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let table = catalogue.table();
    let _ = writeln!(out, "node: {}", config.node_id);
    if !config.substitutions.is_empty() {
        let _ = writeln!(out, "from the environment:");
        for s in &config.substitutions {
            let value = s
                .value
                .as_deref()
                .unwrap_or("******** (a secret, not shown)");
            let _ = writeln!(out, "  {}: {value}  <- {}", s.field, s.written);
        }
    }
    let _ = writeln!(
        out,
        "services (selected as [{}]):",
        config.selection.join(", ")
    );
    for name in &config.services {
        if let Some(s) = catalogue.get(name) {
            let _ = writeln!(out, "  - {name}: {}", s.summary());
        }
    }
    let _ = writeln!(out, "listeners:");
    let _ = writeln!(
        out,
        "  public: {} ({}: /api/<service>/… and gRPC){}",
        config.listeners.public,
        if config.public_tls.is_some() {
            "TLS, HTTP/1.1 and HTTP/2 by ALPN"
        } else {
            "HTTP/1.1 and h2c"
        },
        if config.advertise == config.listeners.public {
            String::new()
        } else {
            format!("; others reach it at {}", config.advertise)
        }
    );
    if let Some(files) = &config.public_tls {
        let names = crate::tls::public::check(files).unwrap_or_default();
        for (i, (f, names)) in files.iter().zip(names).enumerate() {
            let _ = writeln!(
                out,
                "    certificate {} for {}{} (reloaded when it changes)",
                f.cert_file.display(),
                names.join(", "),
                if i == 0 {
                    ", and for clients naming no certificate's name"
                } else {
                    ""
                }
            );
        }
    }
    let _ = writeln!(
        out,
        "  admin: {} (/ the status page, /healthz, /readyz, /metrics, /status)",
        config.listeners.admin
    );
    if let Some(peer) = config.listeners.peer {
        let _ = writeln!(out, "  peer: {peer} (Raft and forwarded writes)");
    }
    if let Some(xds) = config.listeners.xds {
        let _ = writeln!(
            out,
            "  xds: {xds} (ADS and CSDS; Envoys listen for the ingress on {})",
            config.xds_ingress
        );
    }
    let absolute =
        std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
    match &config.cluster {
        Some(c) if !config.db_role => {
            let members: Vec<String> = c
                .members
                .iter()
                .map(|m| format!("{} {}", m.name, m.peer))
                .collect();
            let _ = writeln!(
                out,
                "database: a client of the db members ({}), within this node's namespaces; nothing is stored in {}",
                members.join(", "),
                absolute.join(crate::store::DB_FILE).display()
            );
            if config.joined {
                let _ = writeln!(
                    out,
                    "joins with a join token (not in the topology): its registry record is its own by a claim, deleted when it stops"
                );
            }
        }
        _ => {
            let _ = writeln!(
                out,
                "database: {}",
                absolute.join(crate::store::DB_FILE).display()
            );
        }
    }
    let _ = writeln!(
        out,
        "limits: request body {} bytes, request timeout {} ms, shutdown grace {} ms",
        config.limits.max_request_body_bytes,
        config.limits.request_timeout.as_millis(),
        config.limits.shutdown_grace.as_millis()
    );
    let _ = writeln!(out, "store budgets (per call of a service):");
    for name in &config.services {
        let b = config.limits.budget(name);
        let capabilities: Vec<&str> = catalogue.granted(name).iter().map(|c| c.name()).collect();
        let _ = writeln!(
            out,
            "  {name}: reads {} ms, writes {} SQLite steps per statement, {} rows, values up to {} bytes{}",
            b.read.time_ms,
            b.write.steps,
            b.write.rows,
            b.write.value_bytes,
            if capabilities.is_empty() {
                String::new()
            } else {
                format!("; capabilities: {}", capabilities.join(", "))
            }
        );
    }
    let auth = &config.auth;
    let _ = writeln!(
        out,
        "auth: sign-up {}, access tokens {} s, refresh tokens {} s, key rotation {}, argon2id m={} KiB t={} p={}",
        if auth.signup { "on" } else { "off" },
        auth.access_token_ttl.as_secs(),
        auth.refresh_token_ttl.as_secs(),
        auth.key_rotation.map_or_else(
            || "by command only".to_owned(),
            |r| format!("every {} h", r.as_secs() / 3600)
        ),
        auth.password_hash.memory_kib,
        auth.password_hash.iterations,
        auth.password_hash.parallelism
    );
    let _ = writeln!(out, "routes:");
    for r in table.routes() {
        let proto = match r.protocol {
            Protocol::Http => "HTTP",
            Protocol::Grpc => "gRPC",
        };
        let place = if config.runs(r.service) {
            "local"
        } else {
            "forwarded to a node that runs it"
        };
        let _ = writeln!(
            out,
            "  {proto} {:<6} {:<36} -> {} ({place}; {})",
            r.method.as_str(),
            r.template,
            r.service,
            r.access
        );
    }
    let _ = writeln!(
        out,
        "  HTTP GET    {:<36} -> this node (the OpenAPI document; answered here, never forwarded; public)",
        crate::catalogue::openapi::PATH
    );
    for service in crate::edge::ingress::NODE_GRPC_SERVICES {
        let _ = writeln!(
            out,
            "  gRPC POST   {:<36} -> this node (answered here, never forwarded; public)",
            format!("/{service}/*")
        );
    }
    let _ = writeln!(out, "public routes (no credentials needed):");
    for r in table.routes().iter().filter(|r| r.access == Access::Public) {
        let _ = writeln!(out, "  {} {}", r.method, r.template);
    }
    let _ = writeln!(out, "  GET {}", crate::catalogue::openapi::PATH);
    for service in crate::edge::ingress::NODE_GRPC_SERVICES {
        let _ = writeln!(out, "  POST /{service}/*");
    }
    out
}
