//! Failures of the machine rather than of a statement: a full disk, a
//! read-only or failing file system, a damaged file. Each is reported with
//! the file it concerns and what the operator can do about it, so that the
//! one line an operator reads (a log line, a 503's message) is enough.

use std::{io::ErrorKind, path::Path};

use rusqlite::{Connection, ffi::ErrorCode};

/// What went wrong with a file, as far as SQLite tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The file system (or the process's file size limit) has no room.
    Full,
    /// The file cannot be written: a read-only file system, or permissions.
    ReadOnly,
    /// The file's content is not what SQLite wrote: truncated or damaged.
    Damaged,
    /// The disk or file system failed the read or write.
    Io,
}

impl Fault {
    /// The fault behind `err`, if it is one of the machine's.
    pub fn of(err: &rusqlite::Error) -> Option<Fault> {
        let rusqlite::Error::SqliteFailure(e, _) = err else {
            return None;
        };
        Some(match e.code {
            ErrorCode::DiskFull => Fault::Full,
            ErrorCode::ReadOnly | ErrorCode::PermissionDenied | ErrorCode::CannotOpen => {
                Fault::ReadOnly
            }
            ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase => Fault::Damaged,
            ErrorCode::SystemIoFailure | ErrorCode::NoLargeFileSupport => Fault::Io,
            _ => return None,
        })
    }

    fn what(self) -> &'static str {
        match self {
            Fault::Full => "the file system holding it is full",
            Fault::ReadOnly => "it cannot be written (a read-only file system, or permissions)",
            Fault::Damaged => "it is damaged (truncated or overwritten)",
            Fault::Io => "the disk failed a read or write",
        }
    }

    fn fix(self) -> &'static str {
        match self {
            Fault::Full => {
                "free space on that file system (or raise the process's file size limit)"
            }
            Fault::ReadOnly => {
                "make it writable again (remount the file system read-write, or give the user flotilla runs as write permission), then restart flotilla"
            }
            Fault::Damaged => {
                "stop flotilla; on a single node, restore the latest backup (`flotilla restore --config FILE --from BACKUP --force`); on a cluster member, remove it from the cluster, move its data dir aside and add it back empty (docs/operations.md, \"Damaged files\")"
            }
            Fault::Io => {
                "check the disk (the kernel log: `dmesg`) and restart flotilla once it is sound; if the file is damaged, restore the latest backup"
            }
        }
    }
}

/// `context: error` for a failure of `file`; for a machine's fault, also
/// what it means and what to do about it.
pub fn describe(file: &str, context: &str, err: &rusqlite::Error) -> String {
    match Fault::of(err) {
        Some(Fault::Io) => explain(
            diagnose(file).unwrap_or(Fault::Io),
            file,
            context,
            &err.to_string(),
        ),
        Some(fault) => explain(fault, file, context, &err.to_string()),
        None => format!("{context}: {file}: {err}"),
    }
}

/// What a small write beside `file` says about an I/O error SQLite could
/// not tell apart: a file system turned read-only (as the kernel does
/// after errors) or a full one.
fn diagnose(file: &str) -> Option<Fault> {
    let probe = Path::new(file).parent()?.join(".flotilla-write-probe");
    let written = std::fs::write(&probe, b"probe");
    let _ = std::fs::remove_file(&probe);
    match written.err()?.kind() {
        ErrorKind::ReadOnlyFilesystem | ErrorKind::PermissionDenied => Some(Fault::ReadOnly),
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::FileTooLarge => {
            Some(Fault::Full)
        }
        _ => None,
    }
}

/// `context: file: what it means (detail); what to do`.
pub fn explain(fault: Fault, file: &str, context: &str, detail: &str) -> String {
    format!(
        "{context}: {file}: {} ({detail}); {}",
        fault.what(),
        fault.fix()
    )
}

/// Checks that the file `conn` has open is sound: `PRAGMA quick_check`
/// reads every page of it (and of its WAL) and checks the b-trees, so a
/// truncated or overwritten file is found when the node starts, not by the
/// first request that reads the damaged page. It takes time in proportion
/// to the file's size (see BENCHMARKS.md). The error names the file and the
/// fix.
pub fn check(conn: &Connection, file: &str) -> Result<(), String> {
    let context = "checking the file at start";
    let problems: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| describe(file, context, &e))?;
    if problems.len() == 1 && problems[0] == "ok" {
        return Ok(());
    }
    let problems = problems.join("; ").replace('\n', " ");
    Err(explain(Fault::Damaged, file, context, &problems))
}

/// The file a connection has open, for messages.
pub(crate) fn file_of(conn: &Connection) -> &str {
    conn.path()
        .filter(|p| !p.is_empty())
        .unwrap_or("the database")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(code: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    #[test]
    fn machine_faults_name_the_file_and_the_fix() {
        let full = describe("/d/flotilla.db", "commit failed", &failure(13));
        assert!(full.starts_with("commit failed: /d/flotilla.db: the file system"));
        assert!(full.contains("free space"), "{full}");
        let ro = describe("/d/flotilla.db", "commit failed", &failure(8));
        assert!(
            ro.contains("read-only") && ro.contains("restart flotilla"),
            "{ro}"
        );
        let damaged = describe("/d/raft-log.db", "cannot read", &failure(11));
        assert!(damaged.contains("flotilla restore"), "{damaged}");
        let not_db = describe("/d/raft-log.db", "cannot read", &failure(26));
        assert!(not_db.contains("damaged"), "{not_db}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("flotilla.db");
        let io = describe(file.to_str().unwrap(), "commit failed", &failure(10));
        assert!(io.contains("dmesg"), "{io}");
    }

    #[test]
    fn a_statement_error_is_only_named() {
        let constraint = describe("/d/flotilla.db", "insert", &failure(19));
        assert_eq!(Fault::of(&failure(19)), None);
        assert!(!constraint.contains("free space"));
        assert!(constraint.starts_with("insert: /d/flotilla.db: "));
    }
}
