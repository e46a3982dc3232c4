//! The `tls` section: TLS on the public listener, from the operator's
//! certificate files (`tls.public.certificates`), checked here as the
//! listener will load them. In a cluster it needs TLS between nodes: the
//! nodes forward to each other, and Envoys reach them, on the same
//! listener, with the cluster's certificates.

use super::*;
use crate::tls::public::{CertFiles, check};

pub(super) fn parse_public_tls(
    problems: &mut Problems,
    raw: Option<RawPublicTls>,
    cluster_tls: Option<bool>,
) -> Option<Vec<CertFiles>> {
    let raw = raw?;
    if cluster_tls == Some(false) {
        problems.add(
            "tls.public",
            "makes the public listener TLS only, but with cluster.tls off the nodes could not forward to each other there (they do over TLS with the cluster's certificates): remove `cluster.tls: off`, or `tls.public`",
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
