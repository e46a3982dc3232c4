//! The service catalogue: every service compiled into the binary, with what
//! it declares about itself.
//!
//! A service declares its name, its routes (each with the access it needs
//! and the handler that serves it, in one call: `routes`), its migrations
//! and its capabilities. The catalogue is checked once, when the binary
//! starts ([`Catalogue::check`]), and the routing table built then: the
//! ingress, `check-config`, the xDS resources and `gen-envoy` all use that
//! one table; nothing else lists routes.
//!
//! Adding a service: implement [`Service`] and add one line to
//! [`Catalogue::builtin`] (or build your own catalogue, as
//! `examples/greeter.rs` does).

pub mod api_error;
pub mod openapi;
pub mod routes;
pub mod routing;

pub use routes::{
    Api, Doc, GrpcMethod, GrpcService, Handlers, HttpRoute, Idempotence, Routes, schema_of,
};

use std::sync::Arc;

pub use crate::auth::authz::Access;
use crate::{
    auth::Auth,
    store::{Budget, Migration, Namespace, Store},
};
use routing::RoutingTable;

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

#[derive(Debug, thiserror::Error)]
#[error("service `{service}` failed to start: {message}")]
pub struct StartError {
    pub service: &'static str,
    pub message: String,
}

/// A service compiled into the binary.
pub trait Service: Send + Sync + 'static {
    /// What `start` makes and every handler is given (axum's `State`).
    type State: Clone + Send + Sync + 'static;
    /// The service's name: its namespace, its `/api/<name>` prefix and its
    /// name in configs. Lowercase letters and digits only.
    fn name(&self) -> &'static str;
    /// One line for `check-config` and the docs.
    fn summary(&self) -> &'static str;
    /// Its routes and gRPC services, each with the access it needs and
    /// what serves it.
    fn routes(&self) -> Routes<Self::State>;
    /// Schema history of its namespace, applied before it starts.
    fn migrations(&self) -> &'static [Migration] {
        &[]
    }
    /// What it may do beyond its own namespace (most services: nothing).
    fn capabilities(&self) -> &'static [Capability] {
        &[]
    }
    /// Makes the state its handlers share. Called once, after its
    /// migrations ran.
    fn start(&self, ctx: ServiceContext) -> Result<Self::State, StartError>;
}

/// A [`Service`] as the catalogue keeps it, whatever its state's type.
pub trait Registered: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn summary(&self) -> &'static str;
    fn migrations(&self) -> &'static [Migration];
    fn capabilities(&self) -> &'static [Capability];
    /// What its routes declare, and what is wrong with them.
    fn declarations(&self) -> (Api, Vec<String>);
    /// Starts it, and serves its routes over the state it made.
    fn start_handlers(&self, ctx: ServiceContext) -> Result<Handlers, StartError>;
}

impl<T: Service> Registered for T {
    fn name(&self) -> &'static str {
        Service::name(self)
    }
    fn summary(&self) -> &'static str {
        Service::summary(self)
    }
    fn migrations(&self) -> &'static [Migration] {
        Service::migrations(self)
    }
    fn capabilities(&self) -> &'static [Capability] {
        Service::capabilities(self)
    }
    fn declarations(&self) -> (Api, Vec<String>) {
        let routes = self.routes();
        (routes.api().clone(), routes.problems().to_vec())
    }
    fn start_handlers(&self, ctx: ServiceContext) -> Result<Handlers, StartError> {
        let state = self.start(ctx)?;
        Ok(self.routes().handlers(state))
    }
}

pub use crate::protocol::grpc_router;

/// One service of the catalogue, and whether it is one of flotilla's own
/// (only those may hold reserved capabilities).
#[derive(Clone)]
struct Entry {
    service: Arc<dyn Registered>,
    own: bool,
}

/// The services a binary is built with, as they are registered; checked
/// into [`Services`] once, when the binary starts.
#[derive(Clone)]
pub struct Catalogue {
    services: Vec<Entry>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid service catalogue: {0}")]
pub struct CatalogueError(String);

/// A checked catalogue and its routing table, built once.
#[derive(Clone)]
pub struct Services {
    catalogue: Catalogue,
    table: Arc<RoutingTable>,
}

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

    /// Checks the declarations (names, uniqueness, capabilities,
    /// migrations, routes, gRPC methods against flotilla's own protos) and
    /// builds the routing table. A failure is a programming error in a
    /// service, reported at start-up with what is wrong.
    pub fn check(self) -> Result<Services, CatalogueError> {
        let protos = prost_reflect::DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .map_err(|e| CatalogueError(format!("flotilla's own protos do not decode: {e}")))?;
        let mut grpc_names = Vec::new();
        let mut apis = Vec::new();
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
            let (api, problems) = s.declarations();
            if let Some(problem) = problems.first() {
                return Err(CatalogueError(format!("service `{name}`: {problem}")));
            }
            for g in &api.grpc {
                if grpc_names.contains(&g.name) {
                    return Err(CatalogueError(format!(
                        "gRPC service `{}` is declared twice",
                        g.name
                    )));
                }
                grpc_names.push(g.name);
                if let Some(proto) = protos.get_service_by_name(g.name) {
                    for m in proto.methods() {
                        if !g.methods.iter().any(|d| d.name == m.name()) {
                            return Err(CatalogueError(format!(
                                "service `{name}`: gRPC method `{}/{}` is served but not declared with the access it needs",
                                g.name,
                                m.name()
                            )));
                        }
                    }
                    for d in &g.methods {
                        if !proto.methods().any(|m| m.name() == d.name) {
                            return Err(CatalogueError(format!(
                                "service `{name}`: gRPC method `{}/{}` is declared but `{}` has no such method",
                                g.name, d.name, g.name
                            )));
                        }
                    }
                }
            }
            apis.push((name, api));
        }
        let table = RoutingTable::build(&apis).map_err(CatalogueError)?;
        Ok(Services {
            catalogue: self,
            table: Arc::new(table),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.services.iter().map(|e| e.service.name())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Registered>> {
        self.iter().find(|s| s.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Registered>> {
        self.services.iter().map(|e| &e.service)
    }

    /// The capabilities the service named `name` declared and may hold (a
    /// checked catalogue holds no other).
    pub(crate) fn granted(&self, name: &str) -> &'static [Capability] {
        self.services
            .iter()
            .find(|e| e.service.name() == name && e.own)
            .map_or(&[], |e| e.service.capabilities())
    }
}

impl Services {
    /// The routing table, built when the catalogue was checked.
    pub fn table(&self) -> &Arc<RoutingTable> {
        &self.table
    }
}

impl std::ops::Deref for Services {
    type Target = Catalogue;
    fn deref(&self) -> &Catalogue {
        &self.catalogue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Named(&'static str);
    impl Service for Named {
        type State = ();
        fn name(&self) -> &'static str {
            self.0
        }
        fn summary(&self) -> &'static str {
            "test"
        }
        fn routes(&self) -> Routes<()> {
            Routes::new()
        }
        fn start(&self, _: ServiceContext) -> Result<(), StartError> {
            Err(StartError {
                service: self.0,
                message: "not startable".into(),
            })
        }
    }

    struct Greedy;
    impl Service for Greedy {
        type State = ();
        fn name(&self) -> &'static str {
            "greedy"
        }
        fn summary(&self) -> &'static str {
            "wants to mint tokens"
        }
        fn routes(&self) -> Routes<()> {
            Routes::new()
        }
        fn capabilities(&self) -> &'static [Capability] {
            &[Capability::IssueCredentials]
        }
        fn start(&self, _: ServiceContext) -> Result<(), StartError> {
            Err(StartError {
                service: "greedy",
                message: "not startable".into(),
            })
        }
    }

    /// Routes that conflict, and a gRPC service that declares less than
    /// its proto has.
    struct Careless;
    impl Service for Careless {
        type State = ();
        fn name(&self) -> &'static str {
            "careless"
        }
        fn summary(&self) -> &'static str {
            "declares badly"
        }
        fn routes(&self) -> Routes<()> {
            async fn ok() {}
            Routes::new()
                .get("/a/{x}", Access::Public, ok)
                .get("/a/{y}", Access::Public, ok)
        }
        fn start(&self, _: ServiceContext) -> Result<(), StartError> {
            Ok(())
        }
    }

    #[test]
    fn only_flotillas_own_services_may_issue_credentials() {
        let err = Catalogue::builtin().with(Greedy).check().err().unwrap();
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
        let services = Catalogue::builtin().check().unwrap();
        assert!(!services.table().routes().is_empty());
    }

    #[test]
    fn conflicting_routes_are_refused_with_the_conflict_named() {
        let err = Catalogue::builtin().with(Careless).check().err().unwrap();
        let message = err.to_string();
        assert!(
            message.contains("service `careless`") && message.contains("/a/{y}"),
            "{message}"
        );
    }

    #[test]
    fn bad_names_are_refused() {
        for name in ["", "Kv", "kv_store", "sys", "all", "1kv", "k-v"] {
            let err = Catalogue::empty().with(Named(name)).check();
            assert!(err.is_err(), "`{name}` was accepted");
        }
        let err = Catalogue::empty()
            .with(Named("a"))
            .with(Named("a"))
            .check()
            .err()
            .unwrap();
        assert!(err.to_string().contains("registered twice"));
    }
}
