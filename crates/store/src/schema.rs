//! A namespace's schema: its migrations, and the check that every view and
//! trigger it defines keeps to the namespace.
//!
//! SQLite checks a view or a trigger only when a statement uses it, and it
//! re-reads every view and trigger of the database when any table's column
//! is renamed. A view that reads outside its namespace, or one left pointing
//! at a dropped table, would therefore fail the next `ALTER TABLE … RENAME
//! COLUMN` of *another* namespace's migration. So each is compiled, as a
//! statement of its namespace would use it, every time the namespace's
//! schema changes and when its migrations are checked at start: a schema
//! change that leaves one unusable is refused, whole.

use rusqlite::Connection;

use super::{
    StoreError,
    authorizer::{Guard, Mode},
    connection::storage,
    fault::file_of,
    sql,
    value::MigrationSpec,
};

/// One step of a service's schema history. Versions start at 1 and grow by
/// one; an applied migration must never change (its checksum is recorded).
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl From<&Migration> for MigrationSpec {
    fn from(m: &Migration) -> Self {
        MigrationSpec {
            version: m.version,
            name: m.name.to_owned(),
            sql: m.sql.to_owned(),
        }
    }
}

/// The bookkeeping tables flotilla keeps beside the namespaces.
pub(super) const SYSTEM_TABLES: &str = "CREATE TABLE IF NOT EXISTS sys__migrations (
        namespace TEXT NOT NULL,
        version INTEGER NOT NULL,
        name TEXT NOT NULL,
        checksum TEXT NOT NULL,
        PRIMARY KEY (namespace, version)
    ) STRICT;
    CREATE TABLE IF NOT EXISTS raft__state (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL
    ) STRICT;
    CREATE TABLE IF NOT EXISTS raft__requests (
        request_id TEXT PRIMARY KEY NOT NULL,
        result BLOB NOT NULL,
        time_ms INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS raft__requests_time ON raft__requests (time_ms);";

/// Applies the migrations of `namespace` not applied yet, each in a
/// savepoint of the open transaction, with its bookkeeping row, then checks
/// the namespace's views and triggers. Returns how many were applied.
pub(super) fn migrate(
    conn: &Connection,
    guard: &Guard,
    namespace: &str,
    migrations: &[MigrationSpec],
) -> Result<usize, StoreError> {
    let sys = storage(file_of(conn), "migration bookkeeping failed");
    guard.set_mode(Mode::System);
    let applied: Vec<(u32, String, String)> = {
        let mut stmt = conn
            .prepare_cached("SELECT version, name, checksum FROM sys__migrations WHERE namespace = ?1 ORDER BY version")
            .map_err(&sys)?;
        stmt.query_map([namespace], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(&sys)?
            .collect::<Result<_, _>>()
            .map_err(&sys)?
    };
    for (version, name, sum) in &applied {
        match migrations.iter().find(|m| m.version == *version) {
            Some(m) if checksum(&m.sql) == *sum => {}
            Some(m) => {
                return Err(StoreError::Invalid(format!(
                    "migration {version} (`{}`) of namespace `{namespace}` was changed after it was applied; add a new migration instead of editing an applied one",
                    m.name
                )));
            }
            None => {
                return Err(StoreError::Invalid(format!(
                    "the database has migration {version} (`{name}`) of namespace `{namespace}`, which this binary does not know: it was written by a newer version"
                )));
            }
        }
    }
    let mut count = 0;
    for m in migrations
        .iter()
        .filter(|m| !applied.iter().any(|a| a.0 == m.version))
    {
        guard.set_mode(Mode::System);
        conn.execute_batch("SAVEPOINT migration").map_err(&sys)?;
        let result = apply_migration(conn, guard, namespace, m);
        guard.set_mode(Mode::System);
        if let Err(e) = result {
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK TO migration; RELEASE migration");
            }
            return Err(e);
        }
        conn.execute(
            "INSERT INTO sys__migrations (namespace, version, name, checksum) VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![namespace, m.version, m.name, checksum(&m.sql)],
        )
        .map_err(&sys)?;
        conn.execute_batch("RELEASE migration").map_err(&sys)?;
        count += 1;
    }
    audit(conn, guard, namespace).map_err(|e| match e {
        StoreError::Denied { namespace, reason } => StoreError::Denied {
            reason: format!(
                "{reason}; drop or replace it in a new migration of namespace `{namespace}`"
            ),
            namespace,
        },
        other => other,
    })?;
    Ok(count)
}

/// A stable 64-bit FNV-1a checksum of a migration's SQL.
fn checksum(sql: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

fn apply_migration(
    conn: &Connection,
    guard: &Guard,
    namespace: &str,
    m: &MigrationSpec,
) -> Result<(), StoreError> {
    use fallible_iterator::FallibleIterator;
    let context = |e: StoreError| match e {
        StoreError::Denied { namespace, reason } => StoreError::Denied {
            namespace,
            reason: format!("migration {} (`{}`): {reason}", m.version, m.name),
        },
        other => StoreError::Invalid(format!(
            "migration {} (`{}`) failed: {other}",
            m.version, m.name
        )),
    };
    if let Some(reason) = sql::refusal(&m.sql, namespace) {
        return Err(context(StoreError::Denied {
            namespace: namespace.to_owned(),
            reason,
        }));
    }
    guard.set_mode(Mode::Service {
        namespace: namespace.to_owned(),
        write: true,
    });
    let mut batch = rusqlite::Batch::new(conn, &m.sql);
    loop {
        guard.begin_statement();
        let next = batch
            .next()
            .map_err(|e| context(StoreError::from_sqlite(e, guard, namespace, file_of(conn))))?;
        let Some(mut stmt) = next else { break };
        guard.begin_statement();
        stmt.raw_execute()
            .map_err(|e| context(StoreError::from_sqlite(e, guard, namespace, file_of(conn))))?;
    }
    Ok(())
}

/// Compiles, without running, a use of every view and trigger of
/// `namespace` under the namespace's rules: a view as a read selects from
/// it, a trigger as the write that fires it. Refuses the first that does not
/// compile, naming it and why. Leaves the guard in system mode.
pub(super) fn audit(conn: &Connection, guard: &Guard, namespace: &str) -> Result<(), StoreError> {
    let sys = storage(
        file_of(conn),
        "cannot list the namespace's views and triggers",
    );
    guard.set_mode(Mode::System);
    let prefix = format!("{namespace}__");
    let objects: Vec<(String, String, String, String)> = {
        let mut stmt = conn
            .prepare_cached(
                "SELECT type, name, tbl_name, sql FROM sqlite_schema
                 WHERE type IN ('view', 'trigger') AND lower(substr(name, 1, ?1)) = ?2
                 ORDER BY type DESC, name",
            )
            .map_err(&sys)?;
        stmt.query_map(rusqlite::params![prefix.len() as i64, prefix], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(&sys)?
        .collect::<Result<_, _>>()
        .map_err(&sys)?
    };
    for (kind, name, table, sql) in objects {
        let probes = if kind == "view" {
            vec![(false, format!("SELECT * FROM {}", quote(&name)))]
        } else {
            trigger_probes(conn, guard, &table, &sql)?
        };
        for (write, probe) in probes {
            guard.set_mode(Mode::Service {
                namespace: namespace.to_owned(),
                write,
            });
            guard.begin_statement();
            let compiled = conn.prepare(&probe).map(drop);
            let result =
                compiled.map_err(|e| StoreError::from_sqlite(e, guard, namespace, file_of(conn)));
            guard.set_mode(Mode::System);
            if let Err(e) = result {
                let reason = match e {
                    StoreError::Denied { reason, .. } => reason,
                    other => other.to_string(),
                };
                return Err(StoreError::Denied {
                    namespace: namespace.to_owned(),
                    reason: format!(
                        "{kind} `{}` cannot be used within namespace `{namespace}` ({reason}): nothing a namespace defines may reach outside it or stop compiling",
                        name.to_ascii_lowercase()
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The statement that fires a trigger: an insert, a delete, or an update of
/// every column (so that `UPDATE OF` triggers fire too).
fn trigger_probes(
    conn: &Connection,
    guard: &Guard,
    table: &str,
    sql: &str,
) -> Result<Vec<(bool, String)>, StoreError> {
    let target = quote(table);
    let probe = match sql::trigger_event(sql) {
        Some("INSERT") => format!("INSERT INTO {target} DEFAULT VALUES"),
        Some("DELETE") => format!("DELETE FROM {target}"),
        Some(_) => {
            guard.set_mode(Mode::System);
            let columns: Vec<String> = conn
                .prepare_cached("SELECT name FROM pragma_table_xinfo(?1) WHERE hidden = 0")
                .and_then(|mut s| {
                    s.query_map([table], |r| r.get(0))?
                        .collect::<Result<_, _>>()
                })
                .map_err(storage(file_of(conn), "cannot list a table's columns"))?;
            let set: Vec<String> = columns
                .iter()
                .map(|c| format!("{0} = {0}", quote(c)))
                .collect();
            format!("UPDATE {target} SET {}", set.join(", "))
        }
        None => return Ok(Vec::new()),
    };
    Ok(vec![(true, probe)])
}

/// An SQL identifier, quoted.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}
