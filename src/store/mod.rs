//! The node's one SQLite database, shared by every service through
//! namespace-bound handles.
//!
//! * One writer thread owns the only read-write connection. It commits
//!   concurrent writes together (group commit): every job in a batch runs in
//!   its own savepoint inside one transaction, and the replies are sent only
//!   after `COMMIT` returned, which in WAL mode with `synchronous=FULL` means
//!   after fsync. A local write is never acknowledged before it is durable;
//!   a replicated one is durable in the Raft log before it is applied here.
//! * A small pool of read-only connections serves reads concurrently (WAL).
//! * A Raft state machine's applies may share one transaction for up to
//!   `APPLY_COMMIT_INTERVAL`: the Raft log is the durable record, so the
//!   commit only makes them visible to the readers, and a read commits what
//!   is pending before it runs (see `Store::read_local`). Its WAL is copied
//!   back by a checkpointer thread, so the writer does not wait for that.
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
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use rusqlite::functions::FunctionFlags;
use rusqlite::{
    Connection, OpenFlags, OptionalExtension, config::DbConfig, ffi::ErrorCode, params_from_iter,
};
use tokio::sync::{Semaphore, oneshot};

pub use value::{Applied, Command, MigrationSpec, Outcome, Proposal, Statement, Value};

use crate::metrics::StoreMetrics;
use authorizer::{Guard, Mode};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "flotilla.db";
/// Jobs the writer takes into one transaction at most.
const MAX_BATCH: usize = 1024;
/// How long applied Raft entries may wait in an open transaction for later
/// ones to share its commit (see the module documentation).
const APPLY_COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// A WAL longer than this many frames (64 MiB of 4 KiB pages) is rewound:
/// the writer checkpoints what the checkpointer has not copied yet, and its
/// next transaction starts the WAL over (see `Writer::commit_applies`).
const WAL_FRAMES_LIMIT: i64 = 16_384;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 256;

#[derive(Clone, Debug, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
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

impl From<&Migration> for MigrationSpec {
    fn from(m: &Migration) -> Self {
        MigrationSpec {
            version: m.version,
            name: m.name.to_owned(),
            sql: m.sql.to_owned(),
        }
    }
}

/// Where a replicated store sends writes, reads and migrations instead of
/// running them locally: the cluster (Raft) implements it. A store without
/// one is a single node's.
pub trait Replicator: Send + Sync + 'static {
    fn write(&self, command: Command) -> BoxFuture<'static, Result<Applied, StoreError>>;
    fn read(
        &self,
        namespace: String,
        statement: Statement,
    ) -> BoxFuture<'static, Result<Outcome, StoreError>>;
    /// A read from this node's copy, refused if the copy may lag more than
    /// the configured bound.
    fn read_stale(
        &self,
        namespace: String,
        statement: Statement,
    ) -> BoxFuture<'static, Result<Outcome, StoreError>>;
}

/// One Raft log entry for the state machine, in terms the store knows: the
/// log position and membership as opaque bytes (stored with the data, in
/// the same transaction), and the proposals the entry carries (the leader
/// gathers concurrent ones into one entry), applied in order, each all or
/// nothing on its own.
#[derive(Clone, Debug)]
pub struct ApplyEntry {
    pub log_id: Vec<u8>,
    pub membership: Option<Vec<u8>>,
    pub proposals: Vec<Proposal>,
}

/// What applying one entry produced: one result per proposal, in order.
pub type EntryResults = Vec<Result<Applied, StoreError>>;

/// The last applied log id and the membership, as opaque bytes.
pub type AppliedState = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A consistent copy of the database, made without blocking writes for
/// longer than the copy, with the log position and membership it contains.
#[derive(Debug)]
pub struct SnapshotFile {
    pub path: PathBuf,
    pub log_id: Option<Vec<u8>>,
    pub membership: Option<Vec<u8>>,
}

/// How the database is opened.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub readers: usize,
    /// Whether the database itself must fsync every commit. A single node
    /// must; in a cluster the Raft log is fsynced before anything is
    /// acknowledged and every entry after the last durable one is re-applied
    /// from it on restart, so the database may leave fsync to checkpoints.
    pub durability: Durability,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: a commit is on disk when it returns.
    Full,
    /// `synchronous=NORMAL`: only for a Raft state machine, whose log is
    /// the durable record.
    ReplayedFromLog,
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
        migrations: Vec<MigrationSpec>,
        reply: Reply<usize>,
    },
    Apply {
        entries: Vec<ApplyEntry>,
        reply: Reply<Vec<EntryResults>>,
    },
    Restore {
        path: PathBuf,
        reply: Reply<()>,
    },
    AppliedState {
        reply: Reply<AppliedState>,
    },
    /// Commits the applies waiting in an open transaction, if any.
    Flush {
        reply: Reply<()>,
    },
}

struct Reader {
    conn: Connection,
    guard: Guard,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    /// Set while applied entries wait uncommitted (invisible to readers).
    unflushed: Arc<AtomicBool>,
    replicator: OnceLock<Arc<dyn Replicator>>,
    readers: Mutex<Vec<Reader>>,
    reader_slots: Semaphore,
    metrics: StoreMetrics,
    path: PathBuf,
    /// Dropped with the store, which stops the checkpointer thread.
    _checkpointer: Option<mpsc::Sender<()>>,
}

/// The store of one node. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// The time (ms) and seed that `flotilla_now()` and `flotilla_random()`
/// return on the writer while one command applies, with a counter so that
/// several calls in one command differ, identically on every replica.
#[derive(Clone, Default)]
struct Determinism(Arc<Mutex<(i64, i64, i64)>>);

impl Determinism {
    fn set(&self, time_ms: i64, seed: i64) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = (time_ms, seed, 0);
    }

    fn set_now(&self) {
        use rand::RngCore;
        self.set(now_ms(), rand::thread_rng().next_u64() as i64);
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

fn open_writer(path: &Path, durability: Durability) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit fsyncs the WAL, so a committed write survives power loss.
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::ReplayedFromLog => "NORMAL",
    };
    conn.pragma_update(None, "synchronous", synchronous)?;
    if durability == Durability::ReplayedFromLog {
        // The checkpointer thread copies the WAL back instead (see
        // `checkpointer`), so that the writer never waits for it.
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
        let mut writer = open_writer(&path, config.durability).map_err(storage)?;
        let determinism = Determinism::default();
        register_functions(&writer, Some(determinism.clone())).map_err(storage)?;
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
                CREATE INDEX IF NOT EXISTS raft__requests_time ON raft__requests (time_ms);",
            )
            .map_err(storage)?;
        let mut readers = Vec::with_capacity(config.readers);
        for _ in 0..config.readers.max(1) {
            let mut conn = open_reader(&path).map_err(storage)?;
            let guard = Guard::new();
            guard.install(&mut conn).map_err(storage)?;
            register_functions(&conn, None).map_err(storage)?;
            readers.push(Reader { conn, guard });
        }
        let wal_long = Arc::new(AtomicBool::new(false));
        let checkpointer = if config.durability == Durability::ReplayedFromLog {
            let conn = Connection::open(&path).map_err(storage)?;
            let (stop, stopped) = mpsc::channel();
            let long = wal_long.clone();
            thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || checkpointer(&conn, &stopped, &long))
                .map_err(|e| {
                    StoreError::Storage(format!("cannot start the checkpoint thread: {e}"))
                })?;
            Some(stop)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        let writer_metrics = metrics.clone();
        let unflushed = Arc::new(AtomicBool::new(false));
        let defer_commits = config.durability == Durability::ReplayedFromLog;
        let writer_unflushed = unflushed.clone();
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                writer_loop(
                    Writer {
                        conn: writer,
                        guard: writer_guard,
                        determinism,
                        metrics: writer_metrics,
                        open_apply: None,
                        waiting_entries: 0,
                        defer_commits,
                        lost_applies: None,
                        wal_long,
                        unflushed: writer_unflushed,
                    },
                    rx,
                )
            })
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                jobs: tx,
                unflushed,
                replicator: OnceLock::new(),
                reader_slots: Semaphore::new(readers.len()),
                readers: Mutex::new(readers),
                metrics,
                path,
                _checkpointer: checkpointer,
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

fn unexpected(what: &str) -> StoreError {
    StoreError::Storage(format!(
        "the replicated store answered {what} with the wrong kind of result"
    ))
}

impl Namespace {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `statements` atomically in one transaction and returns what each
    /// produced. Returns only after the transaction is durable (on a quorum,
    /// when the store is replicated). If any statement fails, none of them
    /// has any effect.
    pub async fn write(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, StoreError> {
        if let Some(r) = self.store.inner.replicator.get() {
            let command = Command::Write {
                namespace: self.name.to_string(),
                statements,
            };
            return match r.write(command).await? {
                Applied::Outcomes(o) => Ok(o),
                Applied::Migrated(_) => Err(unexpected("a write")),
            };
        }
        let namespace = self.name.clone();
        self.store
            .job(|reply| Job::Write {
                namespace,
                statements,
                reply,
            })
            .await
    }

    /// Runs one read-only statement. Linearizable when the store is
    /// replicated (through the leader's read index).
    pub async fn read(&self, statement: Statement) -> Result<Outcome, StoreError> {
        if let Some(r) = self.store.inner.replicator.get() {
            return r.read(self.name.to_string(), statement).await;
        }
        self.store.read_local(&self.name, statement).await
    }

    /// Runs one read-only statement on this node's copy without asking the
    /// leader: faster, and possibly behind by up to the cluster's
    /// `stale_read_max_lag_ms` (refused beyond it). The same as `read` on a
    /// single node.
    pub async fn read_stale(&self, statement: Statement) -> Result<Outcome, StoreError> {
        if let Some(r) = self.store.inner.replicator.get() {
            return r.read_stale(self.name.to_string(), statement).await;
        }
        self.store.read_local(&self.name, statement).await
    }

    /// Applies the migrations not applied yet, in order, in one transaction
    /// with their bookkeeping rows. Returns how many were applied.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<usize, StoreError> {
        let migrations: Vec<MigrationSpec> = migrations.iter().map(MigrationSpec::from).collect();
        if let Some(r) = self.store.inner.replicator.get() {
            let command = Command::Migrate {
                namespace: self.name.to_string(),
                migrations,
            };
            return match r.write(command).await? {
                Applied::Migrated(n) => Ok(n),
                Applied::Outcomes(_) => Err(unexpected("a migration")),
            };
        }
        let namespace = self.name.clone();
        self.store
            .job(|reply| Job::Migrate {
                namespace,
                migrations,
                reply,
            })
            .await
    }
}

impl Store {
    async fn job<T>(&self, make: impl FnOnce(Reply<T>) -> Job) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .jobs
            .send(make(reply))
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Makes this store replicated: from now on, every namespace's writes,
    /// reads and migrations go through `replicator`. Set once, at start.
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) -> Result<(), StoreError> {
        self.inner
            .replicator
            .set(replicator)
            .map_err(|_| StoreError::Invalid("the store already has a replicator".into()))
    }

    /// Runs `work` on a reader connection from the pool, on a blocking
    /// thread, and puts the reader back.
    async fn with_reader<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Reader) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _permit = self
            .inner
            .reader_slots
            .acquire()
            .await
            .map_err(|_| StoreError::Closed)?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let reader = inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .ok_or(StoreError::Closed)?;
            let result = work(&reader);
            reader.guard.set_mode(Mode::System);
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(reader);
            result
        })
        .await
        .map_err(|e| StoreError::Storage(format!("reader task failed: {e}")))?
    }

    /// Runs one read-only statement of `namespace` on a local reader,
    /// whatever the replication: the replicator's own read path. It sees
    /// every entry applied before it was called.
    pub async fn read_local(
        &self,
        namespace: &str,
        statement: Statement,
    ) -> Result<Outcome, StoreError> {
        self.flush().await?;
        let namespace: Arc<str> = Arc::from(namespace);
        let metrics = self.inner.metrics.clone();
        self.with_reader(move |reader| {
            let started = Instant::now();
            reader.guard.set_mode(Mode::Service {
                namespace: namespace.to_string(),
                write: false,
            });
            let result = run_statement(&reader.conn, &reader.guard, &namespace, &statement, false);
            metrics.observe_statement(&namespace, "read", started.elapsed());
            result
        })
        .await
    }

    /// Commits the applied entries that wait for a shared commit, if any, so
    /// that the readers see them.
    pub async fn flush(&self) -> Result<(), StoreError> {
        if self.inner.unflushed.load(Ordering::SeqCst) {
            self.job(|reply| Job::Flush { reply }).await?;
        }
        Ok(())
    }

    /// Applies committed Raft entries (the state machine's `apply`).
    pub async fn apply(&self, entries: Vec<ApplyEntry>) -> Result<Vec<EntryResults>, StoreError> {
        self.job(|reply| Job::Apply { entries, reply }).await
    }

    /// The last applied log id and membership, as recorded with the data.
    pub async fn applied_state(&self) -> Result<AppliedState, StoreError> {
        self.job(|reply| Job::AppliedState { reply }).await
    }

    /// Writes a consistent copy of the database to `path`.
    /// Made on a reader connection (`VACUUM INTO` reads one consistent
    /// WAL snapshot), so writes go on while it is copied; the log position
    /// and membership are read back from the copy itself, so they match its
    /// data exactly. Every entry applied before the call is in it.
    pub async fn snapshot(&self, path: PathBuf) -> Result<SnapshotFile, StoreError> {
        self.flush().await?;
        self.with_reader(move |reader| {
            reader.guard.set_mode(Mode::System);
            let _ = std::fs::remove_file(&path);
            reader
                .conn
                .execute("VACUUM INTO ?1", [path.to_string_lossy()])
                .map_err(storage("cannot copy the database for a snapshot"))?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::Storage(format!("cannot sync the snapshot: {e}")))?;
            let copy = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(storage("cannot open the snapshot"))?;
            let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
                copy.query_row("SELECT value FROM raft__state WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .map_err(storage("cannot read the snapshot's state"))
            };
            Ok(SnapshotFile {
                log_id: get("applied")?,
                membership: get("membership")?,
                path,
            })
        })
        .await
    }

    /// Replaces the database with the copy at `path`.
    pub async fn restore(&self, path: PathBuf) -> Result<(), StoreError> {
        self.job(|reply| Job::Restore { path, reply }).await
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

/// Transaction control statements, compiled once per connection.
trait ExecCached {
    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()>;
}

impl ExecCached for Connection {
    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.prepare_cached(sql)?.execute([]).map(|_| ())
    }
}

/// The writer thread's state: the only read-write connection.
struct Writer {
    conn: Connection,
    guard: Guard,
    determinism: Determinism,
    metrics: StoreMetrics,
    /// Since when applied entries have waited in an open transaction.
    open_apply: Option<Instant>,
    /// How many entries wait in it.
    waiting_entries: usize,
    /// Whether applies may wait for a later commit (a Raft state machine).
    defer_commits: bool,
    /// Why waiting applies were lost (a failed commit, or SQLite rolling
    /// the transaction back): this store then refuses every later apply,
    /// read and snapshot until it is reopened, and Raft applies them again
    /// from its log.
    lost_applies: Option<StoreError>,
    /// Shared with the readers: whether applies wait uncommitted. Stays set
    /// once they are lost, so that reads report it.
    unflushed: Arc<AtomicBool>,
    /// Set by the checkpointer when the WAL should be rewound.
    wal_long: Arc<AtomicBool>,
}

fn writer_loop(mut w: Writer, jobs: mpsc::Receiver<Job>) {
    let mut writes = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = match w.open_apply {
            Some(since) => {
                let wait =
                    (since + APPLY_COMMIT_INTERVAL).saturating_duration_since(Instant::now());
                match jobs.recv_timeout(wait) {
                    Ok(job) => job,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        w.commit_applies_logged();
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match jobs.recv() {
                Ok(job) => job,
                Err(mpsc::RecvError) => break,
            },
        };
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write {
                    namespace,
                    statements,
                    reply,
                } => writes.push((namespace, statements, reply)),
                Job::Apply { entries, reply } => {
                    w.commit_group(&mut writes);
                    let _ = reply.send(w.apply(entries));
                }
                Job::Flush { reply } => {
                    w.commit_group(&mut writes);
                    let _ = reply.send(w.commit_applies());
                }
                other => {
                    // Everything else runs alone, after the writes and the
                    // applies before it, in order.
                    w.commit_group(&mut writes);
                    w.commit_applies_logged();
                    w.run(other);
                }
            }
            if writes.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        w.commit_group(&mut writes);
    }
    w.commit_applies_logged();
    tracing::debug!("store writer stopped: every handle was dropped");
}

/// Copies the WAL back into the database every `CHECKPOINT_INTERVAL` on its
/// own connection, beside the writer and the readers (a passive checkpoint
/// waits for neither), until `stopped` is closed. Sets `long` when the WAL
/// has grown past `WAL_FRAMES_LIMIT`, for the writer to rewind it.
fn checkpointer(conn: &Connection, stopped: &mpsc::Receiver<()>, long: &AtomicBool) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
        match passive_checkpoint(conn) {
            Ok(frames) if frames > WAL_FRAMES_LIMIT => long.store(true, Ordering::Relaxed),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "a WAL checkpoint failed; the next one retries"),
        }
    }
}

/// Copies what it can of the WAL back into the database without waiting for
/// the writer or the readers; returns how many frames the WAL holds.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
}

type WriteJob = (Arc<str>, Vec<Statement>, Reply<Vec<Outcome>>);
type JobResult = Result<Vec<Outcome>, StoreError>;

fn storage(context: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError::Storage(format!("{context}: {e}"))
}

impl Writer {
    fn run(&mut self, job: Job) {
        match job {
            Job::Write { .. } => unreachable!("writes are grouped by the loop"),
            Job::Migrate {
                namespace,
                migrations,
                reply,
            } => {
                self.determinism.set_now();
                let result = self.in_transaction(|w| w.migrate(&namespace, &migrations));
                let _ = reply.send(result);
            }
            Job::Apply { .. } | Job::Flush { .. } => unreachable!("run by the loop"),
            Job::Restore { path, reply } => {
                let _ = reply.send(self.restore(&path));
            }
            Job::AppliedState { reply } => {
                let _ = reply.send(self.applied_state());
            }
        }
    }

    /// Runs `f` in a write transaction; commits on success, rolls back on
    /// error.
    fn in_transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Writer) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.guard.set_mode(Mode::System);
        self.conn
            .exec_cached("BEGIN IMMEDIATE")
            .map_err(storage("cannot start a write transaction"))?;
        match f(self) {
            Ok(v) => {
                self.guard.set_mode(Mode::System);
                match self.conn.exec_cached("COMMIT") {
                    Ok(()) => Ok(v),
                    Err(e) => {
                        let _ = self.conn.execute_batch("ROLLBACK");
                        Err(StoreError::Storage(format!("commit failed: {e}")))
                    }
                }
            }
            Err(e) => {
                self.guard.set_mode(Mode::System);
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                Err(e)
            }
        }
    }

    /// Runs `statements` of `namespace` in a savepoint: all or nothing.
    fn run_job(
        &mut self,
        namespace: &str,
        statements: &[Statement],
    ) -> Result<JobResult, StoreError> {
        self.guard.set_mode(Mode::System);
        self.conn
            .exec_cached("SAVEPOINT job")
            .map_err(storage("cannot open a savepoint"))?;
        self.guard.set_mode(Mode::Service {
            namespace: namespace.to_owned(),
            write: true,
        });
        let mut outcomes = Vec::with_capacity(statements.len());
        let mut failure = None;
        for statement in statements {
            match run_statement(&self.conn, &self.guard, namespace, statement, true) {
                Ok(o) => outcomes.push(o),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        self.guard.set_mode(Mode::System);
        let undo = if failure.is_some() {
            self.conn
                .exec_cached("ROLLBACK TO job")
                .and_then(|()| self.conn.exec_cached("RELEASE job"))
        } else {
            self.conn.exec_cached("RELEASE job")
        };
        // An error here means SQLite rolled the whole transaction back.
        undo.map_err(storage("the transaction was aborted"))?;
        Ok(failure.map_or(Ok(outcomes), Err))
    }

    /// Runs every queued write in one transaction, one savepoint each,
    /// commits, and only then replies.
    fn commit_group(&mut self, writes: &mut Vec<WriteJob>) {
        if writes.is_empty() {
            return;
        }
        self.commit_applies_logged();
        let started = Instant::now();
        let jobs = std::mem::take(writes);
        let batch = jobs.len();
        let mut replies = Vec::with_capacity(batch);
        let result = self.in_transaction(|w| {
            let mut results = Vec::with_capacity(batch);
            for (namespace, statements, reply) in jobs {
                let job_started = Instant::now();
                w.determinism.set_now();
                let result = w.run_job(&namespace, &statements);
                w.metrics
                    .observe_statement(&namespace, "write", job_started.elapsed());
                match result {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        replies.push(reply);
                        return Err(e);
                    }
                }
                replies.push(reply);
            }
            Ok(results)
        });
        match result {
            Ok(results) => {
                self.metrics
                    .observe_commit(started.elapsed(), batch, started.elapsed());
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(e) => {
                // Nothing of this batch is durable: every write fails.
                tracing::error!(error = %e, batch, "group commit failed; no write of this batch is acknowledged");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Applies Raft entries: each proposal runs once (a retried request id
    /// returns the recorded result), and the log position and membership are
    /// written in the same transaction as the data. The transaction may stay
    /// open for later entries (see `APPLY_COMMIT_INTERVAL`).
    fn apply(&mut self, entries: Vec<ApplyEntry>) -> Result<Vec<EntryResults>, StoreError> {
        if let Some(lost) = &self.lost_applies {
            return Err(lost.clone());
        }
        let started = Instant::now();
        self.guard.set_mode(Mode::System);
        let since = match self.open_apply {
            Some(_) if self.conn.is_autocommit() => {
                return Err(self.lose_applies("SQLite ended the transaction on its own"));
            }
            Some(since) => since,
            None => {
                self.conn
                    .exec_cached("BEGIN IMMEDIATE")
                    .map_err(storage("cannot start a write transaction"))?;
                started
            }
        };
        // Marked before any reply: a reader that learns of these entries
        // finds the flag set and commits them first.
        self.open_apply = Some(since);
        self.waiting_entries += entries.len();
        self.unflushed.store(true, Ordering::SeqCst);
        match self.apply_entries(&entries) {
            Ok(results) => {
                if !self.defer_commits || since.elapsed() >= APPLY_COMMIT_INTERVAL {
                    self.commit_applies()?;
                }
                Ok(results)
            }
            // The entries before these, applied but not committed, go too:
            // the store stops applying (Raft treats the error as fatal and
            // applies them again from its log on restart).
            Err(e) => Err(self.lose_applies(&e.to_string())),
        }
    }

    /// Rolls back the waiting applies and refuses every later apply, read
    /// and snapshot (see `lost_applies`).
    fn lose_applies(&mut self, why: &str) -> StoreError {
        self.guard.set_mode(Mode::System);
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.open_apply = None;
        self.waiting_entries = 0;
        let lost = StoreError::Storage(format!(
            "applied entries were lost ({why}); restart the node to apply them again from the Raft log"
        ));
        self.lost_applies = Some(lost.clone());
        lost
    }

    /// Commits the applies waiting in the open transaction, if any.
    fn commit_applies(&mut self) -> Result<(), StoreError> {
        if let Some(lost) = &self.lost_applies {
            return Err(lost.clone());
        }
        let Some(since) = self.open_apply else {
            return Ok(());
        };
        if self.conn.is_autocommit() {
            return Err(self.lose_applies("SQLite ended the transaction on its own"));
        }
        self.guard.set_mode(Mode::System);
        let started = Instant::now();
        if let Err(e) = self.conn.exec_cached("COMMIT") {
            return Err(self.lose_applies(&format!("the commit failed: {e}")));
        }
        self.metrics
            .observe_commit(started.elapsed(), self.waiting_entries, since.elapsed());
        self.open_apply = None;
        self.waiting_entries = 0;
        self.unflushed.store(false, Ordering::SeqCst);
        // Copy back the little the checkpointer has not: with the WAL fully
        // copied, the next transaction starts it over.
        if self.wal_long.swap(false, Ordering::Relaxed)
            && let Err(e) = passive_checkpoint(&self.conn)
        {
            tracing::warn!(error = %e, "the WAL could not be rewound; the checkpointer asks again");
        }
        Ok(())
    }

    /// `commit_applies` where nobody waits for the outcome: a failure is
    /// logged, and the next apply or read reports it.
    fn commit_applies_logged(&mut self) {
        if let Err(e) = self.commit_applies() {
            tracing::error!(error = %e, "the state machine stopped");
        }
    }

    /// The body of `apply`, in the open transaction.
    fn apply_entries(&mut self, entries: &[ApplyEntry]) -> Result<Vec<EntryResults>, StoreError> {
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut entry_results = Vec::with_capacity(entry.proposals.len());
            for p in &entry.proposals {
                entry_results.push(self.apply_proposal(p)?);
            }
            results.push(entry_results);
        }
        // The position recorded is the last entry's, and the membership its
        // last membership change.
        self.guard.set_mode(Mode::System);
        let record = |key: &str, value: &[u8], what: &str| {
            self.conn
                .prepare_cached(
                    "INSERT INTO raft__state (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute(rusqlite::params![key, value]))
                .map_err(|e| StoreError::Storage(format!("cannot record the {what}: {e}")))
        };
        if let Some(last) = entries.last() {
            record("applied", &last.log_id, "applied log id")?;
        }
        if let Some(m) = entries.iter().rev().find_map(|e| e.membership.as_ref()) {
            record("membership", m, "membership")?;
        }
        // Retries arrive within seconds (a writer gives up after
        // `LEADER_WAIT`); keep ten minutes of request ids.
        if let Some(newest) = entries
            .iter()
            .flat_map(|e| e.proposals.iter().map(|p| p.time_ms))
            .max()
        {
            self.conn
                .prepare_cached("DELETE FROM raft__requests WHERE time_ms < ?1")
                .and_then(|mut s| s.execute([newest - 600_000]))
                .map_err(storage("cannot purge old request ids"))?;
        }
        Ok(results)
    }

    fn apply_proposal(&mut self, p: &Proposal) -> Result<Result<Applied, StoreError>, StoreError> {
        self.guard.set_mode(Mode::System);
        let seen: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT result FROM raft__requests WHERE request_id = ?1")
            .and_then(|mut s| s.query_row([&p.request_id], |r| r.get(0)).optional())
            .map_err(storage("cannot look up the request id"))?;
        if let Some(seen) = seen {
            return serde_json::from_slice(&seen)
                .map_err(|e| StoreError::Storage(format!("a recorded result is unreadable: {e}")));
        }
        self.determinism.set(p.time_ms, p.seed);
        let result = match &p.command {
            Command::Write {
                namespace,
                statements,
            } => {
                let started = Instant::now();
                let r = self.run_job(namespace, statements)?.map(Applied::Outcomes);
                self.metrics
                    .observe_statement(namespace, "write", started.elapsed());
                r
            }
            Command::Migrate {
                namespace,
                migrations,
            } => self.migrate(namespace, migrations).map(Applied::Migrated),
        };
        if self.conn.is_autocommit() {
            // SQLite rolled everything back (a full disk, an I/O error):
            // nothing more may be written outside the transaction.
            return Err(StoreError::Storage(
                "SQLite rolled the apply transaction back".into(),
            ));
        }
        self.guard.set_mode(Mode::System);
        let encoded =
            serde_json::to_vec(&result).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO raft__requests (request_id, result, time_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![p.request_id, encoded, p.time_ms]))
            .map_err(storage("cannot record the request id"))?;
        Ok(result)
    }

    fn applied_state(&mut self) -> Result<AppliedState, StoreError> {
        self.guard.set_mode(Mode::System);
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            self.conn
                .query_row("SELECT value FROM raft__state WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .map(Some)
                .or_else(|e| match e {
                    rusqlite::Error::QueryReturnedNoRows => Ok(None),
                    e => Err(e),
                })
                .map_err(storage("cannot read the applied state"))
        };
        Ok((get("applied")?, get("membership")?))
    }

    /// Replaces the whole database with the one at `path` (a received
    /// snapshot), page by page through SQLite's backup API, in place, so
    /// open readers see the new content.
    fn restore(&mut self, path: &Path) -> Result<(), StoreError> {
        let source = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(storage("cannot open the received snapshot"))?;
        let ok: String = source
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(storage("cannot check the received snapshot"))?;
        if ok != "ok" {
            return Err(StoreError::Storage(format!(
                "the received snapshot is corrupt: {ok}"
            )));
        }
        {
            let backup = rusqlite::backup::Backup::new(&source, &mut self.conn)
                .map_err(storage("cannot start restoring the snapshot"))?;
            backup
                .run_to_completion(1024, std::time::Duration::ZERO, None)
                .map_err(storage("cannot restore the snapshot"))?;
        }
        self.conn.flush_prepared_statement_cache();
        Ok(())
    }

    /// Applies the migrations of `namespace` not applied yet, each in a
    /// savepoint of the open transaction, with its bookkeeping row.
    fn migrate(
        &mut self,
        namespace: &str,
        migrations: &[MigrationSpec],
    ) -> Result<usize, StoreError> {
        let sys = storage("migration bookkeeping failed");
        self.guard.set_mode(Mode::System);
        let applied: Vec<(u32, String, String)> = {
            let mut stmt = self
                .conn
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
            self.guard.set_mode(Mode::System);
            self.conn
                .execute_batch("SAVEPOINT migration")
                .map_err(&sys)?;
            let result = apply_migration(&self.conn, &self.guard, namespace, m);
            self.guard.set_mode(Mode::System);
            if let Err(e) = result {
                let _ = self
                    .conn
                    .execute_batch("ROLLBACK TO migration; RELEASE migration");
                return Err(e);
            }
            self.conn
                .execute(
                    "INSERT INTO sys__migrations (namespace, version, name, checksum) VALUES (?1, ?2, ?3, ?4)",
                    rusqlite::params![namespace, m.version, m.name, checksum(&m.sql)],
                )
                .map_err(&sys)?;
            self.conn.execute_batch("RELEASE migration").map_err(&sys)?;
            count += 1;
        }
        Ok(count)
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
    guard.set_mode(Mode::Service {
        namespace: namespace.to_owned(),
        write: true,
    });
    let mut batch = rusqlite::Batch::new(conn, &m.sql);
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
