//! The cluster's certificate authority: made by `flotilla ca init`, or an
//! operator's imported as it is. It signs a node's certificate request
//! with the identity the node authenticated as, for a short lifetime.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::identity::{self, Identity};

/// How long a node certificate is valid (renewed at two thirds).
pub const NODE_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a CA `flotilla ca init` makes is valid.
pub const CA_LIFETIME: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// A derived CA's fixed validity: 2025-01-01 to 2125-01-01 (its key is
/// the secret's; a new secret makes a new CA).
const DERIVED_FROM: Duration = Duration::from_secs(1_735_689_600);
const DERIVED_UNTIL: Duration = Duration::from_secs(4_891_363_200);
/// Certificates start this much before they are issued, for clocks that
/// run a little behind the CA's.
pub const BACKDATE: Duration = Duration::from_secs(300);

/// A CA: its certificate and signing key.
pub struct Ca {
    cert_pem: String,
    not_after: SystemTime,
    issuer: Issuer<'static, KeyPair>,
}

fn offset(t: SystemTime) -> time::OffsetDateTime {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never zero in its first byte (DER integers).
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// What every CA certificate of trust domain `domain` says: its name, and
/// that it signs node certificates only (no intermediate CAs).
fn ca_params(domain: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("flotilla CA {domain}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Ca {
    /// A new CA for trust domain `domain`: an ECDSA P-256 key, valid from
    /// `now` for `CA_LIFETIME`, allowed to sign node certificates only (no
    /// intermediate CAs).
    pub fn generate(domain: &str, now: SystemTime) -> Result<Ca, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("cannot make a CA key: {e}"))?;
        let mut params = ca_params(domain);
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset(now + CA_LIFETIME);
        params.serial_number = Some(random_serial());
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            not_after: now + CA_LIFETIME,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA of a cluster whose config chose none: derived from the
    /// cluster secret, so every member (and every tool holding the secret)
    /// has the same one without storing a key or asking another node, and
    /// a cluster is mutual TLS from its first connection. An Ed25519 key
    /// from a keyed hash of the secret, and a certificate with fixed fields
    /// (Ed25519 signatures are deterministic): the same bytes everywhere.
    /// Whoever holds the secret can issue, as whoever holds it can already
    /// join; a new secret is a new CA.
    pub fn derive(secret: &str, domain: &str) -> Result<Ca, String> {
        use hmac::{Hmac, Mac};
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes any key length");
        mac.update(format!("flotilla/v1/ca key/{domain}").as_bytes());
        let seed = mac.finalize().into_bytes();
        // PKCS#8 v1 of an Ed25519 private key: the fixed prefix (RFC 8410),
        // then the 32-byte seed.
        let mut pkcs8 = vec![
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        pkcs8.extend_from_slice(&seed);
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8.into(), &rcgen::PKCS_ED25519)
            .map_err(|e| format!("cannot make the CA key from the cluster secret: {e}"))?;
        let mut params = ca_params(domain);
        let (start, end) = (
            SystemTime::UNIX_EPOCH + DERIVED_FROM,
            SystemTime::UNIX_EPOCH + DERIVED_UNTIL,
        );
        params.not_before = offset(start);
        params.not_after = offset(end);
        params.serial_number = Some(SerialNumber::from_slice(&[0x01, seed[0] | 0x01]));
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cannot sign the CA certificate: {e}"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            not_after: end,
            issuer: Issuer::new(params, key),
        })
    }

    /// An operator's CA: its certificate and key in PEM. Refused unless the
    /// certificate is a CA's and the key is the certificate's.
    pub fn import(cert_pem: &str, key_pem: &str) -> Result<Ca, String> {
        use x509_parser::prelude::{FromDer, X509Certificate};
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| format!("the CA certificate is not a PEM certificate: {e}"))?;
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| format!("the CA certificate does not parse: {e}"))?;
        if !cert.is_ca() {
            return Err(
                "the certificate is not a CA's (basic constraints without CA:TRUE): give the CA certificate, not one it issued"
                    .into(),
            );
        }
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| format!("the CA key is not a PEM private key rcgen can sign with (ECDSA P-256/P-384, Ed25519 or RSA, PKCS#8): {e}"))?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err("the CA key is not the CA certificate's key".into());
        }
        let not_after = SystemTime::UNIX_EPOCH
            + Duration::from_secs(cert.validity().not_after.timestamp().max(0) as u64);
        let issuer = Issuer::from_ca_cert_der(&der, key)
            .map_err(|e| format!("cannot sign with this CA: {e}"))?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            not_after,
            issuer,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Signs `csr_pem` (its signature checked) as `identity`, valid from
    /// `now` for `lifetime` and never past the CA's own end. Whatever
    /// names the request asks for are ignored: the certificate names the
    /// identity the caller authenticated as.
    pub fn issue(
        &self,
        csr_pem: &str,
        identity: &Identity,
        domain: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<String, String> {
        self.issue_named(csr_pem, identity, &[], domain, now, lifetime)
    }

    /// As `issue`, the certificate also naming `hosts` (DNS names or IP
    /// addresses), for clients that check the server's name as well as
    /// its chain (proxyless gRPC over TLS).
    pub fn issue_named(
        &self,
        csr_pem: &str,
        identity: &Identity,
        hosts: &[String],
        domain: &str,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<String, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the certificate request is not valid: {e}"))?;
        let uri = identity.uri(domain);
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, identity.name());
        params.subject_alt_names =
            vec![SanType::URI(uri.clone().try_into().map_err(|e| {
                format!("identity {uri} is not an IA5 string: {e}")
            })?)];
        // A node's certificate also names the trust domain: the name its
        // public listener serves it for (`tls::public::source`), which
        // clients that check names (curl, browsers) can then check.
        let domain_name = matches!(identity, Identity::Member { .. } | Identity::Client { .. })
            .then(|| domain.to_owned());
        for host in hosts.iter().chain(domain_name.iter()) {
            params.subject_alt_names.push(match host.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    host.clone()
                        .try_into()
                        .map_err(|e| format!("`{host}` is not a DNS name: {e}"))?,
                ),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = offset(now - BACKDATE);
        params.not_after = offset((now + lifetime).min(self.not_after));
        params.serial_number = Some(random_serial());
        csr.params = params;
        let cert = csr
            .signed_by(&self.issuer)
            .map_err(|e| format!("cannot sign the certificate: {e}"))?;
        Ok(cert.pem())
    }
}

/// A node's own key, made where it is used: only its certificate request
/// leaves the node.
pub struct NodeKey(KeyPair);

impl NodeKey {
    pub fn generate() -> Result<NodeKey, String> {
        KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map(NodeKey)
            .map_err(|e| format!("cannot make a key: {e}"))
    }

    /// A certificate request for this key (the CA decides the names).
    pub fn request(&self) -> Result<String, String> {
        CertificateParams::default()
            .serialize_request(&self.0)
            .and_then(|r| r.pem())
            .map_err(|e| format!("cannot make a certificate request: {e}"))
    }

    pub fn pem(&self) -> String {
        self.0.serialize_pem()
    }
}

/// The serial and end of `cert_pem`, and the identity it names.
pub fn describe(cert_pem: &str, domain: &str) -> Result<identity::CertInfo, String> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    identity::read(&der, domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_the_authenticated_identity_not_the_requested_one() {
        let now = SystemTime::now();
        let ca = Ca::generate("d", now).unwrap();
        let key = NodeKey::generate().unwrap();
        // A request that asks for another name gets the caller's.
        let sneaky = CertificateParams::new(vec!["spiffe://d/member/leader".to_owned()])
            .unwrap()
            .serialize_request(&key.0)
            .unwrap()
            .pem()
            .unwrap();
        let id = Identity::client("echo-1", &["echo".into()]).unwrap();
        let cert = ca.issue(&sneaky, &id, "d", now, NODE_LIFETIME).unwrap();
        let info = describe(&cert, "d").unwrap();
        assert_eq!(info.identity, id);
        let lifetime = info.not_after.duration_since(info.not_before).unwrap();
        assert_eq!(lifetime, NODE_LIFETIME + BACKDATE);
        assert_eq!(info.serial.len(), 32, "{}", info.serial);
    }

    #[test]
    fn an_imported_ca_must_be_a_ca_with_its_own_key() {
        let now = SystemTime::now();
        let ca = Ca::generate("d", now).unwrap();
        let again = Ca::import(ca.cert_pem(), &ca.key_pem()).unwrap();
        let key = NodeKey::generate().unwrap();
        let id = Identity::member("m1").unwrap();
        let cert = again
            .issue(&key.request().unwrap(), &id, "d", now, NODE_LIFETIME)
            .unwrap();
        assert_eq!(describe(&cert, "d").unwrap().identity, id);

        let other = Ca::generate("d", now).unwrap();
        let e = Ca::import(ca.cert_pem(), &other.key_pem()).err().unwrap();
        assert!(e.contains("not the CA certificate's key"), "{e}");
        let e = Ca::import(&cert, &key.pem()).err().unwrap();
        assert!(e.contains("not a CA's"), "{e}");
        let e = Ca::import("junk", &key.pem()).err().unwrap();
        assert!(e.contains("not a PEM certificate"), "{e}");
    }

    #[test]
    fn a_node_certificate_never_outlives_its_ca() {
        let long_ago = SystemTime::now() - CA_LIFETIME + Duration::from_secs(3600);
        let ca = Ca::generate("d", long_ago).unwrap();
        let key = NodeKey::generate().unwrap();
        let cert = ca
            .issue(
                &key.request().unwrap(),
                &Identity::member("m").unwrap(),
                "d",
                SystemTime::now(),
                NODE_LIFETIME,
            )
            .unwrap();
        let end = describe(&cert, "d").unwrap().not_after;
        assert!(end <= long_ago + CA_LIFETIME, "{end:?}");
    }
}
