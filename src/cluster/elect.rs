//! PreVote (docs/adr/0008-prevote.md): openraft's own election timer is off
//! (`enable_elect: false`); this member's elector starts an election only
//! after a majority of the voters said they would vote for it, so a member
//! cut off from the others never raises its term, and coming back causes no
//! election while the leader is healthy.

use std::collections::BTreeSet;

use openraft::{
    LogId, ServerState, Vote,
    raft::{VoteRequest, VoteResponse},
};
use rand::Rng;

use super::*;

/// How often the elector looks at the member's state.
const TICK: Duration = Duration::from_millis(50);

/// The leader lease of a member whose shortest election timeout is `min`
/// (see `Cluster::lease`).
pub(super) fn lease(min: Duration) -> Duration {
    min + Duration::from_millis(1)
}

/// Whether a member would vote for a candidate whose last log entry is
/// `candidate`: not while it leads or its leader's lease is alive (the rule
/// and timestamp of openraft's own vote check), and not for a log behind
/// its own. Terms are not compared: the real vote still decides.
pub(super) fn would_grant(
    leading: bool,
    lease_alive: bool,
    candidate: Option<LogId<u64>>,
    mine: Option<LogId<u64>>,
) -> bool {
    !leading && !lease_alive && candidate >= mine
}

/// Whether `granted` holds a majority of every configuration (two during a
/// joint membership change).
pub(super) fn quorum(configs: &[BTreeSet<u64>], granted: &BTreeSet<u64>) -> bool {
    configs
        .iter()
        .all(|voters| voters.intersection(granted).count() * 2 > voters.len())
}

/// The vote, whether it is committed, and how long ago it was last
/// refreshed (by the leader's messages, or by this member's own vote).
struct VoteState {
    vote: Vote<u64>,
    leading: bool,
    since: Option<Duration>,
}

impl Cluster {
    /// Holds this member's candidacy for `hold`: its leader hands over to
    /// another member.
    pub(super) fn hold_candidacy(&self, hold: Duration) {
        *self
            .candidacy_held_until
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + hold);
    }

    fn candidacy_held(&self) -> bool {
        self.candidacy_held_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|until| Instant::now() < until)
    }

    async fn vote_state(&self) -> Option<VoteState> {
        self.raft
            .with_raft_state(|st| VoteState {
                vote: *st.vote_ref(),
                leading: st.server_state == ServerState::Leader,
                since: st.vote_last_modified().map(|t| t.elapsed()),
            })
            .await
            .ok()
    }

    fn last_log(&self) -> Option<LogId<u64>> {
        self.raft.data_metrics().borrow().last_log
    }

    /// The answer to another member's PreVote; changes nothing here.
    pub(super) async fn pre_vote(&self, req: &VoteRequest<u64>) -> Option<VoteResponse<u64>> {
        let state = self.vote_state().await?;
        let lease_alive =
            state.vote.is_committed() && state.since.is_some_and(|since| since <= self.lease);
        let mine = self.last_log();
        Some(VoteResponse {
            vote: state.vote,
            vote_granted: would_grant(state.leading, lease_alive, req.last_log_id, mine),
            last_log_id: mine,
        })
    }

    /// Asks the other voters whether they would vote for this member:
    /// whether a majority of every configuration would, and whether a
    /// majority answered at all (if not, this member is cut off).
    async fn pre_vote_round(&self, term: u64) -> (bool, bool) {
        let membership = self.raft.metrics().borrow().membership_config.clone();
        let configs = membership.membership().get_joint_config().clone();
        let mut granted = BTreeSet::from([self.id]);
        let mut answered = BTreeSet::from([self.id]);
        // A member cut off by fault injection is refused only on the
        // receiving side of its own calls: count its peers as no.
        if !self.faults.isolated() {
            let req = VoteRequest {
                vote: Vote::new(term + 1, self.id),
                last_log_id: self.last_log(),
            };
            let others: BTreeSet<u64> = configs
                .iter()
                .flatten()
                .copied()
                .filter(|id| *id != self.id)
                .collect();
            let asks = others.into_iter().map(|id| {
                let req = network::blob(&req);
                async move {
                    let Ok(mut client) = self.leader_client(id) else {
                        return (id, None);
                    };
                    let call = client.pre_vote(tonic::Request::new(req));
                    let granted = match tokio::time::timeout(self.election_timeout_min, call).await
                    {
                        Ok(Ok(reply)) => Some(
                            serde_json::from_slice::<VoteResponse<u64>>(&reply.into_inner().data)
                                .is_ok_and(|r| r.vote_granted),
                        ),
                        // A member of an older version, without PreVote.
                        Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                            Some(true)
                        }
                        // It answered: it is there, and said no.
                        Ok(Err(status)) if !network::is_unreachable(&status) => Some(false),
                        Ok(Err(_)) | Err(_) => None,
                    };
                    (id, granted)
                }
            });
            for (id, answer) in futures_util::future::join_all(asks).await {
                if let Some(yes) = answer {
                    answered.insert(id);
                    if yes {
                        granted.insert(id);
                    }
                }
            }
        }
        (quorum(&configs, &granted), quorum(&configs, &answered))
    }

    /// Since when this member has known it is cut off from a majority (no
    /// leader heard and its last PreVote round unanswered by a majority).
    pub(super) fn cut_off(&self) -> Option<Instant> {
        *self.cut_off_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records what the last PreVote round or the leader's last message
    /// said about this member's reach.
    pub(super) fn set_cut_off(&self, cut_off: bool) {
        let mut since = self.cut_off_since.lock().unwrap_or_else(|p| p.into_inner());
        match (cut_off, *since) {
            (true, None) => {
                tracing::warn!(
                    "no majority of the voters answers: this member is cut off; it refuses writes and reads until it hears from a leader"
                );
                *since = Some(Instant::now());
            }
            (false, Some(_)) => {
                tracing::info!("this member reaches a majority again");
                *since = None;
            }
            _ => {}
        }
    }
}

/// Runs until the cluster is dropped or Raft stops: when no leader has
/// been heard from for as long as its lease (the shortest election timeout,
/// during which the members refuse to vote) and a random part of up to the
/// timeouts' spread, a PreVote round, and an election only if it won a
/// majority; not while a hand-over to another member holds its candidacy.
pub(super) async fn elector(cluster: Weak<Cluster>) {
    let timeout = |c: &Cluster| {
        let (min, max) = (c.election_timeout_min, c.election_timeout_max);
        rand::thread_rng().gen_range(min..=max.max(min))
    };
    let mut wait = match cluster.upgrade() {
        Some(c) => timeout(&c),
        None => return,
    };
    let mut next_attempt = Instant::now();
    let mut next_probe = Instant::now();
    // Until the next look: a tick, or less when a lease lapses or a wait
    // ends sooner (a failover is not a tick late).
    let mut pause = TICK;
    loop {
        tokio::time::sleep(pause).await;
        pause = TICK;
        let Some(c) = cluster.upgrade() else { return };
        if c.stopped().is_some() {
            return;
        }
        // The cheap answers first (Raft's metrics, the leader's last
        // message), so that a healthy member does not ask Raft's core for
        // its vote every tick.
        let leading = c.raft.metrics().borrow().state == ServerState::Leader;
        if leading
            || !c.voters().contains(&c.id)
            || c.handing_over.load(std::sync::atomic::Ordering::SeqCst)
        {
            continue;
        }
        if let Some(left) = c.leader_lease_left() {
            pause = TICK.min(left + Duration::from_millis(1));
            continue;
        }
        let Some(state) = c.vote_state().await else {
            return;
        };
        if state.leading {
            continue;
        }
        let term = state.vote.leader_id().term;
        // Once the leader's lease has lapsed here, ask the others at once
        // whether they are there at all (the answer to "would you vote"
        // is not used yet): a member cut off learns it, and refuses what
        // it would otherwise send into the void, an election timeout
        // sooner than the election attempt below would tell it.
        let lapsed = state.since.is_some_and(|since| since >= c.lease);
        if lapsed && c.cut_off().is_none() && Instant::now() >= next_probe {
            let (_, reached) = c.pre_vote_round(term).await;
            c.set_cut_off(!reached);
            next_probe = Instant::now() + c.election_timeout_min;
        }
        if let Some(left) = next_attempt.checked_duration_since(Instant::now())
            && !left.is_zero()
        {
            pause = TICK.min(left);
            continue;
        }
        // A committed vote is a leader's: its lease first (the others
        // refuse to vote until theirs lapses too, at about the same
        // moment), then the random part of the timeout, which keeps the
        // members from standing at once.
        let due = if state.vote.is_committed() {
            c.lease + wait.saturating_sub(c.election_timeout_min)
        } else {
            wait
        };
        if let Some(left) = state.since.and_then(|since| due.checked_sub(since))
            && !left.is_zero()
        {
            pause = TICK.min(left);
            continue;
        }
        if c.candidacy_held() {
            continue;
        }
        let (won, reached) = c.pre_vote_round(term).await;
        c.set_cut_off(!reached);
        if won {
            // Unless a leader spoke meanwhile.
            if let Some(now) = c.vote_state().await
                && !now.leading
                && now.vote == state.vote
            {
                tracing::info!(
                    term = term + 1,
                    "a majority would vote for this member: election"
                );
                let _ = c.raft.trigger().elect().await;
            }
        } else {
            tracing::debug!(term, "pre-vote: no majority; not raising the term");
        }
        wait = timeout(&c);
        next_attempt = Instant::now() + wait;
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn log(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_member_grants_only_without_a_live_leader_and_for_a_log_as_long() {
        assert!(would_grant(false, false, log(2, 5), log(2, 5)));
        assert!(
            would_grant(false, false, log(3, 1), log(2, 5)),
            "a later term is longer"
        );
        assert!(would_grant(false, false, log(1, 1), None));
        assert!(!would_grant(true, false, log(2, 9), log(2, 5)), "it leads");
        assert!(
            !would_grant(false, true, log(2, 9), log(2, 5)),
            "its leader's lease is alive"
        );
        assert!(!would_grant(false, false, log(2, 4), log(2, 5)), "behind");
        assert!(!would_grant(false, false, None, log(1, 1)), "empty");
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_each() {
        let old = BTreeSet::from([1, 2, 3]);
        let new = BTreeSet::from([3, 4, 5]);
        assert!(quorum(std::slice::from_ref(&old), &BTreeSet::from([1, 2])));
        assert!(!quorum(std::slice::from_ref(&old), &BTreeSet::from([1])));
        assert!(!quorum(
            &[old.clone(), new.clone()],
            &BTreeSet::from([1, 2])
        ));
        assert!(quorum(&[old, new], &BTreeSet::from([2, 3, 4])));
        assert!(quorum(&[BTreeSet::from([1])], &BTreeSet::from([1])));
    }
}
