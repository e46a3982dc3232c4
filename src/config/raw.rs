//! The config as written: serde types, unknown keys refused. Nothing is
//! checked here beyond YAML's shapes; `Config::parse` validates.

use schemars::JsonSchema;
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

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Who this node is. Required.
    pub(super) node: Option<RawNode>,
    /// The services this node runs: `all`, or some of the catalogue's
    /// (accounts, echo, kv, db, xds, and an embedding program's own).
    /// Required: there is no default.
    pub(super) services: Option<Vec<String>>,
    /// The addresses this node listens on.
    #[serde(default)]
    pub(super) listeners: RawListeners,
    /// Where other nodes reach this one, when it differs from where it
    /// binds.
    #[serde(default)]
    pub(super) advertise: RawAdvertise,
    /// The directory of `flotilla.db` (and a member's `raft-log.db`),
    /// relative to the working directory. Required.
    pub(super) data_dir: Option<String>,
    /// What requests, listeners and services' store calls may take.
    #[serde(default)]
    pub(super) limits: RawLimits,
    /// Log format and level.
    #[serde(default)]
    pub(super) log: RawLog,
    /// Authentication: the secret, token lifetimes, sign-up, password
    /// hashing. Required.
    pub(super) auth: Option<RawAuth>,
    /// HA and scaled modes: the topology and the cluster's secret. Absent:
    /// single mode.
    pub(super) cluster: Option<RawCluster>,
    /// The xDS server (the `xds` role): the ingress listener Envoys get.
    #[serde(default)]
    pub(super) xds: RawXds,
    /// TLS on the public listener, with the operator's certificates.
    #[serde(default)]
    pub(super) tls: RawTls,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    /// The public listener's certificates; with them it speaks TLS only.
    pub(super) public: Option<RawPublicTls>,
}

/// The public listener's certificates: the first also for clients that
/// name none of them.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublicTls {
    /// Chosen by the name the client asks for (SNI); the first also for
    /// clients that name none of them.
    pub(super) certificates: Vec<RawCertFiles>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCertFiles {
    /// PEM certificate chain; read again when it changes.
    pub(super) cert_file: String,
    /// PEM private key.
    pub(super) key_file: String,
}

/// Where others reach this node, when it differs from where it binds (a
/// pod binds 0.0.0.0 and is reached at its pod IP).
#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdvertise {
    /// The public address others reach this node at, `host:port` (e.g.
    /// `${POD_IP}:8080`).
    pub(super) public: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawXds {
    /// The address Envoys fed by this xDS server listen on for the
    /// ingress, `host:port` (default 0.0.0.0:10000).
    pub(super) ingress_listener: Option<String>,
    /// Serve xDS over TLS with the cluster's CA.
    #[serde(default)]
    pub(super) tls: bool,
    /// Extra DNS names in the xDS server's certificate.
    #[serde(default)]
    pub(super) tls_names: Vec<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    /// The topology file that lists the members and the nodes. Required
    /// in a cluster.
    pub(super) topology: Option<String>,
    /// The cluster's shared secret (>= 32 bytes): peers present it to
    /// join, vote or write. Or `secret_file`.
    pub(super) secret: Option<String>,
    /// A file holding the cluster's secret.
    pub(super) secret_file: Option<String>,
    /// A store client's own key (`flotilla cluster client-key`), in place
    /// of the cluster's secret. Or `client_key_file`.
    pub(super) client_key: Option<String>,
    /// A file holding this store client's key.
    pub(super) client_key_file: Option<String>,
    /// A token that lets a node not in the topology join (k3d mode). Or
    /// `join_token_file`.
    pub(super) join_token: Option<String>,
    /// A file holding the join token.
    pub(super) join_token_file: Option<String>,
    /// Initialize the cluster from the topology if it is not initialized
    /// yet; safe on every member.
    #[serde(default)]
    pub(super) bootstrap: bool,
    /// Raft heartbeat interval (default 50).
    pub(super) heartbeat_ms: Option<u64>,
    /// Raft election timeout range, `[min, max]` (default [200, 400]).
    pub(super) election_timeout_ms: Option<[u64; 2]>,
    /// Log entries between snapshots.
    pub(super) snapshot_every: Option<u64>,
    /// Log entries kept behind a snapshot, for followers that lag a
    /// little.
    pub(super) snapshot_keep_logs: Option<u64>,
    /// Allow isolating this node through the admin listener (tests only).
    #[serde(default)]
    pub(super) fault_injection: bool,
    /// How far behind `consistency=stale` reads may be (default 1000).
    pub(super) stale_read_max_lag_ms: Option<u64>,
    /// TLS between nodes: `off`, or `{ca_dir, domain,
    /// certificate_lifetime_seconds}` (each optional); absent: mutual TLS
    /// with the CA derived from the secret (read by
    /// `cluster::parse_peer_tls`).
    #[serde(default)]
    #[schemars(schema_with = "super::schema::peer_tls")]
    pub(super) tls: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    /// Seals the token signing keys and keys the hashes of refresh tokens
    /// and API keys: >= 32 bytes, never generated for you. Or
    /// `secret_file`.
    pub(super) secret: Option<String>,
    /// A file holding the auth secret (`openssl rand -base64 48`).
    pub(super) secret_file: Option<String>,
    /// Access token lifetime, 60 .. 86400 (default 900).
    pub(super) access_token_ttl_seconds: Option<u64>,
    /// Refresh token lifetime: at least the access lifetime, at most 90
    /// days (default 1209600).
    pub(super) refresh_token_ttl_seconds: Option<u64>,
    /// Rotate the signing key this often; 0: only with `flotilla auth
    /// rotate-keys` (default 720).
    pub(super) key_rotation_hours: Option<u64>,
    /// Open sign-up (default false).
    pub(super) signup: Option<bool>,
    /// argon2id parameters, at or above OWASP's minimum.
    pub(super) password_hash: Option<RawPasswordHash>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPasswordHash {
    /// Memory in KiB (OWASP minimum 19456).
    pub(super) memory_kib: u32,
    /// Passes (minimum 2).
    pub(super) iterations: u32,
    /// Lanes (1).
    pub(super) parallelism: u32,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    /// This node's id: a-z, 0-9 and '-'. Required.
    pub(super) id: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListeners {
    /// HTTP/1.1, h2c and gRPC: `/api/<service>/…` (default
    /// 127.0.0.1:8080).
    pub(super) public: Option<String>,
    /// `/`, `/healthz`, `/readyz`, `/metrics`, `/status` (default
    /// 127.0.0.1:8081).
    pub(super) admin: Option<String>,
    /// Raft and forwarded writes between nodes (cluster members).
    pub(super) peer: Option<String>,
    /// ADS and CSDS for Envoy and proxyless gRPC (the `xds` role).
    pub(super) xds: Option<String>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// 413 above this (default 1048576).
    pub(super) max_request_body_bytes: Option<u64>,
    /// 504 (gRPC DEADLINE_EXCEEDED) above this (default 10000).
    pub(super) request_timeout_ms: Option<u64>,
    /// Time in-flight requests get on SIGTERM/SIGINT (default 10000).
    pub(super) shutdown_grace_ms: Option<u64>,
    /// Per listener: connections, HTTP/2 streams, header and URI sizes.
    #[serde(default)]
    pub(super) listeners: super::limits::RawListenersLimits,
    /// What one call of a service to the store may cost.
    #[serde(default)]
    pub(super) store: RawBudget,
    /// Per-service overrides of `store`.
    #[serde(default)]
    pub(super) services: std::collections::BTreeMap<String, RawBudget>,
}

/// What one call of a service to the store may cost (`limits.store`, and
/// per service in `limits.services.<name>`).
#[derive(Debug, Default, Clone, Copy, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBudget {
    /// Wall time of one read statement (default 1000).
    pub(super) read_ms: Option<u64>,
    /// SQLite VM instructions of one write statement (default 10000000).
    pub(super) write_steps: Option<u64>,
    /// Rows one call may return, and rows it may write (default 10000).
    pub(super) max_rows: Option<u64>,
    /// Largest string, blob or row a write may make (default 1048576).
    pub(super) max_value_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    /// `human` or `json`; `--log-format` overrides.
    pub(super) format: Option<String>,
    /// A tracing filter, e.g. `info` or `flotilla=debug`; RUST_LOG
    /// overrides.
    pub(super) level: Option<String>,
}
