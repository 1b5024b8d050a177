//! Tokens: verifying the JWTs clients present and minting new ones.

use std::time::{SystemTime, UNIX_EPOCH};

use collab_ephemeral::TokenRef;
use collab_protocol::Claims;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
}

/// HS256 with a shared secret.
#[derive(Clone)]
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    dev_mode: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("dev_mode", &self.dev_mode)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// `dev_mode`: the secret was generated, not configured, and the dev
    /// token endpoint is open.
    pub fn new(secret: &[u8], dev_mode: bool) -> Auth {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is exact: a token past its `exp` is refused.
        validation.leeway = 0;
        Auth {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            dev_mode,
        }
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Checks signature, expiry and the required claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                _ => Err(AuthError::Invalid(e.to_string())),
            },
        }
    }

    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

/// The token a request carries: `Authorization: Bearer …`, else the
/// `token` query parameter (browsers cannot set headers on WebSockets).
pub(crate) fn request_token<'a>(
    headers: &'a axum::http::HeaderMap,
    query_token: Option<&'a str>,
) -> Option<&'a str> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    header.or(query_token)
}

/// A fresh token id (`jti`): 128 random bits in hex, unique for any
/// practical purpose.
pub fn new_token_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What a revocation check needs of `claims`.
pub(crate) fn token_ref(claims: &Claims) -> TokenRef<'_> {
    TokenRef {
        user: &claims.sub,
        jti: claims.jti.as_deref(),
        issued_at: claims.iat,
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "ann".into(),
            exp,
            name: Some("Ann".into()),
            rooms: None,
            scope: None,
            jti: Some(new_token_id()),
            iat: Some(now_secs()),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let auth = Auth::new(b"secret-one", false);
        let minted = claims(now_secs() + 60);
        let token = auth.mint(&minted).expect("mints");
        assert_eq!(auth.verify(&token), Ok(minted));
        let expired = auth.mint(&claims(now_secs() - 1)).expect("mints");
        assert_eq!(auth.verify(&expired), Err(AuthError::Expired));
        let other = Auth::new(b"secret-two", false);
        assert!(matches!(other.verify(&token), Err(AuthError::Invalid(_))));
        assert_eq!(auth.verify(""), Err(AuthError::Missing));
        assert!(matches!(
            auth.verify("not.a.jwt"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn exp_and_sub_are_required() {
        let auth = Auth::new(b"s", false);
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann"}),
            &EncodingKey::from_secret(b"s"),
        )
        .expect("encodes");
        assert!(auth.verify(&no_exp).is_err());
        let no_sub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": now_secs() + 60}),
            &EncodingKey::from_secret(b"s"),
        )
        .expect("encodes");
        assert!(auth.verify(&no_sub).is_err());
    }
}
