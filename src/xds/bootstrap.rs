//! The Envoy bootstrap for an Envoy fed over ADS: a node id, the admin
//! interface on loopback, and one static cluster (HTTP/2) to the xDS
//! server; listeners, routes, clusters and endpoints all come over ADS.

use std::net::SocketAddr;

/// `delta`: incremental xDS (`DELTA_GRPC`); otherwise state of the world.
pub fn ads_bootstrap(node_id: &str, admin: SocketAddr, xds: SocketAddr, delta: bool) -> String {
    let api_type = if delta { "DELTA_GRPC" } else { "GRPC" };
    format!(
        r#"node: {{id: {node_id}, cluster: flotilla}}
admin:
  address: {{socket_address: {{address: '{admin_ip}', port_value: {admin_port}}}}}
dynamic_resources:
  ads_config:
    api_type: {api_type}
    transport_api_version: V3
    grpc_services: [{{envoy_grpc: {{cluster_name: xds}}}}]
  cds_config: {{resource_api_version: V3, ads: {{}}}}
  lds_config: {{resource_api_version: V3, ads: {{}}}}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: xds
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: '{xds_ip}', port_value: {xds_port}}}}}}}
"#,
        admin_ip = admin.ip(),
        admin_port = admin.port(),
        xds_ip = xds.ip(),
        xds_port = xds.port(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_names_the_variant_and_the_xds_server() {
        let sotw = ads_bootstrap(
            "e1",
            "127.0.0.1:9901".parse().unwrap(),
            "127.0.0.1:18000".parse().unwrap(),
            false,
        );
        assert!(sotw.contains("api_type: GRPC\n"), "{sotw}");
        assert!(sotw.contains("port_value: 18000"), "{sotw}");
        let delta = ads_bootstrap(
            "e1",
            "127.0.0.1:9901".parse().unwrap(),
            "127.0.0.1:18000".parse().unwrap(),
            true,
        );
        assert!(delta.contains("api_type: DELTA_GRPC\n"), "{delta}");
    }
}
