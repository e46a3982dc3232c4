//! The layers of the crate, kept true by reading the code's imports.
//!
//! Every top-level module belongs to one layer; a module may use modules of
//! the layers below its own, never one above it nor a sibling of its own
//! layer. So there can be no cycle between top-level modules. The test reads
//! each file's `use crate::…` items and `crate::…::` paths (comments and
//! test modules left out) and names every import that breaks the order.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

/// The layers, from the top down (ARCHITECTURE.md draws the same).
const LAYERS: &[&[&str]] = &[
    &["main", "lib", "architecture_tests"],
    &["cli"],
    &["node"],
    &["envoy"],
    &["config"],
    &["edge", "xds"],
    &["mesh"],
    &["services"],
    &["service"],
    &["catalogue"],
    &["auth", "cluster"],
    &["protocol", "proto", "tls"],
    &["telemetry"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its comments, string literals and test
/// module, line numbers kept.
fn code_of(text: &str) -> String {
    let text = match text.find("\n#[cfg(test)]\nmod ") {
        Some(i) => &text[..i],
        None => text,
    };
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(text.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(text.len(), |n| i + n + 2);
            out.extend(text[i..end].chars().filter(|c| *c == '\n'));
            i = end;
        } else if bytes[i] == b'"' {
            // A string literal: skipped, escapes included.
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            out.extend(
                text[i..(j + 1).min(text.len())]
                    .chars()
                    .filter(|c| *c == '\n'),
            );
            i = j + 1;
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The top-level modules a `use crate::` tree names, e.g. `a::b` or
/// `{a::b, c::{d, e}}`.
fn roots(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(group) = tree.strip_prefix('{') else {
        return vec![
            tree.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or_default()
                .to_owned(),
        ];
    };
    let mut out = Vec::new();
    let (mut depth, mut item) = (0, String::new());
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(roots(&std::mem::take(&mut item)));
                continue;
            }
            _ => {}
        }
        item.push(c);
    }
    out.extend(roots(&item));
    out.retain(|r| !r.is_empty() && r != "self");
    out
}

/// Every (line, imported top-level module, text) of a file's code.
fn imports(code: &str) -> Vec<(usize, String, String)> {
    let mut out = Vec::new();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut at = 0;
    while let Some(i) = code[at..].find("use crate::") {
        let start = at + i;
        let end = code[start..].find(';').map_or(code.len(), |n| start + n);
        let tree = &code[start + "use crate::".len()..end];
        for root in roots(tree) {
            out.push((line_of(start), root, code[start..end].to_owned()));
        }
        at = end;
    }
    let mut at = 0;
    while let Some(i) = code[at..].find("crate::") {
        let start = at + i;
        at = start + "crate::".len();
        let before = &code[..start];
        if before.ends_with("use ") || before.ends_with("pub(") {
            continue;
        }
        let name: String = code[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if code[at + name.len()..].starts_with("::") {
            out.push((line_of(start), name.clone(), format!("crate::{name}::…")));
        }
    }
    out
}

#[test]
fn top_level_modules_only_import_from_the_layers_below() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut offences = String::new();
    let mut edges: BTreeMap<(String, String), usize> = BTreeMap::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let module = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        let Some(from) = layer_of(&module) else {
            let _ = writeln!(
                offences,
                "src/{}: module `{module}` is in no layer: add it to LAYERS (and to ARCHITECTURE.md)",
                relative.display()
            );
            continue;
        };
        let code = code_of(&std::fs::read_to_string(file).unwrap());
        for (line, target, text) in imports(&code) {
            if target == module || target == "store" {
                continue;
            }
            *edges.entry((module.clone(), target.clone())).or_default() += 1;
            let verdict = match layer_of(&target) {
                None => Some(format!("`{target}` is in no layer")),
                Some(to) if to == from => Some(format!(
                    "`{target}` is beside `{module}`, in the same layer"
                )),
                Some(to) if to < from => Some(format!("`{target}` is above `{module}`")),
                Some(_) => None,
            };
            if let Some(why) = verdict {
                let _ = writeln!(
                    offences,
                    "src/{}:{line}: `{}`: {why}",
                    relative.display(),
                    text.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
    }
    assert!(
        offences.is_empty(),
        "imports that break the layers (src/architecture_tests.rs lists them):\n{offences}"
    );
    // The reading itself works: the node imports the edge, the edge the
    // catalogue.
    assert!(
        edges.contains_key(&("node".into(), "edge".into())),
        "{edges:?}"
    );
    assert!(
        edges.contains_key(&("edge".into(), "catalogue".into())),
        "{edges:?}"
    );
}

#[test]
fn imports_are_read_through_groups_comments_and_strings() {
    let code = code_of(
        "use crate::{a::b, c::{d, e}, self};\n// use crate::hidden;\nlet s = \"crate::nope::x\";\nfn f() { crate::g::h(); }\n",
    );
    let found: Vec<(usize, String)> = imports(&code).into_iter().map(|(l, m, _)| (l, m)).collect();
    assert_eq!(
        found,
        vec![(1, "a".into()), (1, "c".into()), (4, "g".into())]
    );
}
