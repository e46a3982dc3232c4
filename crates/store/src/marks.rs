//! The marks a member's database carries about its Raft group
//! (`raft__state`): the group it belongs to and the backup it was seeded
//! from, read with its log position and whether it holds any data.

use rusqlite::{Connection, OptionalExtension};

use crate::{GROUP_MARK, GroupMarks, SEED_MARK, StoreError, connection::storage};

/// Whether the database holds anything of a service or of flotilla's own
/// namespaces: a migration applied, or a table outside the bookkeeping.
const HAS_DATA: &str = "SELECT EXISTS (SELECT 1 FROM sys__migrations)
    OR EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table'
        AND name NOT LIKE 'sys\\_\\_%' ESCAPE '\\'
        AND name NOT LIKE 'raft\\_\\_%' ESCAPE '\\'
        AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\')";

/// The marks, with the last applied log id (`applied`) read by the caller.
pub(crate) fn read(
    conn: &Connection,
    file: &str,
    applied: Option<Vec<u8>>,
) -> Result<GroupMarks, StoreError> {
    let fail = storage(file, "cannot read the Raft group marks");
    let text = |key: &str| -> Result<Option<String>, StoreError> {
        let value: Option<Vec<u8>> = conn
            .query_row("SELECT value FROM raft__state WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .map_err(&fail)?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    };
    let has_data: bool = conn.query_row(HAS_DATA, [], |r| r.get(0)).map_err(&fail)?;
    Ok(GroupMarks {
        applied,
        group: text(GROUP_MARK)?,
        seed: text(SEED_MARK)?,
        has_data,
    })
}

/// Records (or, with `None`, forgets) one key of `raft__state`, in the
/// caller's transaction.
pub(crate) fn set(
    conn: &Connection,
    file: &str,
    key: &str,
    value: Option<String>,
) -> Result<(), StoreError> {
    let done = match &value {
        Some(v) => conn.execute(
            "INSERT INTO raft__state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, v.as_bytes()],
        ),
        None => conn.execute("DELETE FROM raft__state WHERE key = ?1", [key]),
    };
    done.map(|_| ())
        .map_err(storage(file, "cannot record the Raft group"))
}
