//! Envoy resources built from the routing table and the registry.
//!
//! These builders are the only place that knows how flotilla looks to Envoy
//! and to proxyless gRPC clients; the xDS server serves what they build, and
//! `gen-envoy` writes the same resources into static bootstraps.
//!
//! - The ingress: one listener (`INGRESS_LISTENER`) whose HTTP connection
//!   manager takes its routes over ADS (`INGRESS_ROUTES`): every service's
//!   HTTP prefix and gRPC service paths, each to the service's cluster.
//! - One cluster per service, named after it, speaking HTTP/2 to the
//!   service's public port so that gRPC is balanced per request, with
//!   active health checks of the public `/healthz` and outlier detection;
//!   endpoints from the registry (EDS over ADS, or inline for static
//!   configs).
//! - For an Envoy sidecar (`xds::sidecar`): an outbound listener on loopback
//!   with the ingress's routes, an inbound listener on the pod's address,
//!   and a cluster of the pod's own flotilla on loopback.
//! - For proxyless gRPC clients dialing `xds:///<service>`: a listener named
//!   `<service>` holding an API listener whose routes send everything to the
//!   service's cluster.

use std::{net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::r#type::v3::CodecClientType;
use envoy_types::pb::{
    envoy::{
        config::{
            cluster::v3::{
                Cluster, OutlierDetection,
                cluster::CommonLbConfig,
                cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
            },
            core::v3::{
                Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthCheck,
                HealthStatus, Http2ProtocolOptions, Locality, SocketAddress, address,
                config_source::ConfigSourceSpecifier, health_check, socket_address::PortSpecifier,
            },
            endpoint::v3::{
                ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
                lb_endpoint::HostIdentifier,
            },
            listener::v3::{ApiListener, Filter, FilterChain, Listener, filter},
            route::v3::{
                HeaderMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration, RouteMatch,
                VirtualHost,
                header_matcher::HeaderMatchSpecifier,
                retry_policy::{RetryHostPredicate, retry_host_predicate},
                route::Action,
                route_action::ClusterSpecifier,
                route_match::PathSpecifier,
            },
        },
        extensions::{
            filters::{
                http::router::v3::Router,
                network::http_connection_manager::v3::{
                    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
                },
            },
            retry::host::previous_hosts::v3::PreviousHostsPredicate,
            upstreams::http::v3::{
                HttpProtocolOptions, http_protocol_options::ExplicitHttpConfig,
                http_protocol_options::UpstreamProtocolOptions,
                http_protocol_options::explicit_http_config::ProtocolConfig,
            },
        },
    },
    google::protobuf::{Duration as PbDuration, UInt32Value},
};
use envoy_types::util::pack_any;

use crate::{
    catalogue::routing::{API_PREFIX, RoutingTable},
    mesh::registry::Registry,
    protocol::{HEALTH_PATH, RetryPolicy as ProtocolRetryPolicy, RouteKind},
};

/// The ingress listener's name.
pub const INGRESS_LISTENER: &str = "flotilla-ingress";
/// The ingress listener's route configuration (a sidecar's outbound
/// listener's too).
pub const INGRESS_ROUTES: &str = "flotilla-ingress-routes";
/// A sidecar's listener for calls out of its pod, on loopback.
pub const OUTBOUND_LISTENER: &str = "flotilla-outbound";
/// A sidecar's listener for calls into its pod, on the pod's address.
pub const INBOUND_LISTENER: &str = "flotilla-inbound";
/// A sidecar's cluster of its pod's own flotilla, on loopback.
pub const LOCAL_CLUSTER: &str = "flotilla-local";

/// One service as the resources see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub name: String,
    /// gRPC service names (`package.Service`).
    pub grpc_services: Vec<String>,
    /// The gRPC methods (`/package.Service/Method`) the service declares
    /// idempotent: retried after a failure too (`protocol::RetryPolicy`).
    pub idempotent_grpc_methods: Vec<String>,
    pub endpoints: Vec<EndpointView>,
}

/// One instance of a service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointView {
    pub node: String,
    pub addr: SocketAddr,
    pub healthy: bool,
}

/// Every service of the routing table with its instances in the registry,
/// in name order.
pub fn services(table: &RoutingTable, registry: &Registry) -> Vec<ServiceView> {
    let mut names: Vec<&'static str> = table.routes().iter().map(|r| r.service).collect();
    names.sort_unstable();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let mut endpoints: Vec<EndpointView> = registry
                .instances(name)
                .into_iter()
                .map(|i| EndpointView {
                    node: i.node_id.to_string(),
                    addr: i.public,
                    healthy: i.healthy,
                })
                .collect();
            endpoints.sort();
            ServiceView {
                name: name.to_owned(),
                grpc_services: table.grpc_services_of(name).map(str::to_owned).collect(),
                idempotent_grpc_methods: table
                    .routes()
                    .iter()
                    .filter(|r| r.service == name && r.kind == RouteKind::IdempotentGrpc)
                    .map(|r| r.template.clone())
                    .collect(),
                endpoints,
            }
        })
        .collect()
}

fn duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// Routes over ADS, by name.
fn rds(routes: &str) -> http_connection_manager::RouteSpecifier {
    http_connection_manager::RouteSpecifier::Rds(Rds {
        config_source: Some(ads()),
        route_config_name: routes.to_owned(),
    })
}

/// An HTTP connection manager with `routes`.
fn connection_manager(
    stat_prefix: &str,
    routes: http_connection_manager::RouteSpecifier,
) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: http_connection_manager::CodecType::Auto as i32,
        stat_prefix: stat_prefix.to_owned(),
        route_specifier: Some(routes),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The public ingress listener on `addr`, its routes over ADS.
pub fn ingress_listener(addr: SocketAddr) -> Listener {
    listener_with(INGRESS_LISTENER, "ingress", addr, rds(INGRESS_ROUTES))
}

/// A sidecar's outbound listener on `addr` (loopback): the ingress's
/// routes over ADS, so a call from the pod to any service takes the same
/// routes, retries and outlier policy as one through the front Envoy.
pub fn outbound_listener(addr: SocketAddr) -> Listener {
    listener_with(OUTBOUND_LISTENER, "outbound", addr, rds(INGRESS_ROUTES))
}

/// A sidecar's inbound listener on the pod's address: everything to the
/// pod's own flotilla (`LOCAL_CLUSTER`), once, with no timeout of its own
/// (the caller's route holds the retry and timeout policy, and streams
/// last as long as they need).
pub fn inbound_listener(addr: SocketAddr) -> Listener {
    let route = Route {
        name: "local".into(),
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(LOCAL_CLUSTER.into())),
            timeout: Some(duration(Duration::ZERO)),
            ..Default::default()
        })),
        ..Default::default()
    };
    let routes = RouteConfiguration {
        name: "flotilla-inbound-routes".into(),
        virtual_hosts: vec![VirtualHost {
            name: "local".into(),
            domains: vec!["*".into()],
            routes: vec![route],
            ..Default::default()
        }],
        ..Default::default()
    };
    listener_with(
        INBOUND_LISTENER,
        "inbound",
        addr,
        http_connection_manager::RouteSpecifier::RouteConfig(routes),
    )
}

/// A sidecar's cluster of its own pod's flotilla, on loopback `port`.
pub fn local_cluster(port: u16) -> Cluster {
    http2_cluster(LOCAL_CLUSTER, &[("127.0.0.1".to_owned(), port)])
}

/// The public ingress listener on `addr` with `routes` inline (static
/// configurations).
pub fn static_ingress_listener(addr: SocketAddr, routes: RouteConfiguration) -> Listener {
    listener_with(
        INGRESS_LISTENER,
        "ingress",
        addr,
        http_connection_manager::RouteSpecifier::RouteConfig(routes),
    )
}

fn listener_with(
    name: &str,
    stat_prefix: &str,
    addr: SocketAddr,
    routes: http_connection_manager::RouteSpecifier,
) -> Listener {
    Listener {
        name: name.into(),
        address: Some(socket_address(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(
                    connection_manager(stat_prefix, routes),
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route of `kind` to `service`'s cluster, retried as
/// `protocol::RetryPolicy` says.
fn route_to(service: &str, path: PathSpecifier, kind: RouteKind) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(path),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(service.to_owned())),
            timeout: Some(duration(Duration::from_secs(15))),
            retry_policy: Some(RetryPolicy {
                retry_on: ProtocolRetryPolicy::envoy_retry_on(kind).into(),
                num_retries: Some(UInt32Value {
                    value: ProtocolRetryPolicy::RETRIES,
                }),
                retriable_status_codes: vec![ProtocolRetryPolicy::ENVOY_RETRIABLE_STATUS],
                retriable_headers: vec![HeaderMatcher {
                    name: crate::protocol::UNPROCESSED.into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                    ..Default::default()
                }],
                // A retry goes to another instance than the ones that failed.
                retry_host_predicate: vec![RetryHostPredicate {
                    name: "envoy.retry_host_predicates.previous_hosts".into(),
                    config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack_any(
                        PreviousHostsPredicate::default(),
                    ))),
                }],
                host_selection_retry_max_attempts: 3,
                ..Default::default()
            }),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The ingress routes: for every service, its gRPC methods and its HTTP
/// prefix, to its cluster. Only `services` that have a cluster may be named
/// here (make before break is the server's job).
pub fn ingress_routes(services: &[ServiceView]) -> RouteConfiguration {
    let mut routes = Vec::new();
    for s in services {
        routes.extend(grpc_routes(s));
        // `/api/kv` and `/api/kv/...`, not `/api/kvx`.
        let prefix = format!("{API_PREFIX}{}", s.name);
        let mut idempotent = route_to(
            &s.name,
            PathSpecifier::PathSeparatedPrefix(prefix.clone()),
            RouteKind::IdempotentHttp,
        );
        if let Some(m) = idempotent.r#match.as_mut() {
            m.headers = vec![method_matcher(&["GET", "HEAD", "OPTIONS", "PUT", "DELETE"])];
        }
        routes.push(idempotent);
        routes.push(route_to(
            &s.name,
            PathSpecifier::PathSeparatedPrefix(prefix),
            RouteKind::Http,
        ));
    }
    RouteConfiguration {
        name: INGRESS_ROUTES.into(),
        virtual_hosts: vec![VirtualHost {
            name: "flotilla".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn method_matcher(methods: &[&str]) -> HeaderMatcher {
    use envoy_types::pb::envoy::r#type::matcher::v3::{
        RegexMatcher, StringMatcher, string_matcher::MatchPattern,
    };
    HeaderMatcher {
        name: ":method".into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
            match_pattern: Some(MatchPattern::SafeRegex(RegexMatcher {
                regex: methods.join("|"),
                ..Default::default()
            })),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The cluster of `service`: HTTP/2 to its instances, round robin, with
/// outlier detection. `eds`: endpoints over ADS; otherwise inline (static
/// configurations).
pub fn service_cluster(service: &ServiceView, eds: bool) -> Cluster {
    let mut cluster = Cluster {
        name: service.name.clone(),
        connect_timeout: Some(duration(Duration::from_secs(1))),
        lb_policy: LbPolicy::RoundRobin as i32,
        typed_extension_protocol_options: http2_only(),
        // Active checks of the public listener's health path: a draining
        // node answers 503 and stops getting requests.
        health_checks: vec![HealthCheck {
            timeout: Some(duration(Duration::from_secs(1))),
            interval: Some(duration(Duration::from_secs(1))),
            unhealthy_threshold: Some(UInt32Value { value: 2 }),
            healthy_threshold: Some(UInt32Value { value: 1 }),
            health_checker: Some(health_check::HealthChecker::HttpHealthCheck(
                health_check::HttpHealthCheck {
                    path: HEALTH_PATH.into(),
                    codec_client_type: CodecClientType::Http2 as i32,
                    ..Default::default()
                },
            )),
            ..Default::default()
        }],
        // A host that leaves the registry leaves the cluster at once, even
        // while it still passes health checks (it is draining).
        ignore_health_on_host_removal: true,
        // Health changes reach the load balancer at once: by default Envoy
        // merges them over a second, which kept a new node idle for that
        // long after its first passing check.
        common_lb_config: Some(CommonLbConfig {
            update_merge_window: Some(duration(Duration::ZERO)),
            ..Default::default()
        }),
        outlier_detection: Some(OutlierDetection {
            consecutive_5xx: Some(UInt32Value { value: 3 }),
            interval: Some(duration(Duration::from_secs(1))),
            base_ejection_time: Some(duration(Duration::from_secs(5))),
            max_ejection_percent: Some(UInt32Value { value: 50 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if eds {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
        cluster.eds_cluster_config = Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        });
    } else {
        cluster.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
        cluster.load_assignment = Some(load_assignment(service));
    }
    cluster
}

/// Upstream HTTP/2 (h2c): gRPC, and one connection multiplexing requests.
fn http2_only() -> std::collections::HashMap<String, envoy_types::pb::google::protobuf::Any> {
    let protocol = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    [(
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
        pack_any(protocol),
    )]
    .into_iter()
    .collect()
}

/// A plain static HTTP/2 cluster over `hosts` (host, port): the xDS
/// server's cluster in an ADS bootstrap.
pub fn http2_cluster(name: &str, hosts: &[(String, u16)]) -> Cluster {
    let lb_endpoints = hosts
        .iter()
        .map(|(host, port)| LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: host.clone(),
                        port_specifier: Some(PortSpecifier::PortValue(u32::from(*port))),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    Cluster {
        name: name.to_owned(),
        connect_timeout: Some(duration(Duration::from_secs(1))),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        typed_extension_protocol_options: http2_only(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_owned(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints,
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The endpoints of `service`: its healthy instances (an empty assignment
/// is valid and keeps a cluster from warming forever). The locality has a
/// weight: gRPC clients skip localities without one.
pub fn load_assignment(service: &ServiceView) -> ClusterLoadAssignment {
    let lb_endpoints = service
        .endpoints
        .iter()
        .filter(|e| e.healthy)
        .map(|e| LbEndpoint {
            health_status: HealthStatus::Healthy as i32,
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(e.addr)),
                hostname: e.node.clone(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: service.name.clone(),
        endpoints: vec![LocalityLbEndpoints {
            // gRPC clients refuse an assignment without a locality.
            locality: Some(Locality::default()),
            lb_endpoints,
            load_balancing_weight: Some(UInt32Value { value: 1 }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// For a proxyless gRPC client of `service`: the API listener named after
/// the service, its routes over ADS.
pub fn api_listener(service: &str) -> Listener {
    Listener {
        name: service.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(connection_manager(service, rds(service)))),
        }),
        ..Default::default()
    }
}

/// A service's idempotent gRPC methods, one route each.
fn idempotent_grpc_routes(s: &ServiceView) -> impl Iterator<Item = Route> + '_ {
    s.idempotent_grpc_methods.iter().map(|m| {
        route_to(
            &s.name,
            PathSpecifier::Path(m.clone()),
            RouteKind::IdempotentGrpc,
        )
    })
}

/// A service's gRPC routes: its idempotent methods, then the rest of each
/// of its gRPC services by prefix.
fn grpc_routes(s: &ServiceView) -> impl Iterator<Item = Route> + '_ {
    let rest = s.grpc_services.iter().map(|g| {
        route_to(
            &s.name,
            PathSpecifier::Prefix(format!("/{g}/")),
            RouteKind::Grpc,
        )
    });
    idempotent_grpc_routes(s).chain(rest)
}

/// The routes of a service's API listener, for proxyless gRPC clients:
/// every call to its cluster (an unknown method is the server's to refuse),
/// each retried as the policy says (a gRPC client honours `unavailable` and
/// ignores what it cannot).
pub fn api_routes(service: &ServiceView) -> RouteConfiguration {
    let name = &service.name;
    RouteConfiguration {
        name: name.clone(),
        virtual_hosts: vec![VirtualHost {
            name: name.clone(),
            domains: vec!["*".into()],
            routes: idempotent_grpc_routes(service)
                .chain([route_to(
                    name,
                    PathSpecifier::Prefix(String::new()),
                    RouteKind::Grpc,
                )])
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}
