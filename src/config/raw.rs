//! The config as written: serde types, unknown keys refused. Nothing is
//! checked here beyond YAML's shapes; `Config::parse` validates.

use serde::Deserialize;

/// The top-level keys of a config, as `RawConfig` names them.
pub(super) const SECTIONS: &[&str] = &[
    "node",
    "services",
    "listeners",
    "advertise",
    "data_dir",
    "limits",
    "log",
    "auth",
    "cluster",
    "xds",
    "tls",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) node: Option<RawNode>,
    pub(super) services: Option<Vec<String>>,
    #[serde(default)]
    pub(super) listeners: RawListeners,
    #[serde(default)]
    pub(super) advertise: RawAdvertise,
    pub(super) data_dir: Option<String>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default)]
    pub(super) log: RawLog,
    pub(super) auth: Option<RawAuth>,
    pub(super) cluster: Option<RawCluster>,
    #[serde(default)]
    pub(super) xds: RawXds,
    #[serde(default)]
    pub(super) tls: RawTls,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) public: Option<RawPublicTls>,
}

/// The public listener's certificates: the first also for clients that
/// name none of them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublicTls {
    pub(super) certificates: Vec<RawCertFiles>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertFiles {
    pub(super) cert_file: String,
    pub(super) key_file: String,
}

/// Where others reach this node, when it differs from where it binds (a
/// pod binds 0.0.0.0 and is reached at its pod IP).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdvertise {
    pub(super) public: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXds {
    pub(super) ingress_listener: Option<String>,
    #[serde(default)]
    pub(super) tls: bool,
    #[serde(default)]
    pub(super) tls_names: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) topology: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<String>,
    pub(super) client_key: Option<String>,
    pub(super) client_key_file: Option<String>,
    pub(super) join_token: Option<String>,
    pub(super) join_token_file: Option<String>,
    #[serde(default)]
    pub(super) bootstrap: bool,
    pub(super) heartbeat_ms: Option<u64>,
    pub(super) election_timeout_ms: Option<[u64; 2]>,
    pub(super) snapshot_every: Option<u64>,
    pub(super) snapshot_keep_logs: Option<u64>,
    #[serde(default)]
    pub(super) fault_injection: bool,
    pub(super) stale_read_max_lag_ms: Option<u64>,
    /// `off`, or `{ca_dir, domain}`; absent: on, with the CA derived from
    /// the secret (read by `cluster::parse_peer_tls`).
    pub(super) tls: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) secret: Option<String>,
    pub(super) secret_file: Option<String>,
    pub(super) access_token_ttl_seconds: Option<u64>,
    pub(super) refresh_token_ttl_seconds: Option<u64>,
    pub(super) key_rotation_hours: Option<u64>,
    pub(super) signup: Option<bool>,
    pub(super) password_hash: Option<RawPasswordHash>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPasswordHash {
    pub(super) memory_kib: u32,
    pub(super) iterations: u32,
    pub(super) parallelism: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListeners {
    pub(super) public: Option<String>,
    pub(super) admin: Option<String>,
    pub(super) peer: Option<String>,
    pub(super) xds: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) max_request_body_bytes: Option<u64>,
    pub(super) request_timeout_ms: Option<u64>,
    pub(super) shutdown_grace_ms: Option<u64>,
    #[serde(default)]
    pub(super) listeners: super::limits::RawListenersLimits,
    #[serde(default)]
    pub(super) store: RawBudget,
    #[serde(default)]
    pub(super) services: std::collections::BTreeMap<String, RawBudget>,
}

/// What one call of a service to the store may cost (`limits.store`, and
/// per service in `limits.services.<name>`).
#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    pub(super) read_ms: Option<u64>,
    pub(super) write_steps: Option<u64>,
    pub(super) max_rows: Option<u64>,
    pub(super) max_value_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}
