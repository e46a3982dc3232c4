//! The registry: which node runs which service at which address, and
//! whether it is healthy.
//!
//! In single mode it holds this node alone, seeded from the config. The HA
//! and scaled modes seed it from the topology and keep it in a reserved
//! namespace of the replicated store; the ingress forwarding, the xDS
//! resources and `gen-envoy` read it and keep no list of their own.

use std::{
    net::SocketAddr,
    sync::{Arc, RwLock},
};

/// One node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: String,
    pub public: SocketAddr,
    pub services: Vec<&'static str>,
    pub healthy: bool,
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
}

impl Registry {
    /// A registry that knows this node only.
    pub fn single(local: NodeRecord) -> Registry {
        Registry {
            local: Arc::from(local.id.as_str()),
            nodes: Arc::new(RwLock::new(vec![local])),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<NodeRecord>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn local_id(&self) -> &str {
        &self.local
    }

    /// Whether this node runs `service`.
    pub fn is_local(&self, service: &str) -> bool {
        self.read()
            .iter()
            .any(|n| *n.id == *self.local && n.services.contains(&service))
    }

    /// Every instance of `service`, healthy or not, in node order.
    pub fn instances(&self, service: &str) -> Vec<Instance> {
        self.read()
            .iter()
            .filter(|n| n.services.contains(&service))
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
        if let Some(n) = nodes.iter_mut().find(|n| n.id == node) {
            n.healthy = healthy;
        }
    }

    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.read().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_registry_knows_its_services() {
        let r = Registry::single(NodeRecord {
            id: "n1".into(),
            public: "127.0.0.1:8080".parse().unwrap(),
            services: vec!["kv"],
            healthy: false,
        });
        assert!(r.is_local("kv"));
        assert!(!r.is_local("echo"));
        assert_eq!(r.instances("kv").len(), 1);
        assert!(r.instances("echo").is_empty());
        r.set_healthy("n1", true);
        assert!(r.instances("kv")[0].healthy);
    }
}
