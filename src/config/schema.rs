//! The JSON Schema of a config (`flotilla config schema`), generated from
//! the serde types that read it (`raw`), so the two cannot disagree on a
//! key. Editors use it through the yaml-language-server modeline the
//! committed configs carry (`config/schema.json`, which CI keeps equal to
//! this output).
//!
//! The schema says what YAML shapes are read; what `Config::parse` checks
//! beyond them (ranges, a node id's letters, files that must exist) it
//! leaves to `check-config`.

use schemars::{
    Schema, SchemaGenerator, json_schema,
    transform::{Transform, transform_subschemas},
};

/// A value that is exactly one `${VAR}`: it takes the variable's type
/// (`config::interpolate`), so a number or a flag may be written so.
const VARIABLE: &str = r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$";

/// What an editor needs beyond the types: every number and flag may also
/// be a `${VAR}` string, and descriptions read as one paragraph (doc
/// comments are wrapped).
#[derive(Clone)]
struct ForEditors;

impl Transform for ForEditors {
    fn transform(&mut self, schema: &mut Schema) {
        // Below first: the alternative added here is not visited again.
        transform_subschemas(self, schema);
        crate::catalogue::routes::one_line_description(schema);
        let typed =
            |t: &serde_json::Value| matches!(t.as_str(), Some("integer" | "number" | "boolean"));
        let takes_variable = match schema.get("type") {
            Some(serde_json::Value::Array(types)) => types.iter().any(typed),
            Some(t) => typed(t),
            None => false,
        };
        if !takes_variable {
            return;
        }
        let Some(object) = schema.as_object_mut() else {
            return;
        };
        let description = object.remove("description");
        let default = object.remove("default");
        let original = serde_json::Value::Object(std::mem::take(object));
        object.insert(
            "anyOf".into(),
            serde_json::json!([
                original,
                {
                    "type": "string",
                    "pattern": VARIABLE,
                    "description": "an environment variable, ${VAR}, whose value has this type"
                }
            ]),
        );
        if let Some(d) = description {
            object.insert("description".into(), d);
        }
        if let Some(d) = default {
            object.insert("default".into(), d);
        }
    }
}

/// `cluster.tls`, which `cluster::parse_peer_tls` reads by hand.
pub(super) fn peer_tls(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "description": "TLS between nodes: `off`, or settings (each optional); absent: mutual TLS with the CA derived from cluster.secret",
        "anyOf": [
            {"const": "off"},
            {"const": false},
            {"type": "null"},
            {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "ca_dir": {"type": "string", "description": "A directory with the CA's ca.crt and ca.key (db members only), in place of the derived CA"},
                    "domain": {"type": "string", "description": "The trust domain in the nodes' certificates (default flotilla.local)"},
                    "certificate_lifetime_seconds": {
                        "anyOf": [
                            {"type": "integer", "minimum": 5, "maximum": 2592000},
                            {"type": "string", "pattern": VARIABLE}
                        ],
                        "description": "Lifetime of a node's certificate, renewed at two thirds (default 86400)"
                    }
                }
            }
        ]
    })
}

/// The schema of a config file, as JSON, ending with a newline.
pub fn json() -> String {
    let mut schema = schemars::generate::SchemaSettings::draft2020_12()
        .with_transform(ForEditors)
        .into_generator()
        .into_root_schema_for::<super::raw::RawConfig>();
    if let Some(object) = schema.as_object_mut() {
        object.insert("title".into(), "flotilla node config".into());
        // Optional in the serde types so that `Config::parse` can name each
        // one missing; required all the same.
        object.insert(
            "required".into(),
            serde_json::json!(["node", "services", "data_dir", "auth"]),
        );
        object.insert(
            "description".into(),
            "A flotilla node's config: what `flotilla serve --config FILE` reads. `flotilla check-config --config FILE` checks what the schema cannot (ranges, ids, files).".into(),
        );
    }
    let mut text = serde_json::to_string_pretty(&schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> serde_json::Value {
        serde_json::from_str(&json()).expect("the schema is JSON")
    }

    #[test]
    fn every_section_is_described_and_unknown_keys_are_refused() {
        let schema = schema();
        let properties = schema["properties"].as_object().expect("properties");
        let mut keys: Vec<&str> = properties.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut sections = super::super::raw::SECTIONS.to_vec();
        sections.sort_unstable();
        assert_eq!(keys, sections);
        for (key, property) in properties {
            assert!(
                property.get("description").is_some(),
                "{key} has no description"
            );
        }
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(
            schema["required"],
            serde_json::json!(["node", "services", "data_dir", "auth"])
        );
        assert!(!json().contains("\\n"), "descriptions are one line each");
    }

    #[test]
    fn numbers_and_flags_may_be_variables() {
        let text = json();
        let schema = schema();
        let heartbeat = &schema["$defs"]["RawCluster"]["properties"]["heartbeat_ms"];
        let alternatives = heartbeat["anyOf"].as_array().expect("anyOf");
        assert_eq!(alternatives[1]["pattern"], VARIABLE, "{heartbeat}");
        assert!(heartbeat.get("description").is_some(), "{heartbeat}");
        // Strings are left as they are.
        let data_dir = &schema["properties"]["data_dir"];
        assert!(data_dir.get("anyOf").is_none(), "{data_dir}");
        assert!(text.ends_with("}\n"));
    }
}
