//! Membership changes' helpers: waiting for learners to catch up, and
//! what an operator reads when a change fails.

use super::*;

/// What an operator reads when a membership change fails: a change cut
/// short by a leader change may still be applied, and says so.
pub(super) fn membership_error(
    e: openraft::error::RaftError<u64, ClientWriteError<u64, BasicNode>>,
) -> String {
    use openraft::error::{ChangeMembershipError, RaftError};
    if let RaftError::APIError(ClientWriteError::ChangeMembershipError(
        ChangeMembershipError::InProgress(_),
    )) = &e
    {
        return "a membership change is still being made (perhaps this one, from an earlier attempt; a change is finished once a majority of both the old and the new members have it): wait a moment, check `flotilla cluster status`, and run the command again if it is not there".to_owned();
    }
    match e.forward_to_leader() {
        Some(f) => format!(
            "the leadership moved (to {}) while the change was being made; it may or may not have been applied: check `flotilla cluster status`, and run the command again if not (it is safe to repeat)",
            f.leader_id
                .map_or_else(|| "no leader yet".to_owned(), |id| format!("member {id}"))
        ),
        None => e.to_string(),
    }
}

impl Cluster {
    /// Waits until every member in `ids` holds the log up to the commit
    /// index this leader had when it was called (a learner receives the
    /// database by snapshot first), or `network::ADMIN_PATIENCE` passes.
    pub(super) async fn caught_up(&self, ids: &BTreeSet<u64>) -> Result<(), String> {
        let target = self.committed.load(std::sync::atomic::Ordering::SeqCst);
        let deadline = Instant::now() + network::ADMIN_PATIENCE;
        loop {
            let behind: Vec<(u64, Option<u64>)> = {
                let m = self.raft.metrics().borrow().clone();
                let Some(replication) = m.replication else {
                    return Err("this member no longer leads: run the command again".into());
                };
                if let Some(unknown) = ids.iter().find(|id| !replication.contains_key(*id)) {
                    return Err(format!(
                        "{unknown} is not a learner of this group: add it first (`flotilla cluster add-learner --id {unknown}`)"
                    ));
                }
                ids.iter()
                    .map(|id| (*id, replication.get(id).cloned().flatten().map(|l| l.index)))
                    .filter(|(_, matched)| matched.is_none_or(|i| i < target))
                    .collect()
            };
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not caught up after {} s (member, log index it holds; the group's is {target}): {behind:?}; is it running and reachable?",
                    network::ADMIN_PATIENCE.as_secs()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
