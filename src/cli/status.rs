//! `flotilla cluster status` as an operator reads it: one aligned row per
//! member, from what each member says of itself (`--json` prints that
//! whole).

use serde_json::Value;

/// The columns, in order.
const HEADERS: [&str; 9] = [
    "MEMBER", "ID", "ROLE", "TERM", "LEADER", "LOG", "COMMIT", "APPLIED", "LAG",
];

/// A JSON number or string as a cell; `-` for null or absent.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The table of `members` (the array `remote_admin` answers `Status`
/// with): a member that did not answer shows why in place of its row's
/// figures. LAG is how far its applied index is behind the highest commit
/// index any member reports.
pub(super) fn table(members: &Value) -> String {
    let members = members.as_array().map(Vec::as_slice).unwrap_or_default();
    let newest = members
        .iter()
        .filter_map(|m| m["status"]["commit_index"].as_u64())
        .max();
    let mut rows: Vec<Vec<String>> = vec![HEADERS.iter().map(|h| h.to_string()).collect()];
    let mut unreachable = Vec::new();
    for m in members {
        let name = cell(&m["member"]);
        let status = &m["status"];
        if let Some(error) = status.get("error") {
            unreachable.push(format!("{name}: {}", cell(error)));
            let mut row = vec![name, "-".into(), "UNREACHABLE".into()];
            row.resize(HEADERS.len(), "-".into());
            rows.push(row);
            continue;
        }
        let lag = match (newest, status["applied_index"].as_u64()) {
            (Some(newest), Some(applied)) => newest.saturating_sub(applied).to_string(),
            _ => "-".into(),
        };
        let mut role = cell(&status["role"]);
        if let Some(stopped) = status.get("stopped").filter(|s| !s.is_null()) {
            role = format!("{role} (stopped: {})", cell(stopped));
        }
        rows.push(vec![
            name,
            cell(&status["id"]),
            role,
            cell(&status["term"]),
            cell(&status["leader"]),
            cell(&status["last_log_index"]),
            cell(&status["commit_index"]),
            cell(&status["applied_index"]),
            lag,
        ]);
    }
    let widths: Vec<usize> = (0..HEADERS.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    for line in unreachable {
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn members_are_aligned_rows_and_an_unreachable_one_says_why() {
        let members = json!([
            {"member": "ha-1", "status": {"id": 1, "role": "Leader", "stopped": null, "term": 3, "leader": 1,
             "last_log_index": 120, "commit_index": 120, "applied_index": 120}},
            {"member": "ha-2", "status": {"id": 2, "role": "Follower", "stopped": null, "term": 3, "leader": 1,
             "last_log_index": 118, "commit_index": 118, "applied_index": 117}},
            {"member": "ha-3", "status": {"error": "no answer within 3 s"}},
        ]);
        let table = table(&members);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "MEMBER  ID  ROLE         TERM  LEADER  LOG  COMMIT  APPLIED  LAG"
        );
        assert_eq!(
            lines[1],
            "ha-1    1   Leader       3     1       120  120     120      0"
        );
        assert_eq!(
            lines[2],
            "ha-2    2   Follower     3     1       118  118     117      3"
        );
        assert_eq!(
            lines[3],
            "ha-3    -   UNREACHABLE  -     -       -    -       -        -"
        );
        assert_eq!(lines[4], "ha-3: no answer within 3 s");
    }
}
