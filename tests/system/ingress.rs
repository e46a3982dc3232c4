//! The routing table as the ingress serves it: unknown paths, services not
//! on this node, limits, and the admin listener.

use std::time::Duration;

use flotilla::proto::{
    echo::{EchoRequest, echo_client::EchoClient},
    kv::{GetRequest, kv_client::KvClient},
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{Node, NodeConfig, authed, http};

#[tokio::test]
async fn echo_names_the_node_over_http_and_grpc() {
    let node = Node::start(NodeConfig {
        node_id: "echo-node-7".into(),
        ..Default::default()
    });
    let r: Value = http()
        .get(node.url("/api/echo?message=hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"message": "hi", "node": "echo-node-7"}));
    let r: Value = http()
        .post(node.url("/api/echo"))
        .json(&json!({"message": "posted"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r, json!({"message": "posted", "node": "echo-node-7"}));
    let mut echo = EchoClient::connect(node.url("")).await.unwrap();
    let reply = echo
        .echo(EchoRequest {
            message: "over h2c".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.node.as_str()),
        ("over h2c", "echo-node-7")
    );
}

#[tokio::test]
async fn unknown_paths_get_json_404_and_grpc_unimplemented() {
    let node = Node::start(NodeConfig::default());
    for path in ["/", "/nothing", "/api/", "/api/nope/x", "/api/kv/unknown"] {
        let r = http().get(node.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_eq!(r.headers()["content-type"], "application/json", "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "not_found", "{path}");
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains(path.trim_end_matches('/')),
            "{path}: {body}"
        );
    }
    let r = http()
        .patch(node.url("/api/kv/keys/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, PUT, DELETE");

    // A gRPC service nobody has.
    let channel = tonic::transport::Endpoint::from_shared(node.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let err = grpc
        .unary::<EchoRequest, EchoRequest, _>(
            tonic::Request::new(EchoRequest::default()),
            "/no.Such/Method".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("no.Such"), "{}", err.message());
}

#[tokio::test]
async fn a_known_service_not_on_this_node_is_503_naming_it() {
    let node = Node::start(NodeConfig {
        services: "[echo]".into(),
        node_id: "echo-only".into(),
        ..Default::default()
    });
    let r = http().get(node.url("/api/kv/keys/a")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.starts_with("service `kv` is not running on node `echo-only`"),
        "{message}"
    );
    let mut kv = KvClient::connect(node.url("")).await.unwrap();
    let err = kv
        .get(GetRequest {
            key: "a".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().contains("`kv`"), "{}", err.message());
    // echo is served.
    assert_eq!(
        http()
            .get(node.url("/api/echo"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // readyz reflects only the selected services.
    let r: Value = http()
        .get(node.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["services"], json!({"echo": {"state": "running"}}));
}

#[tokio::test]
async fn bodies_over_the_limit_are_refused_without_effect() {
    let node = Node::start(NodeConfig {
        extra: "limits: {max_request_body_bytes: 1024}\n".into(),
        ..Default::default()
    });
    let token = node.admin_token().await;
    let http = || authed(&token);
    let big = "x".repeat(2048);
    let r = http()
        .put(node.url("/api/kv/keys/big"))
        .json(&json!({ "value": big }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );
    // Without a Content-Length (chunked), the limit still holds.
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok("{\"value\": \"".into()),
        Ok(big.clone()),
        Ok("\"}".into()),
    ];
    let r = http()
        .put(node.url("/api/kv/keys/big"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let r = http()
        .get(node.url("/api/kv/keys/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A table of malformed requests, each with the status it gets; every
/// answer is the one error shape, `{"error","message"}` as JSON, whether a
/// handler, the framework's extractors, the ingress or the listener's head
/// limits refused it.
#[tokio::test]
async fn every_malformed_request_gets_its_status_as_json() {
    let node = Node::start(NodeConfig {
        extra: "limits: {max_request_body_bytes: 1024}\n".into(),
        ..Default::default()
    });
    let token = node.admin_token().await;
    let login = node.url("/api/accounts/login");
    let put = node.url("/api/kv/keys/k");
    let chunked = || {
        let chunks: Vec<Result<String, std::io::Error>> = vec![
            Ok("{\"value\": \"".into()),
            Ok("x".repeat(4096)),
            Ok("\"}".into()),
        ];
        reqwest::Body::wrap_stream(futures_util::stream::iter(chunks))
    };
    let many_headers = || {
        let mut headers = reqwest::header::HeaderMap::new();
        for i in 0..120 {
            headers.insert(
                reqwest::header::HeaderName::try_from(format!("x-h{i}")).unwrap(),
                "1".parse().unwrap(),
            );
        }
        headers
    };
    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            http()
                .post(&login)
                .header("content-type", "application/json")
                .body("{nope"),
            400,
            "bad_request",
        ),
        (
            "no content type",
            http()
                .post(&login)
                .body(r#"{"username":"a","password":"b"}"#),
            415,
            "unsupported_media_type",
        ),
        (
            "wrong content type",
            http()
                .post(&login)
                .header("content-type", "text/plain")
                .body("{}"),
            415,
            "unsupported_media_type",
        ),
        (
            "wrongly typed field",
            http()
                .post(&login)
                .json(&json!({"username": 1, "password": "b"})),
            422,
            "invalid_request",
        ),
        (
            "missing field",
            http().post(&login).json(&json!({"username": "a"})),
            422,
            "invalid_request",
        ),
        (
            "declared body over the limit",
            authed(&token)
                .put(&put)
                .json(&json!({"value": "x".repeat(2048)})),
            413,
            "payload_too_large",
        ),
        (
            "chunked body over the limit",
            authed(&token)
                .put(&put)
                .header("content-type", "application/json")
                .body(chunked()),
            413,
            "payload_too_large",
        ),
        (
            "a path segment that is not UTF-8",
            authed(&token).get(node.url("/api/kv/keys/%FF%FE")),
            400,
            "bad_request",
        ),
        (
            "a 40 KiB header",
            http()
                .get(node.url("/api/echo"))
                .header("x-big", "y".repeat(40 * 1024)),
            431,
            "headers_too_large",
        ),
        (
            "120 headers",
            http().get(node.url("/api/echo")).headers(many_headers()),
            431,
            "headers_too_large",
        ),
        (
            "a 9 KiB URI",
            http().get(node.url(&format!("/api/echo?q={}", "z".repeat(9 * 1024)))),
            414,
            "uri_too_long",
        ),
    ];
    for (what, request, status, code) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{what}");
        assert_eq!(r.headers()["content-type"], "application/json", "{what}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], code, "{what}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {body}"
        );
    }
    // Far over the limit, the HTTP parser refuses on its own: still 431.
    let r = http()
        .get(node.url("/api/echo"))
        .header("x-huge", "y".repeat(200 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    // Nothing of it reached the store.
    let r = authed(&token).get(&put).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_request_that_exceeds_the_timeout_gets_504() {
    let node = Node::start(NodeConfig {
        extra: "limits: {request_timeout_ms: 300}\n".into(),
        ..Default::default()
    });
    let token = node.admin_token().await;
    // Announce a body and never send it: the handler waits on it.
    let mut s = TcpStream::connect(node.public).await.unwrap();
    let head = format!(
        "PUT /api/kv/keys/slow HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"va"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let response = String::from_utf8_lossy(&buf[..n]);
    assert!(response.starts_with("HTTP/1.1 504"), "{response}");
    assert!(response.contains("300 ms"), "{response}");
}

#[tokio::test]
async fn admin_listener_reports_health_readiness_and_metrics() {
    let node = Node::start(NodeConfig::default());
    let token = node.admin_token().await;
    let c = authed(&token);
    c.put(node.url("/api/kv/keys/m"))
        .json(&json!({"value": "1"}))
        .send()
        .await
        .unwrap();
    c.get(node.url("/api/kv/keys/m")).send().await.unwrap();
    c.get(node.url("/api/nowhere")).send().await.unwrap();
    assert_eq!(
        c.get(node.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.get(node.admin_url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let metrics = c
        .get(node.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        r#"flotilla_http_requests_total{service="kv",route="/api/kv/keys/{*key}",method="PUT",status="200"} 1"#,
        r#"flotilla_http_requests_total{service="kv",route="/api/kv/keys/{*key}",method="GET",status="200"} 1"#,
        r#"flotilla_http_requests_total{service="-",route="-",method="GET",status="404"} 1"#,
        r#"flotilla_http_request_duration_seconds_count{service="kv",route="/api/kv/keys/{*key}"} 2"#,
        r#"flotilla_store_statement_duration_seconds_count{namespace="kv",kind="write"} 1"#,
        r#"flotilla_store_statement_duration_seconds_count{namespace="kv",kind="read"} 1"#,
        "flotilla_store_commit_duration_seconds_count",
    ] {
        assert!(
            metrics.contains(expected),
            "missing `{expected}` in:\n{metrics}"
        );
    }
    let status: Value = c
        .get(node.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["node"]["node_id"], "test-node");
    assert_eq!(status["ready"], true);
}

#[tokio::test]
async fn the_public_health_path_says_whether_the_node_takes_traffic() {
    let mut node = Node::start(NodeConfig::default());
    node.wait_ready();
    let r = http().get(node.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["serving"], true);
}

/// Every JSON answer ends with one newline, so that a shell prompt after
/// `curl` starts on its own line: a service's answer, the ingress's own
/// error, and the admin listener's status.
#[tokio::test]
async fn json_answers_end_with_a_newline() {
    let node = Node::start(NodeConfig::default());
    for url in [
        node.url("/api/echo?message=hi"),
        node.url("/api/no-such-service"),
        node.url("/healthz"),
        node.admin_url("/status"),
    ] {
        let r = http().get(&url).send().await.unwrap();
        let text = r.text().await.unwrap();
        assert!(
            text.ends_with("}\n") && !text.ends_with("\n\n"),
            "{url}: {text:?}"
        );
        let _: Value = serde_json::from_str(&text).unwrap();
    }
}
