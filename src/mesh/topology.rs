//! The topology file shared by the nodes of a cluster: which node runs
//! which services at which fixed addresses.
//!
//! ```yaml
//! members:   # the `db` role: Raft voters, each with its own copy
//!   - {id: 1, node: db-1, peer: "127.0.0.1:7301", public: "127.0.0.1:8301", services: [db]}
//! nodes:     # service-only nodes: clients of the members' database
//!   - {node: kv-1, public: "127.0.0.1:8311", services: [kv]}
//! ```
//!
//! A member without `services` runs everything (`[all]`, the HA layout).
//! The nodes' own configs, `gen-envoy` and the registry's seed all read
//! this one file.
//!
//! A member's `peer` may be a DNS name (`flotilla-db-0.flotilla-db:7070`,
//! a StatefulSet pod), resolved again at every connection, so a member
//! rescheduled under a new IP is found again. Its `public` may then be
//! left out: the member records its own advertised address when it starts
//! (Kubernetes gives the pod's IP only then). Nodes that join with a join
//! token (`cluster.join_token`) are not listed at all.

use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

use crate::catalogue::Catalogue;

/// One thing wrong with a config or topology file, and where (the field's
/// path in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub field: String,
    pub message: String,
}

/// The alias that selects every service in the catalogue and every role.
pub const ALL: &str = "all";
/// The xDS management server's role: run by `all`, or named on its own.
pub const XDS: &str = "xds";
/// The database role: a Raft voter holding a copy of the store. Run by
/// `all`, or named on its own. A node of a cluster without it is a client
/// of the members' database.
pub const DB: &str = "db";

/// What a list of service names selects.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Services from the catalogue, in catalogue order, each once.
    pub services: Vec<&'static str>,
    pub xds: bool,
    pub db: bool,
}

impl Selection {
    /// Resolves `names` against the catalogue; unknown names are returned
    /// as messages that list the valid ones.
    pub fn resolve(names: &[String], catalogue: &Catalogue) -> (Selection, Vec<String>) {
        let mut picked = Vec::new();
        let mut selection = Selection::default();
        let mut unknown = Vec::new();
        for name in names {
            match name.as_str() {
                ALL => {
                    picked.extend(catalogue.names());
                    selection.xds = true;
                    selection.db = true;
                }
                XDS => selection.xds = true,
                DB => selection.db = true,
                _ => match catalogue.names().find(|n| n == name) {
                    Some(known) => picked.push(known),
                    None => unknown.push(format!(
                        "unknown service `{name}`; valid names: {}",
                        valid_names(catalogue)
                    )),
                },
            }
        }
        selection.services = catalogue.names().filter(|n| picked.contains(n)).collect();
        (selection, unknown)
    }
}

/// The names a selection may use.
pub fn valid_names(catalogue: &Catalogue) -> String {
    let mut names = vec![ALL.to_owned()];
    names.extend(catalogue.names().map(str::to_owned));
    names.push(DB.to_owned());
    names.push(XDS.to_owned());
    names.join(", ")
}

/// A `db` member: a Raft voter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Stable Raft id; never derived from an address.
    pub id: u64,
    pub name: String,
    /// `host:port`: an IP address or a DNS name.
    pub peer: String,
    /// Where its public listener is reached, when fixed in advance.
    pub public: Option<SocketAddr>,
    pub selection: Selection,
}

/// A node without the `db` role: a client of the members' database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientNode {
    pub name: String,
    pub public: SocketAddr,
    pub selection: Selection,
}

/// A validated topology.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    pub members: Vec<Member>,
    pub nodes: Vec<ClientNode>,
}

/// One node of the topology, member or client.
#[derive(Clone, Copy, Debug)]
pub enum NodeRef<'a> {
    Member(&'a Member),
    Client(&'a ClientNode),
}

impl NodeRef<'_> {
    pub fn name(&self) -> &str {
        match self {
            NodeRef::Member(m) => &m.name,
            NodeRef::Client(c) => &c.name,
        }
    }
    /// Its public address, when the topology fixes it.
    pub fn public(&self) -> Option<SocketAddr> {
        match self {
            NodeRef::Member(m) => m.public,
            NodeRef::Client(c) => Some(c.public),
        }
    }
    pub fn selection(&self) -> &Selection {
        match self {
            NodeRef::Member(m) => &m.selection,
            NodeRef::Client(c) => &c.selection,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    members: Vec<RawMember>,
    #[serde(default)]
    nodes: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: u64,
    node: String,
    peer: String,
    public: Option<String>,
    services: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    node: String,
    public: String,
    services: Vec<String>,
}

impl Topology {
    /// Every node, members first, in file order.
    pub fn all(&self) -> impl Iterator<Item = NodeRef<'_>> {
        self.members
            .iter()
            .map(NodeRef::Member)
            .chain(self.nodes.iter().map(NodeRef::Client))
    }

    pub fn find(&self, name: &str) -> Option<NodeRef<'_>> {
        self.all().find(|n| n.name() == name)
    }

    /// Reads and validates the topology at `path`; every problem names its
    /// place in the file.
    pub fn load(path: &Path, catalogue: &Catalogue) -> Result<Topology, Vec<Problem>> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            vec![Problem {
                field: name.clone(),
                message: format!("cannot read the topology: {e}"),
            }]
        })?;
        Topology::parse(&text, &name, catalogue)
    }

    /// Validates topology text; `name` prefixes the fields in problems.
    pub fn parse(text: &str, name: &str, catalogue: &Catalogue) -> Result<Topology, Vec<Problem>> {
        let mut problems = Vec::new();
        let mut add = |field: String, message: String| problems.push(Problem { field, message });
        let raw: RawTopology = serde_yaml_ng::from_str(text).map_err(|e| {
            vec![Problem {
                field: name.to_owned(),
                message: format!("the topology is invalid: {e}"),
            }]
        })?;
        let resolve = |here: &str, names: &[String], add: &mut dyn FnMut(String, String)| {
            let (selection, unknown) = Selection::resolve(names, catalogue);
            for message in unknown {
                add(format!("{here}.services"), message);
            }
            if names.is_empty() {
                add(
                    format!("{here}.services"),
                    "is empty: list what this node runs".into(),
                );
            }
            selection
        };
        let mut members = Vec::new();
        for (i, m) in raw.members.iter().enumerate() {
            let here = format!("{name}: members[{i}]");
            let names = m.services.clone().unwrap_or_else(|| vec![ALL.to_owned()]);
            let selection = resolve(&here, &names, &mut add);
            if !selection.db {
                add(
                    format!("{here}.services"),
                    "members are the database's voters: add `db` (or use `all`), or list the node under `nodes`".into(),
                );
            }
            if m.id == 0 {
                add(
                    format!("{here}.id"),
                    "ids start at 1 (and never derive from an address)".into(),
                );
            }
            check_name(&here, &m.node, &mut add);
            let peer = peer_address(&here, &m.peer, &mut add);
            let public = match &m.public {
                Some(p) => address(&here, "public", p, &mut add).map(Some),
                None => Some(None),
            };
            if let (Some(peer), Some(public)) = (peer, public) {
                members.push(Member {
                    id: m.id,
                    name: m.node.clone(),
                    peer,
                    public,
                    selection,
                });
            }
        }
        let mut nodes = Vec::new();
        for (i, n) in raw.nodes.iter().enumerate() {
            let here = format!("{name}: nodes[{i}]");
            let selection = resolve(&here, &n.services, &mut add);
            if selection.db {
                add(
                    format!("{here}.services"),
                    "a node with the `db` role is a voter: list it under `members` with a Raft id"
                        .into(),
                );
            }
            check_name(&here, &n.node, &mut add);
            if let Some(public) = address(&here, "public", &n.public, &mut add) {
                nodes.push(ClientNode {
                    name: n.node.clone(),
                    public,
                    selection,
                });
            }
        }
        let topology = Topology { members, nodes };
        let everyone: Vec<NodeRef> = topology.all().collect();
        for (i, n) in everyone.iter().enumerate() {
            for other in &everyone[..i] {
                if other.name() == n.name()
                    || (other.public().is_some() && other.public() == n.public())
                {
                    add(
                        format!("{name}: members"),
                        format!(
                            "`{}` and `{}` share a name or a public address",
                            other.name(),
                            n.name()
                        ),
                    );
                }
            }
        }
        for (i, m) in topology.members.iter().enumerate() {
            for other in &topology.members[..i] {
                if other.id == m.id || other.peer == m.peer {
                    add(
                        format!("{name}: members"),
                        format!(
                            "`{}` and `{}` share an id or a peer address",
                            other.name, m.name
                        ),
                    );
                }
            }
        }
        match topology.members.len() {
            0 => add(
                format!("{name}: members"),
                "the topology has no members: a cluster needs 1 or 3+ `db` voters".into(),
            ),
            2 => add(
                format!("{name}: members"),
                "two voters cannot tolerate the loss of either: use 1 (no fault tolerance) or 3 or more".into(),
            ),
            _ => {}
        }
        if problems.is_empty() {
            Ok(topology)
        } else {
            Err(problems)
        }
    }
}

fn check_name(here: &str, node: &str, add: &mut dyn FnMut(String, String)) {
    if !valid_node_id(node) {
        add(
            format!("{here}.node"),
            format!("`{node}` is not a valid node id: use 1-63 characters of a-z, 0-9 and '-'"),
        );
    }
}

/// A member's peer address: `IP:port`, or `name:port` with a DNS name
/// (resolved at each connection).
fn peer_address(here: &str, value: &str, add: &mut dyn FnMut(String, String)) -> Option<String> {
    if value.parse::<SocketAddr>().is_ok() {
        return address(here, "peer", value, add).map(|a| a.to_string());
    }
    let bad = |why: &str| format!("`{value}` is not an IP:port or DNS-name:port address ({why})");
    let Some((host, port)) = value.rsplit_once(':') else {
        add(format!("{here}.peer"), bad("no port"));
        return None;
    };
    if !matches!(port.parse::<u16>(), Ok(p) if p != 0) {
        add(format!("{here}.peer"), bad("the port is not 1 to 65535"));
        return None;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.len() > 253 || !host.split('.').all(label_ok) {
        add(format!("{here}.peer"), bad("the host is not a DNS name"));
        return None;
    }
    Some(value.to_owned())
}

fn address(
    here: &str,
    field: &str,
    value: &str,
    add: &mut dyn FnMut(String, String),
) -> Option<SocketAddr> {
    match value.parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 && !a.ip().is_unspecified() => Some(a),
        Ok(a) => {
            add(
                format!("{here}.{field}"),
                format!("{a} is not an address others can reach: give a fixed IP and port"),
            );
            None
        }
        Err(e) => {
            add(
                format!("{here}.{field}"),
                format!("`{value}` is not an IP:port address ({e})"),
            );
            None
        }
    }
}

/// Node ids: 1-63 characters of a-z, 0-9 and '-', starting with a letter or
/// digit (they end up in DNS names, metrics and Envoy hostnames).
pub fn valid_node_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology, Vec<Problem>> {
        Topology::parse(text, "t.yaml", &Catalogue::builtin())
    }

    #[test]
    fn members_default_to_everything_and_nodes_are_clients() {
        let t = parse(
            "members:
  - {id: 1, node: a, peer: '127.0.0.1:7001', public: '127.0.0.1:8001'}
nodes:
  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}
",
        )
        .unwrap();
        assert!(t.members[0].selection.db && t.members[0].selection.xds);
        assert!(t.members[0].selection.services.contains(&"kv"));
        assert_eq!(t.nodes[0].selection.services, vec!["kv"]);
        assert!(!t.nodes[0].selection.db);
        assert_eq!(t.find("kv-1").unwrap().public().unwrap().port(), 8011);
    }

    #[test]
    fn inconsistent_topologies_are_refused_naming_the_place() {
        let problems = parse(
            "members:
  - {id: 1, node: a, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [kv]}
  - {id: 1, node: b, peer: '127.0.0.1:7002', public: '127.0.0.1:8002'}
nodes:
  - {node: a, public: '127.0.0.1:8011', services: [db, nosuch]}
  - {node: c, public: '0.0.0.0:8012', services: [echo]}
",
        )
        .unwrap_err();
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        let has = |needle: &str| text.iter().any(|t| t.contains(needle));
        assert!(
            has("members[0].services: members are the database's voters"),
            "{text:?}"
        );
        assert!(
            has("nodes[1].public: 0.0.0.0:8012 is not an address"),
            "{text:?}"
        );
        assert!(has("share an id"), "{text:?}");
        assert!(
            has("nodes[0].services: unknown service `nosuch`"),
            "{text:?}"
        );
        assert!(
            has("nodes[0].services: a node with the `db` role is a voter"),
            "{text:?}"
        );
        assert!(has("share a name"), "{text:?}");
        assert!(has("two voters cannot tolerate"), "{text:?}");
    }

    #[test]
    fn members_may_be_named_by_dns_and_register_their_own_address() {
        let t = parse(
            "members:
  - {id: 1, node: flotilla-db-0, peer: 'flotilla-db-0.flotilla-db.flotilla.svc.cluster.local:7070', services: [db, xds]}
",
        )
        .unwrap();
        assert_eq!(
            t.members[0].peer,
            "flotilla-db-0.flotilla-db.flotilla.svc.cluster.local:7070"
        );
        assert_eq!(t.members[0].public, None);
        for (peer, why) in [
            ("db_0.example:7070", "not a DNS name"),
            ("db-0.example", "no port"),
            ("db-0.example:0", "not 1 to 65535"),
            ("-db.example:7070", "not a DNS name"),
        ] {
            let problems = parse(&format!(
                "members:\n  - {{id: 1, node: a, peer: '{peer}'}}\n"
            ))
            .unwrap_err();
            assert!(
                problems
                    .iter()
                    .any(|p| p.field.ends_with("members[0].peer") && p.message.contains(why)),
                "{peer}: {problems:?}"
            );
        }
    }
}
