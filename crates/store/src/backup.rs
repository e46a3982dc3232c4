//! Backups and restores of a node's database file, from another process
//! than the node's (the `flotilla backup` and `restore` commands).
//!
//! A backup is one read transaction of the database (`VACUUM INTO`), so it
//! is consistent while the node writes: in WAL mode a reader sees one
//! committed state and holds up nobody. A restore puts a checked copy in
//! place of a data dir's database, never over one unless asked.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::{DB_FILE, StoreError};

/// A backup written.
#[derive(Debug)]
pub struct BackupFile {
    pub path: PathBuf,
    pub bytes: u64,
    /// The Raft log id of the last entry applied in the copy, as the state
    /// machine recorded it (JSON), if the database was a cluster member's.
    pub applied: Option<Vec<u8>>,
}

fn storage(what: String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| StoreError::Storage(format!("{what}: {e}"))
}

/// Opens the database of `data_dir` as another process than its node's
/// may: it must exist, and nothing in it is written (`VACUUM INTO` only
/// reads it, so `query_only` cannot be set for a backup).
fn open_existing(data_dir: &Path, query_only: bool) -> Result<(PathBuf, Connection), StoreError> {
    let path = data_dir.join(DB_FILE);
    if !path.is_file() {
        return Err(StoreError::Storage(format!(
            "there is no database at {}: give the config of the node whose data to back up",
            path.display()
        )));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(10))?;
            c.pragma_update(None, "query_only", query_only)?;
            Ok(c)
        })
        .map_err(storage(format!("cannot open {}", path.display())))?;
    Ok((path, conn))
}

/// The applied log id (JSON) recorded in the database of `data_dir`, as
/// committed on disk: what a backup taken now would hold at least.
pub fn applied_on_disk(data_dir: &Path) -> Result<Option<Vec<u8>>, StoreError> {
    let (path, conn) = open_existing(data_dir, true)?;
    applied(&conn).map_err(storage(format!("cannot read {}", path.display())))
}

fn applied(conn: &Connection) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.query_row(
        "SELECT value FROM raft__state WHERE key = 'applied'",
        [],
        |r| r.get(0),
    )
    .optional()
}

/// Copies the database of `data_dir` to `out` (which must not exist),
/// consistently, while its node may be running.
pub fn backup(data_dir: &Path, out: &Path) -> Result<BackupFile, StoreError> {
    if out.exists() {
        return Err(StoreError::Storage(format!(
            "{} exists: a backup never overwrites a file; choose another --out",
            out.display()
        )));
    }
    let (path, conn) = open_existing(data_dir, false)?;
    conn.execute("VACUUM INTO ?1", [out.to_string_lossy()])
        .map_err(storage(format!(
            "cannot copy {} to {}",
            path.display(),
            out.display()
        )))?;
    std::fs::File::open(out)
        .and_then(|f| f.sync_all())
        .map_err(|e| StoreError::Storage(format!("cannot sync {}: {e}", out.display())))?;
    let copy = Connection::open_with_flags(out, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(storage(format!("cannot open the copy {}", out.display())))?;
    let applied = applied(&copy).map_err(storage(format!("cannot read {}", out.display())))?;
    let bytes = std::fs::metadata(out).map(|m| m.len()).unwrap_or_default();
    Ok(BackupFile {
        path: out.to_owned(),
        bytes,
        applied,
    })
}

/// How a restore treats the copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestoreAs {
    /// A single node: the copy as it is.
    Single,
    /// A member of a new Raft group: the old group's position and
    /// membership are forgotten, so the group starts its log afresh on top
    /// of the data (every member must be restored from the same file). The
    /// copy is marked with the backup's SHA-256 ([`crate::SEED_MARK`]), so
    /// the members that form the group can check they share it.
    NewGroupMember,
}

/// Replaces the whole database of the writer connection `conn` (its file
/// `file`) with the one at `path` (a received snapshot), page by page
/// through SQLite's backup API, in place, so open readers see the new
/// content.
pub(crate) fn restore_in_place(
    conn: &mut Connection,
    file: &str,
    path: &Path,
) -> Result<(), StoreError> {
    let snapshot = path.display().to_string();
    let source =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            crate::connection::storage(&snapshot, "cannot open the received snapshot"),
        )?;
    let ok: String = source
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(crate::connection::storage(
            &snapshot,
            "cannot check the received snapshot",
        ))?;
    if ok != "ok" {
        return Err(StoreError::Storage(format!(
            "the received snapshot is corrupt: {ok}"
        )));
    }
    {
        let backup = rusqlite::backup::Backup::new(&source, conn).map_err(
            crate::connection::storage(file, "cannot start restoring the snapshot"),
        )?;
        backup
            .run_to_completion(1024, std::time::Duration::ZERO, None)
            .map_err(crate::connection::storage(
                file,
                "cannot restore the snapshot",
            ))?;
    }
    conn.flush_prepared_statement_cache();
    Ok(())
}

/// The SHA-256 of a backup file, in hex: the seed of the groups restored
/// from it.
fn seed_of(from: &Path) -> Result<String, StoreError> {
    use sha2::Digest;
    let mut file = std::fs::File::open(from)
        .map_err(|e| StoreError::Storage(format!("cannot read {}: {e}", from.display())))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| StoreError::Storage(format!("cannot read {}: {e}", from.display())))?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Checks that `from` is a sound flotilla database and puts a copy of it as
/// the database of `data_dir`. A database already there is refused unless
/// `replace`; then it is kept beside, renamed `<file>.replaced-<suffix>`.
/// Returns the paths that were moved aside.
pub fn restore(
    from: &Path,
    data_dir: &Path,
    how: RestoreAs,
    replace: Option<&str>,
) -> Result<Vec<PathBuf>, StoreError> {
    let target = data_dir.join(DB_FILE);
    if target.exists() && replace.is_none() {
        return Err(StoreError::Storage(format!(
            "{} already holds a database: restoring would replace it; pass --force to replace it (the old one is kept beside it)",
            data_dir.display()
        )));
    }
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StoreError::Storage(format!("cannot create {}: {e}", data_dir.display())))?;
    let staging = data_dir.join(format!("{DB_FILE}.restoring"));
    let _ = std::fs::remove_file(&staging);
    std::fs::copy(from, &staging).map_err(|e| {
        StoreError::Storage(format!(
            "cannot copy {} into {}: {e}",
            from.display(),
            data_dir.display()
        ))
    })?;
    let check = (|| {
        let conn = Connection::open(&staging)
            .map_err(storage(format!("{} is not a database", from.display())))?;
        let integrity: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(storage(format!("{} is not a database", from.display())))?;
        if integrity != "ok" {
            return Err(StoreError::Storage(format!(
                "{} is damaged (integrity check: {integrity}): restore from another backup",
                from.display()
            )));
        }
        let flotilla: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('sys__migrations', 'raft__state')",
                [],
                |r| r.get(0),
            )
            .map_err(storage(format!("cannot read {}", from.display())))?;
        if flotilla != 2 {
            return Err(StoreError::Storage(format!(
                "{} is not a flotilla database (no sys__migrations and raft__state): give a file `flotilla backup` wrote",
                from.display()
            )));
        }
        if how == RestoreAs::NewGroupMember {
            conn.execute_batch("DELETE FROM raft__state; DELETE FROM raft__requests;")
                .map_err(storage(format!("cannot prepare {}", staging.display())))?;
            conn.execute(
                "INSERT INTO raft__state (key, value) VALUES (?1, ?2)",
                rusqlite::params![crate::SEED_MARK, seed_of(from)?.as_bytes()],
            )
            .map_err(storage(format!("cannot prepare {}", staging.display())))?;
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(storage(format!("cannot prepare {}", staging.display())))?;
        Ok(())
    })();
    if let Err(e) = check {
        let _ = std::fs::remove_file(&staging);
        return Err(e);
    }
    let mut moved = Vec::new();
    if let Some(suffix) = replace {
        for name in [
            DB_FILE.to_owned(),
            format!("{DB_FILE}-wal"),
            format!("{DB_FILE}-shm"),
        ] {
            let old = data_dir.join(&name);
            if old.exists() {
                let aside = data_dir.join(format!("{name}.replaced-{suffix}"));
                std::fs::rename(&old, &aside).map_err(|e| {
                    StoreError::Storage(format!("cannot move {} aside: {e}", old.display()))
                })?;
                moved.push(aside);
            }
        }
    }
    std::fs::File::open(&staging)
        .and_then(|f| f.sync_all())
        .and_then(|()| std::fs::rename(&staging, &target))
        .and_then(|()| std::fs::File::open(data_dir).and_then(|d| d.sync_all()))
        .map_err(|e| {
            StoreError::Storage(format!("cannot put {} in place: {e}", target.display()))
        })?;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Statement, Store, StoreConfig, StoreMetrics};

    async fn store_with_rows(dir: &Path) -> Store {
        std::fs::create_dir_all(dir).unwrap();
        let store = Store::open(
            &StoreConfig {
                data_dir: dir.to_owned(),
                readers: 1,
                durability: Durability::Full,
            },
            StoreMetrics::default(),
        )
        .unwrap();
        let ns = store.namespace("kv");
        ns.migrate(&[crate::Migration {
            version: 1,
            name: "t",
            sql: "CREATE TABLE kv__t (k TEXT PRIMARY KEY) STRICT;",
        }])
        .await
        .unwrap();
        ns.write(vec![Statement::new(
            "INSERT INTO kv__t VALUES ('a')",
            vec![],
        )])
        .await
        .unwrap();
        store
    }

    #[tokio::test]
    async fn a_backup_of_a_live_store_restores_elsewhere_and_never_over_a_database() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let store = store_with_rows(&live).await;
        let out = dir.path().join("backup.db");
        let file = backup(&live, &out).unwrap();
        assert!(file.bytes > 0);
        assert!(
            backup(&live, &out)
                .unwrap_err()
                .to_string()
                .contains("never overwrites")
        );
        // Into an empty data dir, then refused over it, then replaced.
        let fresh = dir.path().join("fresh");
        assert!(
            restore(&out, &fresh, RestoreAs::Single, None)
                .unwrap()
                .is_empty()
        );
        let again = restore(&out, &fresh, RestoreAs::Single, None).unwrap_err();
        assert!(again.to_string().contains("--force"), "{again}");
        let moved = restore(&out, &fresh, RestoreAs::NewGroupMember, Some("1")).unwrap();
        assert_eq!(moved, vec![fresh.join(format!("{DB_FILE}.replaced-1"))]);
        drop(store);
        let restored = Store::open(
            &StoreConfig {
                data_dir: fresh.clone(),
                readers: 1,
                durability: Durability::Full,
            },
            StoreMetrics::default(),
        )
        .unwrap();
        let rows = restored
            .namespace("kv")
            .read(Statement::new("SELECT k FROM kv__t", vec![]))
            .await
            .unwrap()
            .rows;
        assert_eq!(rows.len(), 1);
        // Marked as the seed of a new group, with the backup's hash.
        let marks = restored.group_marks().await.unwrap();
        assert_eq!(marks.seed.as_deref(), Some(seed_of(&out).unwrap().as_str()));
        assert_eq!(
            (marks.applied, marks.group, marks.has_data),
            (None, None, true)
        );
        restored
            .set_group_mark(crate::GROUP_MARK, Some("g1".into()))
            .await
            .unwrap();
        assert_eq!(
            restored.group_marks().await.unwrap().group.as_deref(),
            Some("g1")
        );
    }

    #[test]
    fn what_is_not_a_sound_flotilla_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a database at all, not even close").unwrap();
        let e = restore(&junk, &dir.path().join("d1"), RestoreAs::Single, None).unwrap_err();
        assert!(e.to_string().contains("not a database"), "{e}");
        let other = dir.path().join("other.db");
        Connection::open(&other)
            .unwrap()
            .execute_batch("CREATE TABLE t (a);")
            .unwrap();
        let e = restore(&other, &dir.path().join("d2"), RestoreAs::Single, None).unwrap_err();
        assert!(e.to_string().contains("not a flotilla database"), "{e}");
        assert!(!dir.path().join("d2").join(DB_FILE).exists());
    }
}
