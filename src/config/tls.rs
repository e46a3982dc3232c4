//! The `tls` section: TLS on the public listener, from the operator's
//! certificate files (`tls.public.certificates`), checked here as the
//! listener will load them.

use super::*;
use crate::tls::public::{CertFiles, check};

pub(super) fn parse_public_tls(
    problems: &mut Problems,
    raw: Option<RawPublicTls>,
    in_cluster: bool,
) -> Option<Vec<CertFiles>> {
    let raw = raw?;
    if in_cluster {
        problems.add(
            "tls.public",
            "TLS on the public listener is for single mode for now: in a cluster the nodes forward to each other's public listeners and Envoy reaches them there, in plaintext until node-to-node TLS lands (issue 17); terminate TLS in Envoy in front instead",
        );
        return None;
    }
    if raw.certificates.is_empty() {
        problems.add(
            "tls.public.certificates",
            "is empty: give at least one {cert_file, key_file}, or remove `tls.public`",
        );
        return None;
    }
    let files: Vec<CertFiles> = raw
        .certificates
        .into_iter()
        .map(|c| CertFiles {
            cert_file: PathBuf::from(c.cert_file),
            key_file: PathBuf::from(c.key_file),
        })
        .collect();
    match check(&files) {
        Ok(_) => Some(files),
        Err(e) => {
            problems.add("tls.public.certificates", e);
            None
        }
    }
}
