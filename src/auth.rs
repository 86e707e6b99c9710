//! Who is calling: HS256 JWTs with `sub`, `role`, `exp` (and optionally `nbf`),
//! or the service key.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Provider,
    Operator,
    Service,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: Role,
    exp: i64,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: String,
    pub role: Role,
}

impl Caller {
    /// 403 unless the caller has one of `roles`.
    pub fn require(self, roles: &[Role]) -> Result<Caller, ApiError> {
        if roles.contains(&self.role) {
            Ok(self)
        } else {
            Err(ApiError::Forbidden(format!(
                "this endpoint is not open to role {:?}",
                self.role
            )))
        }
    }

    pub fn require_person(self) -> Result<Caller, ApiError> {
        self.require(&[Role::Customer, Role::Provider])
    }
}

/// How far (seconds) the daemon's clock and a token issuer's may disagree: a
/// token is still accepted this long after its `exp`, and already this long
/// before its `nbf` (RFC 7519 §4.1.4-4.1.5 allow "a small leeway").
pub const CLOCK_SKEW_LEEWAY_SECONDS: u64 = 5;

#[derive(Clone)]
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    service_key: String,
}

impl Authenticator {
    pub fn new(jwt_secret: &str, service_key: &str) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = CLOCK_SKEW_LEEWAY_SECONDS;
        // RFC 7519 §4.1.5: a token must not be accepted before its `nbf`.
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Authenticator {
            encoding: EncodingKey::from_secret(jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(jwt_secret.as_bytes()),
            validation,
            service_key: service_key.to_owned(),
        }
    }

    pub fn mint(&self, sub: &str, role: Role, ttl_seconds: i64) -> Result<String, ApiError> {
        let claims = Claims {
            sub: sub.to_owned(),
            role,
            exp: jiff::Timestamp::now().as_second() + ttl_seconds,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| ApiError::Internal(format!("cannot sign token: {e}")))
    }

    /// Checks a bearer token: the service key, or a valid JWT that is neither
    /// expired nor (by its `nbf`) not yet valid, give or take
    /// [`CLOCK_SKEW_LEEWAY_SECONDS`]. Anything else is 401.
    pub fn verify(&self, token: &str) -> Result<Caller, ApiError> {
        self.verify_until(token).map(|(caller, _)| caller)
    }

    /// [`Authenticator::verify`], with the token's `exp` (Unix seconds; `None`
    /// for the service key, which does not expire): a connection the token
    /// opened ends then.
    pub fn verify_until(&self, token: &str) -> Result<(Caller, Option<i64>), ApiError> {
        if constant_time_eq(token.as_bytes(), self.service_key.as_bytes()) {
            let service = Caller {
                user_id: "service".to_owned(),
                role: Role::Service,
            };
            return Ok((service, None));
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    ApiError::Unauthorized("token expired".into())
                }
                jsonwebtoken::errors::ErrorKind::ImmatureSignature => {
                    ApiError::Unauthorized("token not valid yet (nbf is in the future)".into())
                }
                _ => ApiError::Unauthorized("invalid token".into()),
            })?;
        let claims = data.claims;
        crate::model::validate_id("sub", &claims.sub)
            .map_err(|_| ApiError::Unauthorized("token subject is not a valid user id".into()))?;
        let caller = Caller {
            user_id: claims.sub,
            role: claims.role,
        };
        Ok((caller, Some(claims.exp)))
    }

    /// Authenticates from an `Authorization` header, falling back to `?token=` where
    /// the route allows it (WebSocket and long-poll clients cannot always set headers).
    pub fn authenticate(
        &self,
        header: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<Caller, ApiError> {
        self.authenticate_until(header, query_token)
            .map(|(caller, _)| caller)
    }

    /// [`Authenticator::authenticate`], with the token's `exp`
    /// ([`Authenticator::verify_until`]).
    pub fn authenticate_until(
        &self,
        header: Option<&str>,
        query_token: Option<&str>,
    ) -> Result<(Caller, Option<i64>), ApiError> {
        let token = match (header, query_token) {
            (Some(h), _) => h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or_else(|| {
                    ApiError::Unauthorized("Authorization must be `Bearer <token>`".into())
                })?,
            (None, Some(t)) => t,
            (None, None) => return Err(ApiError::Unauthorized("missing bearer token".into())),
        };
        self.verify_until(token.trim())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        Authenticator::new("a-test-secret-of-some-length", "a-test-service-key-0000")
    }

    #[test]
    fn minted_tokens_verify_and_carry_the_role() {
        let a = auth();
        let token = a.mint("alice", Role::Customer, 60).unwrap();
        let caller = a.verify(&token).unwrap();
        assert_eq!(caller.user_id, "alice");
        assert_eq!(caller.role, Role::Customer);
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let a = auth();
        let expired = a.mint("alice", Role::Customer, -60).unwrap();
        assert!(
            matches!(a.verify(&expired), Err(ApiError::Unauthorized(m)) if m.contains("expired"))
        );
        let other = Authenticator::new("another-secret-entirely", "x".repeat(16).as_str());
        let foreign = other.mint("alice", Role::Operator, 60).unwrap();
        assert!(a.verify(&foreign).is_err());
    }

    #[test]
    fn a_token_is_refused_before_its_nbf_beyond_the_leeway() {
        let a = auth();
        let now = jiff::Timestamp::now().as_second();
        let leeway = CLOCK_SKEW_LEEWAY_SECONDS as i64;
        let signed = |nbf: i64| {
            let claims = serde_json::json!({
                "sub": "alice", "role": "customer", "exp": now + 3600, "nbf": nbf,
            });
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &a.encoding).unwrap()
        };
        let early = a.verify(&signed(now + leeway + 60));
        assert!(matches!(early, Err(ApiError::Unauthorized(m)) if m.contains("not valid yet")));
        // Within the leeway (a clock slightly behind the issuer's) and in the past: fine.
        assert!(a.verify(&signed(now + leeway / 2)).is_ok());
        assert!(a.verify(&signed(now - 60)).is_ok());
    }

    #[test]
    fn service_key_is_a_service_caller() {
        let caller = auth()
            .authenticate(Some("Bearer a-test-service-key-0000"), None)
            .unwrap();
        assert_eq!(caller.role, Role::Service);
        assert!(auth().authenticate(Some("Basic abc"), None).is_err());
        assert!(auth().authenticate(None, None).is_err());
    }

    #[test]
    fn only_the_exact_service_key_is_the_service() {
        // One byte off, two bytes off by the same bit (their differences
        // cancel out under xor), a prefix, and the key with more after it:
        // each is just a bad token (the comparison must cover every byte and
        // the length).
        for near_miss in [
            "a-test-service-key-0001",
            "a-test-service-key-0011",
            "a-test-service-key-000",
            "a-test-service-key-00000",
            "a",
        ] {
            let refused = auth().authenticate(Some(&format!("Bearer {near_miss}")), None);
            assert!(
                matches!(refused, Err(ApiError::Unauthorized(_))),
                "{near_miss}: {refused:?}"
            );
        }
    }
}
