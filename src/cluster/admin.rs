//! The `flotilla cluster` operations a member runs (membership changes,
//! leadership transfer, status), and Raft's view of the member for
//! `/status`.

use super::*;

/// How many entries a follower may lack of the leader's log before
/// `/status` calls it lagging: many times what the leader keeps in flight
/// (`ENTRIES_IN_FLIGHT`), so that a follower that keeps up under load is
/// not flagged, and one that fell behind (slow disk, catching up) is.
const LAGGING_AFTER_ENTRIES: u64 = 16 * ENTRIES_IN_FLIGHT as u64;

impl Cluster {
    /// Runs a `flotilla cluster` operation here, if this node can (status,
    /// or any change when it leads); `Err(leader)` asks the caller to go to
    /// the leader.
    pub async fn admin(
        &self,
        op: AdminOp,
    ) -> Result<Result<serde_json::Value, String>, Option<u64>> {
        use openraft::ChangeMembers;
        if matches!(op, AdminOp::Status) {
            return Ok(Ok(self.status()));
        }
        let leader = self.raft.current_leader().await;
        if leader != Some(self.id) {
            return Err(leader);
        }
        let voters = self.voters();
        let two_voters = |n: usize| {
            (n == 2).then(|| {
                "refused: two voters cannot tolerate the loss of either; keep 1 or 3 or more"
                    .to_owned()
            })
        };
        let result = match op {
            AdminOp::Status => unreachable!("answered above"),
            AdminOp::AddLearner { id, peer } => {
                if voters.contains(&id) {
                    return Ok(Err(format!("{id} is already a voter")));
                }
                match self.raft.add_learner(id, BasicNode::new(peer), true).await {
                    Ok(_) => self.caught_up(&BTreeSet::from([id])).await,
                    Err(e) => Err(membership_error(e)),
                }
            }
            AdminOp::Promote { ids } => {
                let ids: BTreeSet<u64> = ids.into_iter().collect();
                if let Some(refusal) = two_voters(voters.union(&ids).count()) {
                    return Ok(Err(refusal));
                }
                // A voter that is far behind would hold every write until
                // it caught up (the new majority needs it): promote only
                // learners that have.
                let learners: BTreeSet<u64> = ids.difference(&voters).copied().collect();
                if let Err(e) = self.caught_up(&learners).await {
                    return Ok(Err(e));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds(ids), false)
                    .await
                    .map(|_| ())
                    .map_err(membership_error)
            }
            AdminOp::Remove { ids } => {
                let ids: BTreeSet<u64> = ids.into_iter().collect();
                if let Some(refusal) = two_voters(voters.difference(&ids).count()) {
                    return Ok(Err(refusal));
                }
                if voters.is_subset(&ids) {
                    return Ok(Err("refused: that would leave no voter; to end the group on its last member, run `flotilla cluster leave --confirm` there".into()));
                }
                let learners: BTreeSet<u64> = ids.difference(&voters).copied().collect();
                let voters_out: BTreeSet<u64> = ids.intersection(&voters).copied().collect();
                let mut done = Ok(());
                if !voters_out.is_empty() {
                    done = self
                        .raft
                        .change_membership(ChangeMembers::RemoveVoters(voters_out), false)
                        .await
                        .map(|_| ())
                        .map_err(membership_error);
                }
                if done.is_ok() && !learners.is_empty() {
                    done = self
                        .raft
                        .change_membership(ChangeMembers::RemoveNodes(learners), false)
                        .await
                        .map(|_| ())
                        .map_err(membership_error);
                }
                done
            }
            AdminOp::TransferLeader { to } => match to {
                Some(target) if !voters.contains(&target) => {
                    Err(format!("{target} is not a voter"))
                }
                Some(target) => match self.hand_over_to(target).await {
                    Some(l) if l == target => Ok(()),
                    other => Err(format!(
                        "leadership went to {other:?}, not {target}: try again"
                    )),
                },
                None => {
                    self.transfer_leadership().await;
                    Ok(())
                }
            },
        };
        Ok(result.map(|()| self.status()))
    }

    /// How long a member goes unheard before `/status` calls it
    /// unreachable: longer than a hand-over keeps the leader quiet
    /// (`handover`: the lease, about the shortest timeout, and an eighth of
    /// it), so that a hand-over shows no member unreachable.
    fn unreachable_after(&self) -> Duration {
        self.election_timeout_max + self.election_timeout_min / 2
    }

    /// Raft's view of this node, for `/status` and `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        let view = contact::View {
            me: self.id,
            leader: m.current_leader,
            limit: self.unreachable_after(),
        };
        // Everyone in the membership (voters and learners), named from the
        // topology when it knows them, with what this member can tell of
        // each (see `contact`).
        let peers: Vec<serde_json::Value> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index);
                let since = self.contacts.since(*id);
                let lag = (m.current_leader == Some(self.id) && *id != self.id)
                    .then(|| contact::lag(m.last_log_index, matched))
                    .flatten();
                serde_json::json!({
                    "id": id,
                    "name": self.members.get(id).map(|member| member.name.clone()),
                    "peer": node.addr,
                    "voter": voters.contains(id),
                    "role": if m.current_leader == Some(*id) {
                        "leader"
                    } else if voters.contains(id) {
                        "follower"
                    } else {
                        "learner"
                    },
                    "matched_index": matched,
                    "lag": lag,
                    "lagging": lag.is_some_and(|l| l > LAGGING_AFTER_ENTRIES),
                    "last_contact_ms": since.map(|s| s.as_millis() as u64),
                    "reachability": view.reachability(*id, since),
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "group": self.group(),
            "seed": self.seed,
            "role": format!("{:?}", m.state),
            "stopped": stop_reason(&m),
            "term": m.current_term,
            "leader": m.current_leader,
            "last_log_index": m.last_log_index,
            "commit_index": self.committed.load(std::sync::atomic::Ordering::SeqCst),
            "applied_index": m.last_applied.map(|l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
            // Log entries up to here are gone from this member's log: a
            // member further behind catches up from a snapshot.
            "purged_index": m.purged.map(|l| l.index),
            "peers": peers,
            // A peer this member tracks (see `contact`) is unreachable when
            // not heard from for longer; one further behind the leader's
            // log than `lagging_after_entries` is lagging.
            "unreachable_after_ms": self.unreachable_after().as_millis() as u64,
            "lagging_after_entries": LAGGING_AFTER_ENTRIES,
            // This member's certificate (null with `tls: off`), and the
            // store clients' it issued.
            "tls": self.tls.as_ref().map(|t| t.status()),
            "tls_issued": self.tls.as_ref().map(|t| {
                self.issued
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .map(|info| crate::tls::peer::describe(info, t.domain()))
                    .collect::<Vec<_>>()
            }),
        })
    }

    /// The voters of the membership this member knows.
    pub(super) fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }
}
