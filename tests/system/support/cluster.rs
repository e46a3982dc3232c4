//! Three real nodes on loopback forming a Raft group (HA mode).

use std::{
    collections::{BTreeMap, HashSet},
    net::SocketAddr,
    time::Duration,
};

use serde_json::Value;

use super::{ADMIN, ADMIN_PASSWORD, BINARY, Net, Node, SECRET, free_addr, wait_until};

/// (owner, key) → (value, version) of one node's database.
pub type KvRows = BTreeMap<(String, String), (String, i64)>;

pub struct TestCluster {
    pub nodes: Vec<Node>,
    /// (public, admin, peer) of each member, in id order.
    pub addresses: Vec<(SocketAddr, SocketAddr, SocketAddr)>,
    /// Each member's xDS listener.
    pub xds: Vec<SocketAddr>,
    /// Where Envoys fed by the members listen for the ingress.
    pub envoy_ingress: SocketAddr,
    pub topology: std::path::PathBuf,
    _topology: tempfile::TempDir,
}

pub const CLUSTER_SECRET: &str = "ha-test-cluster-secret-0a9b8c7d6e5f4";

impl TestCluster {
    /// Three members on free loopback ports. `extra` goes into each node's
    /// `cluster:` section.
    pub fn start(extra: &str) -> TestCluster {
        TestCluster::start_with(std::path::Path::new(BINARY), extra, "")
    }

    /// Three members of `binary` (the main one or an example's), with
    /// `extra` in each node's `cluster:` section and `top` (whole YAML
    /// lines) at the top level of each config.
    pub fn start_with(binary: &std::path::Path, extra: &str, top: &str) -> TestCluster {
        let mut cluster = TestCluster::prepare_with(binary, extra, top);
        cluster.spawn_all();
        cluster
    }

    /// Starts every prepared member and waits until each is ready.
    pub fn spawn_all(&mut self) {
        for n in &mut self.nodes {
            n.spawn_only(&[]);
        }
        for n in &mut self.nodes {
            n.wait_ready();
        }
    }

    /// Three members' configs and data dirs, none started yet.
    pub fn prepare_with(binary: &std::path::Path, extra: &str, top: &str) -> TestCluster {
        let members = (0..3)
            .map(|_| (free_addr(), free_addr(), free_addr()))
            .collect();
        let xds = (0..3).map(|_| free_addr()).collect();
        TestCluster::prepare_on(binary, extra, top, members, xds)
    }

    /// Three members on the first three hosts of `net` (see `Net`), not
    /// started yet; `extra` goes into each node's `cluster:` section.
    pub fn prepare_in(net: &Net, extra: &str) -> TestCluster {
        let on = |ip: std::net::Ipv4Addr, port: u16| SocketAddr::from((ip, port));
        let members = net.ips[..3]
            .iter()
            .map(|ip| (on(*ip, 8080), on(*ip, 8081), on(*ip, 7070)))
            .collect();
        let xds = net.ips[..3].iter().map(|ip| on(*ip, 18000)).collect();
        let mut cluster =
            TestCluster::prepare_on(std::path::Path::new(BINARY), extra, "", members, xds);
        for (i, node) in cluster.nodes.iter_mut().enumerate() {
            node.launcher = net.launcher(i);
        }
        cluster
    }

    /// Three members on the given (public, admin, peer) and xDS addresses.
    fn prepare_on(
        binary: &std::path::Path,
        extra: &str,
        top: &str,
        members: Vec<(SocketAddr, SocketAddr, SocketAddr)>,
        xds: Vec<SocketAddr>,
    ) -> TestCluster {
        let topology_dir = tempfile::tempdir().unwrap();
        let topology = topology_dir.path().join("topology.yaml");
        let mut text = String::from("members:\n");
        for (i, (public, _, peer)) in members.iter().enumerate() {
            text.push_str(&format!(
                "  - {{id: {}, node: ha-{}, peer: '{peer}', public: '{public}'}}\n",
                i + 1,
                i + 1
            ));
        }
        std::fs::write(&topology, text).unwrap();
        let envoy_ingress = free_addr();
        let mut nodes = Vec::new();
        for (i, (public, admin, peer)) in members.iter().copied().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let config = format!(
                "node: {{id: ha-{}}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', peer: '{peer}', xds: '{}'}}\nxds: {{ingress_listener: '{envoy_ingress}'}}\ndata_dir: '{}'\nauth: {{secret: '{SECRET}'}}\ncluster: {{topology: '{}', secret: '{CLUSTER_SECRET}', bootstrap: true{extra}}}\nlog: {{level: 'info,flotilla=debug,openraft=warn'}}\n{top}",
                i + 1,
                xds[i],
                dir.path().join("data").display(),
                topology.display()
            );
            let path = dir.path().join("node.yaml");
            std::fs::write(&path, config).unwrap();
            let mut node = Node::prepared(dir, path, public, admin);
            node.binary = binary.to_owned();
            nodes.push(node);
        }
        TestCluster {
            nodes,
            addresses: members,
            xds,
            envoy_ingress,
            topology,
            _topology: topology_dir,
        }
    }

    /// A fourth node on the given (public, admin, peer, xDS) addresses: its
    /// topology lists the three members and itself (id 4), and it is not a
    /// member until added. Not started.
    pub fn joiner(&self, addresses: [SocketAddr; 4]) -> Node {
        let [public, admin, peer, xds] = addresses;
        let dir = tempfile::tempdir().unwrap();
        let mut topology = String::from("members:\n");
        for (i, (p, _, r)) in self.addresses.iter().enumerate() {
            topology.push_str(&format!(
                "  - {{id: {}, node: ha-{}, peer: '{r}', public: '{p}'}}\n",
                i + 1,
                i + 1
            ));
        }
        topology.push_str(&format!(
            "  - {{id: 4, node: ha-4, peer: '{peer}', public: '{public}'}}\n"
        ));
        std::fs::write(dir.path().join("topology.yaml"), topology).unwrap();
        let config = format!(
            "node: {{id: ha-4}}\nservices: [all]\nlisteners: {{public: '{public}', admin: '{admin}', peer: '{peer}', xds: '{xds}'}}\ndata_dir: '{}'\nauth: {{secret: '{SECRET}'}}\ncluster: {{topology: '{}', secret: '{CLUSTER_SECRET}'}}\n",
            dir.path().join("data").display(),
            dir.path().join("topology.yaml").display()
        );
        let path = dir.path().join("node.yaml");
        std::fs::write(&path, config).unwrap();
        Node::prepared(dir, path, public, admin)
    }

    /// Cuts member `i`'s peer traffic off (or restores it) by fault
    /// injection (the cluster must run with `fault_injection: true`).
    pub async fn isolate(&self, i: usize, isolated: bool) {
        let r = super::http()
            .post(self.nodes[i].admin_url("/debug/isolate"))
            .json(&serde_json::json!({ "isolated": isolated }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    pub async fn status(&self, i: usize) -> Option<Value> {
        self.nodes[i].status().await.map(|v| v["cluster"].clone())
    }

    /// The index of the current leader, as the running nodes see it.
    pub async fn leader(&self) -> usize {
        wait_until("a leader", Duration::from_secs(15), || async {
            let mut roles = Vec::new();
            for i in 0..self.nodes.len() {
                if self.nodes[i].child.is_some() {
                    let role = self.status(i).await.map(|s| s["role"].clone());
                    if role.as_ref().is_some_and(|r| r == "Leader") {
                        return Ok(i);
                    }
                    roles.push(role);
                }
            }
            Err(roles)
        })
        .await
    }

    /// Waits until every running node has applied the same index. On a
    /// timeout, each node's status is shown (and, by `Node`'s `Drop`, the
    /// end of its log).
    pub async fn converge(&self) {
        wait_until(
            "every running node applies the same index",
            Duration::from_secs(20),
            || async {
                let mut statuses = Vec::new();
                for i in 0..self.nodes.len() {
                    if self.nodes[i].child.is_some() {
                        statuses.push(self.status(i).await);
                    }
                }
                let applied: HashSet<_> = statuses
                    .iter()
                    .map(|s| s.as_ref().map(|s| s["applied_index"].clone()))
                    .collect();
                if applied.len() == 1 && !applied.contains(&None) {
                    Ok(())
                } else {
                    Err(statuses)
                }
            },
        )
        .await
    }

    /// Creates the admin through Raft with the CLI, and logs in.
    pub async fn admin_token(&self) -> String {
        self.nodes[0].create_admin();
        self.nodes[1].login(ADMIN, ADMIN_PASSWORD).await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn stop_all(&mut self) {
        for n in &mut self.nodes {
            if n.child.is_some() {
                n.signal("TERM");
            }
        }
        for n in &mut self.nodes {
            if n.child.is_some() {
                let status = n.wait_exit(Duration::from_secs(20));
                assert_eq!(status.code(), Some(0), "{}", n.log());
            }
        }
    }

    /// Every kv row (owner, key, value, version) of each node's database
    /// file, with its integrity check.
    pub fn kv_rows(&self) -> Vec<(String, KvRows)> {
        self.nodes
            .iter()
            .map(|n| {
                let db = rusqlite::Connection::open_with_flags(
                    n.dir.path().join("data").join("flotilla.db"),
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                )
                .unwrap();
                let check: String = db
                    .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                    .unwrap();
                let mut stmt = db
                    .prepare("SELECT owner, key, value, version FROM kv__items")
                    .unwrap();
                let rows = stmt
                    .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), (r.get(2)?, r.get(3)?))))
                    .unwrap()
                    .collect::<Result<BTreeMap<_, _>, _>>()
                    .unwrap();
                (check, rows)
            })
            .collect()
    }
}
