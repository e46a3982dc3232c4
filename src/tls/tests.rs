//! Real TLS handshakes (rustls on both sides, over loopback TCP) between
//! credentials the CA issued: who is let in, who is refused, and renewal
//! and CA rotation without a new listener.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls_pki_types::ServerName;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    ca::{Ca, NODE_LIFETIME, NodeKey},
    credentials::{Accept, Credentials, Material},
    identity::Identity,
};

const DOMAIN: &str = "test.flotilla";

fn material(ca: &Ca, roots: &[&Ca], id: &Identity, issued: SystemTime) -> Material {
    let key = NodeKey::generate().unwrap();
    Material {
        chain_pem: ca
            .issue(&key.request().unwrap(), id, DOMAIN, issued, NODE_LIFETIME)
            .unwrap(),
        key_pem: key.pem(),
        roots_pem: roots.iter().map(|c| c.cert_pem()).collect(),
    }
}

fn creds(ca: &Ca, id: &Identity) -> Credentials {
    Credentials::new(DOMAIN, &material(ca, &[ca], id, SystemTime::now())).unwrap()
}

fn members_only() -> Accept {
    Arc::new(|id: &Identity| match id {
        Identity::Member { .. } => Ok(()),
        other => Err(format!("{} may not take part in Raft", other.uri(DOMAIN))),
    })
}

fn anyone() -> Accept {
    Arc::new(|_: &Identity| Ok(()))
}

/// A listener that takes one connection at a time with the server's
/// current configuration, and answers each client with the serial of the
/// certificate that client presented (`-` for none).
async fn listener(server: Credentials, accept: Accept, optional: bool) -> std::net::SocketAddr {
    let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = socket.accept().await {
            let config = Arc::new(server.server_config(accept.clone(), optional).unwrap());
            let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                continue;
            };
            let serial = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| super::identity::read(c, DOMAIN).unwrap().serial)
                .unwrap_or_else(|| "-".into());
            let _ = tls.write_all(serial.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    addr
}

/// Connects as `client`, expecting servers `accept` takes; the serial the
/// server saw, and the serial of the server's certificate.
async fn call(
    addr: std::net::SocketAddr,
    client: &Credentials,
    accept: Accept,
) -> Result<(String, String), String> {
    let config = Arc::new(client.client_config(accept).unwrap());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("node").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let server_serial = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| super::identity::read(c, DOMAIN).unwrap().serial)
        .unwrap();
    let mut seen = String::new();
    // TLS 1.3: a refused client certificate shows on the first read.
    tls.read_to_string(&mut seen)
        .await
        .map_err(|e| e.to_string())?;
    Ok((seen, server_serial))
}

/// A handshake refused: by the server (an alert) or by this client.
fn assert_refused(e: &str) {
    assert!(
        e.contains("received fatal alert") || e.contains("invalid peer certificate"),
        "not a refused handshake: {e}"
    );
}

#[tokio::test]
async fn members_with_the_clusters_certificates_handshake_both_ways() {
    let ca = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    let server = creds(&ca, &Identity::member("m1").unwrap());
    let client = creds(&ca, &Identity::member("m2").unwrap());
    let addr = listener(server.clone(), members_only(), false).await;
    let (seen, server_serial) = call(addr, &client, members_only()).await.unwrap();
    assert_eq!(seen, client.info().serial);
    assert_eq!(server_serial, server.info().serial);
}

#[tokio::test]
async fn a_certificate_of_another_ca_or_an_expired_one_is_refused() {
    let ca = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    let server = creds(&ca, &Identity::member("m1").unwrap());
    let addr = listener(server, members_only(), false).await;

    let stranger = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    let foreign = creds(&stranger, &Identity::member("m2").unwrap());
    // The client does not trust the server's CA either: refused there.
    let e = call(addr, &foreign, members_only()).await.unwrap_err();
    assert_refused(&e);
    // A client that trusts the server but whose own certificate is foreign.
    let mixed = Credentials::new(
        DOMAIN,
        &Material {
            roots_pem: ca.cert_pem().to_owned(),
            ..material(
                &stranger,
                &[&stranger],
                &Identity::member("m2").unwrap(),
                SystemTime::now(),
            )
        },
    )
    .unwrap();
    let e = call(addr, &mixed, members_only()).await.unwrap_err();
    assert_refused(&e);

    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    let expired = Credentials::new(
        DOMAIN,
        &material(&ca, &[&ca], &Identity::member("m3").unwrap(), two_days_ago),
    )
    .unwrap();
    let e = call(addr, &expired, members_only()).await.unwrap_err();
    assert_refused(&e);
}

#[tokio::test]
async fn a_listener_refuses_an_identity_without_its_role_at_the_handshake() {
    let ca = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    let addr = listener(
        creds(&ca, &Identity::member("m1").unwrap()),
        members_only(),
        false,
    )
    .await;
    let store_client = creds(&ca, &Identity::client("echo-1", &["echo".into()]).unwrap());
    let e = call(addr, &store_client, members_only()).await.unwrap_err();
    assert_refused(&e);
    // And a client refuses a server that is not a member.
    let fake = listener(
        creds(&ca, &Identity::client("kv-1", &["kv".into()]).unwrap()),
        anyone(),
        false,
    )
    .await;
    let member = creds(&ca, &Identity::member("m2").unwrap());
    let e = call(fake, &member, members_only()).await.unwrap_err();
    assert_refused(&e);
}

#[tokio::test]
async fn a_listener_with_optional_client_certificates_lets_a_node_without_one_in() {
    // How a node with no certificate yet asks for its first: it checks the
    // server, the server sees no certificate (and the call must then prove
    // itself otherwise).
    let ca = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    let addr = listener(
        creds(&ca, &Identity::member("m1").unwrap()),
        members_only(),
        true,
    )
    .await;
    let config =
        super::credentials::anonymous_client_config(DOMAIN, ca.cert_pem(), members_only()).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("node").unwrap(), tcp)
        .await
        .unwrap();
    let mut seen = String::new();
    tls.read_to_string(&mut seen).await.unwrap();
    assert_eq!(seen, "-");
    // Where the certificate is required, the same client is refused.
    let strict = listener(
        creds(&ca, &Identity::member("m1").unwrap()),
        members_only(),
        false,
    )
    .await;
    let config =
        super::credentials::anonymous_client_config(DOMAIN, ca.cert_pem(), members_only()).unwrap();
    let tcp = TcpStream::connect(strict).await.unwrap();
    let refused = match tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("node").unwrap(), tcp)
        .await
    {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            let mut seen = String::new();
            tls.read_to_string(&mut seen).await.unwrap_err().to_string()
        }
    };
    assert_refused(&refused);
}

#[tokio::test]
async fn a_renewed_certificate_and_a_rotated_ca_take_effect_without_a_new_listener() {
    let old = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    let server = creds(&old, &Identity::member("m1").unwrap());
    let client = creds(&old, &Identity::member("m2").unwrap());
    let addr = listener(server.clone(), members_only(), false).await;
    let (_, first) = call(addr, &client, members_only()).await.unwrap();

    // Renewal: the same listener presents the new certificate.
    server
        .replace(&material(
            &old,
            &[&old],
            &Identity::member("m1").unwrap(),
            SystemTime::now(),
        ))
        .unwrap();
    let (_, second) = call(addr, &client, members_only()).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(second, server.info().serial);

    // Rotation, step 1: both trust old and new.
    let new = Ca::generate(DOMAIN, SystemTime::now()).unwrap();
    for (who, id) in [(&server, "m1"), (&client, "m2")] {
        who.replace(&material(
            &old,
            &[&old, &new],
            &Identity::member(id).unwrap(),
            SystemTime::now(),
        ))
        .unwrap();
    }
    call(addr, &client, members_only()).await.unwrap();
    // Step 2: certificates from the new CA; the overlap keeps old-new
    // pairs talking while nodes renew one by one.
    server
        .replace(&material(
            &new,
            &[&old, &new],
            &Identity::member("m1").unwrap(),
            SystemTime::now(),
        ))
        .unwrap();
    call(addr, &client, members_only()).await.unwrap();
    // Step 3: the old CA is dropped; its certificates are refused.
    server
        .replace(&material(
            &new,
            &[&new],
            &Identity::member("m1").unwrap(),
            SystemTime::now(),
        ))
        .unwrap();
    let e = call(addr, &client, members_only()).await.unwrap_err();
    assert_refused(&e);
    client
        .replace(&material(
            &new,
            &[&new],
            &Identity::member("m2").unwrap(),
            SystemTime::now(),
        ))
        .unwrap();
    call(addr, &client, members_only()).await.unwrap();
}
