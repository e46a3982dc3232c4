//! Arbitrary request sequences against the state-of-the-world protocol of
//! one stream (`sotw::Stream`): whatever a client sends (subscriptions,
//! ACKs and NACKs with right, stale or made-up versions and nonces) and
//! however the snapshot changes meanwhile, the stream never panics, one
//! stream's answers do not depend on another's, and a client that from
//! some point on ACKs what it receives ends up holding the latest version
//! of every type it subscribed to, with nothing more to send.

use std::collections::BTreeMap;

use envoy_types::pb::{
    envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse},
    google::rpc::Status,
};
use proptest::prelude::*;

use super::{Snapshot, TYPES, sotw::Stream, tests::service};

/// The snapshots the registry moves between, and the one it ends at.
fn snapshots() -> Vec<Snapshot> {
    let ingress = Some("127.0.0.1:10000".parse().unwrap());
    let build = |services: &[(&str, &[u16])]| {
        let views: Vec<_> = services.iter().map(|(n, p)| service(n, p)).collect();
        Snapshot::build(&views, ingress)
    };
    vec![
        build(&[("echo", &[1])]),
        build(&[("echo", &[1]), ("kv", &[2])]),
        build(&[("kv", &[3])]),
        build(&[]),
        // The last: content no request of the arbitrary part has seen.
        build(&[("echo", &[4]), ("kv", &[5]), ("greeter", &[6])]),
    ]
}
const FINAL: usize = 4;
const NAMES: [&str; 4] = ["echo", "kv", "greeter", "ingress"];

/// How a request picks its version or nonce.
#[derive(Clone, Copy, Debug)]
enum Pick {
    Empty,
    /// Of the last response of its type this client got.
    Last,
    /// Of the first response of its type this client got.
    First,
    Junk,
}

#[derive(Clone, Debug)]
enum Event {
    Request {
        stream: usize,
        type_index: usize,
        names: Vec<usize>,
        version: Pick,
        nonce: Pick,
        nack: bool,
    },
    Snapshot(usize),
}

fn pick() -> impl Strategy<Value = Pick> {
    prop_oneof![
        Just(Pick::Empty),
        Just(Pick::Last),
        Just(Pick::First),
        Just(Pick::Junk)
    ]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0..2usize, 0..TYPES.len(), proptest::collection::vec(0..NAMES.len(), 0..3), pick(), pick(), any::<bool>())
            .prop_map(|(stream, type_index, names, version, nonce, nack)| Event::Request {
                stream, type_index, names, version, nonce, nack,
            }),
        1 => (0..FINAL).prop_map(Event::Snapshot),
    ]
}

/// One client: what it got per type, and what it subscribed to.
#[derive(Default)]
struct Client {
    stream: Stream,
    got: BTreeMap<&'static str, Vec<DiscoveryResponse>>,
    subscribed: BTreeMap<&'static str, Vec<String>>,
    answers: Vec<DiscoveryResponse>,
}

impl Client {
    fn take(&mut self, responses: Vec<DiscoveryResponse>) {
        for r in responses {
            let ty = TYPES
                .iter()
                .find(|t| **t == r.type_url)
                .expect("a known type");
            self.got.entry(ty).or_default().push(r.clone());
            self.answers.push(r);
        }
    }

    fn field(&self, ty: &str, pick: Pick, of: fn(&DiscoveryResponse) -> &str) -> String {
        let got = self.got.get(ty);
        match pick {
            Pick::Empty => String::new(),
            Pick::Last => got
                .and_then(|g| g.last())
                .map(of)
                .unwrap_or_default()
                .to_owned(),
            Pick::First => got
                .and_then(|g| g.first())
                .map(of)
                .unwrap_or_default()
                .to_owned(),
            Pick::Junk => "junk".to_owned(),
        }
    }

    fn request(&mut self, event: &Event, snap: &Snapshot) {
        let Event::Request {
            type_index,
            names,
            version,
            nonce,
            nack,
            ..
        } = event
        else {
            return;
        };
        let ty = TYPES[*type_index];
        let names: Vec<String> = names.iter().map(|i| NAMES[*i].to_owned()).collect();
        let request = DiscoveryRequest {
            type_url: ty.to_owned(),
            resource_names: names.clone(),
            version_info: self.field(ty, *version, |r| &r.version_info),
            response_nonce: self.field(ty, *nonce, |r| &r.nonce),
            error_detail: nack.then(|| Status {
                code: 3,
                message: "refused".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.subscribed.insert(ty, names);
        let out = self.stream.on_request(request, snap);
        self.take(out);
    }

    /// The ACK of a response, for the names this client subscribed to.
    fn ack(&self, r: &DiscoveryResponse) -> DiscoveryRequest {
        let ty = TYPES.iter().find(|t| **t == r.type_url).unwrap();
        DiscoveryRequest {
            type_url: r.type_url.clone(),
            resource_names: self.subscribed.get(ty).cloned().unwrap_or_default(),
            version_info: r.version_info.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        }
    }
}

/// Runs `events` for the clients in `only` (all if `None`), every client
/// seeing every snapshot change; returns each client.
fn run(events: &[Event], snaps: &[Snapshot], only: Option<usize>) -> Vec<Client> {
    let mut clients: Vec<Client> = (0..2).map(|_| Client::default()).collect();
    let mut current = 0;
    for event in events {
        match event {
            Event::Snapshot(i) => {
                current = *i;
                for c in clients.iter_mut() {
                    let out = c.stream.on_snapshot(&snaps[current]);
                    c.take(out);
                }
            }
            Event::Request { stream, .. } if only.is_none_or(|o| o == *stream) => {
                clients[*stream].request(event, &snaps[current]);
            }
            Event::Request { .. } => {}
        }
    }
    clients
}

proptest! {
    /// What one stream answers does not depend on what another stream
    /// asked: no state (nonces, ACKs, NACKs) is shared between streams.
    #[test]
    fn a_stream_answers_the_same_whatever_another_stream_does(
        events in proptest::collection::vec(event(), 0..40)
    ) {
        let snaps = snapshots();
        let together = run(&events, &snaps, None);
        for stream in 0..2 {
            let alone = run(&events, &snaps, Some(stream));
            prop_assert_eq!(&together[stream].answers, &alone[stream].answers, "stream {}", stream);
        }
    }

    /// After anything, a client that ACKs what it receives converges: the
    /// stream falls quiet, and what the client holds (listeners and
    /// clusters as whole sets, route configurations and endpoints merged
    /// by name, as Envoy keeps them) is the latest snapshot's content for
    /// every name it holds and still subscribes to, and nothing the latest
    /// snapshot lacks.
    #[test]
    fn a_client_that_acks_converges_to_the_latest_snapshot(
        events in proptest::collection::vec(event(), 0..40)
    ) {
        let snaps = snapshots();
        let mut client = run(&events, &snaps, Some(0)).remove(0);
        let latest = &snaps[FINAL];
        // From here on it behaves: per type it subscribed to, it ACKs the
        // last response it holds, or (holding none) subscribes afresh with
        // an empty nonce. Then the registry changes once more.
        let first: Vec<DiscoveryRequest> = client
            .subscribed
            .iter()
            .map(|(ty, names)| match client.got.get(ty).and_then(|g| g.last()) {
                Some(r) => client.ack(r),
                None => DiscoveryRequest {
                    type_url: ty.to_string(),
                    resource_names: names.clone(),
                    ..Default::default()
                },
            })
            .collect();
        client.answers.clear();
        for request in first {
            let out = client.stream.on_request(request, latest);
            client.take(out);
        }
        converge(&mut client, latest)?;
        let names = names_by_body(&snaps);
        for (ty, responses) in &client.got {
            let full = matches!(*ty, super::CLUSTER | super::LISTENER);
            let mut held: BTreeMap<&str, &[u8]> = BTreeMap::new();
            for r in responses {
                if full {
                    held.clear();
                }
                for any in &r.resources {
                    held.insert(names[&any.value], &any.value);
                }
            }
            // What it no longer subscribes to, it drops (an empty list of
            // names after named ones unsubscribes a type that is not taken
            // by wildcard: nothing to check then).
            match client.subscribed.get(ty) {
                Some(subscribed) if !subscribed.is_empty() => {
                    held.retain(|name, _| subscribed.iter().any(|n| n == name));
                }
                _ if !full => continue,
                _ => {}
            }
            let want = latest.of(ty).cloned().unwrap_or_default();
            for (name, body) in held {
                match want.get(name) {
                    Some(resource) => prop_assert_eq!(
                        body, resource.body.value.as_slice(), "{} {} is not the latest", ty, name
                    ),
                    None => prop_assert!(!full, "{} {} is gone from the latest snapshot", ty, name),
                }
            }
        }
    }
}

/// Every resource's name, by its encoding, across the snapshots.
fn names_by_body(snaps: &[Snapshot]) -> BTreeMap<Vec<u8>, &str> {
    snaps
        .iter()
        .flat_map(|s| TYPES.iter().filter_map(|t| s.of(t)))
        .flat_map(|resources| resources.values())
        .map(|r| (r.body.value.clone(), r.name.as_str()))
        .collect()
}

/// Pushes `snap` and ACKs every response until the stream is quiet; fails
/// if it is not quiet within 50 rounds or would push `snap` again.
fn converge(client: &mut Client, snap: &Snapshot) -> Result<(), TestCaseError> {
    let out = client.stream.on_snapshot(snap);
    client.take(out);
    for _ in 0..50 {
        let pending = std::mem::take(&mut client.answers);
        if pending.is_empty() {
            break;
        }
        for r in pending {
            let ack = client.ack(&r);
            let out = client.stream.on_request(ack, snap);
            client.take(out);
        }
    }
    prop_assert!(client.answers.is_empty(), "still answering after 50 rounds");
    prop_assert!(client.stream.on_snapshot(snap).is_empty(), "more to push");
    Ok(())
}
