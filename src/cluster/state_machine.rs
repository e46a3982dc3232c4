//! The Raft state machine is the node's SQLite database.
//!
//! Entries are applied by the store's writer in the same transaction as the
//! last applied log id and the membership; applies share a commit for up to
//! 50 ms, and reads and snapshots commit what waits first (see
//! `Store::apply`). Snapshots are `VACUUM INTO` copies identified by their
//! log position and the SHA-256 of their bytes; a received snapshot whose
//! bytes do not match is refused, and one that matches replaces the database
//! in place.

// openraft's storage traits return `StorageError` by value; our helpers
// return the same type so that `?` needs no conversion.
#![allow(clippy::result_large_err)]

use std::{
    io::{Cursor, Write},
    path::PathBuf,
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

/// A snapshot's meta and bytes.
type Current = (SnapshotMeta<NodeId, Node>, Vec<u8>);

#[derive(Clone)]
pub struct StateMachine {
    store: Store,
    dir: PathBuf,
}

impl StateMachine {
    pub fn new(store: Store, dir: PathBuf) -> StateMachine {
        StateMachine { store, dir }
    }

    /// The current snapshot: one file holding the length of the meta, the
    /// meta (JSON) and the database bytes, replaced atomically (written to
    /// a temporary name, fsynced, renamed), so a reader never pairs the
    /// meta of one snapshot with the bytes of another.
    fn current_path(&self) -> PathBuf {
        self.dir.join("snapshot.current")
    }

    fn keep(
        &self,
        meta: &SnapshotMeta<NodeId, Node>,
        bytes: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let meta = serde_json::to_vec(meta).map_err(snap_err)?;
        let path = self.current_path();
        let tmp = path.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(&(meta.len() as u64).to_le_bytes())?;
            file.write_all(&meta)?;
            file.write_all(bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(snap_err)
    }

    fn read_current(&self) -> Result<Option<Current>, StorageError<NodeId>> {
        let mut data = match std::fs::read(self.current_path()) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(snap_err(e)),
        };
        if data.len() < 8 {
            return Err(snap_err("the current snapshot file is truncated"));
        }
        let meta_len = u64::from_le_bytes(data[..8].try_into().expect("8 bytes")) as usize;
        if data.len() < 8 + meta_len {
            return Err(snap_err("the current snapshot file is truncated"));
        }
        let meta: SnapshotMeta<NodeId, Node> =
            serde_json::from_slice(&data[8..8 + meta_len]).map_err(snap_err)?;
        let bytes = data.split_off(8 + meta_len);
        verify(&meta, &bytes)?;
        Ok(Some((meta, bytes)))
    }
}

/// Checks that `bytes` hash to the SHA-256 named in the snapshot id.
fn verify(meta: &SnapshotMeta<NodeId, Node>, bytes: &[u8]) -> Result<(), StorageError<NodeId>> {
    let expected = meta
        .snapshot_id
        .rsplit("sha256:")
        .next()
        .unwrap_or_default();
    let actual = hex(&Sha256::digest(bytes));
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
        let bytes = std::fs::read(&file.path).map_err(snap_err)?;
        let _ = std::fs::remove_file(&file.path);
        let last_log_id: Option<LogId<NodeId>> = match &file.log_id {
            Some(b) => Some(serde_json::from_slice(b).map_err(snap_err)?),
            None => None,
        };
        let last_membership: StoredMembership<NodeId, Node> = match &file.membership {
            Some(b) => serde_json::from_slice(b).map_err(snap_err)?,
            None => StoredMembership::default(),
        };
        let digest = hex(&Sha256::digest(&bytes));
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
            snapshot_id: format!(
                "{}-{}-sha256:{digest}",
                last_log_id.map_or(0, |l| l.leader_id.term),
                last_log_id.map_or(0, |l| l.index)
            ),
        };
        self.keep(&meta, &bytes)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
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
        for entry in entries {
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
        let results = self.store.apply(batch).await.map_err(sm_err)?;
        Ok(results.into_iter().map(BatchResponse).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Node>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
        verify(meta, &bytes)?;
        let received = self.dir.join("snapshot-received.db");
        std::fs::write(&received, &bytes).map_err(snap_err)?;
        std::fs::File::open(&received)
            .and_then(|f| f.sync_all())
            .map_err(snap_err)?;
        self.store
            .restore(received.clone())
            .await
            .map_err(snap_err)?;
        let _ = std::fs::remove_file(&received);
        self.keep(meta, &bytes)?;
        tracing::info!(snapshot = %meta.snapshot_id, bytes = bytes.len(), "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.read_current()?.map(|(meta, bytes)| Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
