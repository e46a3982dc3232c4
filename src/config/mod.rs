//! The node's configuration: the YAML a user writes, and the validated plan
//! the node runs.
//!
//! Parsing and validation bind no port and start nothing, so `serve` and
//! `check-config` fail the same way, before anything is listening. Every
//! problem found is reported at once, each naming its field.

use std::{
    collections::BTreeMap,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

mod auth;
mod cluster;
mod interpolate;
mod limits;
mod raw;
mod schema;
mod tls;

pub use interpolate::Substitution;
pub use schema::json as schema_json;

use auth::{parse_auth, read_secret};
use cluster::parse_cluster;
pub use limits::ListenersLimits;
use limits::parse_listener_limits;
use raw::*;

use crate::{
    auth::{AuthSettings, password::HashParams},
    catalogue::Catalogue,
    cluster::{ClusterSettings, Role},
    mesh::topology::{Selection, Topology, valid_names, valid_node_id},
    store::{Budget, ReadBudget, WriteBudget},
    telemetry::LogFormat,
};

pub use crate::mesh::topology::{ALL, DB, XDS};

#[derive(Clone, Debug)]
pub struct Listeners {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// Node-to-node traffic; present when the node is in a cluster.
    pub peer: Option<SocketAddr>,
    /// The xDS management server (ADS and CSDS) for Envoy and proxyless
    /// gRPC clients; present when the node runs the `xds` role (`all`
    /// does), 127.0.0.1:18000 unless configured.
    pub xds: Option<SocketAddr>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    pub max_request_body_bytes: usize,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    /// Connections, HTTP/2 streams, header and URI sizes, per listener.
    pub listeners: ListenersLimits,
    /// The store budget of every service, unless `services` names it.
    pub store: Budget,
    pub services: BTreeMap<&'static str, Budget>,
}

impl Limits {
    /// The store budget of the service named `service`.
    pub fn budget(&self, service: &str) -> Budget {
        self.services.get(service).copied().unwrap_or(self.store)
    }
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// A validated configuration: everything `serve` needs, nothing unchecked.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the config came from (its file), for messages.
    pub source_name: String,
    pub node_id: String,
    /// The selection as written, e.g. `[all]`.
    pub selection: Vec<String>,
    /// The services it resolves to, in catalogue order.
    pub services: Vec<&'static str>,
    /// Whether this node holds a copy of the database (`db`, in `all`): in
    /// a cluster, a Raft voter; without the role, a client of the voters.
    pub db_role: bool,
    pub listeners: Listeners,
    /// Where others reach the public listener: `advertise.public`, or the
    /// listener's own address.
    pub advertise: SocketAddr,
    /// The values the environment gave (`${VAR}`), for `check-config`.
    pub substitutions: Vec<Substitution>,
    /// A store client that is not in the topology: it joined with a join
    /// token and holds its registry record by a claim.
    pub joined: bool,
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub log: LogConfig,
    pub auth: AuthSettings,
    /// Present in HA and scaled modes: the Raft group this node belongs to.
    pub cluster: Option<ClusterSettings>,
    /// With `cluster`: the topology file every node of the cluster shares.
    pub topology: Option<Topology>,
    /// Where `topology` was read from (members reload it when it changes).
    pub topology_path: Option<PathBuf>,
    /// Where the Envoys fed by this node's xDS server listen for the
    /// public ingress (`xds.ingress_listener`).
    pub xds_ingress: SocketAddr,
    /// The xDS listener serves TLS and takes Envoys' certificates only
    /// (`xds.tls`; a db member with TLS between nodes).
    pub xds_tls: bool,
    /// TLS on the public listener (`tls.public`): the certificate files.
    pub public_tls: Option<Vec<crate::tls::public::CertFiles>>,
}

pub const DEFAULT_PUBLIC: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:8081";
pub const DEFAULT_PEER: &str = "127.0.0.1:7070";
const DEFAULT_XDS: &str = "127.0.0.1:18000";
const DEFAULT_XDS_INGRESS: &str = "0.0.0.0:10000";
const DEFAULT_BODY_LIMIT: u64 = 1024 * 1024;
const MAX_BODY_LIMIT: u64 = 64 * 1024 * 1024;
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
const DEFAULT_GRACE_MS: u64 = 10_000;

pub use crate::mesh::topology::Problem;

/// Why a config was refused. Shown to the user as is.
#[derive(Debug)]
pub struct ConfigError {
    pub source_name: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration {}:", self.source_name)?;
        for p in &self.problems {
            writeln!(f, "  - {}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(Problem {
            field: field.to_owned(),
            message: message.into(),
        });
    }
}

impl Config {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path, catalogue: &Catalogue) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            source_name: name.clone(),
            problems: vec![Problem {
                field: "(file)".into(),
                message: format!("cannot read the file: {e}"),
            }],
        })?;
        Config::parse(&text, &name, catalogue)
    }

    /// Validates config text, its `${VAR}`s taken from the process's
    /// environment; `source_name` names it in errors.
    pub fn parse(
        text: &str,
        source_name: &str,
        catalogue: &Catalogue,
    ) -> Result<Config, ConfigError> {
        Config::parse_with_env(text, source_name, catalogue, &|name| {
            std::env::var(name).ok()
        })
    }

    /// Validates config text, its `${VAR}`s taken from `env`.
    pub fn parse_with_env(
        text: &str,
        source_name: &str,
        catalogue: &Catalogue,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let fail = |problems| ConfigError {
            source_name: source_name.to_owned(),
            problems,
        };
        let yaml_problem = |e: serde_yaml_ng::Error| {
            let field = e
                .location()
                .map(|l| format!("line {} column {}", l.line(), l.column()))
                .unwrap_or_else(|| "(document)".into());
            vec![Problem {
                field,
                message: e.to_string(),
            }]
        };
        let mut doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(text).map_err(|e| fail(yaml_problem(e)))?;
        let substitutions = interpolate::interpolate(&mut doc, env, SECTIONS).map_err(fail)?;
        // Without substitutions the text is read as written, so that a
        // problem of shape names its line.
        let raw: RawConfig = if substitutions.is_empty() {
            serde_yaml_ng::from_str(text)
        } else {
            serde_yaml_ng::from_value(doc)
        }
        .map_err(|e| fail(yaml_problem(e)))?;
        let mut problems = Problems(Vec::new());

        let node_id = match raw.node.and_then(|n| n.id) {
            Some(id) if valid_node_id(&id) => id,
            Some(id) => {
                problems.add(
                    "node.id",
                    format!("`{id}` is not a valid node id: use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit"),
                );
                String::new()
            }
            None => {
                problems.add(
                    "node.id",
                    "missing: give this node a stable id, e.g. `node: {id: node-1}`",
                );
                String::new()
            }
        };

        let selection = raw.services.unwrap_or_default();
        if selection.is_empty() {
            problems.add(
                "services",
                format!(
                    "no services selected: list the services this node runs, e.g. `services: [all]`; valid names: {}",
                    valid_names(catalogue)
                ),
            );
        }
        let (roles, unknown) = Selection::resolve(&selection, catalogue);
        for message in unknown {
            problems.add("services", message);
        }
        let xds_role = roles.xds;
        let services = roles.services.clone();

        let public = parse_listener(
            &mut problems,
            "listeners.public",
            raw.listeners.public,
            DEFAULT_PUBLIC,
        );
        let admin = parse_listener(
            &mut problems,
            "listeners.admin",
            raw.listeners.admin,
            DEFAULT_ADMIN,
        );
        if let (Some(p), Some(a)) = (public, admin)
            && p.port() == a.port()
            && (p.ip() == a.ip() || p.ip().is_unspecified() || a.ip().is_unspecified())
        {
            problems.add(
                "listeners.admin",
                format!(
                    "{a} collides with listeners.public ({p}): give each listener its own port"
                ),
            );
        }

        let data_dir = match raw.data_dir {
            None => {
                problems.add("data_dir", "missing: name the directory that holds this node's database, e.g. `data_dir: data/node-1`");
                PathBuf::new()
            }
            Some(d) if d.trim().is_empty() => {
                problems.add(
                    "data_dir",
                    "is empty: name the directory that holds this node's database",
                );
                PathBuf::new()
            }
            Some(d) => {
                let dir = PathBuf::from(d);
                if let Err(why) = check_data_dir(&dir) {
                    problems.add(
                        "data_dir",
                        format!("{} is not usable: {why}", dir.display()),
                    );
                }
                dir
            }
        };

        let body = raw
            .limits
            .max_request_body_bytes
            .unwrap_or(DEFAULT_BODY_LIMIT);
        if !(1..=MAX_BODY_LIMIT).contains(&body) {
            problems.add(
                "limits.max_request_body_bytes",
                format!("{body} is out of range: use 1 to {MAX_BODY_LIMIT}"),
            );
        }
        let timeout = raw.limits.request_timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(1..=3_600_000).contains(&timeout) {
            problems.add(
                "limits.request_timeout_ms",
                format!("{timeout} is out of range: use 1 to 3600000 (one hour)"),
            );
        }
        let grace = raw.limits.shutdown_grace_ms.unwrap_or(DEFAULT_GRACE_MS);
        if grace > 600_000 {
            problems.add(
                "limits.shutdown_grace_ms",
                format!("{grace} is out of range: use 0 to 600000 (ten minutes)"),
            );
        }

        let listener_limits = parse_listener_limits(&mut problems, &raw.limits.listeners);
        let store_budget = parse_budget(
            &mut problems,
            "limits.store",
            &raw.limits.store,
            Budget::SERVICE_DEFAULT,
        );
        let mut service_budgets = BTreeMap::new();
        for (name, raw_budget) in &raw.limits.services {
            match catalogue.names().find(|n| n == name) {
                Some(service) => {
                    let budget = parse_budget(
                        &mut problems,
                        &format!("limits.services.{name}"),
                        raw_budget,
                        store_budget,
                    );
                    service_budgets.insert(service, budget);
                }
                None => problems.add(
                    &format!("limits.services.{name}"),
                    format!(
                        "`{name}` is not a service of this binary; services: {}",
                        catalogue.names().collect::<Vec<_>>().join(", ")
                    ),
                ),
            }
        }

        let format = match raw.log.format.as_deref() {
            None => LogFormat::Human,
            Some(f) => LogFormat::parse(f).unwrap_or_else(|| {
                problems.add(
                    "log.format",
                    format!("unknown format `{f}`; valid formats: human, json"),
                );
                LogFormat::Human
            }),
        };
        let level = raw.log.level.unwrap_or_else(|| "info".into());
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&level) {
            problems.add(
                "log.level",
                format!(
                    "`{level}` is not a valid filter ({e}); e.g. `info` or `info,flotilla=debug`"
                ),
            );
        }

        let auth = parse_auth(&mut problems, raw.auth);
        let peer = match (&raw.cluster, raw.listeners.peer) {
            (Some(_), p) if roles.db => {
                parse_listener(&mut problems, "listeners.peer", p, DEFAULT_PEER)
            }
            (Some(_), Some(_)) => {
                problems.add(
                    "listeners.peer",
                    "is set but this node does not run the db role: a store client listens on no peer port; remove it",
                );
                None
            }
            (None, Some(_)) => {
                problems.add(
                    "listeners.peer",
                    "is set but there is no `cluster` section: remove it, or configure the cluster",
                );
                None
            }
            (_, None) => None,
        };
        let xds = match (xds_role, raw.listeners.xds) {
            (true, x) => parse_listener(&mut problems, "listeners.xds", x, DEFAULT_XDS),
            (false, Some(_)) => {
                problems.add(
                    "listeners.xds",
                    "is set but this node does not run the xds role: add `xds` (or `all`) to services, or remove it",
                );
                None
            }
            (false, None) => None,
        };
        let xds_ingress = parse_listener(
            &mut problems,
            "xds.ingress_listener",
            raw.xds.ingress_listener,
            DEFAULT_XDS_INGRESS,
        );
        let topology_path = raw
            .cluster
            .as_ref()
            .and_then(|c| c.topology.as_ref())
            .map(PathBuf::from);
        let advertise = match (raw.advertise.public, public) {
            (Some(a), _) => match a.parse::<SocketAddr>() {
                Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
                _ => {
                    problems.add(
                        "advertise.public",
                        format!("`{a}` is not an IP:port address others can reach, e.g. `${{POD_IP}}:8080`"),
                    );
                    None
                }
            },
            (None, Some(p)) if p.ip().is_unspecified() && raw.cluster.is_some() => {
                problems.add(
                    "advertise.public",
                    format!("missing: listeners.public binds {p}, which other nodes cannot reach; give the address they reach this node at, e.g. `advertise: {{public: \"${{POD_IP}}:{}\"}}`", p.port()),
                );
                None
            }
            // Alone, a node reaches itself on loopback.
            (None, Some(p)) if p.ip().is_unspecified() => Some(SocketAddr::new(
                match p {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                },
                p.port(),
            )),
            (None, p) => p,
        };
        let (cluster, topology) = raw
            .cluster
            .and_then(|c| {
                parse_cluster(
                    &mut problems,
                    c,
                    catalogue,
                    &node_id,
                    &roles,
                    advertise,
                    peer,
                )
            })
            .unzip();
        let public_tls = tls::parse_public_tls(
            &mut problems,
            raw.tls.public,
            cluster
                .as_ref()
                .map(|c: &ClusterSettings| matches!(c.tls, crate::tls::peer::PeerTlsMode::On(_))),
        );
        let joined = topology
            .as_ref()
            .is_some_and(|t: &Topology| t.find(&node_id).is_none());
        let xds_tls = raw.xds.tls;
        let mut cluster = cluster;
        if !raw.xds.tls_names.is_empty() && !xds_tls {
            problems.add(
                "xds.tls_names",
                "names the xDS listener's TLS certificate: set xds.tls too, or remove it",
            );
        }
        if xds_tls
            && let Some(crate::tls::peer::PeerTlsMode::On(on)) =
                cluster.as_mut().map(|c: &mut ClusterSettings| &mut c.tls)
        {
            // Clients that check the server's name (proxyless gRPC) reach
            // the listener at its address, or at the names given.
            if let Some(addr) = xds.filter(|a| !a.ip().is_unspecified()) {
                on.hosts.push(addr.ip().to_string());
            }
            for name in &raw.xds.tls_names {
                let ok = name.parse::<std::net::IpAddr>().is_ok()
                    || (!name.is_empty()
                        && name.len() <= 253
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.')));
                if ok {
                    on.hosts.push(name.clone());
                } else {
                    problems.add(
                        "xds.tls_names",
                        format!("`{name}` is neither a DNS name nor an IP address"),
                    );
                }
            }
        }
        if xds_tls {
            let member_with_tls = roles.db
                && cluster.as_ref().is_some_and(|c: &ClusterSettings| {
                    matches!(c.tls, crate::tls::peer::PeerTlsMode::On(_))
                });
            if !roles.xds {
                problems.add(
                    "xds.tls",
                    "this node does not run the xds role: add `xds` to services, or remove it",
                );
            } else if !member_with_tls {
                problems.add(
                    "xds.tls",
                    "is for a db member of a cluster with TLS between nodes (cluster.tls not off): the xDS listener serves the member's certificate and takes Envoys' from the cluster's CA",
                );
            }
        }

        if !problems.0.is_empty() {
            return Err(fail(problems.0));
        }
        Ok(Config {
            source_name: source_name.to_owned(),
            node_id,
            selection,
            services,
            db_role: roles.db,
            listeners: Listeners {
                public: public.expect("validated above"),
                admin: admin.expect("validated above"),
                peer,
                xds,
            },
            advertise: advertise.expect("validated above"),
            substitutions,
            joined,
            data_dir,
            limits: Limits {
                max_request_body_bytes: usize::try_from(body).expect("bounded by MAX_BODY_LIMIT"),
                request_timeout: Duration::from_millis(timeout),
                shutdown_grace: Duration::from_millis(grace),
                listeners: listener_limits,
                store: store_budget,
                services: service_budgets,
            },
            log: LogConfig { format, level },
            auth: auth.expect("validated above"),
            cluster,
            topology,
            topology_path,
            xds_ingress: xds_ingress.expect("validated above"),
            xds_tls,
            public_tls,
        })
    }

    /// Whether the node runs `service`.
    pub fn runs(&self, service: &str) -> bool {
        self.services.contains(&service)
    }
}

/// A budget from its raw fields, each defaulting to `base`'s.
fn parse_budget(problems: &mut Problems, field: &str, raw: &RawBudget, base: Budget) -> Budget {
    // Only what is written here is checked here: `base` was checked where
    // it was written.
    let mut check = |name: &str, value: Option<u64>, default: u64, range: (u64, u64)| {
        let v = value.unwrap_or(default);
        if value.is_some() && !(range.0..=range.1).contains(&v) {
            problems.add(
                &format!("{field}.{name}"),
                format!("{v} is out of range: use {} to {}", range.0, range.1),
            );
        }
        v
    };
    let read_ms = check("read_ms", raw.read_ms, base.read.time_ms, (1, 600_000));
    let write_steps = check(
        "write_steps",
        raw.write_steps,
        base.write.steps,
        (10_000, 1_000_000_000_000),
    );
    let max_rows = check("max_rows", raw.max_rows, base.write.rows, (1, 100_000_000));
    let max_value_bytes = check(
        "max_value_bytes",
        raw.max_value_bytes,
        base.write.value_bytes,
        (4096, MAX_BODY_LIMIT),
    );
    Budget {
        read: ReadBudget {
            time_ms: read_ms,
            rows: max_rows,
        },
        write: WriteBudget {
            steps: write_steps,
            rows: max_rows,
            value_bytes: max_value_bytes,
        },
    }
}

fn parse_listener(
    problems: &mut Problems,
    field: &str,
    value: Option<String>,
    default: &str,
) -> Option<SocketAddr> {
    let text = value.unwrap_or_else(|| default.to_owned());
    let Some((host, port)) = text.rsplit_once(':') else {
        problems.add(
            field,
            format!("`{text}` is not an address: use IP:PORT, e.g. {default}"),
        );
        return None;
    };
    let port = match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => p as u16,
        Ok(p) => {
            problems.add(field, format!("port {p} is out of range: use 1 to 65535"));
            return None;
        }
        Err(_) => {
            problems.add(field, format!("`{port}` is not a port number in `{text}`"));
            return None;
        }
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(SocketAddr::new(ip, port)),
        Err(_) => {
            problems.add(
                field,
                format!("`{host}` is not an IP address: use a literal address such as 127.0.0.1, 0.0.0.0 or [::1]"),
            );
            None
        }
    }
}

/// Checks that `dir` is, or can become, a writable directory, without
/// creating it.
fn check_data_dir(dir: &Path) -> Result<(), String> {
    let mut probe = dir.to_path_buf();
    loop {
        match std::fs::metadata(&probe) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => return Err(format!("{} exists and is not a directory", probe.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !probe.pop() || probe.as_os_str().is_empty() {
                    probe = PathBuf::from(".");
                    break;
                }
            }
            Err(e) => return Err(format!("cannot inspect {}: {e}", probe.display())),
        }
    }
    let test = probe.join(format!(".flotilla-write-test-{}", std::process::id()));
    std::fs::write(&test, b"").map_err(|e| format!("{} is not writable: {e}", probe.display()))?;
    let _ = std::fs::remove_file(&test);
    Ok(())
}

#[cfg(test)]
mod tests;
