//! Signals, draining and logs.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{Node, NodeConfig, authed, blocking_get, wait_until};

/// Sends a PUT's head with `Expect: 100-continue` and waits for the node's
/// `100 Continue`: from then on the request is in a handler's hands.
async fn put_in_flight(node: &Node, token: &str, key: &str, body_len: usize) -> TcpStream {
    let mut s = TcpStream::connect(node.public).await.unwrap();
    let head = format!(
        "PUT /api/kv/keys/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {body_len}\r\nExpect: 100-continue\r\n\r\n",
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let interim = read_head(&mut s).await;
    assert!(interim.starts_with("HTTP/1.1 100"), "{interim}");
    s
}

/// Reads one response head (up to its blank line).
async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .expect("the node answers within 5 s")
            .unwrap();
        assert_eq!(n, 1, "the connection closed after {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// Waits until the node says it is draining.
async fn draining(node: &Node) {
    let url = node.admin_url("/readyz");
    wait_until(
        "readyz turns 503 while draining",
        Duration::from_secs(2),
        || {
            std::future::ready(match blocking_get(&url) {
                Ok(r) if r.starts_with("HTTP/1.1 503") => Ok(()),
                Ok(r) => Err(r),
                Err(e) => Err(e.to_string()),
            })
        },
    )
    .await
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_0() {
    for signal in ["TERM", "INT"] {
        let mut node = Node::start(NodeConfig::default());
        let token = node.admin_token().await;
        // A request in flight: headers and half the body sent.
        let body = br#"{"value": "drained"}"#;
        let mut s = put_in_flight(&node, &token, "inflight", body.len()).await;
        s.write_all(&body[..5]).await.unwrap();
        node.signal(signal);
        // While draining, the node says it is not ready...
        draining(&node).await;
        // ... and new connections are refused (the listener closes on the
        // serving task, moments after readiness flips).
        wait_until(
            "the public listener refuses connections",
            Duration::from_secs(1),
            || async {
                match TcpStream::connect(node.public).await {
                    Err(_) => Ok(()),
                    Ok(_) => Err("accepted"),
                }
            },
        )
        .await;
        // The in-flight request completes.
        s.write_all(&body[5..]).await.unwrap();
        let response = read_head(&mut s).await;
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
async fn a_stop_does_not_wait_for_connections_that_sent_nothing() {
    // Clients open connections they use only later (a pool's spare); the
    // listener reads a connection's first byte to tell plaintext from TLS.
    // A stop closes those at once instead of draining them for the grace
    // period, which here is a minute.
    let mut node = Node::start(NodeConfig {
        extra: "limits: {shutdown_grace_ms: 60000}\n".into(),
        ..NodeConfig::default()
    });
    let mut silent = TcpStream::connect(node.public).await.unwrap();
    // Accepted by the node: a request on a second connection is answered.
    let mut used = TcpStream::connect(node.public).await.unwrap();
    used.write_all(b"GET /api/echo?message=hi HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut used).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    node.signal("TERM");
    let status = node.exited(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{}", node.log());
    let mut byte = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(1), silent.read(&mut byte))
        .await
        .expect("the silent connection is closed")
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "the node sent bytes to a connection that asked nothing"
    );
}

#[tokio::test]
async fn the_write_of_a_drained_request_is_kept() {
    let mut node = Node::start(NodeConfig::default());
    let token = node.admin_token().await;
    let body = br#"{"value": "kept"}"#;
    let mut s = put_in_flight(&node, &token, "kept", body.len()).await;
    node.signal("TERM");
    draining(&node).await;
    // The body arrives after the drain began: the write still happens.
    s.write_all(body).await.unwrap();
    let response = read_head(&mut s).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
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
