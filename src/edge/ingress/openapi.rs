//! `GET /api/openapi.json`: the OpenAPI document of the HTTP API, made
//! once from the routing table (`catalogue::openapi`) and answered by this
//! node for itself, public, never forwarded: the table is the same on
//! every node.

use axum::{
    extract::Request,
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{Method, header};

use super::{Labels, Layer, Next};
use crate::{
    catalogue::{openapi, routing::RoutingTable},
    telemetry::metrics::Label,
};

/// The layer: the document, as JSON text (`errors` ends it with a newline,
/// as every JSON answer).
pub(super) struct OpenApi(Bytes);

impl OpenApi {
    pub(super) fn new(table: &RoutingTable) -> OpenApi {
        let document = openapi::document(table, env!("CARGO_PKG_VERSION"));
        OpenApi(Bytes::from(
            serde_json::to_vec_pretty(&document).unwrap_or_default(),
        ))
    }
}

impl Layer for OpenApi {
    fn handle<'a>(&'a self, req: Request, next: Next<'a>) -> BoxFuture<'a, Response> {
        // HEAD too: the connection leaves the body out.
        if req.uri().path() != openapi::PATH || !matches!(*req.method(), Method::GET | Method::HEAD)
        {
            return Box::pin(next.run(req));
        }
        let mut response =
            ([(header::CONTENT_TYPE, "application/json")], self.0.clone()).into_response();
        response.extensions_mut().insert(Labels {
            service: Some(Label::Static("node")),
            route: Some(Label::Static(openapi::PATH)),
        });
        Box::pin(async move { response })
    }
}
