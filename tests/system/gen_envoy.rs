//! `flotilla gen-envoy`: each mode's output passes `envoy --mode validate`,
//! and a real Envoy running it serves HTTP and gRPC to the nodes; when a
//! node dies, health checks and retries keep idempotent requests working.

use std::{path::Path, time::Duration};

use serde_json::Value;

use crate::support::{
    BINARY, Envoy, Node, NodeConfig, TestCluster, envoy_in_front, free_addr, generate, grpc_echo,
    http, repo, run_cli, validate, wait_routed, wait_until,
};

#[tokio::test]
async fn missing_or_inconsistent_inputs_are_refused_naming_the_problem() {
    let ha = repo("config/ha/topology.yaml");
    let scaled = repo("config/scaled/topology.yaml");
    let single = repo("config/single.yaml");
    let ha_node = repo("config/ha/node1.yaml");
    let bad = tempfile::tempdir().unwrap();
    let lonely = bad.path().join("topology.yaml");
    std::fs::write(
        &lonely,
        "members:\n  - {id: 1, node: db-1, peer: '127.0.0.1:7001', public: '127.0.0.1:8001', services: [db]}\nnodes:\n  - {node: kv-1, public: '127.0.0.1:8011', services: [kv]}\n",
    )
    .unwrap();
    let lonely = lonely.to_str().unwrap();
    for (args, needle) in [
        (vec!["--mode", "ha"], "--mode ha needs --topology"),
        (
            vec!["--mode", "ha", "--topology", "/nonexistent/t.yaml"],
            "cannot read the topology",
        ),
        (
            vec!["--mode", "ha", "--topology", &scaled],
            "`db-1` runs [], not every service",
        ),
        (
            vec!["--mode", "scaled", "--topology", &ha],
            "this is an ha topology; use --mode ha",
        ),
        (
            vec!["--mode", "scaled", "--topology", lonely],
            "service `accounts` runs on no node",
        ),
        (vec!["--mode", "single"], "--mode single needs --config"),
        (
            vec!["--mode", "single", "--config", &ha_node],
            "is a cluster node's config: use --mode ha or --mode scaled",
        ),
        (
            vec!["--mode", "single", "--config", &single, "--topology", &ha],
            "--topology is not used by --mode single",
        ),
        (
            vec!["--mode", "k3d", "--xds", "flotilla-xds"],
            "is not HOST:PORT",
        ),
        (
            vec!["--mode", "ha", "--topology", &ha, "--admin", "0.0.0.0:9901"],
            "is not a loopback address",
        ),
        (
            vec!["--mode", "k3d", "--listen", "127.0.0.1:10000"],
            "--listen is not used by --mode k3d",
        ),
        (
            vec!["--mode", "ha", "--topology", &ha, "--delta"],
            "--delta is not used by --mode ha",
        ),
        (
            vec![
                "--mode",
                "single",
                "--config",
                &single,
                "--upstream-tls",
                "/tls",
            ],
            "--upstream-tls is for a cluster's nodes",
        ),
        (
            vec!["--mode", "k3d", "--sidecar", "--upstream-tls", "/tls"],
            "--upstream-tls is for the front Envoy",
        ),
    ] {
        let mut all = vec!["gen-envoy"];
        all.extend_from_slice(&args);
        let (code, out, err) = run_cli(Path::new(BINARY), &all);
        assert_eq!(code, 64, "{args:?} should be refused: {out}{err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
        assert!(out.is_empty(), "{args:?} wrote output despite the error");
    }
}

#[tokio::test]
async fn single_mode_envoy_serves_http_and_grpc_to_the_node() {
    let mut node = Node::start(NodeConfig::default());
    node.wait_ready();
    let (listen, admin) = (free_addr(), free_addr());
    let (listen_arg, admin_arg) = (listen.to_string(), admin.to_string());
    let mut args = vec![
        "--mode",
        "single",
        "--config",
        node.config_path.to_str().unwrap(),
        "--listen",
        &listen_arg,
        "--admin",
        &admin_arg,
    ];
    let yaml = generate(&args);
    validate(&yaml);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("single.yaml");
    args.extend(["--out", file.to_str().unwrap()]);
    generate(&args);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        yaml,
        "--out writes the same"
    );
    let _envoy = Envoy::start_bootstrap(&yaml, admin);
    wait_routed(&format!("http://{listen}/api/echo?message=hi")).await;
    let body: Value = http()
        .post(format!("http://{listen}/api/echo"))
        .json(&serde_json::json!({"message": "over envoy"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["message"], "over envoy");
    assert_eq!(body["node"], "test-node");
    assert_eq!(
        grpc_echo(listen, "grpc over envoy").await.unwrap(),
        "test-node"
    );
    // Auth stays ours behind Envoy: a protected route still wants a token.
    let r = http()
        .get(format!("http://{listen}/api/kv/keys/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let _ = node;
}

#[tokio::test]
async fn ha_mode_envoy_keeps_idempotent_requests_working_when_a_node_dies() {
    let mut cluster = TestCluster::start("");
    let (envoy, listen) = envoy_in_front("ha", &cluster.topology).await;
    let url = format!("http://{listen}/api/echo?message=hi");
    // Every member gets requests (round robin once all pass checks).
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    wait_until("every member serves", Duration::from_secs(15), || async {
        let body: Value = http().get(&url).send().await.unwrap().json().await.unwrap();
        let by_grpc = grpc_echo(listen, "x").await.unwrap();
        let mut seen = seen.borrow_mut();
        seen.insert(body["node"].as_str().unwrap().to_owned());
        seen.insert(by_grpc);
        if seen.len() == 3 {
            Ok(())
        } else {
            Err(seen.clone())
        }
    })
    .await;
    // A member dies while GETs flow: none fails, the health checks take it
    // out and the retries cover the requests that met it first.
    let mut failures = Vec::new();
    let mut after_kill = std::collections::BTreeSet::new();
    for i in 0..300 {
        if i == 50 {
            cluster.nodes[1].kill9();
        }
        match http().get(&url).send().await {
            Ok(r) if r.status() == 200 => {
                if i > 50 {
                    let body: Value = r.json().await.unwrap();
                    after_kill.insert(body["node"].as_str().unwrap().to_owned());
                }
            }
            Ok(r) => failures.push(format!("{i}: {}", r.status())),
            Err(e) => failures.push(format!("{i}: {e}")),
        }
        // Paced, so that the requests span the kill and what follows.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        failures.is_empty(),
        "failed GETs: {failures:?}\n{}",
        envoy.log()
    );
    assert!(!after_kill.contains("ha-2"), "{after_kill:?}");
    assert_eq!(after_kill.len(), 2, "{after_kill:?}");
    // gRPC goes on through the survivors.
    let node = grpc_echo(listen, "after").await.unwrap();
    assert_ne!(node, "ha-2");
}

#[tokio::test]
async fn k3d_mode_bootstraps_envoy_over_ads_from_the_xds_service() {
    let xds = free_addr();
    let ingress = free_addr();
    let mut node = Node::start(NodeConfig {
        xds: Some(xds),
        extra: format!("xds: {{ingress_listener: '{ingress}'}}\n"),
        ..Default::default()
    });
    node.wait_ready();
    let admin = free_addr();
    let yaml = generate(&[
        "--mode",
        "k3d",
        "--xds",
        &xds.to_string(),
        "--admin",
        &admin.to_string(),
        "--node-id",
        "k3d-envoy",
    ]);
    validate(&yaml);
    let _envoy = Envoy::start_bootstrap(&yaml, admin);
    wait_routed(&format!("http://{ingress}/api/echo?message=hi")).await;
    assert_eq!(grpc_echo(ingress, "ads").await.unwrap(), "test-node");
    // The xDS server knows this Envoy by the node id of the bootstrap.
    let status = node.status().await.unwrap();
    assert!(
        status.to_string().contains("k3d-envoy"),
        "the xDS clients in /status do not name k3d-envoy: {status}"
    );
}

#[tokio::test]
async fn the_committed_envoy_configs_pass_validation() {
    for mode in ["single", "ha", "scaled", "k3d"] {
        let text = std::fs::read_to_string(repo(&format!("envoy/{mode}.yaml"))).unwrap();
        validate(&text);
    }
}
