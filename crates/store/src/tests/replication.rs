//! Group commit, migrations, and the store as a Raft state machine:
//! proposals apply once and the same everywhere, snapshots, shared commits.

use std::time::Duration;

use super::*;
use crate::writer::APPLY_COMMIT_INTERVAL;

#[tokio::test]
async fn concurrent_writes_are_grouped_and_all_acknowledged_writes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path());
        let kv = store.namespace("kv");
        kv.migrate(KV).await.unwrap();
        let mut tasks = Vec::new();
        for i in 0..200 {
            let kv = kv.clone();
            tasks.push(tokio::spawn(async move {
                kv.write(vec![Statement::new(
                    "INSERT INTO kv__t VALUES (?1, 'v')",
                    vec![format!("key{i}").into()],
                )])
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    }
    let store = open(dir.path());
    let kv = store.namespace("kv");
    assert_eq!(
        kv.migrate(KV).await.unwrap(),
        0,
        "migrations are not re-applied"
    );
    let rows = kv
        .read(stmt("SELECT count(*) FROM kv__t"))
        .await
        .unwrap()
        .rows;
    assert_eq!(rows, vec![vec![Value::Integer(200)]]);
}

#[tokio::test]
async fn migrations_are_tracked_per_namespace_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = store.namespace("alpha");
    let b = store.namespace("beta");
    let v1 = Migration {
        version: 1,
        name: "t",
        sql: "CREATE TABLE alpha__t (a TEXT);",
    };
    assert_eq!(a.migrate(&[v1]).await.unwrap(), 1);
    assert_eq!(a.migrate(&[v1]).await.unwrap(), 0);
    // The same version number in another namespace is a different migration.
    let b1 = Migration {
        version: 1,
        name: "t",
        sql: "CREATE TABLE beta__t (a TEXT);",
    };
    assert_eq!(b.migrate(&[b1]).await.unwrap(), 1);
    // Editing an applied migration is refused.
    let edited = Migration {
        sql: "CREATE TABLE alpha__t (a TEXT, b TEXT);",
        ..v1
    };
    let err = a.migrate(&[edited]).await.unwrap_err();
    assert!(
        err.to_string().contains("was changed after it was applied"),
        "{err}"
    );
    // A binary that does not know an applied migration refuses to run.
    let err = a.migrate(&[]).await.unwrap_err();
    assert!(err.to_string().contains("newer version"), "{err}");
    // A migration that reaches outside its namespace is refused whole: its
    // first statement is rolled back too.
    let bad = Migration {
        version: 2,
        name: "bad",
        sql: "CREATE TABLE alpha__u (a TEXT); DROP TABLE beta__t;",
    };
    let err = a.migrate(&[v1, bad]).await.unwrap_err();
    assert!(err.to_string().contains("migration 2 (`bad`)"), "{err}");
    assert!(a.read(stmt("SELECT * FROM alpha__u")).await.is_err());
    assert!(b.read(stmt("SELECT * FROM beta__t")).await.is_ok());
}

#[tokio::test]
async fn replicated_writes_are_deterministic_and_apply_once() {
    let insert = || {
        vec![stmt(
            "INSERT INTO kv__t (k, v) VALUES (CAST(flotilla_random() AS TEXT), CAST(flotilla_now() AS TEXT) || ':' || CAST(flotilla_random() AS TEXT)) RETURNING k, v",
        )]
    };
    let mut results = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.namespace("kv").migrate(KV).await.unwrap();
        let out = store
            .apply(vec![
                entry(1, vec![proposal("r1", 1_700_000_000_123, 42, insert())]),
                // The same request again (a retry), once in a later entry
                // and once within one entry: the recorded result, no
                // second row.
                entry(
                    2,
                    vec![
                        proposal("r1", 1_700_000_000_999, 7, insert()),
                        proposal("r1", 1_700_000_000_999, 8, insert()),
                    ],
                ),
                entry(3, vec![]),
            ])
            .await
            .unwrap();
        assert_eq!(
            out[0][0], out[1][0],
            "a retried request returns the first result"
        );
        assert_eq!(
            out[0][0], out[1][1],
            "a retried request returns the first result"
        );
        assert!(out[2].is_empty());
        let rows = store
            .namespace("kv")
            .read(stmt("SELECT count(*) FROM kv__t"))
            .await
            .unwrap()
            .rows;
        assert_eq!(rows, vec![vec![Value::Integer(1)]]);
        assert_eq!(store.applied_state().await.unwrap(), (Some(vec![3]), None));
        results.push(out[0][0].clone());
    }
    // Two replicas applying the same proposal compute the same values.
    assert_eq!(results[0], results[1]);
    let Ok(Applied::Outcomes(o)) = &results[0] else {
        panic!("{:?}", results[0])
    };
    assert!(
        o[0].rows[0][1]
            .as_str()
            .unwrap()
            .starts_with("1700000000123:")
    );
    // A failing statement is a deterministic result, recorded like any other.
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.namespace("kv").migrate(KV).await.unwrap();
    let out = store
        .apply(vec![entry(
            1,
            vec![
                proposal("bad", 1, 1, vec![stmt("SELECT * FROM sqlite_master")]),
                proposal("good", 1, 1, insert()),
            ],
        )])
        .await
        .unwrap();
    // ... and does not affect the other proposals of its entry.
    assert!(
        matches!(out[0][0], Err(StoreError::Denied { .. })),
        "{out:?}"
    );
    assert!(matches!(out[0][1], Ok(Applied::Outcomes(_))), "{out:?}");
}

#[tokio::test]
async fn a_snapshot_restores_data_and_applied_state_elsewhere() {
    let a_dir = tempfile::tempdir().unwrap();
    let a = open(a_dir.path());
    a.namespace("kv").migrate(KV).await.unwrap();
    a.apply(vec![ApplyEntry {
        log_id: b"log-9".to_vec(),
        membership: Some(b"members".to_vec()),
        proposals: vec![proposal(
            "w",
            1,
            1,
            vec![stmt("INSERT INTO kv__t VALUES ('k', 'v')")],
        )],
    }])
    .await
    .unwrap();
    let snap = a.snapshot(a_dir.path().join("snap.db")).await.unwrap();
    assert_eq!(snap.log_id.as_deref(), Some(&b"log-9"[..]));
    let b_dir = tempfile::tempdir().unwrap();
    let b = open(b_dir.path());
    b.restore(snap.path.clone()).await.unwrap();
    assert_eq!(
        b.applied_state().await.unwrap(),
        (Some(b"log-9".to_vec()), Some(b"members".to_vec()))
    );
    let rows = b
        .namespace("kv")
        .read(stmt("SELECT k, v FROM kv__t"))
        .await
        .unwrap()
        .rows;
    assert_eq!(rows, vec![vec![Value::from("k"), Value::from("v")]]);
    // Writes continue on the restored store.
    b.namespace("kv")
        .write(vec![stmt("INSERT INTO kv__t VALUES ('k2', 'v2')")])
        .await
        .unwrap();
}

#[tokio::test]
async fn applies_share_a_commit_and_reads_see_them_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig {
        data_dir: dir.path().to_owned(),
        readers: 2,
        durability: Durability::ReplayedFromLog,
    };
    let store = Store::open(&config, StoreMetrics::default()).unwrap();
    store.namespace("kv").migrate(KV).await.unwrap();
    let insert = |k: &str| vec![stmt(&format!("INSERT INTO kv__t VALUES ('{k}', 'v')"))];
    // What another connection to the file sees: the committed rows only.
    let committed = || -> i64 {
        Connection::open(dir.path().join(DB_FILE))
            .unwrap()
            .query_row("SELECT count(*) FROM kv__t", [], |r| r.get(0))
            .unwrap()
    };
    let count = || async {
        store
            .namespace("kv")
            .read(stmt("SELECT count(*) FROM kv__t"))
            .await
            .unwrap()
            .rows
    };

    let applied = Instant::now();
    for (i, k) in ["a", "b"].into_iter().enumerate() {
        store
            .apply(vec![entry(i as u8 + 1, vec![proposal(k, 1, 1, insert(k))])])
            .await
            .unwrap();
    }
    let waiting = committed();
    if applied.elapsed() < APPLY_COMMIT_INTERVAL {
        assert_eq!(waiting, 0, "the applies wait for a shared commit");
    }
    // A read through the store commits what waits, and sees it.
    assert_eq!(count().await, vec![vec![Value::Integer(2)]]);
    assert_eq!(committed(), 2);

    // Left alone, waiting applies are committed after the interval.
    store
        .apply(vec![entry(3, vec![proposal("c", 1, 1, insert("c"))])])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while committed() < 3 {
        assert!(
            Instant::now() < deadline,
            "the waiting apply was never committed"
        );
        tokio::time::sleep(APPLY_COMMIT_INTERVAL / 5).await;
    }

    // Closing the store commits what waits, with its position.
    store
        .apply(vec![entry(4, vec![proposal("d", 1, 1, insert("d"))])])
        .await
        .unwrap();
    drop(store);
    let deadline = Instant::now() + Duration::from_secs(5);
    while committed() < 4 {
        assert!(Instant::now() < deadline, "closing lost a waiting apply");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reopened = Store::open(&config, StoreMetrics::default()).unwrap();
    assert_eq!(
        reopened.applied_state().await.unwrap(),
        (Some(vec![4]), None)
    );
}
