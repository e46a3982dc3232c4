//! Running a node: the start-up sequence and the graceful shutdown.
//!
//! Order matters and is the contract with operators:
//! 1. the config was validated before this module is entered;
//! 2. the database is opened (created if needed);
//! 3. both listeners are bound, so a port in use fails the start at once;
//! 4. the admin listener serves (`/readyz` is 503);
//! 5. each selected service runs its migrations and starts;
//! 6. the public listener serves and `/readyz` turns 200.
//!
//! On SIGTERM or SIGINT: `/readyz` turns 503, the public listener stops
//! accepting, in-flight requests finish (within `limits.shutdown_grace_ms`),
//! then the admin listener closes and the process exits 0.

mod policy;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::{
    auth::Auth,
    catalogue::{Capability, Grants, ServiceContext, Services},
    cluster::Cluster,
    config::Config,
    edge::admin::{self, NodeInfo, Readiness, ServiceState},
    edge::ingress::{self, Ingress, IngressLimits},
    edge::server,
    mesh::registry::{NodeRecord, Registry},
    store::{Durability, Store, StoreConfig},
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
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Bind(#[from] server::BindError),
    #[error("service `{service}` could not migrate its namespace: {source}")]
    Migrate {
        service: &'static str,
        source: crate::store::StoreError,
    },
    #[error(transparent)]
    Start(#[from] crate::catalogue::StartError),
    #[error("{0}")]
    Catalogue(String),
    #[error("cannot start authentication: {0}")]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    #[error("cannot record this node in the registry: {0}")]
    Registry(crate::store::StoreError),
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Readers per node: enough for two cores, without idle connections.
const READERS: usize = 4;

/// Runs the node until SIGTERM or SIGINT.
pub async fn run(config: Config, catalogue: Services) -> Result<(), NodeError> {
    let table = catalogue.table().clone();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node = %config.node_id,
        services = ?config.services,
        "starting flotilla"
    );
    let mut stop_signal = shutdown_signal()?;

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

    let admin_listener = server::bind("admin", config.listeners.admin).await?;
    let public_listener = server::bind("public", config.listeners.public).await?;
    let xds_listener = match config.listeners.xds {
        Some(addr) => Some(server::bind("xds", addr).await?),
        None => None,
    };
    let peer_listener = match config.listeners.peer {
        Some(addr) => Some(server::bind("peer", addr).await?),
        None => None,
    };

    // In a cluster, the store becomes replicated before anything writes to
    // it: from here on every write, read and migration goes through Raft.
    // A node without the db role keeps no copy: its store is a client of
    // the members' database, within its namespaces.
    let cluster = match &config.cluster {
        Some(settings) if config.db_role => {
            let topology = config
                .topology
                .clone()
                .expect("a config with a cluster has a topology");
            let policy = Arc::new(policy::StoreClients::new(topology));
            Some(Cluster::start(settings, store.clone(), &config.data_dir, policy).await?)
        }
        Some(settings) => {
            store.set_replicator(crate::cluster::remote_replicator(settings))?;
            None
        }
        None => None,
    };
    let replicated = config.cluster.is_some();
    let peer_stop = CancellationToken::new();
    let peer_task = match (&cluster, peer_listener) {
        (Some(c), Some(listener)) => {
            tracing::info!(addr = ?config.listeners.peer, raft_id = c.id, "peer listener serving");
            Some(tokio::spawn(server::serve(
                listener,
                c.peer_router(),
                peer_stop.clone(),
                config.limits.shutdown_grace,
            )))
        }
        _ => None,
    };

    let readiness = Arc::new(Readiness::new(&config.services));
    let registry = Registry::single(NodeRecord {
        id: config.node_id.clone(),
        public: config.listeners.public,
        services: config.services.iter().map(|s| s.to_string()).collect(),
        healthy: true,
    });
    let info = NodeInfo {
        node_id: config.node_id.clone(),
        version: env!("CARGO_PKG_VERSION"),
        public: config.listeners.public.to_string(),
        admin: config.listeners.admin.to_string(),
        database: store.path().display().to_string(),
    };
    let xds_clients = crate::xds::clients::Clients::default();
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(server::serve(
        admin_listener,
        admin::router(
            readiness.clone(),
            metrics.clone(),
            info,
            cluster.clone(),
            registry.clone(),
            xds_listener.is_some().then(|| {
                let clients = xds_clients.clone();
                Arc::new(move || clients.status()) as admin::StatusPart
            }),
        ),
        admin_stop.clone(),
        config.limits.shutdown_grace,
    ));
    tracing::info!(addr = %config.listeners.admin, "admin listener serving");

    // Auth's migrations and signing keys need a working store: in a cluster
    // this waits until there is a leader.
    let auth = Auth::open(&store, config.auth.clone()).await?;

    let node_id: Arc<str> = Arc::from(config.node_id.as_str());
    let mut routers = HashMap::new();
    for name in &config.services {
        let service = catalogue
            .get(name)
            .expect("selection is validated against the catalogue");
        let name = service.name();
        readiness.set(name, ServiceState::Migrating);
        let namespace = store.namespace(name);
        let applied = match namespace.migrate(service.migrations()).await {
            Ok(n) => n,
            Err(source) => {
                readiness.set(name, ServiceState::Failed(source.to_string()));
                return Err(NodeError::Migrate {
                    service: name,
                    source,
                });
            }
        };
        let grants = Grants {
            credentials: catalogue
                .granted(name)
                .contains(&Capability::IssueCredentials)
                .then(|| auth.clone()),
        };
        let handlers = service.start_handlers(ServiceContext::new(
            node_id.clone(),
            &store,
            name,
            config.limits.budget(name),
            grants,
        ))?;
        routers.insert(name, ingress::compose(name, handlers));
        readiness.set(name, ServiceState::Running);
        tracing::info!(
            service = name,
            migrations_applied = applied,
            "service started"
        );
    }

    // The registry: this node and the topology's members, in the store.
    let registry_store = store.namespace(crate::mesh::registry::NAMESPACE);
    registry_store
        .migrate(crate::mesh::registry::MIGRATIONS)
        .await
        .map_err(|source| NodeError::Migrate {
            service: "registry",
            source,
        })?;
    let topology: Vec<NodeRecord> = config
        .topology
        .iter()
        .flat_map(|t| t.all())
        .map(|n| NodeRecord::from_topology(n, false))
        .collect();
    registry
        .register(&registry_store, &topology)
        .await
        .map_err(NodeError::Registry)?;
    let maintenance_stop = CancellationToken::new();
    let maintenance = tokio::spawn(auth.clone().maintain(maintenance_stop.clone()));
    // Alone, a node is the only reader of its registry: nothing to renew or
    // reload (a heartbeat would be a durable write every second for nobody).
    let refresher = replicated.then(|| {
        tokio::spawn(refresh_registry(
            registry.clone(),
            registry_store.clone(),
            maintenance_stop.clone(),
        ))
    });
    // The xDS server: the same routing table and registry as the ingress.
    let xds_stop = CancellationToken::new();
    let xds_task = xds_listener.map(|listener| {
        let snapshots = crate::xds::server::snapshots(
            table.clone(),
            registry.clone(),
            Some(config.xds_ingress),
            xds_stop.clone(),
        );
        tracing::info!(addr = ?config.listeners.xds, "xds listener serving");
        // ADS streams last as long as their clients: a short grace, then
        // they are cut and the clients reconnect elsewhere.
        tokio::spawn(server::serve_with(
            listener,
            crate::catalogue::grpc_router(crate::xds::server::Ads::service(
                snapshots,
                xds_clients.clone(),
            ))
            .merge(crate::catalogue::grpc_router(xds_clients.csds())),
            xds_stop.clone(),
            Duration::from_secs(1),
            crate::xds::server::SEND_BUFFER,
        ))
    });
    let ingress = Ingress::new(
        table,
        auth,
        registry.clone(),
        readiness.clone(),
        routers,
        metrics.http.clone(),
        IngressLimits {
            max_request_body_bytes: config.limits.max_request_body_bytes,
            request_timeout: config.limits.request_timeout,
        },
    );
    let public_stop = CancellationToken::new();
    let public_task = tokio::spawn(server::serve(
        public_listener,
        ingress,
        public_stop.clone(),
        config.limits.shutdown_grace,
    ));
    tracing::info!(addr = %config.listeners.public, "public listener serving; node ready");

    let signal = stop_signal.recv().await;
    tracing::info!(signal, "shutting down: draining in-flight requests");
    readiness.start_draining();
    maintenance_stop.cancel();
    let _ = maintenance.await;
    if let Some(refresher) = refresher {
        let _ = refresher.await;
    }
    // Deregister first: routers that learn the registry (other nodes,
    // Envoys fed by xDS) stop sending here while this node still listens.
    let deregistered =
        tokio::time::timeout(Duration::from_secs(3), registry.deregister(&registry_store))
            .await
            .unwrap_or_else(|_| Err(crate::store::StoreError::Storage("timed out".into())));
    match deregistered {
        Ok(()) if replicated => tokio::time::sleep(DEREGISTRATION_DRAIN).await,
        Ok(()) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not mark this node unhealthy in the registry")
        }
    }
    // No new connections from here on; requests in flight finish.
    public_stop.cancel();
    if let Some(c) = &cluster {
        // Hand leadership over before the last requests finish, so writes
        // in flight here are forwarded to a leader that stays.
        c.transfer_leadership().await;
    }
    let drained = public_task.await.unwrap_or(false);
    if !drained {
        tracing::warn!(
            grace_ms = config.limits.shutdown_grace.as_millis() as u64,
            "some requests did not finish within the shutdown grace period and were cut off"
        );
    }
    if let Some(c) = &cluster {
        c.shutdown().await;
    }
    // Applied entries still waiting for a shared commit are written now, so
    // the database file is current (openraft may still apply a last entry
    // after this; a restart applies it again from the log).
    if let Err(e) = store.flush().await {
        tracing::warn!(error = %e, "the last applied entries were not committed; the next start applies them again from the Raft log");
    }
    xds_stop.cancel();
    if let Some(t) = xds_task {
        let _ = t.await;
    }
    peer_stop.cancel();
    if let Some(t) = peer_task {
        let _ = t.await;
    }
    admin_stop.cancel();
    let _ = admin_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// How long a node that left the registry keeps listening, so that the
/// others' registry copies (refreshed every `registry::REFRESH`) and the
/// Envoys fed from them stop sending to it first.
const DEREGISTRATION_DRAIN: Duration = Duration::from_millis(1500);

/// Keeps the in-memory registry close to the store's, and renews this
/// node's record every `registry::HEARTBEAT`.
async fn refresh_registry(
    registry: Registry,
    store: crate::store::Namespace,
    stop: CancellationToken,
) {
    let mut last_heartbeat = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(crate::mesh::registry::REFRESH) => {}
        }
        if last_heartbeat.elapsed() >= crate::mesh::registry::HEARTBEAT {
            last_heartbeat = tokio::time::Instant::now();
            let beat = tokio::select! {
                _ = stop.cancelled() => return,
                r = registry.heartbeat(&store) => r,
            };
            if let Err(e) = beat {
                tracing::debug!(error = %e, "registry heartbeat skipped");
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = registry.refresh(&store) => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "registry refresh skipped");
                }
            }
        }
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn shutdown_signal() -> Result<Signals, NodeError> {
    use tokio::signal::unix::{SignalKind, signal};
    Ok(Signals {
        term: signal(SignalKind::terminate()).map_err(NodeError::Signals)?,
        int: signal(SignalKind::interrupt()).map_err(NodeError::Signals)?,
    })
}
