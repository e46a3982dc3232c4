//! Who is connected to the xDS server and what each client has ACKed and
//! NACKed, per resource type: for `/status` on the admin listener and for
//! CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`) on the xDS
//! listener. A stream's entry is removed when the stream ends.

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use envoy_types::pb::envoy::{
    admin::v3::{ClientResourceStatus, UpdateFailureState},
    config::core::v3::Node,
    service::status::v3::{
        ClientConfig, ClientStatusRequest, ClientStatusResponse,
        client_config::GenericXdsConfig,
        client_status_discovery_service_server::{
            ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
        },
    },
};
use tonic::{Request, Response, Status, Streaming};

use super::{Resource, sidecar::Sidecar, sotw::TypeStatus};

/// One connected stream.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientView {
    pub stream: u64,
    /// `sotw` or `delta`.
    pub variant: &'static str,
    pub node_id: String,
    /// An Envoy sidecar: its pod, inbound and outbound listeners.
    pub sidecar: Option<Sidecar>,
    pub types: Vec<TypeView>,
    pub nacks: u64,
    /// The last NACK of this stream, kept after a later ACK clears the
    /// type's own (`TypeView::nack_error`).
    pub last_nack: Option<Nack>,
}

/// A NACK: which type and version the client refused, and its error.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Nack {
    pub type_url: String,
    pub version: String,
    pub error: String,
    /// When it came (ms since the epoch).
    pub at_ms: i64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct TypeView {
    pub type_url: String,
    pub acked_version: Option<String>,
    /// The nonce of the response it ACKed last.
    pub acked_nonce: Option<String>,
    pub nacked_version: Option<String>,
    pub nack_error: Option<String>,
    /// The resources it ACKed (CSDS gives them; `/status` only counts).
    #[serde(skip)]
    pub resources: Arc<BTreeMap<String, Arc<Resource>>>,
    pub acked_resources: usize,
}

#[derive(Default)]
struct Inner {
    clients: Mutex<BTreeMap<u64, (Option<Node>, ClientView)>>,
    next: AtomicU64,
    nacks: AtomicU64,
}

/// The connected clients; cheap to clone.
#[derive(Clone, Default)]
pub struct Clients(Arc<Inner>);

/// A stream's entry; removed when dropped.
pub struct Entry {
    clients: Clients,
    id: u64,
}

impl Clients {
    /// What `/status` shows of the xDS server: every client's view, and
    /// the NACKs counted.
    pub fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "clients": self.views(),
            "nacks_total": self.nacks(),
        })
    }

    pub fn connect(&self, variant: &'static str) -> Entry {
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        let view = ClientView {
            stream: id,
            variant,
            node_id: String::new(),
            sidecar: None,
            types: Vec::new(),
            nacks: 0,
            last_nack: None,
        };
        self.lock().insert(id, (None, view));
        Entry {
            clients: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Option<Node>, ClientView)>> {
        self.0.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn views(&self) -> Vec<ClientView> {
        self.lock().values().map(|(_, v)| v.clone()).collect()
    }

    /// NACKs received since the server started, over all streams.
    pub fn nacks(&self) -> u64 {
        self.0.nacks.load(Ordering::Relaxed)
    }

    /// The CSDS answer for the clients `request`'s node matchers select
    /// (all without any): each ACKed resource with its config, and per
    /// type a NACK with Envoy's error, or a request not ACKed yet.
    fn client_status(&self, request: &ClientStatusRequest) -> Result<ClientStatusResponse, Status> {
        let matchers = request
            .node_matchers
            .iter()
            .map(NodeIdMatcher::new)
            .collect::<Result<Vec<_>, _>>()?;
        let config = self
            .lock()
            .values()
            .filter(|(node, _)| {
                let id = node.as_ref().map_or("", |n| n.id.as_str());
                matchers.is_empty() || matchers.iter().any(|m| m.matches(id))
            })
            .map(|(node, v)| ClientConfig {
                node: node.clone(),
                generic_xds_configs: v.types.iter().flat_map(type_configs).collect(),
                ..Default::default()
            })
            .collect();
        Ok(ClientStatusResponse { config })
    }

    pub fn csds(&self) -> ClientStatusDiscoveryServiceServer<Csds> {
        ClientStatusDiscoveryServiceServer::new(Csds(self.clone()))
    }
}

impl Entry {
    /// Records the stream's node and per-type state after a request.
    pub fn update(&self, node: Option<&Node>, status: Vec<TypeStatus>) {
        let mut clients = self.clients.lock();
        let Some((stored, view)) = clients.get_mut(&self.id) else {
            return;
        };
        if stored.is_none() {
            *stored = node.cloned();
            view.node_id = node.map(|n| n.id.clone()).unwrap_or_default();
            view.sidecar = node.and_then(|n| Sidecar::of(n).ok().flatten());
        }
        let before: BTreeMap<String, Option<String>> = view
            .types
            .iter()
            .map(|t| (t.type_url.clone(), t.nacked_version.clone()))
            .collect();
        view.types = status
            .into_iter()
            .map(|s| TypeView {
                type_url: s.type_url,
                acked_version: s.acked_version,
                acked_nonce: s.acked_nonce,
                nacked_version: s.nacked.as_ref().map(|(v, _)| v.clone()),
                nack_error: s.nacked.map(|(_, e)| e),
                acked_resources: s.acked_resources.len(),
                resources: s.acked_resources,
            })
            .collect();
        let new_nacks: Vec<Nack> = view
            .types
            .iter()
            .filter(|t| before.get(&t.type_url) != Some(&t.nacked_version))
            .filter_map(|t| {
                Some(Nack {
                    type_url: t.type_url.clone(),
                    version: t.nacked_version.clone()?,
                    error: t.nack_error.clone().unwrap_or_default(),
                    at_ms: crate::store::now_ms(),
                })
            })
            .collect();
        if let Some(last) = new_nacks.last() {
            let count = new_nacks.len() as u64;
            view.nacks += count;
            view.last_nack = Some(last.clone());
            self.clients.0.nacks.fetch_add(count, Ordering::Relaxed);
            tracing::warn!(
                node = %view.node_id,
                types = ?view.types.iter().filter(|t| t.nack_error.is_some()).map(|t| (&t.type_url, &t.nack_error)).collect::<Vec<_>>(),
                "an xDS client refused an update (NACK)"
            );
        }
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.id);
    }
}

/// One type's entries in a CSDS answer.
fn type_configs(t: &TypeView) -> Vec<GenericXdsConfig> {
    let version = t.acked_version.clone().unwrap_or_default();
    let mut out: Vec<GenericXdsConfig> = t
        .resources
        .values()
        .map(|r| GenericXdsConfig {
            type_url: t.type_url.clone(),
            name: r.name.clone(),
            version_info: version.clone(),
            xds_config: Some(r.body.clone()),
            client_status: ClientResourceStatus::Acked as i32,
            ..Default::default()
        })
        .collect();
    if let Some(error) = &t.nack_error {
        out.push(GenericXdsConfig {
            type_url: t.type_url.clone(),
            version_info: version,
            client_status: ClientResourceStatus::Nacked as i32,
            error_state: Some(UpdateFailureState {
                details: error.clone(),
                version_info: t.nacked_version.clone().unwrap_or_default(),
                ..Default::default()
            }),
            ..Default::default()
        });
    } else if out.is_empty() {
        // Subscribed, nothing ACKed yet (or an empty set ACKed).
        out.push(GenericXdsConfig {
            type_url: t.type_url.clone(),
            version_info: version,
            client_status: if t.acked_version.is_some() {
                ClientResourceStatus::Acked
            } else {
                ClientResourceStatus::Requested
            } as i32,
            ..Default::default()
        });
    }
    out
}

/// A CSDS node matcher on the node id: exact, prefix, suffix or contains,
/// optionally ignoring case. Metadata matchers and regular expressions are
/// refused rather than ignored.
struct NodeIdMatcher {
    pattern: Pattern,
    ignore_case: bool,
}

enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

impl NodeIdMatcher {
    fn new(m: &envoy_types::pb::envoy::r#type::matcher::v3::NodeMatcher) -> Result<Self, Status> {
        use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
        if !m.node_metadatas.is_empty() {
            return Err(Status::invalid_argument(
                "CSDS node_matchers: node_metadatas is not supported; match on node_id (exact, prefix, suffix or contains)",
            ));
        }
        let Some(id) = &m.node_id else {
            return Err(Status::invalid_argument(
                "CSDS node_matchers: a matcher without node_id matches nothing; give node_id (exact, prefix, suffix or contains)",
            ));
        };
        let fold = |s: &str| {
            if id.ignore_case {
                s.to_lowercase()
            } else {
                s.to_owned()
            }
        };
        let pattern = match &id.match_pattern {
            Some(MatchPattern::Exact(s)) => Pattern::Exact(fold(s)),
            Some(MatchPattern::Prefix(s)) => Pattern::Prefix(fold(s)),
            Some(MatchPattern::Suffix(s)) => Pattern::Suffix(fold(s)),
            Some(MatchPattern::Contains(s)) => Pattern::Contains(fold(s)),
            _ => {
                return Err(Status::invalid_argument(
                    "CSDS node_matchers: node_id supports exact, prefix, suffix and contains (not safe_regex or custom)",
                ));
            }
        };
        Ok(NodeIdMatcher {
            pattern,
            ignore_case: id.ignore_case,
        })
    }

    fn matches(&self, id: &str) -> bool {
        let id = if self.ignore_case {
            id.to_lowercase()
        } else {
            id.to_owned()
        };
        match &self.pattern {
            Pattern::Exact(s) => id == *s,
            Pattern::Prefix(s) => id.starts_with(s.as_str()),
            Pattern::Suffix(s) => id.ends_with(s.as_str()),
            Pattern::Contains(s) => id.contains(s.as_str()),
        }
    }
}

/// CSDS over the connected clients.
pub struct Csds(Clients);

type StatusStream =
    Pin<Box<dyn futures_util::Stream<Item = Result<ClientStatusResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for Csds {
    type StreamClientStatusStream = StatusStream;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<StatusStream>, Status> {
        let clients = self.0.clone();
        let answers = futures_util::stream::unfold(
            (request.into_inner(), clients),
            |(mut incoming, clients)| async move {
                match incoming.message().await {
                    Ok(Some(request)) => {
                        Some((clients.client_status(&request), (incoming, clients)))
                    }
                    _ => None,
                }
            },
        );
        Ok(Response::new(Box::pin(answers)))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        Ok(Response::new(self.0.client_status(request.get_ref())?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eds(acked: Option<&str>, nacked: Option<(&str, &str)>) -> Vec<TypeStatus> {
        vec![TypeStatus {
            type_url: super::super::ENDPOINT.into(),
            acked_version: acked.map(str::to_owned),
            acked_nonce: acked.map(|_| "7".to_owned()),
            nacked: nacked.map(|(v, e)| (v.to_owned(), e.to_owned())),
            acked_resources: Arc::default(),
        }]
    }

    #[test]
    fn the_last_nack_outlives_the_ack_that_clears_its_type() {
        let clients = Clients::default();
        let entry = clients.connect("sotw");
        entry.update(None, eds(Some("v1"), Some(("v2", "bad cluster"))));
        // The same refusal again is not another NACK.
        entry.update(None, eds(Some("v1"), Some(("v2", "bad cluster"))));
        let view = &clients.views()[0];
        assert_eq!(view.nacks, 1);
        assert_eq!(view.types[0].acked_nonce.as_deref(), Some("7"));
        let nack = view.last_nack.clone().expect("a NACK");
        assert_eq!(
            (nack.version.as_str(), nack.error.as_str()),
            ("v2", "bad cluster")
        );

        entry.update(None, eds(Some("v3"), None));
        let view = &clients.views()[0];
        assert_eq!(view.types[0].nack_error, None);
        assert_eq!(view.last_nack, Some(nack), "kept after the ACK");
        assert_eq!(clients.nacks(), 1);
        drop(entry);
        assert!(clients.views().is_empty());
    }
}
