//! Incremental (delta) ADS for one stream, as pure logic like `sotw`.
//!
//! The server tracks, per type, what the client has: the versions it ACKed
//! (or announced in `initial_resource_versions` when it reconnected) and
//! what is in flight. A response carries only the resources whose version
//! differs from what the client has, and `removed_resources` for names it
//! has that are gone. The rules (numbered as in docs/xds-protocol.md):
//! - (1) an ACK is never answered for itself.
//! - (2) a NACKed version of a resource is not sent again; a newer one is.
//! - (4) subscription changes count even with a stale nonce.
//! - (6) `*` subscribes to and unsubscribes from the wildcard; the first
//!   request's empty list is the wildcard too.
//! - (9) `initial_resource_versions` is honoured (only differences are
//!   sent, names that are gone are removed); an unsubscribe of a name the
//!   wildcard also covers keeps it; only names the client has are removed.
//! - (10) make before break, as in `sotw`, for clients that take clusters
//!   by wildcard.
//! - (11) a name subscribed to that does not exist is answered at once in
//!   `removed_resources`.
//! - (19) a name subscribed to is sent, even if the client already has its
//!   version (under the wildcard too).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{DeltaDiscoveryRequest, DeltaDiscoveryResponse},
};

use super::{
    CLUSTER, Gate, Outgoing, ROUTE, Resource, Snapshot, TYPES, affected, select,
    sotw::{TypeStatus, chunks},
    version,
};

/// In flight: per name, the version sent, or `None` for a removal.
type Pending = BTreeMap<String, Option<Arc<Resource>>>;

#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has, by name: its version.
    known: BTreeMap<String, String>,
    /// The resources it ACKed (for make before break, and CSDS).
    acked: Arc<BTreeMap<String, Arc<Resource>>>,
    /// Responses not answered yet, by nonce.
    pending: BTreeMap<u64, Pending>,
    /// Per name, the version the client refused.
    refused: BTreeMap<String, String>,
    acked_version: Option<String>,
    /// The nonce of the response it ACKed last.
    acked_nonce: Option<String>,
    nacked: Option<(String, String)>,
    /// The system version of each response in flight.
    sent_versions: BTreeMap<u64, String>,
    /// Names subscribed to by name since the last response: each is
    /// answered, with the resource even if the client has it (19), or as
    /// removed if it does not exist (11).
    asked: BTreeSet<String>,
}

impl TypeState {
    /// The version the client has or is being sent; `None` if it has none.
    fn has(&self, name: &str) -> Option<String> {
        for pending in self.pending.values().rev() {
            if let Some(p) = pending.get(name) {
                return p.as_ref().map(|r| r.hash.clone());
            }
        }
        self.known.get(name).cloned()
    }
}

/// The protocol state of one delta ADS stream.
#[derive(Debug, Default)]
pub struct Stream {
    node: Option<Node>,
    types: BTreeMap<String, TypeState>,
    nonces: u64,
}

impl Stream {
    pub fn node(&self) -> Option<&Node> {
        self.node.as_ref()
    }

    pub fn status(&self) -> Vec<TypeStatus> {
        self.types
            .iter()
            .map(|(t, s)| TypeStatus {
                type_url: t.clone(),
                acked_version: s.acked_version.clone(),
                acked_nonce: s.acked_nonce.clone(),
                nacked: s.nacked.clone(),
                acked_resources: s.acked.clone(),
            })
            .collect()
    }

    /// Handles one request; returns the responses to send, in order.
    #[cfg(test)]
    pub fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Vec<DeltaDiscoveryResponse> {
        let out = self.on_request_outgoing(req, snap);
        out.into_iter().map(Outgoing::materialize).collect()
    }

    /// The snapshot changed: the responses to push, clusters first.
    #[cfg(test)]
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DeltaDiscoveryResponse> {
        let out = self.on_snapshot_outgoing(snap);
        out.into_iter().map(Outgoing::materialize).collect()
    }

    /// `on_request`, with the resources still shared (see `Outgoing`).
    pub fn on_request_outgoing(
        &mut self,
        req: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        if self.node.is_none() {
            self.node = req.node.clone();
        }
        let type_url = req.type_url.clone();
        let state = self.types.entry(type_url.clone()).or_default();
        if !state.subscribed {
            state.subscribed = true;
            state.wildcard = req.resource_names_subscribe.is_empty();
            state.known = req.initial_resource_versions.clone().into_iter().collect();
        }
        // (4) Subscription changes count whatever the nonce.
        for name in &req.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
                state.asked.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
                continue;
            }
            state.names.remove(name);
            state.asked.remove(name);
            // (9) Still covered by the wildcard: the client keeps it.
            let covered = state.wildcard && snap.get(&type_url, name).is_some_and(|r| r.wildcard);
            if !covered {
                state.known.remove(name);
                if state.acked.contains_key(name) {
                    Arc::make_mut(&mut state.acked).remove(name);
                }
                for pending in state.pending.values_mut() {
                    pending.remove(name);
                }
            }
        }
        if !req.response_nonce.is_empty()
            && let Ok(nonce) = req.response_nonce.parse::<u64>()
            && let Some(sent) = state.pending.remove(&nonce)
        {
            let system_version = state.sent_versions.remove(&nonce).unwrap_or_default();
            match &req.error_detail {
                Some(status) => {
                    for (name, r) in &sent {
                        if let Some(r) = r {
                            state.refused.insert(name.clone(), r.hash.clone());
                        }
                    }
                    state.nacked = Some((system_version, status.message.clone()));
                }
                None => {
                    let acked = Arc::make_mut(&mut state.acked);
                    for (name, r) in sent {
                        state.refused.remove(&name);
                        match r {
                            Some(r) => {
                                state.known.insert(name.clone(), r.hash.clone());
                                acked.insert(name, r);
                            }
                            None => {
                                state.known.remove(&name);
                                acked.remove(&name);
                            }
                        }
                    }
                    state.acked_version = Some(system_version);
                    state.acked_nonce = Some(req.response_nonce.clone());
                    state.nacked = None;
                }
            }
        }
        // An ACK of clusters or routes may unblock the other (10).
        affected(&type_url)
            .into_iter()
            .flat_map(|t| self.evaluate(t, snap))
            .collect()
    }

    /// `on_snapshot`, with the resources still shared.
    pub fn on_snapshot_outgoing(
        &mut self,
        snap: &Snapshot,
    ) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        TYPES.iter().flat_map(|t| self.evaluate(t, snap)).collect()
    }

    fn evaluate(
        &mut self,
        type_url: &str,
        snap: &Snapshot,
    ) -> Vec<Outgoing<DeltaDiscoveryResponse>> {
        let Some(state) = self.types.get(type_url).filter(|s| s.subscribed) else {
            return Vec::new();
        };
        let empty = BTreeMap::new();
        let gate = self
            .types
            .get(CLUSTER)
            .is_some_and(|c| c.wildcard)
            .then(|| Gate {
                acked_clusters: self.types.get(CLUSTER).map_or(&empty, |c| &c.acked),
                acked_routes: self.types.get(ROUTE).map_or(&empty, |r| &r.acked),
            });
        // Held back: sent when the clusters' ACK comes.
        let Some(want) = select(type_url, snap, state.wildcard, &state.names, gate) else {
            return Vec::new();
        };
        let mut sent: Pending = BTreeMap::new();
        for (name, r) in &want {
            let has = state.has(name);
            let refused = state.refused.get(name) == Some(&r.hash);
            let asked = state.asked.contains(name);
            if asked || (has.as_deref() != Some(r.hash.as_str()) && !refused) {
                sent.insert(name.clone(), Some(r.clone()));
            }
        }
        let mut names: BTreeSet<&String> = state.known.keys().collect();
        names.extend(state.pending.values().flat_map(|p| p.keys()));
        // (11) A name asked for that does not exist is said to be removed,
        // so that the client need not wait for its does-not-exist timer.
        names.extend(&state.asked);
        for name in names {
            let asked = state.asked.contains(name);
            if !want.contains_key(name) && (asked || state.has(name).is_some()) {
                sent.insert(name.clone(), None);
            }
        }
        if sent.is_empty() {
            return Vec::new();
        }
        // In pieces of at most `CHUNK_BYTES` (removals with the first), so
        // that no response grows with the whole set.
        let system_version = version(want.values());
        let updates: Vec<&Arc<Resource>> = sent.values().flatten().collect();
        let removed: Vec<String> = sent
            .iter()
            .filter(|(_, r)| r.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        let mut pieces: Vec<(Pending, Outgoing<DeltaDiscoveryResponse>)> = Vec::new();
        for (i, piece) in chunks(&updates).into_iter().enumerate() {
            self.nonces += 1;
            let mut pending: Pending = piece
                .iter()
                .map(|r| (r.name.clone(), Some((*r).clone())))
                .collect();
            let removed_here = if i == 0 { removed.clone() } else { Vec::new() };
            pending.extend(removed_here.iter().map(|n| (n.clone(), None)));
            let response = Outgoing {
                message: DeltaDiscoveryResponse {
                    system_version_info: system_version.clone(),
                    removed_resources: removed_here,
                    type_url: type_url.to_owned(),
                    nonce: self.nonces.to_string(),
                    ..Default::default()
                },
                resources: piece.iter().map(|r| (*r).clone()).collect(),
            };
            pieces.push((pending, response));
        }
        let state = self.types.get_mut(type_url).expect("checked above");
        state.asked.clear();
        let mut out = Vec::with_capacity(pieces.len());
        for (pending, response) in pieces {
            let nonce: u64 = response.message.nonce.parse().expect("our own nonce");
            state.pending.insert(nonce, pending);
            state.sent_versions.insert(nonce, system_version.clone());
            out.push(response);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status;

    use super::*;
    use crate::xds::{ENDPOINT, LISTENER, resources::INGRESS_ROUTES, tests::service};

    fn req(
        type_url: &str,
        subscribe: &[&str],
        unsubscribe: &[&str],
        nonce: &str,
    ) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn ack(r: &DeltaDiscoveryResponse) -> DeltaDiscoveryRequest {
        req(&r.type_url, &[], &[], &r.nonce)
    }

    fn names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
        r.resources.iter().map(|x| x.name.as_str()).collect()
    }

    fn snap(services: &[(&str, &[u16])]) -> Snapshot {
        let views: Vec<_> = services.iter().map(|(n, p)| service(n, p)).collect();
        Snapshot::build(&views, Some("127.0.0.1:10000".parse().unwrap()))
    }

    #[test]
    fn only_differences_are_sent_and_acks_are_not_answered() {
        let s1 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let mut st = Stream::default();
        let r = st.on_request(req(CLUSTER, &[], &[], ""), &s1).remove(0);
        assert_eq!(names(&r), ["echo", "kv"]);
        assert!(st.on_request(ack(&r), &s1).is_empty(), "ACK answered");
        // One endpoint changes: only that assignment goes out.
        let mut e = Stream::default();
        let r = e
            .on_request(req(ENDPOINT, &["echo", "kv"], &[], ""), &s1)
            .remove(0);
        assert!(e.on_request(ack(&r), &s1).is_empty());
        let s2 = snap(&[("echo", &[1]), ("kv", &[3])]);
        let r = e.on_snapshot(&s2).remove(0);
        assert_eq!(names(&r), ["kv"]);
        assert!(r.removed_resources.is_empty());
        // A service leaves: its cluster is removed.
        let s3 = snap(&[("echo", &[1])]);
        let r = st.on_snapshot(&s3).remove(0);
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, ["kv"]);
    }

    #[test]
    fn a_reconnect_with_initial_versions_gets_only_what_changed() {
        let s1 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let known: std::collections::HashMap<String, String> = s1
            .of(CLUSTER)
            .unwrap()
            .iter()
            .map(|(n, r)| (n.clone(), r.hash.clone()))
            .chain([("gone".to_string(), "0123".to_string())])
            .collect();
        let mut st = Stream::default();
        let out = st.on_request(
            DeltaDiscoveryRequest {
                initial_resource_versions: known,
                ..req(CLUSTER, &[], &[], "")
            },
            &s1,
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].resources.is_empty(), "resent what the client has");
        assert_eq!(out[0].removed_resources, ["gone"]);
    }

    #[test]
    fn large_updates_go_in_pieces_each_acked_on_its_own() {
        let many: Vec<u16> = (1..=1000).collect();
        let views: Vec<_> = (0..20)
            .map(|i| service(&format!("s{i:02}"), &many))
            .collect();
        let s1 = Snapshot::build(&views, None);
        let mut st = Stream::default();
        let pieces = st.on_request(req(CLUSTER, &[], &[], ""), &s1);
        assert_eq!(pieces.len(), 1, "clusters are small");
        let mut e = Stream::default();
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let pieces = e.on_request(req(ENDPOINT, &names, &[], ""), &s1);
        assert!(pieces.len() > 1);
        assert_eq!(pieces.iter().map(|p| p.resources.len()).sum::<usize>(), 20);
        for p in &pieces {
            assert!(e.on_request(ack(p), &s1).is_empty());
        }
        assert!(e.on_snapshot(&s1).is_empty(), "everything was ACKed");
    }

    #[test]
    fn a_nacked_version_is_not_resent_but_a_newer_one_is() {
        let s1 = snap(&[("echo", &[1])]);
        let mut st = Stream::default();
        let r = st
            .on_request(req(ENDPOINT, &["echo"], &[], ""), &s1)
            .remove(0);
        let nack = DeltaDiscoveryRequest {
            error_detail: Some(Status {
                code: 3,
                message: "bad endpoints".into(),
                ..Default::default()
            }),
            ..ack(&r)
        };
        assert!(st.on_request(nack, &s1).is_empty(), "resent after a NACK");
        assert!(st.on_snapshot(&s1).is_empty());
        assert_eq!(st.status()[0].nacked.as_ref().unwrap().1, "bad endpoints");
        let r = st.on_snapshot(&snap(&[("echo", &[2])]));
        assert_eq!(r.len(), 1);
        assert_eq!(names(&r[0]), ["echo"]);
    }

    #[test]
    fn subscriptions_count_with_a_stale_nonce_and_the_wildcard_keeps_what_it_covers() {
        let s1 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let mut st = Stream::default();
        let first = st
            .on_request(req(LISTENER, &["echo"], &[], ""), &s1)
            .remove(0);
        assert_eq!(names(&first), ["echo"]);
        // A stale nonce, with a new name: the name is served.
        let out = st.on_request(req(LISTENER, &["kv"], &[], "999"), &s1);
        assert_eq!(names(&out[0]), ["kv"]);
        // Wildcard clients: unsubscribing a name the wildcard covers keeps
        // it; nothing is removed.
        let mut w = Stream::default();
        let r = w.on_request(req(CLUSTER, &[], &[], ""), &s1).remove(0);
        assert!(w.on_request(ack(&r), &s1).is_empty());
        let out = w.on_request(req(CLUSTER, &[], &["kv"], ""), &s1);
        assert!(out.is_empty(), "{out:?}");
        assert!(w.on_snapshot(&s1).is_empty());
        // An explicit subscribe to a covered name it has: sent (19); the
        // unsubscribe after it: still covered, nothing removed.
        let out = w.on_request(req(CLUSTER, &["kv"], &[], ""), &s1);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["kv"]);
        assert!(out[0].removed_resources.is_empty());
        assert!(w.on_request(ack(&out[0]), &s1).is_empty());
        let out = w.on_request(req(CLUSTER, &[], &["kv"], ""), &s1);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_resubscribe_is_answered_and_a_name_that_does_not_exist_is_said_removed() {
        let s1 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let mut st = Stream::default();
        let r = st
            .on_request(req(ENDPOINT, &["echo"], &[], ""), &s1)
            .remove(0);
        assert!(st.on_request(ack(&r), &s1).is_empty());
        // Subscribing again to what it has: sent again (19).
        let out = st.on_request(req(ENDPOINT, &["echo"], &[], ""), &s1);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["echo"]);
        assert!(st.on_request(ack(&out[0]), &s1).is_empty());
        // A name that does not exist: answered at once as removed (11).
        let out = st.on_request(req(ENDPOINT, &["nope"], &[], ""), &s1);
        assert_eq!(out.len(), 1);
        assert!(out[0].resources.is_empty());
        assert_eq!(out[0].removed_resources, ["nope"]);
        assert!(st.on_request(ack(&out[0]), &s1).is_empty());
        // When it appears, it is sent like any other.
        let s2 = snap(&[("echo", &[1]), ("kv", &[2]), ("nope", &[3])]);
        let out = st.on_snapshot(&s2);
        assert_eq!(names(&out[0]), ["nope"]);
    }

    #[test]
    fn make_before_break_holds_routes_until_their_clusters_are_acked() {
        let s1 = snap(&[("echo", &[1])]);
        let mut envoy = Stream::default();
        let c = envoy.on_request(req(CLUSTER, &[], &[], ""), &s1).remove(0);
        assert!(
            envoy
                .on_request(req(ROUTE, &[INGRESS_ROUTES], &[], ""), &s1)
                .is_empty()
        );
        let out = envoy.on_request(ack(&c), &s1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_url, ROUTE);
        assert!(envoy.on_request(ack(&out[0]), &s1).is_empty());
        // Removal: routes first, the cluster after their ACK.
        let s2 = snap(&[]);
        let out = envoy.on_snapshot(&s2);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ROUTE]
        );
        let out = envoy.on_request(ack(&out[0]), &s2);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].removed_resources, ["echo"]);
    }
}
