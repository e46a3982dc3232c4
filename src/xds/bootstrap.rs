//! Envoy bootstraps, as Envoy's own `Bootstrap` message, and their YAML.
//!
//! - `ads`: an Envoy fed over ADS: a node id, the admin interface, one
//!   static cluster (HTTP/2) to the xDS server; listeners, routes,
//!   clusters and endpoints all come over ADS (`gen-envoy --mode k3d`).
//! - `fixed`: an Envoy with static resources: the ingress listener with the
//!   routing table inline and one cluster per service with the topology's
//!   addresses (`gen-envoy --mode single|ha|scaled`).
//!
//! Both use the resource builders of `resources`, so the xDS server and
//! the generated files cannot drift apart. YAML is rendered from the
//! message through a descriptor set of Envoy's API (compiled from the
//! `.proto` files envoy-types ships; see build.rs) in proto3's JSON mapping
//! with proto field names, which is what Envoy reads.

use std::{net::SocketAddr, sync::LazyLock};

use envoy_types::pb::envoy::config::{
    bootstrap::v3::{
        Admin, Bootstrap,
        bootstrap::{DynamicResources, StaticResources},
    },
    cluster::v3::{
        Cluster,
        cluster::{ClusterDiscoveryType, DiscoveryType},
    },
    core::v3::{
        AggregatedConfigSource, ApiConfigSource, ApiVersion, ConfigSource, GrpcService, Node,
        api_config_source::ApiType, config_source::ConfigSourceSpecifier, grpc_service::EnvoyGrpc,
        grpc_service::TargetSpecifier,
    },
};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::resources::{self, ServiceView};

/// The Envoy API messages a generated bootstrap can hold.
static ENVOY_API: LazyLock<DescriptorPool> = LazyLock::new(|| {
    DescriptorPool::decode(
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin")).as_ref(),
    )
    .expect("the descriptor set compiled by build.rs decodes")
});

/// The cluster name of the xDS server in an ADS bootstrap.
pub const XDS_CLUSTER: &str = "xds";

fn ads_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

fn admin(addr: SocketAddr) -> Admin {
    Admin {
        address: Some(resources::socket_address(addr)),
        ..Default::default()
    }
}

fn node(id: &str) -> Node {
    Node {
        id: id.to_owned(),
        cluster: "flotilla".into(),
        ..Default::default()
    }
}

/// A bootstrap for an Envoy fed over ADS by the xDS server at `xds_host`
/// (an IP or a DNS name, as in Kubernetes) and `xds_port`. `delta`:
/// incremental xDS (`DELTA_GRPC`); otherwise state of the world.
pub fn ads(
    node_id: &str,
    admin_addr: SocketAddr,
    xds_host: &str,
    xds_port: u16,
    delta: bool,
) -> Bootstrap {
    let mut xds = resources::http2_cluster(XDS_CLUSTER, &[(xds_host.to_owned(), xds_port)]);
    // A name is resolved (and re-resolved) by DNS: a Kubernetes Service.
    if xds_host.parse::<std::net::IpAddr>().is_err() {
        xds.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    }
    Bootstrap {
        node: Some(node(node_id)),
        admin: Some(admin(admin_addr)),
        dynamic_resources: Some(DynamicResources {
            ads_config: Some(ApiConfigSource {
                api_type: if delta {
                    ApiType::DeltaGrpc
                } else {
                    ApiType::Grpc
                } as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(TargetSpecifier::EnvoyGrpc(EnvoyGrpc {
                        cluster_name: XDS_CLUSTER.into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            cds_config: Some(ads_source()),
            lds_config: Some(ads_source()),
            ..Default::default()
        }),
        static_resources: Some(StaticResources {
            clusters: vec![xds],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The SDS resources `flotilla ca issue` writes: Envoy's certificate, the
/// cluster's CA bundle (each file holding one resource of that name).
pub const SDS_CERT: &str = "flotilla-envoy-cert";
pub const SDS_CA: &str = "flotilla-ca";
pub const SDS_CERT_FILE: &str = "sds-cert.yaml";
pub const SDS_CA_FILE: &str = "sds-ca.yaml";

/// Envoy's side of TLS to flotilla: it presents the certificate `flotilla
/// ca issue --envoy NAME --out DIR` wrote in `dir` and trusts the CA bundle
/// beside it, both through file-based SDS (taken again when files are
/// renamed into `dir`, as `ca issue --renew` does), and takes a server whose
/// certificate names one of `roles` (`member`, `client`) in trust domain
/// `domain`. `sni`: the name asked for.
fn tls_to_flotilla(
    dir: &std::path::Path,
    domain: &str,
    roles: &[&str],
    sni: Option<&str>,
) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    use envoy_types::pb::envoy::{
        config::core::v3::{PathConfigSource, TransportSocket, WatchedDirectory, transport_socket},
        extensions::transport_sockets::tls::v3::{
            CertificateValidationContext, CommonTlsContext, SdsSecretConfig, SubjectAltNameMatcher,
            UpstreamTlsContext,
            common_tls_context::{CombinedCertificateValidationContext, ValidationContextType},
            subject_alt_name_matcher::SanType,
        },
        r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern},
    };
    let sds = |name: &str, file: &str| SdsSecretConfig {
        name: name.to_owned(),
        sds_config: Some(ConfigSource {
            resource_api_version: ApiVersion::V3 as i32,
            config_source_specifier: Some(ConfigSourceSpecifier::PathConfigSource(
                PathConfigSource {
                    path: dir.join(file).display().to_string(),
                    watched_directory: Some(WatchedDirectory {
                        path: dir.display().to_string(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    };
    let tls = UpstreamTlsContext {
        sni: sni.unwrap_or_default().to_owned(),
        common_tls_context: Some(CommonTlsContext {
            alpn_protocols: vec!["h2".into()],
            tls_certificate_sds_secret_configs: vec![sds(SDS_CERT, SDS_CERT_FILE)],
            validation_context_type: Some(ValidationContextType::CombinedValidationContext(
                CombinedCertificateValidationContext {
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names: roles
                            .iter()
                            .map(|role| SubjectAltNameMatcher {
                                san_type: SanType::Uri as i32,
                                matcher: Some(StringMatcher {
                                    match_pattern: Some(MatchPattern::Prefix(format!(
                                        "spiffe://{domain}/{role}/"
                                    ))),
                                    ..Default::default()
                                }),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(SDS_CA, SDS_CA_FILE)),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(
            envoy_types::util::pack_any(tls),
        )),
    }
}

/// Makes `bootstrap`'s connection to the xDS server mutual TLS with the
/// files in `dir` (`tls_to_flotilla`), taking only a db member of trust
/// domain `domain` as the server.
pub fn ads_over_tls(bootstrap: &mut Bootstrap, dir: &std::path::Path, domain: &str) {
    let socket = tls_to_flotilla(dir, domain, &["member"], None);
    for cluster in bootstrap
        .static_resources
        .iter_mut()
        .flat_map(|r| r.clusters.iter_mut())
        .filter(|c| c.name == XDS_CLUSTER)
    {
        cluster.transport_socket = Some(socket.clone());
    }
}

/// TLS from Envoy to the nodes' public listeners with the files in `dir`:
/// it names the trust domain (SNI), for which a node serves its cluster
/// certificate, and takes any node of the cluster (member or store
/// client) as the server.
pub fn to_nodes_over_tls(
    dir: &std::path::Path,
    domain: &str,
) -> envoy_types::pb::envoy::config::core::v3::TransportSocket {
    tls_to_flotilla(dir, domain, &["member", "client"], Some(domain))
}

/// The ADS bootstrap as YAML (the Envoy tests and the convergence bench).
pub fn ads_bootstrap(node_id: &str, admin: SocketAddr, xds: SocketAddr, delta: bool) -> String {
    to_yaml(&ads(
        node_id,
        admin,
        &xds.ip().to_string(),
        xds.port(),
        delta,
    ))
}

/// A bootstrap with static resources: the ingress on `listen` with every
/// service's routes inline, and one cluster per service over its
/// instances (all taken as healthy: Envoy's active health checks decide).
pub fn fixed(
    node_id: &str,
    admin_addr: SocketAddr,
    listen: SocketAddr,
    services: &[ServiceView],
) -> Bootstrap {
    let clusters: Vec<Cluster> = services
        .iter()
        .map(|s| resources::service_cluster(s, false))
        .collect();
    Bootstrap {
        node: Some(node(node_id)),
        admin: Some(admin(admin_addr)),
        static_resources: Some(StaticResources {
            listeners: vec![resources::static_ingress_listener(
                listen,
                resources::ingress_routes(services),
            )],
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `bootstrap` as Envoy reads it: YAML in proto3's JSON mapping, with
/// proto field names, default values left out, keys in a stable order.
pub fn to_yaml(bootstrap: &Bootstrap) -> String {
    let descriptor = ENVOY_API
        .get_message_by_name("envoy.config.bootstrap.v3.Bootstrap")
        .expect("the descriptor set holds the Bootstrap message");
    let message = DynamicMessage::decode(descriptor, bootstrap.encode_to_vec().as_slice())
        .expect("a message prost encoded decodes with its own descriptor");
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true);
    let json = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .expect("every type packed in an Any is in the descriptor set (build.rs)");
    serde_yaml_ng::to_string(&json).expect("JSON values always render as YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ads_bootstrap_names_the_variant_and_the_xds_server() {
        let sotw = ads_bootstrap(
            "e1",
            "127.0.0.1:9901".parse().unwrap(),
            "127.0.0.1:18000".parse().unwrap(),
            false,
        );
        assert!(sotw.contains("api_type: GRPC\n"), "{sotw}");
        assert!(sotw.contains("port_value: 18000"), "{sotw}");
        assert!(!sotw.contains("STRICT_DNS"), "{sotw}");
        let delta = ads_bootstrap(
            "e1",
            "127.0.0.1:9901".parse().unwrap(),
            "127.0.0.1:18000".parse().unwrap(),
            true,
        );
        assert!(delta.contains("api_type: DELTA_GRPC\n"), "{delta}");
        let k8s = to_yaml(&ads(
            "e1",
            "127.0.0.1:9901".parse().unwrap(),
            "flotilla-xds",
            18000,
            false,
        ));
        assert!(k8s.contains("type: STRICT_DNS"), "{k8s}");
        assert!(k8s.contains("address: flotilla-xds"), "{k8s}");
    }

    #[test]
    fn packed_configs_carry_their_type_and_durations_read_as_envoy_writes_them() {
        let service = ServiceView {
            name: "echo".into(),
            grpc_services: vec!["flotilla.echo.v1.Echo".into()],
            idempotent_grpc_methods: vec![],
            endpoints: vec![resources::EndpointView {
                node: "n1".into(),
                addr: "127.0.0.1:8080".parse().unwrap(),
                healthy: true,
            }],
        };
        let yaml = to_yaml(&fixed(
            "gw",
            "127.0.0.1:9901".parse().unwrap(),
            "127.0.0.1:10000".parse().unwrap(),
            &[service],
        ));
        for needle in [
            "'@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "'@type': type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "connect_timeout: 1s",
            "prefix: /flotilla.echo.v1.Echo/",
            "path_separated_prefix: /api/echo",
            "port_value: 8080",
            "hostname: n1",
        ] {
            assert!(yaml.contains(needle), "{needle} missing from\n{yaml}");
        }
    }
}
