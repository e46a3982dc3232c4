//! The peer listener's gRPC service: Raft's own calls (members only), and
//! the writes, reads and administrative calls of members and store clients,
//! each store client's call checked against the cluster's `ClientPolicy`.

use super::{
    sessions::{MAX_SESSION_TOKEN, SESSION_RENEWED},
    *,
};

pub(super) struct PeerService {
    pub(super) cluster: Arc<Cluster>,
}

pub(super) type PeerResult = Result<tonic::Response<Blob>, tonic::Status>;

pub(super) fn reply<T: Serialize>(value: &T) -> PeerResult {
    Ok(tonic::Response::new(network::blob(value)))
}

pub(super) fn caller<T>(r: &tonic::Request<T>) -> Result<&network::Caller, tonic::Status> {
    r.extensions()
        .get::<network::Caller>()
        .ok_or_else(|| {
            tonic::Status::unauthenticated(
                "the call was not authenticated: present a certificate from the cluster's CA (a member issues its own, a store client asks a member with Certify)",
            )
        })
}

/// Refuses a store client: Raft, membership and batch forwarding are for
/// members.
pub(super) fn members_only<T>(r: &tonic::Request<T>) -> Result<(), tonic::Status> {
    match caller(r)? {
        network::Caller::Peer => Ok(()),
        network::Caller::Client(network::StoreClient { node, .. }) => {
            Err(tonic::Status::permission_denied(format!(
                "`{node}` is a store client: it may read and write, not take part in Raft"
            )))
        }
    }
}

/// Refuses a store client's read outside what the policy allows it.
pub(super) fn check_read<T>(
    r: &tonic::Request<T>,
    namespace: &str,
    policy: &dyn ClientPolicy,
) -> Result<(), tonic::Status> {
    match caller(r)? {
        network::Caller::Client(client) => policy
            .read(client, namespace)
            .map_err(|why| refuse(&client.node, why)),
        network::Caller::Peer => Ok(()),
    }
}

/// Refuses a store client's command outside what the policy allows it.
pub(super) fn check_command<T>(
    r: &tonic::Request<T>,
    command: &Command,
    policy: &dyn ClientPolicy,
) -> Result<(), tonic::Status> {
    match caller(r)? {
        network::Caller::Client(client) => policy
            .command(client, command)
            .map_err(|why| refuse(&client.node, why)),
        network::Caller::Peer => Ok(()),
    }
}

impl PeerService {
    /// Refuses Raft's messages once this member has stopped taking part
    /// (see `Cluster::stopped`): the leader learns it is unavailable, and
    /// Raft is not asked again for every heartbeat.
    fn running(&self) -> Result<(), tonic::Status> {
        match self.cluster.stopped() {
            Some(reason) => Err(tonic::Status::unavailable(reason)),
            None => Ok(()),
        }
    }

    /// Before Raft acts on a member's message: a member with no group yet
    /// joins the caller's (see `origin`; the credential check already
    /// refused another group's); a message that names no group is refused.
    async fn in_group<T>(&self, r: &tonic::Request<T>) -> Result<(), tonic::Status> {
        if let Some(network::OfferedGroup(offered)) = r.extensions().get() {
            return self.cluster.adopt(offered).await;
        }
        match r.metadata().get(network::GROUP_HEADER) {
            Some(_) => Ok(()),
            None => Err(tonic::Status::failed_precondition(
                "a Raft message must name its sender's group (x-flotilla-group)",
            )),
        }
    }

    /// A member's Raft message reached this one: its sender (the leader,
    /// or a candidate) is there.
    fn heard_from(&self, vote: &openraft::Vote<u64>) {
        if let Some(sender) = vote.leader_id().voted_for() {
            self.cluster.contacts.heard(sender);
        }
    }
}

pub(super) fn refuse(node: &str, why: String) -> tonic::Status {
    tracing::warn!(client = %node, %why, "store client refused");
    tonic::Status::permission_denied(why)
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    async fn append_entries(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        self.running()?;
        self.in_group(&r).await?;
        let req: openraft::raft::AppendEntriesRequest<TypeConfig> = network::unblob(r.get_ref())?;
        self.heard_from(&req.vote);
        let (entries, started) = (req.entries.len(), Instant::now());
        let result = self.cluster.raft.append_entries(req).await;
        if entries > 0 {
            tracing::trace!(
                entries,
                elapsed_us = started.elapsed().as_micros() as u64,
                "write path: follower appended"
            );
        }
        if matches!(
            result,
            Ok(openraft::raft::AppendEntriesResponse::Success
                | openraft::raft::AppendEntriesResponse::PartialSuccess(_))
        ) {
            *self
                .cluster
                .last_leader_contact
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            self.cluster.set_cut_off(false);
        }
        reply(&result)
    }

    async fn vote(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        self.running()?;
        self.in_group(&r).await?;
        let req: openraft::raft::VoteRequest<u64> = network::unblob(r.get_ref())?;
        self.heard_from(&req.vote);
        reply(&self.cluster.raft.vote(req).await)
    }

    async fn install_snapshot(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        self.running()?;
        self.in_group(&r).await?;
        let blob = r.into_inner();
        let mut req: openraft::raft::InstallSnapshotRequest<TypeConfig> = network::unblob(&blob)?;
        req.data = blob.payload;
        self.heard_from(&req.vote);
        reply(&self.cluster.raft.install_snapshot(req).await)
    }

    async fn write(&self, r: tonic::Request<Blob>) -> PeerResult {
        let write: ClientWrite = network::unblob(r.get_ref())?;
        check_command(&r, &write.command, &*self.cluster.policy)?;
        let late = now_ms() - write.deadline_ms;
        if late > 0 {
            tracing::warn!(
                request = %write.request_id,
                late_ms = late,
                "refused a write that arrived after its sender's deadline"
            );
            return reply(&PeerReply::<ApplyResponse>::Refused(Refusal::NotLeader(
                None,
            )));
        }
        reply(&PeerReply::from(
            self.cluster.propose(write.request_id, write.command).await,
        ))
    }

    async fn write_batch(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let batch: ForwardedBatch = network::unblob(r.get_ref())?;
        let late = now_ms() - batch.deadline_ms;
        if late > 0 {
            // Its sender has given up on it: proposing it now would apply
            // writes their clients were told nothing about.
            tracing::warn!(
                writes = batch.writes.len(),
                late_ms = late,
                "refused forwarded writes that arrived after their sender's deadline"
            );
            let refused: Vec<PeerReply<ApplyResponse>> = batch
                .writes
                .iter()
                .map(|_| PeerReply::Refused(Refusal::NotLeader(None)))
                .collect();
            return reply(&refused);
        }
        let (writes, started) = (batch.writes.len(), Instant::now());
        let answers = futures_util::future::join_all(
            batch
                .writes
                .into_iter()
                .map(|(id, command)| self.cluster.propose(id, command)),
        )
        .await;
        tracing::trace!(
            writes,
            elapsed_us = started.elapsed().as_micros() as u64,
            "write path: forwarded writes proposed and applied"
        );
        reply(
            &answers
                .into_iter()
                .map(PeerReply::from)
                .collect::<Vec<PeerReply<ApplyResponse>>>(),
        )
    }

    async fn read(&self, r: tonic::Request<Blob>) -> PeerResult {
        let call: ReadCall = network::unblob(r.get_ref())?;
        check_read(&r, &call.namespace, &*self.cluster.policy)?;
        let result: PeerReply<Result<Outcome, StoreError>> =
            match self.cluster.confirm_leadership().await {
                Ok(()) => PeerReply::Done(self.cluster.store.read_local(call).await),
                Err(leader) => PeerReply::Refused(Refusal::NotLeader(leader)),
            };
        reply(&result)
    }

    async fn admin(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let op: AdminOp = network::unblob(r.get_ref())?;
        let reply_value: PeerReply<Result<serde_json::Value, String>> =
            match self.cluster.admin(op.clone()).await {
                Ok(result) => PeerReply::Done(result),
                // Not the leader: pass it on (the caller may not know the
                // leader's address, e.g. a member added after its topology).
                Err(Some(leader)) if leader != self.cluster.id => {
                    if let Ok(mut client) = self.cluster.admin_client(leader) {
                        let call = client.admin(tonic::Request::new(network::blob(&op)));
                        if let Ok(Ok(answer)) =
                            tokio::time::timeout(network::ADMIN_PATIENCE, call).await
                        {
                            return Ok(answer);
                        }
                    }
                    PeerReply::Refused(Refusal::NotLeader(Some(leader)))
                }
                Err(leader) => PeerReply::Refused(Refusal::NotLeader(leader)),
            };
        reply(&reply_value)
    }

    async fn pre_vote(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        self.running()?;
        let req: openraft::raft::VoteRequest<u64> = network::unblob(r.get_ref())?;
        match self.cluster.pre_vote(&req).await {
            Some(answer) => reply(&answer),
            None => Err(tonic::Status::unavailable(
                "raft has stopped on this member",
            )),
        }
    }

    type WatchRegistryStream = std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<Blob, tonic::Status>> + Send + 'static>,
    >;

    async fn watch_registry(
        &self,
        r: tonic::Request<Blob>,
    ) -> Result<tonic::Response<Self::WatchRegistryStream>, tonic::Status> {
        // Whoever may read the registry may follow it.
        check_read(&r, REGISTRY_NAMESPACE, &*self.cluster.policy)?;
        // A store client's stream is its session with this member: it
        // ends when the connection does, or when this member suspends its
        // sessions (see `sessions`). The request carries the token the
        // client is known by (its registry claim, or nothing).
        let session = match caller(&r)? {
            network::Caller::Client(client) => {
                let token = std::str::from_utf8(&r.get_ref().data)
                    .ok()
                    .filter(|t| t.len() <= MAX_SESSION_TOKEN)
                    .ok_or_else(|| {
                        tonic::Status::invalid_argument(format!(
                            "a session's token is UTF-8 of at most {MAX_SESSION_TOKEN} bytes (the node's registry claim)"
                        ))
                    })?;
                let session = self
                    .cluster
                    .sessions
                    .opened(&client.node, token)
                    .map_err(|why| {
                        tonic::Status::unavailable(format!(
                            "this member keeps no sessions now ({why}): follow another member"
                        ))
                    })?;
                Some(session)
            }
            network::Caller::Peer => None,
        };
        let feed = self.cluster.registry_feed.subscribe();
        let suspension = self.cluster.sessions.suspension();
        let stream = futures_util::stream::unfold(
            (feed, suspension, true, session),
            |(mut feed, mut suspension, first, session)| async move {
                if !first {
                    tokio::select! {
                        // Ends the stream when this member's cluster stops.
                        changed = feed.changed() => changed.ok()?,
                        // Or, for a session, when this member suspends them.
                        _ = suspension.wait_for(Option::is_some), if session.is_some() => return None,
                    }
                }
                let next = feed.borrow_and_update().clone();
                let blob = Blob {
                    data: next.to_vec(),
                    // The first message says that this member renews what
                    // the session keeps alive (see `Followed::Opened`).
                    payload: if first {
                        SESSION_RENEWED.to_vec()
                    } else {
                        Vec::new()
                    },
                };
                Some((Ok(blob), (feed, suspension, false, session)))
            },
        );
        Ok(tonic::Response::new(Box::pin(stream)))
    }

    async fn certify(&self, r: tonic::Request<Blob>) -> PeerResult {
        let req: super::certify::CertifyRequest = network::unblob(r.get_ref())?;
        reply(&self.cluster.certify(&req)?)
    }

    async fn hand_over(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let notice: super::handover::HandOverNotice = network::unblob(r.get_ref())?;
        let hold = notice.hold().map_err(tonic::Status::invalid_argument)?;
        self.cluster.hold_candidacy(hold);
        tracing::debug!(
            target = notice.target,
            hold_ms = notice.hold_ms,
            "the leader hands over to another member: not standing meanwhile"
        );
        reply(&())
    }

    async fn timeout_now(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        self.cluster
            .raft
            .trigger()
            .elect()
            .await
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        reply(&())
    }
}
