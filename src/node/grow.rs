//! A running node that changes shape, without a restart and without
//! refusing a request: a single node becomes the first member of a Raft
//! group (`flotilla cluster init`); a node stops running some of its
//! services once it has drained them (`flotilla reconfigure`); a member
//! lets in the store clients added to the topology file.
//!
//! The node keeps its listeners, services, accounts and registry; what
//! changes is under the store: from the moment Raft starts, every write and
//! read goes through the group (writes made meanwhile wait for its first
//! leader). The group's first snapshot is the database
//! as it was, so a member added later receives it whole.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
};

use openraft::BasicNode;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{Serving, policy, refresh_registry};
use crate::{
    catalogue::Services,
    cluster::{Cluster, ClusterSlot, Role},
    config::Config,
    edge::{admin::ControlOp, server},
    mesh::registry::{self, Registry},
    store::Store,
};

/// The control token file in a node's data dir: whoever can read it may
/// run control operations on the node (see `admin::Control`).
pub const CONTROL_TOKEN_FILE: &str = "control.token";

/// Writes a new control token into `data_dir`, readable by the node's user
/// only, and returns it.
pub fn write_control_token(data_dir: &Path) -> Result<Arc<str>, std::io::Error> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let token = crate::cluster::random_hex(32);
    let path = data_dir.join(CONTROL_TOKEN_FILE);
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(Arc::from(token))
}

/// What a running node needs to change shape.
pub(super) struct Grow {
    /// The config the node runs with now.
    pub config: std::sync::Mutex<Config>,
    pub readiness: Arc<crate::edge::admin::Readiness>,
    pub catalogue: Services,
    pub store: Store,
    pub cluster: ClusterSlot,
    pub peer: Arc<std::sync::Mutex<Option<Serving>>>,
    pub registry: Registry,
    pub background: TaskTracker,
    pub background_stop: CancellationToken,
    pub busy: tokio::sync::Mutex<()>,
    /// Set once the node serves: what starting a service needs.
    pub started: std::sync::OnceLock<Started>,
}

/// The parts of a serving node a service started later plugs into.
pub(super) struct Started {
    pub ingress: crate::edge::ingress::Ingress,
    pub auth: Arc<crate::auth::Auth>,
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

impl Grow {
    pub(super) async fn run(self: Arc<Self>, op: ControlOp) -> Result<serde_json::Value, String> {
        match op {
            ControlOp::ClusterInit { config } => self.cluster_init(config).await,
            ControlOp::Reconfigure { config } => self.reconfigure(config).await,
            ControlOp::ClusterLeave { config } => self.cluster_leave(config).await,
        }
    }

    fn current(&self) -> Config {
        self.config
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why `new` cannot replace the running node's config `old` as far as
    /// its identity goes (node id, data dir, listeners).
    fn same_node(old: &Config, new: &Config) -> Vec<String> {
        let mut problems = Vec::new();
        if new.node_id != old.node_id {
            problems.push(format!(
                "node.id is `{}`, this node's is `{}`",
                new.node_id, old.node_id
            ));
        }
        if !same_dir(&new.data_dir, &old.data_dir) {
            problems.push(format!(
                "data_dir is {}, this node's is {}",
                new.data_dir.display(),
                old.data_dir.display()
            ));
        }
        for (name, a, b) in [
            ("public", new.listeners.public, old.listeners.public),
            ("admin", new.listeners.admin, old.listeners.admin),
        ] {
            if a != b {
                problems.push(format!(
                    "listeners.{name} is {a}, this node's is {b}: keep it"
                ));
            }
        }
        if new.listeners.xds != old.listeners.xds {
            problems.push("listeners.xds differs from this node's: keep it".into());
        }
        problems
    }

    /// Why `new` cannot be this running node's config as the first member
    /// of a group, if it cannot.
    fn misfit(&self, new: &Config) -> Vec<String> {
        let old = self.current();
        let mut problems = Self::same_node(&old, new);
        if new.services != old.services {
            problems.push(format!(
                "services are {:?}, this node runs {:?}: keep them as they are (move services once the group has grown)",
                new.services, old.services
            ));
        }
        match &new.cluster {
            None => problems.push("has no `cluster` section".into()),
            Some(c) if !matches!(c.role, Role::Voter { .. }) => problems.push(
                "is a store client's config: the node that forms the group has the db role".into(),
            ),
            Some(_) if new.listeners.peer.is_none() => {
                problems.push("has no listeners.peer".into())
            }
            Some(_) => {}
        }
        problems
    }

    /// `flotilla cluster init`: forms a one-member group on this single
    /// node's database, with `path` as the node's config from now on.
    async fn cluster_init(self: Arc<Self>, path: PathBuf) -> Result<serde_json::Value, String> {
        let _one = self.busy.lock().await;
        if let Some(c) = self.cluster.get() {
            return Err(format!(
                "this node already belongs to Raft group {}: grow it with `flotilla cluster add-learner` and `promote`",
                c.group().as_deref().unwrap_or("(forming)")
            ));
        }
        let old = self.current();
        if old.cluster.is_some() {
            return Err("this node is a store client of a cluster: only a single node (a config without `cluster`) forms a group this way".into());
        }
        let new = Config::load(&path, &self.catalogue).map_err(|e| e.to_string())?;
        let problems = self.misfit(&new);
        if !problems.is_empty() {
            return Err(format!(
                "{} does not fit this running node: {}",
                path.display(),
                problems.join("; ")
            ));
        }
        let settings = new.cluster.clone().expect("checked by misfit");
        let Role::Voter { id, .. } = settings.role else {
            unreachable!("checked by misfit")
        };
        let member = settings
            .members
            .iter()
            .find(|m| m.id == id)
            .cloned()
            .expect("a voter is in its topology");
        let opened = Cluster::open_log_to_form(&new.data_dir, &self.store).await?;
        let peer_addr = new.listeners.peer.expect("checked by misfit");
        let listener = server::bind("peer", peer_addr)
            .await
            .map_err(|e| e.to_string())?;
        let topology = new
            .topology
            .clone()
            .expect("a cluster config has a topology");
        let settings = crate::cluster::ClusterSettings {
            bootstrap: false,
            ..settings
        };
        // From here on the store is replicated: writes wait for the group's
        // leader, which the next step makes.
        let clients = Arc::new(policy::StoreClients::new(topology));
        let cluster = Cluster::start(
            &settings,
            self.store.clone(),
            opened,
            &new.data_dir,
            clients.clone(),
        )
        .await
        .map_err(|e| e.to_string())?;
        if let Some(path) = &new.topology_path {
            self.background.spawn(follow_topology(
                path.clone(),
                self.catalogue.clone(),
                clients,
                cluster.clone(),
                self.background_stop.clone(),
            ));
        }
        let stop = CancellationToken::new();
        let limits = old.limits.listeners;
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Serving::spawn(
            stop.clone(),
            server::serve(
                listener,
                cluster.peer_router(),
                stop,
                server::ServeOptions::peer(
                    limits.peer,
                    old.limits.shutdown_grace,
                    cluster.peer_tls(),
                ),
            ),
        ));
        cluster
            .form_group(
                BTreeMap::from([(id, BasicNode::new(member.peer.to_string()))]),
                true,
            )
            .await?;
        cluster.first_snapshot().await?;
        self.cluster.set(cluster.clone());
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.background.spawn(refresh_registry(
            self.registry.clone(),
            self.store.namespace(registry::NAMESPACE),
            super::RegistrySource::Member(self.cluster.clone()),
            self.background_stop.clone(),
        ));
        tracing::info!(
            group = cluster.group().as_deref().unwrap_or_default(),
            raft_id = id,
            peer = %peer_addr,
            "this node is now the first member of a Raft group"
        );
        Ok(serde_json::json!({
            "group": cluster.group(),
            "member": id,
            "config": path,
            "status": cluster.status(),
            "next": format!(
                "this node now runs with {} (start it with that config from now on); add members with `flotilla cluster add-learner --config {} --id N`, then `promote`",
                path.display(),
                path.display()
            ),
        }))
    }

    /// `flotilla reconfigure`: the node runs the services of the config at
    /// `path` from now on. A service it takes on is migrated, started and
    /// plugged into the ingress, then advertised; each one it drops is
    /// first drained: the
    /// node's registry record stops listing it, the others (their
    /// forwarders, the Envoys fed by xDS) stop sending it here, and this
    /// node serves what still arrives meanwhile; then requests for it that
    /// reach this node are forwarded to the nodes that run it.
    async fn reconfigure(self: Arc<Self>, path: PathBuf) -> Result<serde_json::Value, String> {
        let _one = self.busy.lock().await;
        let old = self.current();
        let new = Config::load(&path, &self.catalogue).map_err(|e| e.to_string())?;
        let mut problems = Self::same_node(&old, &new);
        if new.db_role != old.db_role || new.cluster.is_some() != old.cluster.is_some() {
            problems.push("the db role and the cluster section must stay as they are".into());
        }
        let added: Vec<&'static str> = new
            .services
            .iter()
            .filter(|s| !old.services.contains(s))
            .copied()
            .collect();
        if !problems.is_empty() {
            return Err(format!(
                "{} does not fit this running node: {}",
                path.display(),
                problems.join("; ")
            ));
        }
        let dropped: Vec<&'static str> = old
            .services
            .iter()
            .filter(|s| !new.services.contains(s))
            .copied()
            .collect();
        let keep: Vec<String> = new.services.iter().map(|s| s.to_string()).collect();
        // Each dropped service must run elsewhere (a node started a moment
        // ago shows up in this node's registry copy when its record is
        // applied).
        let mut changes = self.registry.subscribe();
        for service in &dropped {
            let elsewhere = || {
                self.registry
                    .instances(service)
                    .iter()
                    .any(|i| i.healthy && i.node_id != self.registry.local_id())
            };
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
            while !elsewhere() {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "no other healthy node runs `{service}`: start one first (its requests would have nowhere to go)"
                    ));
                }
                let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
            }
        }
        let Some(started) = self.started.get() else {
            return Err("the node is still starting: try again once it is ready".into());
        };
        // Services it takes on: migrated (a no-op when the group has them
        // already), started and plugged in before they are advertised.
        let node_id: Arc<str> = Arc::from(new.node_id.as_str());
        for name in &added {
            let service = self
                .catalogue
                .get(name)
                .expect("selection is validated against the catalogue");
            self.store
                .namespace(name)
                .migrate(service.migrations())
                .await
                .map_err(|e| format!("service `{name}` could not migrate its namespace: {e}"))?;
            let router = super::services::service_router(
                &self.catalogue,
                name,
                &node_id,
                &self.store,
                &new,
                &started.auth,
            )
            .map_err(|e| e.to_string())?;
            started.ingress.add_service(name, router);
            self.readiness
                .set(name, crate::edge::admin::ServiceState::Running);
            tracing::info!(service = name, "service started on the running node");
        }
        let store = self.store.namespace(registry::NAMESPACE);
        self.registry.set_local_services(
            keep.clone(),
            dropped.iter().map(|s| s.to_string()).collect(),
        );
        self.registry
            .heartbeat(&store)
            .await
            .map_err(|e| format!("cannot record the node's new services: {e}"))?;
        if !dropped.is_empty() {
            tracing::info!(
                ?dropped,
                "draining services: the others stop sending them here"
            );
            // The others' registry copies follow within their refresh
            // period, and the Envoys they feed right after.
            tokio::time::sleep(super::DEREGISTRATION_DRAIN).await;
        }
        self.registry.set_local_services(keep.clone(), Vec::new());
        for service in &dropped {
            self.readiness.remove(service);
        }
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
        tracing::info!(?dropped, services = ?keep, "stopped serving the dropped services; their requests are forwarded");
        Ok(serde_json::json!({
            "services": keep,
            "started": added,
            "stopped": dropped,
            "next": format!("start this node with {} from now on", path.display()),
        }))
    }

    /// `flotilla cluster leave --confirm`: the last member of a group turns
    /// back into a single node, on the same data, running with the
    /// single-mode config at `path` from then on.
    async fn cluster_leave(self: Arc<Self>, path: PathBuf) -> Result<serde_json::Value, String> {
        let _one = self.busy.lock().await;
        let Some(cluster) = self.cluster.get() else {
            return Err("this node belongs to no Raft group: nothing to leave".into());
        };
        let old = self.current();
        let new = Config::load(&path, &self.catalogue).map_err(|e| e.to_string())?;
        let mut problems = Self::same_node(&old, &new);
        if new.cluster.is_some() {
            problems.push("has a `cluster` section: give the node's single-mode config".into());
        }
        if new.services != old.services {
            problems.push(format!(
                "services are {:?}, this node runs {:?}: keep them as they are",
                new.services, old.services
            ));
        }
        if !problems.is_empty() {
            return Err(format!(
                "{} does not fit this running node: {}",
                path.display(),
                problems.join("; ")
            ));
        }
        let group = cluster.group();
        cluster.leave(&new.data_dir).await?;
        self.cluster.clear();
        let peer = self.peer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(peer) = peer {
            peer.stop().await;
        }
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(serde_json::json!({
            "left": group,
            "next": format!("this node is a single node again; start it with {} from now on", path.display()),
        }))
    }
}

/// Reloads the topology file at `path` when it changes (looked at four
/// times a second), so that a member
/// lets in the store clients added to it (with their services'
/// namespaces), and no longer the ones removed, without a restart. A file
/// that does not load is reported and the previous topology kept.
pub(super) async fn follow_topology(
    path: PathBuf,
    catalogue: Services,
    policy: Arc<policy::StoreClients>,
    cluster: Arc<Cluster>,
    stop: CancellationToken,
) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut last = modified(&path);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
        }
        let now = modified(&path);
        if now == last {
            continue;
        }
        last = now;
        match crate::mesh::topology::Topology::load(&path, &catalogue) {
            Ok(topology) => {
                let names: Vec<String> = topology.nodes.iter().map(|n| n.name.clone()).collect();
                policy.set(topology);
                cluster.set_store_clients(&names);
                tracing::info!(file = %path.display(), store_clients = ?names, "topology reloaded");
            }
            Err(problems) => {
                let problems: Vec<String> = problems
                    .iter()
                    .map(|p| format!("{}: {}", p.field, p.message))
                    .collect();
                tracing::warn!(file = %path.display(), ?problems, "the changed topology does not load; keeping the previous one");
            }
        }
    }
}
