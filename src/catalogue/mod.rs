//! The service catalogue: every service compiled into the binary, with what
//! it declares about itself.
//!
//! A service declares its name, its HTTP routes and gRPC methods (each with
//! the access it needs), and its migrations. The routing table, the
//! ingress, `check-config` and later the xDS resources are all derived from
//! these declarations; nothing else lists routes.
//!
//! Adding a service: implement [`Service`] and add one line to
//! [`Catalogue::builtin`] (or build your own catalogue, as
//! `examples/greeter.rs` does).

pub mod api_error;
pub mod routing;

use std::sync::Arc;

pub use crate::auth::authz::Access;
use crate::{
    auth::Auth,
    store::{Budget, Migration, Namespace, Store},
};

/// Namespaces that belong to flotilla itself; no service may take these
/// names.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "sys", "raft", "registry", "auth", "sqlite", "all", "db", "xds",
];

/// The client of a request as the node saw it (the TCP peer, or for a
/// request another node forwarded, the client that node saw): a request
/// extension, for a service's per-address limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddr(pub std::net::SocketAddr);

/// One HTTP route, relative to `/api/<service>`.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    pub method: http::Method,
    /// A path template in axum syntax, `""` for the service root, e.g.
    /// `/keys/{*key}`.
    pub path: &'static str,
    pub access: Access,
}

/// One gRPC method.
#[derive(Clone, Debug)]
pub struct GrpcMethod {
    pub name: &'static str,
    pub access: Access,
}

/// One gRPC service, named as in its proto (`package.Service`).
#[derive(Clone, Debug)]
pub struct GrpcService {
    pub name: &'static str,
    pub methods: Vec<GrpcMethod>,
}

/// Everything a service serves.
#[derive(Clone, Debug, Default)]
pub struct Api {
    pub http: Vec<HttpRoute>,
    pub grpc: Vec<GrpcService>,
}

/// What a service may do beyond its own namespace, declared in its
/// catalogue entry ([`Service::capabilities`]) and granted when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Capability {
    /// Issue and revoke credentials: the accounts namespace, password
    /// hashing and the signing keys. Reserved to flotilla's own `accounts`
    /// service; any other service that declares it fails validation.
    IssueCredentials,
}

impl Capability {
    pub fn name(&self) -> &'static str {
        match self {
            Capability::IssueCredentials => "issue-credentials",
        }
    }
}

/// What a service gets when it starts, and nothing more: this node's id,
/// its own namespace of the store within its budget (never the connection),
/// and the capabilities it declared and was granted. The caller of each
/// request reaches its handlers as a [`crate::service::Principal`] request
/// extension; checking credentials is the ingress's job, before any handler
/// runs.
#[derive(Clone)]
pub struct ServiceContext {
    pub node_id: Arc<str>,
    pub store: Namespace,
    /// Readable inside flotilla only: a service outside this crate cannot
    /// name it, whatever it declares.
    pub(crate) grants: Grants,
}

/// The objects behind the capabilities granted to a service.
#[derive(Clone, Default)]
pub(crate) struct Grants {
    /// [`Capability::IssueCredentials`].
    pub credentials: Option<Arc<Auth>>,
}

impl ServiceContext {
    /// A context with no capabilities, around a namespace handle: to run a
    /// service outside a node (its own tests, benchmarks).
    pub fn ungranted(node_id: Arc<str>, store: Namespace) -> ServiceContext {
        ServiceContext {
            node_id,
            store,
            grants: Grants::default(),
        }
    }

    /// The context of the service named `name`: its namespace within
    /// `budget`, and `grants` (given by the node, from what the catalogue
    /// allowed).
    pub(crate) fn new(
        node_id: Arc<str>,
        store: &Store,
        name: &str,
        budget: Budget,
        grants: Grants,
    ) -> ServiceContext {
        ServiceContext {
            node_id,
            store: store.namespace_within(name, budget),
            grants,
        }
    }
}

/// The handlers of a started service.
pub struct Handlers {
    /// HTTP routes, at the paths declared in [`Api::http`] (relative to
    /// `/api/<service>`).
    pub http: axum::Router,
    /// gRPC services, at their full paths (`/package.Service/Method`).
    pub grpc: axum::Router,
}

#[derive(Debug, thiserror::Error)]
#[error("service `{service}` failed to start: {message}")]
pub struct StartError {
    pub service: &'static str,
    pub message: String,
}

/// A service compiled into the binary.
pub trait Service: Send + Sync + 'static {
    /// The service's name: its namespace, its `/api/<name>` prefix and its
    /// name in configs. Lowercase letters and digits only.
    fn name(&self) -> &'static str;
    /// One line for `check-config` and the docs.
    fn summary(&self) -> &'static str;
    /// The routes and methods it serves, with the access each needs.
    fn api(&self) -> Api;
    /// Schema history of its namespace, applied before it starts.
    fn migrations(&self) -> &'static [Migration] {
        &[]
    }
    /// What it may do beyond its own namespace (most services: nothing).
    fn capabilities(&self) -> &'static [Capability] {
        &[]
    }
    /// Builds its handlers. Called once, after its migrations ran.
    fn start(&self, ctx: ServiceContext) -> Result<Handlers, StartError>;
}

pub use crate::protocol::grpc_router;

/// One service of the catalogue, and whether it is one of flotilla's own
/// (only those may hold reserved capabilities).
#[derive(Clone)]
struct Entry {
    service: Arc<dyn Service>,
    own: bool,
}

/// The services this binary can run.
#[derive(Clone)]
pub struct Catalogue {
    services: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid service catalogue: {0}")]
pub struct CatalogueError(String);

impl Catalogue {
    /// Adds one of flotilla's own services (only those may hold reserved
    /// capabilities).
    pub(crate) fn with_own(mut self, service: impl Service) -> Catalogue {
        self.services.push(Entry {
            service: Arc::new(service),
            own: true,
        });
        self
    }

    pub fn empty() -> Catalogue {
        Catalogue {
            services: Vec::new(),
        }
    }

    /// Adds a service (the one registration line of a new service).
    pub fn with(mut self, service: impl Service) -> Catalogue {
        self.services.push(Entry {
            service: Arc::new(service),
            own: false,
        });
        self
    }

    /// Checks the declarations: names, uniqueness, migrations and routes.
    /// A failure is a programming error in a service, reported at start-up.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        let mut grpc_names = Vec::new();
        for (i, entry) in self.services.iter().enumerate() {
            let s = &entry.service;
            let name = s.name();
            let valid = !name.is_empty()
                && name.len() <= 32
                && name.as_bytes()[0].is_ascii_lowercase()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !valid {
                return Err(CatalogueError(format!(
                    "service name `{name}` must be 1-32 lowercase letters and digits, starting with a letter"
                )));
            }
            if RESERVED_NAMESPACES.contains(&name) {
                return Err(CatalogueError(format!("service name `{name}` is reserved")));
            }
            if let Some(c) = s.capabilities().first().filter(|_| !entry.own) {
                return Err(CatalogueError(format!(
                    "service `{name}` declares capability `{}`, which only flotilla's own accounts service may hold",
                    c.name()
                )));
            }
            if self.services[..i].iter().any(|o| o.service.name() == name) {
                return Err(CatalogueError(format!(
                    "service `{name}` is registered twice"
                )));
            }
            for (n, m) in s.migrations().iter().enumerate() {
                if m.version as usize != n + 1 {
                    return Err(CatalogueError(format!(
                        "service `{name}`: migration `{}` has version {}, expected {} (versions start at 1 and grow by one)",
                        m.name,
                        m.version,
                        n + 1
                    )));
                }
            }
            let api = s.api();
            for r in &api.http {
                if !(r.path.is_empty() || r.path.starts_with('/')) || r.path.ends_with('/') {
                    return Err(CatalogueError(format!(
                        "service `{name}`: route `{}` must be empty or start with '/' and not end with '/'",
                        r.path
                    )));
                }
            }
            for g in &api.grpc {
                if grpc_names.contains(&g.name) {
                    return Err(CatalogueError(format!(
                        "gRPC service `{}` is declared twice",
                        g.name
                    )));
                }
                grpc_names.push(g.name);
            }
        }
        Ok(())
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.services.iter().map(|e| e.service.name())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Service>> {
        self.iter().find(|s| s.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.services.iter().map(|e| &e.service)
    }

    /// The capabilities the service named `name` declared and may hold (a
    /// validated catalogue holds no other).
    pub(crate) fn granted(&self, name: &str) -> &'static [Capability] {
        self.services
            .iter()
            .find(|e| e.service.name() == name && e.own)
            .map_or(&[], |e| e.service.capabilities())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);
    impl Service for Named {
        fn name(&self) -> &'static str {
            self.0
        }
        fn summary(&self) -> &'static str {
            "test"
        }
        fn api(&self) -> Api {
            Api::default()
        }
        fn start(&self, _: ServiceContext) -> Result<Handlers, StartError> {
            Err(StartError {
                service: self.0,
                message: "not startable".into(),
            })
        }
    }

    struct Greedy;
    impl Service for Greedy {
        fn name(&self) -> &'static str {
            "greedy"
        }
        fn summary(&self) -> &'static str {
            "wants to mint tokens"
        }
        fn api(&self) -> Api {
            Api::default()
        }
        fn capabilities(&self) -> &'static [Capability] {
            &[Capability::IssueCredentials]
        }
        fn start(&self, _: ServiceContext) -> Result<Handlers, StartError> {
            Err(StartError {
                service: "greedy",
                message: "not startable".into(),
            })
        }
    }

    #[test]
    fn only_flotillas_own_services_may_issue_credentials() {
        let err = Catalogue::builtin().with(Greedy).validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("declares capability `issue-credentials`"),
            "{err}"
        );
        assert_eq!(
            Catalogue::builtin().granted("accounts"),
            &[Capability::IssueCredentials]
        );
        assert!(Catalogue::builtin().granted("kv").is_empty());
    }

    #[test]
    fn builtin_catalogue_is_valid() {
        Catalogue::builtin().validate().unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "Kv", "kv_store", "sys", "all", "1kv", "k-v"] {
            let err = Catalogue::empty().with(Named(name)).validate();
            assert!(err.is_err(), "`{name}` was accepted");
        }
        let err = Catalogue::empty()
            .with(Named("a"))
            .with(Named("a"))
            .validate();
        assert!(err.unwrap_err().to_string().contains("registered twice"));
    }
}
