//! The Raft log and vote, in their own SQLite file (`raft-log.db`) next to
//! the database.
//!
//! `append` calls back only after the transaction that holds the entries
//! committed with `synchronous=FULL` (fsync); `save_vote` returns only after
//! the vote is on disk. Every entry is stored with a checksum of its
//! encoding; a record that does not match is reported as corrupt, never
//! applied.

// openraft's storage traits return `StorageError` by value; our helpers
// return the same type so that `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::{
    fmt::Debug,
    ops::{Bound, RangeBounds},
    path::Path,
    sync::{Arc, Mutex},
};

use openraft::{
    Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote,
    storage::{LogFlushed, RaftLogStorage},
};
use rusqlite::{Connection, OptionalExtension};

use super::TypeConfig;

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
    StorageIOError::<NodeId>::write(&std::io::Error::other(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::read(&std::io::Error::other(e.to_string())).into()
}

/// The log store; cheap to clone (the reader is a clone).
#[derive(Clone)]
pub struct LogStore {
    conn: Arc<Mutex<Connection>>,
    /// The highest commit index this node has learned, for stale reads.
    pub committed: Arc<std::sync::atomic::AtomicU64>,
}

impl LogStore {
    pub fn open(path: &Path) -> rusqlite::Result<LogStore> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
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
        )?;
        Ok(LogStore {
            conn: Arc::new(Mutex::new(conn)),
            committed: Arc::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_meta<T: serde::Serialize>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        self.lock()
            .execute(
                "INSERT INTO meta (key, value, checksum) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, checksum = excluded.checksum",
                rusqlite::params![key, bytes, checksum(&bytes)],
            )
            .map_err(io_err)?;
        Ok(())
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        let row: Option<(Vec<u8>, i64)> = self
            .lock()
            .query_row(
                "SELECT value, checksum FROM meta WHERE key = ?1",
                [key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(read_err)?;
        match row {
            None => Ok(None),
            Some((bytes, sum)) if checksum(&bytes) == sum => {
                serde_json::from_slice(&bytes).map(Some).map_err(read_err)
            }
            Some(_) => Err(read_err(format!(
                "the raft log's `{key}` record is corrupt (checksum mismatch)"
            ))),
        }
    }

    fn decode(
        idx: u64,
        payload: &[u8],
        sum: i64,
    ) -> Result<Entry<TypeConfig>, StorageError<NodeId>> {
        if checksum(payload) != sum {
            return Err(read_err(format!(
                "raft log entry {idx} is corrupt (checksum mismatch)"
            )));
        }
        serde_json::from_slice(payload).map_err(read_err)
    }
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
            Bound::Included(i) => Some(i + 1),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT idx, payload, checksum FROM log WHERE idx >= ?1 AND idx < ?2 ORDER BY idx",
            )
            .map_err(read_err)?;
        let rows = stmt
            .query_map(
                rusqlite::params![start as i64, end.map_or(i64::MAX, |e| e as i64)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                },
            )
            .map_err(read_err)?;
        let mut entries = Vec::new();
        for row in rows {
            let (idx, payload, sum) = row.map_err(read_err)?;
            entries.push(LogStore::decode(idx as u64, &payload, sum)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = self.get_meta("purged")?;
        let last: Option<(i64, Vec<u8>, i64)> = self
            .lock()
            .query_row(
                "SELECT idx, payload, checksum FROM log ORDER BY idx DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(read_err)?;
        let last_log_id = match last {
            Some((idx, payload, sum)) => Some(LogStore::decode(idx as u64, &payload, sum)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta("vote", vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta("vote")
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        if let Some(c) = committed {
            self.committed
                .fetch_max(c.index, std::sync::atomic::Ordering::SeqCst);
        }
        self.put_meta("committed", &committed)
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
        {
            let mut conn = self.lock();
            let tx = conn.transaction().map_err(io_err)?;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO log (idx, payload, checksum) VALUES (?1, ?2, ?3)",
                    )
                    .map_err(io_err)?;
                for entry in entries {
                    let payload = serde_json::to_vec(&entry).map_err(io_err)?;
                    stmt.execute(rusqlite::params![
                        entry.log_id.index as i64,
                        payload,
                        checksum(&payload)
                    ])
                    .map_err(io_err)?;
                }
            }
            // synchronous=FULL: COMMIT returns after fsync.
            tx.commit().map_err(io_err)?;
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.lock()
            .execute("DELETE FROM log WHERE idx >= ?1", [log_id.index as i64])
            .map_err(io_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.put_meta("purged", &log_id)?;
        self.lock()
            .execute("DELETE FROM log WHERE idx <= ?1", [log_id.index as i64])
            .map_err(io_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn entries_and_votes_survive_reopening_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log.db");
        {
            let mut store = LogStore::open(&path).unwrap();
            {
                let conn = store.lock();
                let tx = conn.unchecked_transaction().unwrap();
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
        store
            .lock()
            .execute("UPDATE log SET payload = CAST(replace(CAST(payload AS TEXT), 'Blank', 'Blanc') AS BLOB) WHERE idx = 2", [])
            .unwrap();
        let err = store.try_get_log_entries(0..10).await.unwrap_err();
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
