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
