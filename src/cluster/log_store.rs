//! The Raft log and vote, in their own SQLite file (`raft-log.db`) next to
//! the database.
//!
//! One writer thread owns the write connection and commits with
//! `synchronous=FULL` (fsync). Appends are group-committed: `append` hands
//! its entries to the writer and returns at once (they are readable from an
//! in-memory tail until they are on disk); the writer commits everything
//! queued while the previous fsync ran in one transaction and only then
//! calls each append's `LogFlushed` back. openraft issues one append per
//! client write on the leader, so without this every write paid its own
//! fsync on Raft's single core task. The leader's own appends are
//! acknowledged at once, before their write, so that openraft replicates
//! them while they are written; `durable` keeps them from counting before
//! they are on disk. `save_vote`, `truncate` and `purge`
//! return only after their transaction is on disk. Every entry is stored
//! with a checksum of its encoding; a record that does not match is
//! reported as corrupt, never applied.

// openraft's storage traits return `StorageError` by value; our helpers
// return the same type so that `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::{
    collections::BTreeMap,
    fmt::Debug,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{Arc, Mutex, mpsc},
};

use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError,
    Vote,
    storage::{LogFlushed, RaftLogStorage},
};
use rusqlite::{Connection, OptionalExtension};
use tokio::sync::oneshot;

use super::{TypeConfig, durable::Durable};
use crate::store::fault::{self, Fault};

type NodeId = u64;

/// FNV-1a over the record's bytes.
fn checksum(bytes: &[u8]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

fn io_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::write(AnyError::error(e)).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::read(AnyError::error(e)).into()
}

/// A failed read of `file`, with what to do about it (see `fault`).
fn read_fault<'a>(file: &'a str) -> impl Fn(rusqlite::Error) -> StorageError<NodeId> + 'a {
    move |e| read_err(fault::describe(file, "cannot read the Raft log", &e))
}

/// A record whose checksum does not match: the file is damaged.
fn corrupt(file: &str, what: &str) -> String {
    fault::explain(
        Fault::Damaged,
        file,
        "cannot read the Raft log",
        &format!("{what} does not match its checksum"),
    )
}

/// One entry as stored: index, encoding, checksum of the encoding.
type Record = (u64, Vec<u8>, i64);

/// Whom an append's write is reported to.
enum Flushed {
    /// openraft, which waits for it.
    Callback(LogFlushed<TypeConfig>),
    /// `Durable`, under this ticket: openraft was told at once.
    Early(u64),
}

/// Work for the writer thread, done in queue order.
enum Op {
    Append {
        records: Vec<Record>,
        /// The log ids of the appended entries, to drop them from the tail
        /// once they are on disk.
        ids: Vec<LogId<NodeId>>,
        done: Flushed,
    },
    Meta {
        key: &'static str,
        value: Vec<u8>,
        done: Option<oneshot::Sender<Result<(), String>>>,
    },
    Truncate {
        from: u64,
        done: oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: u64,
        purged: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// What a log says about the group it belongs to.
#[derive(Clone, Debug)]
pub struct LogFacts {
    /// Nothing written yet: no vote, no entry, nothing purged.
    pub empty: bool,
    pub group: Option<String>,
    /// The first snapshot of a group formed on existing data is not made
    /// yet.
    pub origin_pending: bool,
    pub purged: Option<LogId<NodeId>>,
    /// The last entry's id (or the last purged one).
    pub last: Option<LogId<NodeId>>,
}

/// The log store; cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    /// A read connection (WAL: it sees every committed transaction).
    reader: Arc<Mutex<Connection>>,
    /// Entries handed to the writer and not yet on disk, by index.
    tail: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    writer: mpsc::Sender<Op>,
    /// The highest commit index this node has learned, for stale reads.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
    /// The leader's appends acknowledged before their write.
    pub durable: Arc<Durable>,
    /// This member's Raft id, once it may acknowledge its own appends as
    /// leader early (`acknowledging_as`).
    me: Option<NodeId>,
    /// The vote last saved.
    vote: Arc<Mutex<Option<Vote<NodeId>>>>,
    /// The file, for messages.
    file: Arc<str>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LogStore {
    /// Opens (creating if needed) the log at `path`, and checks it: the
    /// file (SQLite's quick check) and every record's checksum. The error
    /// names the file and what to do.
    pub fn open(path: &Path) -> Result<LogStore, String> {
        let file: Arc<str> = path.display().to_string().into();
        let fail = |e| fault::describe(&file, "cannot open the Raft log", &e);
        let conn = Connection::open(path).map_err(fail)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(fail)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(fail)?;
        fault::check(&conn, &file)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS log (
                idx INTEGER PRIMARY KEY NOT NULL,
                payload BLOB NOT NULL,
                checksum INTEGER NOT NULL
            ) STRICT;
            CREATE TABLE IF NOT EXISTS meta (
                key TEXT PRIMARY KEY NOT NULL,
                value BLOB NOT NULL,
                checksum INTEGER NOT NULL
            ) STRICT;",
        )
        .map_err(fail)?;
        verify_checksums(&conn, &file)?;
        let reader = Connection::open(path).map_err(fail)?;
        let tail: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let writer_tail = tail.clone();
        let writer_file = file.clone();
        let durable = Arc::new(Durable::default());
        let writer_durable = durable.clone();
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || write_loop(conn, &writer_file, rx, writer_tail, &writer_durable))
            .map_err(|e| format!("cannot start the raft log writer thread: {e}"))?;
        Ok(LogStore {
            reader: Arc::new(Mutex::new(reader)),
            tail,
            writer: tx,
            committed: Arc::default(),
            durable,
            me: None,
            vote: Arc::default(),
            file,
        })
    }

    /// From now on, appends this member makes as the leader are
    /// acknowledged before their write (see `durable`): its state machine
    /// must wait on `durable`, and its AppendEntries hold back the commit
    /// index, or an entry could count before it is on disk.
    pub fn acknowledging_as(mut self, me: NodeId) -> LogStore {
        self.me = Some(me);
        self
    }

    /// The leader's vote under which `me` appends its own entries, if it
    /// leads now.
    fn leading(&self) -> Option<openraft::LeaderId<NodeId>> {
        let me = self.me?;
        lock(&self.vote)
            .as_ref()
            .filter(|v| v.committed && v.leader_id.node_id == me)
            .map(|v| v.leader_id)
    }

    fn send(&self, op: Op) -> Result<(), StorageError<NodeId>> {
        self.writer
            .send(op)
            .map_err(|_| io_err("the raft log writer has stopped"))
    }

    /// Runs `op` on the writer and waits until it is on disk.
    async fn write_and_wait(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), String>>) -> Op,
    ) -> Result<(), StorageError<NodeId>> {
        let (done, wait) = oneshot::channel();
        self.send(op(done))?;
        wait.await
            .map_err(|_| io_err("the raft log writer has stopped"))?
            .map_err(io_err)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let row: Option<(Vec<u8>, i64)> = lock(&self.reader)
            .query_row(
                "SELECT value, checksum FROM meta WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(read_fault(&self.file))?;
        match row {
            None => Ok(None),
            Some((bytes, sum)) if checksum(&bytes) == sum => {
                serde_json::from_slice(&bytes).map(Some).map_err(read_err)
            }
            Some(_) => Err(read_err(corrupt(
                &self.file,
                &format!("the `{key}` record"),
            ))),
        }
    }

    /// What the log says about its group, read at start (see `origin`).
    pub fn facts(&self) -> Result<LogFacts, String> {
        let text = |e: StorageError<NodeId>| e.to_string();
        let group: Option<String> = self.get_meta("group").map_err(text)?;
        let origin_pending = self
            .get_meta::<bool>("origin")
            .map_err(text)?
            .unwrap_or(false);
        let vote: Option<Vote<NodeId>> = self.get_meta("vote").map_err(text)?;
        let purged: Option<LogId<NodeId>> = self.get_meta("purged").map_err(text)?;
        let last = self.entry_id("ORDER BY idx DESC LIMIT 1", None)?;
        Ok(LogFacts {
            empty: vote.is_none() && purged.is_none() && last.is_none(),
            group,
            origin_pending,
            purged,
            last: last.or(purged),
        })
    }

    /// The log id of the entry at `index`, if the log holds it.
    pub fn id_at(&self, index: u64) -> Result<Option<LogId<NodeId>>, String> {
        self.entry_id("WHERE idx = ?1", Some(index))
    }

    fn entry_id(&self, clause: &str, index: Option<u64>) -> Result<Option<LogId<NodeId>>, String> {
        let sql = format!("SELECT idx, payload, checksum FROM log {clause}");
        let conn = lock(&self.reader);
        let row: Option<(i64, Vec<u8>, i64)> = match index {
            Some(i) => conn.query_row(&sql, [i as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))),
            None => conn.query_row(&sql, [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))),
        }
        .optional()
        .map_err(|e| fault::describe(&self.file, "cannot read the Raft log", &e))?;
        drop(conn);
        match row {
            Some((idx, payload, sum)) => self
                .decode(idx as u64, &payload, sum)
                .map(|e| Some(e.log_id))
                .map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    /// Records the group this log belongs to, durably.
    pub async fn set_group(&self, group: &str) -> Result<(), String> {
        self.put(
            "group",
            serde_json::to_vec(group).expect("a string encodes"),
        )
        .await
    }

    /// Records whether this member still has to make its first snapshot
    /// and purge the log up to it (see `origin`), durably.
    pub async fn set_origin_pending(&self, pending: bool) -> Result<(), String> {
        self.put(
            "origin",
            serde_json::to_vec(&pending).expect("a bool encodes"),
        )
        .await
    }

    async fn put(&self, key: &'static str, value: Vec<u8>) -> Result<(), String> {
        self.write_and_wait(|done| Op::Meta {
            key,
            value,
            done: Some(done),
        })
        .await
        .map_err(|e| e.to_string())
    }

    fn decode(
        &self,
        idx: u64,
        payload: &[u8],
        sum: i64,
    ) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
        if checksum(payload) != sum {
            return Err(read_err(corrupt(&self.file, &format!("entry {idx}"))));
        }
        serde_json::from_slice(payload).map_err(read_err)
    }
}

/// The writer thread: takes everything queued, does it in one transaction,
/// commits (fsync), then answers each operation.
fn write_loop(
    mut conn: Connection,
    file: &str,
    rx: mpsc::Receiver<Op>,
    tail: Arc<Mutex<BTreeMap<u64, Entry<TypeConfig>>>>,
    durable: &Durable,
) {
    // The latest committed index not written yet. It is advisory (a node
    // that restarts without it learns it from the leader), so it rides
    // along with the next write instead of paying an fsync of its own,
    // which delayed the append behind it.
    let mut committed: Option<Op> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::new();
        for op in std::iter::once(first).chain(rx.try_iter()) {
            match op {
                Op::Meta {
                    key: "committed",
                    done: None,
                    ..
                } => committed = Some(op),
                op => batch.push(op),
            }
        }
        if batch.is_empty() {
            continue;
        }
        batch.extend(committed.take());
        let started = std::time::Instant::now();
        // Once a write acknowledged early has failed, nothing more is
        // written: openraft believes that entry is on disk, and a later one
        // must not be written after a hole. What waits fails, and openraft
        // stops.
        let result = match durable.failure() {
            Some(why) => Err(format!(
                "an earlier write of the Raft log failed ({why}); restart the node"
            )),
            None => write_batch(&mut conn, &batch)
                .map_err(|e| fault::describe(file, "cannot write the Raft log", &e)),
        };
        tracing::trace!(
            ops = batch.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "write path: log written and fsynced"
        );
        if let Err(e) = &result {
            tracing::error!("{e}");
        }
        let mut early = None;
        for op in batch {
            match op {
                Op::Append { ids, done, .. } => {
                    if result.is_ok() {
                        let mut tail = lock(&tail);
                        for id in ids {
                            if tail.get(&id.index).is_some_and(|e| e.log_id == id) {
                                tail.remove(&id.index);
                            }
                        }
                    }
                    match done {
                        Flushed::Callback(done) => {
                            done.log_io_completed(result.clone().map_err(std::io::Error::other))
                        }
                        Flushed::Early(ticket) => early = Some(ticket),
                    }
                }
                Op::Meta { done, .. } => {
                    if let Some(done) = done {
                        let _ = done.send(result.clone());
                    }
                }
                Op::Truncate { done, .. } | Op::Purge { done, .. } => {
                    let _ = done.send(result.clone());
                }
            }
        }
        match (&result, early) {
            (Ok(()), Some(ticket)) => durable.written(ticket),
            (Err(e), Some(_)) => durable.failed(e),
            _ => {}
        }
    }
}

/// Checks every record's checksum, so that a damaged log stops the node at
/// start with a clear error, not later in Raft.
fn verify_checksums(conn: &Connection, file: &str) -> Result<(), String> {
    let fail = |e| fault::describe(file, "cannot check the Raft log", &e);
    let queries = [
        "SELECT 'entry ' || idx, payload, checksum FROM log",
        "SELECT 'the `' || key || '` record', value, checksum FROM meta",
    ];
    for sql in queries {
        let mut stmt = conn.prepare(sql).map_err(fail)?;
        let mut rows = stmt.query([]).map_err(fail)?;
        while let Some(row) = rows.next().map_err(fail)? {
            let bytes: Vec<u8> = row.get(1).map_err(fail)?;
            if checksum(&bytes) != row.get::<_, i64>(2).map_err(fail)? {
                return Err(corrupt(file, &row.get::<_, String>(0).map_err(fail)?));
            }
        }
    }
    Ok(())
}

fn write_batch(conn: &mut Connection, batch: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in batch {
        match op {
            Op::Append { records, .. } => {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR REPLACE INTO log (idx, payload, checksum) VALUES (?1, ?2, ?3)",
                )?;
                for (idx, payload, sum) in records {
                    stmt.execute(rusqlite::params![*idx as i64, payload, sum])?;
                }
            }
            Op::Meta { key, value, .. } => put_meta(&tx, key, value)?,
            Op::Truncate { from, .. } => {
                tx.execute("DELETE FROM log WHERE idx >= ?1", [*from as i64])?;
            }
            Op::Purge { upto, purged, .. } => {
                put_meta(&tx, "purged", purged)?;
                tx.execute("DELETE FROM log WHERE idx <= ?1", [*upto as i64])?;
            }
        }
    }
    // synchronous=FULL: COMMIT returns after fsync.
    tx.commit()
}

fn put_meta(conn: &Connection, key: &str, value: &[u8]) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value, checksum) VALUES (?1, ?2, ?3)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value, checksum = excluded.checksum",
    )?
    .execute(rusqlite::params![key, value, checksum(value)])?;
    Ok(())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        if start >= end {
            return Ok(Vec::new());
        }
        // The tail first: an entry the writer commits meanwhile leaves the
        // tail only after it is readable from the file.
        let mut found: BTreeMap<u64, Entry<TypeConfig>> = lock(&self.tail)
            .range(start..end)
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        let covered = found.len() as u64 == end.saturating_sub(start);
        if !covered {
            let conn = lock(&self.reader);
            let mut stmt = conn
                .prepare_cached(
                    "SELECT idx, payload, checksum FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
                )
                .map_err(read_fault(&self.file))?;
            let rows = stmt
                .query_map(
                    rusqlite::params![start as i64, end.min(i64::MAX as u64) as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, Vec<u8>>(1)?,
                            r.get::<_, i64>(2)?,
                        ))
                    },
                )
                .map_err(read_fault(&self.file))?;
            for row in rows {
                let (idx, payload, sum) = row.map_err(read_fault(&self.file))?;
                let idx = idx as u64;
                if let std::collections::btree_map::Entry::Vacant(slot) = found.entry(idx) {
                    slot.insert(self.decode(idx, &payload, sum)?);
                }
            }
        }
        Ok(found.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = self.get_meta("purged")?;
        let pending = lock(&self.tail).values().next_back().map(|e| e.log_id);
        let last: Option<(i64, Vec<u8>, i64)> = lock(&self.reader)
            .query_row(
                "SELECT idx, payload, checksum FROM log ORDER BY idx DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(read_fault(&self.file))?;
        let stored = match last {
            Some((idx, payload, sum)) => Some(self.decode(idx as u64, &payload, sum)?.log_id),
            None => None,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: pending.max(stored).or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let value = serde_json::to_vec(vote).map_err(io_err)?;
        self.write_and_wait(|done| Op::Meta {
            key: "vote",
            value,
            done: Some(done),
        })
        .await?;
        *lock(&self.vote) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta("vote")
    }

    /// The committed index is a hint for replay after a restart: it is
    /// written with the next batch and not waited for.
    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if let Some(c) = committed {
            self.committed
                .fetch_max(c.index, std::sync::atomic::Ordering::SeqCst);
        }
        let value = serde_json::to_vec(&committed).map_err(io_err)?;
        self.send(Op::Meta {
            key: "committed",
            value,
            done: None,
        })
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self
            .get_meta::<Option<LogId<NodeId>>>("committed")?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut records = Vec::new();
        let mut ids = Vec::new();
        // The leader's own entries, made under its current vote, are
        // acknowledged before their write (see `durable`).
        let leading = self.leading();
        let mut own = leading.is_some();
        {
            let mut tail = lock(&self.tail);
            for entry in entries {
                let payload = serde_json::to_vec(&entry).map_err(io_err)?;
                let sum = checksum(&payload);
                own &= Some(entry.log_id.leader_id) == leading;
                records.push((entry.log_id.index, payload, sum));
                ids.push(entry.log_id);
                tail.insert(entry.log_id.index, entry);
            }
        }
        let Some(first) = records.first().map(|r| r.0).filter(|_| own) else {
            return self.send(Op::Append {
                records,
                ids,
                done: Flushed::Callback(callback),
            });
        };
        let ticket = self.durable.acknowledged_early(first);
        if let Err(e) = self.send(Op::Append {
            records,
            ids,
            done: Flushed::Early(ticket),
        }) {
            self.durable.failed("the raft log writer has stopped");
            return Err(e);
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        lock(&self.tail).split_off(&log_id.index);
        self.write_and_wait(|done| Op::Truncate {
            from: log_id.index,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let purged = serde_json::to_vec(&log_id).map_err(io_err)?;
        lock(&self.tail).retain(|i, _| *i > log_id.index);
        self.write_and_wait(|done| Op::Purge {
            upto: log_id.index,
            purged,
            done,
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;
    use crate::{
        cluster::state_machine::StateMachine,
        store::{Durability, Store, StoreConfig},
        telemetry::metrics::Metrics,
    };

    /// Builds the log store and state machine on a fresh directory, for
    /// openraft's own storage test suite.
    struct Builder;

    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir>
        for Builder
    {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
            let dir = tempfile::tempdir().map_err(io_err)?;
            let log = LogStore::open(&dir.path().join("raft-log.db"))
                .map_err(io_err)?
                .acknowledging_as(1);
            let store = Store::open(
                &StoreConfig {
                    data_dir: dir.path().to_owned(),
                    readers: 2,
                    durability: Durability::ReplayedFromLog,
                },
                Metrics::new().store,
            )
            .map_err(io_err)?;
            let sm = StateMachine::new(store, dir.path().to_owned(), log.durable.clone());
            Ok((dir, log, sm))
        }
    }

    /// openraft's conformance suite for storage: appends (through the
    /// group-committing writer), reads, truncation, purging, votes, applied
    /// state and snapshots.
    #[test]
    fn passes_openraft_storage_suite() {
        openraft::testing::Suite::test_all(Builder).unwrap();
    }

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn stored(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM log", [], |r| r.get(0))
            .unwrap()
    }

    #[tokio::test]
    async fn the_leaders_own_appends_are_acknowledged_before_their_write_and_others_after() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.db");
        let mut store = LogStore::open(&path).unwrap().acknowledging_as(1);
        // A follower of member 2: its appends are acknowledged once on disk.
        store.save_vote(&Vote::new_committed(2, 2)).await.unwrap();
        let of_two = |index| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(2, 2), index),
            payload: EntryPayload::Blank,
        };
        store.blocking_append([of_two(1), of_two(2)]).await.unwrap();
        assert_eq!(stored(&path), 2, "on disk when acknowledged");
        assert_eq!(
            store.durable.tickets_written(),
            0,
            "none acknowledged early"
        );
        // Member 1 leads in term 3: its own entries are acknowledged early,
        // and are on disk once `durable` says so.
        store.save_vote(&Vote::new_committed(3, 1)).await.unwrap();
        store
            .blocking_append([entry(3, 3), entry(3, 4)])
            .await
            .unwrap();
        store.durable.wait(4).await.unwrap();
        assert_eq!(stored(&path), 4);
        assert_eq!(store.durable.tickets_written(), 1, "one early append");
        // Entries of an earlier term of its own (sent back by another
        // leader) are not its current leadership's: acknowledged after.
        store.save_vote(&Vote::new_committed(4, 2)).await.unwrap();
        store.blocking_append([entry(3, 5)]).await.unwrap();
        assert_eq!(stored(&path), 5);
        assert_eq!(store.durable.tickets_written(), 1);
    }

    #[tokio::test]
    async fn entries_and_votes_survive_reopening_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.db");
        {
            let mut store = LogStore::open(&path).unwrap();
            {
                let mut conn = Connection::open(&path).unwrap();
                let tx = conn.transaction().unwrap();
                for e in [entry(1, 1), entry(1, 2), entry(2, 3)] {
                    let payload = serde_json::to_vec(&e).unwrap();
                    tx.execute(
                        "INSERT INTO log (idx, payload, checksum) VALUES (?1, ?2, ?3)",
                        rusqlite::params![e.log_id.index as i64, payload, checksum(&payload)],
                    )
                    .unwrap();
                }
                tx.commit().unwrap();
            }
            store.save_vote(&Vote::new(2, 1)).await.unwrap();
        }
        let mut store = LogStore::open(&path).unwrap();
        assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(2, 1)));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.unwrap().index, 3);
        assert_eq!(store.try_get_log_entries(2..=3).await.unwrap().len(), 2);
        store
            .truncate(LogId::new(CommittedLeaderId::new(2, 1), 3))
            .await
            .unwrap();
        assert_eq!(
            store
                .get_log_state()
                .await
                .unwrap()
                .last_log_id
                .unwrap()
                .index,
            2
        );
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
            .await
            .unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.unwrap().index, 1);
        assert_eq!(store.try_get_log_entries(0..10).await.unwrap().len(), 1);
        // Flip a byte of a stored entry: reading it fails loudly.
        Connection::open(&path)
            .unwrap()
            .execute("UPDATE log SET payload = CAST(replace(CAST(payload AS TEXT), 'Blank', 'Blanc') AS BLOB) WHERE idx = 2", [])
            .unwrap();
        let err = store.try_get_log_entries(0..10).await.unwrap_err();
        assert!(
            err.to_string().contains("does not match its checksum"),
            "{err}"
        );
    }
}
