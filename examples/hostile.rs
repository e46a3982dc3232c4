//! A hostile service, added with one line like any other: the system tests
//! run it beside the built-in services, in single mode and in a three-node
//! cluster, and check that every other service stays correct and available.
//!
//! Each route tries one class of attack through the only things a service
//! is given (its `ServiceContext`: the node id and its own namespace) and
//! answers what the store said, so that a test can assert every attempt was
//! refused, and how.
//!
//! What it cannot even try is checked by the compiler: the service API has
//! no path to the accounts namespace, the secrets, the signing keys or the
//! database itself (see the `compile_fail` examples in `flotilla::service`).

use axum::{Json, extract::State};
use flotilla::{
    catalogue::Catalogue,
    service::{
        Access, Migration, Namespace, Routes, Service, ServiceContext, StartError, Statement,
        StoreError,
    },
};
use serde_json::{Value, json};

struct Intruder;

impl Service for Intruder {
    type State = Namespace;

    fn name(&self) -> &'static str {
        "intruder"
    }

    fn summary(&self) -> &'static str {
        "tries to escape its namespace (a test fixture, never for production)"
    }

    fn routes(&self) -> Routes<Namespace> {
        Routes::new()
            .post("/reach", Access::Public, reach)
            .post("/poison", Access::Public, poison)
            .post("/slow", Access::Public, slow)
            .post("/views", Access::Public, views)
            .post("/leaks", Access::Public, leaks)
            .post("/rename", Access::Public, rename)
            .post("/rows", Access::Public, rows)
            .post("/burn-write", Access::Public, burn_write)
            .post("/burn-read", Access::Public, burn_read)
    }

    fn migrations(&self) -> &'static [Migration] {
        &[Migration {
            version: 1,
            name: "tables",
            sql: "CREATE TABLE intruder__pk (k TEXT PRIMARY KEY, v TEXT) STRICT;
                  CREATE TABLE intruder__t (a TEXT, b TEXT);",
        }]
    }

    fn start(&self, ctx: ServiceContext) -> Result<Namespace, StartError> {
        Ok(ctx.store)
    }
}

fn stmt(sql: &str) -> Statement {
    Statement::new(sql, vec![])
}

/// What the store answered: `ALLOWED`, or its error.
fn verdict<T>(result: Result<T, StoreError>) -> String {
    match result {
        Ok(_) => "ALLOWED".into(),
        Err(e) => e.to_string(),
    }
}

async fn write(store: &Namespace, sql: &str) -> String {
    verdict(store.write(vec![stmt(sql)]).await)
}

async fn read(store: &Namespace, sql: &str) -> String {
    verdict(store.read(stmt(sql)).await)
}

/// Other namespaces, the schema, the accounts and the keys.
async fn reach(State(store): State<Namespace>) -> Json<Value> {
    let mut out = serde_json::Map::new();
    for sql in [
        "SELECT id, username, password_hash, roles FROM accounts__users",
        "SELECT * FROM auth__signing_keys",
        "SELECT * FROM registry__nodes",
        "SELECT * FROM sqlite_master",
        "SELECT * FROM pragma_table_list",
        "WITH x AS (SELECT * FROM accounts__users) SELECT * FROM x",
    ] {
        out.insert(sql.into(), read(&store, sql).await.into());
    }
    for sql in [
        "UPDATE accounts__users SET roles = '[\"admin\"]'",
        "INSERT INTO kv__items (owner, key, value, version) VALUES ('x', 'x', 'x', 1)",
        "ATTACH DATABASE 'stolen.db' AS stolen",
        "SELECT load_extension('evil')",
        "PRAGMA writable_schema = ON",
    ] {
        out.insert(sql.into(), write(&store, sql).await.into());
    }
    Json(Value::Object(out))
}

/// Statements that would end the transaction other services' writes share.
async fn poison(State(store): State<Namespace>) -> Json<Value> {
    Json(json!({
        "setup": write(&store, "INSERT OR REPLACE INTO intruder__pk VALUES ('rb', 'x')").await,
        "or_rollback": write(&store, "INSERT OR ROLLBACK INTO intruder__pk (k, v) VALUES ('rb', 'y')").await,
        "on_conflict_rollback": write(&store, "CREATE TABLE intruder__r (k TEXT PRIMARY KEY ON CONFLICT ROLLBACK)").await,
        "raise_rollback": write(&store, "CREATE TRIGGER intruder__g BEFORE UPDATE ON intruder__pk BEGIN SELECT RAISE(ROLLBACK, 'gone'); END").await,
    }))
}

/// Statements that would hold the one writer, or a reader, for long.
async fn slow(State(store): State<Namespace>) -> Json<Value> {
    Json(json!({
        "write": write(&store, "INSERT INTO intruder__t SELECT x, x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) SELECT x FROM c)").await,
        "read": read(&store, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT max(x) FROM c").await,
        "huge_value": write(&store, "INSERT INTO intruder__t VALUES ('big', zeroblob(60000000))").await,
    }))
}

/// Schema objects that would break other namespaces' statements or
/// migrations.
async fn views(State(store): State<Namespace>) -> Json<Value> {
    let _ = store
        .write(vec![stmt(
            "CREATE VIEW IF NOT EXISTS intruder__ok AS SELECT a FROM intruder__t",
        )])
        .await;
    Json(json!({
        "pragma_view": write(&store, "CREATE VIEW intruder__v1 AS SELECT * FROM pragma_table_list").await,
        "foreign_view": write(&store, "CREATE VIEW intruder__v2 AS SELECT * FROM accounts__users").await,
        "schema_view": write(&store, "CREATE VIEW intruder__v3 AS SELECT name FROM sqlite_master").await,
        "drop_under_view": write(&store, "DROP TABLE intruder__t").await,
    }))
}

/// Refusals that would tell another namespace's objects apart.
async fn leaks(State(store): State<Namespace>) -> Json<Value> {
    Json(json!({
        "existing_table": read(&store, "SELECT * FROM accounts__users").await,
        "missing_table": read(&store, "SELECT * FROM accounts__nothing").await,
        "existing_column": read(&store, "SELECT password_hash FROM accounts__users").await,
        "missing_column": read(&store, "SELECT nothing FROM accounts__users").await,
        "reindex": write(&store, ";REINDEX").await,
        "vacuum": write(&store, ";VACUUM").await,
    }))
}

/// A column rename re-reads every view and trigger of the database: it works
/// only while none is broken.
async fn rename(State(store): State<Namespace>) -> Json<Value> {
    Json(json!({
        "rename": verdict(store.write(vec![
            stmt("ALTER TABLE intruder__pk RENAME COLUMN v TO w"),
            stmt("ALTER TABLE intruder__pk RENAME COLUMN w TO v"),
        ]).await),
    }))
}

/// The heaviest write it is allowed: one that runs until its budget stops
/// it (the isolation benchmark runs it in a loop beside kv's writes).
async fn burn_write(State(store): State<Namespace>) -> Json<Value> {
    Json(
        json!({"write": write(&store, "INSERT INTO intruder__t SELECT x, x FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000) SELECT x FROM c)").await}),
    )
}

/// The heaviest read it is allowed, likewise.
async fn burn_read(State(store): State<Namespace>) -> Json<Value> {
    Json(
        json!({"read": read(&store, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000000) SELECT max(x) FROM c").await}),
    )
}

async fn rows(State(store): State<Namespace>) -> Json<Value> {
    let out = store
        .read(stmt(
            "SELECT (SELECT count(*) FROM intruder__pk), (SELECT count(*) FROM intruder__t)",
        ))
        .await;
    Json(match out {
        Ok(o) => json!({"pk": o.rows[0][0].as_i64(), "t": o.rows[0][1].as_i64()}),
        Err(e) => json!({"error": e.to_string()}),
    })
}

fn main() -> std::process::ExitCode {
    flotilla::cli::main(Catalogue::builtin().with(Intruder))
}
