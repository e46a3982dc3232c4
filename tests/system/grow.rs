//! Growing a deployment: a member never starts on data its group does not
//! share, and a running single node becomes a three-voter group without a
//! failed request.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{
    ADMIN, ADMIN_PASSWORD, BINARY, Node, TestCluster, authed, run_cli, wait_until,
};

fn cli(args: &[&str]) -> (i32, String, String) {
    run_cli(Path::new(BINARY), args)
}

/// The single-mode config of a member (`node.yaml` of `TestCluster`): the
/// same node id, listeners and data dir, without the peer listener and the
/// `cluster` section. Written beside it as `single.yaml`.
fn single_config_of(member: &Path) -> PathBuf {
    let text = std::fs::read_to_string(member).unwrap();
    let single: String = text
        .lines()
        .filter(|l| !l.starts_with("cluster:"))
        .map(|l| {
            if l.starts_with("listeners:") {
                let start = l.find(", peer: '").unwrap();
                let end = start + l[start + 9..].find('\'').unwrap() + 10;
                format!("{}{}", &l[..start], &l[end..])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(!single.contains("peer") && !single.contains("cluster"));
    let path = member.with_file_name("single.yaml");
    std::fs::write(&path, single + "\n").unwrap();
    path
}

/// Runs `node` as a single node on `config` with an admin and a key,
/// then stops it.
async fn single_node_with_data(node: &mut Node, config: &Path) {
    let member = std::mem::replace(&mut node.config_path, config.to_owned());
    node.create_admin();
    node.spawn(&[]);
    let token = node.login(ADMIN, ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = authed(&token)
        .put(node.url("/api/kv/keys/kept"))
        .json(&json!({"value": "from the single node"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(20)).code(), Some(0));
    node.config_path = member;
}

/// The steps: a single node's data dir given to a member of a new
/// HA group. The member refuses to start, naming the data dir, what it
/// found and the command that does what the operator wanted; so does a
/// single node on a member's data dir.
#[tokio::test]
async fn a_member_refuses_a_single_nodes_data_dir_and_says_what_to_run() {
    let mut cluster = TestCluster::prepare_with(Path::new(BINARY), "", "");
    let member = cluster.nodes[0].config_path.clone();
    let single = single_config_of(&member);
    single_node_with_data(&mut cluster.nodes[0], &single).await;
    let data = cluster.nodes[0].dir.path().join("data");
    let (code, out, err) = cli(&["serve", "--config", member.to_str().unwrap()]);
    assert_ne!(code, 0, "{out}{err}");
    assert!(err.contains(&data.display().to_string()), "{err}");
    assert!(err.contains("database with data and no Raft log"), "{err}");
    assert!(
        err.contains(&format!(
            "flotilla cluster init --config {}",
            member.display()
        )),
        "{err}"
    );
    // Nothing was written: the single node starts on it as before.
    assert!(!data.join("raft-log.db").exists());
    cluster.nodes[0].config_path = single;
    cluster.nodes[0].spawn(&[]);
    let token = cluster.nodes[0].login(ADMIN, ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kept: Value = authed(&token)
        .get(cluster.nodes[0].url("/api/kv/keys/kept"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kept["value"], "from the single node");
}

/// Three members formed a group; one member's state is then tampered with
/// the ways an operator might: its Raft log removed (a database ahead of a
/// missing log), or its database replaced by another group's. Each start is
/// refused with what was found.
#[tokio::test]
async fn a_member_refuses_a_database_its_log_does_not_account_for() {
    let mut cluster = TestCluster::start("");
    let token = cluster.admin_token().await;
    let r = authed(&token)
        .put(cluster.nodes[0].url("/api/kv/keys/k"))
        .json(&json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    cluster.converge().await;
    cluster.stop_all();
    let data = |i: usize| cluster.nodes[i].dir.path().join("data");

    // Another group: a single node turned into a one-member group.
    let mut other = TestCluster::prepare_with(Path::new(BINARY), "", "");
    let other_member = other.nodes[0].config_path.clone();
    let single = single_config_of(&other_member);
    other.nodes[0].config_path = single.clone();
    other.nodes[0].spawn(&[]);
    let (code, out, err) = cli(&[
        "cluster",
        "init",
        "--config",
        other_member.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    other.nodes[0].signal("TERM");
    assert_eq!(
        other.nodes[0].wait_exit(Duration::from_secs(20)).code(),
        Some(0)
    );
    let other_data = other.nodes[0].dir.path().join("data");

    // Member 3 gets the other group's database beside its own log.
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(data(2).join(format!("flotilla.db{suffix}")));
        let from = other_data.join(format!("flotilla.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, data(2).join(format!("flotilla.db{suffix}"))).unwrap();
        }
    }
    let config3 = cluster.nodes[2].config_path.clone();
    let (code, _, err) = cli(&["serve", "--config", config3.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("different clusters"), "{err}");
    assert!(err.contains(&data(2).display().to_string()), "{err}");

    // Member 2 loses its log; its database applied entries of the group.
    std::fs::remove_file(data(1).join("raft-log.db")).unwrap();
    let config2 = cluster.nodes[1].config_path.clone();
    let (code, _, err) = cli(&["serve", "--config", config2.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("no Raft log"), "{err}");
    assert!(err.contains("flotilla cluster remove --id ID"), "{err}");

    // A single node on a member's data dir.
    let single1 = single_config_of(&cluster.nodes[0].config_path);
    let (code, _, err) = cli(&["serve", "--config", single1.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("holds a Raft member's log"), "{err}");
}

/// Two one-member groups whose topologies list each other: when one tries
/// to add the other, each refuses the other's messages, and the logs name
/// both group ids.
#[tokio::test]
async fn members_of_two_groups_refuse_each_others_messages_naming_both() {
    let mut a = TestCluster::prepare_with(Path::new(BINARY), "", "");
    // Node 2 of `a`'s topology becomes a one-member group of its own: it
    // lists itself as member 1 of a topology with `a`'s member 1 as 2.
    let b_dir = a.nodes[1].dir.path().to_owned();
    let (a_public, _, a_peer) = a.addresses[0];
    let (b_public, _, b_peer) = a.addresses[1];
    let (c_public, _, c_peer) = a.addresses[2];
    let b_topology = b_dir.join("own-topology.yaml");
    std::fs::write(
        &b_topology,
        format!(
            "members:\n  - {{id: 1, node: ha-2, peer: '{b_peer}', public: '{b_public}'}}\n  - {{id: 2, node: ha-1, peer: '{a_peer}', public: '{a_public}'}}\n  - {{id: 3, node: ha-3, peer: '{c_peer}', public: '{c_public}'}}\n"
        ),
    )
    .unwrap();
    let b_member = b_dir.join("own-member.yaml");
    std::fs::write(
        &b_member,
        std::fs::read_to_string(&a.nodes[1].config_path)
            .unwrap()
            .replace(
                &a.topology.display().to_string(),
                &b_topology.display().to_string(),
            ),
    )
    .unwrap();
    let mut groups = Vec::new();
    for (i, member) in [(0, a.nodes[0].config_path.clone()), (1, b_member)] {
        let single = single_config_of(&member);
        a.nodes[i].config_path = single;
        a.nodes[i].spawn(&[]);
        let (code, out, err) = cli(&["cluster", "init", "--config", member.to_str().unwrap()]);
        assert_eq!(code, 0, "{out}{err}");
        let status = a.nodes[i].status().await.unwrap();
        groups.push(status["cluster"]["group"].as_str().unwrap().to_owned());
    }
    assert_ne!(groups[0], groups[1]);
    // `a` adds the other as a learner: refused on every message.
    let config = a.nodes[0].config_path.with_file_name("node.yaml");
    let add = tokio::task::spawn_blocking(move || {
        run_cli(
            Path::new(BINARY),
            &[
                "cluster",
                "add-learner",
                "--config",
                config.to_str().unwrap(),
                "--id",
                "2",
            ],
        )
    });
    let both = |log: &str| log.contains(&groups[0]) && log.contains(&groups[1]);
    wait_until(
        "both logs name both groups",
        Duration::from_secs(20),
        || async {
            let (la, lb) = (a.nodes[0].log(), a.nodes[1].log());
            if both(&la)
                && both(&lb)
                && lb.contains("refused a Raft message from a member of another group")
            {
                Ok(())
            } else {
                Err(())
            }
        },
    )
    .await;
    // The other group is untouched: still its one member, its own group.
    let status = a.nodes[1].status().await.unwrap();
    assert_eq!(status["cluster"]["group"], groups[1]);
    assert_eq!(status["cluster"]["peers"].as_array().unwrap().len(), 1);
    drop(a);
    let _ = add.await;
}

/// What one load task saw.
#[derive(Default)]
struct Seen {
    acked: Vec<String>,
    failures: Vec<String>,
    reads: usize,
}

type Sent = Result<reqwest::Response, reqwest::Error>;

impl Seen {
    /// A write of `key` (`what` names it in a failure): acknowledged on 200.
    fn write(&mut self, key: &str, what: &str, sent: Sent) {
        match sent {
            Ok(r) if r.status() == 200 => self.acked.push(key.to_owned()),
            Ok(r) => self.failures.push(format!("{what}: {}", r.status())),
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
    }

    /// A read (`what` names it in a failure): answered with a status of
    /// `ok`.
    fn read(&mut self, what: &str, sent: Sent, ok: &[u16]) {
        match sent {
            Ok(r) if ok.contains(&r.status().as_u16()) => self.reads += 1,
            Ok(r) => self.failures.push(format!("{what}: {}", r.status())),
            Err(e) => self.failures.push(format!("{what}: {e}")),
        }
    }
}

/// The path: a running single node with steady reads and writes
/// becomes a one-member group (`cluster init`), then three voters
/// (`add-learner`, `promote`). No request fails, and every acknowledged
/// write is in every member's own copy afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_node_grows_into_three_voters_under_load_without_a_failed_request() {
    let mut cluster = TestCluster::prepare_with(Path::new(BINARY), "", "");
    let member = cluster.nodes[0].config_path.clone();
    let single = single_config_of(&member);
    cluster.nodes[0].config_path = single;
    cluster.nodes[0].create_admin();
    cluster.nodes[0].spawn(&[]);
    let token = cluster.nodes[0].login(ADMIN, ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = authed(&token);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    let url = cluster.nodes[0].url("");
    for t in 0..4 {
        let (client, stop, seen, url) = (client.clone(), stop.clone(), seen.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                let key = format!("w{t}-{i}");
                i += 1;
                let r = client
                    .put(format!("{url}/api/kv/keys/{key}"))
                    .json(&json!({"value": key}))
                    .send()
                    .await;
                let mut seen = seen.lock().unwrap();
                seen.write(&key, &format!("PUT {key}"), r);
            }
        }));
    }
    for _ in 0..2 {
        let (client, stop, seen, url) = (client.clone(), stop.clone(), seen.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                i += 1;
                let r = client.get(format!("{url}/api/kv/keys/w0-0")).send().await;
                let mut seen = seen.lock().unwrap();
                seen.read("GET", r, &[200, 404]);
            }
        }));
    }
    let step = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = run_cli(Path::new(BINARY), &args);
            assert_eq!(code, 0, "{args:?}: {out}{err}");
            out
        })
    };
    let m = member.to_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = step(vec![
        "cluster".into(),
        "init".into(),
        "--config".into(),
        m.clone(),
    ])
    .await
    .unwrap();
    assert!(out.contains("formed Raft group"), "{out}");
    cluster.nodes[0].config_path = member.clone();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in &mut cluster.nodes[1..] {
        n.spawn_only(&[]);
    }
    for id in ["2", "3"] {
        step(vec![
            "cluster".into(),
            "add-learner".into(),
            "--config".into(),
            m.clone(),
            "--id".into(),
            id.into(),
        ])
        .await
        .unwrap();
    }
    let out = step(vec![
        "cluster".into(),
        "promote".into(),
        "--config".into(),
        m.clone(),
        "--id".into(),
        "2".into(),
        "--id".into(),
        "3".into(),
    ])
    .await
    .unwrap();
    let status: Value = serde_json::from_str(&out).unwrap();
    let voters = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["voter"] == true)
        .count();
    assert_eq!(voters, 3, "{status}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        seen.failures
    );
    assert!(
        seen.acked.len() > 50 && seen.reads > 50,
        "too little load: {} writes, {} reads",
        seen.acked.len(),
        seen.reads
    );
    // Every member applies the same index, and holds every acknowledged
    // write (and the single node's admin) in its own copy.
    for n in &mut cluster.nodes[1..] {
        n.wait_ready();
    }
    cluster.converge().await;
    cluster.stop_all();
    let acked: std::collections::BTreeSet<String> = seen.acked.into_iter().collect();
    for (i, (check, rows)) in cluster.kv_rows().into_iter().enumerate() {
        assert_eq!(check, "ok");
        let keys: std::collections::BTreeSet<String> =
            rows.keys().map(|(_, k)| k.clone()).collect();
        let missing: Vec<_> = acked.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "member {} lacks {} acknowledged writes: {:?}",
            i + 1,
            missing.len(),
            &missing[..missing.len().min(5)]
        );
    }
    // The group's members all start again on their data.
    cluster.spawn_all();
    assert!(cluster.nodes[2].login(ADMIN, ADMIN_PASSWORD).await["access_token"].is_string());
}

/// Envoy's endpoints of `cluster`, from its admin interface.
async fn envoy_endpoints(admin: std::net::SocketAddr, cluster: &str) -> Vec<String> {
    let text = crate::support::http()
        .get(format!("http://{admin}/clusters"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut hosts: Vec<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{cluster}::")))
        .filter_map(|l| l.strip_suffix("::health_flags::healthy"))
        .map(str::to_owned)
        .collect();
    hosts.sort();
    hosts
}

/// HA → scaled and back, online: store clients join a running three-member
/// group (added to the topology file, which the members reload), then each
/// member in turn stops running the services (`flotilla reconfigure`,
/// drained first); then each takes them back and the store clients stop.
/// All under load through a member and through an Envoy fed by ADS: no
/// request fails, the Envoy follows with no restart (the store clients as
/// the only endpoints, then the members again), and gen-envoy's config of
/// the scaled shape routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ha_cluster_moves_its_services_onto_store_clients_and_back_under_load_without_a_failed_request()
 {
    use crate::support::{Envoy, SECRET, free_addr, wait_routed};
    let cluster = TestCluster::start("");
    let token = cluster.admin_token().await;
    let envoy = Envoy::start(cluster.xds[0]);
    let through_envoy = format!("http://{}", cluster.envoy_ingress);
    wait_routed(&format!("{through_envoy}/api/echo?message=hi")).await;

    let client = authed(&token);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    for (t, base) in [cluster.nodes[0].url(""), through_envoy.clone()]
        .into_iter()
        .enumerate()
    {
        for w in 0..2 {
            let (client, stop, seen, base) =
                (client.clone(), stop.clone(), seen.clone(), base.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) && i < 100_000 {
                    let key = format!("m{t}{w}-{i}");
                    i += 1;
                    let put = client
                        .put(format!("{base}/api/kv/keys/{key}"))
                        .json(&json!({"value": key}))
                        .send()
                        .await;
                    let echo = client
                        .get(format!("{base}/api/echo?message={key}"))
                        .send()
                        .await;
                    let mut seen = seen.lock().unwrap();
                    seen.write(&key, &format!("PUT {key} via {base}"), put);
                    seen.read(&format!("echo via {base}"), echo, &[200]);
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The topology gains three store clients, one per service; each
    // member's entry changes to the database (and xDS) only when that
    // member is reconfigured, so that every running node's config matches
    // it all along.
    let services = ["kv", "echo", "accounts"];
    let addresses: Vec<_> = services
        .iter()
        .map(|_| (free_addr(), free_addr()))
        .collect();
    let topology_with = |db_only: usize| {
        let mut text = String::from("members:\n");
        for (i, (public, _, peer)) in cluster.addresses.iter().enumerate() {
            let services = if i < db_only { "[db, xds]" } else { "[all]" };
            text.push_str(&format!(
                "  - {{id: {}, node: ha-{}, peer: '{peer}', public: '{public}', services: {services}}}\n",
                i + 1,
                i + 1
            ));
        }
        text.push_str("nodes:\n");
        for (service, (public, _)) in services.iter().zip(&addresses) {
            text.push_str(&format!(
                "  - {{node: {service}-1, public: '{public}', services: [{service}]}}\n"
            ));
        }
        text
    };
    std::fs::write(&cluster.topology, topology_with(0)).unwrap();
    wait_until(
        "every member reloads the topology",
        Duration::from_secs(10),
        || async {
            let reloaded = cluster
                .nodes
                .iter()
                .filter(|n| n.log().contains("topology reloaded"))
                .count();
            if reloaded == 3 { Ok(()) } else { Err(reloaded) }
        },
    )
    .await;
    let member3 = cluster.nodes[2].config_path.to_str().unwrap().to_owned();
    let db_only = |i: usize| {
        let member = &cluster.nodes[i];
        let text = std::fs::read_to_string(&member.config_path).unwrap();
        let db = member.config_path.with_file_name("db.yaml");
        std::fs::write(&db, text.replace("services: [all]", "services: [db, xds]")).unwrap();
        db.to_str().unwrap().to_owned()
    };
    let reconfigure = |config: String| {
        tokio::task::spawn_blocking(move || {
            run_cli(Path::new(BINARY), &["reconfigure", "--config", &config])
        })
    };
    // Members 1 and 2 drop their services (member 3 serves them all), and
    // member 3 may not: nobody else would serve them.
    for i in 0..2 {
        std::fs::write(&cluster.topology, topology_with(i + 1)).unwrap();
        let (code, out, err) = reconfigure(db_only(i)).await.unwrap();
        assert_eq!(code, 0, "member {}: {out}{err}", i + 1);
        assert!(out.contains("stopped after draining"), "{out}");
    }
    std::fs::write(&cluster.topology, topology_with(3)).unwrap();
    let (code, _, err) = reconfigure(db_only(2)).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("no other healthy node runs"), "{err}");
    std::fs::write(&cluster.topology, topology_with(2)).unwrap();
    let mut store_clients = Vec::new();
    for (service, (public, admin)) in services.iter().zip(addresses.clone()) {
        let name = format!("{service}-1");
        let (code, key, err) = cli(&[
            "cluster",
            "client-key",
            "--config",
            &member3,
            "--node",
            &name,
        ]);
        assert_eq!(code, 0, "{err}");
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "node: {{id: {name}}}\nservices: [{service}]\nlisteners: {{public: '{public}', admin: '{admin}'}}\ndata_dir: '{}'\nauth: {{secret: '{SECRET}'}}\ncluster: {{topology: '{}', client_key: '{}'}}\n",
            dir.path().join("data").display(),
            cluster.topology.display(),
            key.trim()
        );
        let path = dir.path().join("node.yaml");
        std::fs::write(&path, config).unwrap();
        let mut node = Node::prepared(dir, path, public, admin);
        node.spawn(&[]);
        store_clients.push(node);
    }

    // With the store clients running, member 3 drops its services too.
    std::fs::write(&cluster.topology, topology_with(3)).unwrap();
    let (code, out, err) = reconfigure(db_only(2)).await.unwrap();
    assert_eq!(code, 0, "member 3: {out}{err}");
    assert!(out.contains("stopped after draining"), "{out}");
    let kv_1 = store_clients[0].public.to_string();
    wait_until(
        "Envoy's kv endpoints are the store client's",
        Duration::from_secs(10),
        || async {
            let hosts = envoy_endpoints(envoy.admin, "kv").await;
            if hosts == [kv_1.clone()] {
                Ok(())
            } else {
                Err(hosts)
            }
        },
    )
    .await;
    // gen-envoy's static config for the new shape (from the final
    // topology) validates, starts, and routes every service.
    let (static_envoy, listen) = crate::support::envoy_in_front("scaled", &cluster.topology).await;
    let r = client
        .put(format!("http://{listen}/api/kv/keys/static"))
        .json(&json!({"value": "through the static Envoy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(static_envoy);
    // The registry says the same: the members run no service now.
    let status = cluster.nodes[2].status().await.unwrap();
    for record in status["registry"].as_array().unwrap() {
        let id = record["id"].as_str().unwrap();
        if id.starts_with("ha-") {
            assert_eq!(record["services"], json!([]), "{record}");
        }
    }

    // And back, still under load: each member takes its services again
    // (started, then advertised), then the store clients stop (a graceful
    // stop leaves the registry first) and leave the topology.
    for i in (0..3).rev() {
        std::fs::write(&cluster.topology, topology_with(i)).unwrap();
        let config = cluster.nodes[i].config_path.to_str().unwrap().to_owned();
        let (code, out, err) = tokio::task::spawn_blocking(move || {
            run_cli(Path::new(BINARY), &["reconfigure", "--config", &config])
        })
        .await
        .unwrap();
        assert_eq!(code, 0, "member {}: {out}{err}", i + 1);
    }
    for node in &mut store_clients {
        node.signal("TERM");
        assert_eq!(node.wait_exit(Duration::from_secs(20)).code(), Some(0));
        node.child = None;
    }
    let members: Vec<String> = cluster.addresses.iter().map(|a| a.0.to_string()).collect();
    wait_until(
        "Envoy's kv endpoints are the members again",
        Duration::from_secs(10),
        || async {
            let hosts = envoy_endpoints(envoy.admin, "kv").await;
            if hosts == members { Ok(()) } else { Err(hosts) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        &seen.failures[..seen.failures.len().min(10)]
    );
    assert!(
        seen.acked.len() > 50 && seen.reads > 50,
        "too little load: {} writes, {} echoes",
        seen.acked.len(),
        seen.reads
    );
    // Envoy was never restarted: one process, one ADS stream all along.
    assert!(envoy.stat("control_plane.connected_state").await == Some(1));
    // Every acknowledged write is readable, from every member's own copy.
    cluster.converge().await;
    for key in seen.acked.iter().step_by(37) {
        for node in &cluster.nodes {
            let r: Value = client
                .get(node.url(&format!("/api/kv/keys/{key}?consistency=local")))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(r["value"], key.as_str());
        }
    }
}

/// The way back, for an operator who over-provisioned: a three-member
/// group shrinks to its member 1 (`cluster remove --id 2 --id 3`), which
/// then turns back into a single node (`cluster leave --confirm`) while it
/// serves, keeping every acknowledged write; the single node starts again
/// on its data, and its member config is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_shrinks_back_to_a_single_node_under_load_keeping_its_data() {
    let mut cluster = TestCluster::start("");
    let token = cluster.admin_token().await;
    let member = cluster.nodes[0].config_path.clone();
    let m = member.to_str().unwrap().to_owned();
    let single = single_config_of(&member);
    let client = authed(&token);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = Vec::new();
    let url = cluster.nodes[0].url("");
    for t in 0..3 {
        let (client, stop, seen, url) = (client.clone(), stop.clone(), seen.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && i < 100_000 {
                let key = format!("s{t}-{i}");
                i += 1;
                let r = client
                    .put(format!("{url}/api/kv/keys/{key}"))
                    .json(&json!({"value": key}))
                    .send()
                    .await;
                let read = client.get(format!("{url}/api/kv/keys/{key}")).send().await;
                let mut seen = seen.lock().unwrap();
                seen.write(&key, &format!("PUT {key}"), r);
                seen.read(&format!("GET {key}"), read, &[200, 404]);
            }
        }));
    }
    let step = |args: Vec<&str>| {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, out, err) = run_cli(Path::new(BINARY), &args);
            assert_eq!(code, 0, "{args:?}: {out}{err}");
            out
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Member 1 leads before the others go (the command says "try again"
    // when an election under load goes elsewhere).
    let mut moved = false;
    for _ in 0..5 {
        let (code, _, _) = cli(&["cluster", "transfer-leader", "--config", &m, "--to", "1"]);
        if code == 0 {
            moved = true;
            break;
        }
    }
    assert!(moved, "leadership never moved to member 1");
    step(vec![
        "cluster", "remove", "--config", &m, "--id", "2", "--id", "3",
    ])
    .await
    .unwrap();
    for n in &mut cluster.nodes[1..] {
        n.signal("TERM");
        assert_eq!(n.wait_exit(Duration::from_secs(20)).code(), Some(0));
        n.child = None;
    }
    // Without the flag, nothing happens.
    let (code, _, err) = cli(&["cluster", "leave", "--config", single.to_str().unwrap()]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("--confirm"), "{err}");
    let out = step(vec![
        "cluster",
        "leave",
        "--config",
        single.to_str().unwrap(),
        "--confirm",
    ])
    .await
    .unwrap();
    assert!(out.contains("left Raft group"), "{out}");
    let data = cluster.nodes[0].dir.path().join("data");
    assert!(!data.join("raft-log.db").exists());
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(
        seen.failures.is_empty(),
        "failed requests: {:?}",
        &seen.failures[..seen.failures.len().min(10)]
    );
    assert!(
        seen.acked.len() > 50,
        "too little load: {} writes",
        seen.acked.len()
    );
    let status = cluster.nodes[0].status().await.unwrap();
    assert!(status["cluster"].is_null(), "{status}");
    // Restarted as the single node it now is: every acknowledged write is
    // there; the member config is refused on this data.
    cluster.nodes[0].signal("TERM");
    assert_eq!(
        cluster.nodes[0].wait_exit(Duration::from_secs(20)).code(),
        Some(0)
    );
    let (code, _, err) = cli(&["serve", "--config", &m]);
    assert_ne!(code, 0);
    assert!(err.contains("no Raft log"), "{err}");
    cluster.nodes[0].config_path = single;
    cluster.nodes[0].spawn(&[]);
    let token = cluster.nodes[0].login(ADMIN, ADMIN_PASSWORD).await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let client = authed(&token);
    for key in &seen.acked {
        let r: Value = client
            .get(cluster.nodes[0].url(&format!("/api/kv/keys/{key}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["value"], key.as_str(), "{key}");
    }
}
