//! Authorization: who may call what. Default deny, decided in one place.
//!
//! Every route declares the permission it needs (or that it is public); a
//! caller's permissions come from their roles, narrowed by an API key's
//! scopes. [`decide`] is the only function that turns a route's access and
//! a caller's identity into allow or deny, and the ingress calls it before
//! any service handler runs.

use std::fmt;

/// What a caller needs to reach a route. Enforced by the auth layer; a
/// route that declares nothing does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials. Listed by `check-config`.
    Public,
    /// An authenticated caller holding this permission.
    Permission(&'static str),
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Access::Public => f.write_str("public"),
            Access::Permission(p) => write!(f, "permission {p}"),
        }
    }
}

pub const ROLE_ADMIN: &str = "admin";
pub const ROLE_USER: &str = "user";
pub const ROLES: &[&str] = &[ROLE_ADMIN, ROLE_USER];

/// Read and write one's own kv entries.
pub const KV_READ: &str = "kv.read";
pub const KV_WRITE: &str = "kv.write";
/// Call the authenticated echo.
pub const ECHO_CALL: &str = "echo.call";
/// Manage one's own account: me, password, API keys, logout.
pub const ACCOUNT_SELF: &str = "accounts.self";
/// Manage every account, and act on other users' data.
pub const ACCOUNTS_ADMIN: &str = "accounts.admin";

/// What each role grants. `admin` holds every permission there is.
pub const USER_PERMISSIONS: &[&str] = &[KV_READ, KV_WRITE, ECHO_CALL, ACCOUNT_SELF];
pub const ALL_PERMISSIONS: &[&str] = &[KV_READ, KV_WRITE, ECHO_CALL, ACCOUNT_SELF, ACCOUNTS_ADMIN];

/// How the caller proved who they are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    AccessToken,
    /// An API key; its scopes narrow the owner's permissions.
    ApiKey {
        id: String,
        scopes: Vec<String>,
    },
}

/// An authenticated caller, as handlers see it (a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub roles: Vec<String>,
    pub credential: Credential,
}

impl Principal {
    fn role_grants(&self, permission: &str) -> bool {
        self.roles.iter().any(|r| match r.as_str() {
            ROLE_ADMIN => ALL_PERMISSIONS.contains(&permission),
            ROLE_USER => USER_PERMISSIONS.contains(&permission),
            _ => false,
        })
    }

    /// Whether the caller holds `permission` now.
    pub fn has(&self, permission: &str) -> bool {
        let scoped = match &self.credential {
            Credential::AccessToken => true,
            Credential::ApiKey { scopes, .. } => scopes.iter().any(|s| s == permission),
        };
        scoped && self.role_grants(permission)
    }

    /// Whether the caller may act on data owned by another user.
    pub fn is_admin(&self) -> bool {
        self.has(ACCOUNTS_ADMIN)
    }
}

/// Who the caller is, as far as the credentials presented tell.
#[derive(Clone, Debug)]
pub enum Identity {
    /// No credentials presented.
    Anonymous,
    /// Credentials presented and refused, with the reason.
    Invalid(String),
    Known(Principal),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401 / UNAUTHENTICATED.
    Unauthenticated(String),
    /// 403 / PERMISSION_DENIED.
    Forbidden(String),
}

/// The authorization decision for one request.
pub fn decide(access: Access, identity: &Identity) -> Decision {
    match (access, identity) {
        (Access::Public, _) => Decision::Allow,
        (Access::Permission(_), Identity::Anonymous) => Decision::Unauthenticated(
            "credentials required: send `Authorization: Bearer <access token>` or `Authorization: ApiKey <key>`".into(),
        ),
        (Access::Permission(_), Identity::Invalid(reason)) => Decision::Unauthenticated(reason.clone()),
        (Access::Permission(p), Identity::Known(principal)) => {
            if principal.has(p) {
                Decision::Allow
            } else {
                Decision::Forbidden(format!("permission `{p}` is required"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(roles: &[&str], scopes: Option<&[&str]>) -> Identity {
        Identity::Known(Principal {
            user_id: "u1".into(),
            username: "ada".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            credential: match scopes {
                None => Credential::AccessToken,
                Some(s) => Credential::ApiKey {
                    id: "k1".into(),
                    scopes: s.iter().map(|r| r.to_string()).collect(),
                },
            },
        })
    }

    #[test]
    fn decision_table() {
        use Decision::*;
        let kv_write = Access::Permission(KV_WRITE);
        let admin = Access::Permission(ACCOUNTS_ADMIN);
        type Row = (Access, Identity, fn(&Decision) -> bool);
        let rows: Vec<Row> = vec![
            (Access::Public, Identity::Anonymous, |d| *d == Allow),
            (Access::Public, Identity::Invalid("garbage".into()), |d| {
                *d == Allow
            }),
            (kv_write, Identity::Anonymous, |d| {
                matches!(d, Unauthenticated(_))
            }),
            (kv_write, Identity::Invalid("expired".into()), |d| {
                *d == Unauthenticated("expired".into())
            }),
            (kv_write, principal(&[ROLE_USER], None), |d| *d == Allow),
            (kv_write, principal(&[ROLE_ADMIN], None), |d| *d == Allow),
            (kv_write, principal(&[], None), |d| {
                matches!(d, Forbidden(_))
            }),
            (kv_write, principal(&["unknown-role"], None), |d| {
                matches!(d, Forbidden(_))
            }),
            (admin, principal(&[ROLE_USER], None), |d| {
                matches!(d, Forbidden(_))
            }),
            (admin, principal(&[ROLE_ADMIN], None), |d| *d == Allow),
            (admin, principal(&[ROLE_USER, ROLE_ADMIN], None), |d| {
                *d == Allow
            }),
            // API keys: scopes narrow, never widen.
            (kv_write, principal(&[ROLE_USER], Some(&[KV_READ])), |d| {
                matches!(d, Forbidden(_))
            }),
            (kv_write, principal(&[ROLE_USER], Some(&[KV_WRITE])), |d| {
                *d == Allow
            }),
            (
                admin,
                principal(&[ROLE_USER], Some(&[ACCOUNTS_ADMIN])),
                |d| matches!(d, Forbidden(_)),
            ),
            (admin, principal(&[ROLE_ADMIN], Some(&[KV_READ])), |d| {
                matches!(d, Forbidden(_))
            }),
        ];
        for (i, (access, identity, expected)) in rows.iter().enumerate() {
            let d = decide(*access, identity);
            assert!(expected(&d), "row {i}: {access:?} {identity:?} gave {d:?}");
        }
    }

    #[test]
    fn admin_override_needs_the_admin_permission() {
        let Identity::Known(user) = principal(&[ROLE_USER], None) else {
            unreachable!()
        };
        let Identity::Known(admin) = principal(&[ROLE_ADMIN], None) else {
            unreachable!()
        };
        let Identity::Known(admin_key) = principal(&[ROLE_ADMIN], Some(&[KV_READ])) else {
            unreachable!()
        };
        assert!(!user.is_admin());
        assert!(admin.is_admin());
        assert!(!admin_key.is_admin());
    }
}
