//! The Raft state machine is the node's SQLite database.
//!
//! Entries are applied by the store's writer in the same transaction as the
//! last applied log id and the membership; applies share a commit for up to
//! 50 ms, and reads and snapshots commit what waits first (see
//! `Store::apply`). Snapshots are `VACUUM INTO` copies identified by their
//! log position and the SHA-256 of their bytes, kept as files and streamed
//! from them: a snapshot is never held in memory, and sending one reads
//! only what each chunk needs. A received snapshot whose bytes do not match
//! its id is refused, and one that matches replaces the database in place.

// openraft's storage traits return `StorageError` by value; our helpers
// return the same type so that `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use openraft::{
    AnyError, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, storage::RaftStateMachine,
};
use sha2::{Digest, Sha256};

use super::{Batch, BatchResponse, TypeConfig};
use crate::store::{ApplyEntry, Store};

type NodeId = u64;
type Node = openraft::BasicNode;

fn sm_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::write_state_machine(AnyError::error(e)).into()
}

fn snap_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::<NodeId>::write_snapshot(None, AnyError::error(e)).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of a file, in hex, read in a blocking thread.
async fn digest_of(path: PathBuf) -> Result<String, StorageError<NodeId>> {
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex(&hasher.finalize()))
    })
    .await
    .map_err(snap_err)?
    .map_err(snap_err)
}

/// The file name a snapshot's bytes are kept under.
fn data_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.db")
}

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    dir: PathBuf,
    /// The leader's appends acknowledged before their write: an entry is
    /// applied only once it is on this member's disk.
    durable: std::sync::Arc<super::durable::Durable>,
    /// One `keep` at a time: a snapshot built here and one received from
    /// the leader may finish together, and each removes the bytes of the
    /// snapshots it replaces.
    keeping: std::sync::Arc<std::sync::Mutex<()>>,
}

impl StateMachine {
    pub fn new(
        store: Store,
        dir: PathBuf,
        durable: std::sync::Arc<super::durable::Durable>,
    ) -> StateMachine {
        StateMachine {
            store,
            dir,
            durable,
            keeping: std::sync::Arc::default(),
        }
    }

    /// The current snapshot's meta (JSON), replaced atomically (written to
    /// a temporary name, fsynced, renamed) once its bytes are in their own
    /// file, `<snapshot id>.db`: a reader never pairs the meta of one
    /// snapshot with the bytes of another.
    fn meta_path(&self) -> PathBuf {
        self.dir.join("current.meta")
    }

    fn data_path(&self, meta: &SnapshotMeta<NodeId, Node>) -> PathBuf {
        self.dir.join(data_name(&meta.snapshot_id))
    }

    /// Makes `bytes_file` (already fsynced) the current snapshot with
    /// `meta`, and removes the snapshots it replaces.
    fn keep(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        bytes_file: &Path,
    ) -> Result<(), StorageError<NodeId>> {
        let _one = self.keeping.lock().unwrap_or_else(|p| p.into_inner());
        let data = self.data_path(meta);
        let encoded = serde_json::to_vec(meta).map_err(snap_err)?;
        let path = self.meta_path();
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            std::fs::rename(bytes_file, &data)?;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&encoded)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(snap_err)?;
        // Older snapshots' bytes (none is read once the meta moved on).
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let p = entry.path();
                if p != data && p.extension().is_some_and(|e| e == "db") {
                    let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    if !name.starts_with("snapshot-") {
                        let _ = std::fs::remove_file(&p);
                    }
                }
            }
        }
        Ok(())
    }

    fn read_meta(&self) -> Result<Option<SnapshotMeta<NodeId, Node>>, StorageError<NodeId>> {
        match std::fs::read(self.meta_path()) {
            Ok(d) => serde_json::from_slice(&d).map(Some).map_err(snap_err),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(snap_err(e)),
        }
    }
}

/// Checks that the file at `path` hashes to the SHA-256 named in the
/// snapshot id.
async fn verify(
    meta: &SnapshotMeta<NodeId, Node>,
    path: &Path,
) -> Result<(), StorageError<NodeId>> {
    let expected = meta
        .snapshot_id
        .rsplit("sha256:")
        .next()
        .unwrap_or_default()
        .to_owned();
    let actual = digest_of(path.to_owned()).await?;
    if expected == actual {
        Ok(())
    } else {
        Err(snap_err(format!(
            "snapshot {} is damaged: its SHA-256 is {actual}",
            meta.snapshot_id
        )))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let file = self
            .store
            .snapshot(self.dir.join("snapshot-building.db"))
            .await
            .map_err(snap_err)?;
        let last_log_id: Option<LogId<NodeId>> = match &file.log_id {
            Some(b) => Some(serde_json::from_slice(b).map_err(snap_err)?),
            None => None,
        };
        let last_membership: StoredMembership<NodeId, Node> = match &file.membership {
            Some(b) => serde_json::from_slice(b).map_err(snap_err)?,
            None => StoredMembership::default(),
        };
        let digest = digest_of(file.path.clone()).await?;
        let bytes = std::fs::metadata(&file.path).map_err(snap_err)?.len();
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!(
                "{}-{}-sha256:{digest}",
                last_log_id.map_or(0, |l| l.leader_id.term),
                last_log_id.map_or(0, |l| l.index)
            ),
        };
        // Opened before it is kept: the handle stays valid even if a newer
        // snapshot replaces this one at once.
        let data = tokio::fs::File::open(&file.path).await.map_err(snap_err)?;
        self.keep(&meta, &file.path)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(data),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Node>), StorageError<NodeId>> {
        let (log_id, membership) = self.store.applied_state().await.map_err(sm_err)?;
        let log_id = match log_id {
            Some(b) => Some(serde_json::from_slice(&b).map_err(sm_err)?),
            None => None,
        };
        let membership = match membership {
            Some(b) => serde_json::from_slice(&b).map_err(sm_err)?,
            None => StoredMembership::default(),
        };
        Ok((log_id, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + openraft::OptionalSend,
        I::IntoIter: openraft::OptionalSend,
    {
        let mut batch = Vec::new();
        let mut last = None;
        for entry in entries {
            last = Some(entry.log_id.index);
            let log_id = serde_json::to_vec(&entry.log_id).map_err(sm_err)?;
            let (membership, proposals) = match entry.payload {
                EntryPayload::Blank => (None, Vec::new()),
                EntryPayload::Normal(Batch(proposals)) => (None, proposals),
                EntryPayload::Membership(m) => (
                    Some(
                        serde_json::to_vec(&StoredMembership::new(Some(entry.log_id), m))
                            .map_err(sm_err)?,
                    ),
                    Vec::new(),
                ),
            };
            batch.push(ApplyEntry {
                log_id,
                membership,
                proposals,
            });
        }
        if let Some(last) = last {
            self.durable.wait(last).await.map_err(sm_err)?;
        }
        let (entries, started) = (batch.len(), std::time::Instant::now());
        let results = self.store.apply(batch).await.map_err(sm_err)?;
        tracing::trace!(
            entries,
            elapsed_us = started.elapsed().as_micros() as u64,
            "write path: entries applied"
        );
        Ok(results.into_iter().map(BatchResponse).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<tokio::fs::File>, StorageError<NodeId>> {
        let file = tokio::fs::File::create(self.dir.join("snapshot-received.db"))
            .await
            .map_err(snap_err)?;
        Ok(Box::new(file))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError<NodeId>> {
        use std::os::unix::fs::MetadataExt;
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let mut snapshot = snapshot;
        snapshot.flush().await.map_err(snap_err)?;
        let received = self.dir.join("snapshot-received.db");
        // The file `begin_receiving_snapshot` gave openraft, normally; any
        // other snapshot data is copied into it first.
        let handle = snapshot.metadata().await.map_err(snap_err)?;
        let same = std::fs::metadata(&received)
            .is_ok_and(|m| m.ino() == handle.ino() && m.dev() == handle.dev());
        if !same {
            snapshot
                .seek(std::io::SeekFrom::Start(0))
                .await
                .map_err(snap_err)?;
            let mut copy = tokio::fs::File::create(&received).await.map_err(snap_err)?;
            tokio::io::copy(&mut *snapshot, &mut copy)
                .await
                .map_err(snap_err)?;
            copy.sync_all().await.map_err(snap_err)?;
        } else {
            snapshot.sync_all().await.map_err(snap_err)?;
        }
        drop(snapshot);
        verify(meta, &received).await?;
        self.store
            .restore(received.clone())
            .await
            .map_err(snap_err)?;
        let bytes = std::fs::metadata(&received).map_err(snap_err)?.len();
        self.keep(meta, &received)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        // The meta and its bytes, read together (see `keeping`).
        let (meta, data) = {
            let _one = self.keeping.lock().unwrap_or_else(|p| p.into_inner());
            let Some(meta) = self.read_meta()? else {
                return Ok(None);
            };
            let data = std::fs::File::open(self.data_path(&meta)).map_err(snap_err)?;
            (meta, data)
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(data)),
        }))
    }
}
