//! Handing leadership over: openraft 0.9 has no transfer, so the leader
//! goes quiet (holds back proposals and read-index rounds at a gate), waits
//! out the followers' leases, and asks the target to campaign.

use super::*;

/// What a leader handing over tells the other followers: whom it hands
/// over to, and for how long they should not stand themselves.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct HandOverNotice {
    pub target: u64,
    pub hold_ms: u64,
}

/// The longest hold a follower takes from a notice: a hand-over asks its
/// target within about two election timeouts.
const MAX_HOLD: Duration = Duration::from_secs(5);

impl HandOverNotice {
    /// The hold it asks for, if it is one a follower takes.
    pub(super) fn hold(&self) -> Result<Duration, String> {
        let hold = Duration::from_millis(self.hold_ms);
        if hold > MAX_HOLD {
            return Err(format!(
                "a hand-over asks to hold candidacy for {} ms; at most {} ms is taken",
                self.hold_ms,
                MAX_HOLD.as_millis()
            ));
        }
        Ok(hold)
    }
}

/// Held for reading by everything that makes the leader contact its
/// followers (proposals and read-index rounds); a leadership hand-over holds
/// it for writing, so that the followers' leader leases can lapse.
pub(super) type Quiet = Arc<tokio::sync::RwLock<()>>;

impl Cluster {
    /// Asks the most caught-up follower to start an election now and waits
    /// (briefly) until someone else leads.
    pub async fn transfer_leadership(&self) {
        let m = self.raft.metrics().borrow().clone();
        let Some(replication) = m.replication else {
            return;
        };
        let target = replication
            .iter()
            .filter(|(id, _)| **id != self.id)
            .max_by_key(|(_, matched)| matched.map(|l| l.index))
            .map(|(id, _)| *id);
        if let Some(target) = target {
            self.hand_over_to(target).await;
        }
    }

    /// Hands leadership to `target` and returns who leads afterwards.
    ///
    /// openraft 0.9 has no leadership transfer, and a follower refuses to
    /// vote until its leader lease (`Cluster::lease`) has passed since the
    /// leader last reached it. So the leader goes quiet (no heartbeats, and
    /// proposals and read-index rounds wait), tells the other followers not
    /// to stand meanwhile (`HandOver`), lets the leases lapse, and then
    /// asks the target to campaign: the target is the first candidate the
    /// followers can vote for. The caller gets the outcome, not a promise.
    pub(super) async fn hand_over_to(&self, target: u64) -> Option<u64> {
        let Ok(mut client) = self.leader_client(target) else {
            return self.raft.current_leader().await;
        };
        let gate = self.quiet.write().await;
        // Another hand-over may have run while this one waited.
        if self.raft.current_leader().await != Some(self.id) {
            return self.raft.current_leader().await;
        }
        let quiet = QuietLeader::start(self, gate);
        // One last heartbeat now (openraft sends it with heartbeats off), so
        // that every follower's lease runs from this moment, not from a
        // heartbeat up to one interval ago: the wait below then ends just
        // past every lease.
        let _ = self.raft.trigger().heartbeat().await;
        // The other followers hold their candidacy until the target has
        // had its election (a follower that does not hear it may stand on
        // its own once its lease lapses, and win: the hand-over then goes
        // there, and no write is lost either way).
        let ask_after = self.lease + self.election_timeout_min / 8;
        let notice = network::blob(&HandOverNotice {
            target,
            hold_ms: (ask_after + self.election_timeout_max).as_millis() as u64,
        });
        let others: Vec<u64> = self
            .voters()
            .into_iter()
            .filter(|id| *id != self.id && *id != target)
            .collect();
        let tell = others.into_iter().map(|id| {
            let notice = notice.clone();
            async move {
                let Ok(mut peer) = self.leader_client(id) else {
                    return;
                };
                let mut req = tonic::Request::new(notice);
                req.set_timeout(self.election_timeout_min / 2);
                if let Err(e) = peer.hand_over(req).await
                    && e.code() != tonic::Code::Unimplemented
                {
                    tracing::debug!(member = id, error = %e, "a follower did not hear of the hand-over");
                }
            }
        });
        tokio::join!(
            futures_util::future::join_all(tell),
            tokio::time::sleep(ask_after)
        );
        let mut req = tonic::Request::new(Blob::default());
        req.set_timeout(Duration::from_secs(1));
        let asked = matches!(
            tokio::time::timeout(Duration::from_secs(1), client.timeout_now(req)).await,
            Ok(Ok(_))
        );
        if asked {
            let _ = self
                .raft
                .wait(Some(self.election_timeout_max * 2))
                .metrics(
                    |m| m.current_leader.is_some_and(|l| l != self.id),
                    "leadership handed over",
                )
                .await;
        }
        drop(quiet);
        let leader = self.raft.current_leader().await;
        tracing::info!(asked = target, ?leader, "leadership hand-over");
        leader
    }
}

/// A leader kept quiet for a hand-over: no heartbeats, proposals and
/// read-index rounds held at the gate. Dropping it (also when the hand-over
/// is cancelled) makes the leader speak again.
pub(super) struct QuietLeader<'a> {
    cluster: &'a Cluster,
    _gate: tokio::sync::RwLockWriteGuard<'a, ()>,
}

impl<'a> QuietLeader<'a> {
    pub(super) fn start(cluster: &'a Cluster, gate: tokio::sync::RwLockWriteGuard<'a, ()>) -> Self {
        cluster
            .handing_over
            .store(true, std::sync::atomic::Ordering::SeqCst);
        cluster.raft.runtime_config().heartbeat(false);
        QuietLeader {
            cluster,
            _gate: gate,
        }
    }
}

impl Drop for QuietLeader<'_> {
    fn drop(&mut self) {
        self.cluster.raft.runtime_config().heartbeat(true);
        self.cluster
            .handing_over
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_followers_hold_is_bounded() {
        let notice = |hold_ms| HandOverNotice { target: 2, hold_ms };
        assert_eq!(notice(626).hold(), Ok(Duration::from_millis(626)));
        let why = notice(3_600_000).hold().unwrap_err();
        assert!(why.contains("at most 5000 ms"), "{why}");
    }
}
