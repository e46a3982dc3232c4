//! `flotilla backup` under load and `flotilla restore` into new nodes: every
//! write acknowledged before the backup started is in the restored data,
//! with its value, and so are the accounts and the signing keys.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{
    ADMIN, ADMIN_PASSWORD, BINARY, Node, NodeConfig, TestCluster, authed, run_cli, wait_until,
};

type Acked = Arc<Mutex<Vec<(String, String)>>>;

/// Writers on every url, distinct keys, until `stop`: what each
/// acknowledged (200) is recorded, in order.
fn writers(
    urls: Vec<String>,
    token: &str,
    stop: Arc<AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let tasks = (0..4)
        .map(|w| {
            let (urls, acked, stop, client) =
                (urls.clone(), acked.clone(), stop.clone(), authed(token));
            tokio::spawn(async move {
                for i in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let (key, value) = (format!("w{w}-k{i}"), format!("value-{w}-{i}"));
                    let r = client
                        .put(format!("{}/api/kv/keys/{key}", urls[(w + i) % urls.len()]))
                        .json(&json!({ "value": value }))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().push((key, value));
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

async fn wait_acked(acked: &Acked, at_least: usize) {
    wait_until("writes acknowledged", Duration::from_secs(30), || {
        let n = acked.lock().unwrap().len();
        std::future::ready(if n >= at_least { Ok(()) } else { Err(n) })
    })
    .await;
}

/// Runs `flotilla backup` with `config` into `out`; returns its report.
async fn backup(config: &std::path::Path, out: &std::path::Path) -> Value {
    let args = [
        "backup",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]
    .map(str::to_owned);
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_cli(
            std::path::Path::new(BINARY),
            &args.each_ref().map(String::as_str),
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{stdout}{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn restore(config: &std::path::Path, from: &std::path::Path, force: bool) -> (i32, String) {
    let mut args = vec![
        "restore",
        "--config",
        config.to_str().unwrap(),
        "--from",
        from.to_str().unwrap(),
    ];
    if force {
        args.push("--force");
    }
    let (code, out, err) = run_cli(std::path::Path::new(BINARY), &args);
    (code, format!("{out}{err}"))
}

/// Every acknowledged write reads back with its value, through `url`.
async fn all_there(url: &str, token: &str, writes: &[(String, String)]) {
    let client = authed(token);
    for (key, value) in writes {
        let r = client
            .get(format!("{url}/api/kv/keys/{key}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{key} is missing after the restore");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["value"], value.as_str(), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_backup_under_load_restores_into_a_new_cluster() {
    let mut cluster = TestCluster::start("");
    let token = cluster.admin_token().await;
    let urls = cluster.nodes.iter().map(|n| n.url("")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = writers(urls, &token, stop.clone());
    wait_acked(&acked, 200).await;
    // Everything acknowledged before the backup starts must be in it.
    let before: Vec<(String, String)> = acked.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let report = backup(&cluster.nodes[1].config_path, &file).await;
    assert!(
        report["applied_index"].as_u64() >= report["commit_index_at_start"].as_u64(),
        "{report}"
    );
    let digest = <sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&file).unwrap());
    assert_eq!(report["sha256"], format!("{digest:x}"), "{report}");
    // The load went on meanwhile.
    wait_acked(&acked, before.len() + 50).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    cluster.stop_all();

    let mut fresh = TestCluster::prepare_with(std::path::Path::new(BINARY), "", "");
    for node in &fresh.nodes {
        let (code, out) = restore(&node.config_path, &file, false);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("restore every member"), "{out}");
    }
    // Never over a database without --force.
    let (code, out) = restore(&fresh.nodes[0].config_path, &file, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("--force"), "{out}");
    fresh.spawn_all();
    fresh.leader().await;
    // The old cluster's token still verifies: same accounts, same keys.
    all_there(&fresh.nodes[2].url(""), &token, &before).await;
    // And the admin logs in with the same password.
    let login = fresh.nodes[0].login(ADMIN, ADMIN_PASSWORD).await;
    all_there(
        &fresh.nodes[0].url(""),
        login["access_token"].as_str().unwrap(),
        &before[..10],
    )
    .await;
    // The new group takes writes.
    let r = authed(&token)
        .put(fresh.nodes[1].url("/api/kv/keys/after-restore"))
        .json(&json!({ "value": "new" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    fresh.converge().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_single_node_backup_restores_into_an_empty_data_dir() {
    let node = Node::start(NodeConfig::default());
    let token = node.admin_token().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = writers(vec![node.url("")], &token, stop.clone());
    wait_acked(&acked, 100).await;
    let before: Vec<(String, String)> = acked.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("single.backup");
    let report = backup(&node.config_path, &file).await;
    assert!(report["applied_index"].is_null(), "{report}");
    // A backup never overwrites a file.
    let args = [
        "backup",
        "--config",
        node.config_path.to_str().unwrap(),
        "--out",
        file.to_str().unwrap(),
    ];
    let (code, _, err) = run_cli(std::path::Path::new(BINARY), &args);
    assert_eq!((code, err.contains("never overwrites")), (1, true), "{err}");
    // Restoring under a running node is refused.
    let (code, out) = restore(&node.config_path, &file, true);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("stop the node"), "{out}");
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // Into a new node's empty data dir.
    let mut fresh = Node::start(NodeConfig::default());
    fresh.signal("TERM");
    fresh.wait_exit(Duration::from_secs(20));
    std::fs::remove_dir_all(fresh.dir.path().join("data")).unwrap();
    let (code, out) = restore(&fresh.config_path, &file, false);
    assert_eq!(code, 0, "{out}");
    fresh.spawn(&[]);
    all_there(&fresh.url(""), &token, &before).await;
}
