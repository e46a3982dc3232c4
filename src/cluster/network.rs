//! Node-to-node transport over the peer listener: tonic gRPC carrying the
//! JSON encoding of openraft's messages, authenticated with a credential
//! derived from the cluster secret.
//!
//! Every call carries `x-flotilla-peer: <credential>`; the server compares
//! it in constant time before anything else, so nothing without the secret
//! can join, vote or write. A store client (a node without the `db` role)
//! also sends `x-flotilla-client: <node>` and presents its own key, derived
//! from the secret and its name: it can read and write, within its
//! namespaces only, and nothing else (see `Caller`).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
    time::Duration,
};

use hmac::{Hmac, Mac};
use openraft::{
    BasicNode, RaftNetwork, RaftNetworkFactory,
    error::{
        InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
    },
    network::{RPCOption, RPCTypes},
    raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    },
};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tonic::{
    metadata::MetadataValue, service::interceptor::InterceptedService, transport::Channel,
};

use super::{TypeConfig, contact::Contacts, durable::Durable, sessions::Sessions};
use crate::proto::peer::{Blob, peer_client::PeerClient};
use crate::telemetry::Throttle;

type NodeId = u64;

pub const CREDENTIAL_HEADER: &str = "x-flotilla-peer";
/// The node name a store client calls as.
pub const CLIENT_HEADER: &str = "x-flotilla-client";
/// The Raft group of the member that calls (see `origin`).
pub const GROUP_HEADER: &str = "x-flotilla-group";

/// The refusal of a message from a member of another group.
pub fn group_mismatch(mine: &str, theirs: &str) -> tonic::Status {
    tonic::Status::failed_precondition(format!(
        "Raft group mismatch: this member belongs to group {mine}, the caller to group {theirs}; members of different groups never exchange Raft messages (one of them was started on another cluster's data dir, or joined another cluster)"
    ))
}

/// The group a fresh member (one with no group yet) was offered by a
/// member's call: its handlers join it before they let Raft act on the
/// call.
#[derive(Clone, Debug)]
pub struct OfferedGroup(pub String);

static REFUSED_GROUP: Throttle = Throttle::new(Duration::from_secs(10));

fn mac_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The credential peers present, derived from the cluster secret.
pub fn credential(secret: &str) -> String {
    mac_hex(secret, b"flotilla/v1/peer credential")
}

/// The key of store client `node` (its `cluster.client_key`): derived from
/// the cluster secret and the name, so the db members check it without
/// storing it, and a client cannot pass for another node.
pub fn client_key(secret: &str, node: &str) -> String {
    mac_hex(
        secret,
        format!("flotilla/v1/store client/{node}").as_bytes(),
    )
}

/// What starts a join token.
const JOIN_PREFIX: &str = "fjt1.";

/// A join token for nodes that run (some of) `scope`, services named by
/// the layers above: derived from the cluster secret and the scope, so the
/// members check it without storing it, and a holder cannot widen it.
pub fn join_token(secret: &str, scope: &[String]) -> String {
    let scope = scope.join(",");
    format!(
        "{JOIN_PREFIX}{scope}.{}",
        mac_hex(secret, format!("flotilla/v1/join/{scope}").as_bytes())
    )
}

/// The scope a join token names, without checking it (a node checks that
/// its own services fit before it starts).
pub fn join_token_scope(token: &str) -> Option<Vec<String>> {
    let (scope, _mac) = token.strip_prefix(JOIN_PREFIX)?.rsplit_once('.')?;
    Some(scope.split(',').map(str::to_owned).collect())
}

/// The scope of `token` if the cluster secret made it.
fn verify_join_token(secret: &str, token: &[u8]) -> Option<Vec<String>> {
    let token = std::str::from_utf8(token).ok()?;
    let scope = join_token_scope(token)?;
    let expected = join_token(secret, &scope);
    bool::from(token.as_bytes().ct_eq(expected.as_bytes())).then_some(scope)
}

/// A node that is not a member, calling with its own key or a join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreClient {
    pub node: String,
    /// For a node that joined with a token: the services the token names
    /// (it is not in the topology). None for a node of the topology.
    pub scope: Option<Vec<String>>,
}

/// Who is calling, as the credential check established it; handlers find
/// it in the request's extensions.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A member (or a tool holding the cluster secret): every call.
    Peer,
    /// A store client: reads, writes and migrations, each as the cluster's
    /// `ClientPolicy` allows it.
    Client(StoreClient),
}

/// What the db members know of each store client: its expected key.
pub type ClientKeys = Arc<std::sync::RwLock<HashMap<String, String>>>;

/// How this process proves who it is to the members' peer listeners.
#[derive(Clone)]
pub enum Auth {
    /// `tls: off`: the credential header (a member's, derived from the
    /// cluster secret, or a store client's key or join token, with its
    /// node name).
    Plain {
        credential: Arc<str>,
        node: Option<Arc<str>>,
    },
    /// Mutual TLS: the certificate is the proof.
    Tls(crate::tls::peer::PeerTls),
}

/// Who called, from the certificate its connection presented (checked by
/// the listener's verifier at the handshake): a member is `Peer`, a store
/// client is `Client`, with the scope its certificate names unless the
/// topology knows it.
fn caller_of_certificate(
    certificate: &crate::tls::PeerCertificate,
    domain: &str,
    clients: &ClientKeys,
) -> Option<Caller> {
    use crate::tls::identity::Identity;
    match &certificate.info(domain)?.identity {
        Identity::Member { .. } => Some(Caller::Peer),
        Identity::Client { node, services } => {
            let known = clients
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(node);
            Some(Caller::Client(StoreClient {
                node: node.clone(),
                scope: (!known).then(|| services.clone()),
            }))
        }
        Identity::Envoy { .. } => None,
    }
}

/// Server side: records the caller, as its certificate (`tls`, the trust
/// domain) or its credential header proves it. With TLS, a call without a
/// certificate goes on without a caller: only `Certify` answers it. Without,
/// a wrong credential is refused here.
pub fn check_credential(
    expected: Arc<str>,
    secret: Arc<str>,
    clients: ClientKeys,
    faults: Faults,
    group: super::origin::GroupCell,
    tls: Option<Arc<str>>,
) -> impl Fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone {
    move |mut req: tonic::Request<()>| {
        if faults.isolated() {
            return Err(tonic::Status::unavailable(
                "this node is isolated (fault injection)",
            ));
        }
        if let Some(domain) = &tls {
            let caller = req
                .extensions()
                .get::<crate::tls::PeerCertificate>()
                .and_then(|c| caller_of_certificate(c, domain, &clients));
            if let Some(caller) = caller {
                offer_group(&mut req, &caller, &group)?;
                req.extensions_mut().insert(caller);
            }
            return Ok(req);
        }
        let presented = req
            .metadata()
            .get(CREDENTIAL_HEADER)
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        let caller = match req.metadata().get(CLIENT_HEADER) {
            None => bool::from(presented.ct_eq(expected.as_bytes())).then_some(Caller::Peer),
            Some(node) => {
                let node = node.to_str().unwrap_or_default();
                let clients = clients.read().unwrap_or_else(|p| p.into_inner());
                match clients.get(node) {
                    Some(key) => bool::from(presented.ct_eq(key.as_bytes())).then(|| {
                        Caller::Client(StoreClient {
                            node: node.to_owned(),
                            scope: None,
                        })
                    }),
                    // Not in the topology: a node that joined with a token
                    // (its registry record is its own by its claim, see
                    // the policy).
                    None => verify_join_token(&secret, presented).map(|scope| {
                        Caller::Client(StoreClient {
                            node: node.to_owned(),
                            scope: Some(scope),
                        })
                    }),
                }
            }
        };
        match caller {
            Some(caller) => {
                offer_group(&mut req, &caller, &group)?;
                req.extensions_mut().insert(caller);
                Ok(req)
            }
            None => Err(tonic::Status::unauthenticated(
                "peer credential missing or wrong: the caller belongs to another cluster, or is not in this member's topology and has no valid join token (check cluster.secret, cluster.client_key or cluster.join_token, and the topology)",
            )),
        }
    }
}

/// A member's call names its group: refused if it is another group than
/// this member's, offered to a member that has none yet (see `origin`).
fn offer_group(
    req: &mut tonic::Request<()>,
    caller: &Caller,
    group: &super::origin::GroupCell,
) -> Result<(), tonic::Status> {
    let offered = req
        .metadata()
        .get(GROUP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    match (caller, offered, super::origin::group_of(group)) {
        (Caller::Peer, Some(theirs), Some(mine)) if theirs != *mine => {
            if REFUSED_GROUP.ready() {
                tracing::warn!(group = %mine, caller_group = %theirs, "refused a Raft message from a member of another group");
            }
            Err(group_mismatch(&mine, &theirs))
        }
        (Caller::Peer, Some(theirs), None) => {
            req.extensions_mut().insert(OfferedGroup(theirs));
            Ok(())
        }
        _ => Ok(()),
    }
}

#[derive(Clone)]
pub struct AddCredential {
    credential: Option<MetadataValue<tonic::metadata::Ascii>>,
    client: Option<MetadataValue<tonic::metadata::Ascii>>,
    group: Option<super::origin::GroupCell>,
}

impl tonic::service::Interceptor for AddCredential {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(credential) = &self.credential {
            req.metadata_mut()
                .insert(CREDENTIAL_HEADER, credential.clone());
        }
        if let Some(node) = &self.client {
            req.metadata_mut().insert(CLIENT_HEADER, node.clone());
        }
        if let Some(group) = self.group.as_ref().and_then(super::origin::group_of)
            && let Ok(value) = group.parse()
        {
            req.metadata_mut().insert(GROUP_HEADER, value);
        }
        Ok(req)
    }
}

pub type Client = PeerClient<InterceptedService<Channel, AddCredential>>;

/// A member's client for the peer at `addr`, connecting lazily (and
/// reconnecting); its calls carry this member's group once it has one.
pub fn client(addr: &str, auth: &Auth, group: &super::origin::GroupCell) -> Result<Client, String> {
    client_with(addr, auth, Some(group.clone()), CALL_DEADLINE)
}

/// The client-side deadline of a call (see `client_with`).
const CALL_DEADLINE: Duration = Duration::from_secs(15);

/// How long a membership change may take: adding a learner returns once it
/// has caught up, which includes sending it the whole database.
pub const ADMIN_PATIENCE: Duration = Duration::from_secs(900);

/// A client for `flotilla cluster` operations on the peer at `addr`, whose
/// calls may last `ADMIN_PATIENCE`; with this member's `group` when a
/// member forwards the operation.
pub fn admin_client(
    addr: &str,
    auth: &Auth,
    group: Option<&super::origin::GroupCell>,
) -> Result<Client, String> {
    client_with(addr, auth, group.cloned(), ADMIN_PATIENCE)
}

/// A client for the peer at `addr`, as a store client or a tool holding
/// the cluster secret, as `auth` says.
pub fn client_as(addr: &str, auth: &Auth) -> Result<Client, String> {
    client_with(addr, auth, None, CALL_DEADLINE)
}

fn endpoint(addr: &str, deadline: Duration) -> Result<tonic::transport::Endpoint, String> {
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad peer address {addr}: {e}"))?
            .connect_timeout(Duration::from_millis(500))
            // A deadline on the client side too: `grpc-timeout` alone is only
            // a request to the server, and a stalled connection must not hang
            // a caller forever.
            .timeout(deadline)
            .tcp_nodelay(true)
            // A connection whose packets are dropped (a partition) is closed
            // once a ping (every 500 ms) goes unanswered for 1 s, and the
            // next call opens a new one: otherwise, after the heal, calls
            // waited on the old connection's TCP retransmission backoff (over
            // 2 s seen).
            .http2_keep_alive_interval(Duration::from_millis(500))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true),
    )
}

fn client_with(
    addr: &str,
    auth: &Auth,
    group: Option<super::origin::GroupCell>,
    deadline: Duration,
) -> Result<Client, String> {
    let endpoint = endpoint(addr, deadline)?;
    let (channel, credential, client) = match auth {
        Auth::Plain { credential, node } => (
            endpoint.connect_lazy(),
            Some(
                credential
                    .parse()
                    .map_err(|e| format!("the peer credential is not valid metadata: {e}"))?,
            ),
            node.as_deref()
                .map(str::parse)
                .transpose()
                .map_err(|e| format!("the node name is not valid metadata: {e}"))?,
        ),
        Auth::Tls(tls) => {
            let tls = tls.clone();
            let connector = crate::tls::peer::connector(move || tls.client_config(), None);
            (endpoint.connect_with_connector_lazy(connector), None, None)
        }
    };
    Ok(wrap(
        channel,
        AddCredential {
            credential,
            client,
            group,
        },
    ))
}

fn wrap(channel: Channel, credential: AddCredential) -> Client {
    PeerClient::with_interceptor(channel, credential)
        .max_decoding_message_size(256 * 1024 * 1024)
        .max_encoding_message_size(256 * 1024 * 1024)
}

/// A client for a node's first certificate: TLS that takes any server
/// certificate, recorded in `seen` once connected (see `certify`).
pub async fn first_contact_client(
    addr: &str,
    seen: crate::tls::peer::SeenServer,
) -> Result<Client, String> {
    let connector = crate::tls::peer::connector(crate::tls::peer::first_contact_config, Some(seen));
    let channel = endpoint(addr, CALL_DEADLINE)?
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    Ok(wrap(
        channel,
        AddCredential {
            credential: None,
            client: None,
            group: None,
        },
    ))
}

/// Encodes a message for the wire.
pub fn blob<T: serde::Serialize>(value: &T) -> Blob {
    Blob {
        data: serde_json::to_vec(value).expect("openraft messages always encode"),
        payload: Vec::new(),
    }
}

/// Decodes a message from the wire; bad input is an error, never a panic.
pub fn unblob<T: serde::de::DeserializeOwned>(blob: &Blob) -> Result<T, tonic::Status> {
    serde_json::from_slice(&blob.data)
        .map_err(|e| tonic::Status::invalid_argument(format!("undecodable peer message: {e}")))
}

/// Fault injection for tests of partitions: an isolated node neither sends
/// nor accepts peer traffic. Off unless `cluster.fault_injection` is set.
#[derive(Clone, Default)]
pub struct Faults(Arc<std::sync::atomic::AtomicBool>);

impl Faults {
    pub fn isolated(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn set_isolated(&self, isolated: bool) {
        self.0.store(isolated, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct Network {
    /// This member's Raft id, named in the errors of its calls.
    me: NodeId,
    auth: Auth,
    faults: Faults,
    group: super::origin::GroupCell,
    books: Books,
    names: Arc<BTreeMap<NodeId, String>>,
}

/// What this member's Raft calls record and consult, shared with the rest
/// of the cluster.
pub struct Books {
    /// Where the leader's calls to each follower are recorded, by the
    /// member's name (`names`; a member not named there is not recorded).
    pub sessions: Arc<Sessions>,
    /// Where every answer to this member's calls is recorded, by id.
    pub contacts: Arc<Contacts>,
    /// What holds back the commit index told to followers (see `durable`).
    pub durable: Arc<Durable>,
}

impl Network {
    pub fn new(
        me: NodeId,
        auth: Auth,
        faults: Faults,
        group: super::origin::GroupCell,
        books: Books,
        names: BTreeMap<NodeId, String>,
    ) -> Network {
        Network {
            me,
            auth,
            faults,
            group,
            books,
            names: Arc::new(names),
        }
    }
}

pub struct Connection {
    me: NodeId,
    target: NodeId,
    faults: Faults,
    client: Result<Client, String>,
    /// The target's name and where its silences go (see `sessions`).
    session: Option<(String, Arc<Sessions>)>,
    contacts: Arc<Contacts>,
    durable: Arc<Durable>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    /// Called as this member starts leading (replication to `target`), and
    /// to vote: a silence recorded by an earlier term is forgotten.
    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        let session = self.names.get(&target).map(|name| {
            self.books.sessions.heard(name);
            (name.clone(), self.books.sessions.clone())
        });
        Connection {
            me: self.me,
            target,
            faults: self.faults.clone(),
            client: client(&node.addr, &self.auth, &self.group),
            session,
            contacts: self.books.contacts.clone(),
            durable: self.books.durable.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Connection {
    async fn call<Resp, E>(
        &mut self,
        method: RPCTypes,
        request: Blob,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        Resp: serde::de::DeserializeOwned,
        E: std::error::Error + serde::de::DeserializeOwned,
    {
        if self.faults.isolated() {
            return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                "this node is isolated (fault injection)".into(),
            ))));
        }
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                return Err(RPCError::Unreachable(Unreachable::new(&TransportError(
                    e.clone(),
                ))));
            }
        };
        let mut client = client;
        let mut req = tonic::Request::new(request);
        req.set_timeout(option.hard_ttl());
        let call = async {
            match method {
                RPCTypes::AppendEntries => client.append_entries(req).await,
                RPCTypes::Vote => client.vote(req).await,
                RPCTypes::InstallSnapshot => client.install_snapshot(req).await,
            }
        };
        let result = tokio::time::timeout(option.hard_ttl(), call)
            .await
            .unwrap_or_else(|_| {
                Err(tonic::Status::deadline_exceeded(
                    "no answer within the RPC deadline",
                ))
            });
        // An answer (any: a refusal is an answer) means the peer is there;
        // none is unreachable, or not in time.
        let answered = !matches!(&result, Err(status) if matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ));
        if answered {
            self.contacts.heard(self.target);
        }
        // The leader's calls are its sessions with the followers: an
        // answer puts the follower in touch, none starts its silence.
        if let (RPCTypes::AppendEntries, Some((name, sessions))) = (method, &self.session) {
            if answered {
                sessions.heard(name)
            } else {
                sessions.silent(name, crate::store::now_ms(), true)
            }
        }
        let reply = result.map_err(|status| {
            if status.code() == tonic::Code::FailedPrecondition && REFUSED_GROUP.ready() {
                tracing::warn!(peer = self.target, "{}", status.message());
            }
            failed(method, self.me, self.target, option.hard_ttl(), &status)
        })?;
        let decoded: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().data).map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError(format!(
                    "undecodable reply: {e}"
                ))))
            })?;
        decoded.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// What openraft is told when a call to `target` ends in `status`.
///
/// No answer in time (our deadline, or the peer's server enforcing the one
/// we sent) is a `Timeout`: the peer may just be slow, and openraft retries
/// at once. Only a peer that cannot be reached is `Unreachable`, which makes
/// openraft back off (500 ms) until a call succeeds: given to slow answers,
/// that kept a learner catching up on a loaded machine from ever
/// succeeding, every try timing out and the next coming half a second
/// later.
fn failed<E: std::error::Error>(
    method: RPCTypes,
    me: NodeId,
    target: NodeId,
    ttl: Duration,
    status: &tonic::Status,
) -> RPCError<NodeId, BasicNode, RaftError<NodeId, E>> {
    let e = TransportError(format!("peer {target}: {status}"));
    match status.code() {
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RPCError::Timeout(Timeout {
            action: method,
            id: me,
            target,
            timeout: ttl,
        }),
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(&e)),
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

/// AppendEntries with more entries than this are probed first (see
/// `Connection::append_entries`). A leader's steady replication sends a few
/// entries at a time and is not probed; a follower catching up pays one
/// round trip more per batch.
const PROBE_ABOVE: usize = 32;

impl RaftNetwork<TypeConfig> for Connection {
    /// A request of many entries is first sent without them, as a probe of
    /// its last entry: a follower that holds that entry holds all before it
    /// (Raft's log matching), so it needs none of them. If it does not, the
    /// last entry of the term before is probed, and only the entries after
    /// it are sent if the follower holds it. openraft 0.9 starts each
    /// follower's replication at the middle of the log with up to 300
    /// entries, as a new leader does after every election: a follower that
    /// was up to date was sent half the log again, megabytes when entries
    /// carry many writes, before the new leader could commit anything.
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.durable.hold_back(&mut rpc);
        if rpc.entries.len() > PROBE_ABOVE {
            let last = rpc.entries.len() - 1;
            let last_term = rpc.entries[last].log_id.leader_id;
            let earlier = rpc
                .entries
                .iter()
                .rposition(|e| e.log_id.leader_id != last_term);
            for held in std::iter::once(last).chain(earlier) {
                let probe: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
                    vote: rpc.vote,
                    prev_log_id: Some(rpc.entries[held].log_id),
                    entries: rpc.entries.split_off(held + 1),
                    leader_commit: rpc.leader_commit,
                };
                let answer = self
                    .call::<_, openraft::error::Infallible>(
                        RPCTypes::AppendEntries,
                        blob(&probe),
                        &option,
                    )
                    .await;
                rpc.entries.extend(probe.entries);
                let answer = answer?;
                tracing::debug!(
                    peer = self.target,
                    entries = rpc.entries.len(),
                    sent = rpc.entries.len() - held - 1,
                    held = matches!(answer, AppendEntriesResponse::Success),
                    "AppendEntries probed with an entry of its own"
                );
                match answer {
                    // The follower held every entry up to the probed one
                    // and took the rest: it holds the whole request.
                    AppendEntriesResponse::Success => return Ok(AppendEntriesResponse::Success),
                    AppendEntriesResponse::HigherVote(vote) => {
                        return Ok(AppendEntriesResponse::HigherVote(vote));
                    }
                    AppendEntriesResponse::Conflict | AppendEntriesResponse::PartialSuccess(_) => {}
                }
            }
        }
        self.call(RPCTypes::AppendEntries, blob(&rpc), &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        let mut rpc = rpc;
        let payload = std::mem::take(&mut rpc.data);
        let request = Blob {
            payload,
            ..blob(&rpc)
        };
        self.call(RPCTypes::InstallSnapshot, request, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RPCTypes::Vote, blob(&rpc), &option).await
    }
}

/// Whether a call failed because no connection could be made to the peer
/// (nothing listens there, or nothing answers the connection): the request
/// was not sent.
pub(super) fn is_unreachable(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable
        && status.message().to_ascii_lowercase().contains("connect")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(status: tonic::Status) -> RPCError<NodeId, BasicNode, RaftError<NodeId>> {
        failed(
            RPCTypes::AppendEntries,
            1,
            2,
            Duration::from_millis(50),
            &status,
        )
    }

    #[test]
    fn a_slow_answer_is_a_timeout_retried_at_once_not_an_unreachable_peer() {
        for status in [
            tonic::Status::deadline_exceeded("no answer within the RPC deadline"),
            tonic::Status::cancelled("Timeout expired"),
        ] {
            match outcome(status) {
                RPCError::Timeout(t) => {
                    assert_eq!((t.id, t.target), (1, 2));
                    assert_eq!(t.action, RPCTypes::AppendEntries);
                    assert_eq!(t.timeout, Duration::from_millis(50));
                }
                other => panic!("expected a timeout, got {other:?}"),
            }
        }
    }

    #[test]
    fn an_unreachable_peer_backs_off_and_other_failures_are_network_errors() {
        let unreachable = outcome(tonic::Status::unavailable("tcp connect error"));
        assert!(
            matches!(unreachable, RPCError::Unreachable(_)),
            "{unreachable:?}"
        );
        let refused = outcome(tonic::Status::failed_precondition("another group"));
        match refused {
            RPCError::Network(e) => assert!(e.to_string().contains("peer 2"), "{e}"),
            other => panic!("expected a network error, got {other:?}"),
        }
    }
}
