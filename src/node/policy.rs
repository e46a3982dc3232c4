//! What a store client may do with the db members' database: the policy a
//! member's cluster asks for every call of a node without the `db` role.
//!
//! A store client uses its own services' namespaces, and the system ones
//! every node works with: it records itself in the registry and keeps the
//! signing keys (`registry`, `auth`), and it checks credentials against the
//! accounts, which only a node running the `accounts` service may change
//! (another may migrate them, to this binary's own schema only). In the
//! registry it may write only its own record, and seeds of topology nodes,
//! each exactly as the topology gives it: anything else could send other
//! nodes' traffic elsewhere.
//!
//! A node that joined with a join token is not in the topology: its
//! services are the token's scope, and its record is one it holds by its
//! claim (see `registry`), under a name no topology node has, with no
//! service outside the scope.

use crate::{
    auth,
    cluster::{ClientPolicy, StoreClient},
    mesh::{
        registry::{self, NodeRecord, RegistryWrite},
        topology::Topology,
    },
    store::{Command, Migration, MigrationSpec},
};

pub struct StoreClients {
    /// Replaced when the topology file changes (see `node::follow_topology`).
    topology: std::sync::RwLock<Topology>,
}

/// The namespaces one store client may use.
struct Access {
    /// Written (and migrated, and read).
    write: Vec<String>,
    /// Read, and migrated to this binary's own schema only.
    read: Vec<String>,
}

impl Access {
    fn may_write(&self, namespace: &str) -> bool {
        self.write.iter().any(|n| n == namespace)
    }

    fn may_read(&self, namespace: &str) -> bool {
        self.may_write(namespace) || self.read.iter().any(|n| n == namespace)
    }
}

fn refusal(client: &StoreClient, verb: &str, namespace: &str) -> String {
    let node = &client.node;
    let whose = match &client.scope {
        Some(scope) => format!("its join token names {}", scope.join(", ")),
        None => "see its services in the topology".to_owned(),
    };
    format!(
        "node `{node}` may not {verb} namespace `{namespace}`: a store client uses its own services' namespaces only ({whose})"
    )
}

/// Whether `migrations` are exactly this binary's own for `namespace` (the
/// system namespaces every node migrates at start).
fn is_builtin_schema(namespace: &str, migrations: &[MigrationSpec]) -> bool {
    let own: &[Migration] = match namespace {
        auth::accounts::NAMESPACE => auth::accounts::MIGRATIONS,
        _ => return false,
    };
    own.len() == migrations.len()
        && own
            .iter()
            .zip(migrations)
            .all(|(o, m)| MigrationSpec::from(o) == *m)
}

impl StoreClients {
    pub fn new(topology: Topology) -> StoreClients {
        StoreClients {
            topology: std::sync::RwLock::new(topology),
        }
    }

    /// Follows a changed topology from now on.
    pub fn set(&self, topology: Topology) {
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = topology;
    }

    fn topology(&self) -> std::sync::RwLockReadGuard<'_, Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner())
    }

    fn access(&self, client: &StoreClient) -> Access {
        let services: Vec<String> = match &client.scope {
            Some(scope) => scope.clone(),
            None => self
                .topology()
                .nodes
                .iter()
                .find(|n| n.name == client.node)
                .map(|n| n.selection.services.iter().map(|s| s.to_string()).collect())
                .unwrap_or_default(),
        };
        let accounts = auth::accounts::NAMESPACE;
        let mut write = services.clone();
        write.push(registry::NAMESPACE.to_owned());
        write.push(auth::keys::NAMESPACE.to_owned());
        let read = if services.iter().any(|s| s == accounts) {
            Vec::new()
        } else {
            vec![accounts.to_owned()]
        };
        Access { write, read }
    }

    /// Whether `client` may make `write` to the registry: a topology node
    /// its own record or a seed, each as the topology gives the node; a
    /// joined node its own claimed record, within its scope.
    fn allows(&self, client: &StoreClient, write: &RegistryWrite) -> bool {
        let topology = self.topology();
        match (&client.scope, write) {
            (None, RegistryWrite::Own(record) | RegistryWrite::Seed(record)) => {
                let own = matches!(write, RegistryWrite::Own(_));
                let Some(node) = topology.find(&record.id) else {
                    return false;
                };
                NodeRecord::from_topology(node, record.healthy).as_ref() == Some(record)
                    && (!own || record.id == client.node)
            }
            (Some(scope), RegistryWrite::Claimed { record, claim }) => {
                record.id == client.node
                    && claim.len() >= 32
                    && topology.find(&record.id).is_none()
                    && record.services.iter().all(|s| scope.contains(s))
            }
            (Some(_), RegistryWrite::Leave { node, claim }) => {
                *node == client.node && !claim.is_empty()
            }
            _ => false,
        }
    }
}

impl ClientPolicy for StoreClients {
    fn read(&self, client: &StoreClient, namespace: &str) -> Result<(), String> {
        if self.access(client).may_read(namespace) {
            Ok(())
        } else {
            Err(refusal(client, "read", namespace))
        }
    }

    fn command(&self, client: &StoreClient, command: &Command) -> Result<(), String> {
        let access = self.access(client);
        match command {
            Command::Write { namespace, .. } if !access.may_write(namespace) => {
                Err(refusal(client, "write", namespace))
            }
            Command::Write {
                namespace,
                statements,
                ..
            } if namespace == registry::NAMESPACE => {
                let own = statements
                    .iter()
                    .all(|st| RegistryWrite::parse(st).is_some_and(|w| self.allows(client, &w)));
                if own {
                    Ok(())
                } else {
                    Err(format!(
                        "node `{}` may write only its own registry record, as the topology or its join token gives it",
                        client.node
                    ))
                }
            }
            Command::Write { .. } => Ok(()),
            Command::Migrate {
                namespace,
                migrations,
            } => {
                if access.may_write(namespace)
                    || (access.may_read(namespace) && is_builtin_schema(namespace, migrations))
                {
                    Ok(())
                } else {
                    Err(refusal(client, "migrate", namespace))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Statement, WriteBudget};

    fn policy() -> StoreClients {
        StoreClients::new(
            Topology::parse(
                "members:\n  - {id: 1, node: db-1, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [db]}\nnodes:\n  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}\n  - {node: echo-1, public: '127.0.0.1:8021', services: [echo]}\n",
                "t.yaml",
                &crate::catalogue::Catalogue::builtin(),
            )
            .unwrap(),
        )
    }

    fn named(node: &str) -> StoreClient {
        StoreClient {
            node: node.into(),
            scope: None,
        }
    }

    fn joined(node: &str, scope: &[&str]) -> StoreClient {
        StoreClient {
            node: node.into(),
            scope: Some(scope.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn write(namespace: &str, statements: Vec<Statement>) -> Command {
        Command::Write {
            namespace: namespace.into(),
            statements,
            budget: WriteBudget::UNLIMITED,
        }
    }

    fn record(id: &str, public: &str, services: &[&str], healthy: bool) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public: public.parse().unwrap(),
            services: services.iter().map(|s| s.to_string()).collect(),
            healthy,
        }
    }

    #[test]
    fn a_store_client_writes_only_its_own_record_as_the_topology_gives_it() {
        let p = policy();
        let registry = |w: RegistryWrite| write(registry::NAMESPACE, vec![w.statement()]);
        let allowed = |w| p.command(&named("kv-1"), &registry(w)).is_ok();
        assert!(allowed(RegistryWrite::Own(record(
            "kv-1",
            "127.0.0.1:8011",
            &["kv"],
            true
        ))));
        assert!(allowed(RegistryWrite::Own(record(
            "kv-1",
            "127.0.0.1:8011",
            &["kv"],
            false
        ))));
        for refused in [
            RegistryWrite::Own(record("echo-1", "127.0.0.1:8021", &["echo"], true)),
            RegistryWrite::Own(record("kv-1", "127.0.0.1:9999", &["kv"], true)),
            RegistryWrite::Own(record("kv-1", "127.0.0.1:8011", &["kv", "echo"], true)),
            RegistryWrite::Own(record("evil-1", "127.0.0.1:8011", &["kv"], true)),
            RegistryWrite::Seed(record("echo-1", "127.0.0.1:1", &["echo"], false)),
            // Marking a node lost is the members' call, not a client's,
            // even for itself.
            RegistryWrite::Lost {
                node: "echo-1".into(),
                since: i64::MAX,
            },
            RegistryWrite::Lost {
                node: "kv-1".into(),
                since: 0,
            },
        ] {
            assert!(!allowed(refused.clone()), "{refused:?} was allowed");
        }
        assert!(allowed(RegistryWrite::Seed(record(
            "echo-1",
            "127.0.0.1:8021",
            &["echo"],
            false
        ))));
        let other_sql = write(
            registry::NAMESPACE,
            vec![Statement::new("DELETE FROM registry__records", vec![])],
        );
        let why = p.command(&named("kv-1"), &other_sql).unwrap_err();
        assert!(why.contains("only its own registry record"), "{why}");
    }

    #[test]
    fn a_store_client_uses_its_own_namespaces_and_reads_the_accounts() {
        let p = policy();
        assert!(p.command(&named("kv-1"), &write("kv", vec![])).is_ok());
        let why = p
            .command(&named("kv-1"), &write("echo", vec![]))
            .unwrap_err();
        assert!(
            why.contains("`kv-1` may not write namespace `echo`"),
            "{why}"
        );
        assert!(p.read(&named("kv-1"), auth::accounts::NAMESPACE).is_ok());
        assert!(
            p.command(&named("kv-1"), &write(auth::accounts::NAMESPACE, vec![]))
                .is_err()
        );
        let own_schema = Command::Migrate {
            namespace: auth::accounts::NAMESPACE.into(),
            migrations: auth::accounts::MIGRATIONS
                .iter()
                .map(MigrationSpec::from)
                .collect(),
        };
        assert!(p.command(&named("kv-1"), &own_schema).is_ok());
        let other_schema = Command::Migrate {
            namespace: auth::accounts::NAMESPACE.into(),
            migrations: vec![],
        };
        assert!(p.command(&named("kv-1"), &other_schema).is_err());
        assert!(p.read(&named("stranger"), "kv").is_err());
    }

    /// A node that joined with an `echo` token: its own claimed record and
    /// the echo namespace, nothing of another node, service or the topology.
    #[test]
    fn a_joined_node_keeps_to_its_token_and_its_claim() {
        let p = policy();
        let me = joined("echo-7f9c", &["echo"]);
        let claim = "0123456789abcdef0123456789abcdef".to_owned();
        let registry = |w: RegistryWrite| write(registry::NAMESPACE, vec![w.statement()]);
        let allowed = |w| p.command(&me, &registry(w)).is_ok();
        let claimed = |id: &str, services: &[&str], claim: &str| RegistryWrite::Claimed {
            record: record(id, "10.42.0.7:8080", services, true),
            claim: claim.into(),
        };
        assert!(allowed(claimed("echo-7f9c", &["echo"], &claim)));
        assert!(allowed(RegistryWrite::Leave {
            node: "echo-7f9c".into(),
            claim: claim.clone()
        }));
        for refused in [
            claimed("echo-other", &["echo"], &claim),
            claimed("echo-7f9c", &["echo", "kv"], &claim),
            claimed("echo-7f9c", &["echo"], "short"),
            RegistryWrite::Own(record("echo-7f9c", "10.42.0.7:8080", &["echo"], true)),
            RegistryWrite::Leave {
                node: "echo-other".into(),
                claim: claim.clone(),
            },
        ] {
            assert!(!allowed(refused.clone()), "{refused:?} was allowed");
        }
        // A topology node's name is not for a joined node to take.
        let posing = joined("echo-1", &["echo"]);
        assert!(
            p.command(
                &posing,
                &registry(RegistryWrite::Claimed {
                    record: record("echo-1", "127.0.0.1:8021", &["echo"], true),
                    claim: claim.clone()
                })
            )
            .is_err()
        );
        assert!(p.command(&me, &write("echo", vec![])).is_ok());
        let why = p.command(&me, &write("kv", vec![])).unwrap_err();
        assert!(why.contains("its join token names echo"), "{why}");
        assert!(p.read(&me, auth::accounts::NAMESPACE).is_ok());
        assert!(
            p.command(&me, &write(auth::accounts::NAMESPACE, vec![]))
                .is_err()
        );
    }
}
