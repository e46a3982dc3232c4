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

use crate::{
    auth,
    cluster::ClientPolicy,
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

fn refusal(node: &str, verb: &str, namespace: &str) -> String {
    format!(
        "node `{node}` may not {verb} namespace `{namespace}`: a store client uses its own services' namespaces only (see its services in the topology)"
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

    fn access(&self, client: &str) -> Access {
        let services: Vec<&str> = self
            .topology()
            .nodes
            .iter()
            .find(|n| n.name == client)
            .map(|n| n.selection.services.clone())
            .unwrap_or_default();
        let accounts = auth::accounts::NAMESPACE;
        let mut write: Vec<String> = services.iter().map(|s| s.to_string()).collect();
        write.push(registry::NAMESPACE.to_owned());
        write.push(auth::keys::NAMESPACE.to_owned());
        let read = if services.contains(&accounts) {
            Vec::new()
        } else {
            vec![accounts.to_owned()]
        };
        Access { write, read }
    }

    /// Whether `client` may make `write` to the registry: its own record or
    /// a seed, each as the topology gives the node.
    fn allows(&self, client: &str, write: &RegistryWrite) -> bool {
        let (record, own) = match write {
            RegistryWrite::Own(r) => (r, true),
            RegistryWrite::Seed(r) => (r, false),
        };
        let topology = self.topology();
        let Some(node) = topology.find(&record.id) else {
            return false;
        };
        let expected = NodeRecord::from_topology(node, record.healthy);
        *record == expected && (!own || record.id == client)
    }
}

impl ClientPolicy for StoreClients {
    fn read(&self, client: &str, namespace: &str) -> Result<(), String> {
        if self.access(client).may_read(namespace) {
            Ok(())
        } else {
            Err(refusal(client, "read", namespace))
        }
    }

    fn command(&self, client: &str, command: &Command) -> Result<(), String> {
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
                        "node `{client}` may write only its own registry record, as the topology gives it"
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
        let allowed = |w| p.command("kv-1", &registry(w)).is_ok();
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
            vec![Statement::new("DELETE FROM registry__nodes", vec![])],
        );
        let why = p.command("kv-1", &other_sql).unwrap_err();
        assert!(why.contains("only its own registry record"), "{why}");
    }

    #[test]
    fn a_store_client_uses_its_own_namespaces_and_reads_the_accounts() {
        let p = policy();
        assert!(p.command("kv-1", &write("kv", vec![])).is_ok());
        let why = p.command("kv-1", &write("echo", vec![])).unwrap_err();
        assert!(
            why.contains("`kv-1` may not write namespace `echo`"),
            "{why}"
        );
        assert!(p.read("kv-1", auth::accounts::NAMESPACE).is_ok());
        assert!(
            p.command("kv-1", &write(auth::accounts::NAMESPACE, vec![]))
                .is_err()
        );
        let own_schema = Command::Migrate {
            namespace: auth::accounts::NAMESPACE.into(),
            migrations: auth::accounts::MIGRATIONS
                .iter()
                .map(MigrationSpec::from)
                .collect(),
        };
        assert!(p.command("kv-1", &own_schema).is_ok());
        let other_schema = Command::Migrate {
            namespace: auth::accounts::NAMESPACE.into(),
            migrations: vec![],
        };
        assert!(p.command("kv-1", &other_schema).is_err());
        assert!(p.read("stranger", "kv").is_err());
    }
}
