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

use std::{fmt, sync::Arc};

use crate::store::{Migration, Namespace};

/// Namespaces that belong to flotilla itself; no service may take these
/// names.
pub const RESERVED_NAMESPACES: &[&str] = &[
    "sys", "raft", "registry", "auth", "sqlite", "all", "db", "xds",
];

/// What a caller needs to reach a route. Enforced by the auth layer; a
/// route that declares nothing does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials. Listed by `check-config`.
    Public,
    /// An authenticated caller holding this permission.
    Permission(&'static str),
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Permission(p) => write!(f, "permission {p}"),
        }
    }
}

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

/// What a service gets when it starts: its identity on this node, its
/// namespace of the store (never the connection) and the node's auth
/// (to issue credentials; checking them is the ingress's job).
#[derive(Clone)]
pub struct ServiceContext {
    pub node_id: Arc<str>,
    pub store: Namespace,
    pub auth: Arc<crate::auth::Auth>,
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
    /// Builds its handlers. Called once, after its migrations ran.
    fn start(&self, ctx: ServiceContext) -> Result<Handlers, StartError>;
}

/// Mounts a tonic-generated gRPC server at `/<package>.<Service>/*`.
pub fn grpc_router<S>(server: S) -> axum::Router
where
    S: tonic::server::NamedService
        + tower::Service<http::Request<axum::body::Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    axum::Router::new().route_service(&format!("/{}/{{*method}}", S::NAME), server)
}

/// The services this binary can run.
#[derive(Clone)]
pub struct Catalogue {
    services: Vec<Arc<dyn Service>>,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid service catalogue: {0}")]
pub struct CatalogueError(String);

impl Catalogue {
    /// The services shipped with flotilla.
    pub fn builtin() -> Catalogue {
        Catalogue::empty()
            .with(crate::services::accounts::Accounts)
            .with(crate::services::echo::Echo)
            .with(crate::services::kv::Kv)
    }

    pub fn empty() -> Catalogue {
        Catalogue {
            services: Vec::new(),
        }
    }

    /// Adds a service (the one registration line of a new service).
    pub fn with(mut self, service: impl Service) -> Catalogue {
        self.services.push(Arc::new(service));
        self
    }

    /// Checks the declarations: names, uniqueness, migrations and routes.
    /// A failure is a programming error in a service, reported at start-up.
    pub fn validate(&self) -> Result<(), CatalogueError> {
        let mut grpc_names = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
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
            if self.services[..i].iter().any(|o| o.name() == name) {
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
        self.services.iter().map(|s| s.name())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Service>> {
        self.services.iter().find(|s| s.name() == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Service>> {
        self.services.iter()
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
