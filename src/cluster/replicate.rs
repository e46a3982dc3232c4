//! Writes and reads through the cluster. A write from anywhere becomes a
//! proposal (a request id, and a time and seeds the leader stamps) gathered
//! with others into one Raft entry, or is forwarded to the leader, gathered
//! with other forwarded writes into one call. A linearizable read is
//! confirmed by a read-index round that every read waiting then shares; a
//! stale read is served from this node's copy within its bound.

use super::*;

/// At most this many entries of gathered proposals are in flight at once;
/// proposals that arrive meanwhile wait and share the next entry, so the
/// per-entry costs (log record, replication round, apply transaction) are
/// paid once for many writes.
pub(super) const ENTRIES_IN_FLIGHT: usize = 4;

/// The most proposals one entry carries.
pub(super) const MAX_BATCH: usize = 512;

/// Writes a follower forwards to the leader in one call, with the time
/// (wall clock, milliseconds) after which the sender no longer waits for
/// them: the leader proposes none of them after it.
#[derive(Serialize, Deserialize)]
pub(super) struct ForwardedBatch {
    pub deadline_ms: i64,
    pub writes: Vec<(String, Command)>,
}

/// A proposal waiting to be gathered into an entry.
pub(super) struct Pending {
    request_id: String,
    command: Command,
    reply: tokio::sync::oneshot::Sender<Result<ApplyResponse, Refusal>>,
}

/// Takes what arrives on `queue` in batches: at most `in_flight` batches
/// are being handled at once, and what arrives meanwhile waits and forms
/// the next batch (of at most `MAX_BATCH`). A batch is formed just before it
/// is handled: everything in it arrived before its handling started.
pub(super) async fn gather<T, F, Fut>(
    mut queue: tokio::sync::mpsc::UnboundedReceiver<T>,
    in_flight: usize,
    handle: F,
) where
    F: Fn(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let in_flight = Arc::new(tokio::sync::Semaphore::new(in_flight));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let work = handle(batch);
        tokio::spawn(async move {
            let _permit = permit;
            work.await;
        });
    }
}

/// A read waiting for a read-index round: `Ok` once this node has confirmed
/// it leads and applied up to the read index, or the leader it knows of.
pub(super) type Confirmation = tokio::sync::oneshot::Sender<Result<(), Option<u64>>>;

/// One read-index round for every read gathered: this node confirms with a
/// quorum that it leads and waits until it has applied up to the read index.
pub(super) async fn confirm_gathered(
    raft: Raft<TypeConfig>,
    quiet: Quiet,
    waiters: Vec<Confirmation>,
) {
    let confirmed = tokio::time::timeout(PROPOSAL_WAIT, async {
        let _open = quiet.read().await;
        raft.ensure_linearizable().await
    });
    let result = match confirmed.await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.forward_to_leader().and_then(|f| f.leader_id)),
        Err(_) => Err(None),
    };
    for waiter in waiters {
        let _ = waiter.send(result);
    }
}

/// Proposes gathered proposals as one entry, stamped with the leader's time
/// and seeds, and answers each one.
pub(super) async fn propose_gathered(raft: Raft<TypeConfig>, quiet: Quiet, pending: Vec<Pending>) {
    let time_ms = now_ms();
    let (proposals, replies): (Vec<Proposal>, Vec<_>) = pending
        .into_iter()
        .map(|p| {
            let proposal = Proposal {
                request_id: p.request_id,
                time_ms,
                seed: rand::thread_rng().next_u64() as i64,
                command: p.command,
            };
            (proposal, p.reply)
        })
        .unzip();
    let (writes, started) = (proposals.len(), Instant::now());
    let proposed = {
        let _open = quiet.read().await;
        propose_entry(&raft, Batch(proposals)).await
    };
    tracing::trace!(
        writes,
        elapsed_us = started.elapsed().as_micros() as u64,
        "write path: entry committed and applied"
    );
    let refusal = match proposed {
        Ok(BatchResponse(results)) => {
            // A reply left without a result (there is none) drops its
            // sender: the caller retries with the same id.
            for (reply, result) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(ApplyResponse(result)));
            }
            return;
        }
        Err(refusal) => refusal,
    };
    for reply in replies {
        let _ = reply.send(Err(refusal.clone()));
    }
}

/// Sends gathered forwarded writes to their leader, one call per leader.
pub(super) async fn forward_gathered(cluster: Weak<Cluster>, writes: Vec<(u64, Pending)>) {
    let Some(cluster) = cluster.upgrade() else {
        return;
    };
    for (leader, pending) in by_leader(writes) {
        cluster.forward_batch(leader, pending).await;
    }
}

/// Gathered forwarded writes grouped by the leader each was meant for, in
/// the order they arrived: one call per leader keeps each caller's order.
fn by_leader<T>(writes: Vec<(u64, T)>) -> BTreeMap<u64, Vec<T>> {
    let mut grouped: BTreeMap<u64, Vec<T>> = BTreeMap::new();
    for (leader, write) in writes {
        grouped.entry(leader).or_default().push(write);
    }
    grouped
}

/// Proposes one entry on this node, which must lead.
pub(super) async fn propose_entry(
    raft: &Raft<TypeConfig>,
    batch: Batch,
) -> Result<BatchResponse, Refusal> {
    // A leader that loses its leadership while the entry is in flight may
    // never answer: give up after a while and let the callers retry (their
    // request ids make the retries apply at most once).
    match tokio::time::timeout(PROPOSAL_WAIT, raft.client_write(batch)).await {
        Ok(Ok(ClientWriteResponse { data, .. })) => Ok(data),
        Ok(Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(Refusal::NotLeader(f.leader_id))
        }
        // The entry may be in the log already, and commit later.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a proposal failed");
            Err(Refusal::Unknown(format!("the proposal failed: {e}")))
        }
        Err(_) => {
            tracing::warn!("a proposal was not answered in time; retrying");
            Err(Refusal::Unknown(format!(
                "the leader did not answer the proposal within {} s",
                PROPOSAL_WAIT.as_secs()
            )))
        }
    }
}

/// How long a write or read waits for a leader before giving up.
pub(super) const LEADER_WAIT: Duration = Duration::from_secs(10);
/// The longest a write waits between two attempts: it goes again sooner
/// when a new leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// A leader that has not heard from a majority for this many (longest)
/// election timeouts is cut off and refuses; a shorter silence is waited
/// out (see `Cluster::quorum_doubt`).
pub(super) const CUT_OFF: u32 = 3;

/// How long one proposal or read-index round may take before it is retried.
pub(super) const PROPOSAL_WAIT: Duration = Duration::from_secs(3);

impl Cluster {
    /// Proposes `command` on this node, which must be the leader; it goes
    /// into the next entry with the other proposals waiting then.
    pub(super) async fn propose(
        &self,
        request_id: String,
        command: Command,
    ) -> Result<ApplyResponse, Refusal> {
        if let Some(silent) = self.quorum_doubt().await {
            return Err(Refusal::NoQuorum(silent));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending {
            request_id,
            command,
            reply,
        };
        if self.proposals.send(pending).is_err() {
            return Err(Refusal::NotLeader(None));
        }
        answer.await.unwrap_or_else(|_| {
            Err(Refusal::Unknown(
                "the proposal was dropped without an answer".into(),
            ))
        })
    }

    /// If this node leads but has not heard from a quorum for longer than
    /// the election timeout, how long: a leader cut off by a partition
    /// refuses at once instead of letting its clients wait.
    pub(super) fn quorum_silence(&self) -> Option<u64> {
        if self.handing_over.load(std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        if m.state != openraft::ServerState::Leader {
            return None;
        }
        m.millis_since_quorum_ack
            .filter(|ms| *ms > self.election_timeout_max.as_millis() as u64)
    }

    /// Waits out a doubt about the quorum: while this node leads and has
    /// not heard from a majority for longer than an election timeout, it
    /// waits (a busy machine delays heartbeats and their answers), until
    /// the majority answers again or this node stops leading (`None`), or
    /// the silence reaches `CUT_OFF` election timeouts: then it is cut off,
    /// and the silence is returned. Bounded by that much wall time too.
    pub(super) async fn quorum_doubt(&self) -> Option<u64> {
        let cut_off = self.election_timeout_max * CUT_OFF;
        let deadline = Instant::now() + cut_off;
        loop {
            match self.quorum_silence() {
                None => return None,
                Some(ms) if ms >= cut_off.as_millis() as u64 || Instant::now() >= deadline => {
                    return Some(ms);
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// A write from anywhere: proposed here if this node leads, forwarded to
    /// the leader otherwise, retried (same request id, so it applies once)
    /// until a leader answers or `LEADER_WAIT` passes.
    ///
    /// Outcomes are honest: once the write may have reached a leader that
    /// could still commit it, a failure is `OutcomeUnknown` (504), never
    /// `Unavailable` (503), which says nothing was done. A member that
    /// knows it is cut off (see `elect`) refuses at once what it has not
    /// sent.
    pub(super) async fn write(&self, command: Command) -> Result<Applied, StoreError> {
        let id = request_id();
        let began = Instant::now();
        tracing::debug!(request = %id, "write: start");
        let deadline = Instant::now() + LEADER_WAIT;
        let leaderless_limit = (self.election_timeout_max * 3).max(Duration::from_secs(3));
        let mut leaderless_since: Option<Instant> = None;
        // Why the write may have been applied, once it may have been.
        let mut unknown: Option<String> = None;
        let mut leader = self.raft.current_leader().await;
        loop {
            let fail = |why: String, unknown: &Option<String>| match unknown {
                Some(sent) => StoreError::OutcomeUnknown(format!(
                    "{sent}; then {why}. Its request id is {id}"
                )),
                None => unavailable(why),
            };
            if let Some(reason) = self.stopped() {
                return Err(match &unknown {
                    Some(_) => fail(reason, &unknown),
                    None => StoreError::Storage(reason),
                });
            }
            if leader != Some(self.id)
                && let Some(since) = self.cut_off()
            {
                return Err(fail(
                    format!(
                        "this member has been cut off from a majority of the voters for {} ms (no leader heard from, no majority answering)",
                        since.elapsed().as_millis()
                    ),
                    &unknown,
                ));
            }
            tracing::debug!(request = %id, ?leader, "write: attempt");
            let attempt = match leader {
                Some(l) if l == self.id => self.propose(id.clone(), command.clone()).await,
                // A leader not heard from for longer than its lease may be
                // gone: wait for the elector's verdict (a new leader, or cut
                // off) rather than send the write where it may linger.
                Some(_) if !self.leader_heard_lately() => Err(Refusal::NotLeader(None)),
                Some(l) => self.forward_write(l, &id, &command).await,
                None => Err(Refusal::NotLeader(None)),
            };
            let hint = match attempt {
                Ok(ApplyResponse(result)) => {
                    tracing::debug!(
                        request = %id,
                        ?leader,
                        elapsed_us = began.elapsed().as_micros() as u64,
                        "write: done"
                    );
                    return result;
                }
                Err(Refusal::NoQuorum(ms)) => {
                    return Err(match &unknown {
                        Some(_) => fail(no_quorum(ms).to_string(), &unknown),
                        None => no_quorum(ms),
                    });
                }
                Err(Refusal::Unknown(why)) => {
                    tracing::debug!(request = %id, %why, "write: outcome unknown; retrying with the same id");
                    unknown = Some(format!(
                        "the write reached a leader and its outcome is unknown ({why})"
                    ));
                    None
                }
                Err(Refusal::NotLeader(hint)) => hint,
            };
            let tried = leader;
            leader = hint.or(self.raft.current_leader().await);
            let now = Instant::now();
            let since = *leaderless_since.get_or_insert(now);
            if leader.is_some() {
                leaderless_since = None;
            }
            if now >= deadline || (leader.is_none() && now - since >= leaderless_limit) {
                return Err(fail(
                    format!(
                        "no leader accepted the write within {} ms: this node cannot reach a majority of the cluster",
                        (now - since).as_millis().max(1)
                    ),
                    &unknown,
                ));
            }
            tracing::debug!(request = %id, ?leader, "write: retrying");
            // Again as soon as this member knows of a leader other than the
            // one just tried (an election's outcome), or after a pause.
            let _ = tokio::time::timeout(RETRY_PAUSE, self.leader_changes_from(tried)).await;
            leader = leader.or(self.raft.current_leader().await);
        }
    }

    /// Whether this node has heard from a leader within its lease (a
    /// leader's own view is `quorum_doubt`'s).
    pub(super) fn leader_heard_lately(&self) -> bool {
        self.leader_lease_left().is_some()
    }

    /// How long the lease of the leader this node last heard from has to
    /// run, if it has not lapsed.
    pub(super) fn leader_lease_left(&self) -> Option<Duration> {
        self.last_leader_contact
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .and_then(|at| self.lease.checked_sub(at.elapsed()))
    }

    /// Sends a write to the leader, together with the other writes this
    /// node is forwarding at the moment (see `gather`).
    pub(super) async fn forward_write(
        &self,
        leader: u64,
        id: &str,
        command: &Command,
    ) -> Result<ApplyResponse, Refusal> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let pending = Pending {
            request_id: id.to_owned(),
            command: command.clone(),
            reply,
        };
        if self.forwards.send((leader, pending)).is_err() {
            return Err(Refusal::NotLeader(None));
        }
        answer.await.unwrap_or(Err(Refusal::NotLeader(None)))
    }

    /// Sends gathered writes to `leader` in one call and answers each.
    ///
    /// The call carries a deadline (wall clock, milliseconds): the leader
    /// refuses, unproposed, a batch that reaches it after its sender gave
    /// up (bytes held by a partition and delivered after the heal). Once
    /// sent, a write without an answer is `Unknown`, and so is one whose
    /// leader this node learns has changed while it waits: the write loop
    /// retries it with the same request id through the new leader at once,
    /// instead of holding its slot until the call times out.
    pub(super) async fn forward_batch(&self, leader: u64, pending: Vec<Pending>) {
        let (writes, replies): (Vec<(String, Command)>, Vec<_>) = pending
            .into_iter()
            .map(|p| ((p.request_id, p.command), p.reply))
            .unzip();
        let wait = PROPOSAL_WAIT + Duration::from_secs(1);
        let (count, started) = (writes.len(), Instant::now());
        let batch = ForwardedBatch {
            deadline_ms: now_ms() + wait.as_millis() as i64,
            writes,
        };
        let answers: Result<Vec<PeerReply<ApplyResponse>>, Refusal> = match self
            .leader_client(leader)
        {
            Err(_) => Err(Refusal::NotLeader(None)),
            Ok(mut client) => {
                let mut req = tonic::Request::new(network::blob(&batch));
                req.set_timeout(wait);
                let call = tokio::time::timeout(wait, client.write_batch(req));
                tokio::select! {
                    answer = call => match answer {
                        Ok(Ok(reply)) => serde_json::from_slice(&reply.into_inner().data)
                            .map_err(|e| Refusal::Unknown(format!("undecodable answer from the leader: {e}"))),
                        Ok(Err(status)) if network::is_unreachable(&status) => {
                            Err(Refusal::NotLeader(None))
                        }
                        Ok(Err(status)) => Err(Refusal::Unknown(format!(
                            "the forward to leader {leader} failed: {}",
                            status.message()
                        ))),
                        Err(_) => Err(Refusal::Unknown(format!(
                            "leader {leader} did not answer within {} ms",
                            wait.as_millis()
                        ))),
                    },
                    () = self.leader_changes_from(Some(leader)) => Err(Refusal::Unknown(format!(
                        "the leadership moved from {leader} while the write was on its way"
                    ))),
                    () = self.becomes_cut_off() => Err(Refusal::Unknown(
                        "this member was cut off from the cluster while the write was on its way".into(),
                    )),
                }
            }
        };
        tracing::trace!(
            writes = count,
            elapsed_us = started.elapsed().as_micros() as u64,
            "write path: forward answered by the leader"
        );
        match answers {
            Ok(answers) if answers.len() == replies.len() => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(match answer {
                        PeerReply::Done(r) => Ok(r),
                        PeerReply::Refused(refusal) => Err(refusal),
                    });
                }
            }
            Ok(answers) => {
                let refusal = Refusal::Unknown(format!(
                    "the leader answered {} of {} writes",
                    answers.len(),
                    replies.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
            Err(refusal) => {
                for reply in replies {
                    let _ = reply.send(Err(refusal.clone()));
                }
            }
        }
    }

    /// Returns once this member knows it is cut off (see `elect`).
    async fn becomes_cut_off(&self) {
        while self.cut_off().is_none() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Returns once this node knows a leader, other than `leader` if one
    /// is given.
    async fn leader_changes_from(&self, leader: Option<u64>) {
        let mut metrics = self.raft.metrics();
        loop {
            let now = metrics.borrow_and_update().current_leader;
            if now.is_some() && now != leader {
                return;
            }
            if metrics.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// A linearizable read: the leader confirms its leadership with a quorum
    /// (read index) and waits until it has applied up to it, then reads.
    pub(super) async fn read(&self, call: ReadCall) -> Result<Outcome, StoreError> {
        tracing::debug!(namespace = %call.namespace, "read: start");
        if let Some(ms) = self.quorum_doubt().await {
            return Err(no_quorum(ms));
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if let Some(reason) = self.stopped() {
                return Err(StoreError::Storage(reason));
            }
            if let Some(since) = self.cut_off() {
                return Err(unavailable(format!(
                    "this member has been cut off from a majority of the voters for {} ms (no leader heard from, no majority answering): read elsewhere, or with consistency=stale",
                    since.elapsed().as_millis()
                )));
            }
            let leader = match self.confirm_leadership().await {
                Ok(()) => return self.store.read_local(call).await,
                Err(leader) => leader,
            };
            tracing::debug!(?leader, "read attempt: this node does not lead");
            if let Some(l) = leader.filter(|l| *l != self.id)
                && self.leader_heard_lately()
                && let Ok(mut client) = self.leader_client(l)
            {
                let deadline = PROPOSAL_WAIT + Duration::from_secs(1);
                let mut req = tonic::Request::new(network::blob(&call));
                req.set_timeout(deadline);
                if let Ok(Ok(reply)) = tokio::time::timeout(deadline, client.read(req)).await
                    && let Ok(PeerReply::Done(result)) =
                        serde_json::from_slice::<PeerReply<Result<Outcome, StoreError>>>(
                            &reply.into_inner().data,
                        )
                {
                    return result;
                }
            }
            if Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "no leader confirmed the read within {} s: the cluster has no quorum",
                    LEADER_WAIT.as_secs()
                )));
            }
            // Again as soon as a leader other than the one asked is known,
            // or after a pause (as a write does).
            let _ = tokio::time::timeout(RETRY_PAUSE, self.leader_changes_from(leader)).await;
        }
    }

    /// Confirms with a quorum that this node leads (a read-index round
    /// started after this call, shared with the reads that wait with it), or
    /// says who leads, if it knows.
    pub(super) async fn confirm_leadership(&self) -> Result<(), Option<u64>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.confirmations.send(reply).is_err() {
            return Err(None);
        }
        answer.await.unwrap_or(Err(None))
    }

    /// A read of this node's own copy, within the stale-read bound: the
    /// node must have heard from a leader within the bound (or lead with a
    /// quorum) and have applied everything it knows to be committed.
    /// A read of this member's copy whatever its age (no bound, no
    /// leader), with the index it had applied: what a client asking for
    /// `consistency=local` gets, on the minority side of a partition too.
    pub(super) async fn read_local_copy(&self, call: ReadCall) -> Result<Outcome, StoreError> {
        if let Some(reason) = self.stopped() {
            return Err(StoreError::Storage(reason));
        }
        let applied = self
            .raft
            .metrics()
            .borrow()
            .last_applied
            .map_or(0, |l| l.index);
        let mut outcome = self.store.read_local(call).await?;
        outcome.applied_index = Some(applied);
        Ok(outcome)
    }

    pub(super) async fn read_stale(&self, call: ReadCall) -> Result<Outcome, StoreError> {
        if let Some(reason) = self.stopped() {
            return Err(StoreError::Storage(reason));
        }
        let (leading, applied) = {
            let metrics = self.raft.metrics();
            let m = metrics.borrow();
            (
                m.state == openraft::ServerState::Leader,
                m.last_applied.map_or(0, |l| l.index),
            )
        };
        let bound = self.stale_read_max_lag.as_millis();
        if leading {
            if let Some(ms) = self.quorum_doubt().await {
                return Err(no_quorum(ms));
            }
        } else {
            let contact = *self
                .last_leader_contact
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match contact.map(|c| c.elapsed().as_millis()) {
                Some(ms) if ms <= bound => {}
                other => {
                    return Err(unavailable(format!(
                        "this node last heard from a leader {} ago, beyond the stale-read bound of {bound} ms: read without consistency=stale",
                        other.map_or_else(|| "never".to_owned(), |ms| format!("{ms} ms"))
                    )));
                }
            }
        }
        let committed = self.committed.load(std::sync::atomic::Ordering::SeqCst);
        if applied < committed {
            return Err(unavailable(format!(
                "this node is catching up (applied {applied} of {committed} committed entries): read without consistency=stale"
            )));
        }
        let mut outcome = self.store.read_local(call).await?;
        outcome.applied_index = Some(applied);
        Ok(outcome)
    }
}

/// The store's replicator: a weak handle, so the cluster and the store do
/// not keep each other alive.
pub(super) struct ReplicatorHandle(pub(super) Weak<Cluster>);

impl ReplicatorHandle {
    /// Runs `op` on the cluster, if it is still there.
    pub(super) fn with<T: Send + 'static, Fut>(
        &self,
        op: impl FnOnce(Arc<Cluster>) -> Fut,
    ) -> BoxFuture<'static, Result<T, StoreError>>
    where
        Fut: std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        match self.0.upgrade() {
            Some(c) => op(c).boxed(),
            None => async { Err(StoreError::Closed) }.boxed(),
        }
    }
}

impl Replicator for ReplicatorHandle {
    fn write(&self, command: Command) -> BoxFuture<'static, Result<Applied, StoreError>> {
        self.with(|c| async move { c.write(command).await })
    }

    fn read(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>> {
        self.with(|c| async move { c.read(call).await })
    }

    fn read_stale(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>> {
        self.with(|c| async move { c.read_stale(call).await })
    }

    fn read_local_copy(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>> {
        self.with(|c| async move { c.read_local_copy(call).await })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::{mpsc, oneshot};

    use super::*;

    /// Runs `gather` with a handler that records each batch and holds it
    /// until released; returns the batches seen so far, the peak of
    /// batches handled at once and a way to release the held ones.
    struct Harness {
        send: mpsc::UnboundedSender<usize>,
        batches: mpsc::UnboundedReceiver<(Vec<usize>, oneshot::Sender<()>)>,
        peak: Arc<AtomicUsize>,
    }

    fn harness(in_flight: usize) -> Harness {
        let (send, queue) = mpsc::unbounded_channel();
        let (seen, batches) = mpsc::unbounded_channel();
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let (p, n) = (peak.clone(), now.clone());
        tokio::spawn(gather(queue, in_flight, move |batch: Vec<usize>| {
            let (release, held) = oneshot::channel();
            let (p, n) = (p.clone(), n.clone());
            let _ = seen.send((batch, release));
            async move {
                let current = n.fetch_add(1, Ordering::SeqCst) + 1;
                p.fetch_max(current, Ordering::SeqCst);
                let _ = held.await;
                n.fetch_sub(1, Ordering::SeqCst);
            }
        }));
        Harness {
            send,
            batches,
            peak,
        }
    }

    #[tokio::test]
    async fn what_waits_while_a_batch_is_handled_forms_the_next_one() {
        let mut h = harness(1);
        for i in 0..3 {
            h.send.send(i).unwrap();
        }
        let (first, release_first) = h.batches.recv().await.unwrap();
        assert_eq!(first, vec![0, 1, 2], "queued writes share one batch");
        // While the only slot is taken, new writes wait together.
        for i in 3..8 {
            h.send.send(i).unwrap();
        }
        tokio::task::yield_now().await;
        assert!(
            h.batches.try_recv().is_err(),
            "no batch starts while the slot is taken"
        );
        release_first.send(()).unwrap();
        let (second, release_second) = h.batches.recv().await.unwrap();
        assert_eq!(second, vec![3, 4, 5, 6, 7]);
        release_second.send(()).unwrap();
        assert_eq!(h.peak.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn at_most_in_flight_batches_are_handled_at_once() {
        let mut h = harness(ENTRIES_IN_FLIGHT);
        let mut held = Vec::new();
        // One write at a time, each waiting for its batch to start: every
        // batch holds one write, and only ENTRIES_IN_FLIGHT can start.
        for i in 0..ENTRIES_IN_FLIGHT {
            h.send.send(i).unwrap();
            let (batch, release) = h.batches.recv().await.unwrap();
            assert_eq!(batch, vec![i]);
            held.push(release);
        }
        h.send.send(99).unwrap();
        tokio::task::yield_now().await;
        assert!(h.batches.try_recv().is_err(), "a fifth batch waited");
        held.pop().unwrap().send(()).unwrap();
        let (batch, _release) = h.batches.recv().await.unwrap();
        assert_eq!(batch, vec![99]);
        assert_eq!(h.peak.load(Ordering::SeqCst), ENTRIES_IN_FLIGHT);
    }

    #[tokio::test]
    async fn a_batch_carries_at_most_max_batch_writes() {
        let mut h = harness(1);
        for i in 0..MAX_BATCH + 10 {
            h.send.send(i).unwrap();
        }
        let (first, release) = h.batches.recv().await.unwrap();
        assert_eq!(first.len(), MAX_BATCH);
        assert_eq!(first[0], 0, "in arrival order");
        release.send(()).unwrap();
        let (second, _release) = h.batches.recv().await.unwrap();
        assert_eq!(second, (MAX_BATCH..MAX_BATCH + 10).collect::<Vec<_>>());
    }

    #[test]
    fn forwarded_writes_go_one_call_per_leader_in_arrival_order() {
        let grouped = by_leader(vec![(2, "a"), (1, "b"), (2, "c"), (3, "d"), (1, "e")]);
        assert_eq!(
            grouped.into_iter().collect::<Vec<_>>(),
            vec![(1, vec!["b", "e"]), (2, vec!["a", "c"]), (3, vec!["d"])]
        );
    }
}
