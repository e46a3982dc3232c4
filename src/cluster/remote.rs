//! A store client's replicator: a node without the `db` role sends every
//! write and read to the members over their peer listeners (last known
//! leader first, following leader hints), and `flotilla cluster …`
//! operations go the same way.

use super::{sessions::SESSION_RENEWED, *};

/// A replicator that sends writes and reads to the running members over
/// the peer listener, so they go through Raft like any other:
/// - on a node without the `db` role, its store (a client of the members'
///   database, within its namespaces);
/// - for administrative commands run outside a node (`accounts
///   create-admin`, `auth rotate-keys`) with a member's config.
pub fn remote_replicator(settings: &ClusterSettings) -> Arc<dyn Replicator> {
    Arc::new(Remote(Arc::new(RemoteInner::new(settings))))
}

/// Whether any member's peer listener takes a connection within `within`.
/// When none does, the cluster is down (or not started), and a command run
/// outside a node says so at once instead of waiting out its retries.
pub async fn any_member_listening(settings: &ClusterSettings, within: Duration) -> bool {
    let tries = settings.members.iter().map(|m| async move {
        matches!(
            tokio::time::timeout(within, tokio::net::TcpStream::connect(m.peer.as_str())).await,
            Ok(Ok(_))
        )
    });
    futures_util::future::join_all(tries)
        .await
        .into_iter()
        .any(|up| up)
}

/// The members of `settings`, as an operator reads them: `name (peer)`.
pub fn members_named(settings: &ClusterSettings) -> String {
    settings
        .members
        .iter()
        .map(|m| format!("{} ({})", m.name, m.peer))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A store client's link to the members: the replicator its store writes
/// and reads through, the certificate a member issued to it, and the
/// registry it follows. Cheap to clone.
#[derive(Clone)]
pub struct StoreClientLink(Arc<RemoteInner>);

impl StoreClientLink {
    pub fn new(settings: &ClusterSettings) -> StoreClientLink {
        StoreClientLink(Arc::new(RemoteInner::new(settings)))
    }

    pub fn replicator(&self) -> Arc<dyn Replicator> {
        Arc::new(Remote(self.0.clone()))
    }

    /// The registry as a member sees it (`WatchRegistry`), encoded: once
    /// at once, then at each change, from one member at a time (the last
    /// that answered first; the next when a stream breaks or cannot open,
    /// after `FOLLOW_RETRY`). `token` is what the sessions are opened with
    /// (this node's registry claim, or empty). Ends when the receiver is
    /// dropped.
    pub fn follow_registry(&self, token: &str) -> tokio::sync::mpsc::Receiver<Followed> {
        let inner = self.0.clone();
        let token = token.as_bytes().to_vec();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use std::sync::atomic::Ordering;
            let mut turn = 0usize;
            while !tx.is_closed() {
                let hint = inner.leader.load(Ordering::Relaxed);
                let mut order: Vec<&Member> = inner.members.iter().collect();
                order.sort_by_key(|m| m.id != hint);
                let Some(member) = order.get(turn % order.len().max(1)).copied() else {
                    return;
                };
                turn += 1;
                let opened = match inner.client(member).await {
                    Ok(mut client) => client
                        .watch_registry(tonic::Request::new(Blob {
                            data: token.clone(),
                            payload: Vec::new(),
                        }))
                        .await
                        .map_err(|s| s.to_string()),
                    Err(e) => Err(e),
                };
                match opened {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        turn = 0;
                        let mut opened = true;
                        let ended = loop {
                            let next = tokio::select! {
                                _ = tx.closed() => return,
                                next = stream.message() => next,
                            };
                            match next {
                                Ok(Some(blob)) => {
                                    let followed = if std::mem::take(&mut opened) {
                                        Followed::Opened {
                                            renewed: blob.payload == SESSION_RENEWED,
                                            registry: blob.data,
                                        }
                                    } else {
                                        Followed::Changed(blob.data)
                                    };
                                    if tx.send(followed).await.is_err() {
                                        return;
                                    }
                                }
                                Ok(None) => break !opened,
                                Err(e) => {
                                    tracing::debug!(member = %member.name, error = %e, "registry stream broke");
                                    break !opened;
                                }
                            }
                        };
                        if ended && tx.send(Followed::Broken).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(member = %member.name, error = %e, "cannot follow this member's registry")
                    }
                }
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tokio::time::sleep(FOLLOW_RETRY) => {}
                }
            }
        });
        rx
    }

    /// This node's TLS between nodes (`None` with `tls: off`): the
    /// certificate a member issued, asked for now if no call has yet.
    pub async fn node_tls(&self) -> Result<Option<crate::tls::peer::PeerTls>, String> {
        match self.0.auth().await? {
            network::Auth::Tls(tls) => Ok(Some(tls)),
            network::Auth::Plain { .. } => Ok(None),
        }
    }
}

/// What following a member's registry brings
/// (`StoreClientLink::follow_registry`). A stream is the store client's
/// session with that member (`cluster::sessions`).
pub enum Followed {
    /// A session opened: the registry as the member sees it, encoded
    /// (`Registry::encode`), and whether the member renews this node's
    /// record while the session lasts (an earlier version does not: the
    /// node renews it itself then).
    Opened { registry: Vec<u8>, renewed: bool },
    /// The registry changed.
    Changed(Vec<u8>),
    /// The session ended (the member stopped, or the connection broke);
    /// the next member is tried.
    Broken,
}

/// How long a store client waits before following another member's
/// registry when a stream broke or could not open.
const FOLLOW_RETRY: Duration = Duration::from_millis(200);

pub(super) struct Remote(Arc<RemoteInner>);

pub(super) struct RemoteInner {
    members: Vec<Member>,
    auth: Proof,
    /// One client (one HTTP/2 connection) per member, shared by calls.
    clients: std::sync::Mutex<BTreeMap<u64, network::Client>>,
    /// The member that answered last (0: none yet): tried first.
    leader: std::sync::atomic::AtomicU64,
}

/// How a remote caller proves who it is.
enum Proof {
    /// Known at once: the credential (`tls: off`), or a certificate a tool
    /// with a member's config issued itself.
    Ready(Result<network::Auth, String>),
    /// A store client's certificate, asked of a member at the first call
    /// and renewed from then on.
    Certified {
        asking: super::certify::Asking,
        tls: tokio::sync::OnceCell<crate::tls::peer::PeerTls>,
    },
}

impl RemoteInner {
    pub(super) fn new(settings: &ClusterSettings) -> RemoteInner {
        use crate::tls::peer::{PeerTls, PeerTlsMode};
        let auth = match (&settings.tls, &settings.role) {
            (PeerTlsMode::Off, Role::Voter { secret, .. }) => {
                Proof::Ready(Ok(network::Auth::Plain {
                    credential: network::credential(secret).into(),
                    node: None,
                }))
            }
            (PeerTlsMode::Off, Role::Client { node, key }) => {
                Proof::Ready(Ok(network::Auth::Plain {
                    credential: key.as_str().into(),
                    node: Some(node.as_str().into()),
                }))
            }
            (PeerTlsMode::On(on), Role::Voter { secret, .. }) => {
                Proof::Ready(PeerTls::of_member(on, secret, &settings.node).map(network::Auth::Tls))
            }
            (PeerTlsMode::On(on), Role::Client { node, key }) => Proof::Certified {
                asking: super::certify::Asking {
                    members: settings.members.clone(),
                    node: node.clone(),
                    runs: settings.runs.clone(),
                    key: key.clone(),
                    domain: on.domain.clone(),
                },
                tls: tokio::sync::OnceCell::new(),
            },
        };
        RemoteInner {
            members: settings.members.clone(),
            auth,
            clients: std::sync::Mutex::default(),
            leader: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// How this node calls the members: for a store client with TLS, once
    /// a member has issued its certificate (which is kept renewed).
    async fn auth(&self) -> Result<network::Auth, String> {
        match &self.auth {
            Proof::Ready(auth) => auth.clone(),
            Proof::Certified { asking, tls } => {
                let tls = tls
                    .get_or_try_init(|| async {
                        let tls = asking.first().await?;
                        tokio::spawn(asking.clone().renew(tls.clone()));
                        Ok::<_, String>(tls)
                    })
                    .await?;
                Ok(network::Auth::Tls(tls.clone()))
            }
        }
    }

    pub(super) async fn client(&self, member: &Member) -> Result<network::Client, String> {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&member.id)
        {
            return Ok(c.clone());
        }
        let client = network::client_as(&member.peer.to_string(), &self.auth().await?)?;
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(member.id, client.clone());
        Ok(client)
    }

    /// Calls `method` on the members, the last known leader first,
    /// following leader hints, until one answers with a result or
    /// `LEADER_WAIT` passes (`ADMIN_PATIENCE` for membership changes, which
    /// wait for a learner to catch up).
    /// `namespace`: the one the call acts on, for a refusal's error.
    pub(super) async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        namespace: &str,
        payload: Blob,
    ) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        let wait = if method == "admin" {
            network::ADMIN_PATIENCE
        } else {
            PROPOSAL_WAIT + Duration::from_secs(1)
        };
        let deadline = Instant::now() + if method == "admin" { wait } else { LEADER_WAIT };
        let mut last_error = String::from("no member answered");
        // A write that reached a member and got no outcome may still
        // commit (its request id makes a retry apply it once).
        let mut unknown: Option<String> = None;
        // Rounds in a row in which no member accepted a connection.
        let mut rounds_unreachable = 0;
        loop {
            let hint = self.leader.load(Ordering::Relaxed);
            let mut order: Vec<&Member> = self.members.iter().collect();
            order.sort_by_key(|m| m.id != hint);
            // A refusal is final only if every member refuses: during a
            // rolling restart some may not know this node yet.
            let mut refusals = Vec::new();
            let mut unreachable = Vec::new();
            let asked = order.len();
            for member in order {
                let client = if method == "admin" {
                    match self.auth().await {
                        Ok(auth) => network::admin_client(&member.peer.to_string(), &auth, None),
                        Err(e) => Err(e),
                    }
                } else {
                    self.client(member).await
                };
                let mut client = match client {
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
                        Ok(PeerReply::Refused(Refusal::Unknown(why))) => {
                            last_error = format!("{}: {why}", member.name);
                            unknown = Some(last_error.clone());
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
                    Err(status) if network::is_unreachable(&status) => {
                        unreachable.push(format!("{} ({})", member.name, member.peer));
                    }
                    Err(status) => {
                        last_error = format!("{}: {}", member.name, status.message());
                        if method == "write" {
                            unknown = Some(last_error.clone());
                        }
                    }
                }
            }
            rounds_unreachable = if unreachable.len() == asked {
                rounds_unreachable + 1
            } else {
                0
            };
            let give_up = |why: String| match &unknown {
                Some(sent) => StoreError::OutcomeUnknown(format!(
                    "the write reached a member and its outcome is unknown ({sent}); then {why}"
                )),
                None => unavailable(why),
            };
            if rounds_unreachable >= GONE_ROUNDS {
                return Err(give_up(format!(
                    "no cluster member accepts connections ({}): the db members are not running; start them",
                    unreachable.join(", ")
                )));
            }
            if refusals.len() == asked
                && let Some(refusal) = refusals.pop()
            {
                return Err(refusal);
            }
            if Instant::now() >= deadline {
                return Err(give_up(format!(
                    "no cluster member accepted the request: {last_error}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A store client gives up after this many rounds in a row in which every
/// member refused the connection (about 150 ms): nothing listens, so
/// waiting out `LEADER_WAIT` would only delay the answer, and a node that
/// stops would wait for its deregistration in vain. A member that is slow
/// or restarting still gets the whole wait.
const GONE_ROUNDS: u32 = 3;

/// Runs a `flotilla cluster` operation against the running members: status
/// from every reachable member, changes on the leader.
pub async fn remote_admin(
    settings: &ClusterSettings,
    op: AdminOp,
) -> Result<serde_json::Value, String> {
    let Role::Voter { .. } = &settings.role else {
        return Err(
            "this config is a store client's: run `flotilla cluster` with a db member's config"
                .into(),
        );
    };
    let remote = RemoteInner::new(settings);
    if matches!(op, AdminOp::Status) {
        let auth = remote.auth().await?;
        let mut members = Vec::new();
        for m in &settings.members {
            let status = match network::client_as(&m.peer.to_string(), &auth) {
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
    let result: Result<serde_json::Value, String> = remote
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
            // The whole call's deadline, and the last attempt's wait.
            let patience = LEADER_WAIT + PROPOSAL_WAIT + Duration::from_secs(1);
            let payload = network::blob(&ClientWrite {
                request_id: request_id(),
                command,
                deadline_ms: now_ms() + patience.as_millis() as i64,
            });
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
