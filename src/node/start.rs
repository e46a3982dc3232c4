//! `Node::start`: from bound listeners to a node that serves.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use futures_util::FutureExt;

use super::{
    Node, NodeError, Running, Serving, Signals, grow::Grow, policy, refresh_registry,
    services::service_router,
};
use crate::{
    auth::{Auth, AuthError},
    cluster::{Cluster, ClusterSlot},
    edge::server::ServeOptions,
    edge::{
        admin::{self, NodeInfo, Readiness, ServiceState},
        ingress::{Ingress, IngressSettings},
        server,
    },
    mesh::registry::{self, NodeRecord, Registry},
    store::StoreError,
};

/// How often a start-up step that waits for the cluster says so again.
const WAITING_NOTICE: Duration = Duration::from_secs(10);

/// Whether a start-up step failed only because the cluster cannot take it
/// now (no leader, no quorum): then it is tried again.
trait Unavailable {
    fn unavailable(&self) -> Option<&str>;
}

impl Unavailable for StoreError {
    fn unavailable(&self) -> Option<&str> {
        match self {
            StoreError::Unavailable(why) | StoreError::OutcomeUnknown(why) => Some(why),
            _ => None,
        }
    }
}

impl Unavailable for AuthError {
    fn unavailable(&self) -> Option<&str> {
        match self {
            AuthError::Store(e) => e.unavailable(),
            AuthError::Keys(_) => None,
        }
    }
}

/// Runs `step` until it succeeds or fails for another reason than the
/// cluster's unavailability, while `waiting` reports why it waits; a signal
/// ends the wait.
async fn when_available<T, E: Unavailable, Fut: Future<Output = Result<T, E>>>(
    what: &str,
    signals: &mut Signals,
    mut waiting: impl FnMut(&str),
    mut step: impl FnMut() -> Fut,
) -> Result<Result<T, E>, NodeError> {
    let mut told = None::<tokio::time::Instant>;
    loop {
        let result = tokio::select! {
            signal = signals.recv() => return Err(NodeError::Stopped(signal)),
            r = step() => r,
        };
        let Some(why) = result.as_ref().err().and_then(|e| e.unavailable()) else {
            return Ok(result);
        };
        waiting(why);
        if told.is_none_or(|t| t.elapsed() >= WAITING_NOTICE) {
            told = Some(tokio::time::Instant::now());
            tracing::warn!(step = what, why, "waiting for the cluster to take writes");
        }
        tokio::select! {
            signal = signals.recv() => return Err(NodeError::Stopped(signal)),
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
}

impl Node {
    /// Starts everything, in the order the module documentation gives, and
    /// serves. A signal before the node is ready stops the start
    /// (`NodeError::Stopped`).
    pub async fn start(self, signals: &mut Signals) -> Result<Running, NodeError> {
        let Node {
            config,
            catalogue,
            metrics,
            store,
            raft_log,
            listeners,
            control_token,
        } = self;
        let grace = config.limits.shutdown_grace;
        let limits = config.limits.listeners;

        // In a cluster, the store becomes replicated before anything writes
        // to it: from here on every write, read and migration goes through
        // Raft. A node without the db role keeps no copy: its store is a
        // client of the members' database, within its namespaces.
        let mut policy = None;
        let mut store_client = None;
        let cluster = match &config.cluster {
            Some(settings) if config.db_role => {
                let topology = config
                    .topology
                    .clone()
                    .expect("a config with a cluster has a topology");
                let clients = Arc::new(policy::StoreClients::new(topology));
                policy = Some(clients.clone());
                let log = raft_log.expect("a member's log is opened with its database");
                Some(Cluster::start(settings, store.clone(), log, &config.data_dir, clients).await?)
            }
            Some(settings) => {
                let link = crate::cluster::StoreClientLink::new(settings);
                store.set_replicator(link.replicator())?;
                store_client = Some(link);
                None
            }
            None => None,
        };
        let peer: Option<Serving> = match (&cluster, listeners.peer) {
            (Some(c), Some(listener)) => {
                tracing::info!(addr = ?config.listeners.peer, raft_id = c.id, "peer listener serving");
                let stop = CancellationToken::new();
                Some(Serving::spawn(
                    stop.clone(),
                    server::serve(
                        listener,
                        c.peer_router(),
                        stop,
                        ServeOptions::peer(limits.peer, grace, c.peer_tls()),
                    ),
                ))
            }
            _ => None,
        };

        let registry = Registry::single(NodeRecord {
            id: config.node_id.clone(),
            public: config.advertise,
            services: config.services.iter().map(|s| s.to_string()).collect(),
            healthy: true,
        });
        let registry = if config.joined {
            registry.claimed()
        } else {
            registry
        };
        let xds_clients = crate::xds::clients::Clients::default();
        let readiness = Arc::new(Readiness::new(&config.services));
        let background = TaskTracker::new();
        let background_stop = CancellationToken::new();
        if let (Some(c), Some(policy), Some(path)) = (&cluster, policy, &config.topology_path) {
            background.spawn(super::grow::follow_topology(
                path.clone(),
                catalogue.clone(),
                policy,
                c.clone(),
                background_stop.clone(),
            ));
        }
        let cluster = ClusterSlot::new(cluster);
        let peer = Arc::new(std::sync::Mutex::new(peer));
        let grow = Arc::new(Grow {
            config: std::sync::Mutex::new(config.clone()),
            readiness: readiness.clone(),
            catalogue: catalogue.clone(),
            store: store.clone(),
            cluster: cluster.clone(),
            peer: peer.clone(),
            registry: registry.clone(),
            background: background.clone(),
            background_stop: background_stop.clone(),
            busy: tokio::sync::Mutex::new(()),
            started: std::sync::OnceLock::new(),
        });
        let control = admin::Control {
            token: control_token,
            run: {
                let grow = grow.clone();
                Arc::new(move |op| grow.clone().run(op).boxed())
            },
        };
        // The operator's certificates for the public listener, read before
        // the admin listener, which shows them.
        let public_tls = match &config.public_tls {
            Some(files) => Some(Arc::new(
                crate::tls::public::PublicTls::load(files).map_err(NodeError::PublicTls)?,
            )),
            None => None,
        };
        let admin = {
            let stop = CancellationToken::new();
            let router = admin::router(
                readiness.clone(),
                metrics.clone(),
                NodeInfo {
                    node_id: config.node_id.clone(),
                    store_client: store_client.is_some(),
                    version: env!("CARGO_PKG_VERSION"),
                    public: config.advertise.to_string(),
                    admin: config.listeners.admin.to_string(),
                    database: store.path().display().to_string(),
                },
                cluster.clone(),
                registry.clone(),
                admin::StatusParts {
                    xds: listeners.xds.is_some().then(|| {
                        let clients = xds_clients.clone();
                        Arc::new(move || clients.status()) as admin::StatusPart
                    }),
                    public_tls: public_tls.clone().map(|tls| {
                        Arc::new(move || serde_json::json!(tls.status())) as admin::StatusPart
                    }),
                },
                control,
            );
            Serving::spawn(
                stop.clone(),
                server::serve(
                    listeners.admin,
                    router,
                    stop,
                    ServeOptions::new("admin", limits.admin, grace),
                ),
            )
        };
        tracing::info!(addr = %config.listeners.admin, "admin listener serving");

        // Auth's migrations and signing keys need a working store: in a
        // cluster, a leader.
        let all = config.services.clone();
        let waiting_all = |why: &str| {
            for name in &all {
                readiness.set(name, ServiceState::Waiting(why.to_owned()));
            }
        };
        let auth = when_available("authentication", signals, waiting_all, || {
            Auth::open(&store, config.auth.clone())
        })
        .await??;

        let node_id: Arc<str> = Arc::from(config.node_id.as_str());
        let mut routers = HashMap::new();
        for name in &config.services {
            let service = catalogue
                .get(name)
                .expect("selection is validated against the catalogue");
            let name = service.name();
            readiness.set(name, ServiceState::Migrating);
            let namespace = store.namespace(name);
            let migrated = when_available(
                name,
                signals,
                |why| readiness.set(name, ServiceState::Waiting(why.to_owned())),
                || namespace.migrate(service.migrations()),
            )
            .await?;
            let applied = match migrated {
                Ok(n) => n,
                Err(source) => {
                    readiness.set(name, ServiceState::Failed(source.to_string()));
                    return Err(NodeError::Migrate {
                        service: name,
                        source,
                    });
                }
            };
            let router = service_router(&catalogue, name, &node_id, &store, &config, &auth)?;
            routers.insert(name, router);
            readiness.set(name, ServiceState::Running);
            tracing::info!(
                service = name,
                migrations_applied = applied,
                "service started"
            );
        }

        // The registry: this node and the topology's members, in the store.
        let registry_store = store.namespace(registry::NAMESPACE);
        when_available(
            "registry",
            signals,
            |_| {},
            || registry_store.migrate(registry::MIGRATIONS),
        )
        .await?
        .map_err(|source| NodeError::Migrate {
            service: "registry",
            source,
        })?;
        // The members seed the topology's nodes; a store client records
        // only itself, so a topology file that changes while nodes start
        // cannot make its seeds differ from what the members allow.
        let topology: Vec<NodeRecord> = config
            .topology
            .iter()
            .filter(|_| config.db_role)
            .flat_map(|t| t.all())
            .filter_map(|n| NodeRecord::from_topology(n, false))
            .collect();
        when_available(
            "registry",
            signals,
            |_| {},
            || registry.register(&registry_store, &topology),
        )
        .await?
        .map_err(NodeError::Registry)?;

        background.spawn(auth.clone().maintain(background_stop.clone()));
        // Alone, a node is the only reader of its registry: nothing to renew
        // or reload (a heartbeat would be a durable write every second for
        // nobody).
        let source = match &store_client {
            Some(link) => Some(super::RegistrySource::Client(link.clone())),
            None if config.cluster.is_some() => {
                Some(super::RegistrySource::Member(cluster.clone()))
            }
            None => None,
        };
        if let Some(source) = source {
            background.spawn(refresh_registry(
                registry.clone(),
                registry_store.clone(),
                source,
                background_stop.clone(),
            ));
        }
        if config.cluster.is_some() && config.db_role {
            background.spawn(super::collect_registry(
                cluster.clone(),
                registry_store.clone(),
                background_stop.clone(),
            ));
            background.spawn(super::watch_sessions(
                cluster.clone(),
                registry_store.clone(),
                registry.clone(),
                background_stop.clone(),
            ));
        }

        // The xDS server: the same routing table and registry as the
        // ingress.
        let table = catalogue.table().clone();
        let xds_tls = if config.xds_tls {
            cluster.get().and_then(|c| c.xds_tls())
        } else {
            None
        };
        let xds = listeners.xds.map(|listener| {
            let stop = CancellationToken::new();
            let snapshots = crate::xds::server::snapshots(
                table.clone(),
                registry.clone(),
                Some(config.xds_ingress),
                stop.clone(),
            );
            tracing::info!(addr = ?config.listeners.xds, tls = xds_tls.is_some(), "xds listener serving");
            let router = crate::catalogue::grpc_router(crate::xds::server::Ads::service(
                snapshots,
                xds_clients.clone(),
            ))
            .merge(crate::catalogue::grpc_router(xds_clients.csds()));
            // ADS streams last as long as their clients: a short grace,
            // then they are cut and the clients reconnect elsewhere.
            Serving::spawn(
                stop.clone(),
                server::serve(
                    listener,
                    router,
                    stop,
                    ServeOptions {
                        h2_send_buffer: crate::xds::server::SEND_BUFFER,
                        tls: xds_tls.clone(),
                        ..ServeOptions::new("xds", limits.xds, Duration::from_secs(1))
                    },
                ),
            )
        });

        // This node's certificate, for the public listener and forwarding:
        // a member's, as long as it is one (a single node can grow into a
        // cluster, and a member shrink back to single), or a store
        // client's, issued by now (auth opened through the members).
        let client_tls = match &store_client {
            Some(link) => link.node_tls().await.map_err(NodeError::NodeTls)?,
            None => None,
        };
        let node_tls: crate::tls::NodeTls = {
            let cluster = cluster.clone();
            Arc::new(move || {
                cluster
                    .get()
                    .and_then(|c| c.node_tls())
                    .or_else(|| client_tls.clone())
            })
        };
        let ingress = Ingress::new(
            table,
            auth.clone(),
            registry.clone(),
            readiness.clone(),
            routers,
            metrics.http.clone(),
            IngressSettings {
                max_request_body_bytes: config.limits.max_request_body_bytes,
                request_timeout: config.limits.request_timeout,
                forward_tls: node_tls.clone(),
            },
        )
        .map_err(NodeError::Ingress)?;
        let public = {
            let stop = CancellationToken::new();
            let mut options = ServeOptions::new("public", limits.public, grace);
            let operator = public_tls;
            if let Some(tls) = &operator {
                tokio::spawn(tls.clone().watch(stop.clone()));
            }
            // With the operator's certificates, TLS only; in a cluster
            // without them, plaintext for clients and TLS for the nodes and
            // Envoys that ask for the node's certificate.
            options.plaintext_too = operator.is_none();
            options.tls = Some(crate::tls::public::source(node_tls.clone(), operator));
            Serving::spawn(
                stop.clone(),
                server::serve(listeners.public, ingress.clone(), stop, options),
            )
        };
        tracing::info!(
            addr = %config.listeners.public,
            tls = if config.public_tls.is_some() { "only" } else if node_tls().is_some() { "for nodes and Envoys" } else { "off" },
            "public listener serving; node ready"
        );

        let _ = grow.started.set(super::grow::Started {
            ingress: ingress.clone(),
            auth: auth.clone(),
        });
        Ok(Running {
            config,
            store,
            cluster,
            registry,
            registry_store,
            readiness,
            background,
            background_stop,
            public,
            admin,
            xds,
            peer,
        })
    }
}
