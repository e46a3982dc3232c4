//! Which Raft group a member belongs to, and where its data came from.
//!
//! A group gets an id when it is formed (random, 128 bits). A member keeps
//! it in its log and in its database, sends it with every Raft message, and
//! refuses a message from another group, naming both. A member with no
//! group yet (a fresh one) takes the group of the first member that
//! replicates to it or asks for its vote.
//!
//! At start, a member's data dir must be accounted for by its log
//! ([`refusal`]): a database with data and no log (a single node's), a
//! database ahead of its log or from another history, a log of another
//! group stop the node with what was found and the command that does what
//! the operator probably wants.
//!
//! A group formed on data that is already there (`flotilla cluster init`
//! on a running single node, or members restored from one backup) makes a
//! snapshot of it first and purges its log up to it, so that every member
//! added later receives the data by snapshot, never an empty replay of a
//! log that does not hold it.

use std::{path::Path, sync::RwLock};

use openraft::LogId;

use super::{log_store::LogFacts, *};
use crate::store::{GROUP_MARK, GroupMarks};

/// The group this member belongs to, once it knows it; shared with the
/// peer transport, which sends it and checks it.
pub type GroupCell = Arc<RwLock<Option<Arc<str>>>>;

/// The group in `cell`, if known.
pub fn group_of(cell: &GroupCell) -> Option<Arc<str>> {
    cell.read().unwrap_or_else(|p| p.into_inner()).clone()
}

/// A member's log, opened and checked against its database.
pub struct OpenedLog {
    pub log: log_store::LogStore,
    pub facts: LogFacts,
    pub marks: GroupMarks,
}

/// What a log that does not exist yet says.
pub fn no_log() -> LogFacts {
    LogFacts {
        empty: true,
        group: None,
        origin_pending: false,
        purged: None,
        last: None,
    }
}

/// A new group id: 128 random bits in hex.
pub fn new_group_id() -> String {
    super::random_hex(16)
}

fn log_id(bytes: &[u8]) -> Option<LogId<u64>> {
    serde_json::from_slice(bytes).ok()
}

/// Why a member must not start on this data dir, if it must not: what its
/// log (`log`) and database (`db`) say, and the log's entry at an index
/// (`id_at`). `config` names the node's config in the commands suggested.
pub fn refusal(
    dir: &Path,
    config: &str,
    log: &LogFacts,
    db: &GroupMarks,
    id_at: impl Fn(u64) -> Result<Option<LogId<u64>>, String>,
) -> Result<(), String> {
    let dir = dir.display();
    let applied = db.applied.as_deref().and_then(log_id);
    if log.empty {
        if let Some(a) = applied {
            return Err(format!(
                "{dir} holds a database that applied Raft entries up to index {} (group {}) but no Raft log: the log was removed, or the database was copied from another member, and this member cannot vouch for it. To bring this member back, remove it from its group (`flotilla cluster remove --id ID`), move {dir} aside, start it empty and add it again (`flotilla cluster add-learner`, then `promote`): it receives the data by snapshot",
                a.index,
                db.group.as_deref().unwrap_or("unknown")
            ));
        }
        if db.has_data && db.seed.is_none() {
            return Err(format!(
                "{dir} holds a database with data and no Raft log: a single node's database (or a copy of one). Started as a member of a new group, its data would be on this member only. To turn that single node into the first member of a cluster, run it with its single-mode config and, while it serves, run `flotilla cluster init --config {config}`; to start this member empty instead, move {dir} aside"
            ));
        }
        return Ok(());
    }
    let Some(group) = log.group.as_deref() else {
        return Err(format!(
            "{dir} holds a Raft log without a group id, written by an older flotilla: back the cluster up with that version (`flotilla backup`) and restore it into every member (`flotilla restore --force`)"
        ));
    };
    if let Some(other) = db.group.as_deref()
        && other != group
    {
        return Err(format!(
            "in {dir}, the database belongs to Raft group {other} and the Raft log to group {group}: they come from different clusters. Move {dir} aside and add this member to its group again, or restore both from one backup"
        ));
    }
    if let Some(a) = applied {
        let last = log.last.map(|l| l.index);
        if last.is_none_or(|l| a.index > l) {
            return Err(format!(
                "in {dir}, the database has applied entries up to index {} but the Raft log ends at {}: the database was copied from another member, or the log replaced. Move {dir} aside and add this member to its group again",
                a.index,
                last.map_or_else(|| "nothing".to_owned(), |l| l.to_string())
            ));
        }
        if let Some(found) = id_at(a.index)?
            && found != a
        {
            return Err(format!(
                "in {dir}, the database's last applied entry ({a}) is not the Raft log's entry at that index ({found}): they come from different histories. Move {dir} aside and add this member to its group again"
            ));
        }
    } else if db.has_data && db.seed.is_none() && db.group.is_none() {
        return Err(format!(
            "{dir} holds a database with data that no entry of its Raft log wrote (a single node's database placed beside a member's log): move the database away, or turn that single node into a cluster with `flotilla cluster init --config {config}` while it runs"
        ));
    }
    Ok(())
}

/// Refuses to start a node without the db role, or a single node, on a
/// data dir that holds a member's Raft log: its database is a replica.
pub fn refusal_for_non_member(dir: &Path, config: &str) -> Result<(), String> {
    let log = dir.join(LOG_FILE);
    if !log.exists() {
        return Ok(());
    }
    let facts = log_store::LogStore::open(&log)?.facts()?;
    if facts.empty {
        return Ok(());
    }
    Err(format!(
        "{} holds a Raft member's log ({}, group {}): its database is a replica, and this config ({config}) runs the node without the db role or without a cluster. Start it with its member config; to turn the last member of a group back into a single node, run `flotilla cluster leave --confirm` on it while it serves",
        dir.display(),
        log.display(),
        facts.group.as_deref().unwrap_or("unknown"),
    ))
}

impl Cluster {
    /// Opens the Raft log of a running single node that forms a group on
    /// its data (`flotilla cluster init`): there must be no log yet, and
    /// the database must belong to no group.
    pub async fn open_log_to_form(data_dir: &Path, store: &Store) -> Result<OpenedLog, String> {
        let log = log_store::LogStore::open(&data_dir.join(LOG_FILE))?;
        let facts = log.facts()?;
        let marks = store.group_marks().await.map_err(|e| e.to_string())?;
        if !facts.empty || marks.group.is_some() || marks.applied.is_some() {
            return Err(format!(
                "{} already holds a Raft group's state (group {}): this node cannot form a new group on it",
                data_dir.display(),
                facts
                    .group
                    .or(marks.group)
                    .unwrap_or_else(|| "unknown".into())
            ));
        }
        Ok(OpenedLog { log, facts, marks })
    }

    /// Ends the group on its last member (`flotilla cluster leave`): its
    /// store stops replicating (writes go to the database again, each
    /// durable on its own), Raft applies what it had and stops, and the
    /// group's records go: the log and snapshots are deleted, and the
    /// database forgets its group and log position. The data stays.
    pub async fn leave(&self, data_dir: &Path) -> Result<(), String> {
        let (members, leader) = {
            let m = self.raft.metrics().borrow().clone();
            let members: Vec<u64> = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, _)| *id)
                .collect();
            (members, m.current_leader)
        };
        if members != [self.id] {
            let others: Vec<u64> = members.into_iter().filter(|m| *m != self.id).collect();
            return Err(format!(
                "the group has other members ({others:?}): remove them first (`flotilla cluster remove --id N ...`), so that none is left with a group that cannot elect"
            ));
        }
        if leader != Some(self.id) {
            return Err("this member does not lead its group yet: try again in a moment".into());
        }
        self.store
            .stop_replicating()
            .await
            .map_err(|e| e.to_string())?;
        // Writes proposed before the switch are applied (and answered):
        // wait until the log stops growing and all of it is applied.
        let mut quiet_since = Instant::now();
        let mut last = None;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (log, applied) = {
                let m = self.raft.metrics().borrow().clone();
                (m.last_log_index, m.last_applied.map(|l| l.index))
            };
            if last != Some(log) {
                last = Some(log);
                quiet_since = Instant::now();
            }
            if applied == log && quiet_since.elapsed() >= Duration::from_millis(200) {
                break;
            }
            if Instant::now() >= deadline {
                return Err("Raft did not finish applying its log within 10 s; the node still replicates nothing new: restart it with its member config and try again".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        self.store.flush().await.map_err(|e| e.to_string())?;
        for key in [GROUP_MARK, crate::store::SEED_MARK, "applied", "membership"] {
            self.store
                .set_group_mark(key, None)
                .await
                .map_err(|e| e.to_string())?;
        }
        *self.group.write().unwrap_or_else(|p| p.into_inner()) = None;
        for suffix in ["", "-wal", "-shm"] {
            let file = data_dir.join(format!("{LOG_FILE}{suffix}"));
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot delete {}: {e}", file.display())),
            }
        }
        let _ = std::fs::remove_dir_all(data_dir.join("snapshots"));
        tracing::info!("left the Raft group: this node is a single node again, on the same data");
        Ok(())
    }

    /// The group this member belongs to, if it knows it yet.
    pub fn group(&self) -> Option<Arc<str>> {
        group_of(&self.group)
    }

    /// Joins group `offered` if this member has none yet (a fresh member
    /// contacted by a member of a group), recording it durably first.
    pub(super) async fn adopt(&self, offered: &str) -> Result<(), tonic::Status> {
        let _one = self.adopting.lock().await;
        match self.group() {
            Some(mine) if &*mine == offered => return Ok(()),
            Some(mine) => return Err(network::group_mismatch(&mine, offered)),
            None => {}
        }
        let fail = |e: String| tonic::Status::unavailable(format!("cannot join the group: {e}"));
        if self.seed.is_some() {
            self.log.set_origin_pending(true).await.map_err(fail)?;
        }
        self.log.set_group(offered).await.map_err(fail)?;
        self.store
            .set_group_mark(GROUP_MARK, Some(offered.to_owned()))
            .await
            .map_err(|e| fail(e.to_string()))?;
        *self.group.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(offered));
        tracing::info!(group = %offered, "joined the Raft group of the member that contacted this one");
        if self.seed.is_some() {
            self.spawn_first_snapshot();
        }
        Ok(())
    }

    /// Forms a new group of `members`, with this member first: a new group
    /// id, recorded durably, then Raft's initialization. `on_data`: the
    /// database already holds data (a single node's, or a restored
    /// backup): the caller makes the group's first snapshot of it
    /// (`first_snapshot`), which a restart makes if it was not made.
    pub async fn form_group(
        &self,
        members: BTreeMap<u64, BasicNode>,
        on_data: bool,
    ) -> Result<(), String> {
        let _one = self.adopting.lock().await;
        if self.group().is_some() {
            return Err("this member already belongs to a group".into());
        }
        let group = new_group_id();
        if on_data {
            self.log.set_origin_pending(true).await?;
        }
        self.log.set_group(&group).await?;
        self.store
            .set_group_mark(GROUP_MARK, Some(group.clone()))
            .await
            .map_err(|e| e.to_string())?;
        *self.group.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(group.as_str()));
        let voters = members.len();
        self.raft
            .initialize(members)
            .await
            .map_err(|e| format!("Raft did not initialize: {e}"))?;
        tracing::info!(group = %group, voters, "formed a new Raft group");
        Ok(())
    }

    pub(super) fn spawn_first_snapshot(&self) {
        let me = self.me.clone();
        tokio::spawn(async move {
            if let Some(cluster) = me.upgrade()
                && let Err(e) = cluster.first_snapshot().await
            {
                tracing::error!(
                    "the group's first snapshot failed: {e}. Restart this member to try again; add no member before it succeeds"
                );
            }
        });
    }

    /// Makes a snapshot of this member's database and purges the log up to
    /// it, so that members added later receive the data by snapshot: done
    /// once, by each member of a group formed on existing data.
    pub async fn first_snapshot(&self) -> Result<(), String> {
        const WAIT: Duration = Duration::from_secs(600);
        let applied = self
            .raft
            .wait(Some(WAIT))
            .metrics(|m| m.last_applied.is_some(), "an applied entry")
            .await
            .map_err(|e| e.to_string())?
            .last_applied
            .map_or(0, |l| l.index);
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = self
            .raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= applied),
                "the first snapshot",
            )
            .await
            .map_err(|e| e.to_string())?
            .snapshot
            .map_or(applied, |s| s.index);
        self.raft
            .trigger()
            .purge_log(snapshot)
            .await
            .map_err(|e| e.to_string())?;
        self.raft
            .wait(Some(WAIT))
            .metrics(
                |m| m.purged.is_some_and(|p| p.index >= snapshot),
                "the log purged up to the first snapshot",
            )
            .await
            .map_err(|e| e.to_string())?;
        self.log.set_origin_pending(false).await?;
        tracing::info!(
            index = snapshot,
            "made the group's first snapshot of the data it was formed on; new members receive it"
        );
        Ok(())
    }

    /// Forms the group from the topology at first start, safely whatever
    /// the order the members start in. Only the member with the lowest id
    /// forms it, and only once a majority of the topology's members
    /// answered and none of them belongs to a group (a member of a running
    /// group waits to be added instead); restored members must all hold the
    /// same backup. The others wait to be contacted.
    pub(super) async fn bootstrap(me: Weak<Cluster>) {
        let mut said = None::<String>;
        let mut say = |what: String| {
            if said.as_deref() != Some(&what) {
                tracing::info!("{what}");
                said = Some(what);
            }
        };
        loop {
            let Some(cluster) = me.upgrade() else { return };
            if cluster.group().is_some() {
                return;
            }
            let lowest = cluster.members.keys().next().copied();
            let mut answered = 1;
            let mut missing = Vec::new();
            let mut verdict = None;
            for (&id, member) in &cluster.members {
                if id == cluster.id {
                    continue;
                }
                match cluster.peer_status(id).await {
                    Some(status) => {
                        answered += 1;
                        if let Some(g) = status["group"].as_str() {
                            verdict = Some(format!(
                                "member {id} ({}) belongs to Raft group {g}: this member waits to be added to it (`flotilla cluster add-learner --id {}`, then `promote`)",
                                member.name, cluster.id
                            ));
                            break;
                        }
                        if status["seed"].as_str() != cluster.seed.as_deref() {
                            verdict = Some(format!(
                                "member {id} ({}) holds a different database (restored from another backup, or none) than this one: restore every member of a new group from the same backup",
                                member.name
                            ));
                            break;
                        }
                    }
                    None => missing.push(id),
                }
            }
            if let Some(v) = verdict {
                say(v);
                if cluster.group().is_none() {
                    drop(cluster);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                return;
            }
            if answered * 2 <= cluster.members.len() {
                say(format!(
                    "waiting for a majority of the topology's members to answer before forming the group; not answering: {missing:?}"
                ));
            } else if lowest == Some(cluster.id) {
                let members = cluster
                    .members
                    .values()
                    .map(|m| (m.id, BasicNode::new(m.peer.to_string())))
                    .collect();
                match cluster.form_group(members, cluster.seed.is_some()).await {
                    Ok(()) => {
                        if cluster.seed.is_some() {
                            cluster.spawn_first_snapshot();
                        }
                        return;
                    }
                    Err(e) => say(format!("could not form the group: {e}")),
                }
            } else {
                say(format!(
                    "waiting for member {} to form the group",
                    lowest.unwrap_or_default()
                ));
            }
            drop(cluster);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Member `id`'s status, if it answers within a second.
    async fn peer_status(&self, id: u64) -> Option<serde_json::Value> {
        let mut client = self.leader_client(id).ok()?;
        let call = client.admin(tonic::Request::new(network::blob(&AdminOp::Status)));
        let reply = tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .ok()?
            .ok()?;
        match network::unblob::<PeerReply<Result<serde_json::Value, String>>>(reply.get_ref())
            .ok()?
        {
            PeerReply::Done(Ok(status)) => Some(status),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(term: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn log(group: Option<&str>, last: Option<LogId<u64>>) -> LogFacts {
        LogFacts {
            empty: group.is_none() && last.is_none(),
            group: group.map(str::to_owned),
            origin_pending: false,
            purged: None,
            last,
        }
    }

    fn db(applied: Option<LogId<u64>>, group: Option<&str>, has_data: bool) -> GroupMarks {
        GroupMarks {
            applied: applied.map(|a| serde_json::to_vec(&a).unwrap()),
            group: group.map(str::to_owned),
            seed: None,
            has_data,
        }
    }

    fn check(log: &LogFacts, db: &GroupMarks, at: Option<LogId<u64>>) -> Result<(), String> {
        refusal(Path::new("data/x"), "x.yaml", log, db, |_| Ok(at))
    }

    #[test]
    fn a_fresh_member_and_a_consistent_one_start() {
        check(&log(None, None), &db(None, None, false), None).unwrap();
        let restored = GroupMarks {
            seed: Some("abc".into()),
            ..db(None, None, true)
        };
        check(&log(None, None), &restored, None).unwrap();
        check(
            &log(Some("g"), Some(id(2, 9))),
            &db(Some(id(2, 7)), Some("g"), true),
            Some(id(2, 7)),
        )
        .unwrap();
        // Behind its log (replayed at start), no group mark yet.
        check(
            &log(Some("g"), Some(id(2, 9))),
            &db(None, None, false),
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_single_nodes_database_without_a_log_is_refused_with_the_way_forward() {
        let e = check(&log(None, None), &db(None, None, true), None).unwrap_err();
        assert!(e.contains("data/x") && e.contains("no Raft log"), "{e}");
        assert!(e.contains("flotilla cluster init --config x.yaml"), "{e}");
    }

    #[test]
    fn state_the_log_does_not_account_for_is_refused() {
        let cases = [
            // Applied entries, no log.
            (
                log(None, None),
                db(Some(id(1, 5)), Some("g"), true),
                None,
                "no Raft log",
            ),
            // Another group's database.
            (
                log(Some("g"), Some(id(1, 9))),
                db(Some(id(1, 5)), Some("h"), true),
                Some(id(1, 5)),
                "different clusters",
            ),
            // Ahead of the log.
            (
                log(Some("g"), Some(id(1, 9))),
                db(Some(id(1, 12)), Some("g"), true),
                None,
                "ends at 9",
            ),
            // Another history at the same index.
            (
                log(Some("g"), Some(id(3, 9))),
                db(Some(id(2, 5)), Some("g"), true),
                Some(id(3, 5)),
                "different histories",
            ),
            // A single node's database beside a member's log.
            (
                log(Some("g"), Some(id(1, 9))),
                db(None, None, true),
                None,
                "no entry of its Raft log",
            ),
            // A log from before group ids.
            (
                LogFacts {
                    empty: false,
                    ..log(None, Some(id(1, 3)))
                },
                db(None, None, false),
                None,
                "without a group id",
            ),
        ];
        for (log, db, at, expected) in cases {
            let e = check(&log, &db, at).unwrap_err();
            assert!(e.contains(expected), "expected `{expected}` in: {e}");
        }
    }
}
