//! The node's one SQLite database, shared by every service through
//! namespace-bound handles.
//!
//! * One writer thread owns the only read-write connection (`writer`). It
//!   commits concurrent writes together (group commit): every write call in
//!   a batch runs in its own savepoint inside one transaction, and the
//!   replies are sent only after `COMMIT` returned, which in WAL mode with
//!   `synchronous=FULL` means after fsync. A local write is never
//!   acknowledged before it is durable; a replicated one is durable in the
//!   Raft log before it is applied here.
//! * A small pool of read-only connections serves reads concurrently (WAL).
//! * A Raft state machine's applies may share one transaction for up to
//!   `APPLY_COMMIT_INTERVAL`: the Raft log is the durable record, so the
//!   commit only makes them visible to the readers, and a read commits what
//!   is pending before it runs (see `Store::read_local`). Its WAL is copied
//!   back by a checkpointer thread, so the writer does not wait for that.
//! * No statement can end or poison a shared transaction: the few that
//!   could are refused by `sql`, and a unit of work that still ends one
//!   fails alone while the rest runs again (see `writer`).
//! * No namespace keeps the writer from the others: one whose write calls
//!   run long waits its turn while others' calls wait (see `share`).
//! * A service gets a [`Namespace`] handle, never a connection. Every
//!   statement it sends is checked by `sql`, compiled under the
//!   [`authorizer::Guard`] for its namespace, and metered against the
//!   namespace's [`Budget`]. Every view and trigger a namespace defines is
//!   checked by `schema` when it is made.
//!
//! **Architecture Invariant:** this crate knows nothing about HTTP, gRPC,
//! Raft or services; it knows namespaces and statements. It is a crate of
//! its own so that a service, which sees only flotilla's service API, has no
//! path to `Store::open` or a raw connection.

#![forbid(unsafe_code)]

mod authorizer;
pub mod backup;
mod budget;
mod connection;
pub mod fault;
mod marks;
mod metrics;
mod schema;
mod share;
mod sql;
mod value;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
    time::Instant,
};

use futures_util::future::BoxFuture;
use rusqlite::{Connection, OpenFlags, OptionalExtension, ffi::ErrorCode};
use tokio::sync::{Semaphore, oneshot};

pub use budget::{Budget, ReadBudget, WriteBudget};
pub use connection::{Durability, now_ms};
pub use schema::Migration;
pub use value::{Applied, Command, MigrationSpec, Outcome, Proposal, ReadCall, Statement, Value};

pub use metrics::StoreMetrics;

use authorizer::{Guard, Mode};
use budget::Meter;
use connection::{open_reader, open_writer, run_statement, storage};
use writer::{Job, Reply, WriteJob, Writer};

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "flotilla.db";

#[derive(Clone, Debug, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    #[error("statement denied in namespace `{namespace}`: {reason}")]
    Denied { namespace: String, reason: String },
    #[error("over budget in namespace `{namespace}`: {reason}")]
    Budget { namespace: String, reason: String },
    #[error("constraint violated: {0}")]
    Constraint(String),
    #[error("invalid statement: {0}")]
    Invalid(String),
    #[error("storage failure: {0}")]
    Storage(String),
    /// A replicated store could not take the call now (no leader, no
    /// quorum, a copy catching up): retry later.
    #[error("storage failure: {0}")]
    Unavailable(String),
    /// A replicated write reached a leader and no outcome came back in
    /// time: it may still be applied (once: its request id). The caller
    /// must not report it as not done.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("the store is shut down")]
    Closed,
}

impl StoreError {
    /// `file`: the database the statement ran on, named in a machine's
    /// fault.
    fn from_sqlite(err: rusqlite::Error, guard: &Guard, namespace: &str, file: &str) -> Self {
        // A denial can surface as SQLITE_AUTH or, for functions, as a plain
        // SQLITE_ERROR; the guard remembers which rule was broken either way.
        if let Some(reason) = guard.take_denial() {
            return StoreError::Denied {
                namespace: namespace.to_owned(),
                reason,
            };
        }
        let code = match &err {
            rusqlite::Error::SqliteFailure(e, _) => Some(e.code),
            _ => None,
        };
        if code == Some(ErrorCode::OperationInterrupted)
            && let Some(reason) = guard.take_exceeded()
        {
            return StoreError::Budget {
                namespace: namespace.to_owned(),
                reason,
            };
        }
        // A missing object outside the namespace gets the same refusal as
        // an existing one: a refusal reveals nothing of other namespaces.
        let message = err.to_string();
        if let Some((what, name)) = sql::missing_object(&message) {
            let lower = name.to_ascii_lowercase();
            if !lower.starts_with(&format!("{namespace}__")) {
                return StoreError::Denied {
                    namespace: namespace.to_owned(),
                    reason: sql::outside_namespace(what, &lower, namespace),
                };
            }
        }
        match code {
            Some(ErrorCode::TooBig) if let Some(reason) = guard.too_big() => StoreError::Budget {
                namespace: namespace.to_owned(),
                reason,
            },
            Some(ErrorCode::AuthorizationForStatementDenied) => StoreError::Denied {
                namespace: namespace.to_owned(),
                reason: message,
            },
            Some(ErrorCode::ConstraintViolation) => StoreError::Constraint(message),
            // What the machine decides, not the statement: it may differ
            // between replicas, so it must never count as the statement's
            // result (see `writer`).
            Some(
                ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::CannotOpen
                | ErrorCode::NotADatabase
                | ErrorCode::OutOfMemory
                | ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::OperationInterrupted
                | ErrorCode::OperationAborted
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::InternalMalfunction
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::NoLargeFileSupport,
            ) => StoreError::Storage(fault::describe(file, "cannot run the statement", &err)),
            _ => StoreError::Invalid(message),
        }
    }
}

/// Where a replicated store sends writes, reads and migrations instead of
/// running them locally: the cluster (Raft) implements it. A store without
/// one is a single node's.
pub trait Replicator: Send + Sync + 'static {
    fn write(&self, command: Command) -> BoxFuture<'static, Result<Applied, StoreError>>;
    fn read(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>>;
    /// A read from this node's copy, refused if the copy may lag more than
    /// the configured bound.
    fn read_stale(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>>;
    /// A read from this node's copy whatever its age, even cut off from
    /// the cluster (what etcd calls a serializable read); the copy's
    /// applied index comes with it. A replicator without a copy of its own
    /// reads as `read_stale` does.
    fn read_local_copy(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>> {
        self.read_stale(call)
    }
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

/// The `raft__state` key of the Raft group a member's database belongs to.
pub const GROUP_MARK: &str = "group";
/// The `raft__state` key of the backup a database was restored from to seed
/// a new group (`RestoreAs::NewGroupMember`).
pub const SEED_MARK: &str = "seed";

/// What a database says about its place in a Raft group: whether its data
/// came from a group's log, a backup, or neither.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupMarks {
    /// The last applied log id (opaque bytes), if any entry was applied.
    pub applied: Option<Vec<u8>>,
    /// The group it belongs to.
    pub group: Option<String>,
    /// The backup it was restored from, to seed a new group.
    pub seed: Option<String>,
    /// Whether it holds anything beyond the empty bookkeeping tables.
    pub has_data: bool,
}

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

struct Reader {
    conn: Connection,
    guard: Guard,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    /// Set while applied entries wait uncommitted (invisible to readers).
    unflushed: Arc<AtomicBool>,
    /// Set when the store becomes replicated; taken away when the last
    /// member of a group turns back into a single node.
    replicator: std::sync::RwLock<Option<Arc<dyn Replicator>>>,
    readers: Mutex<Vec<Reader>>,
    reader_slots: Semaphore,
    metrics: StoreMetrics,
    path: PathBuf,
    /// Per watched namespace, a counter bumped when applied entries write
    /// to it (`Store::namespace_changes`).
    changes: Mutex<std::collections::HashMap<String, tokio::sync::watch::Sender<u64>>>,
    /// Dropped with the store, which stops the checkpointer thread.
    _checkpointer: Option<mpsc::Sender<()>>,
}

/// The store of one node. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) the database in `config.data_dir` and
    /// starts the writer thread.
    pub fn open(config: &StoreConfig, metrics: StoreMetrics) -> Result<Store, StoreError> {
        let path = config.data_dir.join(DB_FILE);
        let file = path.display().to_string();
        let storage =
            |e: rusqlite::Error| StoreError::Storage(fault::describe(&file, "cannot open", &e));
        let determinism = connection::Determinism::default();
        let writer_guard = Guard::new();
        let writer = open_writer(&path, config.durability, &writer_guard, determinism.clone())
            .map_err(storage)?;
        fault::check(&writer, &file).map_err(StoreError::Storage)?;
        writer
            .execute_batch(schema::SYSTEM_TABLES)
            .map_err(storage)?;
        let mut readers = Vec::with_capacity(config.readers);
        for _ in 0..config.readers.max(1) {
            let guard = Guard::new();
            let conn = open_reader(&path, &guard).map_err(storage)?;
            readers.push(Reader { conn, guard });
        }
        let wal_long = Arc::new(AtomicBool::new(false));
        let checkpointer = if config.durability == Durability::ReplayedFromLog {
            let conn = Connection::open(&path).map_err(storage)?;
            let (stop, stopped) = mpsc::channel();
            let long = wal_long.clone();
            thread::Builder::new()
                .name("store-checkpoint".into())
                .spawn(move || writer::checkpointer(&conn, &stopped, &long))
                .map_err(|e| {
                    StoreError::Storage(format!("cannot start the checkpoint thread: {e}"))
                })?;
            Some(stop)
        } else {
            None
        };
        let (tx, rx) = mpsc::channel();
        let unflushed = Arc::new(AtomicBool::new(false));
        let writer = Writer::new(
            writer,
            writer_guard,
            determinism,
            metrics.clone(),
            config.durability == Durability::ReplayedFromLog,
            unflushed.clone(),
            wal_long,
        );
        thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer::writer_loop(writer, rx))
            .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                jobs: tx,
                unflushed,
                replicator: std::sync::RwLock::new(None),
                reader_slots: Semaphore::new(readers.len()),
                readers: Mutex::new(readers),
                metrics,
                path,
                changes: Mutex::default(),
                _checkpointer: checkpointer,
            }),
        })
    }

    /// A receiver marked changed each time entries applied here (Raft's
    /// state machine) write to `namespace`, or a snapshot replaces the
    /// database: what a reader of the namespace waits on instead of polling.
    /// A read after the change sees it (reads commit what was applied).
    pub fn namespace_changes(&self, namespace: &str) -> tokio::sync::watch::Receiver<u64> {
        self.inner
            .changes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(namespace.to_owned())
            .or_insert_with(|| tokio::sync::watch::channel(0).0)
            .subscribe()
    }

    /// The namespaces `entries` write to that someone watches, each once:
    /// taken before the entries go to the writer, without copying the
    /// names nobody watches (every write passes here).
    fn watched(&self, entries: &[ApplyEntry]) -> Vec<String> {
        let changes = self.inner.changes.lock().unwrap_or_else(|p| p.into_inner());
        if changes.is_empty() {
            return Vec::new();
        }
        let mut watched: Vec<String> = Vec::new();
        for p in entries.iter().flat_map(|e| &e.proposals) {
            let name = p.command.namespace();
            if changes.contains_key(name) && !watched.iter().any(|w| w == name) {
                watched.push(name.to_owned());
            }
        }
        watched
    }

    /// Marks `namespaces` (all, with `None`) changed for their watchers.
    fn changed(&self, namespaces: Option<&[String]>) {
        let changes = self.inner.changes.lock().unwrap_or_else(|p| p.into_inner());
        let bump = |tx: &tokio::sync::watch::Sender<u64>| tx.send_modify(|n| *n += 1);
        match namespaces {
            Some(names) => names.iter().filter_map(|n| changes.get(n)).for_each(bump),
            None => changes.values().for_each(bump),
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// A handle bound to `namespace`, within [`Budget::SYSTEM`]: for
    /// flotilla's own namespaces.
    pub fn namespace(&self, namespace: &str) -> Namespace {
        self.namespace_within(namespace, Budget::SYSTEM)
    }

    /// A handle bound to `namespace` whose every call keeps to `budget`: a
    /// service's. The handle cannot change its budget.
    pub fn namespace_within(&self, namespace: &str, budget: Budget) -> Namespace {
        Namespace {
            name: Arc::from(namespace),
            store: self.clone(),
            budget,
        }
    }
}

/// A service's view of the store: statements run under its namespace, within
/// its budget.
#[derive(Clone)]
pub struct Namespace {
    name: Arc<str>,
    store: Store,
    budget: Budget,
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

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Runs `statements` atomically in one transaction and returns what each
    /// produced. Returns only after the transaction is durable (on a quorum,
    /// when the store is replicated). If any statement fails, none of them
    /// has any effect.
    pub async fn write(&self, statements: Vec<Statement>) -> Result<Vec<Outcome>, StoreError> {
        if let Some(r) = self.store.replicator() {
            let command = Command::Write {
                namespace: self.name.to_string(),
                statements,
                budget: self.budget.write,
            };
            return match r.write(command).await? {
                Applied::Outcomes(o) => Ok(o),
                Applied::Migrated(_) => Err(unexpected("a write")),
            };
        }
        let namespace = self.name.clone();
        let budget = self.budget.write;
        self.store
            .job(|reply| {
                Job::Write(WriteJob {
                    namespace,
                    statements,
                    budget,
                    reply,
                })
            })
            .await
    }

    fn call(&self, statement: Statement) -> ReadCall {
        ReadCall {
            namespace: self.name.to_string(),
            statement,
            budget: self.budget.read,
        }
    }

    /// Runs one read-only statement. Linearizable when the store is
    /// replicated (through the leader's read index).
    pub async fn read(&self, statement: Statement) -> Result<Outcome, StoreError> {
        let call = self.call(statement);
        if let Some(r) = self.store.replicator() {
            return r.read(call).await;
        }
        self.store.read_local(call).await
    }

    /// Runs one read-only statement on this node's copy without asking the
    /// leader: faster, and possibly behind by up to the cluster's
    /// `stale_read_max_lag_ms` (refused beyond it). The same as `read` on a
    /// single node.
    pub async fn read_stale(&self, statement: Statement) -> Result<Outcome, StoreError> {
        let call = self.call(statement);
        if let Some(r) = self.store.replicator() {
            return r.read_stale(call).await;
        }
        self.store.read_local(call).await
    }

    /// Runs one read-only statement on this node's copy whatever its age,
    /// even when this node is cut off from the cluster; in a cluster the
    /// outcome carries the log index the copy had applied. The same as
    /// `read` on a single node.
    /// Marked changed each time entries applied on this node write to the
    /// namespace (a db member's copy; see `Store::namespace_changes`).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.namespace_changes(&self.name)
    }

    pub async fn read_local_copy(&self, statement: Statement) -> Result<Outcome, StoreError> {
        let call = self.call(statement);
        if let Some(r) = self.store.replicator() {
            return r.read_local_copy(call).await;
        }
        self.store.read_local(call).await
    }

    /// Applies the migrations not applied yet, in order, in one transaction
    /// with their bookkeeping rows, and checks every view and trigger of the
    /// namespace. Returns how many were applied.
    pub async fn migrate(&self, migrations: &[Migration]) -> Result<usize, StoreError> {
        let migrations: Vec<MigrationSpec> = migrations.iter().map(MigrationSpec::from).collect();
        if let Some(r) = self.store.replicator() {
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

    fn replicator(&self) -> Option<Arc<dyn Replicator>> {
        self.inner
            .replicator
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Makes this store replicated: from now on, every namespace's writes,
    /// reads and migrations go through `replicator`. Set once, at start (or
    /// when a single node forms a group).
    pub fn set_replicator(&self, replicator: Arc<dyn Replicator>) -> Result<(), StoreError> {
        let mut slot = self
            .inner
            .replicator
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(StoreError::Invalid(
                "the store already has a replicator".into(),
            ));
        }
        *slot = Some(replicator);
        Ok(())
    }

    /// Makes this store a single node's again: from now on, writes and
    /// reads go to this database directly, each write durable on its own
    /// (`Durability::Full`). For the last member of a group that leaves it.
    pub async fn stop_replicating(&self) -> Result<(), StoreError> {
        self.job(|reply| Job::Durability {
            durability: Durability::Full,
            reply,
        })
        .await?;
        *self
            .inner
            .replicator
            .write()
            .unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
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
            reader.guard.unmeter();
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

    /// Runs one read-only statement on a local reader, whatever the
    /// replication: the replicator's own read path. It sees every entry
    /// applied before it was called.
    pub async fn read_local(&self, call: ReadCall) -> Result<Outcome, StoreError> {
        self.flush().await?;
        let metrics = self.inner.metrics.clone();
        self.with_reader(move |reader| {
            let started = Instant::now();
            reader.guard.set_mode(Mode::Service {
                namespace: call.namespace.clone(),
                write: false,
            });
            reader.guard.meter(Meter::read(&call.budget));
            let result = run_statement(
                &reader.conn,
                &reader.guard,
                &call.namespace,
                &call.statement,
                false,
            )
            .map(|ran| ran.outcome);
            metrics.observe_statement(&call.namespace, "read", started.elapsed());
            match &result {
                Err(StoreError::Denied { .. }) => {
                    metrics.observe_refusal(&call.namespace, "denied")
                }
                Err(StoreError::Budget { .. }) => {
                    metrics.observe_refusal(&call.namespace, "budget")
                }
                _ => {}
            }
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
        let watched = self.watched(&entries);
        let results = self.job(|reply| Job::Apply { entries, reply }).await;
        if !watched.is_empty() {
            self.changed(Some(&watched));
        }
        results
    }

    /// The last applied log id and membership, as recorded with the data.
    pub async fn applied_state(&self) -> Result<AppliedState, StoreError> {
        self.job(|reply| Job::AppliedState { reply }).await
    }

    /// What the database says about its Raft group (see [`GroupMarks`]).
    pub async fn group_marks(&self) -> Result<GroupMarks, StoreError> {
        self.job(|reply| Job::GroupMarks { reply }).await
    }

    /// Records (or, with `None`, forgets) one of the group marks
    /// ([`GROUP_MARK`], [`SEED_MARK`]), durably.
    pub async fn set_group_mark(
        &self,
        key: &'static str,
        value: Option<String>,
    ) -> Result<(), StoreError> {
        self.job(|reply| Job::SetGroupMark { key, value, reply })
            .await
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
            let file = path.display().to_string();
            reader
                .conn
                .execute("VACUUM INTO ?1", [path.to_string_lossy()])
                .map_err(storage(&file, "cannot copy the database into a snapshot"))?;
            std::fs::File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(|e| StoreError::Storage(format!("cannot sync the snapshot: {e}")))?;
            let copy = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(storage(&file, "cannot open the snapshot"))?;
            let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
                copy.query_row("SELECT value FROM raft__state WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(storage(&file, "cannot read the snapshot's state"))
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
        let result = self.job(|reply| Job::Restore { path, reply }).await;
        self.changed(None);
        result
    }
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
