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
mod tls;

pub use interpolate::Substitution;

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
        let public_tls =
            tls::parse_public_tls(&mut problems, raw.tls.public, raw.cluster.is_some());
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
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, "test.yaml", &Catalogue::builtin())
    }

    fn problems(text: &str) -> Vec<Problem> {
        parse(text).unwrap_err().problems
    }

    const BASE: &str = "node: {id: n1}\ndata_dir: target/test-data\nauth: {secret: 'test-secret-0123456789abcdefghijklmnop'}\n";

    /// A db member and a kv store client, in a topology file.
    fn with_topology() -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topology.yaml");
        std::fs::write(
            &path,
            "members:\n  - {id: 1, node: db-1, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [db]}\nnodes:\n  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}\n",
        )
        .unwrap();
        let path = path.display().to_string();
        (dir, path)
    }

    fn node(id: &str, services: &str, listeners: &str, cluster: &str) -> String {
        format!(
            "node: {{id: {id}}}\nservices: {services}\nlisteners: {{{listeners}}}\ndata_dir: target/test-data\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\ncluster: {{{cluster}}}\n"
        )
    }

    #[test]
    fn a_node_without_the_db_role_is_a_store_client_with_its_own_key() {
        let (_dir, t) = with_topology();
        let key = "k".repeat(8) + "0123456789abcdefghijklmnopqrstuvwxyz";
        let c = parse(&node(
            "kv-1",
            "[kv]",
            "public: '127.0.0.1:8011'",
            &format!("topology: '{t}', client_key: '{key}'"),
        ))
        .unwrap();
        assert!(!c.db_role);
        assert!(c.listeners.peer.is_none());
        assert!(matches!(c.cluster.unwrap().role, Role::Client { ref node, .. } if node == "kv-1"));
        let db = parse(&node(
            "db-1",
            "[db]",
            "public: '127.0.0.1:8001', peer: '127.0.0.1:7001'",
            &format!("topology: '{t}', secret: '{key}', bootstrap: true"),
        ))
        .unwrap();
        assert!(db.db_role);
        assert!(matches!(
            db.cluster.unwrap().role,
            Role::Voter { id: 1, .. }
        ));
    }

    #[test]
    fn tls_between_nodes_is_on_unless_written_off_and_its_settings_are_checked() {
        use crate::tls::peer::{CaSource, PeerTlsMode, PeerTlsSettings};
        let (dir, t) = with_topology();
        std::fs::write(
            &t,
            "members:\n  - {id: 1, node: db-1, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [db, xds]}\nnodes:\n  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}\n",
        )
        .unwrap();
        let key = "0123456789abcdefghijklmnopqrstuvwxyz";
        let db = |tls: &str| {
            node(
                "db-1",
                "[db, xds]",
                "public: '127.0.0.1:8001', peer: '127.0.0.1:7001', xds: '127.0.0.1:18001'",
                &format!("topology: '{t}', secret: '{key}'{tls}"),
            )
        };
        let tls_of = |text: &str| parse(text).unwrap().cluster.unwrap().tls;
        assert_eq!(tls_of(&db("")), PeerTlsMode::On(PeerTlsSettings::default()));
        assert_eq!(tls_of(&db(", tls: off")), PeerTlsMode::Off);
        let ca = dir.path().join("ca");
        std::fs::create_dir(&ca).unwrap();
        for f in ["ca.crt", "ca.key"] {
            std::fs::write(ca.join(f), "").unwrap();
        }
        let on = tls_of(&db(&format!(
            ", tls: {{ca_dir: '{}', domain: example.test, certificate_lifetime_seconds: 3600}}",
            ca.display()
        )));
        assert_eq!(
            on,
            PeerTlsMode::On(PeerTlsSettings {
                ca: CaSource::Dir(ca.clone()),
                domain: "example.test".into(),
                lifetime: Duration::from_secs(3600),
                hosts: Vec::new(),
            })
        );
        // The xDS listener's TLS names its address and the names given.
        let mut with_xds = db("");
        with_xds.push_str("xds: {tls: true, tls_names: [xds.example, 10.0.0.9]}\n");
        let PeerTlsMode::On(on) = tls_of(&with_xds) else {
            panic!("TLS is on")
        };
        assert_eq!(on.hosts, ["127.0.0.1", "xds.example", "10.0.0.9"]);
        for (tls, field, why) in [
            (", tls: on", "cluster.tls", "`on` is not a setting"),
            (
                ", tls: {lifetime: 5}",
                "cluster.tls",
                "unknown key `lifetime`",
            ),
            (
                ", tls: {certificate_lifetime_seconds: 1}",
                "cluster.tls.certificate_lifetime_seconds",
                "out of range",
            ),
            (
                ", tls: {ca_dir: /nonexistent}",
                "cluster.tls.ca_dir",
                "has no ca.crt",
            ),
            (
                ", tls: {domain: 'a/b'}",
                "cluster.tls.domain",
                "not a trust domain",
            ),
        ] {
            let p = problems(&db(tls));
            assert!(
                p.iter()
                    .any(|p| p.field == field && p.message.contains(why)),
                "{tls}: {p:?}"
            );
        }
        // A store client holds no CA; xds.tls is a member's, with TLS on.
        let p = problems(&node(
            "kv-1",
            "[kv]",
            "public: '127.0.0.1:8011'",
            &format!(
                "topology: '{t}', client_key: '{key}', tls: {{ca_dir: '{}'}}",
                ca.display()
            ),
        ));
        assert!(p.iter().any(|p| p.field == "cluster.tls.ca_dir"), "{p:?}");
        let mut off_with_xds = db(", tls: off");
        off_with_xds.push_str("xds: {tls: true}\n");
        let p = problems(&off_with_xds);
        assert!(
            p.iter()
                .any(|p| p.field == "xds.tls" && p.message.contains("TLS between nodes")),
            "{p:?}"
        );
    }

    #[test]
    fn cluster_roles_are_checked_against_the_topology() {
        let (_dir, t) = with_topology();
        let key = "0123456789abcdefghijklmnopqrstuvwxyz";
        let cases = [
            (
                node(
                    "kv-1",
                    "[kv]",
                    "public: '127.0.0.1:8011', peer: '127.0.0.1:7011'",
                    &format!("topology: '{t}', client_key: '{key}'"),
                ),
                "listeners.peer",
                "does not run the db role",
            ),
            (
                node(
                    "kv-1",
                    "[kv]",
                    "public: '127.0.0.1:8011'",
                    &format!("topology: '{t}', secret: '{key}'"),
                ),
                "cluster.secret",
                "must stay on the db nodes",
            ),
            (
                node(
                    "kv-1",
                    "[kv]",
                    "public: '127.0.0.1:8011'",
                    &format!("topology: '{t}'"),
                ),
                "cluster.client_key",
                "missing",
            ),
            (
                node(
                    "kv-1",
                    "[echo]",
                    "public: '127.0.0.1:8011'",
                    &format!("topology: '{t}', client_key: '{key}'"),
                ),
                "services",
                "differ from this node's in the topology",
            ),
            (
                node(
                    "kv-9",
                    "[kv]",
                    "public: '127.0.0.1:8011'",
                    &format!("topology: '{t}', client_key: '{key}'"),
                ),
                &format!("{t}: members"),
                "is not in the topology",
            ),
            (
                node(
                    "db-1",
                    "[db]",
                    "public: '127.0.0.1:8001', peer: '127.0.0.1:7001'",
                    &format!("topology: '{t}', secret: '{key}', client_key: '{key}'"),
                ),
                "cluster.client_key",
                "is for nodes without the db role",
            ),
            (
                node(
                    "kv-1",
                    "[kv]",
                    "public: '127.0.0.1:8099'",
                    &format!("topology: '{t}', client_key: '{key}'"),
                ),
                "listeners.public",
                "but the topology gives 127.0.0.1:8011",
            ),
            (
                node(
                    "kv-1",
                    "[kv]",
                    "public: '0.0.0.0:8011'",
                    &format!("topology: '{t}', client_key: '{key}'"),
                ),
                "advertise.public",
                "missing: listeners.public binds 0.0.0.0:8011",
            ),
            (
                node(
                    "db-1",
                    "[db]",
                    "public: '127.0.0.1:8001', peer: '0.0.0.0:7002'",
                    &format!("topology: '{t}', secret: '{key}'"),
                ),
                "listeners.peer",
                "does not serve this node's peer address",
            ),
            (
                node(
                    "echo-5d8f",
                    "[echo, kv]",
                    "public: '127.0.0.1:8099'",
                    &format!(
                        "topology: '{t}', join_token: 'fjt1.echo.0123456789abcdef0123456789abcdef'"
                    ),
                ),
                "services",
                "kv not named by the join token, which allows echo",
            ),
            (
                node(
                    "kv-1",
                    "[kv]",
                    "public: '127.0.0.1:8011'",
                    &format!(
                        "topology: '{t}', join_token: 'fjt1.kv.0123456789abcdef0123456789abcdef'"
                    ),
                ),
                "cluster.join_token",
                "is for nodes not in the topology",
            ),
            (
                node(
                    "echo-5d8f",
                    "[echo]",
                    "public: '127.0.0.1:8099'",
                    &format!("topology: '{t}', join_token: 'not-a-token-0123456789abcdefghijkl'"),
                ),
                "cluster.join_token",
                "is not a join token",
            ),
        ];
        for (text, field, needle) in cases {
            let p = problems(&text);
            assert!(
                p.iter()
                    .any(|p| p.field == field && p.message.contains(needle)),
                "expected {field}: {needle} in {p:?}"
            );
        }
    }

    /// A pod's config: one file for every pod, the rest from the
    /// environment; a DNS-named member binds a wildcard.
    #[test]
    fn a_pod_takes_its_name_and_address_from_the_environment_and_joins() {
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("topology.yaml");
        std::fs::write(
            &topology,
            "members:\n  - {id: 1, node: flotilla-db-0, peer: 'flotilla-db-0.flotilla-db:7070', services: [db, xds]}\n",
        )
        .unwrap();
        let token = crate::cluster::join_token(
            "cluster-secret-0123456789abcdefghijklmnop",
            &["echo".into()],
        );
        let env = |name: &str| match name {
            "POD_NAME" => Some("flotilla-echo-5d8f-x2x9z".to_owned()),
            "POD_IP" => Some("10.42.0.7".to_owned()),
            "JOIN_TOKEN" => Some(token.clone()),
            _ => None,
        };
        let text = format!(
            "node: {{id: '${{POD_NAME}}'}}\nservices: [echo]\nlisteners: {{public: '0.0.0.0:8080', admin: '0.0.0.0:8081'}}\nadvertise: {{public: '${{POD_IP}}:8080'}}\ndata_dir: target/test-data\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\ncluster: {{topology: '{}', join_token: '${{JOIN_TOKEN}}'}}\n",
            topology.display()
        );
        let c = Config::parse_with_env(&text, "pod.yaml", &Catalogue::builtin(), &env).unwrap();
        assert_eq!(c.node_id, "flotilla-echo-5d8f-x2x9z");
        assert_eq!(c.advertise, "10.42.0.7:8080".parse().unwrap());
        assert!(c.joined);
        assert!(
            c.substitutions
                .iter()
                .any(|s| s.field == "cluster.join_token" && s.value.is_none())
        );
        let Some(ClusterSettings {
            role: crate::cluster::Role::Client { node, key },
            ..
        }) = &c.cluster
        else {
            panic!("a joined node is a store client");
        };
        assert_eq!(
            (node.as_str(), key.as_str()),
            ("flotilla-echo-5d8f-x2x9z", token.as_str())
        );

        let member = format!(
            "node: {{id: '${{POD_NAME}}'}}\nservices: [db, xds]\nlisteners: {{public: '0.0.0.0:8080', admin: '0.0.0.0:8081', peer: '0.0.0.0:7070', xds: '0.0.0.0:18000'}}\nadvertise: {{public: '${{POD_IP}}:8080'}}\ndata_dir: target/test-data\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\ncluster: {{topology: '{}', secret: 'cluster-secret-0123456789abcdefghijklmnop'}}\n",
            topology.display()
        );
        let env = |name: &str| match name {
            "POD_NAME" => Some("flotilla-db-0".to_owned()),
            "POD_IP" => Some("10.42.0.9".to_owned()),
            _ => None,
        };
        let c = Config::parse_with_env(&member, "db.yaml", &Catalogue::builtin(), &env).unwrap();
        assert!(!c.joined && c.db_role);
        let missing = Config::parse_with_env(&member, "db.yaml", &Catalogue::builtin(), &|_| None)
            .unwrap_err();
        assert!(
            missing
                .problems
                .iter()
                .any(|p| p.field == "node.id" && p.message.contains("POD_NAME is not set")),
            "{missing}"
        );
    }

    #[test]
    fn store_budgets_default_per_service_and_are_checked() {
        let c = parse(&format!(
            "{BASE}services: [all]\nlimits: {{store: {{read_ms: 500, max_rows: 100}}, services: {{kv: {{write_steps: 20000}}}}}}\n"
        ))
        .unwrap();
        let echo = c.limits.budget("echo");
        assert_eq!((echo.read.time_ms, echo.write.rows), (500, 100));
        assert_eq!(echo.write.steps, Budget::SERVICE_DEFAULT.write.steps);
        let kv = c.limits.budget("kv");
        assert_eq!((kv.read.time_ms, kv.write.steps), (500, 20_000));
        let p = problems(&format!(
            "{BASE}services: [all]\nlimits: {{store: {{read_ms: 0}}, services: {{nope: {{}}, kv: {{max_value_bytes: 1}}}}}}\n"
        ));
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "limits.store.read_ms",
                "limits.services.kv.max_value_bytes",
                "limits.services.nope"
            ],
            "{p:?}"
        );
        assert!(
            p[2].message.contains("services: accounts, echo, kv"),
            "{p:?}"
        );
    }

    #[test]
    fn all_is_an_explicit_alias() {
        let c = parse(&format!("{BASE}services: [all]")).unwrap();
        assert_eq!(c.services, Catalogue::builtin().names().collect::<Vec<_>>());
        let c = parse(&format!("{BASE}services: [kv, kv]")).unwrap();
        assert_eq!(c.services, vec!["kv"]);
    }

    #[test]
    fn selection_is_required_and_checked() {
        for text in [
            BASE.to_owned(),
            format!("{BASE}services: []"),
            format!("{BASE}services: [kv, nope]"),
        ] {
            let p = problems(&text);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].field, "services");
            assert!(
                p[0].message
                    .contains("valid names: all, accounts, echo, kv, db, xds"),
                "{}",
                p[0].message
            );
        }
    }

    #[test]
    fn every_problem_names_its_field() {
        let p = problems(
            "node: {id: Bad_Id}\nservices: [all]\ndata_dir: ''\nlisteners: {public: '127.0.0.1:99999', admin: 'localhost:1'}\nlimits: {max_request_body_bytes: 0, request_timeout_ms: 0}\nlog: {format: xml, level: 'not=a=filter'}\n",
        );
        let fields: Vec<_> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                "node.id",
                "listeners.public",
                "listeners.admin",
                "data_dir",
                "limits.max_request_body_bytes",
                "limits.request_timeout_ms",
                "log.format",
                "log.level",
                "auth",
            ]
        );
        assert!(
            p[1].message.contains("99999 is out of range"),
            "{}",
            p[1].message
        );
    }

    #[test]
    fn unknown_keys_are_refused_with_their_place() {
        let p = problems(&format!(
            "{BASE}services: [all]\nlisteners: {{publik: '127.0.0.1:1'}}\n"
        ));
        assert!(
            p[0].message.contains("unknown field `publik`"),
            "{}",
            p[0].message
        );
        assert!(p[0].field.starts_with("line 5"), "{}", p[0].field);
    }

    #[test]
    fn listeners_must_not_collide() {
        let p = problems(&format!(
            "{BASE}services: [all]\nlisteners: {{public: '0.0.0.0:9000', admin: '127.0.0.1:9000'}}\n"
        ));
        assert_eq!(p[0].field, "listeners.admin");
    }

    #[test]
    fn the_xds_role_comes_with_all_or_by_name_and_owns_its_listener() {
        let all = parse(&format!("{BASE}services: [all]")).unwrap();
        assert_eq!(all.listeners.xds, Some("127.0.0.1:18000".parse().unwrap()));
        let named = parse(&format!(
            "{BASE}services: [kv, xds]\nlisteners: {{xds: '127.0.0.1:18500'}}"
        ))
        .unwrap();
        assert_eq!(named.services, ["kv"]);
        assert_eq!(
            named.listeners.xds,
            Some("127.0.0.1:18500".parse().unwrap())
        );
        let without = parse(&format!("{BASE}services: [kv]")).unwrap();
        assert_eq!(without.listeners.xds, None);
        let p = problems(&format!(
            "{BASE}services: [kv]\nlisteners: {{xds: '127.0.0.1:18500'}}"
        ));
        assert_eq!(p[0].field, "listeners.xds");
        assert!(p[0].message.contains("add `xds`"), "{}", p[0].message);
    }

    #[test]
    fn ipv6_listeners_parse() {
        let c = parse(&format!(
            "{BASE}services: [all]\nlisteners: {{public: '[::1]:9000'}}\n"
        ))
        .unwrap();
        assert_eq!(c.listeners.public.to_string(), "[::1]:9000");
    }

    #[test]
    fn a_file_as_data_dir_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let p = problems(&format!(
            "node: {{id: n1}}\nservices: [all]\ndata_dir: '{}'\nauth: {{secret: 'test-secret-0123456789abcdefghijklmnop'}}\n",
            file.path().display()
        ));
        assert_eq!(p[0].field, "data_dir");
        assert!(p[0].message.contains("not a directory"), "{}", p[0].message);
    }

    /// Found by the config property test: an unreadable topology was
    /// reported under the file's name, not the config field.
    #[test]
    fn an_unreadable_topology_is_a_problem_of_cluster_topology() {
        let found = problems(&format!(
            "{BASE}services: [all]\ncluster: {{topology: /nonexistent/topology.yaml, secret: 'a-cluster-secret-0123456789abcdef'}}\n"
        ));
        let p = found
            .iter()
            .find(|p| p.message.contains("cannot read the topology"))
            .expect("the unreadable topology is reported");
        assert_eq!(p.field, "cluster.topology");
        assert!(
            p.message.contains("/nonexistent/topology.yaml"),
            "{}",
            p.message
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Whether a problem names where it is: a config field under a
        /// known section, the line and column of a YAML shape error, or a
        /// place inside the topology file (`<file>: members[0].peer`).
        fn names_a_place(field: &str) -> bool {
            field == "(document)"
                || (field.starts_with("line ") && field.contains(" column "))
                || SECTIONS.contains(&field.split(['.', '[']).next().unwrap_or_default())
                || field
                    .split_once(": ")
                    .is_some_and(|(_, place)| !place.is_empty())
        }

        fn scalar() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                Just("0".to_owned()),
                Just("-1".to_owned()),
                Just("true".to_owned()),
                Just("~".to_owned()),
                Just("''".to_owned()),
                Just("[]".to_owned()),
                Just("{}".to_owned()),
                Just("'127.0.0.1:0'".to_owned()),
                Just("[all]".to_owned()),
                "'[ -~]{0,20}'".prop_map(|s| s.replace('\'', "")),
            ]
        }

        /// A YAML document of known and unknown keys, two levels deep,
        /// with values of every shape.
        fn document() -> impl Strategy<Value = String> {
            // `data_dir` is left out: checking it writes a probe file in
            // the directory it names.
            let sections: Vec<&str> = SECTIONS
                .iter()
                .copied()
                .filter(|s| *s != "data_dir")
                .collect();
            let key = prop_oneof![
                proptest::sample::select(sections).prop_map(str::to_owned),
                proptest::sample::select(
                    &[
                        "id",
                        "public",
                        "admin",
                        "peer",
                        "secret",
                        "format",
                        "level",
                        "max_request_body_bytes",
                        "request_timeout_ms",
                        "store",
                        "services",
                        "listeners",
                        "max_connections",
                        "max_header_bytes",
                        "topology",
                        "heartbeat_ms",
                        "ingress_listener",
                    ][..]
                )
                .prop_map(str::to_owned),
                "[a-z_]{1,10}",
            ];
            let inner = proptest::collection::vec((key.clone(), scalar()), 0..4).prop_map(|kv| {
                let body: Vec<String> = kv.into_iter().map(|(k, v)| format!("{k}: {v}")).collect();
                format!("{{{}}}", body.join(", "))
            });
            let value = prop_oneof![scalar(), inner];
            proptest::collection::vec((key, value), 0..8)
                .prop_map(|kv| kv.into_iter().map(|(k, v)| format!("{k}: {v}\n")).collect())
        }

        proptest! {
            /// Any text: an error or a config, never a panic; every problem
            /// says where it is and what is wrong.
            #[test]
            fn arbitrary_text_never_panics(text in ".{0,400}") {
                if let Err(e) = parse(&text) {
                    prop_assert!(!e.problems.is_empty());
                    for p in &e.problems {
                        prop_assert!(!p.message.is_empty(), "{:?}", p);
                        prop_assert!(names_a_place(&p.field), "{:?}", p);
                    }
                }
            }

            /// YAML of the config's own keys and strangers, every value
            /// shape: each problem names its field.
            #[test]
            fn every_problem_of_a_document_names_its_field(doc in document()) {
                if let Err(e) = parse(&doc) {
                    for p in &e.problems {
                        prop_assert!(!p.message.is_empty(), "{:?} in\n{}", p, doc);
                        prop_assert!(names_a_place(&p.field), "{:?} in\n{}", p, doc);
                    }
                }
            }
        }
    }
}
