//! The node's one SQLite database, shared by every service through
//! namespace-bound handles.
//!
//! * One writer thread owns the only read-write connection. It commits
//!   concurrent writes together (group commit): every job in a batch runs in
//!   its own savepoint inside one transaction, and the replies are sent only
//!   after `COMMIT` returned, which in WAL mode with `synchronous=FULL` means
//!   after fsync. A write is never acknowledged before it is durable.
//! * A small pool of read-only connections serves reads concurrently (WAL).
//! * A service gets a [`Namespace`] handle, never a connection. Every
//!   statement it sends is compiled under the [`authorizer::Guard`] for its
//!   namespace.
//!
//! **Architecture Invariant:** this module knows nothing about HTTP, gRPC or
//! services; it knows namespaces and statements.

pub mod authorizer;
mod value;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    thread,
    time::Instant,
};

use rusqlite::{Connection, OpenFlags, config::DbConfig, ffi::ErrorCode, params_from_iter};
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use value::{Outcome, Statement, Value};

use crate::metrics::StoreMetrics;
use authorizer::{Guard, Mode};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "flotilla.db";
/// Jobs the writer takes into one transaction at most.
const MAX_BATCH: usize = 1024;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("statement denied in namespace `{namespace}`: {reason}")]
    Denied { namespace: String, reason: String },
    #[error("constraint violated: {0}")]
    Constraint(String),
    #[error("invalid statement: {0}")]
    Invalid(String),
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    fn from_sqlite(err: rusqlite::Error, guard: &Guard, namespace: &str) -> Self {
        // A denial can surface as SQLITE_AUTH or, for functions, as a plain
        // SQLITE_ERROR; the guard remembers which rule was broken either way.
        if let Some(reason) = guard.take_denial() {
            return StoreError::Denied {
                namespace: namespace.to_owned(),
                reason,
            };
        }
        match &err {
            rusqlite::Error::SqliteFailure(e, _)
                if e.code == ErrorCode::AuthorizationForStatementDenied =>
            {
                StoreError::Denied {
                    namespace: namespace.to_owned(),
                    reason: err.to_string(),
                }
            }
            rusqlite::Error::SqliteFailure(e, _) if e.code == ErrorCode::ConstraintViolation => {
                StoreError::Constraint(err.to_string())
            }
            rusqlite::Error::SqliteFailure(e, _)
                if matches!(
                    e.code,
                    ErrorCode::SystemIoFailure
                        | ErrorCode::DiskFull
                        | ErrorCode::DatabaseCorrupt
                        | ErrorCode::CannotOpen
                        | ErrorCode::NotADatabase
                        | ErrorCode::OutOfMemory
                ) =>
            {
                StoreError::Storage(err.to_string())
            }
            _ => StoreError::Invalid(err.to_string()),
        }
    }
}

/// One step of a service's schema history. Versions start at 1 and grow by
/// one; an applied migration must never change (its checksum is recorded).
#[derive(Clone, Copy, Debug)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// How the database is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub readers: usize,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Job {
    Write {
        namespace: Arc<str>,
        statements: Vec<Statement>,
        reply: Reply<Vec<Outcome>>,
    },
    Migrate {
        namespace: Arc<str>,
        migrations: Vec<Migration>,
        reply: Reply<usize>,
    },
}

struct Reader {
    conn: Connection,
    guard: Guard,
}

struct Inner {
    jobs: mpsc::UnboundedSender<Job>,
    readers: Mutex<Vec<Reader>>,
    reader_slots: Semaphore,
    metrics: StoreMetrics,
    path: PathBuf,
}

/// The store of one node. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

fn open_writer(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit fsyncs the WAL, so a committed write survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    harden(&conn)?;
    Ok(conn)
}

fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    harden(&conn)?;
    Ok(conn)
}

fn harden(conn: &Connection) -> rusqlite::Result<()> {
    // No writes to sqlite_master through writable_schema, no functions with
    // side effects inside schema objects.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

impl Store {
    /// Opens (creating if needed) the database in `config.data_dir` and
    /// starts the writer thread.
    pub fn open(config: &StoreConfig, metrics: StoreMetrics) -> Result<Store, StoreError> {
        let path = config.data_dir.join(DB_FILE);
        let storage = |e: rusqlite::Error| {
            StoreError::Storage(format!("cannot open the database {}: {e}", path.display()))
        };
        let mut writer = open_writer(&path).map_err(storage)?;
        let writer_guard = Guard::new();
        writer_guard.install(&mut writer).map_err(storage)?;
        writer
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS sys__migrations (
                    namespace TEXT NOT NULL,
                    version INTEGER NOT NULL,
                    name TEXT NOT NULL,
                    checksum TEXT NOT NULL,
                    PRIMARY KEY (namespace, version)
                ) STRICT",
            )
            .map_err(storage)?;
        let mut readers = Vec::with_capacity(config.readers);
        for _ in 0..config.readers.max(1) {
            let mut conn = open_reader(&path).map_err(storage)?;
            let guard = Guard::new();
            guard.install(&mut conn).map_err(storage)?;
            readers.push(Reader { conn, guard });
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let writer_metrics = metrics.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(writer, writer_guard, rx, writer_metrics))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                jobs: tx,
                reader_slots: Semaphore::new(readers.len()),
                readers: Mutex::new(readers),
                metrics,
                path,
            }),
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A handle bound to `namespace`. Only the catalogue hands these out, one
    /// per service, with the service's own name.
    pub fn namespace(&self, namespace: &str) -> Namespace {
        Namespace {
            name: Arc::from(namespace),
            store: self.clone(),
        }
    }
}

/// A service's view of the store: statements run under its namespace.
#[derive(Clone)]
pub struct Namespace {
    name: Arc<str>,
    store: Store,
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `statements` atomically in one transaction and returns what each
    /// produced. Returns only after the transaction is durable. If any
    /// statement fails, none of them has any effect.
    pub async fn write(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.store
            .inner
            .jobs
            .send(Job::Write {
                namespace: self.name.clone(),
                statements,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs one read-only statement on a reader connection.
    pub async fn read(&self, statement: Statement) -> Result<Outcome, StoreError> {
        let permit = self
            .store
            .inner
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.store.inner.clone();
        let namespace = self.name.clone();
        let task = tokio::task::spawn_blocking(move || {
            let reader = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or(StoreError::Closed)?;
            let started = Instant::now();
            reader.guard.set_mode(Mode::Service {
                namespace: namespace.to_string(),
                write: false,
            });
            let result = run_statement(&reader.conn, &reader.guard, &namespace, &statement, false);
            reader.guard.set_mode(Mode::System);
            inner
                .metrics
                .observe_statement(&namespace, "read", started.elapsed());
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(reader);
            result
        });
        let result = task
            .await
            .map_err(|e| StoreError::Storage(format!("reader task failed: {e}")))?;
        drop(permit);
        result
    }

    /// Applies the migrations not applied yet, in order, each in its own
    /// transaction with its bookkeeping row. Returns how many were applied.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.store
            .inner
            .jobs
            .send(Job::Migrate {
                namespace: self.name.clone(),
                migrations: migrations.to_vec(),
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// Compiles and runs one statement. The guard's mode is set by the caller.
fn run_statement(
    conn: &Connection,
    guard: &Guard,
    namespace: &str,
    statement: &Statement,
    write: bool,
) -> Result<Outcome, StoreError> {
    if let Some(reason) = authorizer::unguarded_statement(&statement.sql) {
        return Err(StoreError::Denied {
            namespace: namespace.to_owned(),
            reason: reason.to_owned(),
        });
    }
    guard.begin_statement();
    // The namespace is part of the cache key: a statement compiled (and
    // authorized) for one namespace is never reused for another.
    let key = format!("/*{namespace}*/{}", statement.sql);
    let mut stmt = conn
        .prepare_cached(&key)
        .map_err(|e| StoreError::from_sqlite(e, guard, namespace))?;
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
    let fail = |e| StoreError::from_sqlite(e, guard, namespace);
    let columns = stmt.column_count();
    let readonly = stmt.readonly();
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
    Ok(outcome)
}

fn writer_loop(
    mut conn: Connection,
    guard: Guard,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    metrics: StoreMetrics,
) {
    let mut writes = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = jobs.blocking_recv() {
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write {
                    namespace,
                    statements,
                    reply,
                } => writes.push((namespace, statements, reply)),
                Job::Migrate {
                    namespace,
                    migrations,
                    reply,
                } => {
                    commit_group(&mut conn, &guard, &mut writes, &metrics);
                    let _ = reply.send(migrate(&mut conn, &guard, &namespace, &migrations));
                }
            }
            if writes.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        commit_group(&mut conn, &guard, &mut writes, &metrics);
    }
    tracing::debug!("store writer stopped: every handle was dropped");
}

type WriteJob = (Arc<str>, Vec<Statement>, Reply<Vec<Outcome>>);
type JobResult = Result<Vec<Outcome>, StoreError>;

/// Runs every queued write in one transaction, one savepoint each, commits,
/// and only then replies.
fn commit_group(
    conn: &mut Connection,
    guard: &Guard,
    writes: &mut Vec<WriteJob>,
    metrics: &StoreMetrics,
) {
    if writes.is_empty() {
        return;
    }
    let started = Instant::now();
    guard.set_mode(Mode::System);
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let msg = format!("cannot start a write transaction: {e}");
        for (_, _, reply) in writes.drain(..) {
            let _ = reply.send(Err(StoreError::Storage(msg.clone())));
        }
        return;
    }
    let mut results: Vec<(Reply<Vec<Outcome>>, JobResult)> = Vec::with_capacity(writes.len());
    let mut jobs = std::mem::take(writes).into_iter();
    while let Some((namespace, statements, reply)) = jobs.next() {
        let job_started = Instant::now();
        guard.set_mode(Mode::System);
        if let Err(e) = conn.execute_batch("SAVEPOINT job") {
            results.push((reply, Err(StoreError::Storage(e.to_string()))));
            continue;
        }
        guard.set_mode(Mode::Service {
            namespace: namespace.to_string(),
            write: true,
        });
        let mut outcomes = Vec::with_capacity(statements.len());
        let mut failure = None;
        for statement in &statements {
            match run_statement(conn, guard, &namespace, statement, true) {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        guard.set_mode(Mode::System);
        let undo = if failure.is_some() {
            conn.execute_batch("ROLLBACK TO job; RELEASE job")
        } else {
            conn.execute_batch("RELEASE job")
        };
        metrics.observe_statement(&namespace, "write", job_started.elapsed());
        if let Err(e) = undo {
            // SQLite rolled the whole transaction back (I/O error, disk
            // full): nothing in this batch is durable.
            let msg = format!("the transaction was aborted: {e}");
            for (earlier, _) in results.drain(..) {
                let _ = earlier.send(Err(StoreError::Storage(msg.clone())));
            }
            let _ = reply.send(Err(failure.unwrap_or(StoreError::Storage(msg))));
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            if conn.execute_batch("BEGIN IMMEDIATE").is_err() {
                for (_, _, later) in jobs.by_ref() {
                    let _ = later.send(Err(StoreError::Storage(
                        "cannot restart the write transaction".into(),
                    )));
                }
                return;
            }
            continue;
        }
        results.push((reply, failure.map_or(Ok(outcomes), Err)));
    }
    let batch = results.len();
    let commit_started = Instant::now();
    match conn.execute_batch("COMMIT") {
        Ok(()) => {
            metrics.observe_commit(commit_started.elapsed(), batch, started.elapsed());
            for (reply, result) in results {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch, "commit failed; no write of this batch is acknowledged");
            let _ = conn.execute_batch("ROLLBACK");
            let msg = format!("commit failed: {e}");
            for (reply, _) in results {
                let _ = reply.send(Err(StoreError::Storage(msg.clone())));
            }
        }
    }
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

fn migrate(
    conn: &mut Connection,
    guard: &Guard,
    namespace: &str,
    migrations: &[Migration],
) -> Result<usize, StoreError> {
    let sys =
        |e: rusqlite::Error| StoreError::Storage(format!("migration bookkeeping failed: {e}"));
    guard.set_mode(Mode::System);
    let applied: Vec<(u32, String, String)> = {
        let mut stmt = conn
            .prepare_cached("SELECT version, name, checksum FROM sys__migrations WHERE namespace = ?1 ORDER BY version")
            .map_err(sys)?;
        stmt.query_map([namespace], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(sys)?
            .collect::<Result<_, _>>()
            .map_err(sys)?
    };
    for (version, name, sum) in &applied {
        match migrations.iter().find(|m| m.version == *version) {
            Some(m) if checksum(m.sql) == *sum => {}
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
        conn.execute_batch("BEGIN IMMEDIATE").map_err(sys)?;
        let result = apply_migration(conn, guard, namespace, m);
        guard.set_mode(Mode::System);
        match result {
            Ok(()) => {
                conn.execute(
                    "INSERT INTO sys__migrations (namespace, version, name, checksum) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![namespace, m.version, m.name, checksum(m.sql)],
                )
                .map_err(sys)?;
                conn.execute_batch("COMMIT").map_err(sys)?;
                count += 1;
            }
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                return Err(e);
            }
        }
    }
    Ok(count)
}

fn apply_migration(
    conn: &Connection,
    guard: &Guard,
    namespace: &str,
    m: &Migration,
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
    guard.set_mode(Mode::Service {
        namespace: namespace.to_owned(),
        write: true,
    });
    let mut batch = rusqlite::Batch::new(conn, m.sql);
    loop {
        guard.begin_statement();
        let next = batch
            .next()
            .map_err(|e| context(StoreError::from_sqlite(e, guard, namespace)))?;
        let Some(mut stmt) = next else { break };
        let text = stmt.expanded_sql().unwrap_or_default();
        if let Some(reason) = authorizer::unguarded_statement(&text) {
            return Err(context(StoreError::Denied {
                namespace: namespace.to_owned(),
                reason: reason.to_owned(),
            }));
        }
        guard.begin_statement();
        stmt.raw_execute()
            .map_err(|e| context(StoreError::from_sqlite(e, guard, namespace)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
