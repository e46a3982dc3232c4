//! The OpenAPI document at `/api/openapi.json`: every HTTP route of the
//! routing table and nothing else, valid for openapi-spec-validator, and
//! describing what the routes really answer.

use std::{collections::BTreeSet, path::Path, process::Command};

use flotilla::catalogue::{Catalogue, routing::Protocol};
use serde_json::Value;

use crate::support::{Node, NodeConfig, http, openapi_python, openapi_validator};

/// Checks `instance` against the schema the document gives for `method
/// path`'s `status` answer, with Python's jsonschema: `ok` or why not.
fn conforms(document: &Path, path: &str, method: &str, status: u16, instance: &Value) -> String {
    let script = r#"
import json, sys, jsonschema
doc = json.load(open(sys.argv[1]))
answer = doc["paths"][sys.argv[2]][sys.argv[3]]["responses"][sys.argv[4]]
schema = answer["content"]["application/json"]["schema"]
errors = list(jsonschema.Draft202012Validator(schema).iter_errors(json.loads(sys.argv[5])))
print("ok" if not errors else errors[0].message)
"#;
    let out = Command::new(openapi_python())
        .args(["-c", script])
        .arg(document)
        .args([path, method, &status.to_string(), &instance.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn the_document_has_every_http_route_validates_and_describes_real_answers() {
    let node = Node::start(NodeConfig::default());
    let r = http()
        .get(node.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");

    // Every HTTP route of the table, and nothing else.
    let services = Catalogue::builtin().check().unwrap();
    let table: BTreeSet<(String, String)> = services
        .table()
        .routes()
        .iter()
        .filter(|r| r.protocol == Protocol::Http)
        .map(|r| {
            (
                r.method.as_str().to_lowercase(),
                r.template.replace("{*", "{"),
            )
        })
        .collect();
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    assert_eq!(documented, table);
    for (method, path) in &documented {
        let op = &doc["paths"][path][method];
        let public = op["security"] == serde_json::json!([]);
        let permission = op["x-flotilla-permission"].as_str();
        assert!(public != permission.is_some(), "{method} {path}: {op}");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["securitySchemes"]["apiKey"].is_object());

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();
    let out = Command::new(openapi_validator())
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // What the routes answer matches what the document says they answer.
    let echo: Value = http()
        .get(node.url("/api/echo?message=hi"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(conforms(&file, "/api/echo", "get", 200, &echo), "ok");
    node.create_admin();
    let tokens = node
        .login(crate::support::ADMIN, crate::support::ADMIN_PASSWORD)
        .await;
    assert_eq!(
        conforms(&file, "/api/accounts/login", "post", 200, &tokens),
        "ok"
    );
    let wrong = serde_json::json!({"message": 7});
    assert_ne!(conforms(&file, "/api/echo", "get", 200, &wrong), "ok");
}
