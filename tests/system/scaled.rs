//! The scaled mode: three `db` members and six service nodes (two per
//! service) on loopback. Every node's ingress serves every route; service
//! nodes are clients of the members' database within their namespaces;
//! writes go on after the db leader and a service node are killed, and
//! neither Envoy (with the generated scaled config) nor the built-in
//! forwarding fails an idempotent request meanwhile.

use std::{path::Path, time::Duration};

use flotilla::cluster::{ClientWrite, network};
use flotilla_store::{Command, MigrationSpec, Statement, WriteBudget};
use serde_json::Value;

use crate::support::{
    ADMIN, ADMIN_PASSWORD, BINARY, ScaledCluster, authed, envoy_in_front, grpc_echo, http, run_cli,
};

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
    // With no TLS in any config, the hops between nodes were TLS: from a
    // member and from a store client alike (the other nodes' public
    // listeners take TLS from a client naming the trust domain, beside
    // plaintext).
    for name in ["db-1", "kv-1"] {
        let metrics = http()
            .get(cluster.nodes[name].admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics
                .contains(r#"flotilla_forwarded_requests_total{service="echo",transport="tls"}"#),
            "{name} forwarded no request over TLS:\n{metrics}"
        );
        assert!(
            !metrics.contains(r#"transport="plaintext""#),
            "{name} forwarded in plaintext:\n{metrics}"
        );
    }
    // A forwarded JSON answer ends with one newline, as a local one does
    // (the node that made it added it; the forwarding one adds none).
    let forwarded = http()
        .get(cluster.nodes["db-1"].url("/api/echo?message=hi"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(forwarded.ends_with("}\n"), "{forwarded:?}");
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
    let kv_key = client_key(&cluster, "kv-1");
    let kv_1 = store_client_auth(&cluster, "kv-1", "kv", &kv_key).await;
    let mut as_kv = network::client_as(&db1, &kv_1).unwrap();
    let write = |namespace: &str| {
        network::blob(&ClientWrite {
            request_id: format!("test-{namespace}"),
            command: Command::Write {
                namespace: namespace.into(),
                statements: vec![Statement::new("SELECT 1", vec![])],
                budget: WriteBudget::UNLIMITED,
            },
            deadline_ms: i64::MAX,
        })
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
    // A write that arrives after its sender's deadline is not proposed: the
    // same insert sent again in time succeeds, so the late one left nothing.
    let insert = |deadline_ms: i64, id: &str| {
        network::blob(&ClientWrite {
            request_id: id.to_owned(),
            command: Command::Write {
                namespace: "kv".into(),
                statements: vec![Statement::new(
                    "INSERT INTO kv__items (owner, key, value, version) VALUES ('late', 'late', 'x', 1)",
                    vec![],
                )],
                budget: WriteBudget::UNLIMITED,
            },
            deadline_ms,
        })
    };
    let leader_peer = cluster.peers[cluster.leader().await].to_string();
    let mut to_leader = network::client_as(&leader_peer, &kv_1).unwrap();
    let late = to_leader
        .write(insert(1, "test-late"))
        .await
        .unwrap()
        .into_inner();
    let late: Value = serde_json::from_slice(&late.data).unwrap();
    assert_eq!(late, serde_json::json!({"Refused": {"NotLeader": null}}));
    let in_time = to_leader
        .write(insert(i64::MAX, "test-in-time"))
        .await
        .unwrap()
        .into_inner();
    let in_time: Value = serde_json::from_slice(&in_time.data).unwrap();
    assert!(in_time["Done"]["Ok"].is_object(), "{in_time}");
    // Not another node's registry record, nor a schema of its own for a
    // namespace it only reads.
    let hijack = network::blob(&ClientWrite {
        request_id: "test-hijack".to_owned(),
        command: Command::Write {
            namespace: "registry".into(),
            statements: vec![Statement::new(
                "UPDATE registry__records SET public = '127.0.0.1:1' WHERE node = 'accounts-1'",
                vec![],
            )],
            budget: WriteBudget::UNLIMITED,
        },
        deadline_ms: i64::MAX,
    });
    let refused = as_kv.write(hijack).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let migrate = |sql: &str| {
        network::blob(&ClientWrite {
            request_id: "test-migrate".to_owned(),
            command: Command::Migrate {
                namespace: flotilla::auth::accounts::NAMESPACE.into(),
                migrations: vec![MigrationSpec {
                    version: 999,
                    name: "mine".into(),
                    sql: sql.into(),
                }],
            },
            deadline_ms: i64::MAX,
        })
    };
    let refused = as_kv
        .write(migrate("DELETE FROM accounts__users"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = as_kv.vote(network::blob(&())).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // `flotilla ca status` shows the store clients' certificates too.
    let (code, table, err) = run_cli(
        Path::new(BINARY),
        &[
            "ca",
            "status",
            "--config",
            cluster.nodes["db-1"].config_path.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    for identity in [
        "member/db-1",
        "member/db-3",
        "client/kv/kv-1",
        "client/echo/echo-1",
    ] {
        assert!(
            table.contains(&format!("spiffe://flotilla.local/{identity} ")),
            "{table}"
        );
    }
    // kv-1's key does not get a certificate naming echo-1.
    let impostor = flotilla::cluster::store_client_auth(
        std::slice::from_ref(&db1),
        "echo-1",
        &["echo".to_owned()],
        kv_key.trim(),
        &flotilla::tls::peer::PeerTlsMode::On(Default::default()),
    )
    .await
    .err()
    .expect("kv-1's key proves kv-1 only");
    assert!(
        impostor.contains("is not proven with its key"),
        "{impostor}"
    );

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
        // Paced, so that the requests span the kill and what follows.
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

    // With every db member gone, a store client stops at once, saying so
    // in one line instead of retrying its deregistration.
    for db in ["db-1", "db-2", "db-3"] {
        let member = cluster.nodes.get_mut(db).unwrap();
        if member.child.is_some() {
            member.kill9();
        }
    }
    let echo = cluster.nodes.get_mut("echo-2").unwrap();
    let before = echo.log().lines().count();
    echo.signal("TERM");
    let status = echo.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{}", echo.log());
    let log = echo.log();
    let complaints: Vec<&str> = log
        .lines()
        .skip(before)
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert_eq!(complaints.len(), 1, "{complaints:#?}");
    assert!(
        complaints[0].contains("no cluster member accepts connections")
            && complaints[0].contains("start them"),
        "{}",
        complaints[0]
    );
}

/// The store client key of `node`, from `flotilla cluster client-key`.
fn client_key(cluster: &ScaledCluster, node: &str) -> String {
    let (code, key, err) = run_cli(
        Path::new(BINARY),
        &[
            "cluster",
            "client-key",
            "--config",
            cluster.nodes["db-1"].config_path.to_str().unwrap(),
            "--node",
            node,
        ],
    );
    assert_eq!(code, 0, "client-key for {node}: {err}");
    key.trim().to_owned()
}

/// How the store client `node` (running `service`) calls the members:
/// with the certificate a member issues it for its `key` (TLS between
/// nodes is on by default).
async fn store_client_auth(
    cluster: &ScaledCluster,
    node: &str,
    service: &str,
    key: &str,
) -> network::Auth {
    let db1 = cluster.peers["db-1"].to_string();
    flotilla::cluster::store_client_auth(
        std::slice::from_ref(&db1),
        node,
        &[service.to_owned()],
        key,
        &flotilla::tls::peer::PeerTlsMode::On(Default::default()),
    )
    .await
    .unwrap()
}

/// Whether `node`'s registry holds `of` as healthy (`None` if it does not
/// answer or does not know `of`).
async fn sees_healthy(node: &crate::support::Node, of: &str) -> Option<bool> {
    let status = node.status().await?;
    status["registry"]
        .as_array()?
        .iter()
        .find(|n| n["id"] == of)
        .and_then(|n| n["healthy"].as_bool())
}

/// Waits until every one of `followers` sees `of` unhealthy.
async fn wait_unhealthy(cluster: &ScaledCluster, followers: &[&str], of: &str, within: Duration) {
    wait_seen(cluster, followers, of, false, within).await;
}

/// Waits until every one of `followers` sees `of` as `healthy` (or not).
async fn wait_seen(
    cluster: &ScaledCluster,
    followers: &[&str],
    of: &str,
    healthy: bool,
    within: Duration,
) {
    for name in followers {
        let node = &cluster.nodes[name];
        let state = if healthy { "healthy" } else { "unhealthy" };
        crate::support::wait_until(&format!("{name} sees {of} {state}"), within, || async {
            match sees_healthy(node, of).await {
                Some(seen) if seen == healthy => Ok(()),
                other => Err(other),
            }
        })
        .await;
    }
}

/// Store clients poll nothing: the members push the registry to them
/// (`WatchRegistry`). A node's graceful stop and a crash reach them; when
/// the member one follows is killed, it follows another and the next
/// change still reaches it.
#[tokio::test]
async fn store_clients_follow_the_registry_the_members_push_through_the_loss_of_a_member() {
    let mut cluster = ScaledCluster::start();
    cluster.wait_registered().await;
    let followers = ["kv-1", "accounts-2"];
    // A graceful stop: its record is marked unhealthy and pushed.
    let echo_1 = cluster.nodes.get_mut("echo-1").unwrap();
    echo_1.signal("TERM");
    wait_unhealthy(&cluster, &followers, "echo-1", Duration::from_secs(5)).await;
    cluster
        .nodes
        .get_mut("echo-1")
        .unwrap()
        .wait_exit(Duration::from_secs(10));

    // The leader (the member store clients follow first) is killed; a
    // crashed node's record runs out of its TTL on the members that are
    // left, and the change still reaches the store clients.
    let leader = cluster.leader().await;
    cluster.nodes.get_mut(leader).unwrap().kill9();
    cluster.nodes.get_mut("echo-2").unwrap().kill9();
    wait_unhealthy(&cluster, &followers, "echo-2", Duration::from_secs(15)).await;
    // And what is healthy stays so.
    for node in followers {
        assert_eq!(
            sees_healthy(&cluster.nodes[node], "kv-2").await,
            Some(true),
            "{node}"
        );
    }
}

/// Waits until `follower` sees `of` unhealthy and returns how long that
/// took from `from`.
async fn detected(
    cluster: &ScaledCluster,
    follower: &str,
    of: &str,
    from: std::time::Instant,
) -> Duration {
    wait_unhealthy(cluster, &[follower], of, Duration::from_secs(10)).await;
    from.elapsed()
}

/// Whether a member's log says it marked `node` unhealthy because its
/// session broke (not because its record ran out of its TTL).
fn marked_by_session(cluster: &ScaledCluster, node: &str) -> bool {
    ["db-1", "db-2", "db-3"].iter().any(|m| {
        cluster.nodes[m].log().lines().any(|l| {
            l.contains("its session with this member broke") && l.contains(&format!("node={node}"))
        })
    })
}

/// Liveness by session: a store client killed (kill -9) or paused
/// (SIGSTOP) and a member killed are marked unhealthy when their session
/// with the members breaks (the connection closes; pings go unanswered;
/// the leader's Raft calls fail), before their records' TTL would run out.
/// The record is kept: a paused node that resumes is healthy again.
#[tokio::test]
async fn crashed_and_paused_nodes_are_marked_unhealthy_when_their_session_breaks() {
    let mut cluster = ScaledCluster::start();
    cluster.wait_registered().await;
    let watcher = "kv-1";

    let start = std::time::Instant::now();
    cluster.nodes.get_mut("echo-1").unwrap().kill9();
    let killed = detected(&cluster, watcher, "echo-1", start).await;
    assert!(
        marked_by_session(&cluster, "echo-1"),
        "echo-1: not by its session"
    );

    let start = std::time::Instant::now();
    cluster.nodes["echo-2"].signal("STOP");
    let paused = detected(&cluster, watcher, "echo-2", start).await;
    assert!(
        marked_by_session(&cluster, "echo-2"),
        "echo-2: not by its session"
    );
    cluster.nodes["echo-2"].signal("CONT");
    wait_seen(
        &cluster,
        &[watcher],
        "echo-2",
        true,
        Duration::from_secs(10),
    )
    .await;

    let leader = cluster.leader().await;
    let member = ["db-1", "db-2", "db-3"]
        .into_iter()
        .find(|m| *m != leader)
        .unwrap();
    let start = std::time::Instant::now();
    cluster.nodes.get_mut(member).unwrap().kill9();
    let member_killed = detected(&cluster, watcher, member, start).await;
    assert!(
        marked_by_session(&cluster, member),
        "{member}: not by its session"
    );
    eprintln!(
        "detected: store client killed {killed:?}, store client paused {paused:?}, member killed {member_killed:?}"
    );
}

/// A store client in session with a member writes nothing to stay alive:
/// the member renews its record with its own heartbeat. An idle cluster's
/// Raft log grows by about one entry a second per member, not per node
/// (nine nodes writing each would grow it three times as fast), and every
/// record stays healthy and young well past its TTL.
#[tokio::test]
async fn members_keep_their_store_clients_records_alive_with_one_write_a_second_each() {
    let cluster = ScaledCluster::start();
    cluster.wait_registered().await;
    let leader = cluster.leader().await;
    let last_index = |status: &serde_json::Value| {
        status["cluster"]["last_log_index"]
            .as_u64()
            .expect("a member's status has its last log index")
    };
    let before = last_index(&cluster.nodes[leader].status().await.unwrap());
    let window = 6;
    tokio::time::sleep(Duration::from_secs(window)).await;
    let status = cluster.nodes[leader].status().await.unwrap();
    let grown = last_index(&status) - before;
    eprintln!("the idle cluster's log grew by {grown} entries in {window} s");
    // Three members for `window` seconds, and a little for the leader's
    // other housekeeping; the nine nodes' own heartbeats would be 54.
    assert!(
        grown <= 3 * window + 6,
        "the log grew by {grown} entries in {window} s on an idle cluster of 3 members and 6 store clients"
    );
    for record in status["registry"].as_array().unwrap() {
        assert_eq!(record["healthy"], true, "{record}");
        let age = record["age_ms"].as_u64().unwrap();
        assert!(age < 2_000, "renewed {age} ms ago: {record}");
    }
}

/// A member that cannot commit (the leader and another member paused: no
/// quorum) suspends its store clients' sessions rather than hold them
/// while their records run out under it, and refuses new ones; once the
/// quorum is back it takes sessions again, and every node is healthy again
/// without a restart.
#[tokio::test]
async fn a_member_that_cannot_commit_suspends_its_sessions_and_takes_them_again() {
    let cluster = ScaledCluster::start();
    cluster.wait_registered().await;
    let leader = cluster.leader().await;
    let others: Vec<&str> = ["db-1", "db-2", "db-3"]
        .into_iter()
        .filter(|m| *m != leader)
        .collect();
    let (paused, alone) = (others[0], others[1]);
    cluster.nodes[leader].signal("STOP");
    cluster.nodes[paused].signal("STOP");
    let log_says = |what: &'static str| {
        let node = &cluster.nodes[alone];
        move || {
            let said = node.log().contains(what);
            async move { if said { Ok(()) } else { Err(what) } }
        }
    };
    crate::support::wait_until(
        &format!("{alone} suspends its sessions"),
        Duration::from_secs(10),
        log_says("suspends its store clients' sessions"),
    )
    .await;
    cluster.nodes[leader].signal("CONT");
    cluster.nodes[paused].signal("CONT");
    crate::support::wait_until(
        &format!("{alone} takes sessions again"),
        Duration::from_secs(10),
        log_says("takes store clients' sessions again"),
    )
    .await;
    cluster.wait_registered().await;
}

/// A store client in session writes its record when the registry its
/// member pushes shows it otherwise than it is: marked unhealthy behind its
/// back (here by a write with its own credentials, which the members
/// allow), it is written healthy again within a heartbeat, and every node
/// sees it so. Without that, the members' renewals (time only, never
/// health) would keep it unhealthy for good.
#[tokio::test]
async fn a_store_client_rewrites_its_record_when_the_members_show_it_otherwise() {
    let cluster = ScaledCluster::start();
    cluster.wait_registered().await;
    let auth = store_client_auth(&cluster, "kv-1", "kv", &client_key(&cluster, "kv-1")).await;
    let mut as_kv = network::client_as(&cluster.peers["db-1"].to_string(), &auth).unwrap();
    let mark = flotilla::mesh::registry::RegistryWrite::Own(flotilla::mesh::registry::NodeRecord {
        id: "kv-1".into(),
        public: cluster.nodes["kv-1"].public,
        services: vec!["kv".into()],
        healthy: false,
    });
    let reply = as_kv
        .write(network::blob(&ClientWrite {
            request_id: "test-mark-kv-1".into(),
            command: Command::Write {
                namespace: flotilla::mesh::registry::NAMESPACE.into(),
                statements: vec![mark.statement()],
                budget: WriteBudget::UNLIMITED,
            },
            deadline_ms: i64::MAX,
        }))
        .await
        .unwrap()
        .into_inner();
    let reply: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(
        reply["Done"]["Ok"]["Outcomes"][0]["changed"], 1,
        "the mark was written: {reply}"
    );
    wait_seen(
        &cluster,
        &["db-1", "db-2", "db-3", "kv-2", "echo-1"],
        "kv-1",
        true,
        Duration::from_secs(5),
    )
    .await;
}
