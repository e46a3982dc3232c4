//! A node's life, as types: [`Node::open`], [`Node::start`], and
//! [`Running::shutdown`]; [`run`] strings them together until SIGTERM or
//! SIGINT.
//!
//! Order matters and is the contract with operators:
//! 1. the config was validated before this module is entered;
//! 2. `open`: the database (and a member's Raft log) is opened, created if
//!    needed, and checked, so a damaged file stops the node before it binds
//!    anything; then every listener is bound, so a port in use fails the
//!    start at once, before anything serves;
//! 3. `start`: in a cluster, Raft starts and the peer listener serves; the
//!    admin listener serves (`/readyz` is 503); authentication, each
//!    selected service (its migrations, then its handlers) and the registry
//!    start; the xDS server serves; last the public listener serves and
//!    `/readyz` turns 200. A cluster member started before a majority of the
//!    others waits for them (`/readyz` says what it waits for);
//! 4. `shutdown`, on SIGTERM or SIGINT: `/readyz` turns 503, the node leaves
//!    the registry and keeps serving a moment so that routers stop sending
//!    to it, the public listener stops accepting, a leader hands its
//!    leadership over, in-flight requests finish (within
//!    `limits.shutdown_grace_ms`), Raft stops, and the other listeners
//!    close. The process exits 0.

mod grow;
pub use grow::CONTROL_TOKEN_FILE;
mod policy;
mod services;
mod start;
mod systemd;

use std::{sync::Arc, time::Duration};

use tokio::task::JoinHandle;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    catalogue::Services,
    cluster::{Cluster, ClusterSlot},
    config::Config,
    edge::{admin::Readiness, server},
    mesh::registry::Registry,
    store::{Durability, Namespace, Store, StoreConfig, StoreError},
    telemetry::metrics::Metrics,
};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error("service `{service}` could not migrate its namespace: {source}")]
    Migrate {
        service: &'static str,
        source: StoreError,
    },
    #[error(transparent)]
    Start(#[from] crate::catalogue::StartError),
    #[error("cannot start authentication: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot record this node in the registry: {0}")]
    Registry(StoreError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("the public listener's TLS certificates do not load: {0}")]
    PublicTls(String),
    #[error("the public listener's ingress cannot be built: {0}")]
    Ingress(String),
    #[error("cannot get this node's certificate from the db members: {0}")]
    NodeTls(String),
    /// Told to stop (SIGTERM or SIGINT) before it was ready: not a failure.
    #[error("stopped by {0} before the node was ready")]
    Stopped(&'static str),
}

/// Readers per node: enough for two cores, without idle connections.
const READERS: usize = 4;

/// How long a node that left the registry keeps listening, so that the
/// others' registry copies (told of the change at once) and the Envoys fed
/// from them stop sending to it first.
pub(super) const DEREGISTRATION_DRAIN: Duration = Duration::from_millis(1500);

/// Runs the node until SIGTERM or SIGINT.
pub async fn run(config: Config, catalogue: Services) -> Result<(), NodeError> {
    let mut signals = Signals::install()?;
    let node = Node::open(config, catalogue).await?;
    let running = match node.start(&mut signals).await {
        Ok(running) => running,
        Err(NodeError::Stopped(signal)) => {
            tracing::info!(signal, "stopped before the node was ready");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let systemd = systemd::Notifier::from_env();
    let notifying = systemd
        .clone()
        .map(|n| tokio::spawn(n.follow(running.readiness.clone())));
    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down: draining in-flight requests");
    if let Some(n) = &systemd {
        n.stopping(signal);
    }
    running.shutdown().await;
    if let Some(task) = notifying {
        task.abort();
    }
    Ok(())
}

/// A node whose database is open and whose listeners are bound; nothing
/// serves yet.
pub struct Node {
    config: Config,
    catalogue: Services,
    metrics: Metrics,
    store: Store,
    /// A Raft member's log, opened and checked with the database.
    raft_log: Option<crate::cluster::origin::OpenedLog>,
    listeners: Listeners,
    /// The token of the admin listener's control operations (see
    /// `grow::write_control_token`).
    control_token: Arc<str>,
}

struct Listeners {
    admin: tokio::net::TcpListener,
    public: tokio::net::TcpListener,
    xds: Option<tokio::net::TcpListener>,
    peer: Option<tokio::net::TcpListener>,
}

impl Node {
    /// Opens the database and binds every listener.
    pub async fn open(config: Config, catalogue: Services) -> Result<Node, NodeError> {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            node = %config.node_id,
            services = ?config.services,
            "starting flotilla"
        );
        if let Some(c) = &config.cluster {
            match &c.tls {
                crate::tls::peer::PeerTlsMode::Off => tracing::warn!(
                    "cluster.tls is off: Raft, store calls and forwarded requests between nodes travel in plaintext, and nodes prove who they are with keys derived from the cluster secret; remove `tls: off` for mutual TLS"
                ),
                crate::tls::peer::PeerTlsMode::On(on) => {
                    tracing::info!(domain = %on.domain, lifetime_s = on.lifetime.as_secs(), "mutual TLS between nodes")
                }
            }
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
            path: config.data_dir.display().to_string(),
            source,
        })?;
        let metrics = Metrics::new();
        let store = Store::open(
            &StoreConfig {
                data_dir: config.data_dir.clone(),
                readers: READERS,
                // A Raft member's database is replayed from its log; a store
                // client's holds nothing (it works on the members' database).
                durability: if config.cluster.is_some() && config.db_role {
                    Durability::ReplayedFromLog
                } else {
                    Durability::Full
                },
            },
            metrics.store.clone(),
        )?;
        let raft_log = match &config.cluster {
            Some(_) if config.db_role => {
                Some(Cluster::open_log(&config.data_dir, &store, &config.source_name).await?)
            }
            _ => {
                crate::cluster::origin::refusal_for_non_member(
                    &config.data_dir,
                    &config.source_name,
                )
                .map_err(crate::cluster::ClusterError::Foreign)?;
                None
            }
        };
        let control_token =
            grow::write_control_token(&config.data_dir).map_err(|source| NodeError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            })?;
        let listeners = Listeners {
            admin: server::bind("admin", config.listeners.admin).await?,
            public: server::bind("public", config.listeners.public).await?,
            xds: match config.listeners.xds {
                Some(addr) => Some(server::bind("xds", addr).await?),
                None => None,
            },
            peer: match config.listeners.peer {
                Some(addr) => Some(server::bind("peer", addr).await?),
                None => None,
            },
        };
        Ok(Node {
            config,
            catalogue,
            metrics,
            store,
            raft_log,
            listeners,
            control_token,
        })
    }
}

/// A server task: how to stop it, and its end (whether the requests in
/// flight finished within the grace period).
struct Serving {
    stop: CancellationToken,
    done: JoinHandle<bool>,
}

impl Serving {
    fn spawn(stop: CancellationToken, task: impl Future<Output = bool> + Send + 'static) -> Self {
        Serving {
            stop,
            done: tokio::spawn(task),
        }
    }

    /// Stops accepting; the requests in flight go on.
    fn stop_accepting(&self) {
        self.stop.cancel();
    }

    /// Stops it and waits for it to end: whether in-flight requests
    /// finished in time.
    async fn stop(self) -> bool {
        self.stop.cancel();
        self.done.await.unwrap_or(false)
    }
}

/// A node that serves, with what its shutdown needs.
pub struct Running {
    config: Config,
    store: Store,
    cluster: ClusterSlot,
    registry: Registry,
    registry_store: Namespace,
    readiness: Arc<Readiness>,
    /// Key-ring maintenance and the registry's refresh.
    background: TaskTracker,
    background_stop: CancellationToken,
    public: Serving,
    admin: Serving,
    xds: Option<Serving>,
    /// Set at start for a member, or when a single node forms a group.
    peer: Arc<std::sync::Mutex<Option<Serving>>>,
}

impl Running {
    /// The graceful stop, in the order the module documentation gives.
    pub async fn shutdown(self) {
        self.readiness.start_draining();
        self.background_stop.cancel();
        self.background.close();
        self.background.wait().await;
        // Deregister first: routers that learn the registry (other nodes,
        // Envoys fed by xDS) stop sending here while this node still
        // listens.
        let cluster = self.cluster.get();
        let replicated = self.config.cluster.is_some() || cluster.is_some();
        let deregistered = tokio::time::timeout(
            Duration::from_secs(3),
            self.registry.deregister(&self.registry_store),
        )
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the cluster did not answer within 3 s".into(),
            ))
        });
        match deregistered {
            Ok(()) if replicated => tokio::time::sleep(DEREGISTRATION_DRAIN).await,
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, "could not mark this node unhealthy in the registry")
            }
        }
        // No new connections from here on; requests in flight finish.
        self.public.stop_accepting();
        if let Some(c) = &cluster {
            // Hand leadership over before the last requests finish, so
            // writes in flight here are forwarded to a leader that stays.
            c.transfer_leadership().await;
        }
        if !self.public.stop().await {
            tracing::warn!(
                grace_ms = self.config.limits.shutdown_grace.as_millis() as u64,
                "some requests did not finish within the shutdown grace period and were cut off"
            );
        }
        if let Some(c) = &cluster {
            c.shutdown().await;
        }
        // Applied entries still waiting for a shared commit are written now,
        // so the database file is current (openraft may still apply a last
        // entry after this; a restart applies it again from the log).
        if let Err(e) = self.store.flush().await {
            tracing::warn!(error = %e, "the last applied entries were not committed; the next start applies them again from the Raft log");
        }
        let peer = self.peer.lock().unwrap_or_else(|p| p.into_inner()).take();
        for other in [self.xds, peer].into_iter().flatten() {
            other.stop().await;
        }
        self.admin.stop().await;
        tracing::info!("stopped");
    }
}

/// Where a node's copy of the registry comes from.
pub(super) enum RegistrySource {
    /// A db member: its own copy of the store, read again when entries
    /// applied there change the registry, and published to the store
    /// clients that follow it.
    Member(crate::cluster::ClusterSlot),
    /// A store client: a member's registry, followed (`WatchRegistry`).
    Client(crate::cluster::StoreClientLink),
}

/// A store client's heartbeat this late was paused (see `refresh_registry`).
const LATE_BEAT: Duration = Duration::from_millis(250);
/// How long such a beat waits for the registry stream's news.
const LATE_BEAT_DELAY: Duration = Duration::from_millis(50);
/// A member whose heartbeat has not committed for this long suspends its
/// sessions (`cluster::sessions`): it cannot keep its store clients'
/// records alive (it is cut off from the leader, or there is none), so
/// they follow another member, and have a second of their TTL left to
/// write their records through it.
const RENEW_LIMIT: Duration = Duration::from_secs(2);

/// Keeps this node's copy of the registry current, and its record alive:
///
/// - a member writes its own record every `registry::HEARTBEAT`, with the
///   renewal of the records of the store clients in session with it (one
///   write a second per member, however many nodes there are);
/// - a store client writes its record when a session opens and when the
///   member it follows sees the record otherwise (a mark, its TTL), and
///   otherwise leaves it to the member (a member of an earlier version
///   does not renew it: the client then writes it every heartbeat).
///
/// Nothing is read on a timer but when a record's TTL runs out (a
/// member), or after a failed read.
async fn refresh_registry(
    registry: Registry,
    store: Namespace,
    source: RegistrySource,
    stop: CancellationToken,
) {
    use crate::cluster::Followed;
    use crate::mesh::registry::{COALESCE, HEARTBEAT, RETRY};
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes = store.changes();
    let mut feed = match &source {
        RegistrySource::Client(link) => Some(link.follow_registry(registry.claim())),
        RegistrySource::Member(_) => None,
    };
    // Whether this node is in session with the members: a member always;
    // a store client while it follows one's registry.
    let mut session = feed.is_none();
    // A store client: whether the member it follows renews its record,
    // and whether the record is to be written all the same.
    let mut renewed_by_member = false;
    let mut write_due = true;
    // A member: when its heartbeat last committed.
    let mut renewed_at = tokio::time::Instant::now();
    // When a member reads its copy next: at once, then on changes, when a
    // record's TTL runs out, or after a failed read.
    let mut read_at = Some(tokio::time::Instant::now());
    // What the member sees changed since it last published (a read after a
    // heartbeat usually changes nothing, and then nothing is encoded).
    let mut seen = registry.subscribe();
    seen.mark_changed();
    loop {
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = stop.cancelled() => return,
            due = heartbeat.tick() => {
                // A store client's record lives by its session with a
                // member: without one, it is not written (a member that
                // saw the session break may be about to mark it), and it
                // is written at once when one opens.
                if !session {
                    tracing::debug!("registry heartbeat waits for a session with a member");
                    continue;
                }
                if feed.is_some() && renewed_by_member && !write_due {
                    continue;
                }
                // A beat this late means this process was paused (or
                // starved): its session may have been closed meanwhile,
                // which the stream says at its next read. That goes first:
                // the beat comes a moment later.
                if feed.is_some() && due.elapsed() >= LATE_BEAT {
                    heartbeat.reset_after(LATE_BEAT_DELAY);
                    continue;
                }
                let cluster = match &source {
                    RegistrySource::Member(slot) => slot.get(),
                    RegistrySource::Client(_) => None,
                };
                let beat = async {
                    match &cluster {
                        Some(c) => registry.renew(&store, c.in_session()).await,
                        None => registry.heartbeat(&store).await,
                    }
                };
                let beat = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = tokio::time::timeout(HEARTBEAT, beat) => r.unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(format!(
                            "not committed within {} ms",
                            HEARTBEAT.as_millis()
                        )))
                    }),
                };
                match beat {
                    Ok(()) => {
                        write_due = false;
                        renewed_at = tokio::time::Instant::now();
                        if let Some(c) = &cluster {
                            c.resume_sessions();
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "registry heartbeat skipped");
                        if let Some(c) = &cluster
                            && renewed_at.elapsed() >= RENEW_LIMIT
                        {
                            c.suspend_sessions(&format!(
                                "its heartbeat has not committed for {} ms: {e}",
                                renewed_at.elapsed().as_millis()
                            ));
                        }
                    }
                }
                continue;
            }
            followed = async { feed.as_mut()?.recv().await }, if feed.is_some() => {
                let encoded = match followed {
                    // A new session (another member, or the same one
                    // again): renewed at once, so that no member takes the
                    // broken one for a crash (`watch_sessions`).
                    Some(Followed::Opened { registry: encoded, renewed }) => {
                        session = true;
                        renewed_by_member = renewed;
                        write_due = true;
                        heartbeat.reset_immediately();
                        encoded
                    }
                    Some(Followed::Changed(encoded)) => encoded,
                    Some(Followed::Broken) => {
                        session = false;
                        continue;
                    }
                    None => return,
                };
                match registry.adopt_encoded(&encoded) {
                    // The member sees this node's record otherwise: it is
                    // written again at the next beat.
                    Ok(stale) => write_due |= stale,
                    Err(e) => tracing::warn!(error = %e, "a member's registry was not taken"),
                }
                continue;
            }
            changed = changes.changed(), if feed.is_none() => {
                if changed.is_err() {
                    return;
                }
                // Changes applied within a few milliseconds are read once.
                tokio::time::sleep(COALESCE).await;
                changes.borrow_and_update();
            }
            _ = tokio::time::sleep_until(read_at.unwrap_or(far)), if feed.is_none() => {}
        }
        let read = tokio::select! {
            _ = stop.cancelled() => return,
            r = registry.refresh(&store) => r,
        };
        read_at = match read {
            Ok(expiry) => expiry.map(|d| tokio::time::Instant::now() + d),
            Err(e) => {
                tracing::debug!(error = %e, "registry refresh skipped");
                Some(tokio::time::Instant::now() + RETRY)
            }
        };
        if let RegistrySource::Member(cluster) = &source
            && seen.has_changed().unwrap_or(false)
            && let Some(c) = cluster.get()
        {
            seen.borrow_and_update();
            c.publish_registry(registry.encode());
        }
    }
}

/// The leader's collection of the records of joined nodes gone for good
/// (see `registry::COLLECT_AFTER`), every ten seconds.
async fn collect_registry(
    cluster: crate::cluster::ClusterSlot,
    store: Namespace,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        if !cluster.get().is_some_and(|c| c.is_leader()) {
            continue;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = Registry::collect(&store) => match r {
                Ok(0) => {}
                Ok(n) => tracing::info!(records = n, "collected the registry records of joined nodes gone for good"),
                Err(e) => tracing::debug!(error = %e, "registry collection skipped"),
            },
        }
    }
}

/// A db member's watch on its sessions (`cluster::sessions`): a store
/// client whose sessions with this member all ended, or, while this member
/// leads, a member its Raft calls no longer reach, is marked unhealthy in
/// the registry once `registry::SESSION_GRACE` has passed without it coming
/// back, unless its record was renewed since. The record's TTL stays the
/// backstop.
///
/// When this member is out of touch with more than half of the other
/// healthy nodes at once, it is the suspect one (a partition on its side):
/// it marks none of them, and leaves them to their TTL.
async fn watch_sessions(
    cluster: crate::cluster::ClusterSlot,
    store: Namespace,
    registry: Registry,
    stop: CancellationToken,
) {
    use crate::mesh::registry::{RETRY, SESSION_GRACE, TTL};
    // A single node has no sessions until it grows into a cluster.
    let cluster = loop {
        if let Some(c) = cluster.get() {
            break c;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let grace = i64::try_from(SESSION_GRACE.as_millis()).unwrap_or(i64::MAX);
    let mut lost = cluster.lost();
    // The silences already marked, by node: since when each was.
    let mut marked: std::collections::HashMap<String, i64> = Default::default();
    let mut suspect_logged = false;
    loop {
        let now = crate::store::now_ms();
        let leading = cluster.is_leader();
        // A silence older than the TTL is the TTL's: the record has run
        // out by now unless it was renewed (a node gone for good stays
        // silent, and is not counted against this member for ever).
        let recent = now - i64::try_from(TTL.as_millis()).unwrap_or(i64::MAX);
        let silent: Vec<(String, i64)> = lost
            .borrow_and_update()
            .iter()
            .filter(|(_, s)| (!s.member || leading) && s.since >= recent)
            .map(|(node, s)| (node.clone(), s.since))
            .collect();
        marked.retain(|node, since| silent.iter().any(|(n, s)| n == node && s == since));
        // The others in touch, or out of touch since lately (those
        // marked here count: they were healthy when their silence began).
        let others = registry
            .nodes()
            .iter()
            .filter(|n| {
                n.id != registry.local_id()
                    && (n.healthy || silent.iter().any(|(node, _)| *node == n.id))
            })
            .count();
        let suspect = silent.len() > 1 && silent.len() * 2 > others;
        if suspect && !suspect_logged {
            tracing::warn!(
                out_of_touch = silent.len(),
                healthy_others = others,
                "this member is out of touch with most of the other nodes at once: it marks none of them unhealthy (their records' TTL decides)"
            );
        }
        suspect_logged = suspect;
        let mut next: Option<i64> = None;
        if !suspect {
            for (node, since) in &silent {
                if marked.contains_key(node) {
                    continue;
                }
                let due = since.saturating_add(grace);
                if due > now {
                    next = Some(next.map_or(due, |n| n.min(due)));
                    continue;
                }
                let write = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = Registry::mark_lost(&store, node, *since) => r,
                };
                match write {
                    Ok(changed) => {
                        if changed {
                            tracing::info!(%node, out_of_touch_ms = now - since, "marked a node unhealthy: its session with this member broke");
                        }
                        marked.insert(node.clone(), *since);
                    }
                    Err(e) => {
                        tracing::debug!(%node, error = %e, "could not mark a node unhealthy yet");
                        let retry = now + i64::try_from(RETRY.as_millis()).unwrap_or(0);
                        next = Some(next.map_or(retry, |n| n.min(retry)));
                    }
                }
            }
        }
        let wait = next.map(|at| Duration::from_millis(u64::try_from(at - now).unwrap_or(0)));
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = lost.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(wait.unwrap_or(Duration::from_secs(3600))) => {}
        }
    }
}

/// SIGTERM and SIGINT, the two ways to stop a node.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, NodeError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(NodeError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(NodeError::Signals)?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
