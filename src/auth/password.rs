//! Password hashing: argon2id at or above OWASP's minimum, PHC strings,
//! rehash on login when the configured parameters change, and a dummy hash
//! so an unknown user costs as much as a known one.

use argon2::{
    Algorithm, Argon2, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
    password_hash::{SaltString, rand_core::OsRng},
};

/// OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
pub const MIN_MEMORY_KIB: u32 = 19 * 1024;
pub const MIN_ITERATIONS: u32 = 2;

/// Minimum length of a password a user may set.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Maximum length, to bound hashing work per request.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Default for HashParams {
    fn default() -> Self {
        HashParams {
            memory_kib: MIN_MEMORY_KIB,
            iterations: MIN_ITERATIONS,
            parallelism: 1,
        }
    }
}

impl HashParams {
    /// Why these parameters are not acceptable, if they are not.
    pub fn problem(&self) -> Option<String> {
        if self.memory_kib < MIN_MEMORY_KIB
            || self.iterations < MIN_ITERATIONS
            || self.parallelism < 1
        {
            return Some(format!(
                "below OWASP's minimum for argon2id (memory_kib >= {MIN_MEMORY_KIB}, iterations >= {MIN_ITERATIONS}, parallelism >= 1)"
            ));
        }
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 64 || self.parallelism > 16 {
            return Some(
                "too expensive: memory_kib <= 4194304, iterations <= 64, parallelism <= 16".into(),
            );
        }
        None
    }

    fn argon2(&self) -> Argon2<'static> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .expect("parameters are validated by HashParams::problem");
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
    }
}

/// A password hasher with fixed parameters. Hashing is CPU-bound: call it
/// from a blocking thread.
#[derive(Clone)]
pub struct Hasher {
    params: HashParams,
    dummy: String,
}

/// The result of checking a password.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Wrong,
    Right,
    /// Right, and here is a new hash with the current parameters to store.
    RightRehashed(String),
}

impl Hasher {
    pub fn new(params: HashParams) -> Hasher {
        let mut hasher = Hasher {
            params,
            dummy: String::new(),
        };
        hasher.dummy = hasher.hash("a password nobody has, hashed so unknown users cost the same");
        hasher
    }

    pub fn hash(&self, password: &str) -> String {
        let salt = SaltString::generate(&mut OsRng);
        self.params
            .argon2()
            .hash_password(password.as_bytes(), &salt)
            .expect("argon2 with validated parameters and a fresh salt cannot fail")
            .to_string()
    }

    /// Checks `password` against `stored` (a PHC string).
    pub fn verify(&self, password: &str, stored: &str) -> Verdict {
        let Ok(parsed) = PasswordHash::new(stored) else {
            return Verdict::Wrong;
        };
        if self
            .params
            .argon2()
            .verify_password(password.as_bytes(), &parsed)
            .is_err()
        {
            return Verdict::Wrong;
        }
        let current = Params::try_from(&parsed).ok().is_some_and(|p| {
            p.m_cost() == self.params.memory_kib
                && p.t_cost() == self.params.iterations
                && p.p_cost() == self.params.parallelism
        }) && parsed.algorithm == argon2::ARGON2ID_IDENT;
        if current {
            Verdict::Right
        } else {
            Verdict::RightRehashed(self.hash(password))
        }
    }

    /// Spends the same work as a real verification, for unknown users.
    pub fn verify_dummy(&self, password: &str) {
        let _ = self.verify(password, &self.dummy.clone());
    }
}

/// Why a new password is refused, if it is.
pub fn password_problem(password: &str) -> Option<String> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Some(format!(
            "the password is too short: use at least {MIN_PASSWORD_CHARS} characters"
        ));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Some(format!(
            "the password is too long: at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_with_the_configured_parameters() {
        let h = Hasher::new(HashParams::default());
        let stored = h.hash("correct horse battery");
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{stored}"
        );
        assert_eq!(h.verify("correct horse battery", &stored), Verdict::Right);
        assert_eq!(h.verify("wrong", &stored), Verdict::Wrong);
        assert_eq!(h.verify("x", "not a phc string"), Verdict::Wrong);
    }

    #[test]
    fn changed_parameters_rehash_on_a_right_password_only() {
        let old = Hasher::new(HashParams::default());
        let stored = old.hash("correct horse battery");
        let new = Hasher::new(HashParams {
            iterations: 3,
            ..HashParams::default()
        });
        match new.verify("correct horse battery", &stored) {
            Verdict::RightRehashed(h) => assert!(h.contains("m=19456,t=3,p=1"), "{h}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(new.verify("wrong", &stored), Verdict::Wrong);
    }

    #[test]
    fn weak_parameters_are_refused() {
        let weak = HashParams {
            memory_kib: 4096,
            ..HashParams::default()
        };
        assert!(weak.problem().is_some());
        assert!(HashParams::default().problem().is_none());
    }
}
