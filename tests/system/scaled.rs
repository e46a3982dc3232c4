//! The scaled mode: three `db` members and six service nodes (two per
//! service) on loopback. Every node's ingress serves every route; service
//! nodes are clients of the members' database within their namespaces;
//! writes go on after the db leader and a service node are killed, and
//! neither Envoy (with the generated scaled config) nor the built-in
//! forwarding fails an idempotent request meanwhile.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use flotilla::cluster::network;
use flotilla_store::{Command, MigrationSpec, Statement, WriteBudget};
use serde_json::Value;

use crate::{
    gen_envoy::{envoy_in_front, grpc_echo},
    support::{ADMIN, ADMIN_PASSWORD, BINARY, Node, SECRET, authed, free_addr, http, run_cli},
};

const CLUSTER_SECRET: &str = "scaled-test-cluster-secret-7e6d5c4b3a29";

#[path = "../common/scaled_layout.rs"]
mod scaled_layout;
use scaled_layout::LAYOUT;

pub struct ScaledCluster {
    pub nodes: BTreeMap<&'static str, Node>,
    /// Each db member's peer listener.
    pub peers: BTreeMap<&'static str, SocketAddr>,
    pub topology: PathBuf,
    _dir: tempfile::TempDir,
}

impl ScaledCluster {
    pub fn start() -> ScaledCluster {
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
                    "{{topology: '{}', secret: '{CLUSTER_SECRET}', bootstrap: true}}",
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
                "node: {{id: {name}}}\nservices: [{services}]\nlisteners: {{public: '{public}', admin: '{admin}'{peer}}}\ndata_dir: '{}'\nauth: {{secret: '{SECRET}'}}\ncluster: {cluster}\nlog: {{level: 'info,flotilla=debug,openraft=warn'}}\n",
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
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            for name in self.peers.keys() {
                let node = &self.nodes[name];
                if node.child.is_none() {
                    continue;
                }
                if let Some(v) = node.status().await
                    && v["cluster"]["role"] == "Leader"
                {
                    return name;
                }
            }
            assert!(Instant::now() < deadline, "no db leader within 15 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node's registry holds every running node
    /// as healthy (the forwarding follows the registry).
    pub async fn wait_registered(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        for node in self.nodes.values().filter(|n| n.child.is_some()) {
            loop {
                let healthy = node.status().await.map(|v| {
                    v["registry"]
                        .as_array()
                        .map(|a| a.iter().filter(|n| n["healthy"] == true).count())
                        .unwrap_or(0)
                });
                if healthy == Some(LAYOUT.len()) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "registry of {} not complete within 15 s: {healthy:?}",
                    node.public
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn every_node_serves_every_route_and_writes_survive_the_loss_of_the_db_leader_and_a_service_node()
 {
    let mut cluster = ScaledCluster::start();
    cluster.wait_registered().await;

    // The first admin, through a db member's config; then a login through
    // a kv node's ingress, which forwards it to an accounts node.
    cluster.nodes["db-1"].create_admin();
    let token = cluster.nodes["kv-1"].login(ADMIN, ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = authed(&token);

    // Every route through every node.
    for (name, node) in &cluster.nodes {
        let body: Value = http()
            .post(node.url("/api/echo"))
            .json(&serde_json::json!({"message": name}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(body["message"], *name);
        let answered = body["node"].as_str().unwrap();
        assert!(
            answered.starts_with("echo-"),
            "{name}: answered by {answered}"
        );
        let answered = grpc_echo(node.public, name).await.unwrap();
        assert!(
            answered.starts_with("echo-"),
            "{name}: gRPC answered by {answered}"
        );
        let r = client
            .put(node.url(&format!("/api/kv/keys/via-{name}")))
            .json(&serde_json::json!({"value": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}: {}", r.text().await.unwrap());
        let me: Value = client
            .get(node.url("/api/accounts/me"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(me["username"], ADMIN, "{name}");
    }
    let got: Value = client
        .get(cluster.nodes["echo-2"].url("/api/kv/keys/via-db-3"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["value"], "db-3");

    // The db members enforce the namespaces of a store client.
    let db1 = cluster.peers["db-1"].to_string();
    let (_, kv_key, _) = run_cli(
        Path::new(BINARY),
        &[
            "cluster",
            "client-key",
            "--config",
            cluster.nodes["db-1"].config_path.to_str().unwrap(),
            "--node",
            "kv-1",
        ],
    );
    let mut as_kv = network::client_as(&db1, kv_key.trim(), Some("kv-1")).unwrap();
    let write = |namespace: &str| {
        network::blob(&(
            format!("test-{namespace}"),
            Command::Write {
                namespace: namespace.into(),
                statements: vec![Statement::new("SELECT 1", vec![])],
                budget: WriteBudget::UNLIMITED,
            },
        ))
    };
    let refused = as_kv.write(write("echo")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("`kv-1` may not write namespace `echo`")
    );
    let refused = as_kv
        .write(write(flotilla::auth::accounts::NAMESPACE))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    as_kv.write(write("kv")).await.expect("its own namespace");
    // Not another node's registry record, nor a schema of its own for a
    // namespace it only reads.
    let hijack = network::blob(&(
        "test-hijack".to_owned(),
        Command::Write {
            namespace: "registry".into(),
            statements: vec![Statement::new(
                "UPDATE registry__nodes SET public = '127.0.0.1:1' WHERE node = 'accounts-1'",
                vec![],
            )],
            budget: WriteBudget::UNLIMITED,
        },
    ));
    let refused = as_kv.write(hijack).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let migrate = |sql: &str| {
        network::blob(&(
            "test-migrate".to_owned(),
            Command::Migrate {
                namespace: flotilla::auth::accounts::NAMESPACE.into(),
                migrations: vec![MigrationSpec {
                    version: 999,
                    name: "mine".into(),
                    sql: sql.into(),
                }],
            },
        ))
    };
    let refused = as_kv
        .write(migrate("DELETE FROM accounts__users"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = as_kv.vote(network::blob(&())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let mut impostor = network::client_as(&db1, kv_key.trim(), Some("echo-1")).unwrap();
    let refused = impostor.write(write("echo")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // Envoy with the generated scaled config in front of the nine nodes.
    let (envoy, listen) = envoy_in_front("scaled", &cluster.topology).await;
    let through_envoy = format!("http://{listen}/api/kv/keys/via-db-1");
    let r = client.get(&through_envoy).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Kill the db leader and kv-1 while reads flow through Envoy and
    // through an echo node's forwarding: no idempotent request fails.
    let leader = cluster.leader().await;
    let through_ingress = cluster.nodes["echo-1"].url("/api/kv/keys/via-db-1");
    let mut failures = Vec::new();
    for i in 0..200 {
        if i == 40 {
            cluster.nodes.get_mut(leader).unwrap().kill9();
            cluster.nodes.get_mut("kv-1").unwrap().kill9();
        }
        for url in [&through_envoy, &through_ingress] {
            match client.get(url).send().await {
                Ok(r) if r.status() == 200 => {}
                Ok(r) => failures.push(format!(
                    "{i} {url}: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => failures.push(format!("{i} {url}: {e}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failures.is_empty(),
        "failed reads (killed {leader} and kv-1): {failures:?}\n{}",
        envoy.log()
    );

    // Writes go on through the survivors, from every remaining node.
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    for (name, node) in cluster.nodes.iter().filter(|(_, n)| n.child.is_some()) {
        let r = client
            .put(node.url(&format!("/api/kv/keys/after-{name}")))
            .json(&serde_json::json!({"value": name}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            200,
            "write through {name} after failover: {}",
            r.text().await.unwrap()
        );
    }
    let r = client
        .put(format!("http://{listen}/api/kv/keys/after-envoy"))
        .json(&serde_json::json!({"value": "envoy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "write through Envoy after failover");
}
