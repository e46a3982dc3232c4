//! `limits.listeners`: what each listener takes before it refuses, with a
//! default per listener (the public one faces clients, the peer and xDS
//! ones nodes and proxies, the admin one operators).

use schemars::JsonSchema;
use serde::Deserialize;

use super::Problems;
use crate::edge::server::ListenerLimits;

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListenersLimits {
    #[serde(default)]
    public: RawListenerLimits,
    #[serde(default)]
    admin: RawListenerLimits,
    #[serde(default)]
    peer: RawListenerLimits,
    #[serde(default)]
    xds: RawListenerLimits,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RawListenerLimits {
    /// Connections at once; more wait in the accept queue (logged).
    max_connections: Option<u64>,
    /// HTTP/2 streams per connection.
    max_streams_per_connection: Option<u64>,
    /// 431 above this many bytes of headers.
    max_header_bytes: Option<u64>,
    /// 431 above this many headers.
    max_headers: Option<u64>,
    /// 414 above this many bytes of URI.
    max_uri_bytes: Option<u64>,
}

/// The limits of the four listeners.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenersLimits {
    pub public: ListenerLimits,
    pub admin: ListenerLimits,
    pub peer: ListenerLimits,
    pub xds: ListenerLimits,
}

impl Default for ListenersLimits {
    fn default() -> Self {
        ListenersLimits {
            public: ListenerLimits::PUBLIC,
            admin: ListenerLimits::ADMIN,
            peer: ListenerLimits::PEER,
            xds: ListenerLimits::XDS,
        }
    }
}

pub(super) fn parse_listener_limits(
    problems: &mut Problems,
    raw: &RawListenersLimits,
) -> ListenersLimits {
    let defaults = ListenersLimits::default();
    ListenersLimits {
        public: parse_one(problems, "public", &raw.public, defaults.public),
        admin: parse_one(problems, "admin", &raw.admin, defaults.admin),
        peer: parse_one(problems, "peer", &raw.peer, defaults.peer),
        xds: parse_one(problems, "xds", &raw.xds, defaults.xds),
    }
}

fn parse_one(
    problems: &mut Problems,
    listener: &str,
    raw: &RawListenerLimits,
    default: ListenerLimits,
) -> ListenerLimits {
    let mut check = |name: &str, value: Option<u64>, default: usize, range: (u64, u64)| match value
    {
        None => default,
        Some(v) if (range.0..=range.1).contains(&v) => v as usize,
        Some(v) => {
            problems.add(
                &format!("limits.listeners.{listener}.{name}"),
                format!("{v} is out of range: use {} to {}", range.0, range.1),
            );
            default
        }
    };
    ListenerLimits {
        max_connections: check(
            "max_connections",
            raw.max_connections,
            default.max_connections,
            (1, 1_000_000),
        ),
        max_streams_per_connection: check(
            "max_streams_per_connection",
            raw.max_streams_per_connection,
            default.max_streams_per_connection,
            (1, 100_000),
        ),
        max_header_bytes: check(
            "max_header_bytes",
            raw.max_header_bytes,
            default.max_header_bytes,
            (1024, 1024 * 1024),
        ),
        max_headers: check(
            "max_headers",
            raw.max_headers,
            default.max_headers,
            (8, 1000),
        ),
        max_uri_bytes: check(
            "max_uri_bytes",
            raw.max_uri_bytes,
            default.max_uri_bytes,
            (256, 1024 * 1024),
        ),
    }
}
