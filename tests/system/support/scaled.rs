//! The scaled mode's nodes on loopback: three `db` members and six service
//! nodes, laid out as `tests/common/scaled_layout.rs` says.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{BINARY, Node, SECRET, free_addr, run_cli, wait_until};

#[path = "../../common/scaled_layout.rs"]
mod scaled_layout;
use scaled_layout::LAYOUT;

pub const CLUSTER_SECRET: &str = "scaled-test-cluster-secret-7e6d5c4b3a29";

pub struct ScaledCluster {
    pub nodes: BTreeMap<&'static str, Node>,
    /// Each db member's peer listener.
    pub peers: BTreeMap<&'static str, SocketAddr>,
    pub topology: PathBuf,
    _dir: tempfile::TempDir,
}

impl ScaledCluster {
    pub fn start() -> ScaledCluster {
        ScaledCluster::start_with("")
    }

    /// The nine nodes, `db_extra` in each db member's `cluster:` section.
    pub fn start_with(db_extra: &str) -> ScaledCluster {
        ScaledCluster::start_custom(db_extra, "")
    }

    /// As `start_with`, `node_extra` appended to every node's config.
    pub fn start_custom(db_extra: &str, node_extra: &str) -> ScaledCluster {
        let dir = tempfile::tempdir().unwrap();
        let topology = dir.path().join("topology.yaml");
        let mut members = String::from("members:\n");
        let mut clients = String::from("nodes:\n");
        let mut addresses = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for (i, (name, services, db)) in LAYOUT.iter().enumerate() {
            let (public, admin) = (free_addr(), free_addr());
            addresses.insert(*name, (public, admin));
            if *db {
                let peer = free_addr();
                peers.insert(*name, peer);
                members.push_str(&format!(
                    "  - {{id: {}, node: {name}, peer: '{peer}', public: '{public}', services: [{services}]}}\n",
                    i + 1
                ));
            } else {
                clients.push_str(&format!(
                    "  - {{node: {name}, public: '{public}', services: [{services}]}}\n"
                ));
            }
        }
        std::fs::write(&topology, members + &clients).unwrap();
        let mut nodes = BTreeMap::new();
        let mut db1_config = None;
        for (name, services, db) in LAYOUT {
            let node_dir = tempfile::tempdir().unwrap();
            let (public, admin) = addresses[name];
            let cluster = if *db {
                format!(
                    "{{topology: '{}', secret: '{CLUSTER_SECRET}', bootstrap: true{db_extra}}}",
                    topology.display()
                )
            } else {
                let (code, key, err) = run_cli(
                    Path::new(BINARY),
                    &[
                        "cluster",
                        "client-key",
                        "--config",
                        db1_config
                            .as_ref()
                            .map(|p: &PathBuf| p.to_str().unwrap())
                            .unwrap(),
                        "--node",
                        name,
                    ],
                );
                assert_eq!(code, 0, "client-key for {name}: {err}");
                format!(
                    "{{topology: '{}', client_key: '{}'}}",
                    topology.display(),
                    key.trim()
                )
            };
            let peer = peers
                .get(name)
                .map(|p| format!(", peer: '{p}'"))
                .unwrap_or_default();
            let config = format!(
                "node: {{id: {name}}}\nservices: [{services}]\nlisteners: {{public: '{public}', admin: '{admin}'{peer}}}\ndata_dir: '{}'\nauth: {{secret: '{SECRET}'}}\ncluster: {cluster}\nlog: {{level: 'info,flotilla=debug,openraft=warn'}}\n{node_extra}",
                node_dir.path().join("data").display(),
            );
            let path = node_dir.path().join("node.yaml");
            std::fs::write(&path, config).unwrap();
            if *name == "db-1" {
                db1_config = Some(path.clone());
            }
            nodes.insert(*name, Node::prepared(node_dir, path, public, admin));
        }
        for n in nodes.values_mut() {
            n.spawn_only(&[]);
        }
        for n in nodes.values_mut() {
            n.wait_ready();
        }
        ScaledCluster {
            nodes,
            peers,
            topology,
            _dir: dir,
        }
    }

    /// The db member that leads, as the members see it.
    pub async fn leader(&self) -> &'static str {
        wait_until("a db leader", Duration::from_secs(15), || async {
            let mut roles = Vec::new();
            for name in self.peers.keys() {
                let node = &self.nodes[name];
                if node.child.is_none() {
                    continue;
                }
                let role = node.status().await.map(|v| v["cluster"]["role"].clone());
                if role.as_ref().is_some_and(|r| r == "Leader") {
                    return Ok(*name);
                }
                roles.push((*name, role));
            }
            Err(roles)
        })
        .await
    }

    /// Waits until every running node's registry holds every running node
    /// as healthy (the forwarding follows the registry).
    pub async fn wait_registered(&self) {
        for node in self.nodes.values().filter(|n| n.child.is_some()) {
            wait_until(
                &format!("the registry of {} is complete", node.public),
                Duration::from_secs(15),
                || async {
                    let healthy = node.status().await.map(|v| {
                        v["registry"]
                            .as_array()
                            .map(|a| a.iter().filter(|n| n["healthy"] == true).count())
                            .unwrap_or(0)
                    });
                    if healthy == Some(LAYOUT.len()) {
                        Ok(())
                    } else {
                        Err(healthy)
                    }
                },
            )
            .await;
        }
    }
}
