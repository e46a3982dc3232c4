//! `echo`: replies with what it was sent and names the node that answered.
//! The probe for load balancing.

use std::sync::Arc;

use axum::{
    Extension, Json, Router,
    extract::{Query, State},
    routing::get,
};
use serde::{Deserialize, Serialize};

use crate::{
    auth::authz::{self, Principal},
    catalogue::{
        Access, Api, GrpcMethod, GrpcService, Handlers, HttpRoute, Service, ServiceContext,
        StartError, grpc_router,
    },
    proto::echo::{
        EchoReply, EchoRequest,
        echo_server::{self, EchoServer},
    },
};

pub struct Echo;

const PRIVATE: Access = Access::Permission(authz::ECHO_CALL);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EchoBody {
    #[serde(default)]
    message: String,
}

#[derive(Debug, Serialize)]
struct EchoJson {
    message: String,
    node: Arc<str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
}

async fn echo_get(State(node): State<Arc<str>>, Query(q): Query<EchoBody>) -> Json<EchoJson> {
    Json(EchoJson {
        message: q.message,
        node,
        user: None,
    })
}

async fn echo_private(
    State(node): State<Arc<str>>,
    Extension(caller): Extension<Principal>,
    Query(q): Query<EchoBody>,
) -> Json<EchoJson> {
    Json(EchoJson {
        message: q.message,
        node,
        user: Some(caller.username),
    })
}

async fn echo_post(State(node): State<Arc<str>>, Json(body): Json<EchoBody>) -> Json<EchoJson> {
    Json(EchoJson {
        message: body.message,
        node,
        user: None,
    })
}

struct EchoGrpc {
    node: Arc<str>,
}

#[tonic::async_trait]
impl echo_server::Echo for EchoGrpc {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        Ok(tonic::Response::new(EchoReply {
            message: request.into_inner().message,
            node: self.node.to_string(),
            user: String::new(),
        }))
    }

    async fn echo_authenticated(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let user = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.username.clone())
            .ok_or_else(|| tonic::Status::unauthenticated("credentials required"))?;
        Ok(tonic::Response::new(EchoReply {
            message: request.into_inner().message,
            node: self.node.to_string(),
            user,
        }))
    }
}

impl Service for Echo {
    fn name(&self) -> &'static str {
        "echo"
    }

    fn summary(&self) -> &'static str {
        "replies with the message it was sent and the id of the node that answered"
    }

    fn api(&self) -> Api {
        Api {
            http: vec![
                HttpRoute {
                    method: http::Method::GET,
                    path: "",
                    access: Access::Public,
                },
                HttpRoute {
                    method: http::Method::POST,
                    path: "",
                    access: Access::Public,
                },
                HttpRoute {
                    method: http::Method::GET,
                    path: "/private",
                    access: PRIVATE,
                },
            ],
            grpc: vec![GrpcService {
                name: <EchoServer<EchoGrpc> as tonic::server::NamedService>::NAME,
                methods: vec![
                    GrpcMethod {
                        name: "Echo",
                        access: Access::Public,
                    },
                    GrpcMethod {
                        name: "EchoAuthenticated",
                        access: PRIVATE,
                    },
                ],
            }],
        }
    }

    fn start(&self, ctx: ServiceContext) -> Result<Handlers, StartError> {
        let http = Router::new()
            .route("/", get(echo_get).post(echo_post))
            .route("/private", get(echo_private))
            .with_state(ctx.node_id.clone());
        let grpc = grpc_router(EchoServer::new(EchoGrpc { node: ctx.node_id }));
        Ok(Handlers { http, grpc })
    }
}
