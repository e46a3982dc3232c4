use std::time::Duration;

use super::writer::APPLY_COMMIT_INTERVAL;
use super::*;

const KV: &[Migration] = &[Migration {
    version: 1,
    name: "table",
    sql: "CREATE TABLE kv__t (k TEXT PRIMARY KEY, v TEXT) STRICT;",
}];
const ECHO: &[Migration] = &[Migration {
    version: 1,
    name: "table",
    sql: "CREATE TABLE echo__t (a TEXT) STRICT; CREATE INDEX echo__t_a ON echo__t (a);",
}];

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    pub(super) kv: Namespace,
    pub(super) echo: Namespace,
}

pub(super) async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kv = store.namespace("kv");
    let echo = store.namespace("echo");
    kv.migrate(KV).await.unwrap();
    echo.migrate(ECHO).await.unwrap();
    echo.write(vec![Statement::new(
        "INSERT INTO echo__t VALUES ('secret')",
        vec![],
    )])
    .await
    .unwrap();
    Fixture {
        _dir: dir,
        store,
        kv,
        echo,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(
        &StoreConfig {
            data_dir: dir.to_owned(),
            readers: 2,
            durability: Durability::Full,
        },
        StoreMetrics::default(),
    )
    .unwrap()
}

fn stmt(sql: &str) -> Statement {
    Statement::new(sql, vec![])
}

async fn echo_rows(f: &Fixture) -> Vec<Vec<Value>> {
    f.echo
        .read(stmt("SELECT a FROM echo__t ORDER BY a"))
        .await
        .unwrap()
        .rows
}

/// Every statement here names, reaches or could reveal another namespace's
/// tables (or escapes namespacing altogether). Each is sent both as a write
/// and as a read, and must be refused either way, leaving echo's data as it
/// was.
const ESCAPES: &[&str] = &[
    "SELECT * FROM echo__t",
    "SELECT * FROM \"ECHO__T\"",
    "SELECT * FROM [Echo__T]",
    "SELECT * FROM main.echo__t",
    "SELECT * FROM `main`.`echo__t`",
    "SELECT * FROM kv__t JOIN echo__t",
    "SELECT * FROM kv__t, echo__t",
    "SELECT (SELECT a FROM echo__t LIMIT 1)",
    "SELECT * FROM kv__t WHERE k IN (SELECT a FROM echo__t)",
    "SELECT EXISTS (SELECT 1 FROM echo__t)",
    "WITH x AS (SELECT a FROM echo__t) SELECT * FROM x",
    "SELECT k FROM kv__t UNION SELECT a FROM echo__t",
    "INSERT INTO kv__t (k, v) SELECT a, a FROM echo__t",
    "INSERT INTO echo__t VALUES ('x')",
    "UPDATE echo__t SET a = 'x'",
    "DELETE FROM echo__t",
    "REPLACE INTO echo__t VALUES ('x')",
    "DROP TABLE echo__t",
    "DROP INDEX echo__t_a",
    "ALTER TABLE echo__t ADD COLUMN b TEXT",
    "ALTER TABLE kv__t RENAME TO echo__stolen",
    "CREATE TABLE echo__mine (a TEXT)",
    "CREATE TABLE unprefixed (a TEXT)",
    "CREATE TABLE kv__ (a TEXT)",
    "CREATE TABLE sys__evil (a TEXT)",
    "CREATE INDEX kv__i ON echo__t (a)",
    "CREATE TRIGGER kv__trg AFTER INSERT ON echo__t BEGIN DELETE FROM echo__t; END",
    "CREATE TABLE kv__copy AS SELECT * FROM echo__t",
    "CREATE TABLE kv__schema AS SELECT sql FROM sqlite_master",
    "CREATE TEMP TABLE kv__tmp (a TEXT)",
    "CREATE TEMP VIEW kv__tv AS SELECT 1",
    "SELECT * FROM sqlite_master",
    "SELECT count(*) FROM sqlite_master",
    "SELECT count(*) FROM echo__t",
    "SELECT count(*) FROM sqlite_sequence",
    "SELECT name FROM sqlite_schema",
    "SELECT * FROM SQLITE_MASTER",
    "SELECT * FROM sqlite_temp_master",
    "SELECT * FROM sys__migrations",
    "DELETE FROM sqlite_master",
    "UPDATE sqlite_master SET sql = ''",
    "INSERT INTO sqlite_master VALUES ('table', 'x', 'x', 0, '')",
    "SELECT * FROM pragma_table_info('echo__t')",
    "SELECT * FROM pragma_table_list",
    "PRAGMA table_info(echo__t)",
    "PRAGMA writable_schema = ON",
    "PRAGMA foreign_keys = ON",
    "PRAGMA main.journal_mode = DELETE",
    "ATTACH DATABASE ':memory:' AS other",
    "DETACH DATABASE main",
    "BEGIN",
    "COMMIT",
    "SAVEPOINT s",
    "VACUUM",
    "  /* comment */ VACUUM INTO '/tmp/flotilla-copy.db'",
    "REINDEX",
    ";REINDEX",
    " ;; VACUUM",
    "-- c\n;REINDEX kv__t",
    "ANALYZE",
    "SELECT load_extension('x')",
    "SELECT 1; DELETE FROM echo__t",
];

#[tokio::test]
async fn no_statement_reaches_another_namespace() {
    let f = fixture().await;
    let before = echo_rows(&f).await;
    // Compile each escape once in echo's own namespace too where it is valid
    // there, so a cached compiled statement would be found by the text.
    let _ = f.echo.read(stmt("SELECT * FROM echo__t")).await;
    for sql in ESCAPES {
        let write = f.kv.write(vec![stmt(sql)]).await;
        assert!(write.is_err(), "write of `{sql}` was allowed: {write:?}");
        let read = f.kv.read(stmt(sql)).await;
        assert!(read.is_err(), "read of `{sql}` was allowed: {read:?}");
    }
    assert_eq!(echo_rows(&f).await, before);
}

#[tokio::test]
async fn denials_name_the_reason() {
    let f = fixture().await;
    let err = f.kv.read(stmt("SELECT * FROM echo__t")).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Denied { .. }), "{msg}");
    assert!(msg.contains("echo__t") && msg.contains("kv__"), "{msg}");
    let err =
        f.kv.write(vec![stmt("ALTER TABLE kv__t RENAME TO kv__u")])
            .await
            .unwrap_err();
    assert!(
        err.to_string().contains("RENAME TO is not allowed"),
        "{err}"
    );
}

#[tokio::test]
async fn views_and_triggers_cannot_reach_out() {
    let f = fixture().await;
    for sql in [
        // Named outright: refused before SQLite sees it.
        "CREATE VIEW kv__v AS SELECT a FROM echo__t",
        "CREATE TRIGGER kv__tr AFTER INSERT ON kv__t BEGIN INSERT INTO echo__t VALUES ('via trigger'); END",
        // Reached without naming it: refused when made, by the check of
        // the namespace's views and triggers.
        "CREATE VIEW kv__v AS SELECT * FROM pragma_table_list",
        "CREATE VIEW kv__v AS SELECT name FROM sqlite_master",
        "CREATE VIEW kv__v AS SELECT * FROM sqlite_sequence",
        "CREATE TRIGGER kv__tr AFTER INSERT ON kv__t BEGIN UPDATE kv__t SET v = random(); END",
        "CREATE TRIGGER kv__tr AFTER DELETE ON kv__t BEGIN SELECT * FROM pragma_table_info('kv__t'); END",
    ] {
        let err = f.kv.write(vec![stmt(sql)]).await.unwrap_err();
        assert!(matches!(err, StoreError::Denied { .. }), "`{sql}`: {err}");
    }
    assert_eq!(echo_rows(&f).await, vec![vec![Value::from("secret")]]);
    // Nothing was made: every name is still free.
    f.kv.write(vec![
        stmt("CREATE VIEW kv__v AS SELECT k FROM kv__t"),
        stmt("CREATE TRIGGER kv__tr AFTER INSERT ON kv__t BEGIN UPDATE kv__t SET v = 'x' WHERE k = NEW.k; END"),
    ])
    .await
    .unwrap();
}

#[tokio::test]
async fn a_schema_change_that_breaks_a_view_is_refused() {
    let f = fixture().await;
    f.kv.write(vec![
        stmt("CREATE TABLE kv__x (a TEXT, b TEXT)"),
        stmt("CREATE VIEW kv__xv AS SELECT a, b FROM kv__x"),
    ])
    .await
    .unwrap();
    // Dropping the table under the view would leave a view that fails
    // every later `ALTER TABLE ... RENAME COLUMN`, in any namespace.
    for sql in ["DROP TABLE kv__x", "ALTER TABLE kv__x DROP COLUMN b"] {
        let err = f.kv.write(vec![stmt(sql)]).await.unwrap_err();
        assert!(
            err.to_string().to_ascii_lowercase().contains("view kv__xv")
                || err.to_string().contains("view `kv__xv`"),
            "`{sql}`: {err}"
        );
    }
    // Another namespace's migration still renames its columns.
    f.echo
        .write(vec![stmt("ALTER TABLE echo__t RENAME COLUMN a TO b")])
        .await
        .unwrap();
    f.kv.write(vec![stmt("DROP VIEW kv__xv"), stmt("DROP TABLE kv__x")])
        .await
        .unwrap();
}

#[tokio::test]
async fn bad_views_already_in_the_database_fail_the_migration_check() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let kv = store.namespace("kv");
    kv.migrate(KV).await.unwrap();
    // Made behind the store's back, as an older flotilla allowed.
    let raw = Connection::open(dir.path().join(DB_FILE)).unwrap();
    raw.execute_batch("CREATE VIEW kv__bad AS SELECT * FROM pragma_table_list;")
        .unwrap();
    let err = kv.migrate(KV).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("view `kv__bad`") && msg.contains("in a new migration"),
        "{msg}"
    );
    // A migration that drops it mends the namespace.
    let mut mended = KV.to_vec();
    mended.push(Migration {
        version: 2,
        name: "drop the bad view",
        sql: "DROP VIEW kv__bad;",
    });
    assert_eq!(kv.migrate(&mended).await.unwrap(), 1);
    // A migration that makes such a view is refused whole.
    let bad = Migration {
        version: 3,
        name: "bad view",
        sql: "CREATE TABLE kv__y (a TEXT); CREATE VIEW kv__bad2 AS SELECT * FROM pragma_table_list;",
    };
    mended.push(bad);
    let err = kv.migrate(&mended).await.unwrap_err();
    assert!(err.to_string().contains("view `kv__bad2`"), "{err}");
    assert!(kv.read(stmt("SELECT * FROM kv__y")).await.is_err());
}

#[tokio::test]
async fn a_statement_compiled_for_one_namespace_is_not_reused_by_another() {
    let f = fixture().await;
    let sql = "SELECT a FROM echo__t";
    for _ in 0..3 {
        assert!(f.echo.read(stmt(sql)).await.is_ok());
        assert!(f.kv.read(stmt(sql)).await.is_err());
        assert!(f.echo.write(vec![stmt(sql)]).await.is_ok());
        assert!(f.kv.write(vec![stmt(sql)]).await.is_err());
    }
}

#[tokio::test]
async fn own_namespace_is_fully_usable() {
    let f = fixture().await;
    let ok = [
        "CREATE TABLE kv__x (a INTEGER PRIMARY KEY, b TEXT)",
        "CREATE INDEX kv__x_b ON kv__x (b)",
        "CREATE VIEW kv__xv AS SELECT a FROM kv__x",
        "CREATE TRIGGER kv__xt AFTER INSERT ON kv__x BEGIN INSERT INTO kv__t VALUES (NEW.b, 'copied'); END",
        "INSERT INTO kv__x (b) VALUES ('one')",
        "ALTER TABLE kv__x ADD COLUMN c TEXT",
        "ALTER TABLE kv__x RENAME COLUMN c TO d",
        "UPDATE kv__x SET d = json_extract('{\"a\": 1}', '$.a')",
        "DELETE FROM kv__x WHERE a IN (SELECT value FROM json_each('[5, 6]'))",
        "WITH c(x) AS (SELECT 1) SELECT count(*) FROM c",
        "SELECT count(*) FROM (SELECT 1) AS sub",
    ];
    for sql in ok {
        f.kv.write(vec![stmt(sql)])
            .await
            .unwrap_or_else(|e| panic!("`{sql}` was refused: {e}"));
    }
    let out =
        f.kv.write(vec![Statement::new(
            "INSERT INTO kv__t (k, v) VALUES (?1, ?2) RETURNING k, v",
            vec!["k2".into(), "v2".into()],
        )])
        .await
        .unwrap();
    assert_eq!(
        out[0].rows,
        vec![vec![Value::from("k2"), Value::from("v2")]]
    );
    assert_eq!(out[0].changed, 1);
    let rows =
        f.kv.read(stmt("SELECT k, v FROM kv__t ORDER BY k"))
            .await
            .unwrap()
            .rows;
    assert_eq!(
        rows,
        vec![
            vec![Value::from("k2"), Value::from("v2")],
            vec![Value::from("one"), Value::from("copied")],
        ]
    );
    // Reads may use the clock and randomness: nothing is replicated from them.
    assert!(
        f.kv.read(stmt("SELECT random(), datetime('now')"))
            .await
            .is_ok()
    );
    f.kv.write(vec![stmt("DROP VIEW kv__xv"), stmt("DROP TABLE kv__x")])
        .await
        .unwrap();
}

#[tokio::test]
async fn writes_refuse_non_deterministic_functions() {
    let f = fixture().await;
    for sql in [
        "INSERT INTO kv__t VALUES ('a', random())",
        "INSERT INTO kv__t VALUES ('a', hex(randomblob(4)))",
        "INSERT INTO kv__t VALUES ('a', datetime('now'))",
        "INSERT INTO kv__t VALUES ('a', CURRENT_TIMESTAMP)",
        "INSERT INTO kv__t VALUES ('a', current_date)",
        "INSERT INTO kv__t VALUES ('a', strftime('%s', 'now'))",
        "INSERT INTO kv__t VALUES ('a', unixepoch())",
        "INSERT INTO kv__t VALUES ('a', julianday('now'))",
        "UPDATE kv__t SET v = (SELECT random())",
        "INSERT INTO kv__t VALUES ('a', last_insert_rowid())",
    ] {
        let err = f.kv.write(vec![stmt(sql)]).await.unwrap_err();
        assert!(
            err.to_string().contains("not deterministic"),
            "`{sql}`: {err}"
        );
    }
}

#[tokio::test]
async fn reads_cannot_write() {
    let f = fixture().await;
    let err =
        f.kv.read(stmt("INSERT INTO kv__t VALUES ('a', 'b')"))
            .await
            .unwrap_err();
    assert!(matches!(err, StoreError::Denied { .. }), "{err}");
}

#[tokio::test]
async fn a_failed_statement_undoes_its_whole_write_and_nothing_else() {
    let f = fixture().await;
    let good =
        f.kv.write(vec![stmt("INSERT INTO kv__t VALUES ('keep', '1')")]);
    let bad = f.kv.write(vec![
        stmt("INSERT INTO kv__t VALUES ('gone', '1')"),
        stmt("INSERT INTO kv__t VALUES ('keep', 'duplicate')"),
    ]);
    let (good, bad) = tokio::join!(good, bad);
    good.unwrap();
    assert!(matches!(bad.unwrap_err(), StoreError::Constraint(_)));
    let rows =
        f.kv.read(stmt("SELECT k, v FROM kv__t"))
            .await
            .unwrap()
            .rows;
    assert_eq!(rows, vec![vec![Value::from("keep"), Value::from("1")]]);
}

#[tokio::test]
async fn parameter_count_is_checked() {
    let f = fixture().await;
    let err =
        f.kv.write(vec![Statement::new(
            "INSERT INTO kv__t VALUES (?1, ?2)",
            vec!["a".into()],
        )])
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("takes 2 parameters but 1"),
        "{err}"
    );
}

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

fn proposal(request_id: &str, time_ms: i64, seed: i64, statements: Vec<Statement>) -> Proposal {
    Proposal {
        request_id: request_id.into(),
        time_ms,
        seed,
        command: Command::Write {
            namespace: "kv".into(),
            statements,
            budget: WriteBudget::UNLIMITED,
        },
    }
}

fn entry(index: u8, proposals: Vec<Proposal>) -> ApplyEntry {
    ApplyEntry {
        log_id: vec![index],
        membership: None,
        proposals,
    }
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
