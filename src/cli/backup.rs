//! `flotilla backup` and `flotilla restore` (docs/operations.md).
//!
//! A backup is taken from the outside of a running node, on its host, with
//! its config: one consistent read of its database file. In a cluster it
//! first learns the group's commit index from the members and waits until
//! this member's file has applied up to it, so every write acknowledged
//! before the backup started is in the copy.

use std::{path::Path, process::ExitCode, time::Duration};

use sha2::{Digest, Sha256};

use super::EX_USAGE;
use crate::{
    catalogue::Catalogue,
    config::Config,
    store::backup::{self, RestoreAs},
};

/// How long the member's file may take to apply up to the commit index.
const CATCH_UP: Duration = Duration::from_secs(10);

fn load(path: &Path, catalogue: &Catalogue, what: &str) -> Result<Config, ExitCode> {
    let config = Config::load(path, catalogue).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EX_USAGE)
    })?;
    if config.cluster.is_some() && !config.db_role {
        eprintln!(
            "flotilla: {} keeps no copy of the database (it has no db role): {what} with a db member's config",
            config.node_id
        );
        return Err(ExitCode::from(EX_USAGE));
    }
    Ok(config)
}

fn index_of(applied: Option<&[u8]>) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(applied?).ok()?;
    value["index"].as_u64()
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("flotilla: {message}");
    ExitCode::FAILURE
}

pub(super) fn backup(path: &Path, catalogue: &Catalogue, out: &Path) -> ExitCode {
    let config = match load(path, catalogue, "back up") {
        Ok(c) => c,
        Err(code) => return code,
    };
    let commit = match &config.cluster {
        Some(settings) => match commit_index(settings) {
            Ok(index) => {
                if let Err(e) = wait_applied(&config.data_dir, index) {
                    return fail(e);
                }
                Some(index)
            }
            Err(e) => return fail(e),
        },
        None => None,
    };
    let file = match backup::backup(&config.data_dir, out) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    // Streamed: a backup may be larger than the memory at hand.
    let mut hasher = Sha256::new();
    let sha256 = match std::fs::File::open(&file.path)
        .and_then(|mut f| std::io::copy(&mut f, &mut hasher))
    {
        Ok(_) => format!("{:x}", hasher.finalize()),
        Err(e) => return fail(format!("cannot read back {}: {e}", file.path.display())),
    };
    let report = serde_json::json!({
        "file": file.path.display().to_string(),
        "bytes": file.bytes,
        "sha256": sha256,
        "applied_index": index_of(file.applied.as_deref()),
        "commit_index_at_start": commit,
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    ExitCode::SUCCESS
}

/// The highest commit index the members report: every write acknowledged
/// so far is at or below it.
fn commit_index(settings: &crate::cluster::ClusterSettings) -> Result<u64, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let statuses = runtime.block_on(crate::cluster::remote_admin(
        settings,
        crate::cluster::AdminOp::Status,
    ))?;
    statuses
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["status"]["commit_index"].as_u64())
        .max()
        .ok_or_else(|| {
            format!("no cluster member answered ({statuses}): a cluster backup needs its members running")
        })
}

/// Waits until the database file of `data_dir` has applied `index`.
fn wait_applied(data_dir: &Path, index: u64) -> Result<(), String> {
    let deadline = std::time::Instant::now() + CATCH_UP;
    loop {
        let applied = backup::applied_on_disk(data_dir)
            .map_err(|e| e.to_string())
            .map(|a| index_of(a.as_deref()))?;
        if applied.is_some_and(|a| a >= index) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "this member's database has applied up to {applied:?}, not the cluster's commit index {index}, after {} s: is this member running and in the group? Run the backup on a member that keeps up",
                CATCH_UP.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(super) fn restore(path: &Path, catalogue: &Catalogue, from: &Path, force: bool) -> ExitCode {
    let config = match load(path, catalogue, "restore") {
        Ok(c) => c,
        Err(code) => return code,
    };
    if std::net::TcpStream::connect_timeout(&config.listeners.public, Duration::from_millis(300))
        .is_ok()
    {
        return fail(format!(
            "something answers on this node's public listener {}: stop the node before restoring into its data dir",
            config.listeners.public
        ));
    }
    let suffix = crate::store::now_ms().to_string();
    let replace = force.then_some(suffix.as_str());
    let how = if config.cluster.is_some() {
        RestoreAs::NewGroupMember
    } else {
        RestoreAs::Single
    };
    let mut moved = Vec::new();
    if how == RestoreAs::NewGroupMember {
        let log = config.data_dir.join(crate::cluster::LOG_FILE);
        if log.exists() {
            if !force {
                return fail(format!(
                    "{} holds a Raft log ({}): restoring starts a new group; pass --force to replace it (the old files are kept beside)",
                    config.data_dir.display(),
                    log.display()
                ));
            }
            for name in ["", "-wal", "-shm"] {
                let old = config
                    .data_dir
                    .join(format!("{}{name}", crate::cluster::LOG_FILE));
                if old.exists() {
                    let aside = old.with_file_name(format!(
                        "{}{name}.replaced-{suffix}",
                        crate::cluster::LOG_FILE
                    ));
                    if let Err(e) = std::fs::rename(&old, &aside) {
                        return fail(format!("cannot move {} aside: {e}", old.display()));
                    }
                    moved.push(aside);
                }
            }
        }
    }
    match backup::restore(from, &config.data_dir, how, replace) {
        Ok(aside) => moved.extend(aside),
        Err(e) => return fail(e),
    }
    println!(
        "restored {} into {}",
        from.display(),
        config.data_dir.display()
    );
    for m in moved {
        println!("kept the replaced {}", m.display());
    }
    if how == RestoreAs::NewGroupMember {
        println!(
            "this member starts a new Raft group on this data: restore every member of the group from the same file before any of them starts"
        );
    }
    ExitCode::SUCCESS
}
