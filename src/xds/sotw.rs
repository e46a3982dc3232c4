//! State-of-the-world ADS for one stream: what to answer to a request, and
//! what to push when the snapshot changes. No I/O here; the server feeds
//! requests and snapshots in and sends what comes out.
//!
//! The rules (numbered as in docs/xds-protocol.md):
//! - (1) an ACK is never answered; a response goes out only when what the
//!   client subscribes to changed, or it subscribed to something new (8).
//! - (2) a NACK is recorded (version and error) and the same content is not
//!   sent again; the next different content is.
//! - (3) an empty nonce is a (re)subscription and is answered, even when it
//!   carries a version.
//! - (4) a request whose nonce is not the last one sent for its type is
//!   stale and ignored.
//! - (5) the node is taken from the first request.
//! - (6) an empty name list on the first request of a type, or `*`, is a
//!   wildcard; later an empty list unsubscribes.
//! - (7) a listener or cluster response carries the full subscribed set
//!   (a missing name is a deletion); route configurations and endpoints
//!   are sent when new or changed; never a duplicate.
//! - (10) make before break, for clients that take clusters by wildcard
//!   (Envoy): a route configuration is sent only once the clusters it names
//!   have been ACKed; a cluster still named by ACKed routes stays in the
//!   cluster responses until routes without it are ACKed.
//! - (11) names that do not exist are answered at once with a response
//!   without them.
//! - (19) a name subscribed to again after an unsubscribe is sent again,
//!   even if it did not change since it was last sent.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use envoy_types::pb::envoy::{
    config::core::v3::Node,
    service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
};

use super::{
    CLUSTER, ENDPOINT, Gate, Outgoing, ROUTE, Resource, Snapshot, TYPES, affected, select, version,
};

/// One type's state on a stream.
#[derive(Debug, Default)]
struct TypeState {
    subscribed: bool,
    wildcard: bool,
    names: BTreeSet<String>,
    /// `resource_names` as the last request listed them: a request that
    /// lists them again (every ACK does) changes nothing, which is told
    /// without building the set.
    listed: Vec<String>,
    /// Answer the next evaluation even if nothing changed.
    must_send: bool,
    /// The last response: its nonce, version and resources.
    sent: Option<Sent>,
    /// The resources of the last ACKed response.
    acked: Arc<BTreeMap<String, Arc<Resource>>>,
    acked_version: Option<String>,
    /// The nonce of the response it ACKed last.
    acked_nonce: Option<String>,
    /// The version the client refused last, and why.
    nacked: Option<(String, String)>,
}

#[derive(Debug)]
struct Sent {
    /// The nonces of its pieces (see `CHUNK_BYTES`), the last one last.
    nonces: Vec<String>,
    version: String,
    resources: Arc<BTreeMap<String, Arc<Resource>>>,
}

/// What one client has ACKed and NACKed for one type (status, CSDS).
#[derive(Clone, Debug, PartialEq)]
pub struct TypeStatus {
    pub type_url: String,
    pub acked_version: Option<String>,
    pub acked_nonce: Option<String>,
    pub nacked: Option<(String, String)>,
    /// The resources it ACKed, by name (shared, not copied).
    pub acked_resources: Arc<BTreeMap<String, Arc<Resource>>>,
}

/// The protocol state of one SotW ADS stream.
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
    pub fn on_request(&mut self, req: DiscoveryRequest, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        let out = self.on_request_outgoing(req, snap);
        out.into_iter().map(Outgoing::materialize).collect()
    }

    /// The snapshot changed: the responses to push, clusters first.
    #[cfg(test)]
    pub fn on_snapshot(&mut self, snap: &Snapshot) -> Vec<DiscoveryResponse> {
        let out = self.on_snapshot_outgoing(snap);
        out.into_iter().map(Outgoing::materialize).collect()
    }

    /// `on_request`, with the resources still shared (see `Outgoing`).
    pub fn on_request_outgoing(
        &mut self,
        req: DiscoveryRequest,
        snap: &Snapshot,
    ) -> Vec<Outgoing<DiscoveryResponse>> {
        if self.node.is_none() {
            self.node = req.node.clone();
        }
        let state = self.types.entry(req.type_url.clone()).or_default();
        if req.response_nonce.is_empty() {
            // (3) A new subscription, or a reconnect replaying its version.
            let first = !state.subscribed;
            state.subscribed = true;
            state.wildcard = (first && req.resource_names.is_empty())
                || req.resource_names.iter().any(|n| n == "*");
            state.names = named(&req.resource_names);
            state.listed = req.resource_names;
            state.must_send = true;
            // Whatever it had, the client gets the whole set again.
            state.sent = None;
        } else {
            let Some(sent) = state.sent.as_ref() else {
                return Vec::new();
            };
            if !sent.nonces.contains(&req.response_nonce) {
                // (4) Stale: an answer to an earlier response.
                return Vec::new();
            }
            let last = sent.nonces.last() == Some(&req.response_nonce);
            match &req.error_detail {
                Some(status) => {
                    // (2) Keep what the client runs; remember the refusal.
                    state.nacked = Some((sent.version.clone(), status.message.clone()));
                }
                // The ACK of a piece before the last says nothing yet.
                None if !last => {}
                None => {
                    state.acked = sent.resources.clone();
                    state.acked_version = Some(sent.version.clone());
                    state.acked_nonce = Some(req.response_nonce.clone());
                    state.nacked = None;
                }
            }
            // The subscription as the last request listed it: the ACK of
            // a piece before the last changes nothing that is due (the
            // first sync of a stream ACKs every piece of its endpoints),
            // and the last one only what the ACK itself changed.
            let relisted = req.resource_names == state.listed;
            if relisted && !last && req.error_detail.is_none() {
                return Vec::new();
            }
            if !relisted {
                // (6) and (8): the request changes the subscription.
                let wildcard = req.resource_names.iter().any(|n| n == "*")
                    || (state.wildcard && req.resource_names.is_empty());
                let names = named(&req.resource_names);
                state.listed = req.resource_names;
                let added: Vec<&String> = names.difference(&state.names).collect();
                if (wildcard && !state.wildcard) || !added.is_empty() {
                    state.must_send = true;
                }
                // (19) A name asked for again is sent again, even unchanged:
                // the client dropped it when it unsubscribed.
                if !added.is_empty()
                    && let Some(sent) = state.sent.as_mut()
                {
                    let mut resources = (*sent.resources).clone();
                    for name in &added {
                        resources.remove(*name);
                    }
                    sent.resources = Arc::new(resources);
                }
                state.wildcard = wildcard;
                state.names = names;
            }
        }
        // An ACK of clusters or routes may unblock the other (10).
        affected(&req.type_url)
            .into_iter()
            .flat_map(|t| self.evaluate(t, snap))
            .collect()
    }

    /// `on_snapshot`, with the resources still shared.
    pub fn on_snapshot_outgoing(&mut self, snap: &Snapshot) -> Vec<Outgoing<DiscoveryResponse>> {
        TYPES.iter().flat_map(|t| self.evaluate(t, snap)).collect()
    }

    /// Does the client take clusters by wildcard (Envoy)? Then routes must
    /// never name a cluster it has not ACKed.
    fn gates_routes(&self) -> bool {
        self.types.get(CLUSTER).is_some_and(|c| c.wildcard)
    }

    /// What `type_url`'s subscription should hold now; `None` while a
    /// route configuration waits for its clusters' ACK.
    fn desired(&self, type_url: &str, snap: &Snapshot) -> Option<BTreeMap<String, Arc<Resource>>> {
        let state = self.types.get(type_url)?;
        let empty = BTreeMap::new();
        let gate = self.gates_routes().then(|| Gate {
            acked_clusters: self.types.get(CLUSTER).map_or(&empty, |c| &c.acked),
            acked_routes: self.types.get(ROUTE).map_or(&empty, |r| &r.acked),
        });
        select(type_url, snap, state.wildcard, &state.names, gate)
    }

    /// The response for `type_url` if one is due, in pieces.
    fn evaluate(&mut self, type_url: &str, snap: &Snapshot) -> Vec<Outgoing<DiscoveryResponse>> {
        if !self.types.get(type_url).is_some_and(|s| s.subscribed) {
            return Vec::new();
        }
        // Held back: answered when the clusters' ACK comes.
        let Some(want) = self.desired(type_url, snap) else {
            return Vec::new();
        };
        let v = version(want.values());
        let state = self.types.get_mut(type_url).expect("checked above");
        let changed = state.sent.as_ref().is_none_or(|s| s.version != v);
        let refused = state.nacked.as_ref().is_some_and(|(nv, _)| *nv == v);
        if !(state.must_send || (changed && !refused)) {
            return Vec::new();
        }
        // (7) Listeners and clusters go as the full set; route
        // configurations and endpoints only where they differ from what the
        // client was sent (new names included).
        let partial = matches!(type_url, ENDPOINT | ROUTE);
        let resources: Vec<&Arc<Resource>> = match (partial, &state.sent) {
            (true, Some(sent)) => want
                .iter()
                .filter(|(n, r)| sent.resources.get(*n).is_none_or(|old| old.hash != r.hash))
                .map(|(_, r)| r)
                .collect(),
            _ => want.values().collect(),
        };
        if resources.is_empty() && !state.must_send && partial {
            // Only names that no longer exist changed: nothing to say.
            return Vec::new();
        }
        state.must_send = false;
        // Route configurations and endpoints may also go in pieces, so that
        // no response outgrows what a client accepts (`CHUNK_BYTES`).
        let pieces = if partial {
            chunks(&resources)
        } else {
            vec![resources.as_slice()]
        };
        let mut responses = Vec::with_capacity(pieces.len());
        let mut nonces = Vec::with_capacity(pieces.len());
        for piece in pieces {
            self.nonces += 1;
            let nonce = self.nonces.to_string();
            responses.push(Outgoing {
                message: DiscoveryResponse {
                    version_info: v.clone(),
                    type_url: type_url.to_owned(),
                    nonce: nonce.clone(),
                    ..Default::default()
                },
                resources: piece.iter().map(|r| (*r).clone()).collect(),
            });
            nonces.push(nonce);
        }
        state.sent = Some(Sent {
            nonces,
            version: v,
            resources: Arc::new(want),
        });
        responses
    }
}

/// The names a request lists, without the wildcard's `*`.
fn named(listed: &[String]) -> BTreeSet<String> {
    listed.iter().filter(|n| *n != "*").cloned().collect()
}

/// The most bytes of resources one response piece carries (a single larger
/// resource goes alone). Each piece costs the client an ACK and the server
/// its decoding: with 16 KiB pieces a first sync of 100 services × 100
/// endpoints was 25 endpoint responses per stream, most of its messages.
/// Responses are written from the resources' shared encodings as the
/// connection takes them (`Outgoing::frames`), so a larger piece costs the
/// stream no buffer. Kept under 128 KiB: a client decodes a message in one
/// buffer, and above that size glibc's allocator maps fresh pages for each
/// one (with 1 MiB pieces the benchmark's clients spent a third of their
/// time in page faults; BENCHMARKS.md).
pub(crate) const CHUNK_BYTES: usize = 96 * 1024;

/// `resources` in runs of at most `CHUNK_BYTES` (at least one each, and
/// one empty run for an empty list).
pub(crate) fn chunks<'a>(resources: &'a [&'a Arc<Resource>]) -> Vec<&'a [&'a Arc<Resource>]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, r) in resources.iter().enumerate() {
        let size = r.body.value.len();
        if i > start && bytes + size > CHUNK_BYTES {
            out.push(&resources[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    out.push(&resources[start..]);
    out
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::rpc::Status;

    use super::*;
    use crate::xds::{LISTENER, tests::service};

    fn req(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|s| s.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn nack(mut r: DiscoveryRequest) -> DiscoveryRequest {
        r.error_detail = Some(Status {
            code: 3,
            message: "bad cluster".into(),
            ..Default::default()
        });
        r
    }

    fn names(r: &DiscoveryResponse) -> Vec<String> {
        r.resources
            .iter()
            .map(|a| {
                let res = Resource {
                    name: String::new(),
                    body: a.clone(),
                    hash: String::new(),
                    wildcard: false,
                    clusters: BTreeSet::new(),
                    sotw_entry: Default::default(),
                    delta_entry: Default::default(),
                };
                match a.type_url.as_str() {
                    CLUSTER => {
                        crate::xds::decode::<envoy_types::pb::envoy::config::cluster::v3::Cluster>(
                            &res,
                        )
                        .unwrap()
                        .name
                    }
                    ENDPOINT => {
                        crate::xds::decode::<
                            envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment,
                        >(&res)
                        .unwrap()
                        .cluster_name
                    }
                    LISTENER => crate::xds::decode::<
                        envoy_types::pb::envoy::config::listener::v3::Listener,
                    >(&res)
                    .unwrap()
                    .name,
                    _ => {
                        crate::xds::decode::<
                            envoy_types::pb::envoy::config::route::v3::RouteConfiguration,
                        >(&res)
                        .unwrap()
                        .name
                    }
                }
            })
            .collect()
    }

    fn snap(services: &[(&str, &[u16])]) -> Snapshot {
        let views: Vec<_> = services.iter().map(|(n, p)| service(n, p)).collect();
        Snapshot::build(&views, Some("127.0.0.1:10000".parse().unwrap()))
    }

    #[test]
    fn an_ack_is_never_answered_and_a_change_is_pushed() {
        let s1 = snap(&[("echo", &[1])]);
        let mut st = Stream::default();
        let out = st.on_request(req(CLUSTER, &[], "", ""), &s1);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["echo"]);
        let (v, n) = (out[0].version_info.clone(), out[0].nonce.clone());
        assert!(
            st.on_request(req(CLUSTER, &[], &v, &n), &s1).is_empty(),
            "ACK answered"
        );
        assert!(st.on_snapshot(&s1).is_empty(), "unchanged input pushed");
        let s2 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let out = st.on_snapshot(&s2);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["echo", "kv"], "full set every time");
    }

    #[test]
    fn endpoint_changes_carry_only_the_assignments_that_changed() {
        let s1 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let mut st = Stream::default();
        let r = st
            .on_request(req(ENDPOINT, &["echo", "kv"], "", ""), &s1)
            .remove(0);
        assert_eq!(names(&r), ["echo", "kv"]);
        let ack = req(ENDPOINT, &["echo", "kv"], &r.version_info, &r.nonce);
        assert!(st.on_request(ack, &s1).is_empty());
        let s2 = snap(&[("echo", &[1]), ("kv", &[3])]);
        let r = st.on_snapshot(&s2).remove(0);
        assert_eq!(names(&r), ["kv"]);
        assert_eq!(r.version_info, version(s2.of(ENDPOINT).unwrap().values()));
        // A reconnect gets everything again.
        let again = req(ENDPOINT, &["echo", "kv"], &r.version_info, "");
        let r = st.on_request(again, &s2).remove(0);
        assert_eq!(names(&r), ["echo", "kv"]);
    }

    #[test]
    fn large_endpoint_responses_go_in_pieces_and_the_last_ack_counts() {
        let many: Vec<u16> = (1..=1000).collect();
        let views: Vec<_> = (0..20)
            .map(|i| service(&format!("s{i:02}"), &many))
            .collect();
        let s1 = Snapshot::build(&views, None);
        let names: Vec<String> = (0..20).map(|i| format!("s{i:02}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut st = Stream::default();
        let pieces = st.on_request(req(ENDPOINT, &names, "", ""), &s1);
        assert!(
            pieces.len() > 1,
            "one response of {} bytes",
            pieces[0]
                .resources
                .iter()
                .map(|a| a.value.len())
                .sum::<usize>()
        );
        assert_eq!(pieces.iter().map(|p| p.resources.len()).sum::<usize>(), 20);
        assert!(
            pieces
                .iter()
                .all(|p| p.resources.iter().map(|a| a.value.len()).sum::<usize>() <= CHUNK_BYTES)
        );
        // ACKing the first piece is not the whole; the last one is.
        let first = &pieces[0];
        assert!(
            st.on_request(
                req(ENDPOINT, &names, &first.version_info, &first.nonce),
                &s1
            )
            .is_empty()
        );
        assert_eq!(st.status()[0].acked_version, None);
        let last = pieces.last().unwrap();
        assert!(
            st.on_request(req(ENDPOINT, &names, &last.version_info, &last.nonce), &s1)
                .is_empty()
        );
        assert_eq!(
            st.status()[0].acked_version.as_deref(),
            Some(last.version_info.as_str())
        );
    }

    #[test]
    fn a_nack_is_recorded_and_the_same_content_is_not_resent() {
        let s1 = snap(&[("echo", &[1])]);
        let mut st = Stream::default();
        let first = st.on_request(req(CLUSTER, &[], "", ""), &s1).remove(0);
        let acked = first.version_info.clone();
        assert!(
            st.on_request(req(CLUSTER, &[], &acked, &first.nonce), &s1)
                .is_empty()
        );
        let s2 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let pushed = st.on_snapshot(&s2).remove(0);
        // The client refuses it, replaying the version it runs.
        let out = st.on_request(nack(req(CLUSTER, &[], &acked, &pushed.nonce)), &s2);
        assert!(out.is_empty(), "resent after a NACK: {out:?}");
        assert!(st.on_snapshot(&s2).is_empty());
        let status = st.status();
        assert_eq!(status[0].acked_version.as_deref(), Some(acked.as_str()));
        assert_eq!(
            status[0].nacked,
            Some((pushed.version_info.clone(), "bad cluster".to_string()))
        );
        // New input: sent again.
        let s3 = snap(&[("echo", &[1]), ("kv", &[2]), ("more", &[3])]);
        assert_eq!(st.on_snapshot(&s3).len(), 1);
    }

    #[test]
    fn an_empty_nonce_is_a_subscription_even_with_a_version() {
        let s1 = snap(&[("echo", &[1])]);
        let mut st = Stream::default();
        // A reconnecting client replays the version it has.
        let v = version(s1.of(CLUSTER).unwrap().values());
        let out = st.on_request(req(CLUSTER, &[], &v, ""), &s1);
        assert_eq!(out.len(), 1, "a reconnect must be answered");
        assert_eq!(out[0].version_info, v);
    }

    #[test]
    fn a_stale_nonce_is_ignored() {
        let s1 = snap(&[("echo", &[1])]);
        let mut st = Stream::default();
        let first = st.on_request(req(CLUSTER, &[], "", ""), &s1).remove(0);
        let s2 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let second = st.on_snapshot(&s2).remove(0);
        assert!(
            st.on_request(nack(req(CLUSTER, &[], "", &first.nonce)), &s2)
                .is_empty()
        );
        assert_eq!(
            st.status()[0].nacked,
            None,
            "a stale NACK counts for nothing"
        );
        assert!(
            st.on_request(req(CLUSTER, &[], &second.version_info, &second.nonce), &s2)
                .is_empty()
        );
        assert_eq!(st.status()[0].acked_version, Some(second.version_info));
    }

    #[test]
    fn wildcard_and_named_subscriptions() {
        let s = snap(&[("echo", &[1]), ("kv", &[2])]);
        let mut st = Stream::default();
        // Envoy: LDS by wildcard gets the ingress listener, not the API
        // listeners meant for proxyless clients.
        let out = st.on_request(req(LISTENER, &[], "", ""), &s);
        assert_eq!(names(&out[0]), [crate::xds::resources::INGRESS_LISTENER]);
        // A gRPC client names what it wants; new names are answered even
        // though nothing changed (8), unknown ones at once without them (11).
        let mut g = Stream::default();
        let out = g.on_request(req(LISTENER, &["echo"], "", ""), &s);
        assert_eq!(names(&out[0]), ["echo"]);
        let ack = req(
            LISTENER,
            &["echo", "kv"],
            &out[0].version_info,
            &out[0].nonce,
        );
        let out = g.on_request(ack, &s);
        assert_eq!(names(&out[0]), ["echo", "kv"]);
        let out = g.on_request(req(ENDPOINT, &["nope"], "", ""), &s);
        assert_eq!(out.len(), 1);
        assert!(out[0].resources.is_empty());
        // After names, an empty list unsubscribes: nothing is sent.
        let out = g.on_request(req(ENDPOINT, &[], &out[0].version_info, &out[0].nonce), &s);
        assert!(out.is_empty());
        assert!(
            g.on_snapshot(&snap(&[("echo", &[9])]))
                .iter()
                .all(|r| r.type_url != ENDPOINT)
        );
    }

    #[test]
    fn a_name_subscribed_to_again_is_sent_again_even_unchanged() {
        let s = snap(&[("echo", &[1]), ("kv", &[2])]);
        let mut g = Stream::default();
        let r = g
            .on_request(req(ENDPOINT, &["echo", "kv"], "", ""), &s)
            .remove(0);
        assert_eq!(names(&r), ["echo", "kv"]);
        // Drop kv: nothing to send (an ACK of what it has).
        let drop = req(ENDPOINT, &["echo"], &r.version_info, &r.nonce);
        assert!(g.on_request(drop, &s).is_empty());
        // Ask for kv again: it is sent, though unchanged (19).
        let again = req(ENDPOINT, &["echo", "kv"], &r.version_info, &r.nonce);
        let out = g.on_request(again, &s);
        assert_eq!(out.len(), 1);
        assert_eq!(names(&out[0]), ["kv"]);
        // And its ACK is not answered.
        let ack = req(
            ENDPOINT,
            &["echo", "kv"],
            &out[0].version_info,
            &out[0].nonce,
        );
        assert!(g.on_request(ack, &s).is_empty());
    }

    #[test]
    fn make_before_break_for_added_and_removed_services() {
        let s1 = snap(&[("echo", &[1])]);
        let mut envoy = Stream::default();
        let c = envoy.on_request(req(CLUSTER, &[], "", ""), &s1).remove(0);
        let r = envoy.on_request(
            req(ROUTE, &[crate::xds::resources::INGRESS_ROUTES], "", ""),
            &s1,
        );
        assert!(
            r.is_empty(),
            "routes before their clusters were ACKed: {r:?}"
        );
        // The cluster ACK releases the routes.
        let out = envoy.on_request(req(CLUSTER, &[], &c.version_info, &c.nonce), &s1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_url, ROUTE);
        let r = out[0].clone();
        assert!(
            envoy
                .on_request(
                    req(
                        ROUTE,
                        &[crate::xds::resources::INGRESS_ROUTES],
                        &r.version_info,
                        &r.nonce
                    ),
                    &s1
                )
                .is_empty()
        );

        // Added: clusters go first, routes wait for their ACK.
        let s2 = snap(&[("echo", &[1]), ("kv", &[2])]);
        let out = envoy.on_snapshot(&s2);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [CLUSTER]
        );
        let c = out[0].clone();
        let out = envoy.on_request(req(CLUSTER, &[], &c.version_info, &c.nonce), &s2);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ROUTE]
        );
        let r = out[0].clone();
        assert!(
            envoy
                .on_request(
                    req(
                        ROUTE,
                        &[crate::xds::resources::INGRESS_ROUTES],
                        &r.version_info,
                        &r.nonce
                    ),
                    &s2
                )
                .is_empty()
        );

        // Removed: the routes go first; the cluster stays until they are
        // ACKed.
        let s3 = snap(&[("echo", &[1])]);
        let out = envoy.on_snapshot(&s3);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ROUTE]
        );
        let r = out[0].clone();
        let out = envoy.on_request(
            req(
                ROUTE,
                &[crate::xds::resources::INGRESS_ROUTES],
                &r.version_info,
                &r.nonce,
            ),
            &s3,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            names(&out[0]),
            ["echo"],
            "the cluster leaves after the routes"
        );
    }
}
