//! A store client's certificate, from a member (`Certify` on the peer
//! listener, the one call that takes no client certificate).
//!
//! The node makes its own key and sends a certificate request. It cannot
//! check the member's certificate yet (it does not know the CA), so it
//! proves itself with its key or join token without sending it: an HMAC
//! under it of the request and of the fingerprint of the certificate the
//! member presented on this connection. Something in between that presents
//! its own certificate cannot pass the request on (the member sees a
//! fingerprint that is not its own) nor make one (it lacks the key). The
//! answer (the certificate and the CA bundle) carries an HMAC under the
//! same key, so the node trusts the CA it learns from it. The certificate
//! names the identity the member authenticated: the node's name, and the
//! topology's or the join token's services, never what the request asks.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use super::*;
use crate::tls::{
    ca::{NodeKey, describe},
    credentials::Material,
    identity::Identity,
    peer::{PeerTls, SeenServer, fingerprint},
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertifyRequest {
    pub node: String,
    /// What the node runs (its certificate names them, for a node of the
    /// topology).
    pub runs: Vec<String>,
    /// A join token's scope, for a node not in the topology.
    pub scope: Option<Vec<String>>,
    pub csr: String,
    /// SHA-256 of the certificate the member presented on this connection.
    pub server: String,
    /// HMAC-SHA256 of the above under the node's key or join token, in hex.
    pub proof: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CertifyReply {
    pub chain: String,
    pub roots: String,
    /// HMAC-SHA256 of the request's proof, the chain and the roots under
    /// the same key, in hex.
    pub proof: String,
}

fn proof(key: &str, parts: &[&str]) -> String {
    let mut mac =
        <Hmac<sha2::Sha256> as Mac>::new_from_slice(key.as_bytes()).expect("any key length");
    for part in parts {
        // Length-prefixed, so that no two different sequences read alike.
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl CertifyRequest {
    fn expected_proof(&self, key: &str) -> String {
        let scope = self.scope.as_ref().map(|s| s.join(","));
        proof(
            key,
            &[
                "flotilla/v1/certify",
                &self.node,
                &self.runs.join(","),
                scope.as_deref().unwrap_or("-"),
                &self.csr,
                &self.server,
            ],
        )
    }
}

impl CertifyReply {
    fn expected_proof(&self, key: &str, request: &CertifyRequest) -> String {
        proof(
            key,
            &[
                "flotilla/v1/certified",
                &request.proof,
                &self.chain,
                &self.roots,
            ],
        )
    }
}

/// A refused request, logged with the reason.
fn refuse(node: &str, why: String) -> tonic::Status {
    tracing::warn!(node = %node, %why, "refused a certificate request");
    tonic::Status::unauthenticated(why)
}

fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Cluster {
    /// Issues a store client's certificate (see the module's doc).
    pub(super) fn certify(&self, req: &CertifyRequest) -> Result<CertifyReply, tonic::Status> {
        let Some(tls) = &self.tls else {
            return Err(tonic::Status::failed_precondition(
                "this member runs with `cluster.tls: off` and issues no certificates: give every node the same cluster.tls",
            ));
        };
        let known = self
            .client_keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&req.node)
            .cloned();
        let (key, services) = match (known, &req.scope) {
            (Some(key), _) => (key, req.runs.clone()),
            (None, Some(scope)) => (network::join_token(&self.secret, scope), scope.clone()),
            (None, None) => {
                return Err(refuse(
                    &req.node,
                    format!(
                        "`{}` is not in this member's topology and names no join token",
                        req.node
                    ),
                ));
            }
        };
        if !same(&req.expected_proof(&key), &req.proof) {
            return Err(refuse(
                &req.node,
                format!(
                    "the certificate request of `{}` is not proven with its key or join token: it belongs to another cluster, or the key is wrong",
                    req.node
                ),
            ));
        }
        if !tls.serves(&req.server) {
            return Err(refuse(
                &req.node,
                "the certificate request is bound to a certificate this member does not present: something between the node and this member answered in its place".into(),
            ));
        }
        let identity =
            Identity::client(&req.node, &services).map_err(tonic::Status::invalid_argument)?;
        let (chain, roots) = tls
            .issue_for(&req.csr, &identity)
            .map_err(tonic::Status::invalid_argument)?;
        let mut reply = CertifyReply {
            chain,
            roots,
            proof: String::new(),
        };
        reply.proof = reply.expected_proof(&key, req);
        if let Ok(info) = describe(&reply.chain, tls.domain()) {
            tracing::info!(node = %req.node, serial = %info.serial, identity = %identity.uri(tls.domain()), "issued a store client's certificate");
            self.issued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(req.node.clone(), info);
        }
        Ok(reply)
    }
}

/// What a store client needs to ask for its certificate.
#[derive(Clone)]
pub(super) struct Asking {
    pub members: Vec<Member>,
    pub node: String,
    pub runs: Vec<String>,
    /// Its key, or its join token.
    pub key: String,
    pub domain: String,
}

impl Asking {
    /// A certificate and key, from the first member that gives them.
    async fn material(&self) -> Result<Material, String> {
        let mut errors = Vec::new();
        for member in &self.members {
            match self.ask(&member.peer.to_string()).await {
                Ok(material) => return Ok(material),
                Err(e) => errors.push(format!("{} ({}): {e}", member.name, member.peer)),
            }
        }
        Err(format!(
            "no member issued this node a certificate: {}",
            errors.join("; ")
        ))
    }

    async fn ask(&self, addr: &str) -> Result<Material, String> {
        let key = NodeKey::generate()?;
        let seen = SeenServer::default();
        let mut client = network::first_contact_client(addr, seen.clone()).await?;
        let server = seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| fingerprint(c))
            .ok_or("the member presented no certificate")?;
        let mut req = CertifyRequest {
            node: self.node.clone(),
            runs: self.runs.clone(),
            scope: network::join_token_scope(&self.key),
            csr: key.request()?,
            server,
            proof: String::new(),
        };
        req.proof = req.expected_proof(&self.key);
        let call = client.certify(tonic::Request::new(network::blob(&req)));
        let reply = tokio::time::timeout(Duration::from_secs(10), call)
            .await
            .map_err(|_| "no answer within 10 s".to_owned())?
            .map_err(|s| s.message().to_owned())?;
        let reply: CertifyReply = serde_json::from_slice(&reply.into_inner().data)
            .map_err(|e| format!("an undecodable answer: {e}"))?;
        if !same(&reply.expected_proof(&self.key, &req), &reply.proof) {
            return Err(
                "the answer is not proven with this node's key: it did not come from a member of this cluster"
                    .into(),
            );
        }
        let info = describe(&reply.chain, &self.domain)?;
        match &info.identity {
            Identity::Client { node, .. } if *node == self.node => {}
            other => {
                return Err(format!(
                    "the certificate names `{}`, not this node",
                    other.uri(&self.domain)
                ));
            }
        }
        Ok(Material {
            chain_pem: reply.chain,
            key_pem: key.pem(),
            roots_pem: reply.roots,
        })
    }

    /// This node's TLS between nodes, from its first certificate.
    pub async fn first(&self) -> Result<PeerTls, String> {
        let material = self.material().await?;
        let identity = describe(&material.chain_pem, &self.domain)?.identity;
        let tls = PeerTls::client(&self.domain, identity, material)?;
        let info = tls.info();
        tracing::info!(serial = %info.serial, identity = %info.identity.uri(&self.domain), "a member issued this node's certificate");
        Ok(tls)
    }

    /// Renews `tls` at two thirds of each certificate's life, from any
    /// member (a failure is retried every 10 s until it expires and after).
    pub async fn renew(self, tls: PeerTls) {
        loop {
            let wait = tls
                .renew_at()
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            tokio::time::sleep(wait).await;
            let renewed = match self.material().await {
                Ok(material) => tls.replace(&material),
                Err(e) => Err(e),
            };
            match renewed {
                Ok(()) => {
                    tracing::info!(serial = %tls.info().serial, "renewed this node's certificate")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew this node's certificate; retrying in 10 s");
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
            }
        }
    }
}

/// How store client `node` (running `runs`, proving itself with `key`, its
/// key or join token) calls the members at `peers`: with a certificate one
/// of them issues it (or, for `tls: off`, with `key` itself). Tools and
/// tests act as a store client with it.
pub async fn store_client_auth(
    peers: &[String],
    node: &str,
    runs: &[String],
    key: &str,
    tls: &crate::tls::peer::PeerTlsMode,
) -> Result<network::Auth, String> {
    match tls {
        crate::tls::peer::PeerTlsMode::Off => Ok(network::Auth::Plain {
            credential: key.into(),
            node: Some(node.into()),
        }),
        crate::tls::peer::PeerTlsMode::On(on) => {
            let asking = Asking {
                members: peers
                    .iter()
                    .enumerate()
                    .map(|(i, peer)| Member {
                        id: i as u64 + 1,
                        name: peer.clone(),
                        peer: peer.clone(),
                    })
                    .collect(),
                node: node.to_owned(),
                runs: runs.to_vec(),
                key: key.to_owned(),
                domain: on.domain.clone(),
            };
            Ok(network::Auth::Tls(asking.first().await?))
        }
    }
}
