//! The `auth` section: the secret and token lifetimes.

use super::*;

/// Shortest acceptable `auth.secret`, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
pub(super) const DEFAULT_ACCESS_TTL: u64 = 900;
pub(super) const DEFAULT_REFRESH_TTL: u64 = 14 * 24 * 3600;
pub(super) const DEFAULT_ROTATION_HOURS: u64 = 30 * 24;

pub(super) fn secret_problem(secret: &str) -> Option<String> {
    let distinct = secret
        .chars()
        .collect::<std::collections::HashSet<_>>()
        .len();
    if secret.len() < MIN_SECRET_BYTES {
        Some(format!(
            "is too short ({} bytes): use at least {MIN_SECRET_BYTES} random bytes, e.g. the output of `openssl rand -base64 48`",
            secret.len()
        ))
    } else if distinct < 10 {
        Some(format!(
            "is too repetitive ({distinct} distinct characters): use random bytes, e.g. `openssl rand -base64 48`"
        ))
    } else {
        None
    }
}

pub(super) fn parse_auth(problems: &mut Problems, raw: Option<RawAuth>) -> Option<AuthSettings> {
    let Some(raw) = raw else {
        problems.add(
            "auth",
            "missing: every node authenticates requests; set at least `auth: {secret_file: <path>}` or `auth: {secret: <32+ random bytes>}`",
        );
        return None;
    };
    let secret = read_secret(problems, "auth.secret", raw.secret, raw.secret_file);
    let access = raw.access_token_ttl_seconds.unwrap_or(DEFAULT_ACCESS_TTL);
    if !(60..=86_400).contains(&access) {
        problems.add(
            "auth.access_token_ttl_seconds",
            format!("{access} is out of range: use 60 (one minute) to 86400 (one day)"),
        );
    }
    let refresh = raw.refresh_token_ttl_seconds.unwrap_or(DEFAULT_REFRESH_TTL);
    if refresh < access || refresh > 90 * 24 * 3600 {
        problems.add(
            "auth.refresh_token_ttl_seconds",
            format!("{refresh} is out of range: use at least the access token lifetime ({access}) and at most 7776000 (90 days)"),
        );
    }
    let rotation = raw.key_rotation_hours.unwrap_or(DEFAULT_ROTATION_HOURS);
    if rotation > 24 * 365 {
        problems.add(
            "auth.key_rotation_hours",
            format!("{rotation} is out of range: use 0 (rotate only with `flotilla auth rotate-keys`) or 1 to 8760"),
        );
    }
    let password_hash = raw
        .password_hash
        .map_or_else(HashParams::default, |p| HashParams {
            memory_kib: p.memory_kib,
            iterations: p.iterations,
            parallelism: p.parallelism,
        });
    if let Some(p) = password_hash.problem() {
        problems.add("auth.password_hash", p);
    }
    Some(AuthSettings {
        secret: secret?,
        access_token_ttl: Duration::from_secs(access),
        refresh_token_ttl: Duration::from_secs(refresh),
        key_rotation: (rotation > 0).then(|| Duration::from_secs(rotation * 3600)),
        signup: raw.signup.unwrap_or(false),
        password_hash,
    })
}

pub(super) fn read_secret(
    problems: &mut Problems,
    field: &str,
    secret: Option<String>,
    file: Option<String>,
) -> Option<String> {
    match (secret, file) {
        (Some(_), Some(_)) => {
            problems.add(
                field,
                format!("set either {field} or {field}_file, not both"),
            );
            None
        }
        (None, None) => {
            problems.add(
                field,
                format!("missing: set {field} or {field}_file; flotilla never makes one up"),
            );
            None
        }
        (Some(s), None) => match secret_problem(&s) {
            Some(p) => {
                problems.add(field, p);
                None
            }
            None => Some(s),
        },
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(s) => {
                let s = s.trim_end_matches(['\n', '\r']).to_owned();
                match secret_problem(&s) {
                    Some(p) => {
                        problems.add(
                            &format!("{field}_file"),
                            format!("the secret in {path} {p}"),
                        );
                        None
                    }
                    None => Some(s),
                }
            }
            Err(e) => {
                problems.add(&format!("{field}_file"), format!("cannot read {path}: {e}"));
                None
            }
        },
    }
}
