//! A service's routes, each declared once: the path (or gRPC method), the
//! access it needs and the handler that serves it, in one call. The routing
//! table is made from the declarations and the service's router from the
//! handlers, so neither can have a route the other lacks.

use std::convert::Infallible;

use axum::{handler::Handler, routing::MethodFilter};

use super::Access;

/// One HTTP route, relative to `/api/<service>`.
#[derive(Clone, Debug)]
pub struct HttpRoute {
    pub method: http::Method,
    /// A path template in axum syntax, `""` for the service root, e.g.
    /// `/keys/{*key}`.
    pub path: &'static str,
    pub access: Access,
    /// What it takes and answers, for the OpenAPI document.
    pub doc: Doc,
}

/// What an HTTP route takes and answers, declared with it
/// ([`Routes::doc`]): the OpenAPI document is made from these. Each schema
/// is generated from the Rust type the handler reads or writes (schemars),
/// self-contained.
#[derive(Clone, Debug, Default)]
pub struct Doc {
    pub summary: Option<&'static str>,
    /// The JSON body it reads.
    pub body: Option<schemars::Schema>,
    /// Its query parameters, as one object schema (one parameter per
    /// property).
    pub query: Option<schemars::Schema>,
    /// Its answers other than errors: status, what it means, the JSON
    /// body.
    pub answers: Vec<(u16, &'static str, schemars::Schema)>,
}

/// `schema`'s description as one line: schemars keeps a doc comment's
/// wrapping, which reads badly in an editor's hover or an API browser.
pub fn one_line_description(schema: &mut schemars::Schema) {
    if let Some(serde_json::Value::String(text)) = schema.get_mut("description") {
        *text = text.replace('\n', " ");
    }
}

/// A self-contained schema of `T`: no references to resolve, and its doc
/// comments' descriptions as one line each.
pub fn schema_of<T: schemars::JsonSchema>() -> schemars::Schema {
    schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::RecursiveTransform(
            one_line_description,
        ))
        .into_generator()
        .into_root_schema_for::<T>()
}

impl Doc {
    pub fn summary(mut self, summary: &'static str) -> Doc {
        self.summary = Some(summary);
        self
    }

    /// It reads a `T` as its JSON body.
    pub fn body<T: schemars::JsonSchema>(mut self) -> Doc {
        self.body = Some(schema_of::<T>());
        self
    }

    /// It reads its query parameters as a `T`.
    pub fn query<T: schemars::JsonSchema>(mut self) -> Doc {
        self.query = Some(schema_of::<T>());
        self
    }

    /// It answers `status` with a `T`.
    pub fn answers<T: schemars::JsonSchema>(self, status: u16, meaning: &'static str) -> Doc {
        self.answers_with(status, meaning, schema_of::<T>())
    }

    /// It answers `status` with a body `schema` describes (for a body made
    /// in place, e.g. with `serde_json::json!`).
    pub fn answers_with(
        mut self,
        status: u16,
        meaning: &'static str,
        schema: schemars::Schema,
    ) -> Doc {
        self.answers.push((status, meaning, schema));
        self
    }
}

/// Whether a gRPC method may be sent again after its handler may have run
/// (a read, or a write whose repetition changes nothing): HTTP tells by the
/// method, gRPC methods say it. Envoy and proxyless gRPC clients retry such
/// a method when a node answers `UNAVAILABLE` (`protocol::RetryPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Idempotence {
    Idempotent,
    NotIdempotent,
}

/// One gRPC method.
#[derive(Clone, Debug)]
pub struct GrpcMethod {
    pub name: &'static str,
    pub access: Access,
    pub idempotence: Idempotence,
}

/// One gRPC service, named as in its proto (`package.Service`).
#[derive(Clone, Debug)]
pub struct GrpcService {
    pub name: &'static str,
    pub methods: Vec<GrpcMethod>,
}

/// What a service declares it serves.
#[derive(Clone, Debug, Default)]
pub struct Api {
    pub http: Vec<HttpRoute>,
    pub grpc: Vec<GrpcService>,
}

/// The handlers of a started service, as the ingress dispatches to them.
pub struct Handlers {
    /// HTTP routes, at the paths of [`Api::http`] (relative to
    /// `/api/<service>`).
    pub http: axum::Router,
    /// gRPC services, at their full paths (`/package.Service/Method`).
    pub grpc: axum::Router,
}

type MakeGrpc<S> = Box<dyn FnOnce(S) -> axum::Router + Send>;

/// A service's routes over the state `S` its `start` makes: each added with
/// the access it needs and its handler.
///
/// ```
/// use flotilla::service::{Access, Routes};
/// async fn hello() -> &'static str { "hello" }
/// let routes: Routes<()> = Routes::new().get("/hello", Access::Public, hello);
/// assert_eq!(routes.api().http.len(), 1);
/// ```
pub struct Routes<S> {
    api: Api,
    router: axum::Router<S>,
    grpc: Vec<MakeGrpc<S>>,
    /// The paths routed so far, to find conflicts before axum would panic.
    paths: matchit::Router<()>,
    /// What is wrong with the declarations; the catalogue refuses them.
    problems: Vec<String>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self::new()
    }
}

/// The method filter axum routes `method` with, for the methods a service
/// may route.
fn filter(method: &http::Method) -> Option<MethodFilter> {
    Some(match *method {
        http::Method::GET => MethodFilter::GET,
        http::Method::POST => MethodFilter::POST,
        http::Method::PUT => MethodFilter::PUT,
        http::Method::DELETE => MethodFilter::DELETE,
        http::Method::PATCH => MethodFilter::PATCH,
        http::Method::OPTIONS => MethodFilter::OPTIONS,
        _ => return None,
    })
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    pub fn new() -> Self {
        Routes {
            api: Api::default(),
            router: axum::Router::new(),
            grpc: Vec::new(),
            paths: matchit::Router::new(),
            problems: Vec::new(),
        }
    }

    /// Why `method path` cannot be routed, if it cannot.
    fn problem(&mut self, method: &http::Method, path: &str) -> Option<String> {
        if !(path.is_empty() || path.starts_with('/')) || path.ends_with('/') {
            return Some(format!(
                "route `{path}` must be empty or start with '/' and not end with '/'"
            ));
        }
        if filter(method).is_none() {
            return Some(format!("route `{path}`: method {method} is not routable"));
        }
        if let Some(segment) = path
            .split('/')
            .find(|s| s.starts_with(':') || s.starts_with('*'))
        {
            return Some(format!(
                "route `{path}`: segment `{segment}` is not a capture; write `{{name}}` or `{{*rest}}`"
            ));
        }
        if self
            .api
            .http
            .iter()
            .any(|r| r.path == path && r.method == *method)
        {
            return Some(format!("route {method} `{path}` is declared twice"));
        }
        if !self.api.http.iter().any(|r| r.path == path) {
            let at = if path.is_empty() { "/" } else { path };
            if let Err(e) = self.paths.insert(at, ()) {
                return Some(format!("route `{path}`: {e}"));
            }
        }
        None
    }

    /// `method path`, under `/api/<service>` (`""` for the root), needing
    /// `access`, served by `handler`.
    pub fn route<H, T>(
        mut self,
        method: http::Method,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self
    where
        H: Handler<T, S>,
        T: 'static,
    {
        if let Some(problem) = self.problem(&method, path) {
            self.problems.push(problem);
            return self;
        }
        let (at, on) = (
            if path.is_empty() { "/" } else { path },
            filter(&method).expect("checked by `problem`"),
        );
        self.router = self.router.route(at, axum::routing::on(on, handler));
        self.api.http.push(HttpRoute {
            method,
            path,
            access,
            doc: Doc::default(),
        });
        self
    }

    /// Describes the route declared last: what it takes and answers, for
    /// the OpenAPI document.
    ///
    /// ```
    /// use flotilla::service::{Access, Routes};
    /// #[derive(serde::Serialize, schemars::JsonSchema)]
    /// struct Hello { greeting: String }
    /// async fn hello() -> axum::Json<Hello> { axum::Json(Hello { greeting: "hi".into() }) }
    /// let routes: Routes<()> = Routes::new()
    ///     .get("/hello", Access::Public, hello)
    ///     .doc(|d| d.summary("Says hello").answers::<Hello>(200, "the greeting"));
    /// assert_eq!(routes.api().http[0].doc.answers.len(), 1);
    /// ```
    pub fn doc(mut self, describe: impl FnOnce(Doc) -> Doc) -> Self {
        match self.api.http.last_mut() {
            Some(route) => route.doc = describe(std::mem::take(&mut route.doc)),
            None => self.problems.push(
                "`doc` describes the HTTP route declared before it, and there is none".into(),
            ),
        }
        self
    }

    pub fn get<H: Handler<T, S>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        self.route(http::Method::GET, path, access, handler)
    }

    pub fn post<H: Handler<T, S>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        self.route(http::Method::POST, path, access, handler)
    }

    pub fn put<H: Handler<T, S>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        self.route(http::Method::PUT, path, access, handler)
    }

    pub fn delete<H: Handler<T, S>, T: 'static>(
        self,
        path: &'static str,
        access: Access,
        handler: H,
    ) -> Self {
        self.route(http::Method::DELETE, path, access, handler)
    }

    /// A tonic-generated gRPC service, made from the state by `make`, with
    /// the access each of its methods needs and whether it is idempotent.
    /// Every method of the service's proto must be listed (the catalogue
    /// checks flotilla's own protos).
    pub fn grpc<G>(
        mut self,
        methods: &[(&'static str, Access, Idempotence)],
        make: impl FnOnce(S) -> G + Send + 'static,
    ) -> Self
    where
        G: tonic::server::NamedService
            + tower::Service<http::Request<axum::body::Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        G::Response: axum::response::IntoResponse,
        G::Future: Send + 'static,
    {
        if self.api.grpc.iter().any(|g| g.name == G::NAME) {
            self.problems
                .push(format!("gRPC service `{}` is declared twice", G::NAME));
            return self;
        }
        self.api.grpc.push(GrpcService {
            name: G::NAME,
            methods: methods
                .iter()
                .map(|(name, access, idempotence)| GrpcMethod {
                    name,
                    access: *access,
                    idempotence: *idempotence,
                })
                .collect(),
        });
        self.grpc.push(Box::new(move |state| {
            crate::protocol::grpc_router(make(state))
        }));
        self
    }

    /// What these routes declare.
    pub fn api(&self) -> &Api {
        &self.api
    }

    /// What is wrong with the declarations (empty when nothing is).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }

    /// The handlers over `state`.
    pub(crate) fn handlers(self, state: S) -> Handlers {
        let grpc = self
            .grpc
            .into_iter()
            .fold(axum::Router::new(), |router, make| {
                router.merge(make(state.clone()))
            });
        Handlers {
            http: self.router.with_state(state),
            grpc,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn ok() -> &'static str {
        "ok"
    }

    #[test]
    fn every_route_is_declared_with_its_handler_and_conflicts_are_named() {
        let routes: Routes<()> = Routes::new()
            .get("", Access::Public, ok)
            .post("", Access::Public, ok)
            .get("/keys/{*key}", Access::Permission("kv.read"), ok)
            .get("/keys/{*key}", Access::Public, ok)
            .get("/keys/{other}", Access::Public, ok)
            .get("trailing/", Access::Public, ok)
            .get("/old/:style", Access::Public, ok)
            .route(http::Method::TRACE, "/t", Access::Public, ok);
        let declared: Vec<_> = routes
            .api()
            .http
            .iter()
            .map(|r| (r.method.as_str(), r.path))
            .collect();
        assert_eq!(
            declared,
            [("GET", ""), ("POST", ""), ("GET", "/keys/{*key}")]
        );
        let problems = routes.problems().join("\n");
        for expected in [
            "GET `/keys/{*key}` is declared twice",
            "route `/keys/{other}`",
            "must be empty or start with '/'",
            "segment `:style` is not a capture",
            "method TRACE is not routable",
        ] {
            assert!(problems.contains(expected), "{expected} in:\n{problems}");
        }
        // The router serves exactly what is declared (this would panic in
        // axum for the refused ones).
        let _ = routes.handlers(());
    }
}
