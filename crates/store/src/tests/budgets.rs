//! Budgets and transactions a unit cannot end: what one call may cost, and
//! a unit that ends the shared transaction failing alone.

use std::time::Duration;

use super::*;

/// Budgets small enough to hit in a test.
fn tight(steps: u64, rows: u64, value_bytes: u64, time_ms: u64) -> Budget {
    Budget {
        read: ReadBudget { time_ms, rows },
        write: WriteBudget {
            steps,
            rows,
            value_bytes,
        },
    }
}

/// A statement that counts to `n` (about ten SQLite steps per row).
fn count_to(n: u64) -> String {
    format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) SELECT count(*) FROM c"
    )
}

#[tokio::test]
async fn refusals_are_the_same_whether_the_object_exists_or_not() {
    let f = fixture().await;
    let refusal = |sql: &'static str| {
        let kv = f.kv.clone();
        async move { kv.read(stmt(sql)).await.unwrap_err().to_string() }
    };
    let exists = refusal("SELECT * FROM echo__t").await;
    let missing = refusal("SELECT * FROM echo__nothing").await;
    assert_eq!(
        exists.replace("echo__t", "X"),
        missing.replace("echo__nothing", "X")
    );
    // A column of an existing table is not confirmed either.
    let column = refusal("SELECT nothing FROM echo__t").await;
    assert_eq!(column, exists);
    // Objects with no namespace prefix: the same before and after they
    // exist (sqlite_sequence appears with the first AUTOINCREMENT table,
    // which services cannot make: it is shared by every namespace).
    let before = refusal("SELECT * FROM sqlite_sequence").await;
    let err = f
        .echo
        .write(vec![stmt(
            "CREATE TABLE echo__auto (id INTEGER PRIMARY KEY AUTOINCREMENT)",
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sqlite_sequence"), "{err}");
    Connection::open(f._dir.path().join(DB_FILE))
        .unwrap()
        .execute_batch("CREATE TABLE sys__auto (id INTEGER PRIMARY KEY AUTOINCREMENT);")
        .unwrap();
    let after = refusal("SELECT * FROM sqlite_sequence").await;
    assert_eq!(before, after);
    // A refusal names only what the statement named.
    let reindex = refusal(";REINDEX").await;
    assert!(reindex.contains("REINDEX is not allowed"), "{reindex}");
    assert!(
        !reindex.contains("registry") && !reindex.contains("echo"),
        "{reindex}"
    );
}

#[tokio::test]
async fn conflict_clauses_that_end_the_transaction_are_refused() {
    let f = fixture().await;
    for sql in [
        "INSERT OR ROLLBACK INTO kv__t VALUES ('a', 'b')",
        "UPDATE OR ROLLBACK kv__t SET v = 'x'",
        "CREATE TABLE kv__r (a TEXT UNIQUE ON CONFLICT ROLLBACK)",
        "CREATE TRIGGER kv__g BEFORE INSERT ON kv__t BEGIN SELECT RAISE(ROLLBACK, 'no'); END",
    ] {
        let err = f.kv.write(vec![stmt(sql)]).await.unwrap_err();
        assert!(
            err.to_string().contains("ROLLBACK is not allowed"),
            "`{sql}`: {err}"
        );
    }
}

/// Makes, behind the store's back (as an older flotilla allowed), a table
/// whose conflicts end the transaction, with one row in it.
fn poison_table(dir: &Path) {
    Connection::open(dir.join(DB_FILE))
        .unwrap()
        .execute_batch(
            "CREATE TABLE kv__p (k TEXT PRIMARY KEY ON CONFLICT ROLLBACK, v TEXT);
             INSERT INTO kv__p VALUES ('taken', 'x');",
        )
        .unwrap();
}

#[tokio::test]
async fn a_write_that_ends_the_shared_transaction_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kv = store.namespace("kv");
    kv.migrate(KV).await.unwrap();
    poison_table(dir.path());
    // Many writes share commits with the one that ends the transaction.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            let sql = if i == 50 {
                "INSERT INTO kv__p VALUES ('taken', 'again')".to_owned()
            } else {
                format!("INSERT INTO kv__t VALUES ('k{i}', 'v')")
            };
            kv.write(vec![Statement::new(sql, vec![])]).await
        }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let result = t.await.unwrap();
        if i == 50 {
            assert!(
                matches!(result, Err(StoreError::Constraint(_))),
                "{result:?}"
            );
        } else {
            result.unwrap_or_else(|e| panic!("write {i} failed: {e}"));
        }
    }
    drop(kv);
    drop(store);
    let store = open(dir.path());
    let rows = store
        .namespace("kv")
        .read(stmt("SELECT count(*) FROM kv__t"))
        .await
        .unwrap()
        .rows;
    assert_eq!(rows, vec![vec![Value::Integer(99)]]);
}

fn poison(request_id: &str) -> Proposal {
    proposal(
        request_id,
        1,
        1,
        vec![stmt("INSERT INTO kv__p VALUES ('taken', 'again')")],
    )
}

fn insert(request_id: &str, key: &str) -> Proposal {
    proposal(
        request_id,
        1,
        1,
        vec![stmt(&format!("INSERT INTO kv__t VALUES ('{key}', 'v')"))],
    )
}

#[tokio::test]
async fn a_proposal_that_ends_the_apply_transaction_fails_on_every_replica_and_applying_goes_on() {
    let mut finals = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            data_dir: dir.path().to_owned(),
            readers: 2,
            durability: Durability::ReplayedFromLog,
        };
        let store = Store::open(&config, StoreMetrics::default()).unwrap();
        store.namespace("kv").migrate(KV).await.unwrap();
        poison_table(dir.path());
        // Entry 1 waits uncommitted for a shared commit when entry 2 ends
        // the transaction: it must survive, applied again.
        let first = store
            .apply(vec![entry(1, vec![insert("a", "a")])])
            .await
            .unwrap();
        assert!(first[0][0].is_ok());
        let out = store
            .apply(vec![entry(
                2,
                vec![insert("b", "b"), poison("p"), insert("c", "c")],
            )])
            .await
            .unwrap();
        assert!(out[0][0].is_ok(), "{out:?}");
        assert!(
            matches!(out[0][1], Err(StoreError::Constraint(_))),
            "{out:?}"
        );
        assert!(out[0][2].is_ok(), "{out:?}");
        // A retry of the failed request gets the same answer, and later
        // entries apply.
        let retry = store
            .apply(vec![entry(3, vec![poison("p"), insert("d", "d")])])
            .await
            .unwrap();
        assert_eq!(retry[0][0], out[0][1]);
        let rows = store
            .namespace("kv")
            .read(stmt(
                "SELECT group_concat(k, ',') FROM (SELECT k FROM kv__t ORDER BY k)",
            ))
            .await
            .unwrap()
            .rows;
        assert_eq!(rows, vec![vec![Value::from("a,b,c,d")]]);
        assert_eq!(store.applied_state().await.unwrap(), (Some(vec![3]), None));
        // After a restart, the same entries apply again the same way.
        drop(store);
        let store = Store::open(&config, StoreMetrics::default()).unwrap();
        let again = store
            .apply(vec![entry(4, vec![poison("p2")])])
            .await
            .unwrap();
        assert_eq!(again[0][0], out[0][1]);
        finals.push(
            store
                .namespace("kv")
                .read(stmt(
                    "SELECT k, v FROM kv__t UNION ALL SELECT k, v FROM kv__p ORDER BY 1",
                ))
                .await
                .unwrap(),
        );
    }
    assert_eq!(finals[0], finals[1], "the replicas agree");
}

#[tokio::test]
async fn a_write_over_its_step_budget_stops_and_fails_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kv = store.namespace("kv");
    kv.migrate(KV).await.unwrap();
    let slow = store.namespace_within("kv", tight(100_000, 10_000, 1024, 1000));
    let heavy = "INSERT INTO kv__t SELECT x, x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000) SELECT x FROM c)".to_owned();
    let started = Instant::now();
    let (heavy, light) = tokio::join!(
        slow.write(vec![Statement::new(heavy, vec![])]),
        kv.write(vec![stmt("INSERT INTO kv__t VALUES ('light', 'v')")])
    );
    let err = heavy.unwrap_err();
    assert!(matches!(err, StoreError::Budget { .. }), "{err}");
    assert!(err.to_string().contains("100000 SQLite steps"), "{err}");
    light.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let rows = kv
        .read(stmt("SELECT count(*) FROM kv__t"))
        .await
        .unwrap()
        .rows;
    assert_eq!(rows, vec![vec![Value::Integer(1)]]);
}

#[tokio::test]
async fn reads_and_writes_keep_to_their_row_time_and_size_budgets() {
    let f = fixture().await;
    let kv = f.store.namespace_within("kv", tight(u64::MAX, 3, 100, 50));
    // Rows returned.
    let err = kv
        .read(stmt(&count_to(10).replace("count(*)", "x")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("more than 3 rows"), "{err}");
    assert_eq!(
        kv.read(stmt(&count_to(3).replace("count(*)", "x")))
            .await
            .unwrap()
            .rows
            .len(),
        3
    );
    // Rows written, triggers included.
    f.kv.write(vec![stmt(
        "CREATE TRIGGER kv__dup AFTER INSERT ON kv__t WHEN NEW.v = 'dup' BEGIN INSERT INTO kv__t VALUES (NEW.k || '2', 'x'); END",
    )])
    .await
    .unwrap();
    kv.write(vec![stmt("INSERT INTO kv__t VALUES ('a', 'dup')")])
        .await
        .unwrap();
    let err = kv
        .write(vec![stmt(
            "INSERT INTO kv__t VALUES ('b', 'dup'), ('c', 'dup')",
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("wrote more than 3 rows"), "{err}");
    // The size of one value or row.
    let err = kv
        .write(vec![stmt(
            "INSERT INTO kv__t VALUES ('big', hex(zeroblob(100)))",
        )])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("larger than 100 bytes"), "{err}");
    // Wall-clock time of a read.
    let err = kv.read(stmt(&count_to(100_000_000))).await.unwrap_err();
    assert!(err.to_string().contains("longer than 50 ms"), "{err}");
    // The store goes on.
    let rows =
        f.kv.read(stmt("SELECT count(*) FROM kv__t"))
            .await
            .unwrap()
            .rows;
    assert_eq!(rows, vec![vec![Value::Integer(2)]]);
}

#[tokio::test]
async fn a_replicated_write_over_budget_fails_the_same_on_every_replica() {
    let budget = WriteBudget {
        steps: 50_000,
        rows: 10,
        value_bytes: 1024,
    };
    let heavy = Proposal {
        command: Command::Write {
            namespace: "kv".into(),
            statements: vec![stmt(
                "INSERT INTO kv__t SELECT x, x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) SELECT x FROM c)",
            )],
            budget,
        },
        ..insert("heavy", "unused")
    };
    let mut results = Vec::new();
    for _ in 0..2 {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.namespace("kv").migrate(KV).await.unwrap();
        let out = store
            .apply(vec![entry(
                1,
                vec![insert("a", "a"), heavy.clone(), insert("b", "b")],
            )])
            .await
            .unwrap();
        assert!(
            matches!(out[0][1], Err(StoreError::Budget { .. })),
            "{out:?}"
        );
        let rows = store
            .namespace("kv")
            .read(stmt("SELECT count(*) FROM kv__t"))
            .await
            .unwrap()
            .rows;
        assert_eq!(rows, vec![vec![Value::Integer(2)]]);
        results.push(out);
    }
    assert_eq!(results[0], results[1]);
}
