//! A lexical check of the SQL a service sends, before SQLite compiles it.
//!
//! The authorizer ([`super::authorizer`]) is the guard: it sees every object
//! SQLite resolves. This check runs first and refuses, from the text alone,
//! what the authorizer cannot see or cannot refuse uniformly:
//!
//! - statements SQLite compiles without consulting the authorizer
//!   (`VACUUM`, `REINDEX`);
//! - the `ROLLBACK` conflict resolution (`OR ROLLBACK`, `ON CONFLICT
//!   ROLLBACK`, `RAISE(ROLLBACK, …)`), which ends the surrounding
//!   transaction: the one every other write of the same commit shares;
//! - names of the form `<other>__…`, which belong to another namespace. They
//!   are refused whether or not such an object exists, with the same
//!   message, so that a refusal reveals nothing about other namespaces.
//!
//! It is a tokenizer, not a parser: strings, comments, quoted identifiers and
//! parameters are told apart exactly as SQLite's own tokenizer does, and no
//! more is needed.

/// One token that matters to the check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    /// A bare word: a keyword or an unquoted identifier.
    Word(&'a str),
    /// A quoted identifier (`"x"`, `` `x` ``, `[x]`), without its quotes.
    Quoted(&'a str),
    /// A `;` between statements.
    Semicolon,
}

/// Splits `sql` into the tokens the check needs. String and blob literals,
/// numbers, parameters (`?1`, `:name`, `@name`, `$name`), operators and
/// comments are skipped.
fn tokens(sql: &str) -> Vec<Token<'_>> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let word_byte = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(bytes.len(), |n| i + n + 1);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i = sql[i + 2..]
                    .find("*/")
                    .map_or(bytes.len(), |n| i + 2 + n + 2);
            }
            b'\'' => i = skip_quoted(bytes, i, b'\'').1,
            b'"' | b'`' => {
                let (end, next) = skip_quoted(bytes, i, b);
                out.push(Token::Quoted(&sql[i + 1..end]));
                i = next;
            }
            b'[' => {
                let end = sql[i..].find(']').map_or(bytes.len(), |n| i + n);
                out.push(Token::Quoted(&sql[i + 1..end]));
                i = (end + 1).min(bytes.len());
            }
            b';' => {
                out.push(Token::Semicolon);
                i += 1;
            }
            b'?' | b':' | b'@' | b'$' => {
                i += 1;
                while i < bytes.len() && word_byte(bytes[i]) {
                    i += 1;
                }
            }
            b'0'..=b'9' | b'.' if b != b'.' || bytes.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // Numbers, including 1e10, 0x1F and .5: never names.
                i += 1;
                while i < bytes.len() && (word_byte(bytes[i]) || bytes[i] == b'.') {
                    i += 1;
                }
            }
            _ if word_byte(b) => {
                let start = i;
                while i < bytes.len() && word_byte(bytes[i]) {
                    i += 1;
                }
                out.push(Token::Word(&sql[start..i]));
            }
            _ => i += 1,
        }
    }
    out
}

/// Returns (end of the content, index after the closing quote) of a quoted
/// token starting at `start`; a doubled quote is part of the content. An
/// unterminated one runs to the end (SQLite refuses it when compiling).
fn skip_quoted(bytes: &[u8], start: usize, quote: u8) -> (usize, usize) {
    let mut i = start + 1;
    while i < bytes.len() {
        if bytes[i] == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return (i, i + 1);
        }
        i += 1;
    }
    (bytes.len(), bytes.len())
}

/// Why `sql` is refused for `namespace`, from its text alone, if it is.
/// `sql` may hold several statements (a migration); each is checked.
pub fn refusal(sql: &str, namespace: &str) -> Option<String> {
    check(sql, namespace).err()
}

/// Checks `sql` for `namespace` from its text alone: `Ok(true)` if it
/// changes the schema (its first statement starts with CREATE, DROP or
/// ALTER), `Ok(false)` if it does not, or why it is refused.
pub fn check(sql: &str, namespace: &str) -> Result<bool, String> {
    let mut statement_start = true;
    let mut defines = None;
    for token in tokens(sql) {
        if defines.is_none()
            && let Token::Word(word) = token
        {
            defines = Some(
                ["CREATE", "DROP", "ALTER"]
                    .iter()
                    .any(|k| word.eq_ignore_ascii_case(k)),
            );
        }
        match token {
            Token::Semicolon => {
                statement_start = true;
                continue;
            }
            Token::Word(word) => {
                if statement_start {
                    if word.eq_ignore_ascii_case("VACUUM") {
                        return Err(
                            "VACUUM is not allowed in a service: it rewrites the whole database"
                                .into(),
                        );
                    }
                    if word.eq_ignore_ascii_case("REINDEX") {
                        return Err(
                            "REINDEX is not allowed in a service: it rebuilds every namespace's indexes"
                                .into(),
                        );
                    }
                }
                if word.eq_ignore_ascii_case("ROLLBACK") {
                    return Err(
                        "ROLLBACK is not allowed in a service: as a statement, every call to the store already runs in its own transaction; as a conflict resolution (`OR ROLLBACK`, `ON CONFLICT ROLLBACK`, `RAISE(ROLLBACK, …)`) it would end the transaction other writes share. Use ABORT or FAIL instead".into(),
                    );
                }
                if let Some(reason) = foreign_name(word, namespace) {
                    return Err(reason);
                }
            }
            Token::Quoted(name) => {
                if let Some(reason) = foreign_name(name, namespace) {
                    return Err(reason);
                }
            }
        }
        statement_start = false;
    }
    Ok(defines.unwrap_or(false))
}

/// The event a trigger's `CREATE TRIGGER` statement fires on: the first of
/// `INSERT`, `UPDATE` and `DELETE` in it (its name, if it were one of those
/// words, would have to be quoted).
pub fn trigger_event(sql: &str) -> Option<&'static str> {
    tokens(sql).into_iter().find_map(|t| match t {
        Token::Word(w) => ["INSERT", "UPDATE", "DELETE"]
            .into_iter()
            .find(|k| w.eq_ignore_ascii_case(k)),
        _ => None,
    })
}

/// A refusal if `name` has the shape of another namespace's object:
/// `<namespace>__…` with a namespace other than ours.
fn foreign_name(name: &str, namespace: &str) -> Option<String> {
    let (owner, _) = name.split_once("__")?;
    let shaped = !owner.is_empty()
        && owner.len() <= 32
        && owner.as_bytes()[0].is_ascii_alphabetic()
        && owner.bytes().all(|b| b.is_ascii_alphanumeric());
    if !shaped || owner.eq_ignore_ascii_case(namespace) {
        return None;
    }
    Some(outside_namespace(
        "object",
        &name.to_ascii_lowercase(),
        namespace,
    ))
}

/// The one message for a name outside the namespace, whether or not such an
/// object exists.
pub fn outside_namespace(what: &str, name: &str, namespace: &str) -> String {
    format!(
        "{what} `{name}` is outside namespace `{namespace}`: a service may only use objects named `{namespace}__*`"
    )
}

/// The object a "no such table/view/index/trigger" error names, if the
/// error is one.
pub fn missing_object(message: &str) -> Option<(&'static str, &str)> {
    for (prefix, what) in [
        ("no such table: ", "table"),
        ("no such view: ", "view"),
        ("no such index: ", "index"),
        ("no such trigger: ", "trigger"),
    ] {
        if let Some(rest) = message.split_once(prefix).map(|(_, r)| r) {
            let name = rest.split_whitespace().next().unwrap_or(rest);
            let name = name.strip_prefix("main.").unwrap_or(name);
            return Some((what, name));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_skip_strings_comments_numbers_and_parameters() {
        let t = tokens(
            "SELECT 'it''s -- no', x'00', \"a\"\"b\", [c d], `e` -- rest\n/* x */ FROM kv__t WHERE a = ?1 AND b = :echo__x AND c = 1e10;",
        );
        assert_eq!(
            t,
            vec![
                Token::Word("SELECT"),
                Token::Word("x"),
                Token::Quoted("a\"\"b"),
                Token::Quoted("c d"),
                Token::Quoted("e"),
                Token::Word("FROM"),
                Token::Word("kv__t"),
                Token::Word("WHERE"),
                Token::Word("a"),
                Token::Word("AND"),
                Token::Word("b"),
                Token::Word("AND"),
                Token::Word("c"),
                Token::Semicolon,
            ]
        );
    }

    #[test]
    fn unguarded_statements_are_refused_wherever_they_start() {
        for sql in [
            "VACUUM",
            ";VACUUM",
            " ; ;reindex",
            "/* c */ -- d\n VACUUM INTO 'x'",
            "SELECT 1; REINDEX",
        ] {
            assert!(refusal(sql, "kv").is_some(), "`{sql}` passed");
        }
        assert!(refusal("SELECT 'VACUUM', \"reindex\" FROM kv__t", "kv").is_none());
    }

    #[test]
    fn rollback_is_refused_as_a_word_only() {
        for sql in [
            "INSERT OR ROLLBACK INTO kv__t VALUES (1)",
            "CREATE TABLE kv__t (a TEXT UNIQUE ON CONFLICT rollback)",
            "CREATE TRIGGER kv__g BEFORE INSERT ON kv__t BEGIN SELECT RAISE(ROLLBACK, 'no'); END",
            "UPDATE OR ROLLBACK kv__t SET a = 1",
            "ROLLBACK",
        ] {
            let why = refusal(sql, "kv").unwrap_or_else(|| panic!("`{sql}` passed"));
            assert!(why.contains("ROLLBACK is not allowed"), "{why}");
        }
        assert!(refusal("INSERT INTO kv__t VALUES ('rollback', \"rollback\")", "kv").is_none());
        assert!(refusal("INSERT OR ABORT INTO kv__t VALUES (1)", "kv").is_none());
    }

    #[test]
    fn foreign_names_are_refused_whatever_their_quoting() {
        for sql in [
            "SELECT * FROM echo__t",
            "SELECT * FROM \"ECHO__T\"",
            "SELECT * FROM [Echo__nothing]",
            "SELECT * FROM main.`echo__t`",
            "SELECT nosuchcolumn FROM echo__t",
            "SELECT kv__t.a AS accounts__x FROM kv__t",
        ] {
            let why = refusal(sql, "kv").unwrap_or_else(|| panic!("`{sql}` passed"));
            assert!(why.contains("is outside namespace `kv`"), "{why}");
        }
        for sql in [
            "SELECT * FROM kv__t",
            "SELECT * FROM KV__T",
            "SELECT a__b",
            "SELECT * FROM kv__t WHERE a = '__echo__t'",
            "SELECT _x__y, __z, 1__2",
        ] {
            // `a__b` is shaped like namespace `a`'s object: refused. The
            // others are not names of another namespace.
            let refused = refusal(sql, "kv").is_some();
            assert_eq!(refused, sql == "SELECT a__b", "`{sql}`");
        }
    }

    #[test]
    fn schema_changes_and_trigger_events_are_recognised() {
        assert_eq!(
            check(" ; /* x */ create view kv__v AS SELECT 1", "kv"),
            Ok(true)
        );
        assert_eq!(check("DROP TABLE kv__t", "kv"), Ok(true));
        assert_eq!(
            check("INSERT INTO kv__t VALUES ('CREATE')", "kv"),
            Ok(false)
        );
        assert_eq!(
            trigger_event(
                "CREATE TRIGGER \"delete\" AFTER update OF a ON kv__t BEGIN DELETE FROM kv__t; END"
            ),
            Some("UPDATE")
        );
        assert_eq!(
            trigger_event("CREATE TRIGGER kv__g INSTEAD OF INSERT ON kv__v BEGIN SELECT 1; END"),
            Some("INSERT")
        );
    }

    #[test]
    fn missing_objects_are_recognised() {
        assert_eq!(
            missing_object("no such table: main.echo__t"),
            Some(("table", "echo__t"))
        );
        assert_eq!(
            missing_object("no such index: echo__i"),
            Some(("index", "echo__i"))
        );
        assert_eq!(missing_object("syntax error"), None);
    }
}
