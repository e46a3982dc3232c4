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
    let credential = if roles.db {
        if raw.client_key.is_some() || raw.client_key_file.is_some() {
            problems.add(
                "cluster.client_key",
                "is for nodes without the db role; a voter proves itself with cluster.secret",
            );
        }
        read_secret(problems, "cluster.secret", raw.secret, raw.secret_file)
    } else {
        if raw.secret.is_some() || raw.secret_file.is_some() {
            problems.add(
                "cluster.secret",
                "must stay on the db nodes: a node without the db role proves itself with its own cluster.client_key (`flotilla cluster client-key --node NAME` on a db node prints it)",
            );
        }
        if raw.bootstrap {
            problems.add(
                "cluster.bootstrap",
                "only db nodes initialize the cluster: remove it here",
            );
        }
        read_secret(
            problems,
            "cluster.client_key",
            raw.client_key,
            raw.client_key_file,
        )
    };
    let Some(path) = raw.topology else {
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
    let Some(me) = topology.find(node_id) else {
        problems.add(
            &field,
            format!("this node (`{node_id}`) is not in the topology: add it under `members` (db role) or `nodes`"),
        );
        return None;
    };
    if me.selection() != roles {
        problems.add(
            "services",
            format!("differ from this node's in the topology {path}: give both the same services"),
        );
    }
    let role = match me {
        crate::mesh::topology::NodeRef::Member(m) => {
            if peer.is_some_and(|p| p != m.peer) {
                problems.add(
                    "listeners.peer",
                    format!(
                        "{} differs from this node's peer address in the topology ({})",
                        peer.unwrap_or(m.peer),
                        m.peer
                    ),
                );
            }
            Role::Voter {
                id: m.id,
                secret: credential.clone().unwrap_or_default(),
            }
        }
        crate::mesh::topology::NodeRef::Client(c) => Role::Client {
            node: c.name.clone(),
            key: credential.clone().unwrap_or_default(),
        },
    };
    let my_public = me.public();
    if public.is_some_and(|p| p != my_public) {
        problems.add(
            "listeners.public",
            format!(
                "{} differs from this node's public address in the topology ({})",
                public.unwrap_or(my_public),
                my_public
            ),
        );
    }
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
    credential?;
    let settings = ClusterSettings {
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
                peer: m.peer,
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
