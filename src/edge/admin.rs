//! The admin listener: liveness, readiness, metrics and status.
//!
//! `/readyz` answers 200 only when every selected service has run its
//! migrations and started, and not while the node drains; a load balancer
//! that follows it never sends a request to a node that cannot serve it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use axum::{Json, Router, extract::State, response::IntoResponse, routing::get};
use http::{StatusCode, header};
use serde::Serialize;

use crate::{cluster::ClusterSlot, mesh::registry::Registry, telemetry::metrics::Metrics};

/// Where a selected service is in its start-up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum ServiceState {
    Pending,
    Migrating,
    /// Its start needs the cluster, which cannot take writes yet (a member
    /// started before a majority of the others): why, as the cluster said.
    Waiting(String),
    Running,
    Failed(String),
}

/// Shared start-up and shutdown state of the node.
pub struct Readiness {
    services: Mutex<BTreeMap<&'static str, ServiceState>>,
    draining: AtomicBool,
    /// Bumped at every change, for those who follow it (gRPC health).
    changed: tokio::sync::watch::Sender<()>,
}

impl Readiness {
    pub fn new(services: &[&'static str]) -> Readiness {
        Readiness {
            services: Mutex::new(
                services
                    .iter()
                    .map(|s| (*s, ServiceState::Pending))
                    .collect(),
            ),
            draining: AtomicBool::new(false),
            changed: tokio::sync::watch::Sender::new(()),
        }
    }

    /// Wakes at every change of a service's state or of draining.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<()> {
        self.changed.subscribe()
    }

    /// Whether `service` runs here and takes traffic (not while draining).
    pub fn serves(&self, service: &str) -> bool {
        let (_, draining, services) = self.snapshot();
        !draining && services.get(service) == Some(&ServiceState::Running)
    }

    pub fn set(&self, service: &'static str, state: ServiceState) {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(service, state);
        self.changed.send_replace(());
    }

    /// Forgets a service this node no longer runs.
    pub fn remove(&self, service: &str) {
        self.services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(service);
        self.changed.send_replace(());
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.changed.send_replace(());
    }

    /// Whether the node takes traffic: every service running, not draining.
    pub fn serving(&self) -> bool {
        self.snapshot().0
    }

    fn snapshot(&self) -> (bool, bool, BTreeMap<&'static str, ServiceState>) {
        let services = self
            .services
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let draining = self.draining.load(Ordering::SeqCst);
        let ready = !draining && services.values().all(|s| *s == ServiceState::Running);
        (ready, draining, services)
    }
}

/// What `/status` reports besides readiness.
#[derive(Clone, Debug, Serialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub version: &'static str,
    pub public: String,
    pub admin: String,
    pub database: String,
}

/// A part of `/status` that another part of the node provides (the xDS
/// server's view of its clients), read at each request.
pub type StatusPart = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// An operation a `flotilla` command runs on this running node.
#[derive(Clone, Debug, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlOp {
    /// Form a one-member Raft group on this single node's data, with the
    /// node's new config at `config`.
    ClusterInit { config: std::path::PathBuf },
    /// Apply the services of the node's config at `config`: the ones it
    /// drops are drained (the others stop sending them here) and stopped.
    Reconfigure { config: std::path::PathBuf },
    /// End the group on its last member, which runs with the single-mode
    /// config at `config` from then on.
    ClusterLeave { config: std::path::PathBuf },
}

/// How the node runs a [`ControlOp`].
pub type ControlRun = Arc<
    dyn Fn(ControlOp) -> futures_util::future::BoxFuture<'static, Result<serde_json::Value, String>>
        + Send
        + Sync,
>;

/// The header that carries the node's control token.
pub const CONTROL_HEADER: &str = "x-flotilla-control";

/// Operations on the running node (`POST /control`), for the `flotilla`
/// commands run on its host: authorized by the control token, a file only
/// its data dir holds (see `node::control_token`).
#[derive(Clone)]
pub struct Control {
    pub token: Arc<str>,
    pub run: ControlRun,
}

#[derive(Clone)]
struct AdminState {
    control: Control,
    cluster: ClusterSlot,
    registry: Registry,
    xds: Option<StatusPart>,
    readiness: Arc<Readiness>,
    metrics: Metrics,
    info: Arc<NodeInfo>,
    started: Instant,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AdminState>) -> impl IntoResponse {
    let (ready, draining, services) = s.readiness.snapshot();
    let has_leader = s.cluster.get().is_none_or(|c| c.has_leader());
    let ready = ready && has_leader;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({
            "ready": ready,
            "draining": draining,
            "services": services,
            "cluster": s.cluster.get().map(|c| c.status()),
        })),
    )
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

async fn status(State(s): State<AdminState>) -> impl IntoResponse {
    let (ready, draining, services) = s.readiness.snapshot();
    Json(serde_json::json!({
        "node": &*s.info,
        "ready": ready,
        "draining": draining,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "services": services,
        "cluster": s.cluster.get().map(|c| c.status()),
        "registry": s.registry.nodes(),
        "xds": s.xds.as_ref().map(|x| x()),
    }))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Isolate {
    isolated: bool,
}

/// Fault injection for partition tests; refused unless the config allows it.
async fn isolate(State(s): State<AdminState>, Json(body): Json<Isolate>) -> impl IntoResponse {
    match s.cluster.get().map(|c| c.set_isolated(body.isolated)) {
        Some(Ok(())) => (
            StatusCode::OK,
            Json(serde_json::json!({ "isolated": body.isolated })),
        ),
        Some(Err(e)) => (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "forbidden", "message": e })),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                serde_json::json!({ "error": "not_found", "message": "this node is not in a cluster" }),
            ),
        ),
    }
}

/// Runs a control operation for a caller holding the node's token.
async fn run_control(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    Json(op): Json<ControlOp>,
) -> impl IntoResponse {
    use subtle::ConstantTimeEq;
    let presented = headers
        .get(CONTROL_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if !bool::from(presented.ct_eq(s.control.token.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({
                "error": "unauthorized",
                "message": "missing or wrong control token: run the command on the node's host, with a config whose data_dir is the node's (it holds the token)",
            })),
        );
    }
    tracing::info!(?op, "control operation");
    match (s.control.run)(op).await {
        Ok(value) => (StatusCode::OK, Json(value)),
        Err(message) => {
            tracing::warn!(%message, "control operation refused or failed");
            (
                StatusCode::CONFLICT,
                Json(serde_json::json!({ "error": "refused", "message": message })),
            )
        }
    }
}

/// The admin router.
pub fn router(
    readiness: Arc<Readiness>,
    metrics: Metrics,
    info: NodeInfo,
    cluster: ClusterSlot,
    registry: Registry,
    xds: Option<StatusPart>,
    control: Control,
) -> Router {
    Router::new()
        .route("/control", axum::routing::post(run_control))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route("/status", get(status))
        .route("/debug/isolate", axum::routing::post(isolate))
        .layer(axum::middleware::map_response(
            crate::edge::json_line::terminate,
        ))
        .with_state(AdminState {
            control,
            cluster,
            registry,
            xds,
            readiness,
            metrics,
            info: Arc::new(info),
            started: Instant::now(),
        })
}
