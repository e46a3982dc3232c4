//! Envoy sidecars: an Envoy beside one pod's flotilla, fed over ADS like the
//! front Envoy, told apart by its node metadata (written by `gen-envoy
//! --mode k3d --sidecar`, the pod's address added from the downward API):
//!
//! - `flotilla.role: sidecar`;
//! - `flotilla.pod_ip`: the pod's address (`--config-yaml` at start);
//! - `flotilla.inbound_port`: where the pod is reached, the port its
//!   flotilla advertises;
//! - `flotilla.local_port`: where its flotilla listens, on loopback;
//! - `flotilla.outbound_port`: where the pod's own calls go, on loopback.
//!
//! A sidecar's resources are the shared snapshot's, with the front Envoy's
//! ingress listener replaced by its inbound and outbound listeners and a
//! cluster of its pod's flotilla (`Snapshot::for_sidecar`, served through
//! `view::View`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use envoy_types::pb::{
    envoy::config::core::v3::Node,
    google::protobuf::{Struct, Value, value::Kind},
};

use super::{CLUSTER, LISTENER, ROUTE, Resource, Snapshot, resources};

pub const ROLE: &str = "flotilla.role";
pub const POD_IP: &str = "flotilla.pod_ip";
pub const INBOUND_PORT: &str = "flotilla.inbound_port";
pub const LOCAL_PORT: &str = "flotilla.local_port";
pub const OUTBOUND_PORT: &str = "flotilla.outbound_port";

/// The ports a sidecar uses unless told otherwise: the pod is reached on
/// the port flotilla's public listener has elsewhere, its flotilla moves to
/// loopback beside it, and calls out go to Istio's customary port.
pub const DEFAULT_INBOUND_PORT: u16 = 8080;
pub const DEFAULT_LOCAL_PORT: u16 = 8090;
pub const DEFAULT_OUTBOUND_PORT: u16 = 15001;

/// One sidecar, as its node metadata describes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Sidecar {
    /// The pod it runs in: the node id Envoy gives (`--service-node`).
    pub pod: String,
    /// The inbound listener: the pod's address and inbound port.
    pub inbound: SocketAddr,
    /// Its flotilla's port on loopback.
    pub local_port: u16,
    /// The outbound listener, on loopback.
    pub outbound: SocketAddr,
}

/// The metadata `gen-envoy --sidecar` writes (all but the pod's address).
pub fn metadata(inbound_port: u16, local_port: u16, outbound_port: u16) -> Struct {
    let text = |s: &str| Value {
        kind: Some(Kind::StringValue(s.to_owned())),
    };
    // Ports as text: JSON numbers would print as 8080.0 in the YAML.
    let number = |n: u16| text(&n.to_string());
    Struct {
        fields: [
            (ROLE.to_owned(), text("sidecar")),
            (INBOUND_PORT.to_owned(), number(inbound_port)),
            (LOCAL_PORT.to_owned(), number(local_port)),
            (OUTBOUND_PORT.to_owned(), number(outbound_port)),
        ]
        .into_iter()
        .collect(),
    }
}

impl Sidecar {
    /// `Ok(None)` for any other client; an error names what a node that
    /// says it is a sidecar lacks.
    pub fn of(node: &Node) -> Result<Option<Sidecar>, String> {
        let Some(fields) = node.metadata.as_ref().map(|m| &m.fields) else {
            return Ok(None);
        };
        match fields.get(ROLE).and_then(|v| v.kind.as_ref()) {
            None => return Ok(None),
            Some(Kind::StringValue(role)) if role == "sidecar" => {}
            Some(other) => {
                return Err(format!(
                    "node metadata {ROLE} is {other:?}; the only role is \"sidecar\" (gen-envoy --sidecar writes it)"
                ));
            }
        }
        let bad = |key: &str, why: &str| {
            format!(
                "sidecar {}: node metadata {key} {why} (gen-envoy --sidecar writes the ports; the pod's address is given at start: --config-yaml '{{\"node\": {{\"metadata\": {{\"{POD_IP}\": \"$(POD_IP)\"}}}}}}')",
                node.id
            )
        };
        if node.id.is_empty() {
            return Err(
                "a sidecar needs a node id naming its pod (--service-node $(POD_NAME))".into(),
            );
        }
        let port = |key: &str| -> Result<u16, String> {
            match fields.get(key).and_then(|v| v.kind.as_ref()) {
                Some(Kind::NumberValue(n)) if n.fract() == 0.0 && *n >= 1.0 && *n <= 65535.0 => {
                    Ok(*n as u16)
                }
                Some(Kind::StringValue(s)) => s
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| bad(key, &format!("is `{s}`, not a port"))),
                Some(other) => Err(bad(key, &format!("is {other:?}, not a port"))),
                None => Err(bad(key, "is missing")),
            }
        };
        let ip: IpAddr = match fields.get(POD_IP).and_then(|v| v.kind.as_ref()) {
            Some(Kind::StringValue(s)) => s
                .parse()
                .map_err(|_| bad(POD_IP, &format!("is `{s}`, not an IP address")))?,
            Some(other) => return Err(bad(POD_IP, &format!("is {other:?}, not an IP address"))),
            None => return Err(bad(POD_IP, "is missing")),
        };
        if ip.is_unspecified() || ip.is_loopback() {
            return Err(bad(
                POD_IP,
                &format!("is {ip}: the pod's own address is needed, where other pods reach it"),
            ));
        }
        let (inbound, local_port, outbound) =
            (port(INBOUND_PORT)?, port(LOCAL_PORT)?, port(OUTBOUND_PORT)?);
        if local_port == outbound {
            return Err(bad(
                LOCAL_PORT,
                &format!("is {local_port}, the outbound port too: they share loopback"),
            ));
        }
        Ok(Some(Sidecar {
            pod: node.id.clone(),
            inbound: SocketAddr::new(ip, inbound),
            local_port,
            outbound: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), outbound),
        }))
    }
}

impl Snapshot {
    /// What `sidecar` is served: every service's cluster, endpoints and
    /// routes as in `self`, its own inbound and outbound listeners instead
    /// of the front Envoy's ingress listener, and its pod's cluster.
    pub fn for_sidecar(&self, sidecar: &Sidecar) -> Snapshot {
        let mut s = Snapshot {
            types: self.types.clone(),
            routes: self.routes.clone(),
        };
        if let Some(listeners) = s.types.get_mut(LISTENER) {
            listeners.remove(resources::INGRESS_LISTENER);
        }
        if let Some(routes) = &self.routes {
            s.insert(ROUTE, routes.clone());
        }
        s.insert(
            LISTENER,
            Resource::new(
                resources::OUTBOUND_LISTENER.into(),
                resources::outbound_listener(sidecar.outbound),
                true,
            ),
        );
        s.insert(
            LISTENER,
            Resource::new(
                resources::INBOUND_LISTENER.into(),
                resources::inbound_listener(sidecar.inbound),
                true,
            ),
        );
        s.insert(
            CLUSTER,
            Resource::new(
                resources::LOCAL_CLUSTER.into(),
                resources::local_cluster(sidecar.local_port),
                true,
            ),
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use envoy_types::pb::envoy::config::{
        cluster::v3::Cluster, core::v3::address, listener::v3::Listener,
    };

    use super::*;
    use crate::xds::{ENDPOINT, decode, tests::service};

    fn node(id: &str, extra: &[(&str, Value)]) -> Node {
        let mut metadata = metadata(8080, 8090, 15001);
        for (k, v) in extra {
            metadata.fields.insert((*k).to_owned(), v.clone());
        }
        Node {
            id: id.into(),
            metadata: Some(metadata),
            ..Default::default()
        }
    }

    fn text(s: &str) -> Value {
        Value {
            kind: Some(Kind::StringValue(s.into())),
        }
    }

    #[test]
    fn a_sidecar_is_known_by_its_metadata_and_its_pod() {
        let s = Sidecar::of(&node("echo-5d8f-0", &[(POD_IP, text("10.42.0.7"))]))
            .unwrap()
            .unwrap();
        assert_eq!(s.pod, "echo-5d8f-0");
        assert_eq!(s.inbound, "10.42.0.7:8080".parse().unwrap());
        assert_eq!(s.local_port, 8090);
        assert_eq!(s.outbound, "127.0.0.1:15001".parse().unwrap());
        // Envoy and gRPC clients without the role are not sidecars.
        assert_eq!(Sidecar::of(&Node::default()), Ok(None));
    }

    #[test]
    fn a_sidecar_without_its_pods_address_or_with_bad_ports_is_told_what_is_wrong() {
        let e = Sidecar::of(&node("p", &[])).unwrap_err();
        assert!(e.contains("flotilla.pod_ip is missing"), "{e}");
        assert!(e.contains("$(POD_IP)"), "{e}");
        let e = Sidecar::of(&node("p", &[(POD_IP, text("0.0.0.0"))])).unwrap_err();
        assert!(e.contains("the pod's own address"), "{e}");
        let e = Sidecar::of(&node(
            "p",
            &[(POD_IP, text("10.0.0.1")), (LOCAL_PORT, text("70000"))],
        ))
        .unwrap_err();
        assert!(
            e.contains("flotilla.local_port is `70000`, not a port"),
            "{e}"
        );
        let e = Sidecar::of(&node("p", &[(ROLE, text("gateway"))])).unwrap_err();
        assert!(e.contains("the only role"), "{e}");
        let e = Sidecar::of(&node("", &[(POD_IP, text("10.0.0.1"))])).unwrap_err();
        assert!(e.contains("--service-node"), "{e}");
    }

    #[test]
    fn a_sidecar_gets_its_own_listeners_the_same_routes_and_its_pods_cluster() {
        let shared = Snapshot::build(
            &[service("echo", &[1, 2]), service("kv", &[3])],
            Some("0.0.0.0:10000".parse().unwrap()),
        );
        let sidecar = Sidecar::of(&node("kv-1", &[(POD_IP, text("10.42.0.9"))]))
            .unwrap()
            .unwrap();
        let view = shared.for_sidecar(&sidecar);
        let listeners = view.of(LISTENER).unwrap();
        assert!(!listeners.contains_key(resources::INGRESS_LISTENER));
        let bound = |name: &str| -> String {
            let l: Listener = decode(&listeners[name]).unwrap();
            match l.address.unwrap().address.unwrap() {
                address::Address::SocketAddress(a) => {
                    format!("{}:{:?}", a.address, a.port_specifier.unwrap())
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            bound(resources::INBOUND_LISTENER),
            "10.42.0.9:PortValue(8080)"
        );
        assert_eq!(
            bound(resources::OUTBOUND_LISTENER),
            "127.0.0.1:PortValue(15001)"
        );
        // The outbound routes are the ingress's, shared, not a copy.
        assert!(Arc::ptr_eq(
            &view.of(ROUTE).unwrap()[resources::INGRESS_ROUTES],
            &shared.of(ROUTE).unwrap()[resources::INGRESS_ROUTES]
        ));
        let local: Cluster = decode(&view.of(CLUSTER).unwrap()[resources::LOCAL_CLUSTER]).unwrap();
        assert_eq!(local.name, resources::LOCAL_CLUSTER);
        for t in [CLUSTER, ENDPOINT] {
            for (name, r) in shared.of(t).unwrap() {
                assert!(Arc::ptr_eq(r, &view.of(t).unwrap()[name]), "{t} {name}");
            }
        }
        // Without a front ingress on this server, a sidecar still gets the
        // routes its outbound listener names.
        let no_ingress = Snapshot::build(&[service("echo", &[1])], None);
        assert!(
            no_ingress
                .of(ROUTE)
                .unwrap()
                .get(resources::INGRESS_ROUTES)
                .is_none()
        );
        assert!(
            no_ingress
                .for_sidecar(&sidecar)
                .get(ROUTE, resources::INGRESS_ROUTES)
                .is_some()
        );
    }
}
