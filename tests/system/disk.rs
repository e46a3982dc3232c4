//! Damaged files and failing disks, with real files and a real (loop
//! device) file system: a full disk and a file system turned read-only under
//! a running node, and a truncated or overwritten database or Raft log at
//! start. The node refuses what it cannot persist with an error naming the
//! file and the fix, keeps serving what it safely can, and never
//! acknowledges a write it did not persist.

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
    BINARY, Node, NodeConfig, SmallDisk, TestCluster, authed, free_addr, http, run_cli, wait_until,
};

/// A single node whose data dir is a small disk of its own; not started.
fn node_on_disk(mib: u64) -> (Node, SmallDisk) {
    let dir = tempfile::tempdir().unwrap();
    let (public, admin) = (free_addr(), free_addr());
    let config = Node::write_config(dir.path(), public, admin, &NodeConfig::default());
    let disk = SmallDisk::mount_at(&dir.path().join("data"), mib);
    (Node::prepared(dir, config, public, admin), disk)
}

/// A PUT's status and body; status 0 if no answer came.
async fn put(url: &str, token: &str, key: &str, value: &str) -> (u16, Value) {
    let sent = authed(token)
        .put(format!("{url}/api/kv/keys/{key}"))
        .json(&json!({ "value": value }))
        .send()
        .await;
    let Ok(r) = sent else {
        return (0, Value::Null);
    };
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get(url: &str, token: &str, key: &str) -> (u16, Value) {
    let r = authed(token)
        .get(format!("{url}/api/kv/keys/{key}"))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// A refusal that names a file of `data_dir` and says what is wrong with
/// it (`what`) and what to do (`fix`): from the store, or from the
/// credential check when it needed the store (a session's state not
/// cached at that moment), with the store's reason either way.
fn assert_refusal(body: &Value, data_dir: &Path, what: &str, fix: &str) {
    assert!(
        body["error"] == "store_unavailable" || body["error"] == "auth_unavailable",
        "{body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(data_dir.to_str().unwrap()),
        "the message names no file of {}: {message}",
        data_dir.display()
    );
    assert!(message.contains(what), "not `{what}`: {message}");
    assert!(message.contains(fix), "no `{fix}`: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_naming_the_file_and_they_resume_once_space_frees() {
    let (mut node, disk) = node_on_disk(16);
    node.spawn(&[]);
    let token = node.admin_token().await;
    let url = node.url("");
    for i in 0..20 {
        assert_eq!(
            put(&url, &token, &format!("before-{i}"), "kept").await.0,
            200
        );
    }
    disk.fill();
    let value = "x".repeat(4000);
    for i in 0..5 {
        let (status, body) = put(&url, &token, &format!("refused-{i}"), &value).await;
        assert_eq!(status, 503, "{body}");
        assert_refusal(&body, &disk.mount, "full", "free space");
    }
    // What is on disk is still served.
    let (status, body) = get(&url, &token, "before-7").await;
    assert_eq!((status, &body["value"]), (200, &json!("kept")), "{body}");
    disk.free();
    let (status, body) = put(&url, &token, "after", "written").await;
    assert_eq!(status, 200, "{body}");
    // After a restart: every acknowledged write, and none of the refused.
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(20));
    node.spawn(&[]);
    for i in 0..20 {
        assert_eq!(get(&url, &token, &format!("before-{i}")).await.0, 200);
    }
    assert_eq!(get(&url, &token, "after").await.0, 200);
    for i in 0..5 {
        assert_eq!(get(&url, &token, &format!("refused-{i}")).await.0, 404);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_system_turned_read_only_refuses_writes_and_still_serves_reads() {
    let (mut node, disk) = node_on_disk(16);
    node.spawn(&[]);
    let token = node.admin_token().await;
    let url = node.url("");
    for i in 0..10 {
        assert_eq!(put(&url, &token, &format!("k{i}"), "kept").await.0, 200);
    }
    disk.turn_read_only();
    for i in 0..3 {
        let (status, body) = put(&url, &token, &format!("refused-{i}"), "no").await;
        assert_eq!(status, 503, "{body}");
        assert_refusal(&body, &disk.mount, "read-only", "restart flotilla");
    }
    for i in 0..10 {
        let (status, body) = get(&url, &token, &format!("k{i}")).await;
        assert_eq!((status, &body["value"]), (200, &json!("kept")), "{body}");
    }
    assert_eq!(get(&url, &token, "refused-0").await.0, 404);
    // The node itself stays up for what it can serve.
    let r = http().get(node.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// Starts `node` and expects it to refuse, naming `file` and `fix`.
fn assert_refuses_to_start(node: &mut Node, file: &Path, fix: &str) {
    node.spawn_only(&[]);
    let status = node.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", node.log());
    // The one line on standard error that says why (threads may still log
    // after it).
    let log = node.log();
    let why = log
        .lines()
        .find(|l| l.starts_with("flotilla: "))
        .unwrap_or_else(|| panic!("no `flotilla: ` line:\n{log}"));
    assert!(
        why.contains(file.to_str().unwrap()) && why.contains("damaged") && why.contains(fix),
        "{why}"
    );
}

/// Copies the WAL of the SQLite file at `path` back into it, so that the
/// file alone holds the data (as after a clean stop).
fn checkpoint(path: &Path) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// Overwrites 16 bytes at the start of every `every`-th page of `path`:
/// b-tree page headers, which SQLite's check finds.
fn overwrite_pages(path: &Path, every: u64) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let pages = file.metadata().unwrap().len() / 4096;
    for page in (1..pages).step_by(every as usize) {
        file.seek(SeekFrom::Start(page * 4096)).unwrap();
        file.write_all(&[0xff; 16]).unwrap();
    }
}

fn truncate_to_half(path: &Path) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len / 2 / 4096 * 4096).unwrap();
}

fn data_file(node: &Node, name: &str) -> PathBuf {
    node.dir.path().join("data").join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_database_stops_the_node_at_start_and_a_backup_brings_it_back() {
    let mut node = Node::start(NodeConfig::default());
    let token = node.admin_token().await;
    let url = node.url("");
    let value = "v".repeat(2000);
    for i in 0..150 {
        assert_eq!(put(&url, &token, &format!("k{i}"), &value).await.0, 200);
    }
    let backups = tempfile::tempdir().unwrap();
    let backup = backups.path().join("good.db");
    let config = node.config_path.to_str().unwrap().to_owned();
    let (code, out, err) = run_cli(
        Path::new(BINARY),
        &[
            "backup",
            "--config",
            &config,
            "--out",
            backup.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(20));
    let db = data_file(&node, "flotilla.db");
    checkpoint(&db);
    let good = std::fs::read(&db).unwrap();

    truncate_to_half(&db);
    assert_refuses_to_start(&mut node, &db, "flotilla restore");
    std::fs::write(&db, &good).unwrap();
    overwrite_pages(&db, 7);
    assert_refuses_to_start(&mut node, &db, "flotilla restore");

    // The fix the message gives works.
    let (code, out, err) = run_cli(
        Path::new(BINARY),
        &[
            "restore",
            "--config",
            &config,
            "--from",
            backup.to_str().unwrap(),
            "--force",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    node.spawn(&[]);
    for i in (0..150).step_by(10) {
        let (status, body) = get(&url, &token, &format!("k{i}")).await;
        assert_eq!((status, &body["value"]), (200, &json!(value)), "k{i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_with_a_damaged_raft_log_refuses_to_start_and_the_others_serve() {
    let mut cluster = TestCluster::start("");
    let token = cluster.admin_token().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    for i in 0..60 {
        let (status, body) = put(&urls[i % 3], &token, &format!("k{i}"), "kept").await;
        assert_eq!(status, 200, "{body}");
    }
    cluster.converge().await;
    let member = &mut cluster.nodes[2];
    member.signal("TERM");
    member.wait_exit(Duration::from_secs(20));
    let log = data_file(member, "raft-log.db");
    checkpoint(&log);
    let good = std::fs::read(&log).unwrap();

    // An entry's bytes changed in place: its checksum no longer matches.
    rusqlite::Connection::open(&log)
        .unwrap()
        .execute(
            "UPDATE log SET payload = CAST(upper(CAST(payload AS TEXT)) AS BLOB) WHERE idx = (SELECT max(idx) FROM log)",
            [],
        )
        .unwrap();
    assert_refuses_to_start(member, &log, "docs/operations.md");
    // A truncated file: SQLite's check finds it.
    std::fs::write(&log, &good).unwrap();
    truncate_to_half(&log);
    assert_refuses_to_start(member, &log, "docs/operations.md");

    // The two others are a majority: writes go on.
    for i in 0..10 {
        let (status, body) = put(&urls[i % 2], &token, &format!("after-{i}"), "ok").await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = get(&urls[0], &token, "k59").await;
    assert_eq!(status, 200);
}

type Acked = Arc<Mutex<Vec<String>>>;

/// Writers through every member until `stop`; the keys acknowledged.
fn writers(
    urls: &[String],
    token: &str,
    stop: &Arc<AtomicBool>,
) -> (Acked, Vec<tokio::task::JoinHandle<()>>) {
    let acked: Acked = Arc::default();
    let tasks = (0..3)
        .map(|w| {
            let (url, token, acked, stop) = (
                urls[w].clone(),
                token.to_owned(),
                acked.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                for i in 0..3000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let key = format!("w{w}-{i}");
                    if put(&url, &token, &key, "acked").await.0 == 200 {
                        acked.lock().unwrap().push(key);
                    }
                }
            })
        })
        .collect();
    (acked, tasks)
}

async fn acked_at_least(acked: &Acked, n: usize) {
    wait_until("writes acknowledged", Duration::from_secs(30), || {
        let len = acked.lock().unwrap().len();
        std::future::ready(if len >= n { Ok(()) } else { Err(len) })
    })
    .await;
}

/// One member's disk fails under load (`fail`): that member stops alone,
/// refusing with the file and the fix; the others carry on, and every
/// acknowledged write is there.
async fn a_member_disk_fails_under_load(fail: impl FnOnce(&SmallDisk), what: &str, fix: &str) {
    let mut cluster = TestCluster::prepare_with(Path::new(BINARY), "", "");
    let disk = SmallDisk::mount_at(&cluster.nodes[2].dir.path().join("data"), 32);
    cluster.spawn_all();
    let token = cluster.admin_token().await;
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, tasks) = writers(&urls, &token, &stop);
    acked_at_least(&acked, 100).await;
    fail(&disk);
    let body = wait_until("the member refuses", Duration::from_secs(20), || async {
        let (status, body) = put(&urls[2], &token, "through-the-member", "x").await;
        if status == 503 && body["message"].as_str().is_some_and(|m| m.contains(what)) {
            Ok(body)
        } else {
            Err((status, body))
        }
    })
    .await;
    assert_refusal(&body, &disk.mount, what, fix);
    let status = cluster.nodes[2].status().await.unwrap();
    assert!(
        status["cluster"]["stopped"]
            .as_str()
            .is_some_and(|s| s.contains(what)),
        "{status}"
    );
    let ready = http()
        .get(cluster.nodes[2].admin_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "a stopped member is not ready");
    // The others go on taking writes.
    let before = acked.lock().unwrap().len();
    acked_at_least(&acked, before + 100).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for key in &acked {
        let (status, _) = get(&urls[(key.len()) % 2], &token, key).await;
        assert_eq!(status, 200, "{key} was acknowledged and is missing");
    }
    let log = cluster.nodes[2].log();
    assert_eq!(
        log.matches("flotilla::cluster: this member has stopped replicating")
            .count(),
        1,
        "one clear line in the member's log"
    );
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_member_whose_disk_turns_read_only_stops_alone_and_loses_nothing() {
    a_member_disk_fails_under_load(SmallDisk::turn_read_only, "read-only", "restart flotilla")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_member_whose_disk_fills_stops_alone_and_loses_nothing() {
    a_member_disk_fails_under_load(SmallDisk::fill, "full", "free space").await;
}
