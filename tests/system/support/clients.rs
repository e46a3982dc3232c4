//! HTTP and gRPC clients of a node.

use std::time::Duration;

use super::Node;

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn authed(token: &str) -> reqwest::Client {
    authed_for(token, Duration::from_secs(10))
}

/// [`authed`], giving up on a request after `timeout`.
pub fn authed_for(token: &str, timeout: Duration) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A gRPC channel to the node whose calls carry `authorization: <value>`.
pub async fn grpc_channel(
    node: &Node,
    authorization: Option<String>,
) -> tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    impl tonic::service::Interceptor + Clone,
> {
    let channel = tonic::transport::Endpoint::from_shared(node.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let value: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
        authorization.map(|v| v.parse().unwrap());
    tonic::service::interceptor::InterceptedService::new(
        channel,
        move |mut req: tonic::Request<()>| {
            if let Some(v) = &value {
                req.metadata_mut().insert("authorization", v.clone());
            }
            Ok(req)
        },
    )
}

/// Asserts that `addr` speaks only TLS: plaintext HTTP/2 gets no HTTP/2
/// answer (the connection ends, or a TLS alert comes back).
pub fn assert_plaintext_refused(addr: &str) {
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "plaintext HTTP/2 to {addr} was answered: {answer:?}"
    );
}

/// Runs `manifests/base/client/echo_client.py` (grpcio, proxyless,
/// `xds:///echo`) for `calls` calls on the xDS bootstrap `bootstrap`: the
/// replies per answering node.
pub async fn proxyless_echo(
    bootstrap: &std::path::Path,
    calls: u64,
) -> std::collections::BTreeMap<String, u64> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("manifests/base/client/echo_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(super::pods::grpc_python())
            .arg(script)
            .args(["--calls", &calls.to_string()])
            .env("GRPC_XDS_BOOTSTRAP", bootstrap)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the proxyless client finishes within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "proxyless client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: std::collections::BTreeMap<String, u64> =
        serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(replies.values().sum::<u64>(), calls, "{replies:?}");
    replies
}
