//! HA: the node's database replicated with Raft (openraft 0.9, pinned; see
//! docs/adr/0005-openraft.md).
//!
//! - `log_store`: the Raft log and vote, fsynced before they are
//!   acknowledged, with checksums.
//! - `state_machine`: the store itself; each entry applies in one
//!   transaction with the last applied log id and the membership.
//! - `network`: the peer listener's gRPC transport, authenticated with the
//!   cluster secret.
//!
//! [`Cluster`] is the store's [`Replicator`]: a service's write becomes a
//! proposal (with a request id, and a time and random seed chosen by the
//! leader), is committed on a quorum, applied everywhere, and answered with
//! the result the leader's state machine computed. A follower forwards
//! writes and reads to the leader. Reads are linearizable (read index
//! through the leader).

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Cursor,
    path::Path,
    sync::{Arc, Weak},
    time::{Duration, Instant},
};

use futures_util::{FutureExt, future::BoxFuture};
use openraft::{BasicNode, Config, Raft, error::ClientWriteError, raft::ClientWriteResponse};
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::{
    proto::peer::{Blob, peer_server},
    store::{Applied, Command, Outcome, Proposal, ReadCall, Replicator, Store, StoreError, now_ms},
};

/// An operation of `flotilla cluster ...`, sent to any member over the peer
/// listener (authenticated with the cluster secret); membership changes are
/// forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminOp {
    Status,
    AddLearner { id: u64, peer: String },
    Promote { id: u64 },
    Remove { id: u64 },
    TransferLeader { to: Option<u64> },
}

/// Why a node did not take a write or read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Refusal {
    /// This node does not lead; the leader it knows of, if any.
    NotLeader(Option<u64>),
    /// This node leads but has not heard from a quorum for this many
    /// milliseconds: it is on the minority side of a partition.
    NoQuorum(u64),
}

/// A peer's answer to a forwarded write or read.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerReply<T> {
    Done(T),
    Refused(Refusal),
}

impl<T> From<Result<T, Refusal>> for PeerReply<T> {
    fn from(r: Result<T, Refusal>) -> Self {
        match r {
            Ok(v) => PeerReply::Done(v),
            Err(refusal) => PeerReply::Refused(refusal),
        }
    }
}

fn no_quorum(ms: u64) -> StoreError {
    unavailable(format!(
        "the leader has not heard from a majority for {ms} ms: it is cut off from the cluster; retry on a node of the majority"
    ))
}

/// The result of one proposal: what a client's write gets back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyResponse(pub Result<Applied, StoreError>);

/// What one Raft entry carries: the proposals the leader gathered while
/// earlier entries were in flight, applied in order, each all or nothing on
/// its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch(pub Vec<Proposal>);

/// The results of one entry's proposals, in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchResponse(pub Vec<Result<Applied, StoreError>>);

openraft::declare_raft_types!(
    /// flotilla's Raft types: batches of proposals in, their results out.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = u64,
        Node = BasicNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A Raft member: a node with the `db` role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Stable Raft id; never derived from an address.
    pub id: u64,
    pub name: String,
    /// Its peer listener.
    pub peer: std::net::SocketAddr,
}

/// What each store client may do with the members' database. The layers
/// above the cluster decide it (which namespaces belong to which services,
/// what a registry record is); a member asks for every call of a client.
/// **Architecture Invariant:** the cluster itself knows nothing of
/// services, the registry or accounts.
pub trait ClientPolicy: Send + Sync + 'static {
    /// Why store client `client` may not read `namespace`, if it may not.
    fn read(&self, client: &str, namespace: &str) -> Result<(), String>;
    /// Why store client `client` may not send `command`, if it may not.
    fn command(&self, client: &str, command: &Command) -> Result<(), String>;
}

/// What this node is in the cluster.
#[derive(Clone, Debug)]
pub enum Role {
    /// A `db` member: Raft voter `id`, proving itself with the cluster
    /// secret.
    Voter { id: u64, secret: String },
    /// A node without the `db` role: a client of the members' database,
    /// proving itself with its own key (see `network::client_key`).
    Client { node: String, key: String },
}

/// The cluster part of a validated config.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub role: Role,
    /// The topology's `db` members (the Raft voters).
    pub members: Vec<Member>,
    /// The names of the store clients (nodes without the `db` role) the
    /// members let in, each with its own key.
    pub clients: Vec<String>,
    /// Initialize the cluster from the topology if it is not initialized.
    /// Safe on every member: all initialize with the same membership.
    pub bootstrap: bool,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot, for followers that lag a little.
    pub snapshot_keep_logs: u64,
    /// Allow isolating this node through the admin listener (tests only).
    pub fault_injection: bool,
    /// How far behind a stale read may be: a node that has not heard from a
    /// leader for longer refuses them.
    pub stale_read_max_lag: Duration,
}

/// At most this many entries of gathered proposals are in flight at once;
/// proposals that arrive meanwhile wait and share the next entry, so the
/// per-entry costs (log record, replication round, apply transaction) are
/// paid once for many writes.
const ENTRIES_IN_FLIGHT: usize = 4;
/// The most proposals one entry carries.
const MAX_BATCH: usize = 512;

/// A proposal waiting to be gathered into an entry.
struct Pending {
    request_id: String,
    command: Command,
    reply: tokio::sync::oneshot::Sender<Result<ApplyResponse, Refusal>>,
}

/// Takes what arrives on `queue` in batches: at most `in_flight` batches
/// are being handled at once, and what arrives meanwhile waits and forms
/// the next batch (of at most `MAX_BATCH`). A batch is formed just before it
/// is handled: everything in it arrived before its handling started.
async fn gather<T, F, Fut>(
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
type Confirmation = tokio::sync::oneshot::Sender<Result<(), Option<u64>>>;

/// One read-index round for every read gathered: this node confirms with a
/// quorum that it leads and waits until it has applied up to the read index.
async fn confirm_gathered(raft: Raft<TypeConfig>, quiet: Quiet, waiters: Vec<Confirmation>) {
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
async fn propose_gathered(raft: Raft<TypeConfig>, quiet: Quiet, pending: Vec<Pending>) {
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
    let proposed = {
        let _open = quiet.read().await;
        propose_entry(&raft, Batch(proposals)).await
    };
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
async fn forward_gathered(cluster: Weak<Cluster>, writes: Vec<(u64, Pending)>) {
    let Some(cluster) = cluster.upgrade() else {
        return;
    };
    let mut by_leader: BTreeMap<u64, Vec<Pending>> = BTreeMap::new();
    for (leader, pending) in writes {
        by_leader.entry(leader).or_default().push(pending);
    }
    for (leader, pending) in by_leader {
        cluster.forward_batch(leader, pending).await;
    }
}

/// Proposes one entry on this node, which must lead.
async fn propose_entry(raft: &Raft<TypeConfig>, batch: Batch) -> Result<BatchResponse, Refusal> {
    // A leader that loses its leadership while the entry is in flight may
    // never answer: give up after a while and let the callers retry (their
    // request ids make the retries apply at most once).
    match tokio::time::timeout(PROPOSAL_WAIT, raft.client_write(batch)).await {
        Ok(Ok(ClientWriteResponse { data, .. })) => Ok(data),
        Ok(Err(openraft::error::RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(Refusal::NotLeader(f.leader_id))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "a proposal failed");
            Err(Refusal::NotLeader(None))
        }
        Err(_) => {
            tracing::warn!("a proposal was not answered in time; retrying");
            Err(Refusal::NotLeader(None))
        }
    }
}

/// Held for reading by everything that makes the leader contact its
/// followers (proposals and read-index rounds); a leadership hand-over holds
/// it for writing, so that the followers' leader leases can lapse.
type Quiet = Arc<tokio::sync::RwLock<()>>;

/// How long a write or read waits for a leader before giving up.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How long one proposal or read-index round may take before it is retried.
const PROPOSAL_WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot open the raft log: {0}")]
    Log(String),
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Start(String),
}

pub struct Cluster {
    pub id: u64,
    pub faults: network::Faults,
    fault_injection: bool,
    stale_read_max_lag: Duration,
    committed: Arc<std::sync::atomic::AtomicU64>,
    last_leader_contact: std::sync::Mutex<Option<Instant>>,
    election_timeout_min: Duration,
    election_timeout_max: Duration,
    raft: Raft<TypeConfig>,
    /// See [`Quiet`].
    quiet: Quiet,
    /// Set while a hand-over keeps this leader quiet on purpose, so that its
    /// silence is not taken for a lost quorum (see `quorum_silence`).
    handing_over: std::sync::atomic::AtomicBool,
    /// Proposals on their way into entries (see `gather`).
    proposals: tokio::sync::mpsc::UnboundedSender<Pending>,
    /// Writes on their way to the leader (see `gather`).
    forwards: tokio::sync::mpsc::UnboundedSender<(u64, Pending)>,
    /// Reads waiting for a read-index round (see `confirm_gathered`).
    confirmations: tokio::sync::mpsc::UnboundedSender<Confirmation>,
    store: Store,
    members: BTreeMap<u64, Member>,
    /// Peer clients by member id, with the address they dial.
    clients: std::sync::Mutex<BTreeMap<u64, (String, network::Client)>>,
    credential: Arc<str>,
    /// The store clients, with their keys.
    client_keys: network::ClientKeys,
    /// What each store client may do.
    policy: Arc<dyn ClientPolicy>,
}

fn unavailable(message: String) -> StoreError {
    StoreError::Storage(message)
}

/// A new request id: this node's clock in milliseconds, then 64 random
/// bits, in hex. Ids made about the same time sort together, so recording
/// them appends to the end of the index instead of touching a random page.
fn request_id() -> String {
    format!(
        "{:012x}{:016x}",
        now_ms().max(0),
        rand::thread_rng().next_u64()
    )
}

impl Cluster {
    /// Opens the raft log in `data_dir`, starts Raft over the store, makes
    /// the store replicated, and bootstraps if configured. Store clients'
    /// calls are checked against `policy`.
    pub async fn start(
        settings: &ClusterSettings,
        store: Store,
        data_dir: &Path,
        policy: Arc<dyn ClientPolicy>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let config = Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            election_timeout_min: settings.election_timeout.0.as_millis() as u64,
            election_timeout_max: settings.election_timeout.1.as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_keep_logs,
            snapshot_max_chunk_size: 1024 * 1024,
            // Per chunk; generous, so a loaded machine does not turn a slow
            // chunk into an endless resend.
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let log = log_store::LogStore::open(&data_dir.join("raft-log.db"))
            .map_err(|e| ClusterError::Log(e.to_string()))?;
        let snapshots = data_dir.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|e| ClusterError::Log(e.to_string()))?;
        let sm = state_machine::StateMachine::new(store.clone(), snapshots);
        let committed = log.committed.clone();
        let Role::Voter { id, secret } = &settings.role else {
            return Err(ClusterError::Config(
                "only a node with the db role runs Raft; this one is a store client".into(),
            ));
        };
        let id = *id;
        let credential: Arc<str> = Arc::from(network::credential(secret));
        let client_keys: network::ClientKeys = Arc::new(
            settings
                .clients
                .iter()
                .map(|name| (name.clone(), network::client_key(secret, name)))
                .collect(),
        );
        let faults = network::Faults::default();
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Network::new(credential.clone(), faults.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        let (proposals, queue) = tokio::sync::mpsc::unbounded_channel();
        let quiet = Quiet::default();
        let (proposer, gate) = (raft.clone(), quiet.clone());
        tokio::spawn(gather(queue, ENTRIES_IN_FLIGHT, move |pending| {
            propose_gathered(proposer.clone(), gate.clone(), pending)
        }));
        // Linearizable reads share read-index rounds: one round at a time,
        // for every read that arrived before it started. A round per read
        // would flood the peers with heartbeats under a burst of reads, and
        // delay the acknowledgements the leader's quorum depends on.
        let (confirmations, confirmation_queue) = tokio::sync::mpsc::unbounded_channel();
        let (confirmer, gate) = (raft.clone(), quiet.clone());
        tokio::spawn(gather(confirmation_queue, 1, move |waiters| {
            confirm_gathered(confirmer.clone(), gate.clone(), waiters)
        }));
        let (forwards, forward_queue) = tokio::sync::mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            id,
            client_keys,
            policy,
            faults,
            fault_injection: settings.fault_injection,
            stale_read_max_lag: settings.stale_read_max_lag,
            committed,
            last_leader_contact: std::sync::Mutex::new(None),
            election_timeout_min: settings.election_timeout.0,
            election_timeout_max: settings.election_timeout.1,
            raft,
            quiet,
            handing_over: std::sync::atomic::AtomicBool::new(false),
            proposals,
            forwards,
            confirmations,
            store: store.clone(),
            members: settings.members.iter().map(|m| (m.id, m.clone())).collect(),
            clients: std::sync::Mutex::default(),
            credential,
        });
        let forwarder = Arc::downgrade(&cluster);
        tokio::spawn(gather(forward_queue, ENTRIES_IN_FLIGHT, move |writes| {
            forward_gathered(forwarder.clone(), writes)
        }));
        store
            .set_replicator(Arc::new(ReplicatorHandle(Arc::downgrade(&cluster))))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        if settings.bootstrap {
            cluster.bootstrap().await?;
        }
        Ok(cluster)
    }

    /// Initializes the cluster with every member of the topology as a voter,
    /// unless this node already belongs to an initialized cluster.
    async fn bootstrap(&self) -> Result<(), ClusterError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| ClusterError::Start(e.to_string()))?
        {
            return Ok(());
        }
        let members: BTreeMap<u64, BasicNode> = self
            .members
            .values()
            .map(|m| (m.id, BasicNode::new(m.peer.to_string())))
            .collect();
        match self.raft.initialize(members).await {
            Ok(()) => {
                tracing::info!(
                    members = self.members.len(),
                    "initialized the cluster from the topology"
                );
                Ok(())
            }
            // Another member's leader reached us first: nothing to do.
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(ClusterError::Start(e.to_string())),
        }
    }

    /// The peer gRPC service, behind the credential check.
    pub fn peer_router(self: &Arc<Self>) -> axum::Router {
        crate::protocol::grpc_router(peer_server::PeerServer::with_interceptor(
            PeerService {
                cluster: self.clone(),
            },
            network::check_credential(
                self.credential.clone(),
                self.client_keys.clone(),
                self.faults.clone(),
            ),
        ))
    }

    /// A client for member `id`: its address from the topology, or from the
    /// membership for a member added later.
    /// Clients are kept per member and address, so forwarded calls share
    /// one HTTP/2 connection instead of opening one each.
    fn leader_client(&self, id: u64) -> Result<network::Client, StoreError> {
        let addr = match self.members.get(&id) {
            Some(member) => member.peer.to_string(),
            None => self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
                .ok_or_else(|| unavailable(format!("member {id} is not known")))?,
        };
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, client)) = clients.get(&id)
            && *known == addr
        {
            return Ok(client.clone());
        }
        let client = network::client(&addr, &self.credential).map_err(unavailable)?;
        clients.insert(id, (addr, client.clone()));
        Ok(client)
    }

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
        let voters: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
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
                self.raft
                    .add_learner(id, BasicNode::new(peer), true)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            AdminOp::Promote { id } => {
                if let Some(refusal) = two_voters(voters.len() + usize::from(!voters.contains(&id)))
                {
                    return Ok(Err(refusal));
                }
                self.raft
                    .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            AdminOp::Remove { id } => {
                if let Some(refusal) = two_voters(voters.len() - usize::from(voters.contains(&id)))
                {
                    return Ok(Err(refusal));
                }
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
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

    /// Proposes `command` on this node, which must be the leader; it goes
    /// into the next entry with the other proposals waiting then.
    async fn propose(
        &self,
        request_id: String,
        command: Command,
    ) -> Result<ApplyResponse, Refusal> {
        if let Some(silent) = self.quorum_silence() {
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
        answer.await.unwrap_or(Err(Refusal::NotLeader(None)))
    }

    /// If this node leads but has not heard from a quorum for longer than
    /// the election timeout, how long: a leader cut off by a partition
    /// refuses at once instead of letting its clients wait.
    fn quorum_silence(&self) -> Option<u64> {
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

    /// A write from anywhere: proposed here if this node leads, forwarded to
    /// the leader otherwise, retried (same request id, so it applies once)
    /// until a leader answers or `LEADER_WAIT` passes.
    async fn write(&self, command: Command) -> Result<Applied, StoreError> {
        let id = request_id();
        tracing::debug!(request = %id, "write: start");
        let deadline = Instant::now() + LEADER_WAIT;
        let leaderless_limit = (self.election_timeout_max * 3).max(Duration::from_secs(3));
        let mut leaderless_since: Option<Instant> = None;
        let mut leader = self.raft.current_leader().await;
        loop {
            tracing::debug!(request = %id, ?leader, "write: attempt");
            let attempt = match leader {
                Some(l) if l == self.id => self.propose(id.clone(), command.clone()).await,
                Some(l) => self.forward_write(l, &id, &command).await,
                None => Err(Refusal::NotLeader(None)),
            };
            let hint = match attempt {
                Ok(ApplyResponse(result)) => {
                    tracing::debug!(request = %id, ?leader, "write: done");
                    return result;
                }
                Err(Refusal::NoQuorum(ms)) => return Err(no_quorum(ms)),
                Err(Refusal::NotLeader(hint)) => hint,
            };
            leader = hint.or(self.raft.current_leader().await);
            let now = Instant::now();
            let since = *leaderless_since.get_or_insert(now);
            if leader.is_some() {
                leaderless_since = None;
            }
            if now >= deadline || (leader.is_none() && now - since >= leaderless_limit) {
                return Err(unavailable(format!(
                    "no leader accepted the write within {} ms: this node cannot reach a majority of the cluster",
                    (now - since).as_millis().max(1)
                )));
            }
            tracing::debug!(request = %id, ?leader, "write: retrying");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a write to the leader, together with the other writes this
    /// node is forwarding at the moment (see `gather`).
    async fn forward_write(
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
    async fn forward_batch(&self, leader: u64, pending: Vec<Pending>) {
        let (writes, replies): (Vec<(String, Command)>, Vec<_>) = pending
            .into_iter()
            .map(|p| ((p.request_id, p.command), p.reply))
            .unzip();
        let answers = match self.leader_client(leader) {
            Ok(mut client) => {
                let deadline = PROPOSAL_WAIT + Duration::from_secs(1);
                let mut req = tonic::Request::new(network::blob(&writes));
                req.set_timeout(deadline);
                match tokio::time::timeout(deadline, client.write_batch(req)).await {
                    Ok(Ok(reply)) => serde_json::from_slice::<Vec<PeerReply<ApplyResponse>>>(
                        &reply.into_inner().data,
                    )
                    .ok(),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        match answers {
            Some(answers) => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(match answer {
                        PeerReply::Done(r) => Ok(r),
                        PeerReply::Refused(refusal) => Err(refusal),
                    });
                }
            }
            None => {
                for reply in replies {
                    let _ = reply.send(Err(Refusal::NotLeader(None)));
                }
            }
        }
    }

    /// A linearizable read: the leader confirms its leadership with a quorum
    /// (read index) and waits until it has applied up to it, then reads.
    async fn read(&self, call: ReadCall) -> Result<Outcome, StoreError> {
        tracing::debug!(namespace = %call.namespace, "read: start");
        if let Some(ms) = self.quorum_silence() {
            return Err(no_quorum(ms));
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let leader = match self.confirm_leadership().await {
                Ok(()) => return self.store.read_local(call).await,
                Err(leader) => leader,
            };
            tracing::debug!(?leader, "read attempt: this node does not lead");
            if let Some(l) = leader.filter(|l| *l != self.id)
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
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Confirms with a quorum that this node leads (a read-index round
    /// started after this call, shared with the reads that wait with it), or
    /// says who leads, if it knows.
    async fn confirm_leadership(&self) -> Result<(), Option<u64>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.confirmations.send(reply).is_err() {
            return Err(None);
        }
        answer.await.unwrap_or(Err(None))
    }

    /// Cuts this node off from its peers (or reconnects it), when the config
    /// allows fault injection: the partition tests' switch.
    pub fn set_isolated(&self, isolated: bool) -> Result<(), String> {
        if !self.fault_injection {
            return Err(
                "fault injection is off: set cluster.fault_injection (for tests only)".into(),
            );
        }
        self.faults.set_isolated(isolated);
        tracing::warn!(isolated, "fault injection: peer traffic switched");
        Ok(())
    }

    /// A read of this node's own copy, within the stale-read bound: the
    /// node must have heard from a leader within the bound (or lead with a
    /// quorum) and have applied everything it knows to be committed.
    async fn read_stale(&self, call: ReadCall) -> Result<Outcome, StoreError> {
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
            if let Some(ms) = self.quorum_silence() {
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
        self.store.read_local(call).await
    }

    /// Raft's view of this node, for `/status` and `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        // Everyone in the membership (voters and learners), named from the
        // topology when it knows them.
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
                serde_json::json!({
                    "id": id,
                    "name": self.members.get(id).map(|member| member.name.clone()),
                    "peer": node.addr,
                    "voter": voters.contains(id),
                    "matched_index": matched,
                })
            })
            .collect();
        serde_json::json!({
            "id": self.id,
            "role": format!("{:?}", m.state),
            "term": m.current_term,
            "leader": m.current_leader,
            "last_log_index": m.last_log_index,
            "commit_index": self.committed.load(std::sync::atomic::Ordering::SeqCst),
            "applied_index": m.last_applied.map(|l| l.index),
            "snapshot_index": m.snapshot.map(|l| l.index),
            "peers": peers,
        })
    }

    /// Whether the cluster has a leader this node knows.
    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    /// Hands leadership over (if this node leads) and stops Raft.
    pub async fn shutdown(&self) {
        if self.raft.current_leader().await == Some(self.id) {
            self.transfer_leadership().await;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
    }

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
    /// vote until `election_timeout_max` (its leader lease) has passed since
    /// the leader last reached it; it campaigns itself only after a further
    /// election timeout. So the leader goes quiet (no heartbeats, and
    /// proposals and read-index rounds wait), lets the leases lapse, and then
    /// asks the target to campaign: the target is the first candidate the
    /// followers can vote for. The caller gets the outcome, not a promise.
    async fn hand_over_to(&self, target: u64) -> Option<u64> {
        let Ok(mut client) = self.leader_client(target) else {
            return self.raft.current_leader().await;
        };
        let gate = self.quiet.write().await;
        // Another hand-over may have run while this one waited.
        if self.raft.current_leader().await != Some(self.id) {
            return self.raft.current_leader().await;
        }
        let quiet = QuietLeader::start(self, gate);
        tokio::time::sleep(self.election_timeout_max + self.election_timeout_min / 4).await;
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
struct QuietLeader<'a> {
    cluster: &'a Cluster,
    _gate: tokio::sync::RwLockWriteGuard<'a, ()>,
}

impl<'a> QuietLeader<'a> {
    fn start(cluster: &'a Cluster, gate: tokio::sync::RwLockWriteGuard<'a, ()>) -> Self {
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

/// The store's replicator: a weak handle, so the cluster and the store do
/// not keep each other alive.
struct ReplicatorHandle(Weak<Cluster>);

impl ReplicatorHandle {
    /// Runs `op` on the cluster, if it is still there.
    fn with<T: Send + 'static, Fut>(
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
}

/// A replicator that sends writes and reads to the running members over
/// the peer listener, so they go through Raft like any other:
/// - on a node without the `db` role, its store (a client of the members'
///   database, within its namespaces);
/// - for administrative commands run outside a node (`accounts
///   create-admin`, `auth rotate-keys`) with a member's config.
pub fn remote_replicator(settings: &ClusterSettings) -> Arc<dyn Replicator> {
    Arc::new(Remote(Arc::new(RemoteInner::new(settings))))
}

struct Remote(Arc<RemoteInner>);

struct RemoteInner {
    members: Vec<Member>,
    credential: String,
    /// The store client's node name, when calling as one.
    node: Option<String>,
    /// One client (one HTTP/2 connection) per member, shared by calls.
    clients: std::sync::Mutex<BTreeMap<u64, network::Client>>,
    /// The member that answered last (0: none yet): tried first.
    leader: std::sync::atomic::AtomicU64,
}

impl RemoteInner {
    fn new(settings: &ClusterSettings) -> RemoteInner {
        let (credential, node) = match &settings.role {
            Role::Voter { secret, .. } => (network::credential(secret), None),
            Role::Client { node, key } => (key.clone(), Some(node.clone())),
        };
        RemoteInner {
            members: settings.members.clone(),
            credential,
            node,
            clients: std::sync::Mutex::default(),
            leader: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn client(&self, member: &Member) -> Result<network::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&member.id) {
            return Ok(c.clone());
        }
        let client = network::client_as(
            &member.peer.to_string(),
            &self.credential,
            self.node.as_deref(),
        )?;
        clients.insert(member.id, client.clone());
        Ok(client)
    }

    /// Calls `method` on the members, the last known leader first,
    /// following leader hints, until one answers with a result or
    /// `LEADER_WAIT` passes (a minute for membership changes, which wait
    /// for a learner to catch up).
    /// `namespace`: the one the call acts on, for a refusal's error.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        namespace: &str,
        payload: Blob,
    ) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        let wait = if method == "admin" {
            Duration::from_secs(60)
        } else {
            PROPOSAL_WAIT + Duration::from_secs(1)
        };
        let deadline = Instant::now() + if method == "admin" { wait } else { LEADER_WAIT };
        let mut last_error = String::from("no member answered");
        loop {
            let hint = self.leader.load(Ordering::Relaxed);
            let mut order: Vec<&Member> = self.members.iter().collect();
            order.sort_by_key(|m| m.id != hint);
            // A refusal is final only if every member refuses: during a
            // rolling restart some may not know this node yet.
            let mut refusals = Vec::new();
            let asked = order.len();
            for member in order {
                let mut client = match self.client(member) {
                    Ok(c) => c,
                    Err(e) => {
                        last_error = e;
                        continue;
                    }
                };
                let mut req = tonic::Request::new(payload.clone());
                req.set_timeout(wait);
                let call = async {
                    match method {
                        "write" => client.write(req).await,
                        "admin" => client.admin(req).await,
                        _ => client.read(req).await,
                    }
                };
                let reply = tokio::time::timeout(wait, call)
                    .await
                    .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
                match reply {
                    Ok(r) => match serde_json::from_slice::<PeerReply<T>>(&r.into_inner().data) {
                        Ok(PeerReply::Done(v)) => {
                            self.leader.store(member.id, Ordering::Relaxed);
                            return Ok(v);
                        }
                        Ok(PeerReply::Refused(Refusal::NotLeader(Some(leader)))) => {
                            self.leader.store(leader, Ordering::Relaxed);
                            break;
                        }
                        Ok(PeerReply::Refused(refusal)) => {
                            last_error = format!("{}: {refusal:?}", member.name)
                        }
                        Err(e) => {
                            last_error = format!("undecodable reply from {}: {e}", member.name)
                        }
                    },
                    Err(status) if status.code() == tonic::Code::PermissionDenied => {
                        refusals.push(StoreError::Denied {
                            namespace: namespace.to_owned(),
                            reason: format!("{} refused it: {}", member.name, status.message()),
                        });
                    }
                    Err(status) if status.code() == tonic::Code::Unauthenticated => {
                        refusals.push(StoreError::Storage(format!(
                            "{} refused this node's credentials: {}",
                            member.name,
                            status.message()
                        )));
                    }
                    Err(status) => last_error = format!("{}: {}", member.name, status.message()),
                }
            }
            if refusals.len() == asked
                && let Some(refusal) = refusals.pop()
            {
                return Err(refusal);
            }
            if Instant::now() >= deadline {
                return Err(unavailable(format!(
                    "no cluster member accepted the request: {last_error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Runs a `flotilla cluster` operation against the running members: status
/// from every reachable member, changes on the leader.
pub async fn remote_admin(
    settings: &ClusterSettings,
    op: AdminOp,
) -> Result<serde_json::Value, String> {
    let Role::Voter { secret, .. } = &settings.role else {
        return Err(
            "this config is a store client's: run `flotilla cluster` with a db member's config"
                .into(),
        );
    };
    let credential = network::credential(secret);
    if matches!(op, AdminOp::Status) {
        let mut members = Vec::new();
        for m in &settings.members {
            let status = match network::client(&m.peer.to_string(), &credential) {
                Ok(mut client) => {
                    let call = client.admin(tonic::Request::new(network::blob(&op)));
                    match tokio::time::timeout(Duration::from_secs(3), call).await {
                        Ok(Ok(r)) => match serde_json::from_slice::<
                            PeerReply<Result<serde_json::Value, String>>,
                        >(&r.into_inner().data)
                        {
                            Ok(PeerReply::Done(Ok(v))) => v,
                            other => serde_json::json!({ "error": format!("{other:?}") }),
                        },
                        Ok(Err(status)) => serde_json::json!({ "error": status.message() }),
                        Err(_) => serde_json::json!({ "error": "no answer within 3 s" }),
                    }
                }
                Err(e) => serde_json::json!({ "error": e }),
            };
            members.push(serde_json::json!({ "member": m.name, "status": status }));
        }
        return Ok(serde_json::Value::Array(members));
    }
    let result: Result<serde_json::Value, String> = RemoteInner::new(settings)
        .call("admin", "", network::blob(&op))
        .await
        .map_err(|e| e.to_string())?;
    result
}

impl Replicator for Remote {
    fn write(&self, command: Command) -> BoxFuture<'static, Result<Applied, StoreError>> {
        let remote = self.0.clone();
        async move {
            let namespace = command.namespace().to_owned();
            let payload = network::blob(&(request_id(), command));
            let ApplyResponse(result) = remote.call("write", &namespace, payload).await?;
            result
        }
        .boxed()
    }

    fn read(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>> {
        let remote = self.0.clone();
        async move {
            let payload = network::blob(&call);
            remote
                .call::<Result<Outcome, StoreError>>("read", &call.namespace, payload)
                .await?
        }
        .boxed()
    }

    /// A client has no copy of its own: it reads through the leader.
    fn read_stale(&self, call: ReadCall) -> BoxFuture<'static, Result<Outcome, StoreError>> {
        self.read(call)
    }
}

struct PeerService {
    cluster: Arc<Cluster>,
}

type PeerResult = Result<tonic::Response<Blob>, tonic::Status>;

fn reply<T: Serialize>(value: &T) -> PeerResult {
    Ok(tonic::Response::new(network::blob(value)))
}

fn caller<T>(r: &tonic::Request<T>) -> Result<&network::Caller, tonic::Status> {
    r.extensions()
        .get::<network::Caller>()
        .ok_or_else(|| tonic::Status::unauthenticated("the call was not authenticated"))
}

/// Refuses a store client: Raft, membership and batch forwarding are for
/// members.
fn members_only<T>(r: &tonic::Request<T>) -> Result<(), tonic::Status> {
    match caller(r)? {
        network::Caller::Peer => Ok(()),
        network::Caller::Client { node, .. } => Err(tonic::Status::permission_denied(format!(
            "`{node}` is a store client: it may read and write, not take part in Raft"
        ))),
    }
}

/// Refuses a store client's read outside what the policy allows it.
fn check_read<T>(
    r: &tonic::Request<T>,
    namespace: &str,
    policy: &dyn ClientPolicy,
) -> Result<(), tonic::Status> {
    match caller(r)? {
        network::Caller::Client { node } => policy
            .read(node, namespace)
            .map_err(|why| refuse(node, why)),
        network::Caller::Peer => Ok(()),
    }
}

/// Refuses a store client's command outside what the policy allows it.
fn check_command<T>(
    r: &tonic::Request<T>,
    command: &Command,
    policy: &dyn ClientPolicy,
) -> Result<(), tonic::Status> {
    match caller(r)? {
        network::Caller::Client { node } => policy
            .command(node, command)
            .map_err(|why| refuse(node, why)),
        network::Caller::Peer => Ok(()),
    }
}

fn refuse(node: &str, why: String) -> tonic::Status {
    tracing::warn!(client = %node, %why, "store client refused");
    tonic::Status::permission_denied(why)
}

#[tonic::async_trait]
impl peer_server::Peer for PeerService {
    async fn append_entries(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let req = network::unblob(r.get_ref())?;
        let result = self.cluster.raft.append_entries(req).await;
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
        }
        reply(&result)
    }

    async fn vote(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let req = network::unblob(r.get_ref())?;
        reply(&self.cluster.raft.vote(req).await)
    }

    async fn install_snapshot(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let blob = r.into_inner();
        let mut req: openraft::raft::InstallSnapshotRequest<TypeConfig> = network::unblob(&blob)?;
        req.data = blob.payload;
        reply(&self.cluster.raft.install_snapshot(req).await)
    }

    async fn write(&self, r: tonic::Request<Blob>) -> PeerResult {
        let (id, command): (String, Command) = network::unblob(r.get_ref())?;
        check_command(&r, &command, &*self.cluster.policy)?;
        reply(&PeerReply::from(self.cluster.propose(id, command).await))
    }

    async fn write_batch(&self, r: tonic::Request<Blob>) -> PeerResult {
        members_only(&r)?;
        let writes: Vec<(String, Command)> = network::unblob(r.get_ref())?;
        let answers = futures_util::future::join_all(
            writes
                .into_iter()
                .map(|(id, command)| self.cluster.propose(id, command)),
        )
        .await;
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
                    if let Ok(mut client) = self.cluster.leader_client(leader) {
                        let call = client.admin(tonic::Request::new(network::blob(&op)));
                        if let Ok(Ok(answer)) =
                            tokio::time::timeout(Duration::from_secs(60), call).await
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
