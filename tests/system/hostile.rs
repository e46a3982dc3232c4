//! A hostile service (examples/hostile.rs) beside the built-in ones: every
//! attack it can make through its context is refused, and every other
//! service stays correct and available, in single mode and in a three-node
//! cluster, across restarts and a snapshot.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Node, NodeConfig, TestCluster, authed, example_binary, http};

/// The intruder's budgets: small enough that its slow statements stop at
/// once. Every other service keeps the defaults.
const BUDGETS: &str = "limits: {services: {intruder: {write_steps: 500000, read_ms: 50}}}\n";

const ATTACKS: &[&str] = &["/reach", "/poison", "/slow", "/views", "/leaks"];

/// Runs every attack through `base` and checks each was refused, and how.
async fn attack(base: &str) {
    let c = http();
    for route in ATTACKS {
        let r = c
            .post(format!("{base}/api/intruder{route}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{route}");
        let report: Value = r.json().await.unwrap();
        let map = report.as_object().unwrap();
        for (attempt, verdict) in map {
            let verdict = verdict.as_str().unwrap();
            if attempt == "setup" {
                continue;
            }
            assert_ne!(verdict, "ALLOWED", "{route}: `{attempt}` was allowed");
            assert!(
                !verdict.contains("argon2") && !verdict.contains("$"),
                "{route}: `{attempt}` leaked data: {verdict}"
            );
        }
        match *route {
            "/poison" => {
                for k in ["or_rollback", "on_conflict_rollback", "raise_rollback"] {
                    let v = report[k].as_str().unwrap();
                    assert!(v.contains("ROLLBACK is not allowed"), "{k}: {v}");
                }
            }
            "/slow" => {
                let w = report["write"].as_str().unwrap();
                assert!(
                    w.contains("over budget") && w.contains("SQLite steps"),
                    "{w}"
                );
                let r = report["read"].as_str().unwrap();
                assert!(r.contains("longer than 50 ms"), "{r}");
                let h = report["huge_value"].as_str().unwrap();
                assert!(h.contains("larger than"), "{h}");
            }
            "/views" => {
                for k in ["pragma_view", "schema_view", "drop_under_view"] {
                    let v = report[k].as_str().unwrap();
                    assert!(v.contains("cannot be used within namespace"), "{k}: {v}");
                }
            }
            "/leaks" => {
                // The same refusal whether the object exists or not, naming
                // only what the statement named.
                let same = |a: &str, b: &str, x: &str, y: &str| {
                    assert_eq!(
                        report[a].as_str().unwrap().replace(x, "_"),
                        report[b].as_str().unwrap().replace(y, "_"),
                    )
                };
                same(
                    "existing_table",
                    "missing_table",
                    "accounts__users",
                    "accounts__nothing",
                );
                assert_eq!(report["existing_column"], report["missing_column"]);
                for k in ["reindex", "vacuum"] {
                    let v = report[k].as_str().unwrap();
                    assert!(v.contains("is not allowed in a service"), "{k}: {v}");
                    assert!(!v.contains("registry") && !v.contains("autoindex"), "{v}");
                }
            }
            _ => {}
        }
    }
    // Nothing it made breaks a column rename, which re-reads every view and
    // trigger of the database.
    let r: Value = c
        .post(format!("{base}/api/intruder/rename"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["rename"], "ALLOWED", "{r}");
}

/// `count` kv PUTs spread over `bases`, all at once, while the intruder
/// attacks through each base; every PUT must succeed and read back.
async fn kv_under_fire(bases: &[String], token: &str, prefix: &str, count: usize) {
    let c = authed(token);
    let mut puts = Vec::new();
    for i in 0..count {
        let (c, base) = (c.clone(), bases[i % bases.len()].clone());
        let key = format!("{prefix}-{i}");
        puts.push(tokio::spawn(async move {
            let r = c
                .put(format!("{base}/api/kv/keys/{key}"))
                .json(&json!({"value": format!("v{i}")}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }));
    }
    // Through each node in turn, while the PUTs run.
    for base in bases {
        attack(base).await;
    }
    for (i, p) in puts.into_iter().enumerate() {
        let (status, body) = p.await.unwrap();
        assert_eq!(
            status, 200,
            "PUT {prefix}-{i} failed beside the intruder: {body}"
        );
    }
    for (i, base) in bases.iter().enumerate() {
        let key = format!("{prefix}-{}", i % count);
        let r: Value = c
            .get(format!("{base}/api/kv/keys/{key}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["value"], format!("v{}", i % count), "{r}");
    }
}

#[tokio::test]
async fn a_hostile_service_harms_no_other_service_in_single_mode() {
    let mut node = Node::start_binary(
        &example_binary("hostile"),
        NodeConfig {
            extra: BUDGETS.into(),
            ..Default::default()
        },
    );
    let token = node.admin_token().await;
    let base = node.url("");
    kv_under_fire(&[base.clone(), base.clone()], &token, "single", 120).await;
    // Its refusals are counted per namespace.
    let metrics = http()
        .get(node.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in ["denied", "budget"] {
        assert!(
            metrics.contains(&format!(
                "flotilla_store_refusals_total{{namespace=\"intruder\",reason=\"{reason}\"}}"
            )),
            "{metrics}"
        );
    }
    // Every service's migrations and schema still check out on a restart.
    node.signal("TERM");
    assert_eq!(node.wait_exit(Duration::from_secs(20)).code(), Some(0));
    node.spawn(&[]);
    let r: Value = authed(&token)
        .get(node.url("/api/kv/keys/single-7"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["value"], "v7");
    attack(&base).await;
}

#[tokio::test]
async fn a_hostile_service_cannot_stop_or_split_a_cluster() {
    // Small snapshots, and logs purged right behind them, so that a member
    // that was away catches up from a snapshot holding the failed entries.
    let mut cluster = TestCluster::start_with(
        &example_binary("hostile"),
        ", snapshot_every: 40, snapshot_keep_logs: 5",
        BUDGETS,
    );
    let token = cluster.admin_token().await;
    let bases: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    // Hostile statements enter the log (refused ones, and writes stopped by
    // their budget, which end the transaction they share) between the
    // others' writes; every member applies them as failed and goes on.
    kv_under_fire(&bases, &token, "first", 120).await;
    cluster.converge().await;
    for i in 0..3 {
        let s = cluster.status(i).await.unwrap();
        assert_ne!(s["role"], "Shutdown", "member {i} stopped: {s}");
    }
    // A member away while more of it happens...
    let away_at = cluster.status(2).await.unwrap()["last_log_index"]
        .as_u64()
        .unwrap();
    cluster.nodes[2].signal("TERM");
    assert_eq!(
        cluster.nodes[2].wait_exit(Duration::from_secs(20)).code(),
        Some(0)
    );
    kv_under_fire(&bases[..2], &token, "second", 120).await;
    let mut written = 240;
    // ... until the leader's snapshot is a whole interval past what the
    // member has, and the entries it lacks are purged from the leader's
    // log (how many entries 120 writes make depends on how the load groups
    // them, and the purge follows the snapshot when the log is not being
    // read).
    for round in 0..20 {
        let leader = cluster.leader().await;
        let status = cluster.status(leader).await.unwrap();
        let snapshot = status["snapshot_index"].as_u64().unwrap_or(0);
        let purged = status["purged_index"].as_u64().unwrap_or(0);
        if snapshot > away_at + 45 && purged > away_at {
            break;
        }
        assert!(
            round < 19,
            "no snapshot past index {away_at} + 45 with the log purged past {away_at}: snapshot {snapshot}, purged {purged}"
        );
        kv_under_fire(&bases[..2], &token, &format!("more{round}"), 60).await;
        written += 60;
    }
    // ... catches up from a snapshot.
    cluster.nodes[2].spawn(&[]);
    cluster.converge().await;
    assert!(
        cluster.nodes[2].log().contains("installed a snapshot"),
        "the returning member did not install a snapshot"
    );
    // The whole cluster restarts on its logs and databases, and agrees.
    cluster.stop_all();
    let rows = cluster.kv_rows();
    for (check, data) in &rows {
        assert_eq!(check, "ok");
        assert_eq!(data, &rows[0].1, "the members' kv tables differ");
        assert_eq!(data.len(), written);
    }
    for n in &mut cluster.nodes {
        n.spawn_only(&[]);
    }
    for n in &mut cluster.nodes {
        n.wait_ready();
    }
    cluster.converge().await;
    let intruder: Vec<Value> = {
        let mut out = Vec::new();
        for b in &bases {
            out.push(
                http()
                    .post(format!("{b}/api/intruder/rows"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap(),
            );
        }
        out
    };
    assert!(intruder.iter().all(|r| r == &intruder[0]), "{intruder:?}");
    assert_eq!(intruder[0]["t"], 0, "no write over budget left a row");
    kv_under_fire(&bases, &token, "third", 30).await;
}
