//! The writer thread: the only read-write connection, its group commit, the
//! Raft state machine's applies, and the checkpointer beside it.
//!
//! Work shares transactions: concurrent local writes share one commit, and a
//! state machine's applies share one for up to `APPLY_COMMIT_INTERVAL`. Each
//! unit of work (a write call, a proposal) runs in its own savepoint, so
//! that its failure undoes only its own effects. A few failures end the
//! whole transaction instead, taking the other units' work with them: a
//! `ROLLBACK` conflict resolution in a schema object made before such
//! clauses were refused, and an interrupted write (its budget). Both are
//! decided by the unit's own statements, identically on every replica, so
//! the unit fails and the transaction runs again without it: no other
//! write is lost or refused, and every replica ends in the same state.
//! Failures that are not the statements' own (I/O, a full disk) stop the
//! state machine instead, and Raft applies its entries again after a
//! restart.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{
    AppliedState, ApplyEntry, EntryResults, GroupMarks, StoreError,
    authorizer::{Guard, Mode},
    budget::MAX_VALUE_BYTES,
    budget::{Meter, WriteBudget},
    connection::{Determinism, ExecCached, fresh_stamp, run_statement, set_value_limit, storage},
    fault::{describe, file_of},
    marks, schema,
    share::Shares,
    value::{Applied, Command, MigrationSpec, Outcome, Proposal, Statement},
};
use crate::metrics::StoreMetrics;

/// Jobs the writer takes into one transaction at most.
const MAX_BATCH: usize = 1024;
/// How long applied Raft entries may wait in an open transaction for later
/// ones to share its commit (see the store's documentation).
pub(super) const APPLY_COMMIT_INTERVAL: Duration = Duration::from_millis(50);
/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);
/// A WAL longer than this many frames (64 MiB of 4 KiB pages) is rewound:
/// the writer checkpoints what the checkpointer has not copied yet, and its
/// next transaction starts the WAL over (see `Writer::commit_applies`).
const WAL_FRAMES_LIMIT: i64 = 16_384;

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// A service's write call.
pub(super) struct WriteJob {
    pub namespace: Arc<str>,
    pub statements: Vec<Statement>,
    pub budget: WriteBudget,
    pub reply: Reply<Vec<Outcome>>,
}

pub(super) enum Job {
    Write(WriteJob),
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
        path: std::path::PathBuf,
        reply: Reply<()>,
    },
    AppliedState {
        reply: Reply<AppliedState>,
    },
    GroupMarks {
        reply: Reply<GroupMarks>,
    },
    Durability {
        durability: crate::Durability,
        reply: Reply<()>,
    },
    SetGroupMark {
        key: &'static str,
        value: Option<String>,
        reply: Reply<()>,
    },
    /// Commits the applies waiting in an open transaction, if any.
    Flush {
        reply: Reply<()>,
    },
}

/// How one unit of work (a write call, a proposal) ended.
enum Unit<T> {
    /// It ran, and its savepoint kept or undid its effects alone.
    Done(Result<T, StoreError>),
    /// Its own statements ended the transaction it shared (see the module
    /// documentation): it failed with this error, and every other unit of
    /// the transaction must run again.
    Ended(StoreError),
}

/// A proposal that ended the apply transaction: its request id and error.
type Ended = (String, StoreError);

/// What each write call of a group produced.
type GroupResults = Vec<Result<Vec<Outcome>, StoreError>>;

/// The writer thread's state: the only read-write connection.
pub(super) struct Writer {
    conn: Connection,
    /// The database file, for messages.
    file: String,
    guard: Guard,
    determinism: Determinism,
    metrics: StoreMetrics,
    /// Since when applied entries have waited in the open transaction; None
    /// when no apply transaction is open.
    open_apply: Option<Instant>,
    /// The entries applied in the open transaction: applied again if a
    /// proposal ends it.
    uncommitted: Vec<ApplyEntry>,
    /// Proposals that ended the open transaction: applied again as failed.
    ended: HashMap<String, StoreError>,
    /// Whether applies may wait for a later commit (a Raft state machine).
    defer_commits: bool,
    /// Why waiting applies were lost (a failed commit, or SQLite rolling
    /// the transaction back on its own): this store then refuses every later
    /// apply, read and snapshot until it is reopened, and Raft applies them
    /// again from its log.
    lost_applies: Option<StoreError>,
    /// Shared with the readers: whether applies wait uncommitted. Stays set
    /// once they are lost, so that reads report it.
    unflushed: Arc<AtomicBool>,
    /// Set by the checkpointer when the WAL should be rewound.
    wal_long: Arc<AtomicBool>,
    /// Which namespaces' local writes wait for their turn (see `share`).
    shares: Shares,
}

impl Writer {
    pub fn new(
        conn: Connection,
        guard: Guard,
        determinism: Determinism,
        metrics: StoreMetrics,
        defer_commits: bool,
        unflushed: Arc<AtomicBool>,
        wal_long: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            file: file_of(&conn).to_owned(),
            conn,
            guard,
            determinism,
            metrics,
            open_apply: None,
            uncommitted: Vec::new(),
            ended: HashMap::new(),
            defer_commits,
            lost_applies: None,
            unflushed,
            wal_long,
            shares: Shares::default(),
        }
    }
}

pub(super) fn writer_loop(mut w: Writer, jobs: mpsc::Receiver<Job>) {
    let mut writes = Vec::with_capacity(MAX_BATCH);
    loop {
        // Wake up for the applies that wait for their commit, and for the
        // writes held back for their turn.
        let wake = [
            w.open_apply.map(|since| since + APPLY_COMMIT_INTERVAL),
            (!writes.is_empty()).then(|| w.shares.next_turn()).flatten(),
        ]
        .into_iter()
        .flatten()
        .min();
        let first = match wake {
            Some(wake) => match jobs.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    w.commit_applies_logged();
                    w.commit_in_turn(&mut writes);
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            },
            None => match jobs.recv() {
                Ok(job) => job,
                Err(mpsc::RecvError) => break,
            },
        };
        let mut next = Some(first);
        while let Some(job) = next.take() {
            match job {
                Job::Write(write) => writes.push(write),
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
        w.commit_in_turn(&mut writes);
    }
    w.commit_group(&mut writes);
    w.commit_applies_logged();
    tracing::debug!("store writer stopped: every handle was dropped");
}

/// Copies the WAL back into the database every `CHECKPOINT_INTERVAL` on its
/// own connection, beside the writer and the readers (a passive checkpoint
/// waits for neither), until `stopped` is closed. Sets `long` when the WAL
/// has grown past `WAL_FRAMES_LIMIT`, for the writer to rewind it.
pub(super) fn checkpointer(conn: &Connection, stopped: &mpsc::Receiver<()>, long: &AtomicBool) {
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

impl StoreError {
    /// Whether the error is decided by the statements alone, identically on
    /// every replica (as opposed to the machine: I/O, a full disk).
    fn is_deterministic(&self) -> bool {
        !matches!(
            self,
            StoreError::Storage(_)
                | StoreError::Unavailable(_)
                | StoreError::OutcomeUnknown(_)
                | StoreError::Closed
        )
    }
}

impl Writer {
    fn run(&mut self, job: Job) {
        match job {
            Job::Write(_) => unreachable!("writes are grouped by the loop"),
            Job::Migrate {
                namespace,
                migrations,
                reply,
            } => {
                let (time, seed) = fresh_stamp();
                self.determinism.set(time, seed);
                let result = self.in_transaction(|w| {
                    schema::migrate(&w.conn, &w.guard, &namespace, &migrations)
                });
                let _ = reply.send(result);
            }
            Job::Apply { .. } | Job::Flush { .. } => unreachable!("run by the loop"),
            Job::Restore { path, reply } => {
                let _ = reply.send(crate::backup::restore_in_place(
                    &mut self.conn,
                    &self.file,
                    &path,
                ));
            }
            Job::AppliedState { reply } => {
                let _ = reply.send(self.applied_state());
            }
            Job::GroupMarks { reply } => {
                let result = self
                    .applied_state()
                    .and_then(|(applied, _)| marks::read(&self.conn, &self.file, applied));
                let _ = reply.send(result);
            }
            Job::SetGroupMark { key, value, reply } => {
                let result = self.in_transaction(|w| marks::set(&w.conn, &w.file, key, value));
                let _ = reply.send(result);
            }
            Job::Durability { durability, reply } => {
                let synchronous = match durability {
                    crate::Durability::Full => "FULL",
                    crate::Durability::ReplayedFromLog => "NORMAL",
                };
                let result = self
                    .conn
                    .pragma_update(None, "synchronous", synchronous)
                    .map_err(storage(&self.file, "cannot change the durability"));
                let _ = reply.send(result);
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
            .map_err(storage(&self.file, "cannot start a write transaction"))?;
        let result = f(self);
        self.guard.set_mode(Mode::System);
        match result {
            Ok(v) => match self.conn.exec_cached("COMMIT") {
                Ok(()) => Ok(v),
                Err(e) => {
                    self.rollback();
                    Err(StoreError::Storage(describe(
                        &self.file,
                        "commit failed",
                        &e,
                    )))
                }
            },
            Err(e) => {
                self.rollback();
                Err(e)
            }
        }
    }

    fn rollback(&mut self) {
        self.guard.set_mode(Mode::System);
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Runs one unit of work in its own savepoint of the open transaction.
    fn unit<T>(
        &mut self,
        work: impl FnOnce(&mut Writer) -> Result<T, StoreError>,
    ) -> Result<Unit<T>, StoreError> {
        self.guard.set_mode(Mode::System);
        self.conn
            .exec_cached("SAVEPOINT unit")
            .map_err(storage(&self.file, "cannot open a savepoint"))?;
        let result = work(self);
        self.guard.set_mode(Mode::System);
        self.guard.unmeter();
        set_value_limit(&self.conn, MAX_VALUE_BYTES as i32)
            .map_err(storage(&self.file, "cannot reset the length limit"))?;
        if self.conn.is_autocommit() {
            return match result {
                Err(e) if e.is_deterministic() => Ok(Unit::Ended(e)),
                Err(e) => Err(StoreError::Storage(format!(
                    "SQLite ended the transaction: {e}"
                ))),
                Ok(_) => Err(StoreError::Storage(
                    "SQLite ended the transaction on its own".into(),
                )),
            };
        }
        let close = match result {
            Ok(_) => self.conn.exec_cached("RELEASE unit"),
            Err(_) => self
                .conn
                .exec_cached("ROLLBACK TO unit")
                .and_then(|()| self.conn.exec_cached("RELEASE unit")),
        };
        close.map_err(storage(&self.file, "cannot close a savepoint"))?;
        Ok(Unit::Done(result))
    }

    /// A service's write call: its statements in order, metered against
    /// its budget. A statement that changes the schema is followed by the
    /// check of the namespace's views and triggers.
    fn run_statements(
        &mut self,
        namespace: &str,
        statements: &[Statement],
        budget: &WriteBudget,
    ) -> Result<Vec<Outcome>, StoreError> {
        let meter = Meter::write(budget);
        set_value_limit(&self.conn, meter.value_limit())
            .map_err(storage(&self.file, "cannot set the length limit"))?;
        self.guard.meter(meter);
        let mut outcomes = Vec::with_capacity(statements.len());
        for statement in statements {
            self.guard.set_mode(Mode::Service {
                namespace: namespace.to_owned(),
                write: true,
            });
            let ran = run_statement(&self.conn, &self.guard, namespace, statement, true)?;
            if ran.defined {
                schema::audit(&self.conn, &self.guard, namespace)?;
            }
            outcomes.push(ran.outcome);
        }
        Ok(outcomes)
    }

    /// Counts a refused call in the namespace's metrics.
    fn observe<T>(&self, namespace: &str, result: &Result<T, StoreError>) {
        let reason = match result {
            Err(StoreError::Denied { .. }) => "denied",
            Err(StoreError::Budget { .. }) => "budget",
            _ => return,
        };
        self.metrics.observe_refusal(namespace, reason);
    }

    /// Commits the queued writes whose namespace's turn it is (see
    /// `share`); the others stay queued.
    fn commit_in_turn(&mut self, writes: &mut Vec<WriteJob>) {
        let (mut run, held) =
            self.shares
                .select(std::mem::take(writes), |j| &j.namespace, Instant::now());
        *writes = held;
        self.commit_group(&mut run);
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
        let stamps: Vec<(i64, i64)> = jobs.iter().map(|_| fresh_stamp()).collect();
        let mut ended: Vec<Option<StoreError>> = vec![None; jobs.len()];
        let mut took = vec![Duration::ZERO; jobs.len()];
        // Each pass either commits or finds one more job that ended the
        // transaction: at most one pass per job, and one more.
        let outcome = loop {
            match self.run_group(&jobs, &stamps, &mut ended, &mut took) {
                Ok(Some(results)) => break Ok(results),
                Ok(None) => continue,
                Err(e) => break Err(e),
            }
        };
        let now = Instant::now();
        for (job, took) in jobs.iter().zip(took) {
            self.shares.charge(&job.namespace, took, now);
        }
        match outcome {
            Ok(results) => {
                self.metrics
                    .observe_commit(started.elapsed(), jobs.len(), started.elapsed());
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                // Nothing of this batch is durable: every write fails.
                tracing::error!(error = %e, batch = jobs.len(), "group commit failed; no write of this batch is acknowledged");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One pass of a group commit. `None`: a job ended the transaction (it
    /// is now in `ended`), and the group must run again.
    /// `took` adds up the time each job held the writer, over the passes.
    fn run_group(
        &mut self,
        jobs: &[WriteJob],
        stamps: &[(i64, i64)],
        ended: &mut [Option<StoreError>],
        took: &mut [Duration],
    ) -> Result<Option<GroupResults>, StoreError> {
        self.guard.set_mode(Mode::System);
        self.conn
            .exec_cached("BEGIN IMMEDIATE")
            .map_err(storage(&self.file, "cannot start a write transaction"))?;
        let mut results = Vec::with_capacity(jobs.len());
        for (i, job) in jobs.iter().enumerate() {
            if let Some(e) = &ended[i] {
                results.push(Err(e.clone()));
                continue;
            }
            self.determinism.set(stamps[i].0, stamps[i].1);
            let started = Instant::now();
            let unit =
                self.unit(|w| w.run_statements(&job.namespace, &job.statements, &job.budget));
            took[i] += started.elapsed();
            self.metrics
                .observe_statement(&job.namespace, "write", started.elapsed());
            match unit {
                Ok(Unit::Done(result)) => {
                    self.observe(&job.namespace, &result);
                    results.push(result);
                }
                Ok(Unit::Ended(e)) => {
                    tracing::warn!(namespace = %job.namespace, error = %e, "a write ended the shared transaction; it fails alone and the others run again");
                    self.metrics
                        .observe_refusal(&job.namespace, "ended_transaction");
                    ended[i] = Some(e);
                    return Ok(None);
                }
                Err(e) => {
                    self.rollback();
                    return Err(e);
                }
            }
        }
        self.guard.set_mode(Mode::System);
        match self.conn.exec_cached("COMMIT") {
            Ok(()) => Ok(Some(results)),
            Err(e) => {
                self.rollback();
                Err(StoreError::Storage(describe(
                    &self.file,
                    "commit failed",
                    &e,
                )))
            }
        }
    }

    /// Applies Raft entries: each proposal runs once (a retried request id
    /// returns the recorded result), and the log position and membership are
    /// written in the same transaction as the data. The transaction may stay
    /// open for later entries (see `APPLY_COMMIT_INTERVAL`).
    pub(super) fn apply(
        &mut self,
        entries: Vec<ApplyEntry>,
    ) -> Result<Vec<EntryResults>, StoreError> {
        if let Some(lost) = &self.lost_applies {
            return Err(lost.clone());
        }
        // Marked before any reply: a reader that learns of these entries
        // finds the flag set and commits them first.
        self.unflushed.store(true, Ordering::SeqCst);
        let since = self.open_apply.unwrap_or_else(Instant::now);
        let results = loop {
            match self.try_apply(&entries) {
                Ok(Ok(results)) => break results,
                Ok(Err((request_id, error))) => {
                    // Everything the transaction held is undone: apply it
                    // again, that proposal as failed. Each pass adds one
                    // request id, so the passes are bounded by the
                    // proposals.
                    tracing::warn!(request = %request_id, error = %error, "a proposal ended the apply transaction; it fails alone and the others apply again");
                    self.open_apply = None;
                    if self.ended.insert(request_id, error).is_some() {
                        return Err(self.lose_applies(
                            "a proposal ended the transaction again when applied as failed",
                        ));
                    }
                }
                // The entries before these, applied but not committed, go
                // too: the store stops applying (Raft treats the error as
                // fatal and applies them again from its log on restart).
                Err(e) => return Err(self.lose_applies(&e.to_string())),
            }
        };
        self.open_apply = Some(since);
        self.uncommitted.extend(entries);
        if !self.defer_commits || since.elapsed() >= APPLY_COMMIT_INTERVAL {
            self.commit_applies()?;
        }
        Ok(results)
    }

    /// Applies `entries` in the open apply transaction, opening one (and
    /// applying again what the last one held) if there is none.
    fn try_apply(
        &mut self,
        entries: &[ApplyEntry],
    ) -> Result<Result<Vec<EntryResults>, Ended>, StoreError> {
        self.guard.set_mode(Mode::System);
        if self.open_apply.is_none() {
            self.conn
                .exec_cached("BEGIN IMMEDIATE")
                .map_err(storage(&self.file, "cannot start a write transaction"))?;
            self.open_apply = Some(Instant::now());
            let previous = std::mem::take(&mut self.uncommitted);
            let replayed = self.apply_entries(&previous);
            self.uncommitted = previous;
            if let Err(ended) = replayed? {
                return Ok(Err(ended));
            }
        } else if self.conn.is_autocommit() {
            return Err(StoreError::Storage(
                "SQLite ended the transaction on its own".into(),
            ));
        }
        self.apply_entries(entries)
    }

    /// Rolls back the waiting applies and refuses every later apply, read
    /// and snapshot (see `lost_applies`).
    fn lose_applies(&mut self, why: &str) -> StoreError {
        self.rollback();
        self.open_apply = None;
        self.uncommitted.clear();
        self.ended.clear();
        let lost = StoreError::Storage(format!(
            "applied entries were lost ({why}); restart the node to apply them again from the Raft log"
        ));
        self.lost_applies = Some(lost.clone());
        lost
    }

    /// Commits the applies waiting in the open transaction, if any.
    pub(super) fn commit_applies(&mut self) -> Result<(), StoreError> {
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
            let why = describe(&self.file, "the commit failed", &e);
            return Err(self.lose_applies(&why));
        }
        self.metrics
            .observe_commit(started.elapsed(), self.uncommitted.len(), since.elapsed());
        self.open_apply = None;
        self.uncommitted.clear();
        self.ended.clear();
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

    /// The body of `try_apply`, in the open transaction.
    fn apply_entries(
        &mut self,
        entries: &[ApplyEntry],
    ) -> Result<Result<Vec<EntryResults>, Ended>, StoreError> {
        let mut results = Vec::with_capacity(entries.len());
        for entry in entries {
            let mut entry_results = Vec::with_capacity(entry.proposals.len());
            for p in &entry.proposals {
                match self.apply_proposal(p)? {
                    Unit::Done(result) => entry_results.push(result),
                    Unit::Ended(e) => return Ok(Err((p.request_id.clone(), e))),
                }
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
                .map_err(storage(&self.file, "cannot purge old request ids"))?;
        }
        Ok(Ok(results))
    }

    /// One proposal, in its own savepoint: its result (recorded under its
    /// request id), or `Ended` if it ended the transaction.
    fn apply_proposal(&mut self, p: &Proposal) -> Result<Unit<Applied>, StoreError> {
        self.guard.set_mode(Mode::System);
        let seen: Option<Vec<u8>> = self
            .conn
            .prepare_cached("SELECT result FROM raft__requests WHERE request_id = ?1")
            .and_then(|mut s| s.query_row([&p.request_id], |r| r.get(0)).optional())
            .map_err(storage(&self.file, "cannot look up the request id"))?;
        if let Some(seen) = seen {
            return serde_json::from_slice(&seen)
                .map(Unit::Done)
                .map_err(|e| StoreError::Storage(format!("a recorded result is unreadable: {e}")));
        }
        let result = match self.ended.get(&p.request_id) {
            Some(e) => Err(e.clone()),
            None => {
                self.determinism.set(p.time_ms, p.seed);
                let namespace = p.command.namespace();
                let started = Instant::now();
                let unit = self.unit(|w| match &p.command {
                    Command::Write {
                        namespace,
                        statements,
                        budget,
                    } => w
                        .run_statements(namespace, statements, budget)
                        .map(Applied::Outcomes),
                    Command::Migrate {
                        namespace,
                        migrations,
                    } => schema::migrate(&w.conn, &w.guard, namespace, migrations)
                        .map(Applied::Migrated),
                })?;
                if matches!(p.command, Command::Write { .. }) {
                    self.metrics
                        .observe_statement(namespace, "write", started.elapsed());
                }
                match unit {
                    Unit::Done(result) => {
                        self.observe(namespace, &result);
                        result
                    }
                    Unit::Ended(e) => {
                        self.metrics.observe_refusal(namespace, "ended_transaction");
                        return Ok(Unit::Ended(e));
                    }
                }
            }
        };
        self.guard.set_mode(Mode::System);
        let encoded =
            serde_json::to_vec(&result).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.conn
            .prepare_cached(
                "INSERT INTO raft__requests (request_id, result, time_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(rusqlite::params![p.request_id, encoded, p.time_ms]))
            .map_err(storage(&self.file, "cannot record the request id"))?;
        Ok(Unit::Done(result))
    }

    fn applied_state(&mut self) -> Result<AppliedState, StoreError> {
        self.guard.set_mode(Mode::System);
        let get = |key: &str| -> Result<Option<Vec<u8>>, StoreError> {
            self.conn
                .query_row("SELECT value FROM raft__state WHERE key = ?1", [key], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(storage(&self.file, "cannot read the applied state"))
        };
        Ok((get("applied")?, get("membership")?))
    }
}
