//! Adding your own service to flotilla.
//!
//! A service is one type implementing `flotilla::service::Service` (the
//! whole API a service sees is in `flotilla::service`); it is
//! added with one registration line (`.with(Greeter)` in `main`). Routing,
//! its private table namespace, migrations, readiness and metrics follow
//! from its declarations.
//!
//! ```text
//! cargo run --example greeter -- serve --config config/greeter.yaml
//! curl -X POST localhost:8080/api/greeter/hello/ada
//! ```

use axum::{
    Json,
    extract::{Path, State},
    http::StatusCode,
};
use flotilla::{
    catalogue::Catalogue,
    service::{
        Access, ApiError, Migration, Namespace, Routes, Service, ServiceContext, StartError,
        Statement, StoreError,
    },
};
use serde_json::json;

struct Greeter;

impl Service for Greeter {
    type State = Namespace;

    fn name(&self) -> &'static str {
        "greeter"
    }

    fn summary(&self) -> &'static str {
        "greets people and counts how often it greeted each"
    }

    /// Each route once: its path, the access it needs and its handler.
    fn routes(&self) -> Routes<Namespace> {
        Routes::new()
            .post("/hello/{name}", Access::Public, hello)
            .doc(|d| d.summary("Greet someone, counting how often they were greeted"))
            .get("/peek-at-kv", Access::Public, peek_at_kv)
    }

    fn migrations(&self) -> &'static [Migration] {
        // Tables live in the service's namespace: `greeter__*`.
        &[Migration {
            version: 1,
            name: "greetings",
            sql: "CREATE TABLE greeter__greetings (name TEXT PRIMARY KEY, times INTEGER NOT NULL) STRICT;",
        }]
    }

    /// The state every handler gets: here, the service's own namespace.
    fn start(&self, ctx: ServiceContext) -> Result<Namespace, StartError> {
        Ok(ctx.store)
    }
}

async fn hello(
    State(store): State<Namespace>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let out = store
        .write(vec![Statement::new(
            "INSERT INTO greeter__greetings (name, times) VALUES (?1, 1)
             ON CONFLICT (name) DO UPDATE SET times = times + 1 RETURNING times",
            vec![name.clone().into()],
        )])
        .await?;
    let times = out[0].rows[0][0].as_i64().unwrap_or_default();
    Ok(Json(
        json!({ "greeting": format!("hello, {name}"), "times_greeted": times }),
    ))
}

/// Tries to read another service's table: the store refuses, whatever SQL
/// is sent.
async fn peek_at_kv(State(store): State<Namespace>) -> Result<Json<serde_json::Value>, ApiError> {
    match store
        .read(Statement::new("SELECT key, value FROM kv__items", vec![]))
        .await
    {
        Ok(out) => Ok(Json(json!({ "rows": out.rows.len() }))),
        Err(e @ StoreError::Denied { .. }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "denied",
            e.to_string(),
        )),
        Err(e) => Err(e.into()),
    }
}

fn main() -> std::process::ExitCode {
    flotilla::cli::main(Catalogue::builtin().with(Greeter))
}
