//! The namespace guard: no statement reaches another namespace, refusals
//! reveal nothing, views and triggers stay inside, writes are deterministic.

use super::*;

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
