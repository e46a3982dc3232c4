//! The config's JSON Schema (`flotilla config schema`): the committed copy
//! is what the binary prints, every committed node config points its
//! editor at it, and a real JSON Schema validator (Python's `jsonschema`)
//! accepts every committed config and refuses what the binary refuses.
//! And the shell's comfort: completion scripts for bash, zsh and fish.

use std::path::{Path, PathBuf};

use crate::support::{BINARY, checkout, openapi_python, run_cli};

/// Every committed node config (the topologies are another format).
fn committed_configs() -> Vec<PathBuf> {
    let mut configs = Vec::new();
    for dir in ["config", "config/ha", "config/scaled", "examples/systemd"] {
        for entry in std::fs::read_dir(checkout().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml")
                && path.file_name().is_some_and(|n| n != "topology.yaml")
            {
                configs.push(path);
            }
        }
    }
    configs.sort();
    assert!(configs.len() >= 15, "{configs:?}");
    configs
}

#[test]
fn the_committed_schema_is_what_the_binary_prints() {
    let (code, printed, err) = run_cli(Path::new(BINARY), &["config", "schema"]);
    assert_eq!(code, 0, "{err}");
    let committed = std::fs::read_to_string(checkout().join("config/schema.json")).unwrap();
    assert!(
        printed == committed,
        "config/schema.json is not what `flotilla config schema` prints: the config's types changed; run `cargo run -- config schema > config/schema.json` and commit it"
    );
}

#[test]
fn every_committed_config_points_its_editor_at_the_schema() {
    for config in committed_configs() {
        let text = std::fs::read_to_string(&config).unwrap();
        let first = text.lines().next().unwrap_or_default();
        let target = first
            .strip_prefix("# yaml-language-server: $schema=")
            .unwrap_or_else(|| {
                panic!(
                    "{}: first line is not the modeline: {first}",
                    config.display()
                )
            });
        let schema = config.parent().unwrap().join(target);
        assert_eq!(
            std::fs::canonicalize(&schema).unwrap(),
            std::fs::canonicalize(checkout().join("config/schema.json")).unwrap(),
            "{}",
            config.display()
        );
    }
}

/// Validates each document against the schema with Python's `jsonschema`
/// (installed with openapi-spec-validator by the test tools): for each,
/// `ok` or the validator's complaint.
fn validate(documents: &[(&str, String)]) -> Vec<String> {
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)
for text in json.load(sys.stdin):
    errors = sorted(validator.iter_errors(yaml.safe_load(text)), key=str)
    print(json.dumps("ok" if not errors else errors[0].message))
"#;
    let texts: Vec<&String> = documents.iter().map(|(_, t)| t).collect();
    let mut child = std::process::Command::new(openapi_python())
        .args(["-c", script])
        .arg(checkout().join("config/schema.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &texts).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<String>(l).unwrap())
        .collect()
}

#[test]
fn a_json_schema_validator_takes_the_committed_configs_and_refuses_what_flotilla_refuses() {
    let mut documents: Vec<(&str, String)> = Vec::new();
    let configs = committed_configs();
    for config in &configs {
        documents.push((
            config.to_str().unwrap(),
            std::fs::read_to_string(config).unwrap(),
        ));
    }
    let base = std::fs::read_to_string(checkout().join("config/single.yaml")).unwrap();
    let variable = base.replace(
        "request_timeout_ms: 10000",
        "request_timeout_ms: ${TIMEOUT}",
    );
    assert_ne!(variable, base);
    documents.push(("a number as ${VAR}", variable));
    let unknown = format!("{base}\nlisteners_typo: {{public: 127.0.0.1:1}}\n");
    documents.push(("an unknown key", unknown.clone()));
    let wrong_type = base.replace("request_timeout_ms: 10000", "request_timeout_ms: soon");
    documents.push(("a word for a number", wrong_type.clone()));
    let verdicts = validate(&documents);
    assert_eq!(verdicts.len(), documents.len());
    for ((what, _), verdict) in documents.iter().zip(&verdicts).take(configs.len() + 1) {
        assert_eq!(verdict, "ok", "{what}");
    }
    let refused = &verdicts[configs.len() + 1..];
    assert!(refused[0].contains("listeners_typo"), "{refused:?}");
    assert!(refused[1].contains("soon"), "{refused:?}");
    // flotilla refuses the same two (exit 64), naming the field.
    for (text, field) in [
        (unknown, "listeners_typo"),
        (wrong_type, "request_timeout_ms"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = run_cli(
            Path::new(BINARY),
            &["check-config", "--config", path.to_str().unwrap()],
        );
        assert_eq!(code, 64, "{err}");
        assert!(err.contains(field), "{field} in {err}");
    }
}

#[test]
fn completion_scripts_for_bash_zsh_and_fish_name_the_commands() {
    for (shell, marker) in [
        ("bash", "_flotilla()"),
        ("zsh", "#compdef flotilla"),
        ("fish", "complete -c flotilla"),
    ] {
        let (code, out, err) = run_cli(Path::new(BINARY), &["completions", shell]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(out.contains(marker), "{shell}: {marker} in {out}");
        for command in [
            "serve",
            "check-config",
            "gen-envoy",
            "cluster",
            "completions",
        ] {
            assert!(out.contains(command), "{shell}: {command}");
        }
    }
    let (code, _, err) = run_cli(Path::new(BINARY), &["completions", "tcsh"]);
    assert_eq!(code, 64, "{err}");
}
