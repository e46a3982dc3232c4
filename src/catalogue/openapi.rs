//! The OpenAPI 3.1 document of the HTTP API (`GET /api/openapi.json`),
//! made from the routing table: every HTTP route the services declare, with
//! the access it needs and what its declaration says it takes and answers
//! ([`super::Doc`]), and nothing else. gRPC is described by server
//! reflection instead.

use serde_json::{Map, Value, json};

use super::{Access, routing::Protocol, routing::RoutingTable};

/// Where the ingress serves the document.
pub const PATH: &str = "/api/openapi.json";

/// A path template as OpenAPI writes it: axum's `{*rest}` becomes `{rest}`
/// (a parameter that may hold `/`), with its parameters' names.
fn template(axum: &str) -> (String, Vec<(String, bool)>) {
    let mut params = Vec::new();
    let path = axum
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let (name, rest) = match name.strip_prefix('*') {
                        Some(name) => (name, true),
                        None => (name, false),
                    };
                    params.push((name.to_owned(), rest));
                    format!("{{{name}}}")
                }
                None => segment.to_owned(),
            },
        )
        .collect::<Vec<_>>()
        .join("/");
    (path, params)
}

/// The query parameters an object schema describes, one per property.
fn query_parameters(schema: &Value) -> Vec<Value> {
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema["properties"].as_object() else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, property)| {
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": property,
            });
            if let Some(description) = property.get("description") {
                parameter["description"] = description.clone();
            }
            parameter
        })
        .collect()
}

/// The operation id of `method template`: e.g. `kv_put_keys_key`.
fn operation_id(service: &str, method: &str, path: &str) -> String {
    let mut id = format!("{service}_{}", method.to_lowercase());
    let rest = path
        .strip_prefix(&format!("{}{service}", super::routing::API_PREFIX))
        .unwrap_or(path);
    for word in rest.split(|c: char| !c.is_ascii_alphanumeric()) {
        if !word.is_empty() {
            id.push('_');
            id.push_str(word);
        }
    }
    id
}

/// The document, for `version` of flotilla.
pub fn document(table: &RoutingTable, version: &str) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let mut services: Vec<&str> = Vec::new();
    for route in table.routes() {
        if route.protocol != Protocol::Http {
            continue;
        }
        let doc = route.doc.clone().unwrap_or_default();
        if !services.contains(&route.service) {
            services.push(route.service);
        }
        let (path, params) = template(&route.template);
        let mut parameters: Vec<Value> = params
            .iter()
            .map(|(name, rest)| {
                json!({
                    "name": name,
                    "in": "path",
                    "required": true,
                    "schema": {"type": "string"},
                    "description": if *rest { "the rest of the path; may contain '/'" } else { "one path segment" },
                })
            })
            .collect();
        if let Some(query) = &doc.query {
            parameters.extend(query_parameters(query.as_value()));
        }
        let mut responses = Map::new();
        for (status, meaning, schema) in &doc.answers {
            responses.insert(
                status.to_string(),
                json!({
                    "description": meaning,
                    "content": {"application/json": {"schema": schema}},
                }),
            );
        }
        responses.insert(
            "default".into(),
            json!({
                "description": "an error: 400 bad_request, 401 unauthenticated, 403 forbidden, 404 not_found, 409 conflict, 413, 415, 422 invalid_request, 429 too_many_requests (with Retry-After), 503 store_unavailable or unavailable, 504 outcome_unknown or timeout",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }),
        );
        let mut operation = json!({
            "operationId": operation_id(route.service, route.method.as_str(), &route.template),
            "tags": [route.service],
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(summary) = doc.summary {
            operation["summary"] = summary.into();
        }
        match route.access {
            Access::Public => {
                operation["security"] = json!([]);
                operation["description"] = "Public: no credentials needed.".into();
            }
            Access::Permission(p) => {
                operation["security"] = json!([{"bearer": []}, {"apiKey": []}]);
                operation["description"] =
                    format!("Needs the permission `{p}` (401 without credentials, 403 without the permission).").into();
                operation["x-flotilla-permission"] = p.into();
            }
        }
        if let Some(body) = &doc.body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body}},
            });
        }
        let item = paths.entry(path).or_insert_with(|| json!({}));
        item[route.method.as_str().to_lowercase()] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "flotilla",
            "version": version,
            "description": "The HTTP API of every service in the routing table, the same on every node: a node forwards what it does not run. gRPC is served on the same port; server reflection describes it.",
        },
        "tags": services.iter().map(|s| json!({"name": s})).collect::<Vec<_>>(),
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "An access token from POST /api/accounts/login (EdDSA JWT).",
                },
                "apiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`ApiKey <key>`, a key from POST /api/accounts/api-keys; its scopes narrow its owner's permissions.",
                },
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "description": "Every HTTP error of the public listener.",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "a stable code, e.g. not_found, forbidden, store_unavailable"},
                        "message": {"type": "string", "description": "what went wrong, for people"},
                    },
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_openapi_paths_with_their_parameters() {
        assert_eq!(
            template("/api/kv/keys/{*key}"),
            ("/api/kv/keys/{key}".into(), vec![("key".into(), true)])
        );
        assert_eq!(
            template("/api/accounts/users/{id}/roles"),
            (
                "/api/accounts/users/{id}/roles".into(),
                vec![("id".into(), false)]
            )
        );
        assert_eq!(template("/api/echo"), ("/api/echo".into(), vec![]));
        assert_eq!(
            operation_id("kv", "PUT", "/api/kv/keys/{*key}"),
            "kv_put_keys_key"
        );
        assert_eq!(operation_id("echo", "GET", "/api/echo"), "echo_get");
    }

    #[test]
    fn every_builtin_http_route_is_described_with_what_it_answers() {
        let services = super::super::Catalogue::builtin()
            .check()
            .expect("catalogue");
        let doc = document(services.table(), "test");
        let mut operations = 0;
        for route in services.table().routes() {
            if route.protocol != Protocol::Http {
                continue;
            }
            operations += 1;
            let (path, _) = template(&route.template);
            let op = &doc["paths"][&path][route.method.as_str().to_lowercase()];
            assert!(op.is_object(), "{} {path} is missing", route.method);
            let answers = op["responses"].as_object().expect("responses");
            assert!(
                answers.keys().any(|k| k.starts_with('2')),
                "{} {path} declares no answer",
                route.method
            );
            assert!(
                op.get("summary").is_some(),
                "{} {path} has no summary",
                route.method
            );
            let reads_body = matches!(route.method.as_str(), "POST" | "PUT" | "PATCH");
            let documented = route.doc.as_ref().is_some_and(|d| d.body.is_some());
            if reads_body && documented {
                assert!(op["requestBody"].is_object(), "{path}");
            }
        }
        let described: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert_eq!(described, operations);
    }
}
