//! The registry: which node runs which service at which address, and
//! whether it is healthy.
//!
//! It lives in the reserved `registry` namespace of the store (replicated
//! in a cluster): every member of the topology is seeded when a node
//! starts, each node records itself (address, services, healthy) on start,
//! renews the record every `HEARTBEAT`, and marks itself unhealthy when it
//! stops gracefully. A record not renewed for `TTL` counts as unhealthy, so
//! a node that dies leaves the endpoints within the TTL. Each node keeps a
//! copy in memory, refreshed from its local store every `REFRESH`; the
//! ingress forwarding, the xDS resources and `gen-envoy` read it and keep
//! no list of their own.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::store::{Migration, Namespace, Statement, StoreError, Value, now_ms};

/// How often a node renews its record.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a record counts as alive without renewal.
pub const TTL: Duration = Duration::from_secs(3);
/// How often the in-memory copy is reloaded from the local store.
pub const REFRESH: Duration = Duration::from_millis(100);

/// One node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeRecord {
    pub id: String,
    pub public: SocketAddr,
    pub services: Vec<String>,
    pub healthy: bool,
}

impl NodeRecord {
    /// A node of the topology, as the registry records it.
    pub fn from_topology(node: crate::mesh::topology::NodeRef, healthy: bool) -> NodeRecord {
        NodeRecord {
            id: node.name().to_owned(),
            public: node.public(),
            services: node
                .selection()
                .services
                .iter()
                .map(|s| s.to_string())
                .collect(),
            healthy,
        }
    }
}

/// One place a service can be reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub node_id: String,
    pub public: SocketAddr,
    pub healthy: bool,
}

#[derive(Clone)]
pub struct Registry {
    local: Arc<str>,
    nodes: Arc<RwLock<Vec<NodeRecord>>>,
    /// Services this node no longer advertises but still serves, while the
    /// others stop sending them here (see `set_local_services`).
    draining: Arc<RwLock<Vec<String>>>,
    /// Bumped whenever `nodes` changes, for those who follow it (xDS).
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Registry {
    /// A registry that knows this node only.
    pub fn single(local: NodeRecord) -> Registry {
        Registry {
            local: Arc::from(local.id.as_str()),
            nodes: Arc::new(RwLock::new(vec![local])),
            draining: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// A fixed view of `nodes`, seen from none of them (`gen-envoy`).
    pub fn fixed(nodes: Vec<NodeRecord>) -> Registry {
        Registry {
            local: Arc::from(""),
            nodes: Arc::new(RwLock::new(nodes)),
            draining: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Wakes when the nodes change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|generation| *generation += 1);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<NodeRecord>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local_id(&self) -> &str {
        &self.local
    }

    /// Whether this node runs `service` (or still serves it while it
    /// drains it).
    pub fn is_local(&self, service: &str) -> bool {
        self.read()
            .iter()
            .any(|n| *n.id == *self.local && n.services.iter().any(|s| s == service))
            || self
                .draining
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|s| s == service)
    }

    /// Changes the services this node advertises to `services`; the ones in
    /// `draining` it still serves when asked, until called again without
    /// them. The record is written by the next `heartbeat`.
    pub fn set_local_services(&self, services: Vec<String>, draining: Vec<String>) {
        *self.draining.write().unwrap_or_else(|p| p.into_inner()) = draining;
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nodes.iter_mut().find(|n| *n.id == *self.local) {
            n.services = services;
        }
        drop(nodes);
        self.changed();
    }

    /// The services this node advertises.
    pub fn local_services(&self) -> Vec<String> {
        self.read()
            .iter()
            .find(|n| *n.id == *self.local)
            .map(|n| n.services.clone())
            .unwrap_or_default()
    }

    /// Every instance of `service`, healthy or not, in node order.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.read()
            .iter()
            .filter(|n| n.services.iter().any(|s| s == service))
            .map(|n| Instance {
                node_id: n.id.clone(),
                public: n.public,
                healthy: n.healthy,
            })
            .collect()
    }

    /// Marks a node healthy or not.
    pub fn set_healthy(&self, node: &str, healthy: bool) {
        let mut nodes = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = nodes.iter_mut().find(|n| n.id == node)
            && n.healthy != healthy
        {
            n.healthy = healthy;
            drop(nodes);
            self.changed();
        }
    }

    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.read().clone()
    }

    /// Records the topology's members (as not yet seen) and this node (as
    /// healthy, with its services) in the store.
    pub async fn register(
        &self,
        store: &Namespace,
        topology: &[NodeRecord],
    ) -> Result<(), StoreError> {
        let local = self
            .read()
            .iter()
            .find(|n| *n.id == *self.local)
            .cloned()
            .expect("the registry always holds the local node");
        let mut statements: Vec<Statement> = topology
            .iter()
            .filter(|n| n.id != local.id)
            .map(|n| {
                RegistryWrite::Seed(NodeRecord {
                    healthy: false,
                    ..n.clone()
                })
                .statement()
            })
            .collect();
        statements.push(upsert(&local, true));
        store.write(statements).await?;
        // The copy may still be catching up; the periodic refresh follows.
        if let Err(e) = self.refresh(store).await {
            tracing::debug!(error = %e, "registry not refreshed yet");
        }
        Ok(())
    }

    /// Renews this node's record (healthy, now).
    pub async fn heartbeat(&self, store: &Namespace) -> Result<(), StoreError> {
        let local = self.read().iter().find(|n| *n.id == *self.local).cloned();
        if let Some(local) = local {
            store.write(vec![upsert(&local, true)]).await?;
        }
        Ok(())
    }

    /// Marks this node unhealthy (a graceful stop).
    pub async fn deregister(&self, store: &Namespace) -> Result<(), StoreError> {
        let local = self.read().iter().find(|n| *n.id == *self.local).cloned();
        if let Some(local) = local {
            store.write(vec![upsert(&local, false)]).await?;
        }
        Ok(())
    }

    /// Reloads the nodes from this node's copy of the store.
    pub async fn refresh(&self, store: &Namespace) -> Result<(), StoreError> {
        let rows = store
            .read_stale(Statement::new(
                "SELECT node, public, services, healthy, updated_ms FROM registry__nodes ORDER BY node",
                vec![],
            ))
            .await?
            .rows;
        let mut nodes = Vec::with_capacity(rows.len());
        for row in rows {
            let mut it = row.into_iter();
            let id = it.next().and_then(Value::into_string).unwrap_or_default();
            let public = it.next().and_then(Value::into_string).unwrap_or_default();
            let services = it.next().and_then(Value::into_string).unwrap_or_default();
            let flagged = it.next().and_then(|v| v.as_i64()).unwrap_or_default() != 0;
            let updated_ms = it.next().and_then(|v| v.as_i64()).unwrap_or_default();
            let healthy = flagged && now_ms() - updated_ms <= TTL.as_millis() as i64;
            let Ok(public) = public.parse() else { continue };
            nodes.push(NodeRecord {
                id,
                public,
                services: services
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                healthy,
            });
        }
        // This node knows best what it runs: its own record stays as it is
        // in memory (a copy still catching up may hold an older one).
        let mut current = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let Some(local) = current.iter().find(|n| *n.id == *self.local).cloned() else {
            return Ok(());
        };
        for n in nodes.iter_mut().filter(|n| *n.id == *self.local) {
            *n = local.clone();
        }
        if !nodes.iter().any(|n| *n.id == *self.local) {
            nodes.push(local);
            nodes.sort_by(|a, b| a.id.cmp(&b.id));
        }
        if *current != nodes {
            *current = nodes;
            drop(current);
            self.changed();
        }
        Ok(())
    }
}

/// Records a topology node not seen yet.
const SEED: &str = "INSERT INTO registry__nodes (node, public, services, healthy, updated_ms)
     VALUES (?1, ?2, ?3, 0, flotilla_now()) ON CONFLICT (node) DO NOTHING";
/// A node's own record.
const UPSERT: &str = "INSERT INTO registry__nodes (node, public, services, healthy, updated_ms)
     VALUES (?1, ?2, ?3, ?4, flotilla_now())
     ON CONFLICT (node) DO UPDATE SET public = excluded.public, services = excluded.services,
         healthy = excluded.healthy, updated_ms = excluded.updated_ms";

/// A write to the registry, as what it means. The registry's statements are
/// made from it, and a db member reads a store client's registry write back
/// into it to decide whether to allow it: the decision is about records,
/// not SQL text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryWrite {
    /// A node's own record, healthy or not.
    Own(NodeRecord),
    /// A topology node not seen yet, recorded unhealthy (an existing record
    /// is left as it is).
    Seed(NodeRecord),
}

impl RegistryWrite {
    pub fn statement(&self) -> Statement {
        match self {
            RegistryWrite::Own(node) => Statement::new(
                UPSERT,
                vec![
                    node.id.clone().into(),
                    node.public.to_string().into(),
                    node.services.join(",").into(),
                    i64::from(node.healthy).into(),
                ],
            ),
            RegistryWrite::Seed(node) => Statement::new(
                SEED,
                vec![
                    node.id.clone().into(),
                    node.public.to_string().into(),
                    node.services.join(",").into(),
                ],
            ),
        }
    }

    /// The write `statement` makes, if it is one the registry makes.
    pub fn parse(statement: &Statement) -> Option<RegistryWrite> {
        let text = |i: usize| statement.params.get(i).and_then(Value::as_str);
        let record = |healthy: bool| -> Option<NodeRecord> {
            Some(NodeRecord {
                id: text(0)?.to_owned(),
                public: text(1)?.parse().ok()?,
                services: text(2)?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                healthy,
            })
        };
        match (statement.sql.as_str(), statement.params.len()) {
            (UPSERT, 4) => {
                let healthy = match statement.params[3].as_i64()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                };
                record(healthy).map(RegistryWrite::Own)
            }
            (SEED, 3) => record(false).map(RegistryWrite::Seed),
            _ => None,
        }
    }
}

fn upsert(node: &NodeRecord, healthy: bool) -> Statement {
    RegistryWrite::Own(NodeRecord {
        healthy,
        ..node.clone()
    })
    .statement()
}

/// The reserved namespace of the registry.
pub const NAMESPACE: &str = "registry";

pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "nodes",
    sql: "CREATE TABLE registry__nodes (
        node TEXT PRIMARY KEY NOT NULL,
        public TEXT NOT NULL,
        services TEXT NOT NULL,
        healthy INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT;",
}];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_writes_are_read_back_into_what_they_mean() {
        let record = NodeRecord {
            id: "kv-1".into(),
            public: "127.0.0.1:8011".parse().unwrap(),
            services: vec!["kv".into(), "echo".into()],
            healthy: true,
        };
        for write in [
            RegistryWrite::Own(record.clone()),
            RegistryWrite::Own(NodeRecord {
                healthy: false,
                ..record.clone()
            }),
            RegistryWrite::Seed(NodeRecord {
                healthy: false,
                ..record.clone()
            }),
        ] {
            assert_eq!(RegistryWrite::parse(&write.statement()), Some(write));
        }
        let mut odd = RegistryWrite::Own(record).statement();
        odd.params[3] = 7i64.into();
        assert_eq!(RegistryWrite::parse(&odd), None);
        let other = Statement::new("DELETE FROM registry__nodes", vec![]);
        assert_eq!(RegistryWrite::parse(&other), None);
    }

    #[test]
    fn single_registry_knows_its_services() {
        let r = Registry::single(NodeRecord {
            id: "n1".into(),
            public: "127.0.0.1:8080".parse().unwrap(),
            services: vec!["kv".into()],
            healthy: false,
        });
        assert!(r.is_local("kv"));
        assert!(!r.is_local("echo"));
        assert_eq!(r.instances("kv").len(), 1);
        assert!(r.instances("echo").is_empty());
        r.set_healthy("n1", true);
        assert!(r.instances("kv")[0].healthy);
    }

    /// A copy of the store that has not caught up with this node's own
    /// registration (only another member's seed of it, without services)
    /// must not make the node forget what it runs.
    #[tokio::test]
    async fn a_stale_copy_does_not_hide_the_local_services() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(
            &crate::store::StoreConfig {
                data_dir: dir.path().to_owned(),
                readers: 1,
                durability: crate::store::Durability::Full,
            },
            crate::telemetry::metrics::Metrics::new().store,
        )
        .unwrap();
        let ns = store.namespace(NAMESPACE);
        ns.migrate(MIGRATIONS).await.unwrap();
        ns.write(vec![Statement::new(
            "INSERT INTO registry__nodes (node, public, services, healthy, updated_ms)
             VALUES ('n1', '127.0.0.1:8080', '', 0, 0), ('n2', '127.0.0.1:8081', 'kv', 1, 0)",
            vec![],
        )])
        .await
        .unwrap();
        let r = Registry::single(NodeRecord {
            id: "n1".into(),
            public: "127.0.0.1:8080".parse().unwrap(),
            services: vec!["kv".into(), "echo".into()],
            healthy: true,
        });
        r.refresh(&ns).await.unwrap();
        assert!(r.is_local("kv") && r.is_local("echo"));
        assert_eq!(r.instances("kv").len(), 2, "the other member is learned");
    }
}
