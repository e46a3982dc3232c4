//! The `cluster` section: the topology, this node's role in it, the
//! credentials and Raft's timings.

use super::*;

pub(super) fn parse_cluster(
    problems: &mut Problems,
    raw: RawCluster,
    catalogue: &Catalogue,
    node_id: &str,
    roles: &Selection,
    public: Option<SocketAddr>,
    peer: Option<SocketAddr>,
) -> Option<(ClusterSettings, Topology)> {
    let join_token = match (raw.join_token.clone(), raw.join_token_file.clone()) {
        (None, None) => None,
        (token, file) => read_secret(problems, "cluster.join_token", token, file),
    };
    let Some(path) = raw.topology.clone() else {
        problems.add(
            "cluster.topology",
            "missing: name the topology file that lists the members",
        );
        return None;
    };
    let topology = match Topology::load(Path::new(&path), catalogue) {
        Ok(t) => t,
        Err(found) => {
            // A problem with the file as a whole (unreadable, not YAML) is
            // this config's field's; one inside it names its place there.
            for p in found {
                if p.field == path {
                    problems.add("cluster.topology", format!("{path}: {}", p.message));
                } else {
                    problems.0.push(p);
                }
            }
            return None;
        }
    };
    let field = format!("{path}: members");
    let me = topology.find(node_id);
    let credential = match (me, join_token) {
        (None, Some(token)) => {
            check_joiner(problems, &raw, roles, &token);
            Some(token)
        }
        (None, None) => {
            problems.add(
                &field,
                format!("this node (`{node_id}`) is not in the topology: add it under `members` (db role) or `nodes`, or give it a join token (`cluster.join_token_file`; `flotilla cluster join-token --services ...` on a db node prints one)"),
            );
            return None;
        }
        (Some(_), Some(_)) => {
            problems.add(
                "cluster.join_token",
                format!("is for nodes not in the topology, and `{node_id}` is in it: remove one"),
            );
            None
        }
        (Some(_), None) => credential_of(problems, &raw, roles),
    };
    let role = match me {
        Some(me) => {
            if me.selection() != roles {
                problems.add(
                    "services",
                    format!("differ from this node's in the topology {path}: give both the same services"),
                );
            }
            if let (Some(mine), Some(fixed)) = (public, me.public())
                && mine != fixed
            {
                problems.add(
                    "listeners.public",
                    format!(
                        "this node is reached at {mine} (advertise.public, or the listener), but the topology gives {fixed}: make them the same"
                    ),
                );
            }
            match me {
                crate::mesh::topology::NodeRef::Member(m) => {
                    check_peer(problems, peer, &m.peer);
                    Role::Voter {
                        id: m.id,
                        secret: credential.clone().unwrap_or_default(),
                    }
                }
                crate::mesh::topology::NodeRef::Client(c) => Role::Client {
                    node: c.name.clone(),
                    key: credential.clone().unwrap_or_default(),
                },
            }
        }
        None => Role::Client {
            node: node_id.to_owned(),
            key: credential.clone().unwrap_or_default(),
        },
    };
    let heartbeat = raw.heartbeat_ms.unwrap_or(50);
    let [min, max] = raw.election_timeout_ms.unwrap_or([200, 400]);
    if !(10..=10_000).contains(&heartbeat) {
        problems.add(
            "cluster.heartbeat_ms",
            format!("{heartbeat} is out of range: use 10 to 10000"),
        );
    }
    if min <= heartbeat * 2 || max <= min || max > 60_000 {
        problems.add(
            "cluster.election_timeout_ms",
            format!("[{min}, {max}] is not usable: use [min, max] with heartbeat_ms * 2 < min < max <= 60000"),
        );
    }
    let snapshot_every = raw.snapshot_every.unwrap_or(50_000);
    if !(10..=10_000_000).contains(&snapshot_every) {
        problems.add(
            "cluster.snapshot_every",
            format!("{snapshot_every} is out of range: use 10 to 10000000 log entries"),
        );
    }
    let snapshot_keep_logs = raw.snapshot_keep_logs.unwrap_or(1000);
    if snapshot_keep_logs > 10_000_000 {
        problems.add(
            "cluster.snapshot_keep_logs",
            format!("{snapshot_keep_logs} is out of range: use 0 to 10000000"),
        );
    }
    let stale = raw.stale_read_max_lag_ms.unwrap_or(1000);
    if !(10..=60_000).contains(&stale) {
        problems.add(
            "cluster.stale_read_max_lag_ms",
            format!("{stale} is out of range: use 10 to 60000"),
        );
    }
    let tls = parse_peer_tls(
        problems,
        raw.tls.clone(),
        matches!(role, Role::Voter { .. }),
    );
    credential?;
    let settings = ClusterSettings {
        node: node_id.to_owned(),
        runs: roles
            .services
            .iter()
            .map(|s| s.to_string())
            .chain(roles.xds.then(|| "xds".to_owned()))
            .collect(),
        tls,
        stale_read_max_lag: Duration::from_millis(stale),
        fault_injection: raw.fault_injection,
        role,
        snapshot_keep_logs,
        members: topology
            .members
            .iter()
            .map(|m| crate::cluster::Member {
                id: m.id,
                name: m.name.clone(),
                peer: m.peer.clone(),
            })
            .collect(),
        clients: topology.nodes.iter().map(|n| n.name.clone()).collect(),
        bootstrap: raw.bootstrap,
        heartbeat: Duration::from_millis(heartbeat),
        election_timeout: (Duration::from_millis(min), Duration::from_millis(max)),
        snapshot_every,
    };
    Some((settings, topology))
}

/// The credential of a node of the topology: the secret on a member, its
/// own key on a store client.
fn credential_of(problems: &mut Problems, raw: &RawCluster, roles: &Selection) -> Option<String> {
    if roles.db {
        if raw.client_key.is_some() || raw.client_key_file.is_some() {
            problems.add(
                "cluster.client_key",
                "is for nodes without the db role; a voter proves itself with cluster.secret",
            );
        }
        read_secret(
            problems,
            "cluster.secret",
            raw.secret.clone(),
            raw.secret_file.clone(),
        )
    } else {
        store_client_checks(problems, raw);
        read_secret(
            problems,
            "cluster.client_key",
            raw.client_key.clone(),
            raw.client_key_file.clone(),
        )
    }
}

/// What no store client may carry: the members' secret, the bootstrap.
fn store_client_checks(problems: &mut Problems, raw: &RawCluster) {
    if raw.secret.is_some() || raw.secret_file.is_some() {
        problems.add(
            "cluster.secret",
            "must stay on the db nodes: a node without the db role proves itself with its own cluster.client_key (`flotilla cluster client-key --node NAME` on a db node prints it) or a join token",
        );
    }
    if raw.bootstrap {
        problems.add(
            "cluster.bootstrap",
            "only db nodes initialize the cluster: remove it here",
        );
    }
}

/// A node that joins with a token: a store client, running no service the
/// token does not name.
fn check_joiner(problems: &mut Problems, raw: &RawCluster, roles: &Selection, token: &str) {
    store_client_checks(problems, raw);
    if raw.client_key.is_some() || raw.client_key_file.is_some() {
        problems.add(
            "cluster.client_key",
            "is for nodes listed in the topology; a node that joins proves itself with its join token: remove one",
        );
    }
    if roles.db {
        problems.add(
            "services",
            "a db member must be listed in the topology under `members` with its Raft id; a join token is for store clients",
        );
    }
    match crate::cluster::join_token_scope(token) {
        None => problems.add(
            "cluster.join_token",
            "is not a join token (`fjt1.<services>.<mac>`): print one with `flotilla cluster join-token --services ...` on a db node",
        ),
        Some(scope) => {
            let outside: Vec<&str> = roles
                .services
                .iter()
                .filter(|s| !scope.iter().any(|t| t == *s))
                .copied()
                .collect();
            if !outside.is_empty() {
                problems.add(
                    "services",
                    format!(
                        "{} not named by the join token, which allows {}: get a token for these services",
                        outside.join(", "),
                        scope.join(", ")
                    ),
                );
            }
            if roles.xds {
                problems.add(
                    "services",
                    "the xds role reads the whole registry and runs on db members; a joined node runs services only",
                );
            }
        }
    }
}

/// A member's peer listener against its topology address: the same, or a
/// wildcard bind on the same port (the address others dial may be a DNS
/// name, or a pod's IP).
fn check_peer(problems: &mut Problems, bind: Option<SocketAddr>, advertised: &str) {
    let Some(bind) = bind else { return };
    let same = match advertised.parse::<SocketAddr>() {
        Ok(a) => a == bind || (bind.ip().is_unspecified() && a.port() == bind.port()),
        Err(_) => {
            advertised
                .rsplit_once(':')
                .and_then(|(_, port)| port.parse::<u16>().ok())
                == Some(bind.port())
        }
    };
    if !same {
        problems.add(
            "listeners.peer",
            format!(
                "{bind} does not serve this node's peer address in the topology ({advertised}): bind that address, or a wildcard on its port"
            ),
        );
    }
}

/// `cluster.tls`: absent, TLS between nodes with the CA derived from the
/// cluster secret; `off`, plaintext (warned about at start); or a table:
/// the CA's directory (db members), the trust domain, the certificates'
/// lifetime.
pub(super) fn parse_peer_tls(
    problems: &mut Problems,
    raw: Option<serde_yaml_ng::Value>,
    member: bool,
) -> crate::tls::peer::PeerTlsMode {
    use crate::tls::peer::{CaSource, PeerTlsMode, PeerTlsSettings};
    use serde_yaml_ng::Value;
    let usage = "use `off`, or `{ca_dir: DIR, domain: NAME, certificate_lifetime_seconds: N}` (each optional), or leave it out for mutual TLS with the CA derived from cluster.secret";
    let mut on = PeerTlsSettings::default();
    let Some(raw) = raw else {
        return PeerTlsMode::On(on);
    };
    match raw {
        Value::String(word) if word == "off" => PeerTlsMode::Off,
        Value::Bool(false) => PeerTlsMode::Off,
        Value::Mapping(table) => {
            for (key, value) in table {
                match (key.as_str(), value) {
                    (Some("ca_dir"), Value::String(dir)) if member => {
                        on.ca = CaSource::Dir(PathBuf::from(dir));
                    }
                    (Some("ca_dir"), Value::String(_)) => problems.add(
                        "cluster.tls.ca_dir",
                        "is for db members, which hold the CA: a store client gets its certificate from them; remove it",
                    ),
                    (Some("domain"), Value::String(d)) => match crate::tls::identity::Identity::member(&d) {
                        Ok(_) => on.domain = d,
                        Err(_) => problems.add(
                            "cluster.tls.domain",
                            format!("`{d}` is not a trust domain: use letters, digits, '-' and '.'"),
                        ),
                    },
                    (Some("certificate_lifetime_seconds"), Value::Number(n)) => match n.as_u64() {
                        Some(secs @ 5..=2_592_000) => on.lifetime = Duration::from_secs(secs),
                        _ => problems.add(
                            "cluster.tls.certificate_lifetime_seconds",
                            format!("{n} is out of range: use 5 to 2592000 (30 days); the default is 86400"),
                        ),
                    },
                    (Some(k @ ("ca_dir" | "domain")), _) => {
                        problems.add(&format!("cluster.tls.{k}"), "must be a string")
                    }
                    (Some(k @ "certificate_lifetime_seconds"), _) => {
                        problems.add(&format!("cluster.tls.{k}"), "must be a number of seconds")
                    }
                    (k, _) => problems.add(
                        "cluster.tls",
                        format!("unknown key {}: {usage}", k.map_or("(not a string)".to_owned(), |k| format!("`{k}`"))),
                    ),
                }
            }
            if let CaSource::Dir(dir) = &on.ca {
                for file in ["ca.crt", "ca.key"] {
                    if !dir.join(file).is_file() {
                        problems.add(
                            "cluster.tls.ca_dir",
                            format!("{} has no {file}: `flotilla ca init --out {}` makes the CA there (or imports yours)", dir.display(), dir.display()),
                        );
                    }
                }
            }
            PeerTlsMode::On(on)
        }
        other => {
            problems.add(
                "cluster.tls",
                format!(
                    "`{}` is not a setting: {usage}",
                    serde_yaml_ng::to_string(&other).unwrap_or_default().trim()
                ),
            );
            PeerTlsMode::Off
        }
    }
}
