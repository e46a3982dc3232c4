//! The registry: which node runs which service at which address, and
//! whether it is healthy.
//!
//! It lives in the reserved `registry` namespace of the store (replicated
//! in a cluster): every member of the topology is seeded when a node
//! starts, each node records itself (address, services, healthy) on start,
//! and marks itself unhealthy when it stops gracefully. A record not
//! renewed for `TTL` counts as unhealthy, so a node that dies leaves the
//! endpoints within the TTL (its broken session marks it sooner). Each
//! member renews its own record every `HEARTBEAT`, and those of the store
//! clients in session with it in the same write (`renew`): a store client
//! writes its record only when a session opens or the record is not what
//! it should be. Each node keeps a
//! copy in memory, and nothing polls it: a db member reads its own copy of
//! the store again when entries applied there change the registry (and
//! when a record's TTL runs out), and publishes what it sees; a store
//! client follows a member's (`WatchRegistry`). The ingress forwarding, the
//! xDS resources and `gen-envoy` read the copy and keep no list of their
//! own; they are told of each change at once (`subscribe`).
//!
//! A node that joined with a join token (not in the topology, e.g. a pod of
//! a Deployment) holds its record by a *claim*: a random value only it
//! knows. Its writes take effect only on a record with its claim, or on
//! none, or on one left to expire (`CLAIMED`), so another holder of the
//! same token cannot pass for it. It deletes its record when it stops
//! gracefully; the members collect the records of claimed nodes gone for
//! longer than `COLLECT_AFTER` (`collect`), so scaling up and down leaves
//! no growing table.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::store::{Migration, Namespace, Statement, StoreError, Value, now_ms};

/// How often a member renews its record and its sessions' records.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// How long a record counts as alive without renewal.
pub const TTL: Duration = Duration::from_secs(3);
/// Changes applied within this long of each other are read as one.
pub const COALESCE: Duration = Duration::from_millis(2);
/// How soon a copy that could not be read (a member cut off, catching up)
/// is tried again.
pub const RETRY: Duration = Duration::from_millis(500);
/// How long a node may be out of touch with the members (its session
/// broken, `cluster::sessions`) before they mark its record unhealthy: a
/// few Raft heartbeats, so that a connection re-made at once is not
/// taken for a crash.
pub const SESSION_GRACE: Duration = Duration::from_millis(250);
/// A write stamped up to this long after a session broke may have been
/// sent before: a member's renewal in flight at that moment. A node back
/// through another member writes later than this (it waits 200 ms before
/// it tries the next member), so `mark_lost` tells the two apart.
pub const IN_FLIGHT: Duration = Duration::from_millis(100);
/// How long the record of a joined node that stopped renewing it stays
/// (unhealthy) before the members delete it.
pub const COLLECT_AFTER: Duration = Duration::from_secs(60);

/// One node as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub public: SocketAddr,
    pub services: Vec<String>,
    pub healthy: bool,
}

impl NodeRecord {
    /// A node of the topology, as the registry records it: none for a
    /// member whose address the topology leaves to the member itself.
    pub fn from_topology(
        node: crate::mesh::topology::NodeRef,
        healthy: bool,
    ) -> Option<NodeRecord> {
        Some(NodeRecord {
            id: node.name().to_owned(),
            public: node.public()?,
            services: node
                .selection()
                .services
                .iter()
                .map(|s| s.to_string())
                .collect(),
            healthy,
        })
    }
}

/// One record as `/status` shows it: what it says, and how old it is.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecordStatus {
    #[serde(flatten)]
    pub record: NodeRecord,
    /// When the record was last written (ms since the epoch), where this
    /// node knows it (see `Registry::renewed`).
    pub updated_ms: Option<i64>,
    /// How long ago that was, by this node's clock: a record renewed every
    /// `HEARTBEAT` stays younger than `TTL`.
    pub age_ms: Option<u64>,
}

/// The age of a record written at `updated` (ms since the epoch) at `now`;
/// a record written by a clock ahead of this node's is new (0), not of a
/// negative age.
fn age_ms(now: i64, updated: i64) -> u64 {
    u64::try_from(now.saturating_sub(updated)).unwrap_or(0)
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
    /// The claim this node holds its record by, if it joined with a token.
    claim: Option<Arc<str>>,
    nodes: Arc<RwLock<Vec<NodeRecord>>>,
    /// When each node's record was last written (ms since the epoch, the
    /// leader's clock), as this node's copy of the store says: known where
    /// the copy is read (`refresh`: a db member; a single node, which
    /// writes its record once, at start), not on a store client, which
    /// takes a member's records without their times (`adopt_encoded`
    /// forgets any it read at start). Kept apart from `nodes`: a renewal
    /// alone is no change to those who follow them.
    renewed: Arc<RwLock<BTreeMap<String, i64>>>,
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
            claim: None,
            nodes: Arc::new(RwLock::new(vec![local])),
            renewed: Arc::default(),
            draining: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// A fixed view of `nodes`, seen from none of them (`gen-envoy`).
    pub fn fixed(nodes: Vec<NodeRecord>) -> Registry {
        Registry {
            local: Arc::from(""),
            claim: None,
            nodes: Arc::new(RwLock::new(nodes)),
            renewed: Arc::default(),
            draining: Arc::default(),
            changes: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// This node holds its record by a fresh random claim: it joined with a
    /// token and is not in the topology.
    pub fn claimed(self) -> Registry {
        let claim = crate::cluster::random_hex(16);
        Registry {
            claim: Some(Arc::from(claim)),
            ..self
        }
    }

    /// The claim this node holds its record by; empty for a node of the
    /// topology.
    pub fn claim(&self) -> &str {
        self.claim.as_deref().unwrap_or_default()
    }

    /// The write that records this node as `healthy`.
    fn own_write(&self, healthy: bool) -> Option<RegistryWrite> {
        let local = self.read().iter().find(|n| *n.id == *self.local).cloned()?;
        let record = NodeRecord { healthy, ..local };
        Some(match &self.claim {
            Some(claim) => RegistryWrite::Claimed {
                record,
                claim: claim.to_string(),
            },
            None => RegistryWrite::Own(record),
        })
    }

    /// Writes this node's record; a claimed record held by another live
    /// node is not taken, and says so.
    async fn write_own(
        &self,
        store: &Namespace,
        mut statements: Vec<Statement>,
        healthy: bool,
    ) -> Result<(), StoreError> {
        let Some(own) = self.own_write(healthy) else {
            return Ok(());
        };
        statements.push(own.statement());
        let outcomes = store.write(statements).await?;
        if self.claim.is_some() && outcomes.last().is_some_and(|o| o.changed == 0) {
            return Err(StoreError::Unavailable(format!(
                "the node name `{}` is held by another live node of the registry: two nodes run under one name, or this node restarted before its old record expired ({} s); it is tried again",
                self.local,
                TTL.as_secs()
            )));
        }
        Ok(())
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

    /// The records with their ages, for `/status`.
    pub fn status(&self) -> Vec<RecordStatus> {
        let now = now_ms();
        let renewed = self.renewed.read().unwrap_or_else(|p| p.into_inner());
        self.read()
            .iter()
            .map(|n| {
                let updated_ms = renewed.get(&n.id).copied();
                RecordStatus {
                    record: n.clone(),
                    updated_ms,
                    age_ms: updated_ms.map(|u| age_ms(now, u)),
                }
            })
            .collect()
    }

    /// Records the topology's members (as not yet seen) and this node (as
    /// healthy, with its services) in the store.
    pub async fn register(
        &self,
        store: &Namespace,
        topology: &[NodeRecord],
    ) -> Result<(), StoreError> {
        let statements: Vec<Statement> = topology
            .iter()
            .filter(|n| *n.id != *self.local)
            .map(|n| {
                RegistryWrite::Seed(NodeRecord {
                    healthy: false,
                    ..n.clone()
                })
                .statement()
            })
            .collect();
        self.write_own(store, statements, true).await?;
        // The copy may still be catching up; the registry's follower
        // (`node::refresh_registry`) takes it from here.
        if let Err(e) = self.refresh(store).await {
            tracing::debug!(error = %e, "registry not refreshed yet");
        }
        Ok(())
    }

    /// Writes this node's record (healthy, now).
    pub async fn heartbeat(&self, store: &Namespace) -> Result<(), StoreError> {
        self.write_own(store, Vec::new(), true).await
    }

    /// A member's heartbeat: its own record, and the renewal of the records
    /// of the store clients in session with it (`in_session`: node and
    /// claim), in one write. A store client in session does not write to
    /// stay alive, so the writes a second are the members', however many
    /// nodes there are.
    pub async fn renew(
        &self,
        store: &Namespace,
        in_session: Vec<(String, String)>,
    ) -> Result<(), StoreError> {
        let renewals = if in_session.is_empty() {
            Vec::new()
        } else {
            vec![RegistryWrite::Renew { nodes: in_session }.statement()]
        };
        self.write_own(store, renewals, true).await
    }

    /// A graceful stop: marks this node unhealthy, or deletes the record of
    /// a node that joined with a token (it will not come back under its
    /// name).
    pub async fn deregister(&self, store: &Namespace) -> Result<(), StoreError> {
        match &self.claim {
            Some(claim) => store
                .write(vec![
                    RegistryWrite::Leave {
                        node: self.local.to_string(),
                        claim: claim.to_string(),
                    }
                    .statement(),
                ])
                .await
                .map(drop),
            None => self.write_own(store, Vec::new(), false).await,
        }
    }

    /// Marks `node`'s record unhealthy, the member's call when the node's
    /// session with it broke at `since` (ms since the epoch): unless the
    /// record was written since (the node is back, through another
    /// member), a renewal that was in flight when the session broke not
    /// counted (`IN_FLIGHT`). Returns whether the record changed. The
    /// record is kept: the node writes it again when its next session
    /// opens, which marks it healthy.
    pub async fn mark_lost(store: &Namespace, node: &str, since: i64) -> Result<bool, StoreError> {
        let in_flight = i64::try_from(IN_FLIGHT.as_millis()).unwrap_or(0);
        let outcomes = store
            .write(vec![
                RegistryWrite::Lost {
                    node: node.to_owned(),
                    since: since.saturating_add(in_flight),
                }
                .statement(),
            ])
            .await?;
        Ok(outcomes.first().is_some_and(|o| o.changed > 0))
    }

    /// Deletes the records of joined nodes not renewed for `COLLECT_AFTER`
    /// (a member's job); returns how many.
    pub async fn collect(store: &Namespace) -> Result<u64, StoreError> {
        let outcomes = store
            .write(vec![Statement::new(
                COLLECT,
                vec![
                    i64::try_from(COLLECT_AFTER.as_millis())
                        .unwrap_or(i64::MAX)
                        .into(),
                ],
            )])
            .await?;
        Ok(outcomes.first().map_or(0, |o| o.changed))
    }

    /// The nodes as this node sees them, encoded for the store clients that
    /// follow a member's registry (`adopt_encoded` reads it back).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&*self.read()).expect("records always encode")
    }

    /// Takes the nodes a member sees (`encode`'s output), this node's own
    /// record kept as it is here. Returns whether the member sees this
    /// node's record otherwise (unhealthy after a mark or its TTL, older
    /// services, none): then this node writes it again.
    pub fn adopt_encoded(&self, encoded: &[u8]) -> Result<bool, String> {
        let nodes: Vec<NodeRecord> = serde_json::from_slice(encoded)
            .map_err(|e| format!("a member's registry does not decode: {e}"))?;
        let stale = {
            let current = self.read();
            let local = current.iter().find(|n| *n.id == *self.local);
            local != nodes.iter().find(|n| *n.id == *self.local)
        };
        // A member's records come without their times: any read earlier
        // (at start) would only grow stale here.
        self.renewed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.adopt(nodes);
        Ok(stale)
    }

    /// Reloads the nodes from this node's copy of the store. Returns when
    /// a record now alive runs out of its TTL, if one does: the copy must be
    /// looked at again then even if nothing is written.
    pub async fn refresh(&self, store: &Namespace) -> Result<Option<Duration>, StoreError> {
        let rows = store
            .read_stale(Statement::new(
                "SELECT node, public, services, healthy, updated_ms FROM registry__records ORDER BY node",
                vec![],
            ))
            .await?
            .rows;
        let mut nodes = Vec::with_capacity(rows.len());
        let mut renewed = BTreeMap::new();
        let now = now_ms();
        let mut next_expiry: Option<i64> = None;
        for row in rows {
            let mut it = row.into_iter();
            let id = it.next().and_then(Value::into_string).unwrap_or_default();
            let public = it.next().and_then(Value::into_string).unwrap_or_default();
            let services = it.next().and_then(Value::into_string).unwrap_or_default();
            let flagged = it.next().and_then(|v| v.as_i64()).unwrap_or_default() != 0;
            let updated_ms = it.next().and_then(|v| v.as_i64()).unwrap_or_default();
            let expires = updated_ms + TTL.as_millis() as i64;
            let healthy = flagged && now <= expires;
            if healthy {
                next_expiry = Some(next_expiry.map_or(expires, |e| e.min(expires)));
            }
            let Ok(public) = public.parse() else { continue };
            renewed.insert(id.clone(), updated_ms);
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
        *self.renewed.write().unwrap_or_else(|p| p.into_inner()) = renewed;
        self.adopt(nodes);
        Ok(next_expiry.map(|e| Duration::from_millis((e - now + 1).max(1) as u64)))
    }

    /// Takes `nodes` as the registry, but for this node's own record: it
    /// knows best what it runs, so that stays as it is in memory (a copy
    /// still catching up may hold an older one).
    fn adopt(&self, mut nodes: Vec<NodeRecord>) {
        let mut current = self.nodes.write().unwrap_or_else(|p| p.into_inner());
        let Some(local) = current.iter().find(|n| *n.id == *self.local).cloned() else {
            return;
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
    }
}

/// Records a topology node not seen yet.
const SEED: &str = "INSERT INTO registry__records (node, public, services, healthy, updated_ms)
     VALUES (?1, ?2, ?3, 0, flotilla_now()) ON CONFLICT (node) DO NOTHING";
/// A node's own record.
const UPSERT: &str = "INSERT INTO registry__records (node, public, services, healthy, updated_ms)
     VALUES (?1, ?2, ?3, ?4, flotilla_now())
     ON CONFLICT (node) DO UPDATE SET public = excluded.public, services = excluded.services,
         healthy = excluded.healthy, updated_ms = excluded.updated_ms";

/// The record of a node that joined with a token: taken only if it is new,
/// holds the same claim, or has expired (TTL, 3000 ms).
const CLAIMED: &str = "INSERT INTO registry__records (node, public, services, healthy, updated_ms, claim)
     VALUES (?1, ?2, ?3, ?4, flotilla_now(), ?5)
     ON CONFLICT (node) DO UPDATE SET public = excluded.public, services = excluded.services,
         healthy = excluded.healthy, updated_ms = excluded.updated_ms, claim = excluded.claim
     WHERE registry__records.claim = excluded.claim OR registry__records.updated_ms < flotilla_now() - 3000";
/// The records of the nodes in session with a member, renewed by it: ?1 is
/// a JSON array of `[node, claim]` pairs (a topology node's claim is '').
const RENEW: &str = "UPDATE registry__records SET updated_ms = flotilla_now()
     WHERE (node, claim) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))";
/// A node out of touch since ?2 (ms), unless renewed since.
const LOST: &str = "UPDATE registry__records SET healthy = 0
     WHERE node = ?1 AND healthy = 1 AND updated_ms <= ?2";
/// A joined node leaving for good.
const LEAVE: &str = "DELETE FROM registry__records WHERE node = ?1 AND claim = ?2";
/// The records of joined nodes gone for longer than ?1 ms.
const COLLECT: &str =
    "DELETE FROM registry__records WHERE claim != '' AND updated_ms < flotilla_now() - ?1";

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
    /// The record of a node that joined with a token, held by its claim.
    Claimed { record: NodeRecord, claim: String },
    /// A joined node deleting its record (a graceful stop).
    Leave { node: String, claim: String },
    /// A member marking a node whose session broke at `since` unhealthy,
    /// unless its record was renewed since (members only).
    Lost { node: String, since: i64 },
    /// A member renewing the records of the nodes in session with it
    /// (node, claim): their time only, not their health (members only).
    Renew { nodes: Vec<(String, String)> },
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
            RegistryWrite::Claimed { record, claim } => Statement::new(
                CLAIMED,
                vec![
                    record.id.clone().into(),
                    record.public.to_string().into(),
                    record.services.join(",").into(),
                    i64::from(record.healthy).into(),
                    claim.clone().into(),
                ],
            ),
            RegistryWrite::Leave { node, claim } => {
                Statement::new(LEAVE, vec![node.clone().into(), claim.clone().into()])
            }
            RegistryWrite::Lost { node, since } => {
                Statement::new(LOST, vec![node.clone().into(), (*since).into()])
            }
            RegistryWrite::Renew { nodes } => Statement::new(
                RENEW,
                vec![
                    serde_json::to_string(nodes)
                        .expect("pairs of strings always encode")
                        .into(),
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
        let healthy = || match statement.params.get(3)?.as_i64()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        match (statement.sql.as_str(), statement.params.len()) {
            (UPSERT, 4) => record(healthy()?).map(RegistryWrite::Own),
            (SEED, 3) => record(false).map(RegistryWrite::Seed),
            (CLAIMED, 5) => Some(RegistryWrite::Claimed {
                record: record(healthy()?)?,
                claim: text(4)?.to_owned(),
            }),
            (LEAVE, 2) => Some(RegistryWrite::Leave {
                node: text(0)?.to_owned(),
                claim: text(1)?.to_owned(),
            }),
            (LOST, 2) => Some(RegistryWrite::Lost {
                node: text(0)?.to_owned(),
                since: statement.params.get(1)?.as_i64()?,
            }),
            (RENEW, 1) => Some(RegistryWrite::Renew {
                nodes: serde_json::from_str(text(0)?).ok()?,
            }),
            _ => None,
        }
    }
}

/// The reserved namespace of the registry.
pub const NAMESPACE: &str = crate::cluster::REGISTRY_NAMESPACE;

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "nodes",
        sql: "CREATE TABLE registry__nodes (
        node TEXT PRIMARY KEY NOT NULL,
        public TEXT NOT NULL,
        services TEXT NOT NULL,
        healthy INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL
    ) STRICT;",
    },
    Migration {
        version: 2,
        name: "claims",
        // A new table rather than ADD COLUMN, whose check of a STRICT table
        // reads outside the namespace.
        sql: "CREATE TABLE registry__records (
        node TEXT PRIMARY KEY NOT NULL,
        public TEXT NOT NULL,
        services TEXT NOT NULL,
        healthy INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        claim TEXT NOT NULL DEFAULT ''
    ) STRICT;
    INSERT INTO registry__records (node, public, services, healthy, updated_ms)
        SELECT node, public, services, healthy, updated_ms FROM registry__nodes;
    DROP TABLE registry__nodes;",
    },
];

#[cfg(test)]
#[path = "registry_tests.rs"]
mod tests;
