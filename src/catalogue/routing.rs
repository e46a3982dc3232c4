//! The routing table: every route of every service in the catalogue, built
//! once from the services' declarations.
//!
//! `/api/<service>/…` carries HTTP/JSON and `/<package>.<Service>/<Method>`
//! carries gRPC. The built-in ingress dispatches with this table, the
//! metrics label requests with its route templates, and the Envoy resources
//! (static and xDS) are derived from it. A path that is not in the table is
//! not served, whatever a service's router would accept.
//!
//! **Architecture Invariant:** the table knows nothing about nodes or
//! health; where a service runs is the registry's business.

use std::{collections::HashMap, sync::Arc};

use crate::{
    catalogue::{Access, Api, Idempotence},
    protocol::{RetryPolicy, RouteKind},
    telemetry::metrics::Label,
};

/// The prefix of every HTTP/JSON route.
pub const API_PREFIX: &str = "/api/";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

/// One route of the table.
#[derive(Clone, Debug)]
pub struct Route {
    pub service: &'static str,
    pub protocol: Protocol,
    /// HTTP method; gRPC routes are always POST.
    pub method: http::Method,
    /// The full path template, e.g. `/api/kv/keys/{*key}` or
    /// `/flotilla.kv.v1.Kv/Get`. Used as the metrics label.
    pub template: String,
    /// The template as a metrics label.
    pub label: Label,
    pub access: Access,
    /// How the retry policy treats it.
    pub kind: RouteKind,
    /// What an HTTP route takes and answers (`None` for gRPC, which
    /// reflection describes).
    pub doc: Option<super::Doc>,
}

/// What the table says about a request.
#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Arc<Route>),
    /// An HTTP path under `/api/<service>` that the service does not serve.
    NoSuchPath {
        service: &'static str,
    },
    /// The path exists, with other methods.
    MethodNotAllowed {
        service: &'static str,
        allowed: Vec<http::Method>,
    },
    /// `/api/<name>` or `/<package>.<Service>/…` for a service the catalogue
    /// does not have.
    NoSuchService,
    /// A method of a known gRPC service that it does not declare.
    NoSuchGrpcMethod {
        service: &'static str,
    },
}

struct ServiceHttp {
    paths: matchit::Router<Vec<usize>>,
}

pub struct RoutingTable {
    routes: Vec<Arc<Route>>,
    http: HashMap<&'static str, ServiceHttp>,
    grpc_methods: HashMap<String, usize>,
    grpc_services: HashMap<&'static str, &'static str>,
}

impl RoutingTable {
    /// The table of every service's declarations, in catalogue order.
    /// Called once, by `Catalogue::check`.
    pub(crate) fn build(apis: &[(&'static str, Api)]) -> Result<RoutingTable, String> {
        let mut table = RoutingTable {
            routes: Vec::new(),
            http: HashMap::new(),
            grpc_methods: HashMap::new(),
            grpc_services: HashMap::new(),
        };
        for (name, api) in apis {
            let name = *name;
            let mut paths = matchit::Router::new();
            let mut by_path: Vec<(String, Vec<usize>)> = Vec::new();
            for r in &api.http {
                let template = format!("{API_PREFIX}{name}{}", r.path);
                let index = table.routes.len();
                table.routes.push(Arc::new(Route {
                    service: name,
                    protocol: Protocol::Http,
                    method: r.method.clone(),
                    template: template.clone(),
                    label: Label::from(template.clone()),
                    access: r.access,
                    kind: RouteKind::of(false, RetryPolicy::idempotent_method(&r.method)),
                    doc: Some(r.doc.clone()),
                }));
                match by_path.iter_mut().find(|(t, _)| *t == template) {
                    Some((_, methods)) => methods.push(index),
                    None => by_path.push((template, vec![index])),
                }
            }
            for (template, indexes) in by_path {
                if indexes.iter().enumerate().any(|(i, a)| {
                    indexes[..i]
                        .iter()
                        .any(|b| table.routes[*a].method == table.routes[*b].method)
                }) {
                    return Err(format!(
                        "route {template} is declared twice with the same method"
                    ));
                }
                paths
                    .insert(template.clone(), indexes)
                    .map_err(|e| format!("route {template} of service `{name}`: {e}"))?;
            }
            table.http.insert(name, ServiceHttp { paths });
            for g in &api.grpc {
                table.grpc_services.insert(g.name, name);
                for m in &g.methods {
                    let template = format!("/{}/{}", g.name, m.name);
                    table
                        .grpc_methods
                        .insert(template.clone(), table.routes.len());
                    table.routes.push(Arc::new(Route {
                        service: name,
                        protocol: Protocol::Grpc,
                        method: http::Method::POST,
                        label: Label::from(template.clone()),
                        template,
                        access: m.access,
                        kind: RouteKind::of(true, m.idempotence == Idempotence::Idempotent),
                        doc: None,
                    }));
                }
            }
        }
        Ok(table)
    }

    /// Every route, in catalogue order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Every routed gRPC service (`package.Service`) with the service that
    /// serves it, by name.
    pub fn grpc_services(&self) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<_> = self.grpc_services.iter().map(|(g, s)| (*g, *s)).collect();
        all.sort_unstable();
        all
    }

    /// The gRPC service names (`package.Service`) of `service`.
    pub fn grpc_services_of<'a>(
        &'a self,
        service: &'a str,
    ) -> impl Iterator<Item = &'static str> + 'a {
        let mut names: Vec<_> = self
            .grpc_services
            .iter()
            .filter(move |(_, s)| **s == service)
            .map(|(g, _)| *g)
            .collect();
        names.sort_unstable();
        names.into_iter()
    }

    /// Finds the route of a request. `grpc` says whether the request is a
    /// gRPC call (by its content type).
    pub fn lookup(&self, method: &http::Method, path: &str, grpc: bool) -> Lookup<'_> {
        if grpc {
            return self.lookup_grpc(path);
        }
        let Some(rest) = path.strip_prefix(API_PREFIX) else {
            return Lookup::NoSuchService;
        };
        let service_name = rest.split('/').next().unwrap_or_default();
        let Some((&service, http)) = self.http.get_key_value(service_name) else {
            return Lookup::NoSuchService;
        };
        let Ok(found) = http.paths.at(path) else {
            return Lookup::NoSuchPath { service };
        };
        let routes = found.value;
        match routes.iter().find(|i| self.routes[**i].method == method) {
            Some(i) => Lookup::Found(&self.routes[*i]),
            None if method == http::Method::HEAD => routes
                .iter()
                .find(|i| self.routes[**i].method == http::Method::GET)
                .map(|i| Lookup::Found(&self.routes[*i]))
                .unwrap_or(Lookup::NoSuchPath { service }),
            None => Lookup::MethodNotAllowed {
                service,
                allowed: routes
                    .iter()
                    .map(|i| self.routes[*i].method.clone())
                    .collect(),
            },
        }
    }

    fn lookup_grpc(&self, path: &str) -> Lookup<'_> {
        if let Some(i) = self.grpc_methods.get(path) {
            return Lookup::Found(&self.routes[*i]);
        }
        let grpc_service = path
            .trim_start_matches('/')
            .split('/')
            .next()
            .unwrap_or_default();
        match self.grpc_services.get(grpc_service) {
            Some(service) => Lookup::NoSuchGrpcMethod { service },
            None => Lookup::NoSuchService,
        }
    }

    /// The service named by a path, known or not: `/api/<name>/…` gives
    /// `name`, `/<package>.<Service>/…` gives `package.Service`. For error
    /// messages.
    pub fn service_segment(path: &str) -> &str {
        match path.strip_prefix(API_PREFIX) {
            Some(rest) => rest.split('/').next().unwrap_or_default(),
            None => path
                .trim_start_matches('/')
                .split('/')
                .next()
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn table() -> std::sync::Arc<RoutingTable> {
        crate::catalogue::Catalogue::builtin()
            .check()
            .unwrap()
            .table()
            .clone()
    }

    #[test]
    fn http_routes_resolve_by_method_and_template() {
        let t = table();
        let Lookup::Found(r) = t.lookup(&Method::GET, "/api/kv/keys/a/b/c", false) else {
            panic!("not found");
        };
        assert_eq!(
            (r.service, r.template.as_str()),
            ("kv", "/api/kv/keys/{*key}")
        );
        assert!(matches!(
            t.lookup(&Method::PATCH, "/api/kv/keys/a", false),
            Lookup::MethodNotAllowed { service: "kv", .. }
        ));
        assert!(matches!(
            t.lookup(&Method::GET, "/api/kv/nothing", false),
            Lookup::NoSuchPath { service: "kv" }
        ));
        assert!(matches!(
            t.lookup(&Method::GET, "/api/nope/x", false),
            Lookup::NoSuchService
        ));
        assert!(matches!(
            t.lookup(&Method::GET, "/elsewhere", false),
            Lookup::NoSuchService
        ));
        assert!(matches!(
            t.lookup(&Method::HEAD, "/api/echo", false),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn grpc_routes_resolve_by_full_method() {
        let t = table();
        let Lookup::Found(r) = t.lookup(&Method::POST, "/flotilla.kv.v1.Kv/Get", true) else {
            panic!("not found");
        };
        assert_eq!(r.service, "kv");
        assert!(matches!(
            t.lookup(&Method::POST, "/flotilla.kv.v1.Kv/Nope", true),
            Lookup::NoSuchGrpcMethod { service: "kv" }
        ));
        assert!(matches!(
            t.lookup(&Method::POST, "/other.Svc/M", true),
            Lookup::NoSuchService
        ));
    }

    #[test]
    fn every_route_has_a_service_prefix() {
        for r in table().routes() {
            match r.protocol {
                Protocol::Http => assert!(r.template.starts_with(&format!("/api/{}", r.service))),
                Protocol::Grpc => assert!(r.template.starts_with("/flotilla.")),
            }
        }
    }

    #[test]
    fn service_segment_names_what_was_asked_for() {
        assert_eq!(RoutingTable::service_segment("/api/kv/keys/a"), "kv");
        assert_eq!(RoutingTable::service_segment("/pkg.Svc/M"), "pkg.Svc");
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Whether `path` fits `template`, segment by segment: a literal
        /// must be equal, `{name}` takes one non-empty segment, `{*rest}`
        /// the non-empty rest. Written apart from the table's matcher.
        fn fits(template: &str, path: &str) -> bool {
            let mut t = template.split('/');
            let mut p = path.split('/');
            loop {
                match (t.next(), p.next()) {
                    (None, None) => return true,
                    (Some(seg), Some(first)) if seg.starts_with("{*") => {
                        let rest: Vec<&str> = std::iter::once(first).chain(p).collect();
                        return !rest.join("/").is_empty();
                    }
                    (Some(seg), Some(part)) if seg.starts_with('{') => {
                        if part.is_empty() {
                            return false;
                        }
                    }
                    (Some(seg), Some(part)) if seg == part => {}
                    _ => return false,
                }
            }
        }

        /// Paths made of the table's own pieces and of strangers.
        fn path() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("api".to_owned()),
                Just("kv".to_owned()),
                Just("keys".to_owned()),
                Just("echo".to_owned()),
                Just("accounts".to_owned()),
                Just("users".to_owned()),
                Just("login".to_owned()),
                Just("me".to_owned()),
                Just("private".to_owned()),
                Just(String::new()),
                Just("..".to_owned()),
                Just("%2F".to_owned()),
                Just("{key}".to_owned()),
                "[a-z0-9._~-]{1,8}",
            ];
            proptest::collection::vec(piece, 0..7).prop_map(|p| format!("/{}", p.join("/")))
        }

        fn method() -> impl Strategy<Value = http::Method> {
            prop_oneof![
                Just(http::Method::GET),
                Just(http::Method::HEAD),
                Just(http::Method::POST),
                Just(http::Method::PUT),
                Just(http::Method::DELETE),
                Just(http::Method::PATCH),
            ]
        }

        proptest! {
            /// No path reaches a route it does not fit, of another service,
            /// or of another method (HEAD takes GET's).
            #[test]
            fn a_path_reaches_only_a_route_it_fits(path in path(), method in method()) {
                let t = table();
                if let Lookup::Found(route) = t.lookup(&method, &path, false) {
                    prop_assert!(fits(&route.template, &path), "{path} reached {}", route.template);
                    prop_assert_eq!(RoutingTable::service_segment(&path), route.service);
                    let expected = if method == http::Method::HEAD { http::Method::GET } else { method.clone() };
                    prop_assert!(route.method == method || route.method == expected);
                }
            }

            /// A gRPC call reaches exactly the method it names, or nothing.
            #[test]
            fn a_grpc_call_reaches_only_its_method(path in path()) {
                let t = table();
                if let Lookup::Found(route) = t.lookup(&http::Method::POST, &path, true) {
                    prop_assert_eq!(route.template.as_str(), path.as_str());
                }
            }
        }

        #[test]
        fn the_independent_matcher_agrees_on_known_cases() {
            assert!(fits("/api/kv/keys/{*key}", "/api/kv/keys/a/b"));
            assert!(!fits("/api/kv/keys/{*key}", "/api/kv/keys/"));
            assert!(fits("/api/accounts/users/{id}", "/api/accounts/users/x"));
            assert!(!fits("/api/accounts/users/{id}", "/api/accounts/users/x/y"));
            assert!(!fits("/api/echo", "/api/echo/"));
        }
    }
}
