//! `${VAR}` in a config's values: replaced by the environment variable
//! `VAR` before the config is read, so that one file serves every pod of a
//! Deployment (`node: {id: "${POD_NAME}"}`, `advertise: {public:
//! "${POD_IP}:8080"}`). An unset variable is a problem naming its field;
//! `$${` writes a literal `${`. A value that is exactly one `${VAR}` takes
//! the variable's type (`heartbeat_ms: ${HB}` is a number).
//!
//! Only values are interpolated, never keys, and each substitution is kept
//! (`Substitution`) so that `check-config` can show what the environment
//! gave, with secrets masked.

use serde_yaml_ng::Value;

use super::Problem;

/// One value the environment gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Substitution {
    /// Where, e.g. `advertise.public`.
    pub field: String,
    /// As written, e.g. `${POD_IP}:8080`.
    pub written: String,
    /// After interpolation; `None` for a secret, which is never shown.
    pub value: Option<String>,
}

/// Fields whose values are credentials.
const SECRET_FIELDS: &[&str] = &[
    "cluster.secret",
    "cluster.client_key",
    "cluster.join_token",
    "auth.secret",
];

/// Interpolates every string value under the top-level keys `sections` of
/// `doc` from `env` (any other key is left for the reader to refuse as
/// unknown); returns what was substituted, or every unset variable and
/// malformed reference.
pub fn interpolate(
    doc: &mut Value,
    env: &dyn Fn(&str) -> Option<String>,
    sections: &[&str],
) -> Result<Vec<Substitution>, Vec<Problem>> {
    let mut done = Vec::new();
    let mut problems = Vec::new();
    if let Value::Mapping(top) = doc {
        for (key, value) in top.iter_mut() {
            if let Value::String(name) = key
                && sections.contains(&name.as_str())
            {
                walk(value, name.clone(), env, &mut done, &mut problems);
            }
        }
    }
    if problems.is_empty() {
        Ok(done)
    } else {
        Err(problems)
    }
}

fn walk(
    value: &mut Value,
    field: String,
    env: &dyn Fn(&str) -> Option<String>,
    done: &mut Vec<Substitution>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::Mapping(map) => {
            for (key, v) in map.iter_mut() {
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let child = if field.is_empty() {
                    name
                } else {
                    format!("{field}.{name}")
                };
                walk(v, child, env, done, problems);
            }
        }
        Value::Sequence(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, format!("{field}[{i}]"), env, done, problems);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, field, env, done, problems),
        Value::String(text) if text.contains('$') => match expand(text, env) {
            Ok(None) => {}
            Ok(Some(expanded)) => {
                let whole = whole_reference(text);
                let secret = SECRET_FIELDS.contains(&field.as_str());
                done.push(Substitution {
                    field: field.clone(),
                    written: text.clone(),
                    value: (!secret).then(|| expanded.clone()),
                });
                *value = match whole {
                    // `port: ${PORT}` is the number the variable holds.
                    true => match serde_yaml_ng::from_str::<Value>(&expanded) {
                        Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
                        _ => Value::String(expanded),
                    },
                    false => Value::String(expanded),
                };
            }
            Err(message) => problems.push(Problem { field, message }),
        },
        _ => {}
    }
}

/// Whether `text` is exactly one `${VAR}`.
fn whole_reference(text: &str) -> bool {
    text.starts_with("${") && text.ends_with('}') && text[2..].find('}') == Some(text.len() - 3)
}

/// `text` with its references replaced; `None` if it has none (a lone `$`
/// stays as it is).
fn expand(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<String>, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut changed = false;
    let mut unset = Vec::new();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            changed = true;
        } else if let Some(tail) = after.strip_prefix("${") {
            let Some(end) = tail.find('}') else {
                return Err(format!(
                    "`{text}` has a `${{` without its `}}`: write ${{NAME}}, or $${{ for a literal `${{`"
                ));
            };
            let name = &tail[..end];
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!(
                    "`${{{name}}}` is not a variable name: use letters, digits and '_', not starting with a digit"
                ));
            }
            match env(name) {
                Some(v) => out.push_str(&v),
                None => unset.push(name.to_owned()),
            }
            rest = &tail[end + 1..];
            changed = true;
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    match unset.as_slice() {
        [] => Ok(changed.then_some(out)),
        [one] => Err(format!(
            "the environment variable {one} is not set (`{text}` needs it): set it, or write $${{ for a literal `${{`"
        )),
        many => Err(format!(
            "the environment variables {} are not set (`{text}` needs them)",
            many.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_NAME" => Some("flotilla-echo-5d8f-x2x9z".into()),
            "POD_IP" => Some("10.42.0.7".into()),
            "PORT" => Some("8080".into()),
            "TOKEN" => Some("fjt1.echo.abc".into()),
            _ => None,
        }
    }

    fn run(yaml: &str) -> Result<(Value, Vec<Substitution>), Vec<Problem>> {
        let mut doc: Value = serde_yaml_ng::from_str(yaml).unwrap();
        let sections = ["node", "services", "advertise", "limits", "cluster", "note"];
        interpolate(&mut doc, &env, &sections).map(|s| (doc, s))
    }

    #[test]
    fn values_take_the_environment_and_secrets_are_masked() {
        let (doc, subs) = run(
            "node: {id: '${POD_NAME}'}\nadvertise: {public: '${POD_IP}:${PORT}'}\nlimits: {request_timeout_ms: '${PORT}'}\ncluster: {join_token: '${TOKEN}'}\nnote: 'cost: $5, literal $${HOME}'\n",
        )
        .unwrap();
        assert_eq!(doc["node"]["id"], Value::from("flotilla-echo-5d8f-x2x9z"));
        assert_eq!(doc["advertise"]["public"], Value::from("10.42.0.7:8080"));
        assert_eq!(doc["limits"]["request_timeout_ms"], Value::from(8080));
        assert_eq!(doc["note"], Value::from("cost: $5, literal ${HOME}"));
        let token = subs
            .iter()
            .find(|s| s.field == "cluster.join_token")
            .unwrap();
        assert_eq!(token.value, None, "a secret is never shown");
        assert_eq!(token.written, "${TOKEN}");
        assert!(
            subs.iter()
                .any(|s| s.field == "advertise.public"
                    && s.value.as_deref() == Some("10.42.0.7:8080"))
        );
    }

    #[test]
    fn keys_outside_the_sections_are_left_for_the_reader_to_refuse() {
        let (doc, subs) = run("nosuch: '${NOPE'\n").unwrap();
        assert_eq!(doc["nosuch"], Value::from("${NOPE"));
        assert!(subs.is_empty());
    }

    #[test]
    fn an_unset_or_malformed_reference_names_its_field_and_variable() {
        let problems =
            run("node: {id: '${NOPE}'}\nservices: ['${POD_NAME', '${9X}']\n").unwrap_err();
        let text: Vec<String> = problems
            .iter()
            .map(|p| format!("{}: {}", p.field, p.message))
            .collect();
        assert!(
            text.iter()
                .any(|t| t.starts_with("node.id: the environment variable NOPE is not set")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("services[0]:") && t.contains("without its `}`")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.starts_with("services[1]:") && t.contains("not a variable name")),
            "{text:?}"
        );
    }
}
