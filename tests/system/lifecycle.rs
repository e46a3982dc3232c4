//! Signals, draining and logs.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{Node, NodeConfig, authed, blocking_get};

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    for signal in ["TERM", "INT"] {
        let mut node = Node::start(NodeConfig::default());
        let token = node.admin_token().await;
        // A request in flight: headers and half the body sent.
        let body = br#"{"value": "drained"}"#;
        let mut s = TcpStream::connect(node.public).await.unwrap();
        let head = format!(
            "PUT /api/kv/keys/inflight HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        node.signal(signal);
        // While draining, the node says it is not ready...
        let mut not_ready = false;
        for _ in 0..100 {
            match blocking_get(&node.admin_url("/readyz")) {
                Ok(r) if r.starts_with("HTTP/1.1 503") => {
                    not_ready = true;
                    break;
                }
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        assert!(not_ready, "readyz did not turn 503 while draining");
        // ... and new connections are refused (the listener closes on the
        // serving task, moments after readiness flips).
        let mut refused = false;
        for _ in 0..100 {
            if TcpStream::connect(node.public).await.is_err() {
                refused = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(refused, "public listener still accepting");
        // The in-flight request completes.
        s.write_all(&body[5..]).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let response = String::from_utf8_lossy(&buf[..n]);
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let status = node.wait_exit(Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "SIG{signal}: {}", node.log());
        assert!(
            node.log().contains(&format!("signal=\"SIG{signal}\"")),
            "{}",
            node.log()
        );
    }
}

#[tokio::test]
async fn the_write_of_a_drained_request_is_kept() {
    let mut node = Node::start(NodeConfig::default());
    let token = node.admin_token().await;
    let mut s = TcpStream::connect(node.public).await.unwrap();
    let body = br#"{"value": "kept"}"#;
    let head = format!(
        "PUT /api/kv/keys/kept HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    node.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(body).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    assert_eq!(node.wait_exit(Duration::from_secs(10)).code(), Some(0));
    node.spawn(&[]);
    let r: serde_json::Value = authed(&token)
        .get(node.url("/api/kv/keys/kept"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["value"], "kept");
}

#[tokio::test]
async fn json_logs_on_request() {
    let mut node = Node::start(NodeConfig {
        extra: "log: {format: json, level: info}\n".into(),
        ..Default::default()
    });
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(10));
    let log = node.log();
    let lines: Vec<&str> = log.lines().collect();
    assert!(lines.len() >= 3, "{log}");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(log.contains("\"message\":\"starting flotilla\""), "{log}");
    // The command line overrides the config.
    node.spawn(&["--log-format", "human"]);
    node.signal("TERM");
    node.wait_exit(Duration::from_secs(10));
    let last = node.log().lines().last().unwrap_or_default().to_owned();
    assert!(
        serde_json::from_str::<serde_json::Value>(&last).is_err(),
        "{last}"
    );
}
