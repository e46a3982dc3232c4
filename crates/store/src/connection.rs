//! Opening the store's SQLite connections, and running one service
//! statement on one of them under its namespace's guard and budget.

use std::{
    path::Path,
    sync::{Arc, Mutex},
};

use rusqlite::{
    Connection, OpenFlags, config::DbConfig, functions::FunctionFlags, limits::Limit,
    params_from_iter,
};

use super::{
    StoreError,
    authorizer::Guard,
    budget::MAX_VALUE_BYTES,
    fault::file_of,
    value::{Outcome, Statement, Value},
};

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

/// The time (ms) and seed that `flotilla_now()` and `flotilla_random()`
/// return on the writer while one command applies, with a counter so that
/// several calls in one command differ, identically on every replica.
#[derive(Clone, Default)]
pub(super) struct Determinism(Arc<Mutex<(i64, i64, i64)>>);

impl Determinism {
    pub fn set(&self, time_ms: i64, seed: i64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (time_ms, seed, 0);
    }

    fn now(&self) -> i64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn random(&self) -> i64 {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.2 += 1;
        splitmix64(state.1.wrapping_add(state.2)) as i64
    }
}

/// A time and seed for a local write: the clock and fresh randomness.
pub(super) fn fresh_stamp() -> (i64, i64) {
    use rand::RngCore;
    (now_ms(), rand::thread_rng().next_u64() as i64)
}

fn splitmix64(x: i64) -> u64 {
    let mut z = (x as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Registers `flotilla_now()` (milliseconds since the epoch) and
/// `flotilla_random()` (a 64-bit integer): on the writer they return what the
/// command carries; on readers, the clock and fresh randomness.
fn register_functions(conn: &Connection, determinism: Option<Determinism>) -> rusqlite::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8;
    match determinism {
        Some(d) => {
            let n = d.clone();
            conn.create_scalar_function("flotilla_now", 0, flags, move |_| Ok(n.now()))?;
            conn.create_scalar_function("flotilla_random", 0, flags, move |_| Ok(d.random()))
        }
        None => {
            conn.create_scalar_function("flotilla_now", 0, flags, |_| Ok(now_ms()))?;
            conn.create_scalar_function("flotilla_random", 0, flags, |_| {
                use rand::RngCore;
                Ok(rand::thread_rng().next_u64() as i64)
            })
        }
    }
}

/// Whether the database itself fsyncs every commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit is on disk when it returns.
    Full,
    /// `synchronous=NORMAL`: only for a Raft state machine, whose log is
    /// the durable record.
    ReplayedFromLog,
}

/// The only read-write connection, with its guard and the deterministic
/// functions bound to `determinism`.
pub(super) fn open_writer(
    path: &Path,
    durability: Durability,
    guard: &Guard,
    determinism: Determinism,
) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit fsyncs the WAL, so a committed write survives power loss.
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::ReplayedFromLog => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    if durability == Durability::ReplayedFromLog {
        // The checkpointer thread copies the WAL back instead (see
        // `writer::checkpointer`), so that the writer never waits for it.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    }
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Up to 32 MiB of pages cached (SQLite's default is 2 MiB): a writer
    // that touches many pages per group commit re-reads fewer of them.
    conn.pragma_update(None, "cache_size", -32 * 1024)?;
    // Savepoint journals in memory, not in temporary files.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    harden(&conn)?;
    register_functions(&conn, Some(determinism))?;
    guard.install(&mut conn)?;
    Ok(conn)
}

/// A read-only connection of the pool, with its guard.
pub(super) fn open_reader(path: &Path, guard: &Guard) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    harden(&conn)?;
    register_functions(&conn, None)?;
    guard.install(&mut conn)?;
    Ok(conn)
}

fn harden(conn: &Connection) -> rusqlite::Result<()> {
    // No writes to sqlite_master through writable_schema, no functions with
    // side effects inside schema objects.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    // A double-quoted word is an identifier, never a string literal that a
    // missing column silently turns into.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    set_value_limit(conn, MAX_VALUE_BYTES as i32)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Sets the largest string, blob or row the connection's statements may
/// make (SQLite's length limit).
pub(super) fn set_value_limit(conn: &Connection, bytes: i32) -> rusqlite::Result<()> {
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, bytes).map(drop)
}

/// What running one statement produced.
pub(super) struct Ran {
    pub outcome: Outcome,
    /// Whether the statement changed the schema (CREATE, DROP, ALTER).
    pub defined: bool,
}

/// Compiles and runs one statement of a service. The guard's mode and meter
/// are set by the caller.
pub(super) fn run_statement(
    conn: &Connection,
    guard: &Guard,
    namespace: &str,
    statement: &Statement,
    write: bool,
) -> Result<Ran, StoreError> {
    // The namespace is part of the cache key: a statement compiled (and
    // authorized) for one namespace is never reused for another.
    let key = format!("/*{namespace}*/{}", statement.sql);
    let defined = guard
        .check_text(&key, &statement.sql, namespace)
        .map_err(|reason| StoreError::Denied {
            namespace: namespace.to_owned(),
            reason,
        })?;
    guard.begin_statement();
    let mut stmt = conn
        .prepare_cached(&key)
        .map_err(|e| StoreError::from_sqlite(e, guard, namespace, file_of(conn)))?;
    if stmt.parameter_count() != statement.params.len() {
        return Err(StoreError::Invalid(format!(
            "the statement takes {} parameters but {} were given",
            stmt.parameter_count(),
            statement.params.len()
        )));
    }
    if !write && !stmt.readonly() {
        return Err(StoreError::Denied {
            namespace: namespace.to_owned(),
            reason: "a read may not change the database: send it as a write".into(),
        });
    }
    guard.begin_statement();
    let fail = |e| StoreError::from_sqlite(e, guard, namespace, file_of(conn));
    let columns = stmt.column_count();
    let readonly = stmt.readonly();
    let changes_before = conn.total_changes();
    let mut outcome = Outcome::default();
    if columns == 0 {
        outcome.changed = stmt
            .execute(params_from_iter(&statement.params))
            .map_err(fail)? as u64;
    } else {
        let mut rows = stmt
            .query(params_from_iter(&statement.params))
            .map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            guard.returned_row().map_err(|reason| StoreError::Budget {
                namespace: namespace.to_owned(),
                reason,
            })?;
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                values.push(row.get::<_, Value>(i).map_err(fail)?);
            }
            outcome.rows.push(values);
        }
        if !readonly {
            outcome.changed = conn.changes();
        }
    }
    // Rows its triggers wrote count too, which `changes` leaves out.
    if !readonly {
        guard
            .wrote_rows(conn.total_changes() - changes_before)
            .map_err(|reason| StoreError::Budget {
                namespace: namespace.to_owned(),
                reason,
            })?;
    }
    Ok(Ran { outcome, defined })
}

/// Transaction control statements, compiled once per connection.
pub(super) trait ExecCached {
    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()>;
}

impl ExecCached for Connection {
    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.prepare_cached(sql)?.execute([]).map(|_| ())
    }
}

/// Maps a SQLite error of flotilla's own bookkeeping to a storage failure.
pub(super) fn storage<'a>(
    file: &'a str,
    context: &'a str,
) -> impl Fn(rusqlite::Error) -> StoreError + 'a {
    move |e| StoreError::Storage(crate::fault::describe(file, context, &e))
}
