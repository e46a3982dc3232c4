//! A running node that changes shape: a single node becomes the first
//! member of a Raft group (`flotilla cluster init`), without a restart and
//! without refusing a request.
//!
//! The node keeps its listeners, services, accounts and registry; what
//! changes is under the store: from the moment Raft starts, every write and
//! read goes through the group (writes made meanwhile wait for its first
//! leader, a few milliseconds). The group's first snapshot is the database
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
    use rand::RngCore;
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
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
    pub config: Config,
    pub catalogue: Services,
    pub store: Store,
    pub cluster: ClusterSlot,
    pub peer: Arc<std::sync::Mutex<Option<Serving>>>,
    pub registry: Registry,
    pub background: TaskTracker,
    pub background_stop: CancellationToken,
    pub busy: tokio::sync::Mutex<()>,
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
        }
    }

    /// Why `new` cannot be this running node's config as the first member
    /// of a group, if it cannot.
    fn misfit(&self, new: &Config) -> Vec<String> {
        let old = &self.config;
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
        if new.services != old.services {
            problems.push(format!(
                "services are {:?}, this node runs {:?}: keep them as they are (move services once the group has grown)",
                new.services, old.services
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
        if self.config.cluster.is_some() {
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
        let cluster = Cluster::start(
            &settings,
            self.store.clone(),
            opened,
            &new.data_dir,
            Arc::new(policy::StoreClients::new(topology)),
        )
        .await
        .map_err(|e| e.to_string())?;
        let stop = CancellationToken::new();
        let limits = self.config.limits.listeners;
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = Some(Serving::spawn(
            stop.clone(),
            server::serve(
                listener,
                cluster.peer_router(),
                stop,
                server::ServeOptions::new("peer", limits.peer, self.config.limits.shutdown_grace),
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
        self.background.spawn(refresh_registry(
            self.registry.clone(),
            self.store.namespace(registry::NAMESPACE),
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
}
