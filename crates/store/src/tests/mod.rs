//! The store against real SQLite files: what every group of tests shares.

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

mod budgets;
mod guard;
mod replication;
