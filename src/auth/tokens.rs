//! Access tokens: EdDSA-signed JWTs with a key id.
//!
//! Only `alg: EdDSA` is accepted, before any key is looked up, so `none`,
//! HMAC-with-the-public-key and every other algorithm confusion fail on the
//! header. The key id must name a key of the ring; `exp`, `nbf`, `iat`,
//! `iss`, `sub` and `typ` are required and checked.

use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header, encode};
use rand::{RngCore, rngs::OsRng};
use serde::{Deserialize, Serialize};

use super::keys::KeyRing;

pub const ISSUER: &str = "flotilla";
const TYPE_ACCESS: &str = "access";
/// Clock skew tolerated between nodes, in seconds.
pub const LEEWAY_SECS: u64 = 5;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
    pub typ: String,
    /// The account's token generation when issued (see
    /// `accounts::User::token_generation`).
    #[serde(default)]
    pub generation: i64,
}

impl AccessClaims {
    pub fn new(user_id: &str, generation: i64, now: i64, ttl_secs: i64) -> AccessClaims {
        let mut jti = [0u8; 12];
        OsRng.fill_bytes(&mut jti);
        AccessClaims {
            iss: ISSUER.into(),
            sub: user_id.into(),
            iat: now,
            nbf: now,
            exp: now + ttl_secs,
            jti: jti.iter().map(|b| format!("{b:02x}")).collect(),
            typ: TYPE_ACCESS.into(),
            generation,
        }
    }
}

/// Why a token was refused. The message goes back to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm `{0}` is not accepted: tokens are signed with EdDSA")]
    Algorithm(String),
    #[error("the token has no key id")]
    MissingKeyId,
    #[error("the token's key id is unknown")]
    UnknownKeyId,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token's claims are invalid")]
    Claims,
}

/// Signs `claims` with the ring's current key.
pub fn sign(ring: &KeyRing, claims: &AccessClaims) -> Result<String, String> {
    let key = ring
        .current
        .as_ref()
        .ok_or("there is no current signing key: rotate keys to create one")?;
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    encode(&header, claims, &key.encoding).map_err(|e| format!("cannot sign a token: {e}"))
}

/// The key id of a token whose header is acceptable.
pub fn key_id(token: &str) -> Result<String, TokenError> {
    // Reject anything that is not the JWS compact form before parsing JSON.
    if token.split('.').count() != 3 || token.len() > 4096 {
        return Err(TokenError::Malformed);
    }
    let header = decode_header(token).map_err(|e| match e.kind() {
        jsonwebtoken::errors::ErrorKind::InvalidAlgorithm
        | jsonwebtoken::errors::ErrorKind::InvalidAlgorithmName => {
            TokenError::Algorithm(algorithm_name(token))
        }
        _ => TokenError::Malformed,
    })?;
    if header.alg != Algorithm::EdDSA {
        return Err(TokenError::Algorithm(format!("{:?}", header.alg)));
    }
    header.kid.ok_or(TokenError::MissingKeyId)
}

/// The `alg` a header names, for the error message, when the JWT library
/// refuses to parse it (e.g. `none`).
fn algorithm_name(token: &str) -> String {
    use base64::Engine;
    let head = token.split('.').next().unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(head)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("alg").and_then(|a| a.as_str()).map(str::to_owned))
        .unwrap_or_else(|| "?".into())
        .chars()
        .take(16)
        .collect()
}

/// Verifies `token` against the ring and returns its claims.
pub fn verify(ring: &KeyRing, token: &str, now: i64) -> Result<AccessClaims, TokenError> {
    let kid = key_id(token)?;
    let key = ring.verifying.get(&kid).ok_or(TokenError::UnknownKeyId)?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    // Times are checked below against the caller's clock, not the library's.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.set_issuer(&[ISSUER]);
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "sub"]);
    let claims = decode::<AccessClaims>(token, key, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => TokenError::Signature,
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidAlgorithm => TokenError::Algorithm("?".into()),
                K::Base64(_) | K::Json(_) | K::Utf8(_) | K::InvalidToken => TokenError::Malformed,
                _ => TokenError::Claims,
            }
        })?
        .claims;
    let leeway = LEEWAY_SECS as i64;
    if claims.exp + leeway <= now {
        return Err(TokenError::Expired);
    }
    if claims.nbf - leeway > now {
        return Err(TokenError::NotYetValid);
    }
    if claims.typ != TYPE_ACCESS || claims.sub.is_empty() {
        return Err(TokenError::Claims);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use base64::Engine;
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    use jsonwebtoken::{DecodingKey, EncodingKey};

    use super::*;
    use crate::auth::keys::SigningKey;

    fn ring(kid: &str) -> (KeyRing, ed25519_dalek::SigningKey) {
        let sk = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let der = sk.to_pkcs8_der().unwrap();
        let mut verifying = HashMap::new();
        verifying.insert(
            kid.to_owned(),
            DecodingKey::from_ed_der(&sk.verifying_key().to_bytes()),
        );
        (
            KeyRing {
                current: Some(SigningKey {
                    kid: kid.into(),
                    encoding: EncodingKey::from_ed_der(der.as_bytes()),
                }),
                verifying,
            },
            sk,
        )
    }

    fn b64(v: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signed_token_verifies() {
        let (ring, _) = ring("k1");
        let claims = AccessClaims::new("u1", 0, NOW, 900);
        let token = sign(&ring, &claims).unwrap();
        assert_eq!(verify(&ring, &token, NOW).unwrap(), claims);
    }

    #[test]
    fn attacks_are_refused_with_their_reason() {
        let (ring, sk) = ring("k1");
        let good = sign(&ring, &AccessClaims::new("u1", 0, NOW, 900)).unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let payload = |claims: &AccessClaims| b64(&serde_json::to_vec(claims).unwrap());

        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            parts[1]
        );
        assert!(matches!(
            verify(&ring, &none, NOW),
            Err(TokenError::Algorithm(_) | TokenError::Malformed)
        ));

        // HS256 signed with the public key as the secret.
        let hs = jsonwebtoken::encode(
            &Header {
                kid: Some("k1".into()),
                ..Header::new(Algorithm::HS256)
            },
            &AccessClaims::new("u1", 0, NOW, 900),
            &EncodingKey::from_secret(&sk.verifying_key().to_bytes()),
        )
        .unwrap();
        assert!(matches!(
            verify(&ring, &hs, NOW),
            Err(TokenError::Algorithm(_))
        ));

        let mut tampered = AccessClaims::new("u1", 0, NOW, 900);
        tampered.sub = "admin".into();
        let forged = format!("{}.{}.{}", parts[0], payload(&tampered), parts[2]);
        assert_eq!(verify(&ring, &forged, NOW), Err(TokenError::Signature));

        let expired = sign(&ring, &AccessClaims::new("u1", 0, NOW - 2000, 900)).unwrap();
        assert_eq!(verify(&ring, &expired, NOW), Err(TokenError::Expired));
        let future = sign(&ring, &AccessClaims::new("u1", 0, NOW + 600, 900)).unwrap();
        assert_eq!(verify(&ring, &future, NOW), Err(TokenError::NotYetValid));

        let (other, _) = self::ring("k2");
        let unknown = sign(&other, &AccessClaims::new("u1", 0, NOW, 900)).unwrap();
        assert_eq!(verify(&ring, &unknown, NOW), Err(TokenError::UnknownKeyId));

        for garbage in ["", "abc", "a.b.c", "a.b", &"x".repeat(5000)] {
            assert!(verify(&ring, garbage, NOW).is_err(), "{garbage}");
        }
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn segment() -> impl Strategy<Value = String> {
            prop_oneof![
                "[A-Za-z0-9_-]{0,80}",
                any::<Vec<u8>>().prop_map(|v| b64(&v)),
                Just(b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#)),
                Just(b64(br#"{"alg":"EdDSA","typ":"JWT","kid":"k1"}"#)),
            ]
        }

        proptest! {
            /// Whatever text is presented as a token, checking it ends in
            /// an error, never a panic and never a principal.
            #[test]
            fn arbitrary_text_is_never_accepted(token in ".{0,300}") {
                let (ring, _) = ring("k1");
                prop_assert!(verify(&ring, &token, NOW).is_err());
            }

            /// Three dot-separated segments shaped like a JWT, headers that
            /// name our key among them: never accepted without our signature.
            #[test]
            fn jwt_shaped_forgeries_are_never_accepted(
                header in segment(), payload in segment(), signature in segment()
            ) {
                let (ring, _) = ring("k1");
                let token = format!("{header}.{payload}.{signature}");
                prop_assert!(verify(&ring, &token, NOW).is_err());
            }

            /// A real token with any other claims, or any other signature,
            /// is refused.
            #[test]
            fn a_real_token_changed_in_any_part_is_refused(
                sub in "[a-z0-9]{1,20}", generation in any::<i64>(), signature in any::<[u8; 64]>()
            ) {
                let (ring, _) = ring("k1");
                let real = sign(&ring, &AccessClaims::new("u1", 0, NOW, 900)).unwrap();
                let parts: Vec<&str> = real.split('.').collect();
                let mut claims = AccessClaims::new(&sub, generation, NOW, 900);
                if claims == AccessClaims::new("u1", 0, NOW, 900) {
                    claims.sub.push('x');
                }
                let claims = b64(&serde_json::to_vec(&claims).unwrap());
                let changed_claims = format!("{}.{claims}.{}", parts[0], parts[2]);
                prop_assert!(verify(&ring, &changed_claims, NOW).is_err());
                let other_signature = format!("{}.{}.{}", parts[0], parts[1], b64(&signature));
                prop_assume!(other_signature != real);
                prop_assert!(verify(&ring, &other_signature, NOW).is_err());
            }
        }
    }
}
