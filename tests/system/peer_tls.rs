//! Mutual TLS between nodes, on with no TLS configuration at all: the peer
//! listener speaks only TLS, takes only certificates of the cluster's CA
//! that are in date and name a member or a store client, and lets a store
//! client's certificate read and write, never vote. Certificates are
//! renewed under write load without a failed write.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use flotilla::{
    cluster::network::{self, Auth},
    proto::peer::Blob,
    tls::{
        ca::{Ca, NodeKey},
        credentials::Material,
        identity::Identity,
        peer::{DEFAULT_DOMAIN, PeerTls},
    },
};
use serde_json::{Value, json};

use crate::support::{TestCluster, authed, cluster::CLUSTER_SECRET};

fn blob() -> Blob {
    Blob {
        data: b"{}".to_vec(),
        payload: Vec::new(),
    }
}

/// A node's TLS with a certificate `ca` issues to `identity` from `now`
/// for `lifetime`, trusting the cluster's real CA (so that it accepts the
/// members and the refusal, if any, is theirs).
fn holding(ca: &Ca, identity: Identity, now: SystemTime, lifetime: Duration) -> Auth {
    let real = Ca::derive(CLUSTER_SECRET, DEFAULT_DOMAIN).unwrap();
    let key = NodeKey::generate().unwrap();
    let chain_pem = ca
        .issue(
            &key.request().unwrap(),
            &identity,
            DEFAULT_DOMAIN,
            now,
            lifetime,
        )
        .unwrap();
    let material = Material {
        chain_pem,
        key_pem: key.pem(),
        roots_pem: real.cert_pem().to_owned(),
    };
    Auth::Tls(PeerTls::client(DEFAULT_DOMAIN, identity, material).unwrap())
}

#[tokio::test]
async fn with_no_tls_configuration_the_peer_listener_takes_only_in_date_certificates_of_the_cluster_ca()
 {
    let cluster = TestCluster::start("");
    let peer = cluster.addresses[0].2.to_string();

    // Plaintext HTTP/2 gets no HTTP/2 answer: the connection ends, or a TLS
    // alert comes back.
    crate::support::assert_plaintext_refused(&peer);

    // A member's certificate from the cluster's CA: Raft and admin calls.
    let real = Ca::derive(CLUSTER_SECRET, DEFAULT_DOMAIN).unwrap();
    let now = SystemTime::now();
    let hour = Duration::from_secs(3600);
    let member = holding(&real, Identity::member("tool").unwrap(), now, hour);
    let status = network::client_as(&peer, &member)
        .unwrap()
        .admin(network::blob(&json!("Status")))
        .await
        .expect("a member's certificate is taken");
    let status: Value = serde_json::from_slice(&status.into_inner().data).unwrap();
    assert!(
        status["Done"]["Ok"]["tls"]["identity"] == "spiffe://flotilla.local/member/ha-1",
        "{status}"
    );

    // A certificate from another cluster's CA, naming a member: refused at
    // the handshake, and the member says why.
    let foreign = Ca::derive("another-cluster-secret-9f8e7d6c5b4a", DEFAULT_DOMAIN).unwrap();
    let impostor = holding(&foreign, Identity::member("ha-9").unwrap(), now, hour);
    let refused = network::client_as(&peer, &impostor)
        .unwrap()
        .vote(blob())
        .await
        .unwrap_err();
    assert_ne!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // An expired one from the right CA: refused too.
    let expired = holding(
        &real,
        Identity::member("ha-9").unwrap(),
        now - 3 * hour,
        hour,
    );
    let refused = network::client_as(&peer, &expired)
        .unwrap()
        .vote(blob())
        .await
        .unwrap_err();
    assert_ne!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // An Envoy's certificate is for the xDS listener only.
    let envoy = holding(&real, Identity::envoy("front").unwrap(), now, hour);
    assert!(
        network::client_as(&peer, &envoy)
            .unwrap()
            .vote(blob())
            .await
            .is_err()
    );
    let log = cluster.nodes[0].log();
    for why in [
        "BadSignature",
        "certificate expired",
        "an Envoy's certificate",
    ] {
        assert!(
            log.contains(why),
            "the member's log does not say {why:?} about a refused handshake"
        );
    }

    // A store client's certificate: the handshake succeeds, Raft does not.
    let client = holding(
        &real,
        Identity::client("kv-9", &["kv".into()]).unwrap(),
        now,
        hour,
    );
    let refused = network::client_as(&peer, &client)
        .unwrap()
        .vote(blob())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("not take part in Raft"),
        "{refused:?}"
    );

    // `flotilla ca status` lists every member's certificate.
    let config = cluster.nodes[0].config_path.to_str().unwrap().to_owned();
    let (code, table, err) = crate::support::run_cli(
        std::path::Path::new(crate::support::BINARY),
        &["ca", "status", "--config", &config],
    );
    assert_eq!(code, 0, "{err}");
    for n in 1..=3 {
        assert!(
            table.contains(&format!("spiffe://flotilla.local/member/ha-{n}")),
            "{table}"
        );
    }

    // No certificate: only a certificate request is answered.
    let seen = Arc::default();
    let refused = network::first_contact_client(&peer, seen)
        .await
        .unwrap()
        .append_entries(blob())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}

/// Clients writing distinct keys back to back, each through one of `urls`,
/// until `finish`.
struct Writers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(usize, Vec<String>)>>,
}

impl Writers {
    fn start(token: &str, urls: Vec<String>, prefix: &str) -> Writers {
        let client = authed(token);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = urls
            .into_iter()
            .enumerate()
            .map(|(t, url)| {
                let (client, stop, prefix) = (client.clone(), stop.clone(), prefix.to_owned());
                tokio::spawn(async move {
                    let (mut ok, mut failed) = (0, Vec::new());
                    let mut i = 0;
                    while !stop.load(Ordering::SeqCst) && i < 100_000 {
                        i += 1;
                        let key = format!("{prefix}{t}-{i}");
                        let r = client
                            .put(format!("{url}/api/kv/keys/{key}"))
                            .json(&json!({"value": "x"}))
                            .send()
                            .await;
                        match r {
                            Ok(r) if r.status() == 200 => ok += 1,
                            Ok(r) => failed.push(format!("{key}: {}", r.status())),
                            Err(e) => failed.push(format!("{key}: {e}")),
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        Writers { stop, tasks }
    }

    /// Stops the writers: none may have failed, and they must have written.
    async fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut ok, mut failed) = (0, Vec::new());
        for task in self.tasks {
            let (o, f) = task.await.unwrap();
            ok += o;
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "failed writes: {:?}",
            &failed[..failed.len().min(10)]
        );
        assert!(ok > 100, "too little load: {ok} writes");
    }
}

/// Certificates that live 6 s are renewed every 4 s on every member while
/// clients write through all three: no write fails, and each member serves
/// several certificates one after another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_renew_their_certificates_under_write_load_without_a_failed_write() {
    let cluster = TestCluster::start(", tls: {certificate_lifetime_seconds: 6}");
    let token = cluster.admin_token().await;
    let serials: Vec<Arc<Mutex<Vec<String>>>> = (0..3).map(|_| Arc::default()).collect();
    let writers = Writers::start(
        &token,
        (0..6).map(|t| cluster.nodes[t % 3].url("")).collect(),
        "r",
    );
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(14) {
        for (i, seen) in serials.iter().enumerate() {
            if let Some(s) = cluster.status(i).await
                && let Some(serial) = s["tls"]["serial"].as_str()
            {
                let mut seen = seen.lock().unwrap();
                if seen.last().map(String::as_str) != Some(serial) {
                    seen.push(serial.to_owned());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    writers.finish().await;
    for (i, seen) in serials.iter().enumerate() {
        let seen = seen.lock().unwrap();
        assert!(
            seen.len() >= 3,
            "member {} served {} certificates in 14 s: {seen:?}",
            i + 1,
            seen.len()
        );
    }
    // Every member still applies every write.
    cluster.converge().await;
}

/// Writes `text` to `path` by way of a file beside it and a rename, as an
/// operator's tooling would.
fn put(path: &std::path::Path, text: &str) {
    let beside = path.with_extension("new");
    std::fs::write(&beside, text).unwrap();
    std::fs::rename(&beside, path).unwrap();
}

/// A call to the member at `peer` as a tool holding a member's certificate
/// from `ca`, trusting only `roots`.
async fn admin_with(peer: &str, ca: &Ca, roots: &str) -> Result<(), String> {
    let key = NodeKey::generate().unwrap();
    let identity = Identity::member("tool").unwrap();
    let chain_pem = ca
        .issue(
            &key.request().unwrap(),
            &identity,
            DEFAULT_DOMAIN,
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let material = Material {
        chain_pem,
        key_pem: key.pem(),
        roots_pem: roots.to_owned(),
    };
    let auth = Auth::Tls(PeerTls::client(DEFAULT_DOMAIN, identity, material).unwrap());
    network::client_as(peer, &auth)
        .unwrap()
        .admin(network::blob(&json!("Status")))
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

/// The documented rotation of an operator's CA (`cluster.tls.ca_dir`):
/// trust the next CA beside the current one, sign with the next one while
/// still trusting the old, then drop the old. Writes flow through all three
/// members throughout and none fails; at the end the members present
/// certificates of the new CA only and refuse the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ca_rotation_with_an_overlap_fails_no_write() {
    let dir = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let old = Ca::generate(DEFAULT_DOMAIN, now).unwrap();
    let next = Ca::generate(DEFAULT_DOMAIN, now).unwrap();
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir(&ca_dir).unwrap();
    put(&ca_dir.join("ca.crt"), old.cert_pem());
    put(&ca_dir.join("ca.key"), &old.key_pem());
    let cluster = TestCluster::start(&format!(
        ", tls: {{ca_dir: '{}', certificate_lifetime_seconds: 6}}",
        ca_dir.display()
    ));
    let peers: Vec<String> = cluster.addresses.iter().map(|a| a.2.to_string()).collect();
    let token = cluster.admin_token().await;
    let writers = Writers::start(
        &token,
        (0..3).map(|t| cluster.nodes[t].url("")).collect(),
        "c",
    );
    let both = format!("{}{}", old.cert_pem(), next.cert_pem());
    // The overlap: the members trust the next CA too.
    put(&ca_dir.join("trusted.crt"), next.cert_pem());
    for peer in &peers {
        crate::support::wait_until(
            "a member trusts the next CA",
            Duration::from_secs(10),
            || admin_with(peer, &next, &both),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The switch: the members sign with the next CA, and still trust the
    // old one.
    put(&ca_dir.join("ca.key"), &next.key_pem());
    put(&ca_dir.join("ca.crt"), next.cert_pem());
    put(&ca_dir.join("trusted.crt"), old.cert_pem());
    for peer in &peers {
        // A client that trusts only the next CA reaches a member once it
        // presents a certificate of the next CA.
        crate::support::wait_until(
            "a member presents the next CA's certificate",
            Duration::from_secs(10),
            || admin_with(peer, &next, next.cert_pem()),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(7)).await;
    // The end of the overlap: the old CA is trusted no more.
    std::fs::remove_file(ca_dir.join("trusted.crt")).unwrap();
    for peer in &peers {
        crate::support::wait_until(
            "a member refuses the old CA",
            Duration::from_secs(10),
            || async {
                match admin_with(peer, &old, &both).await {
                    Ok(()) => Err("taken".to_owned()),
                    Err(_) => Ok(()),
                }
            },
        )
        .await;
        admin_with(peer, &next, next.cert_pem()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    writers.finish().await;
    cluster.converge().await;
}

/// Store clients renew too: with 6-second certificates, each one asks a
/// member for a new one (`Certify` again) every 4 s, while writes flow
/// through two of them, kv-1 and kv-2. None fails, and the members issue
/// kv-1 several certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_clients_renew_their_certificates_from_the_members_under_write_load() {
    let cluster =
        crate::support::ScaledCluster::start_with(", tls: {certificate_lifetime_seconds: 6}");
    cluster.wait_registered().await;
    cluster.nodes["db-1"].create_admin();
    let token = cluster.nodes["kv-1"]
        .login(crate::support::ADMIN, crate::support::ADMIN_PASSWORD)
        .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let writers = Writers::start(
        &token,
        ["kv-1", "kv-2", "kv-1", "kv-2"]
            .iter()
            .map(|n| cluster.nodes[n].url(""))
            .collect(),
        "s",
    );
    tokio::time::sleep(Duration::from_secs(14)).await;
    writers.finish().await;
    let renewed = cluster.nodes["kv-1"]
        .log()
        .matches("renewed this node's certificate")
        .count();
    assert!(
        renewed >= 2,
        "kv-1 renewed its certificate {renewed} times in 14 s"
    );
}
