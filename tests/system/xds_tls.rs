//! The xDS listener over mutual TLS (`xds.tls`): a real Envoy and grpcio
//! (proxyless, TLS channel credentials) reach it
//! with the certificate `flotilla ca issue --envoy` wrote, through the
//! bootstrap `gen-envoy --xds-tls` makes, and routes through what it
//! learns (Envoy to the nodes over TLS as well, `--upstream-tls`);
//! plaintext and a node's certificate are refused.

use std::path::Path;

use crate::support::{BINARY, Envoy, TestCluster, free_addr, generate, run_cli, wait_routed};

#[tokio::test]
async fn envoy_and_a_proxyless_grpc_client_reach_the_xds_server_over_mutual_tls_with_a_certificate_from_ca_issue()
 {
    let mut cluster = TestCluster::prepare_with(Path::new(BINARY), "", "");
    for node in &cluster.nodes {
        let text = std::fs::read_to_string(&node.config_path).unwrap();
        std::fs::write(
            &node.config_path,
            text.replace(
                "xds: {ingress_listener:",
                "xds: {tls: true, ingress_listener:",
            ),
        )
        .unwrap();
    }
    cluster.spawn_all();
    let xds = cluster.xds[0];

    // Plaintext HTTP/2 gets no HTTP/2 answer.
    crate::support::assert_plaintext_refused(&xds.to_string());

    // The Envoy's certificate, from the member's config (the CA derived
    // from the cluster secret), with Envoy's SDS files.
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("envoy-tls");
    let config = cluster.nodes[0].config_path.to_str().unwrap().to_owned();
    let (code, said, err) = run_cli(
        Path::new(BINARY),
        &[
            "ca",
            "issue",
            "--config",
            &config,
            "--envoy",
            "front",
            "--out",
            tls.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        said.contains("spiffe://flotilla.local/envoy/front"),
        "{said}"
    );
    for file in [
        "front.crt",
        "front.key",
        "ca.crt",
        "sds-cert.yaml",
        "sds-ca.yaml",
    ] {
        assert!(tls.join(file).is_file(), "ca issue wrote no {file}");
    }

    let admin = free_addr();
    let yaml = generate(&[
        "--mode",
        "k3d",
        "--xds",
        &xds.to_string(),
        "--xds-tls",
        tls.to_str().unwrap(),
        "--upstream-tls",
        tls.to_str().unwrap(),
        "--admin",
        &admin.to_string(),
        "--node-id",
        "front",
    ]);
    assert!(yaml.contains("envoy.transport_sockets.tls"), "{yaml}");
    let envoy = Envoy::start_bootstrap(&yaml, admin);
    // Envoy learns the ingress listener and the routes over TLS, and
    // routes a request to the nodes.
    wait_routed(&format!(
        "http://{}/api/echo?message=hi",
        cluster.envoy_ingress
    ))
    .await;
    let ssl = envoy.stat("cluster.xds.ssl.handshake").await.unwrap_or(0);
    assert!(ssl >= 1, "Envoy made no TLS handshake to the xDS server");
    // The clusters the xDS server sent reach the nodes over TLS too (its
    // node metadata asked for it, `--upstream-tls`).
    let ssl = envoy.stat("cluster.echo.ssl.handshake").await.unwrap_or(0);
    assert!(ssl >= 1, "Envoy made no TLS handshake to echo's nodes");

    // A proxyless gRPC client (grpcio) with the same certificate: TLS
    // channel credentials in its xDS bootstrap. It checks the server's
    // name too: the member's certificate names its xDS listener's address.
    let bootstrap = dir.path().join("bootstrap.json");
    let file = |name: &str| tls.join(name).to_str().unwrap().to_owned();
    std::fs::write(
        &bootstrap,
        serde_json::json!({
            "xds_servers": [{
                "server_uri": xds.to_string(),
                "channel_creds": [{"type": "tls", "config": {
                    "ca_certificate_file": file("ca.crt"),
                    "certificate_file": file("front.crt"),
                    "private_key_file": file("front.key"),
                }}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": "proxyless-tls", "locality": {}},
        })
        .to_string(),
    )
    .unwrap();
    crate::support::proxyless_echo(&bootstrap, 30).await;

    // A node's certificate is not an Envoy's: the member refuses it at the
    // handshake, and says why.
    let member = flotilla::cluster::network::Auth::Tls(
        flotilla::tls::peer::PeerTls::of_member(
            &Default::default(),
            crate::support::cluster::CLUSTER_SECRET,
            "ha-9",
        )
        .unwrap(),
    );
    let refused = flotilla::cluster::network::client_as(&xds.to_string(), &member)
        .unwrap()
        .admin(flotilla::cluster::network::blob(&serde_json::json!(
            "Status"
        )))
        .await;
    assert!(
        refused.is_err(),
        "a member's certificate reached the xDS listener"
    );
    let log = cluster.nodes[0].log();
    assert!(
        log.contains("is a node's certificate; the xDS listener takes Envoys'"),
        "the member's log does not say why it refused a node's certificate"
    );
    drop(envoy);
}
