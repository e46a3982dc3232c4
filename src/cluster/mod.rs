//! HA: the node's database replicated with Raft (openraft 0.9, pinned; see
//! docs/adr/0005-openraft.md).
//!
//! - `log_store`: the Raft log and vote, fsynced before they are
//!   acknowledged, with checksums.
//! - `state_machine`: the store itself; each entry applies in one
//!   transaction with the last applied log id and the membership.
//! - `network`: the peer listener's gRPC transport, authenticated with the
//!   cluster secret.
//! - `replicate`: writes and reads through the leader, batched.
//! - `handover`: leadership hand-over.
//! - `membership`: waiting for learners to catch up; membership errors.
//! - `origin`: group ids, the check that a member's log accounts for its
//!   database, forming a group, leaving it.
//! - `elect`: PreVote; elections start only after a majority would vote.
//! - `peer`: the peer listener's service, with the store clients' checks.
//! - `remote`: a store client's replicator.
//! - `contact`: when each member was last heard from, for `/status`.
//!
//! [`Cluster`] is the store's [`Replicator`]: a service's write becomes a
//! proposal (with a request id, and a time and random seed chosen by the
//! leader), is committed on a quorum, applied everywhere, and answered with
//! the result the leader's state machine computed. A follower forwards
//! writes and reads to the leader. Reads are linearizable (read index
//! through the leader).

mod admin;
mod certify;
pub mod contact;
pub mod durable;
mod elect;
mod handover;
pub mod log_store;
mod membership;
pub mod network;
pub mod origin;
mod peer;
mod remote;
mod replicate;
pub mod sessions;
pub mod state_machine;

use handover::Quiet;
use membership::membership_error;
pub use remote::{
    Followed, StoreClientLink, any_member_listening, members_named, remote_admin, remote_replicator,
};
use replicate::{
    Confirmation, ENTRIES_IN_FLIGHT, ForwardedBatch, LEADER_WAIT, PROPOSAL_WAIT, Pending,
    ReplicatorHandle, confirm_gathered, forward_gathered, gather, propose_gathered,
};

use std::{
    collections::{BTreeMap, BTreeSet},
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

/// The Raft log and vote of a member, in its data dir beside the database.
pub const LOG_FILE: &str = "raft-log.db";

/// An operation of `flotilla cluster ...`, sent to any member over the peer
/// listener (authenticated with the cluster secret); membership changes are
/// forwarded to the leader.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum AdminOp {
    Status,
    AddLearner { id: u64, peer: String },
    Promote { ids: Vec<u64> },
    Remove { ids: Vec<u64> },
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
    /// The write reached a leader, and no outcome came back: it may still
    /// commit. Retried with the same request id it applies at most once;
    /// if no retry gets an answer, the caller is told "outcome unknown".
    Unknown(String),
}

/// A write a store client or an administrative command sends to a member.
/// It is proposed only until `deadline_ms` (wall clock, milliseconds):
/// after that its sender no longer waits for it, and applying it (bytes
/// held by a partition, delivered after the heal) would apply a write
/// whose caller was told nothing.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientWrite {
    pub request_id: String,
    pub command: Command,
    pub deadline_ms: i64,
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

/// The reason of `Cluster::stopped`, from Raft's metrics.
fn stop_reason(m: &openraft::RaftMetrics<u64, BasicNode>) -> Option<String> {
    let fatal = m.running_state.as_ref().err()?;
    // The storage's own message (it names the file and the fix), without
    // openraft's wrapping.
    let cause = match fatal {
        openraft::error::Fatal::StorageError(openraft::StorageError::IO { source }) => {
            let cause = std::error::Error::source(source)
                .map_or_else(|| source.to_string(), ToString::to_string);
            // A failed log append reaches openraft as an io::Error.
            match cause.strip_prefix("std::io::error::Error: ") {
                Some(inner) => inner.to_owned(),
                None => cause,
            }
        }
        other => other.to_string(),
    };
    Some(format!(
        "this member has stopped replicating: {cause}. The other members carry on without it; it serves no reads or writes until it is restarted"
    ))
}

/// Logs, once, why this member stopped taking part in Raft (unless it was
/// shut down).
async fn report_stop(
    mut metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, BasicNode>>,
) {
    loop {
        let reason = {
            let m = metrics.borrow_and_update();
            match &m.running_state {
                Ok(()) => None,
                Err(openraft::error::Fatal::Stopped) => return,
                Err(_) => stop_reason(&m),
            }
        };
        if let Some(reason) = reason {
            tracing::error!("{reason}");
            return;
        }
        if metrics.changed().await.is_err() {
            return;
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
        SnapshotData = tokio::fs::File,
);

/// `bytes` random bytes in hex: group ids, claims, tokens.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cluster this node takes part in, if any: set at start, or later
/// when a running single node forms a group (`flotilla cluster init`).
#[derive(Clone, Default)]
pub struct ClusterSlot(Arc<std::sync::RwLock<Option<Arc<Cluster>>>>);

impl ClusterSlot {
    pub fn new(cluster: Option<Arc<Cluster>>) -> ClusterSlot {
        ClusterSlot(Arc::new(std::sync::RwLock::new(cluster)))
    }

    pub fn get(&self) -> Option<Arc<Cluster>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, cluster: Arc<Cluster>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(cluster);
    }

    pub fn clear(&self) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// A Raft member: a node with the `db` role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Stable Raft id; never derived from an address.
    pub id: u64,
    pub name: String,
    /// Its peer listener, `host:port`: an IP address or a DNS name,
    /// resolved again at every connection.
    pub peer: String,
}

/// What each store client may do with the members' database. The layers
/// above the cluster decide it (which namespaces belong to which services,
/// what a registry record is); a member asks for every call of a client.
/// **Architecture Invariant:** the cluster itself knows nothing of
/// services, the registry or accounts.
pub trait ClientPolicy: Send + Sync + 'static {
    /// Why store client `client` may not read `namespace`, if it may not.
    fn read(&self, client: &StoreClient, namespace: &str) -> Result<(), String>;
    /// Why store client `client` may not send `command`, if it may not.
    fn command(&self, client: &StoreClient, command: &Command) -> Result<(), String>;
}

pub use certify::store_client_auth;

/// The namespace the registry lives in (`mesh::registry`), which store
/// clients may follow with `WatchRegistry`.
pub const REGISTRY_NAMESPACE: &str = "registry";

pub use network::{StoreClient, join_token, join_token_scope};

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
    /// This node's name (its certificate's identity).
    pub node: String,
    /// What this node runs: its services, and `xds` (a store client's
    /// certificate names them).
    pub runs: Vec<String>,
    pub role: Role,
    /// TLS between nodes (`cluster.tls`): on unless written off.
    pub tls: crate::tls::peer::PeerTlsMode,
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

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Log(String),
    #[error("invalid raft settings: {0}")]
    Config(String),
    #[error("raft failed to start: {0}")]
    Start(String),
    /// The data dir holds state this member's group does not account for.
    #[error("{0}")]
    Foreign(String),
    /// This member's certificate cannot be made (the CA files, say).
    #[error("TLS between nodes: {0}")]
    Tls(String),
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.renewal.cancel();
    }
}

pub struct Cluster {
    pub id: u64,
    pub faults: network::Faults,
    fault_injection: bool,
    stale_read_max_lag: Duration,
    committed: Arc<std::sync::atomic::AtomicU64>,
    last_leader_contact: std::sync::Mutex<Option<Instant>>,
    /// When this member's last PreVote round reached no majority of the
    /// voters (its peers did not answer): it is cut off, and refuses what
    /// it would otherwise forward at once (see `elect`).
    cut_off_since: std::sync::Mutex<Option<Instant>>,
    election_timeout_min: Duration,
    election_timeout_max: Duration,
    /// The leader lease a follower keeps: for this long after it last heard
    /// from its leader it refuses to vote (openraft's check, and our
    /// PreVote's). The shortest election timeout, as etcd's followers keep
    /// it; the random part of the timeout then only spreads the candidates
    /// (`elect`). See `raft_config`.
    lease: Duration,
    raft: Raft<TypeConfig>,
    /// See [`Quiet`].
    quiet: Quiet,
    /// Set while a hand-over keeps this leader quiet on purpose, so that its
    /// silence is not taken for a lost quorum (see `quorum_silence`).
    handing_over: std::sync::atomic::AtomicBool,
    /// Until when this member does not stand for election: its leader is
    /// handing over to another member (`handover`).
    candidacy_held_until: std::sync::Mutex<Option<Instant>>,
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
    /// How this member calls the others: the credential, or its
    /// certificate.
    auth: network::Auth,
    /// This member's TLS between nodes, unless `tls: off`.
    tls: Option<crate::tls::peer::PeerTls>,
    /// Ends the certificate's renewal with the cluster.
    renewal: tokio_util::sync::CancellationToken,
    /// The store clients' certificates this member issued, by node (for
    /// `flotilla ca status`; since this member started).
    issued: std::sync::Mutex<BTreeMap<String, crate::tls::identity::CertInfo>>,
    /// The store clients, with their keys.
    client_keys: network::ClientKeys,
    /// The cluster secret, from which the store clients' keys derive.
    secret: String,
    /// What each store client may do.
    policy: Arc<dyn ClientPolicy>,
    /// The group this member belongs to, once known (see `origin`).
    group: origin::GroupCell,
    /// One group change (forming, joining) at a time.
    adopting: tokio::sync::Mutex<()>,
    /// The backup this member's database was restored from to seed a new
    /// group, if it was.
    seed: Option<String>,
    /// This member's log, for the group's records.
    log: log_store::LogStore,
    /// The registry as this member sees it, encoded, for the store clients
    /// that follow it (`WatchRegistry`); the node publishes it.
    registry_feed: tokio::sync::watch::Sender<Arc<[u8]>>,
    /// Who this member is in touch with (see `sessions`).
    sessions: Arc<sessions::Sessions>,
    /// When each member was last heard from (see `contact`).
    contacts: Arc<contact::Contacts>,
    me: Weak<Cluster>,
}

fn unavailable(message: String) -> StoreError {
    StoreError::Unavailable(message)
}

/// Each store client's expected key.
fn client_keys_of(secret: &str, names: &[String]) -> std::collections::HashMap<String, String> {
    names
        .iter()
        .map(|name| (name.clone(), network::client_key(secret, name)))
        .collect()
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
    /// Opens and checks this member's Raft log (see `LogStore::open`), and
    /// checks that it accounts for the database beside it (see
    /// `origin::refusal`): before the node binds anything, so that a damaged
    /// log or foreign data stops it at once. `config` names the node's
    /// config in messages.
    pub async fn open_log(
        data_dir: &Path,
        store: &Store,
        config: &str,
    ) -> Result<origin::OpenedLog, ClusterError> {
        let marks = store
            .group_marks()
            .await
            .map_err(|e| ClusterError::Log(e.to_string()))?;
        let path = data_dir.join(LOG_FILE);
        if !path.exists() {
            // Checked before the log is created, so that a refusal leaves
            // the data dir as it was.
            origin::refusal(data_dir, config, &origin::no_log(), &marks, |_| Ok(None))
                .map_err(ClusterError::Foreign)?;
        }
        let log = log_store::LogStore::open(&path).map_err(ClusterError::Log)?;
        let facts = log.facts().map_err(ClusterError::Log)?;
        origin::refusal(data_dir, config, &facts, &marks, |i| log.id_at(i))
            .map_err(ClusterError::Foreign)?;
        Ok(origin::OpenedLog { log, facts, marks })
    }

    /// Starts Raft over the store with the log `opened`, makes the store
    /// replicated, and forms or joins the group as configured (see
    /// `origin`). Store clients' calls are checked against `policy`.
    pub async fn start(
        settings: &ClusterSettings,
        store: Store,
        opened: origin::OpenedLog,
        data_dir: &Path,
        policy: Arc<dyn ClientPolicy>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let origin::OpenedLog { log, facts, marks } = opened;
        let config = Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: settings.heartbeat.as_millis() as u64,
            // With its own elections off, openraft uses its longest
            // election timeout for one thing: the lease in which a follower
            // refuses to vote. That is the shortest timeout here (and one
            // millisecond, since openraft wants the two apart); the spread
            // of the timeouts is our elector's (`Cluster::lease`).
            election_timeout_min: settings.election_timeout.0.as_millis() as u64,
            election_timeout_max: elect::lease(settings.election_timeout.0).as_millis() as u64,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.snapshot_keep_logs,
            snapshot_max_chunk_size: 1024 * 1024,
            // Per chunk; generous, so a loaded machine does not turn a slow
            // chunk into an endless resend.
            install_snapshot_timeout: 10_000,
            // Elections are started by our elector after a PreVote round
            // (`elect`, docs/adr/0008-prevote.md).
            enable_elect: false,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let snapshots = data_dir.join("snapshots");
        std::fs::create_dir_all(&snapshots).map_err(|e| {
            ClusterError::Log(format!("cannot create {}: {e}", snapshots.display()))
        })?;
        let Role::Voter { id, secret } = &settings.role else {
            return Err(ClusterError::Config(
                "only a node with the db role runs Raft; this one is a store client".into(),
            ));
        };
        let id = *id;
        let log = log.acknowledging_as(id);
        let sm = state_machine::StateMachine::new(store.clone(), snapshots, log.durable.clone());
        let committed = log.committed.clone();
        let credential: Arc<str> = Arc::from(network::credential(secret));
        let client_keys: network::ClientKeys = Arc::new(std::sync::RwLock::new(client_keys_of(
            secret,
            &settings.clients,
        )));
        let tls = match &settings.tls {
            crate::tls::peer::PeerTlsMode::Off => None,
            crate::tls::peer::PeerTlsMode::On(on) => Some(
                crate::tls::peer::PeerTls::of_member(on, secret, &settings.node)
                    .map_err(ClusterError::Tls)?,
            ),
        };
        let auth = match &tls {
            Some(tls) => network::Auth::Tls(tls.clone()),
            None => network::Auth::Plain {
                credential: credential.clone(),
                node: None,
            },
        };
        let renewal = tokio_util::sync::CancellationToken::new();
        if let Some(tls) = &tls {
            tokio::spawn(crate::tls::peer::renew_member(tls.clone(), renewal.clone()));
            if let crate::tls::peer::PeerTlsMode::On(on) = &settings.tls
                && let crate::tls::peer::CaSource::Dir(dir) = &on.ca
            {
                tokio::spawn(crate::tls::peer::follow_ca_dir(
                    tls.clone(),
                    dir.clone(),
                    on.domain.clone(),
                    renewal.clone(),
                ));
            }
        }
        let faults = network::Faults::default();
        let group: origin::GroupCell = Arc::new(std::sync::RwLock::new(
            facts.group.as_deref().map(Arc::from),
        ));
        let sessions = Arc::new(sessions::Sessions::default());
        let contacts = Arc::new(contact::Contacts::default());
        let raft = Raft::new(
            id,
            Arc::new(config),
            network::Network::new(
                id,
                auth.clone(),
                faults.clone(),
                group.clone(),
                network::Books {
                    sessions: sessions.clone(),
                    contacts: contacts.clone(),
                    durable: log.durable.clone(),
                },
                settings
                    .members
                    .iter()
                    .map(|m| (m.id, m.name.clone()))
                    .collect(),
            ),
            log.clone(),
            sm,
        )
        .await
        .map_err(|e| ClusterError::Start(e.to_string()))?;
        tokio::spawn(log.durable.clone().heartbeat_when_written({
            let raft = raft.clone();
            move || {
                let raft = raft.clone();
                async move { raft.trigger().heartbeat().await.is_ok() }
            }
        }));
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
        let cluster = Arc::new_cyclic(|me| Cluster {
            secret: secret.clone(),
            me: me.clone(),
            group,
            adopting: tokio::sync::Mutex::new(()),
            seed: marks.seed.clone(),
            log,
            id,
            client_keys,
            policy,
            faults,
            fault_injection: settings.fault_injection,
            stale_read_max_lag: settings.stale_read_max_lag,
            committed,
            last_leader_contact: std::sync::Mutex::new(None),
            cut_off_since: std::sync::Mutex::new(None),
            election_timeout_min: settings.election_timeout.0,
            election_timeout_max: settings.election_timeout.1,
            lease: elect::lease(settings.election_timeout.0),
            raft,
            quiet,
            handing_over: std::sync::atomic::AtomicBool::new(false),
            candidacy_held_until: std::sync::Mutex::new(None),
            proposals,
            forwards,
            confirmations,
            store: store.clone(),
            members: settings.members.iter().map(|m| (m.id, m.clone())).collect(),
            clients: std::sync::Mutex::default(),
            credential,
            auth,
            tls,
            renewal,
            issued: std::sync::Mutex::default(),
            registry_feed: tokio::sync::watch::channel(Arc::from(&b"[]"[..])).0,
            sessions,
            contacts,
        });
        tokio::spawn(report_stop(cluster.raft.metrics()));
        tokio::spawn(elect::elector(Arc::downgrade(&cluster)));
        let forwarder = Arc::downgrade(&cluster);
        tokio::spawn(gather(forward_queue, ENTRIES_IN_FLIGHT, move |writes| {
            forward_gathered(forwarder.clone(), writes)
        }));
        store
            .set_replicator(Arc::new(ReplicatorHandle(Arc::downgrade(&cluster))))
            .map_err(|e| ClusterError::Start(e.to_string()))?;
        if facts.origin_pending {
            // Formed on existing data, and stopped before its first
            // snapshot was made: make it now.
            cluster.spawn_first_snapshot();
        }
        if settings.bootstrap && cluster.group().is_none() {
            tokio::spawn(Cluster::bootstrap(Arc::downgrade(&cluster)));
        }
        Ok(cluster)
    }

    /// The peer gRPC service, behind the credential check.
    pub fn peer_router(self: &Arc<Self>) -> axum::Router {
        crate::protocol::grpc_router(peer_server::PeerServer::with_interceptor(
            peer::PeerService {
                cluster: self.clone(),
            },
            network::check_credential(
                self.credential.clone(),
                Arc::from(self.secret.as_str()),
                self.client_keys.clone(),
                self.faults.clone(),
                self.group.clone(),
                self.tls.as_ref().map(|t| Arc::from(t.domain())),
            ),
        ))
    }

    /// The xDS listener's TLS (`xds.tls`), unless `tls: off`: this
    /// member's certificate, Envoys' required.
    pub fn xds_tls(&self) -> Option<crate::tls::TlsSource> {
        let tls = self.tls.clone()?;
        Some(crate::tls::fixed(move || tls.xds_server_config()))
    }

    /// This member's TLS between nodes, unless `tls: off`.
    pub fn node_tls(&self) -> Option<crate::tls::peer::PeerTls> {
        self.tls.clone()
    }

    /// The peer listener's TLS, unless `tls: off`: each connection takes
    /// the configuration of the certificate current at its handshake.
    pub fn peer_tls(&self) -> Option<crate::tls::TlsSource> {
        let tls = self.tls.clone()?;
        Some(crate::tls::fixed(move || tls.server_config()))
    }

    /// A client for member `id`: its address from the topology, or from the
    /// membership for a member added later.
    /// Clients are kept per member and address, so forwarded calls share
    /// one HTTP/2 connection instead of opening one each.
    /// A client for forwarding a `flotilla cluster` operation to member
    /// `id` (see `network::admin_client`).
    fn admin_client(&self, id: u64) -> Result<network::Client, StoreError> {
        let addr = self.peer_addr(id)?;
        network::admin_client(&addr, &self.auth, Some(&self.group)).map_err(unavailable)
    }

    /// Member `id`'s peer address: from the topology, or from the
    /// membership for a member added later.
    fn peer_addr(&self, id: u64) -> Result<String, StoreError> {
        match self.members.get(&id) {
            Some(member) => Ok(member.peer.to_string()),
            None => self
                .raft
                .metrics()
                .borrow()
                .membership_config
                .membership()
                .get_node(&id)
                .map(|n| n.addr.clone())
                .ok_or_else(|| unavailable(format!("member {id} is not known"))),
        }
    }

    fn leader_client(&self, id: u64) -> Result<network::Client, StoreError> {
        let addr = self.peer_addr(id)?;
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((known, client)) = clients.get(&id)
            && *known == addr
        {
            return Ok(client.clone());
        }
        let client = network::client(&addr, &self.auth, &self.group).map_err(unavailable)?;
        clients.insert(id, (addr, client.clone()));
        Ok(client)
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

    /// Lets in the store clients `names` (and no others) from now on: the
    /// topology's `nodes` after it changed.
    pub fn set_store_clients(&self, names: &[String]) {
        *self.client_keys.write().unwrap_or_else(|p| p.into_inner()) =
            client_keys_of(&self.secret, names);
    }

    /// Whether the cluster has a leader this node knows (and this member
    /// still takes part: see `stopped`).
    pub fn has_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.running_state.is_ok() && m.current_leader.is_some()
    }

    /// Whether this member leads the cluster now.
    pub fn is_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.running_state.is_ok() && m.current_leader == Some(self.id)
    }

    /// Why this member stopped taking part in Raft, if it did: a read or
    /// write of its Raft log or database failed (a full disk, a read-only
    /// file system, a damaged file). The member then refuses every write and
    /// read with this reason, which names the file and the fix; it
    /// acknowledged nothing it had not persisted, and the other members
    /// carry on without it.
    pub fn stopped(&self) -> Option<String> {
        stop_reason(&self.raft.metrics().borrow())
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
}
