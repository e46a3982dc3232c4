//! gRPC health and reflection on the public listener, asked by grpcio's
//! own health and reflection clients (`grpc_probe.py`) as any tool or
//! Kubernetes `grpc:` probe would.

use std::{collections::BTreeMap, process::Stdio, time::Duration};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{Node, NodeConfig, checkout, grpc_python};

fn probe_script() -> std::path::PathBuf {
    checkout().join("tests/system/grpc_probe.py")
}

async fn probe(args: &[&str]) -> Value {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(grpc_python())
            .arg(probe_script())
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the probe finishes within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "grpc_probe.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn health_says_per_service_whether_this_node_serves_it() {
    let node = Node::start(NodeConfig {
        services: "[echo, accounts]".into(),
        ..Default::default()
    });
    let addr = node.public.to_string();
    let got: BTreeMap<String, String> = serde_json::from_value(
        probe(&[
            "check",
            &addr,
            "",
            "echo",
            "flotilla.echo.v1.Echo",
            "accounts",
            "kv",
            "flotilla.kv.v1.Kv",
            "no-such-service",
        ])
        .await,
    )
    .unwrap();
    let want: BTreeMap<String, String> = [
        ("", "SERVING"),
        ("echo", "SERVING"),
        ("flotilla.echo.v1.Echo", "SERVING"),
        ("accounts", "SERVING"),
        // Routed (another node would serve it), not served here.
        ("kv", "NOT_SERVING"),
        ("flotilla.kv.v1.Kv", "NOT_SERVING"),
        ("no-such-service", "NOT_FOUND"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(got, want);
}

async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
) -> Option<String> {
    tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("a status within 30 s")
        .unwrap()
}

/// A health watch opened before SIGTERM sees NOT_SERVING when the node
/// starts draining, and then the node ends the stream: a watching client
/// does not hold the graceful stop (the grace here is a minute).
#[tokio::test]
async fn health_turns_not_serving_when_the_node_drains() {
    let mut node = Node::start(NodeConfig {
        extra: "limits: {shutdown_grace_ms: 60000}\n".into(),
        ..Default::default()
    });
    let mut watch = tokio::process::Command::new(grpc_python())
        .arg(probe_script())
        .args(["watch", &node.public.to_string(), "flotilla.kv.v1.Kv"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("SERVING"));
    node.signal("TERM");
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("NOT_SERVING"));
    assert_eq!(next_line(&mut lines).await.as_deref(), Some("END OK"));
    let status = tokio::time::timeout(Duration::from_secs(30), watch.wait())
        .await
        .expect("the watch ends")
        .unwrap();
    assert!(status.success(), "{status}");
    // Well within the minute of grace: nothing held the stop.
    assert!(node.exited(Duration::from_secs(15)).await.success());
}

/// Reflection, v1 and v1alpha: the routed services with their methods,
/// health and reflection themselves, and not the peer protocol between
/// nodes (which the public listener does not serve).
#[tokio::test]
async fn reflection_lists_and_describes_the_routed_services_without_proto_files() {
    let node = Node::start(NodeConfig::default());
    let addr = node.public.to_string();
    for version in ["v1", "v1alpha"] {
        let got = probe(&["reflect", &addr, version, "flotilla.kv.v1.Kv"]).await;
        let services: Vec<&str> = got["services"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        for expected in [
            "flotilla.kv.v1.Kv",
            "flotilla.echo.v1.Echo",
            "flotilla.accounts.v1.Accounts",
            "grpc.health.v1.Health",
            &format!("grpc.reflection.{version}.ServerReflection"),
        ] {
            assert!(
                services.contains(&expected),
                "{version}: {expected} in {services:?}"
            );
        }
        assert!(
            !services.iter().any(|s| s.contains("peer")),
            "{version}: {services:?}"
        );
        assert_eq!(
            got["methods"]["flotilla.kv.v1.Kv"],
            serde_json::json!(["Get", "Put", "Delete", "CompareAndSet", "List"]),
            "{version}: {got}"
        );
        let missing = probe(&["reflect", &addr, version, "flotilla.peer.v1.Peer"]).await;
        assert!(missing["files"].is_null(), "{version}: {missing}");
    }
}
