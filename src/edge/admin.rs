//! The admin listener: liveness, readiness, metrics and status, and the
//! status page at `/` that shows `/status` to a person.
//!
//! `/readyz` answers 200 only when every selected service has run its
//! migrations and started, and not while the node drains; a load balancer
//! that follows it never sends a request to a node that cannot serve it.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, LazyLock, Mutex,
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

    /// Whether the node has begun its graceful stop.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
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
    /// A node without the `db` role, a client of the members' database.
    #[serde(skip)]
    pub store_client: bool,
    pub version: &'static str,
    pub public: String,
    pub admin: String,
    pub database: String,
}

/// A part of `/status` that another part of the node provides (the xDS
/// server's view of its clients), read at each request.
pub type StatusPart = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// The parts of `/status` other parts of the node provide, where the node
/// has them.
#[derive(Clone, Default)]
pub struct StatusParts {
    /// The xDS server's clients (a node with the `xds` role).
    pub xds: Option<StatusPart>,
    /// The operator's certificates the public listener serves (`tls.public`).
    pub public_tls: Option<StatusPart>,
}

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
    parts: StatusParts,
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

/// The status page: one HTML file with its style and script inline, which
/// reads `/status` every second and loads nothing from anywhere else.
const STATUS_PAGE: &str = include_str!("status.html");

static STATUS_PAGE_POLICY: LazyLock<String> =
    LazyLock::new(|| content_security_policy(STATUS_PAGE));

/// A Content-Security-Policy that lets `page` run its own inline style and
/// script (by their SHA-256) and read this listener (`/status`), and
/// nothing else: no external load, no other script, no framing.
fn content_security_policy(page: &str) -> String {
    use base64::Engine;
    use sha2::Digest;
    let hash = |element: &str| {
        let open = format!("<{element}>");
        let start = page.find(&open).map(|i| i + open.len());
        let end = page.find(&format!("</{element}>"));
        let (Some(start), Some(end)) = (start, end) else {
            panic!("the status page has no <{element}> element");
        };
        let digest = sha2::Sha256::digest(&page.as_bytes()[start..end]);
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    format!(
        "default-src 'none'; connect-src 'self'; script-src {}; style-src {}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        hash("script"),
        hash("style")
    )
}

async fn status_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, STATUS_PAGE_POLICY.as_str()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STATUS_PAGE,
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
    let cluster = s.cluster.get();
    Json(serde_json::json!({
        "node": &*s.info,
        "mode": mode(cluster.is_some(), s.info.store_client),
        "ready": ready,
        "draining": draining,
        "uptime_seconds": s.started.elapsed().as_secs(),
        "services": services,
        "cluster": cluster.map(|c| c.status()),
        "registry": s.registry.status(),
        "xds": s.parts.xds.as_ref().map(|x| x()),
        "public_tls": s.parts.public_tls.as_ref().map(|x| x()),
    }))
}

/// How the node runs now: a member of a Raft group (HA, or the `db` role of
/// scaled mode; a single node becomes one with `flotilla cluster init`), a
/// store client of the members (scaled mode), or alone.
fn mode(member: bool, store_client: bool) -> &'static str {
    match (member, store_client) {
        (true, _) => "member",
        (false, true) => "store client",
        (false, false) => "single",
    }
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
    parts: StatusParts,
    control: Control,
) -> Router {
    Router::new()
        .route("/", get(status_page))
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
            parts,
            readiness,
            metrics,
            info: Arc::new(info),
            started: Instant::now(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mode_follows_the_cluster_the_node_is_in_now() {
        assert_eq!(mode(false, false), "single");
        assert_eq!(mode(true, false), "member");
        assert_eq!(mode(false, true), "store client");
    }

    #[test]
    fn the_status_page_loads_nothing_but_its_own_inline_script_and_style() {
        for element in ["script", "style"] {
            assert_eq!(
                STATUS_PAGE.matches(&format!("<{element}")).count(),
                1,
                "the policy allows one inline <{element}>; a second would be blocked"
            );
        }
        for external in ["http:", "https:", " src=", "@import", "url("] {
            assert!(
                !STATUS_PAGE.contains(external),
                "the page refers to something outside it: {external}"
            );
        }
        let policy = content_security_policy(STATUS_PAGE);
        assert!(policy.starts_with("default-src 'none'; connect-src 'self';"));
        let hashes = policy.matches("'sha256-").count();
        assert_eq!(hashes, 2, "{policy}");
        // A changed script gets another hash.
        let changed = STATUS_PAGE.replace("REFRESH_MS = 1000", "REFRESH_MS = 2000");
        assert_ne!(content_security_policy(&changed), policy);
    }
}
