//! Generated statements against the namespace guard: every statement that
//! names another namespace's table, in any spelling, position or statement
//! kind, is refused as a denial, through a write and through a read, and
//! the other namespace's data is never changed.

use proptest::prelude::*;

use super::*;

/// The ways a statement can spell echo's table (or the schema itself).
fn foreign_name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("echo__t"),
        Just("\"echo__t\""),
        Just("[echo__t]"),
        Just("`echo__t`"),
        Just("main.echo__t"),
        Just("\"main\".\"echo__t\""),
        Just("MAIN . ECHO__T"),
        Just("Echo__T"),
        Just("\"ECHO__t\""),
        Just("echo__t /* c */"),
        Just("sqlite_master"),
        Just("sqlite_schema"),
        Just("main.sqlite_master"),
    ]
    .prop_map(str::to_owned)
}

/// Statement shapes with a hole for the name; `{n}` makes object names of
/// kv's own unique.
fn shape() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("SELECT * FROM {}"),
        Just("SELECT k FROM kv__t, {}"),
        Just("SELECT k FROM kv__t JOIN {} ON 1"),
        Just("WITH x AS (SELECT * FROM {}) SELECT * FROM x"),
        Just("SELECT (SELECT 1 FROM {} LIMIT 1)"),
        Just("SELECT k FROM kv__t WHERE EXISTS (SELECT 1 FROM {})"),
        Just("SELECT * FROM kv__t UNION ALL SELECT *, 1 FROM {}"),
        Just("INSERT INTO {} VALUES ('x')"),
        Just("INSERT INTO kv__t SELECT 'k' || rowid, 'v' FROM {}"),
        Just("UPDATE {} SET a = 'x'"),
        Just("DELETE FROM {}"),
        Just("REPLACE INTO {} VALUES ('x')"),
        Just("CREATE VIEW kv__v{n} AS SELECT * FROM {}"),
        Just("CREATE TRIGGER kv__tr{n} AFTER INSERT ON kv__t BEGIN DELETE FROM {}; END"),
        Just("CREATE INDEX kv__i{n} ON {} (a)"),
        Just("DROP TABLE {}"),
        Just("ALTER TABLE {} ADD COLUMN z"),
    ]
}

/// Space, newlines or a comment where SQL allows whitespace.
fn padding() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just(" "), Just("\n\t"), Just(" /* x */ "), Just("  -- y\n")]
}

proptest! {
    #[test]
    fn a_statement_naming_another_namespace_is_always_refused(
        shape in shape(),
        name in foreign_name(),
        pad in padding(),
        n in 0u32..1_000_000,
        lowercase in any::<bool>(),
    ) {
        let sql = shape
            .replace("{}", &name)
            .replace("{n}", &n.to_string())
            .replace(' ', pad);
        let sql = if lowercase { sql.to_lowercase() } else { sql };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (write, read, echo) = rt.block_on(async {
            let f = tests::fixture().await;
            let write = f.kv.write(vec![Statement::new(sql.clone(), vec![])]).await;
            let read = f.kv.read(Statement::new(sql.clone(), vec![])).await;
            let echo = f.echo.read(Statement::new("SELECT a FROM echo__t", vec![])).await;
            (write, read, echo)
        });
        // Another namespace's table is the guard's to refuse; the schema
        // table SQLite itself sometimes refuses first (it may not be
        // altered, say): refused either way.
        let refused = |e: Option<&StoreError>| match e {
            Some(StoreError::Denied { .. }) => true,
            Some(StoreError::Invalid(_)) => name.contains("sqlite_"),
            _ => false,
        };
        prop_assert!(refused(write.as_ref().err()), "write of `{}`: {:?}", sql, write);
        prop_assert!(refused(read.as_ref().err()), "read of `{}`: {:?}", sql, read);
        let rows = echo.unwrap().rows;
        prop_assert_eq!(rows, vec![vec![Value::Text("secret".into())]]);
    }
}
