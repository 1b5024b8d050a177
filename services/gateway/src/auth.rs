//! Tokens: verifying the JWTs clients present and minting new ones.
//!
//! Two kinds of keys may be configured side by side, and a token's header
//! picks: `alg: HS256` is checked against the shared secret (whoever
//! verifies can also mint), `RS256` and `EdDSA` against the public key its
//! `kid` names in a JWK Set ([`jwks`]), so token minters hold a private key
//! and gateways only public ones. Which algorithms are accepted at all is
//! configured too; a token is never checked with a key of another family
//! than its `alg` says.

mod jwks;

use std::time::{SystemTime, UNIX_EPOCH};

use collab_ephemeral::TokenRef;
use collab_protocol::Claims;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};

pub use jwks::{JWKS_ALGORITHMS, JwksError, JwksOptions, JwksSource, KeySetMetrics};

use jwks::KeySet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("invalid token: no key with kid {0:?} (unknown or rotated out)")]
    UnknownKey(String),
    #[error("token expired")]
    Expired,
    #[error("token revoked")]
    Revoked,
}

/// How tokens are verified.
#[derive(Debug, Clone)]
pub struct AuthOptions {
    /// The HS256 secret; `None`: HS256 tokens are refused.
    pub secret: Option<Vec<u8>>,
    /// The secret was generated, not configured, and the dev token
    /// endpoint is open.
    pub dev_mode: bool,
    /// Public keys for RS256 and EdDSA tokens.
    pub jwks: Option<JwksOptions>,
    /// The `alg`s a token may have; others are refused whatever the key.
    pub algorithms: Vec<Algorithm>,
}

/// The HS256 secret, as both halves.
#[derive(Clone)]
struct SharedSecret {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Verifies tokens (and mints HS256 ones); cheap to clone.
#[derive(Clone)]
pub struct Auth {
    secret: Option<SharedSecret>,
    jwks: Option<KeySet>,
    algorithms: Vec<Algorithm>,
    dev_mode: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("dev_mode", &self.dev_mode)
            .field("algorithms", &self.algorithms)
            .field("jwks", &self.jwks.is_some())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// HS256 with `secret` only. `dev_mode`: the secret was generated, not
    /// configured, and the dev token endpoint is open.
    pub fn new(secret: &[u8], dev_mode: bool) -> Auth {
        Auth {
            secret: Some(SharedSecret {
                encoding: EncodingKey::from_secret(secret),
                decoding: DecodingKey::from_secret(secret),
            }),
            jwks: None,
            algorithms: vec![Algorithm::HS256],
            dev_mode,
        }
    }

    /// As `options` say; loads the JWKS once (failing if it cannot) and
    /// keeps refreshing it in the background. Call it inside a tokio
    /// runtime.
    pub async fn build(options: AuthOptions, metrics: KeySetMetrics) -> Result<Auth, JwksError> {
        let jwks = match options.jwks {
            Some(jwks) => Some(KeySet::load(jwks, metrics).await?),
            None => None,
        };
        let mut auth = match options.secret {
            Some(secret) => Auth::new(&secret, options.dev_mode),
            None => Auth {
                secret: None,
                jwks: None,
                algorithms: Vec::new(),
                dev_mode: options.dev_mode,
            },
        };
        auth.jwks = jwks;
        auth.algorithms = options.algorithms;
        Ok(auth)
    }

    pub fn dev_mode(&self) -> bool {
        self.dev_mode
    }

    /// Checks signature, expiry and the required claims, with the key the
    /// token's `alg` (and for RS256/EdDSA its `kid`) selects. A `kid` the
    /// JWKS does not have waits for the set to be reloaded (bounded, and
    /// shared with every token that asks meanwhile), so a key just rotated
    /// in at the issuer works on its first use.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let alg = header.alg;
        if !self.algorithms.contains(&alg) {
            return Err(AuthError::Invalid(format!(
                "algorithm {alg:?} is not accepted here"
            )));
        }
        let key = match alg {
            Algorithm::HS256 => match &self.secret {
                Some(secret) => secret.decoding.clone(),
                None => return Err(AuthError::Invalid("HS256 is not accepted here".into())),
            },
            Algorithm::RS256 | Algorithm::EdDSA => {
                let Some(jwks) = &self.jwks else {
                    return Err(AuthError::Invalid(format!(
                        "{alg:?} needs a JWKS, and none is configured"
                    )));
                };
                let Some(kid) = header.kid else {
                    return Err(AuthError::Invalid(format!("a {alg:?} token needs a kid")));
                };
                let Some(found) = jwks.find(&kid).await else {
                    return Err(AuthError::UnknownKey(kid));
                };
                if found.algorithm != alg {
                    return Err(AuthError::Invalid(format!(
                        "key {kid:?} is for {:?}, the token says {alg:?}",
                        found.algorithm
                    )));
                }
                found.key
            }
            _ => {
                return Err(AuthError::Invalid(format!(
                    "algorithm {alg:?} is not accepted here"
                )));
            }
        };
        let mut validation = Validation::new(alg);
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Expiry is exact: a token past its `exp` is refused.
        validation.leeway = 0;
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => Err(AuthError::Expired),
                _ => Err(invalid(e)),
            },
        }
    }

    /// Signs `claims` with the HS256 secret.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        let Some(secret) = &self.secret else {
            return Err(AuthError::Invalid("no secret to sign with".into()));
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &secret.encoding)
            .map_err(invalid)
    }
}

fn invalid(e: jsonwebtoken::errors::Error) -> AuthError {
    AuthError::Invalid(e.to_string())
}

/// A private key that signs RS256 or EdDSA tokens with its `kid`: what a
/// token minter holds when the gateways verify against a JWKS.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    #[error("not an RSA or Ed25519 private key in PEM (PKCS#1 or PKCS#8)")]
    NotAKey,
    #[error("the kid must not be empty")]
    EmptyKid,
    #[error("cannot derive the public key: {0}")]
    PublicKey(String),
}

impl Signer {
    /// An RSA key signs RS256, an Ed25519 key EdDSA.
    pub fn from_pem(pem: &[u8], kid: impl Into<String>) -> Result<Signer, SignerError> {
        let kid = kid.into();
        if kid.trim().is_empty() {
            return Err(SignerError::EmptyKid);
        }
        let (key, algorithm) = if let Ok(key) = EncodingKey::from_rsa_pem(pem) {
            (key, Algorithm::RS256)
        } else if let Ok(key) = EncodingKey::from_ed_pem(pem) {
            (key, Algorithm::EdDSA)
        } else {
            return Err(SignerError::NotAKey);
        };
        Ok(Signer {
            key,
            algorithm,
            kid,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs `claims`, with `kid` in the header.
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(invalid)
    }

    /// The public half, as a JWK for the gateways' key set.
    pub fn public_jwk(&self) -> Result<Jwk, SignerError> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm)
            .map_err(|e| SignerError::PublicKey(e.to_string()))?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(jwk)
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

/// Verifies a token (signature, expiry, claims) and refuses a revoked
/// one: the one check of a token, at the WebSocket upgrade, on every HTTP
/// request and for a `refresh` on an open connection.
pub(crate) async fn check_token(
    auth: &Auth,
    revocations: &dyn collab_ephemeral::Revocations,
    token: &str,
) -> Result<Claims, AuthError> {
    let claims = auth.verify(token).await?;
    if revocations.is_revoked(&token_ref(&claims)) {
        return Err(AuthError::Revoked);
    }
    Ok(claims)
}

/// What a revocation check needs of `claims`.
pub(crate) fn token_ref(claims: &Claims) -> TokenRef<'_> {
    TokenRef {
        user: &claims.sub,
        jti: claims.jti.as_deref(),
        issued_at: claims.iat,
    }
}

/// The time since the Unix epoch, to the clock's precision.
pub(crate) fn unix_now() -> std::time::Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Claims for `sub` valid for ten minutes, and nothing else: tests add
/// what they need with `..test_claims(sub)`.
#[cfg(test)]
pub(crate) fn test_claims(sub: &str) -> collab_protocol::Claims {
    collab_protocol::Claims {
        sub: sub.into(),
        exp: now_secs() + 600,
        name: None,
        rooms: None,
        scope: None,
        jti: None,
        iat: None,
    }
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

    #[tokio::test]
    async fn round_trip_and_refusals() {
        let auth = Auth::new(b"secret-one", false);
        let minted = claims(now_secs() + 60);
        let token = auth.mint(&minted).expect("mints");
        assert_eq!(auth.verify(&token).await, Ok(minted));
        let expired = auth.mint(&claims(now_secs() - 1)).expect("mints");
        assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));
        let other = Auth::new(b"secret-two", false);
        assert!(matches!(
            other.verify(&token).await,
            Err(AuthError::Invalid(_))
        ));
        assert_eq!(auth.verify("").await, Err(AuthError::Missing));
        assert!(matches!(
            auth.verify("not.a.jwt").await,
            Err(AuthError::Invalid(_))
        ));
    }

    const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keys");

    fn signer(file: &str, kid: &str) -> Signer {
        let pem = std::fs::read(std::path::Path::new(KEYS).join(file)).expect("a test key");
        Signer::from_pem(&pem, kid).expect("an RSA or Ed25519 key")
    }

    /// HS256 with `secret` beside a JWKS file holding `signers`' keys.
    async fn both(secret: &[u8], signers: &[&Signer], algorithms: &[Algorithm]) -> Auth {
        let file = tempfile::NamedTempFile::new().expect("a temp file");
        let set = jsonwebtoken::jwk::JwkSet {
            keys: signers
                .iter()
                .map(|s| s.public_jwk().expect("a public key"))
                .collect(),
        };
        std::fs::write(file.path(), serde_json::to_vec(&set).expect("json")).expect("writes");
        let options = AuthOptions {
            secret: Some(secret.to_vec()),
            dev_mode: false,
            jwks: Some(JwksOptions::new(
                JwksSource::File(file.path().to_owned()),
                std::time::Duration::from_secs(3600),
            )),
            algorithms: algorithms.to_vec(),
        };
        Auth::build(options, KeySetMetrics::default())
            .await
            .expect("builds")
    }

    const ALL: [Algorithm; 3] = [Algorithm::HS256, Algorithm::RS256, Algorithm::EdDSA];

    #[tokio::test]
    async fn rs256_and_eddsa_tokens_are_checked_with_the_key_their_kid_names() {
        let rsa = signer("rsa-1.pem", "r1");
        let ed = signer("ed25519-1.pem", "e1");
        assert_eq!(rsa.algorithm(), Algorithm::RS256);
        assert_eq!(ed.algorithm(), Algorithm::EdDSA);
        let auth = both(b"s3cret", &[&rsa, &ed], &ALL).await;
        let minted = claims(now_secs() + 60);
        for token in [
            auth.mint(&minted).expect("mints"),
            rsa.mint(&minted).expect("mints"),
            ed.mint(&minted).expect("mints"),
        ] {
            assert_eq!(auth.verify(&token).await, Ok(minted.clone()));
        }
        let expired = rsa.mint(&claims(now_secs() - 1)).expect("mints");
        assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));

        // Another private key under a known kid: a bad signature.
        let impostor = signer("rsa-2.pem", "r1").mint(&minted).expect("mints");
        assert!(matches!(
            auth.verify(&impostor).await,
            Err(AuthError::Invalid(_))
        ));
        // An EdDSA token naming the RSA key.
        let crossed = signer("ed25519-2.pem", "r1").mint(&minted).expect("mints");
        let Err(AuthError::Invalid(message)) = auth.verify(&crossed).await else {
            panic!("a token checked with a key of another algorithm");
        };
        assert!(message.contains("RS256"), "{message}");
        let unknown = signer("rsa-2.pem", "r9").mint(&minted).expect("mints");
        assert_eq!(
            auth.verify(&unknown).await,
            Err(AuthError::UnknownKey("r9".into()))
        );
        let without_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &minted,
            &EncodingKey::from_rsa_pem(
                &std::fs::read(std::path::Path::new(KEYS).join("rsa-1.pem")).expect("a key"),
            )
            .expect("a key"),
        )
        .expect("encodes");
        assert!(matches!(
            auth.verify(&without_kid).await,
            Err(AuthError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn only_the_configured_algorithms_are_accepted() {
        let rsa = signer("rsa-1.pem", "r1");
        let ed = signer("ed25519-1.pem", "e1");
        let minted = claims(now_secs() + 60);
        let rs256 = rsa.mint(&minted).expect("mints");
        let eddsa = ed.mint(&minted).expect("mints");
        // HS256 only: no JWKS.
        let shared = Auth::new(b"s3cret", false);
        assert!(matches!(
            shared.verify(&rs256).await,
            Err(AuthError::Invalid(_))
        ));
        let hs256 = shared.mint(&minted).expect("mints");

        let rsa_only = both(b"s3cret", &[&rsa, &ed], &[Algorithm::RS256]).await;
        assert!(rsa_only.verify(&rs256).await.is_ok());
        assert!(matches!(
            rsa_only.verify(&eddsa).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            rsa_only.verify(&hs256).await,
            Err(AuthError::Invalid(_))
        ));

        // Public keys only: no secret to check HS256 with, or to sign.
        let file = tempfile::NamedTempFile::new().expect("a temp file");
        let set = jsonwebtoken::jwk::JwkSet {
            keys: vec![ed.public_jwk().expect("jwk")],
        };
        std::fs::write(file.path(), serde_json::to_vec(&set).expect("json")).expect("writes");
        let public_only = Auth::build(
            AuthOptions {
                secret: None,
                dev_mode: false,
                jwks: Some(JwksOptions::new(
                    JwksSource::File(file.path().to_owned()),
                    std::time::Duration::from_secs(3600),
                )),
                algorithms: ALL.to_vec(),
            },
            KeySetMetrics::default(),
        )
        .await
        .expect("builds");
        assert!(public_only.verify(&eddsa).await.is_ok());
        assert!(matches!(
            public_only.verify(&hs256).await,
            Err(AuthError::Invalid(_))
        ));
        assert!(public_only.mint(&minted).is_err());
    }

    #[test]
    fn a_signer_needs_a_private_key_and_a_kid() {
        assert_eq!(
            Signer::from_pem(
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "k"
            )
            .err(),
            Some(SignerError::NotAKey)
        );
        let pem = std::fs::read(std::path::Path::new(KEYS).join("ed25519-1.pem")).expect("a key");
        assert_eq!(
            Signer::from_pem(&pem, " ").err(),
            Some(SignerError::EmptyKid)
        );
        let jwk = signer("ed25519-1.pem", "e1").public_jwk().expect("jwk");
        let json = serde_json::to_value(&jwk).expect("json");
        assert_eq!(json["kid"], "e1");
        assert_eq!(json["use"], "sig");
        assert_eq!(json["alg"], "EdDSA");
        assert!(json.get("d").is_none(), "the private part leaked: {json}");
    }

    #[tokio::test]
    async fn exp_and_sub_are_required() {
        let auth = Auth::new(b"s", false);
        let no_exp = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "ann"}),
            &EncodingKey::from_secret(b"s"),
        )
        .expect("encodes");
        assert!(auth.verify(&no_exp).await.is_err());
        let no_sub = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": now_secs() + 60}),
            &EncodingKey::from_secret(b"s"),
        )
        .expect("encodes");
        assert!(auth.verify(&no_sub).await.is_err());
    }
}
