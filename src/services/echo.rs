//! `echo`: replies with what it was sent and names the node that answered.
//! The probe for load balancing.

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{Query, State},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    auth::authz::{self, Principal},
    catalogue::{Access, Idempotence::Idempotent, Routes, Service, ServiceContext, StartError},
    proto::echo::{
        EchoReply, EchoRequest,
        echo_server::{self, EchoServer},
    },
};

pub struct Echo;

const PRIVATE: Access = Access::Permission(authz::ECHO_CALL);

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EchoBody {
    /// What to send back.
    #[serde(default)]
    message: String,
}

#[derive(Debug, Serialize, JsonSchema)]
struct EchoJson {
    message: String,
    /// The id of the node that answered.
    #[schemars(with = "String")]
    node: Arc<str>,
    /// The caller's username (the private route only).
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
    type State = Arc<str>;

    fn name(&self) -> &'static str {
        "echo"
    }

    fn summary(&self) -> &'static str {
        "replies with the message it was sent and the id of the node that answered"
    }

    fn routes(&self) -> Routes<Arc<str>> {
        Routes::new()
            .get("", Access::Public, echo_get)
            .doc(|d| {
                d.summary("Send the message back, naming the node that answered")
                    .query::<EchoBody>()
                    .answers::<EchoJson>(200, "the message and the node")
            })
            .post("", Access::Public, echo_post)
            .doc(|d| {
                d.summary("Send the message back, naming the node that answered")
                    .body::<EchoBody>()
                    .answers::<EchoJson>(200, "the message and the node")
            })
            .get("/private", PRIVATE, echo_private)
            .doc(|d| {
                d.summary("Send the message back, naming the node and the caller")
                    .query::<EchoBody>()
                    .answers::<EchoJson>(200, "the message, the node and the caller")
            })
            .grpc(
                &[
                    ("Echo", Access::Public, Idempotent),
                    ("EchoAuthenticated", PRIVATE, Idempotent),
                ],
                |node| EchoServer::new(EchoGrpc { node }),
            )
    }

    fn start(&self, ctx: ServiceContext) -> Result<Arc<str>, StartError> {
        Ok(ctx.node_id)
    }
}
