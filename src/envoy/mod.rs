//! `flotilla gen-envoy`: a fixed Envoy bootstrap for a mode.
//!
//! - `single`: the node of a config, every route to it.
//! - `ha` and `scaled`: the topology's nodes; each service's cluster holds
//!   the nodes that run it (all members in ha).
//! - `k3d`: no fixed resources, an ADS bootstrap pointing at the xDS
//!   service; the xDS server sends the same resources, kept current. With
//!   `--sidecar`, an Envoy beside one pod's flotilla (`xds::sidecar`).
//!
//! In a cluster with TLS between nodes, `--upstream-tls DIR` makes Envoy
//! reach the nodes over TLS with the files `flotilla ca issue --envoy`
//! wrote (in k3d through its node metadata, `xds::view`), and `--xds-tls
//! DIR` the xDS server (k3d).
//!
//! The resources come from `xds::resources`, like the xDS server's, read
//! from the routing table and a registry seeded from the topology.

use std::{net::SocketAddr, path::PathBuf};

use crate::{
    catalogue::routing::RoutingTable,
    catalogue::{Catalogue, Services},
    config::Config,
    mesh::registry::{NodeRecord, Registry},
    mesh::topology::Topology,
    xds::{bootstrap, resources, sidecar},
};

/// Where a static Envoy listens for the public ingress unless told.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 10000);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Single,
    Ha,
    Scaled,
    K3d,
}

/// What `gen-envoy` was asked for (its command-line arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct Request {
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// The node's config file (--mode single).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The cluster's topology file (--mode ha and scaled).
    #[arg(long)]
    pub topology: Option<PathBuf>,
    /// The xDS server, HOST:PORT (--mode k3d): a Kubernetes Service name or
    /// an address.
    #[arg(long, default_value = "flotilla-xds:18000")]
    pub xds: String,
    /// Reach the xDS server over mutual TLS (--mode k3d; a member with
    /// `xds.tls`): the directory `flotilla ca issue --envoy` wrote, read
    /// through file-based SDS.
    #[arg(long)]
    pub xds_tls: Option<PathBuf>,
    /// Reach the nodes' public listeners over TLS (--mode ha, scaled and
    /// k3d; a cluster with TLS between nodes): the directory `flotilla ca
    /// issue --envoy` wrote, read through file-based SDS. In k3d the xDS
    /// server adds it to the clusters it sends, told where the files are by
    /// Envoy's node metadata.
    #[arg(long)]
    pub upstream_tls: Option<PathBuf>,
    /// The cluster's trust domain (with --xds-tls and --upstream-tls).
    #[arg(long, default_value = crate::tls::peer::DEFAULT_DOMAIN)]
    pub domain: String,
    /// Use incremental xDS (DELTA_GRPC) rather than state of the world
    /// (--mode k3d).
    #[arg(long)]
    pub delta: bool,
    /// Where Envoy listens for the public ingress (static modes; default
    /// 0.0.0.0:10000).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Envoy's admin interface (loopback only).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: SocketAddr,
    /// Envoy's node id.
    #[arg(long, default_value = "flotilla-envoy")]
    pub node_id: String,
    /// A sidecar's bootstrap (--mode k3d): an Envoy beside one pod's
    /// flotilla, given an inbound listener on the pod's address and an
    /// outbound one on loopback. Run it with `--service-node $(POD_NAME)`
    /// and the pod's address in its node metadata (see the file's header).
    #[arg(long)]
    pub sidecar: bool,
    /// Where the pod is reached, the port its flotilla advertises (--sidecar;
    /// default 8080).
    #[arg(long)]
    pub inbound_port: Option<u16>,
    /// Where the pod's flotilla listens on loopback (--sidecar; default 8090).
    #[arg(long)]
    pub local_port: Option<u16>,
    /// Where the pod's own calls to any service go, on loopback (--sidecar;
    /// default 15001).
    #[arg(long)]
    pub outbound_port: Option<u16>,
}

/// The bootstrap YAML, or what is wrong with the request or its inputs.
pub fn generate(request: &Request, catalogue: &Services) -> Result<String, String> {
    if !request.admin.ip().is_loopback() {
        return Err(format!(
            "--admin {} is not a loopback address: Envoy's admin interface can reconfigure and stop it, keep it on 127.0.0.1 or ::1",
            request.admin
        ));
    }
    let table = catalogue.table();
    let unused = |flag: &str, given: bool| {
        if given {
            Err(format!(
                "--{flag} is not used by --mode {}",
                mode_name(request.mode)
            ))
        } else {
            Ok(())
        }
    };
    let bootstrap = match request.mode {
        Mode::K3d => {
            unused("config", request.config.is_some())?;
            unused("topology", request.topology.is_some())?;
            // The ingress listener comes over ADS (`xds.ingress_listener`).
            unused("listen", request.listen.is_some())?;
            if !request.sidecar {
                unused("inbound-port", request.inbound_port.is_some())?;
                unused("local-port", request.local_port.is_some())?;
                unused("outbound-port", request.outbound_port.is_some())?;
            }
            let (host, port) = request
                .xds
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.trim_matches(['[', ']']), p.parse::<u16>().ok()?)))
                .filter(|(h, p)| !h.is_empty() && *p != 0)
                .ok_or_else(|| {
                    format!(
                        "--xds `{}` is not HOST:PORT (e.g. flotilla-xds:18000)",
                        request.xds
                    )
                })?;
            let mut bootstrap =
                bootstrap::ads(&request.node_id, request.admin, host, port, request.delta);
            if let Some(dir) = &request.xds_tls {
                bootstrap::ads_over_tls(&mut bootstrap, dir, &request.domain);
            }
            if request.sidecar && request.upstream_tls.is_some() {
                return Err("--upstream-tls is for the front Envoy: a sidecar reaches the other pods through their sidecars, which take plaintext".into());
            }
            if let Some(dir) = &request.upstream_tls {
                let tls = crate::xds::view::UpstreamTls {
                    dir: dir.clone(),
                    domain: request.domain.clone(),
                };
                if let Some(node) = bootstrap.node.as_mut() {
                    node.metadata
                        .get_or_insert_default()
                        .fields
                        .extend(tls.metadata());
                }
            }
            if request.sidecar {
                let ports = [
                    request
                        .inbound_port
                        .unwrap_or(sidecar::DEFAULT_INBOUND_PORT),
                    request.local_port.unwrap_or(sidecar::DEFAULT_LOCAL_PORT),
                    request
                        .outbound_port
                        .unwrap_or(sidecar::DEFAULT_OUTBOUND_PORT),
                ];
                if ports.contains(&0) || ports[1] == ports[2] || ports[1] == ports[0] {
                    return Err(format!(
                        "--inbound-port {}, --local-port {}, --outbound-port {}: a sidecar needs three ports other than 0, and its flotilla's local port apart from the other two",
                        ports[0], ports[1], ports[2]
                    ));
                }
                if let Some(node) = bootstrap.node.as_mut() {
                    node.metadata = Some(sidecar::metadata(ports[0], ports[1], ports[2]));
                }
            }
            bootstrap
        }
        _ if request.xds_tls.is_some() => {
            return Err(format!(
                "--xds-tls is for --mode k3d: in --mode {} Envoy has fixed resources and no xDS connection",
                mode_name(request.mode)
            ));
        }
        _ if !matches!(request.mode, Mode::K3d) && request.sidecar => {
            return Err(format!(
                "--sidecar is for --mode k3d: in --mode {} Envoy has fixed resources and no xDS server to give a sidecar its listeners",
                mode_name(request.mode)
            ));
        }
        Mode::Single if request.upstream_tls.is_some() => {
            return Err("--upstream-tls is for a cluster's nodes, which serve their cluster certificate to Envoy: a single node has none (terminate TLS in Envoy, or give the node tls.public and reach it directly)".into());
        }
        Mode::Single => {
            unused("topology", request.topology.is_some())?;
            unused("delta", request.delta)?;
            let path = request
                .config
                .as_ref()
                .ok_or("--mode single needs --config: the node's config file")?;
            let config = Config::load(path, catalogue).map_err(|e| e.to_string())?;
            if config.cluster.is_some() {
                return Err(format!(
                    "{} is a cluster node's config: use --mode ha or --mode scaled with its topology",
                    path.display()
                ));
            }
            let records = vec![NodeRecord {
                id: config.node_id.clone(),
                public: config.advertise,
                services: config.services.iter().map(|s| s.to_string()).collect(),
                healthy: true,
            }];
            fixed(request, table, records)?
        }
        Mode::Ha | Mode::Scaled => {
            unused("config", request.config.is_some())?;
            unused("delta", request.delta)?;
            let path = request.topology.as_ref().ok_or_else(|| {
                format!(
                    "--mode {} needs --topology: the cluster's topology file",
                    mode_name(request.mode)
                )
            })?;
            let topology = Topology::load(path, catalogue).map_err(|problems| {
                let mut text = format!("invalid topology {}:", path.display());
                for p in problems {
                    text.push_str(&format!("\n  - {}: {}", p.field, p.message));
                }
                text
            })?;
            check_layout(request.mode, &topology, catalogue, path)?;
            let records = topology
                .all()
                .map(|n| {
                    NodeRecord::from_topology(n, true).ok_or_else(|| {
                        format!(
                            "--mode {}: member `{}` has no public address in {}; a static Envoy needs every node's fixed address (give it `public:`, or use --mode k3d, where Envoy learns addresses over xDS)",
                            mode_name(request.mode),
                            n.name(),
                            path.display()
                        )
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            fixed(request, table, records)?
        }
    };
    let mut header = format!(
        "# Envoy bootstrap for flotilla's {} mode, written by `flotilla gen-envoy`.\n# Regenerate it rather than editing it.\n",
        mode_name(request.mode)
    );
    if request.sidecar {
        header.push_str(&format!(
            "# An Envoy sidecar: run it with --service-node $(POD_NAME) and the pod's\n# address in its metadata, --config-yaml '{{\"node\": {{\"metadata\": {{\"{}\": \"$(POD_IP)\"}}}}}}'.\n",
            sidecar::POD_IP
        ));
    }
    Ok(header + &bootstrap::to_yaml(&bootstrap))
}

fn fixed(
    request: &Request,
    table: &RoutingTable,
    records: Vec<NodeRecord>,
) -> Result<envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap, String> {
    let services = resources::services(table, &Registry::fixed(records));
    if let Some(empty) = services.iter().find(|s| s.endpoints.is_empty()) {
        return Err(format!(
            "service `{}` runs on no node: add it to a node's services, or Envoy would route its requests nowhere",
            empty.name
        ));
    }
    let listen = request.listen.unwrap_or(DEFAULT_LISTEN);
    let mut fixed = bootstrap::fixed(&request.node_id, request.admin, listen, &services);
    if let Some(dir) = &request.upstream_tls {
        let socket = bootstrap::to_nodes_over_tls(dir, &request.domain);
        for cluster in fixed
            .static_resources
            .iter_mut()
            .flat_map(|r| r.clusters.iter_mut())
        {
            cluster.transport_socket = Some(socket.clone());
        }
    }
    Ok(fixed)
}

/// The mode must match the topology's shape: `ha` is members running
/// everything; `scaled` is anything else that covers every service.
fn check_layout(
    mode: Mode,
    topology: &Topology,
    catalogue: &Catalogue,
    path: &std::path::Path,
) -> Result<(), String> {
    let everything = catalogue.names().count();
    let partial = topology
        .all()
        .find(|n| n.selection().services.len() != everything);
    match (mode, partial) {
        (Mode::Ha, Some(n)) => Err(format!(
            "{}: `{}` runs [{}], not every service: an ha topology runs every service on every member; use --mode scaled",
            path.display(),
            n.name(),
            n.selection().services.join(", ")
        )),
        (Mode::Scaled, None) => Err(format!(
            "{}: every node runs every service: this is an ha topology; use --mode ha",
            path.display()
        )),
        _ => Ok(()),
    }
}

pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Single => "single",
        Mode::Ha => "ha",
        Mode::Scaled => "scaled",
        Mode::K3d => "k3d",
    }
}
