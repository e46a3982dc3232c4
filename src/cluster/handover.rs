//! Handing leadership over: openraft 0.9 has no transfer, so the leader
//! goes quiet (holds back proposals and read-index rounds at a gate), waits
//! out the followers' leases, and asks the target to campaign.

use super::*;

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
    /// leader last reached it; it stands itself only a quarter of the
    /// shortest election timeout after that, at the earliest. So the leader
    /// goes quiet (no heartbeats, and proposals and read-index rounds
    /// wait), lets the leases lapse, and then asks the target to campaign:
    /// the target is the first candidate the followers can vote for. The
    /// caller gets the outcome, not a promise.
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
        // past every lease, and before any other follower stands on its
        // own, a quarter of the shortest timeout after its lease
        // (`elect::elector`).
        let _ = self.raft.trigger().heartbeat().await;
        tokio::time::sleep(self.lease + self.election_timeout_min / 8).await;
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
