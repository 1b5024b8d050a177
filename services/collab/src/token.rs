//! `collab token`: mints a JWT that a collab server with the same secret
//! accepts, or with `--key` one signed by a private key whose public half
//! is in the servers' JWKS; `collab token jwks` prints that JWKS;
//! `collab token revoke` revokes tokens through the Redis every gateway of
//! a cluster follows.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use collab_ephemeral::{
    EphemeralError, EphemeralMetrics, RedisClient, RedisOptions, RedisRevocations, Revocations,
};
use collab_gateway::{Auth, Signer, new_token_id, now_secs};
use collab_protocol::http::Revoked;
use collab_protocol::{Access, Claims, RoomId, Scope, UserId};

/// `"*"` in the `rooms` claim: every room.
pub const ALL_ROOMS: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("bad user id: {0}")]
    User(String),
    #[error("--ttl-secs must be at least 1")]
    Ttl,
    #[error(
        "--ttl-secs {ttl} is longer than gateway.max_token_lifetime_secs ({max}): the token would outlive its revocation"
    )]
    TtlTooLong { ttl: u64, max: u64 },
    #[error("room {0} is given twice")]
    DuplicateRoom(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
    #[error("cannot read the key {path}: {error}")]
    ReadKey { path: PathBuf, error: String },
    #[error("the key {path}: {error}")]
    BadKey { path: PathBuf, error: String },
}

/// One `--room ROOM=read|write`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomGrant {
    /// A room id, or `*`.
    pub room: String,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected ROOM=read or ROOM=write (ROOM a room id or *), got {0:?}")]
pub struct BadGrant(String);

impl FromStr for RoomGrant {
    type Err = BadGrant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadGrant(s.to_owned());
        let (room, access) = s.rsplit_once('=').ok_or_else(bad)?;
        let access = match access {
            "read" => Access::Read,
            "write" => Access::Write,
            _ => return Err(bad()),
        };
        if room != ALL_ROOMS && RoomId::parse(room).is_err() {
            return Err(bad());
        }
        Ok(RoomGrant {
            room: room.to_owned(),
            access,
        })
    }
}

impl fmt::Display for RoomGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        write!(f, "{}={access}", self.room)
    }
}

/// What the token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub user: String,
    pub name: Option<String>,
    pub ttl: Duration,
    /// The longest lifetime the gateways keep a revocation for
    /// (`gateway.max_token_lifetime_secs`).
    pub max_ttl: Duration,
    /// Empty: write access to every room (no `rooms` claim).
    pub rooms: Vec<RoomGrant>,
    /// The `admin` scope: the operators' inspection endpoints.
    pub admin: bool,
    /// The `service` scope: a backend's publishing into rooms.
    pub service: bool,
}

/// The `scope` claim: the scopes asked for, space-separated.
fn scope(request: &TokenRequest) -> Option<String> {
    let scopes: Vec<&str> = [
        request.admin.then_some(Scope::Admin),
        request.service.then_some(Scope::Service),
    ]
    .into_iter()
    .flatten()
    .map(Scope::as_str)
    .collect();
    (!scopes.is_empty()).then(|| scopes.join(" "))
}

/// The claims for `request`, expiring `ttl` after `now` (seconds since the
/// Unix epoch).
pub fn claims(request: &TokenRequest, now: u64) -> Result<Claims, TokenError> {
    UserId::parse(request.user.as_str()).map_err(|e| TokenError::User(e.to_string()))?;
    if request.ttl.as_secs() == 0 {
        return Err(TokenError::Ttl);
    }
    if request.ttl > request.max_ttl {
        return Err(TokenError::TtlTooLong {
            ttl: request.ttl.as_secs(),
            max: request.max_ttl.as_secs(),
        });
    }
    let rooms = if request.rooms.is_empty() {
        None
    } else {
        let mut rooms = HashMap::new();
        for grant in &request.rooms {
            if rooms.insert(grant.room.clone(), grant.access).is_some() {
                return Err(TokenError::DuplicateRoom(grant.room.clone()));
            }
        }
        Some(rooms)
    };
    Ok(Claims {
        sub: request.user.clone(),
        exp: now.saturating_add(request.ttl.as_secs()),
        name: request.name.clone(),
        rooms,
        scope: scope(request),
        jti: Some(new_token_id()),
        iat: Some(now),
    })
}

/// Signs a token for `request` with `secret`.
pub fn mint(secret: &[u8], request: &TokenRequest) -> Result<String, TokenError> {
    let claims = claims(request, now_secs())?;
    // Minting does not depend on dev mode; only the server's endpoint does.
    Auth::new(secret, false)
        .mint(&claims)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// One private key file and the `kid` it goes by: `--key KID=FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    pub kid: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected KID=FILE (a key id, then a PEM private key file), got {0:?}")]
pub struct BadKeyFile(String);

impl FromStr for KeyFile {
    type Err = BadKeyFile;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('=') {
            Some((kid, path)) if !kid.trim().is_empty() && !path.is_empty() => Ok(KeyFile {
                kid: kid.trim().to_owned(),
                path: PathBuf::from(path),
            }),
            _ => Err(BadKeyFile(s.to_owned())),
        }
    }
}

impl KeyFile {
    /// Reads the key: RSA signs RS256, Ed25519 EdDSA.
    pub fn signer(&self) -> Result<Signer, TokenError> {
        let pem = std::fs::read(&self.path).map_err(|e| TokenError::ReadKey {
            path: self.path.clone(),
            error: e.to_string(),
        })?;
        Signer::from_pem(&pem, self.kid.clone()).map_err(|e| TokenError::BadKey {
            path: self.path.clone(),
            error: e.to_string(),
        })
    }
}

/// Signs a token for `request` with `key`, its `kid` in the header.
pub fn mint_with_key(key: &KeyFile, request: &TokenRequest) -> Result<String, TokenError> {
    let claims = claims(request, now_secs())?;
    key.signer()?
        .mint(&claims)
        .map_err(|e| TokenError::Sign(e.to_string()))
}

/// The JWK Set of the public halves of `keys`, for the gateways'
/// `auth.jwks`: pretty JSON.
pub fn jwks(keys: &[KeyFile]) -> Result<String, TokenError> {
    let mut public = Vec::new();
    for key in keys {
        let jwk = key.signer()?.public_jwk().map_err(|e| TokenError::BadKey {
            path: key.path.clone(),
            error: e.to_string(),
        })?;
        public.push(jwk);
    }
    let set = jsonwebtoken::jwk::JwkSet { keys: public };
    serde_json::to_string_pretty(&set).map_err(|e| TokenError::Sign(e.to_string()))
}

// === revoke ===

/// What `collab token revoke` revokes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// `--jti ID`: one token.
    Token(String),
    /// `--user U [--before TIME]`: every token of the user issued before
    /// the time (tokens without `iat` too).
    User { user: UserId, issued_before: u64 },
}

#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    #[error(
        "collab token revoke needs the Redis the gateways share: give --redis redis://host:port \
         (or COLLAB_REDIS); a collab serve without redis keeps its revocations in its own \
         memory: use POST /v1/admin/revocations on it with an admin token"
    )]
    NoRedis,
    #[error("give --jti ID, or --user USER [--before TIME]")]
    Target,
    #[error("bad user id: {0}")]
    User(String),
    #[error(
        "bad --before {0:?}: seconds since the Unix epoch, or an RFC 3339 time (2025-01-31T12:00:00Z)"
    )]
    Before(String),
    #[error("--before must not be in the future")]
    BeforeInFuture,
    #[error("redis did not answer within {0:?}: nothing was revoked")]
    Unreachable(Duration),
    #[error("redis did not take the revocation: {0}")]
    Redis(EphemeralError),
}

impl RevokeError {
    /// Whether the command line is at fault (exit code 64).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            RevokeError::NoRedis
                | RevokeError::Target
                | RevokeError::User(_)
                | RevokeError::Before(_)
                | RevokeError::BeforeInFuture
                | RevokeError::Redis(EphemeralError::BadUrl(_))
        )
    }
}

/// How long to wait for Redis to answer before giving up.
const REVOKE_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RevokeTarget {
    /// The target the flags name: `jti`, or `user` with `before` (seconds
    /// since the Unix epoch or RFC 3339; default `now`).
    pub fn from_flags(
        jti: Option<String>,
        user: Option<String>,
        before: Option<&str>,
        now: u64,
    ) -> Result<RevokeTarget, RevokeError> {
        match (jti, user) {
            (Some(jti), None) if !jti.is_empty() && before.is_none() => {
                Ok(RevokeTarget::Token(jti))
            }
            (None, Some(user)) => {
                let user = UserId::parse(user).map_err(|e| RevokeError::User(e.to_string()))?;
                let issued_before = match before {
                    None => now,
                    Some(text) => parse_time(text)?,
                };
                if issued_before > now {
                    return Err(RevokeError::BeforeInFuture);
                }
                Ok(RevokeTarget::User {
                    user,
                    issued_before,
                })
            }
            _ => Err(RevokeError::Target),
        }
    }
}

/// Seconds since the Unix epoch, or an RFC 3339 time.
fn parse_time(text: &str) -> Result<u64, RevokeError> {
    let bad = || RevokeError::Before(text.to_owned());
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(secs);
    }
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|_| bad())?;
    u64::try_from(time.unix_timestamp()).map_err(|_| bad())
}

/// Revokes `target` in the Redis at `redis_url`: every gateway following it
/// refuses the token(s) from now on and closes their sockets. A revocation
/// of one token is kept for `max_token_lifetime` (its expiry is not known
/// here); of a user's tokens, until `max_token_lifetime` after the cut-off.
pub async fn revoke(
    redis_url: &str,
    max_token_lifetime: Duration,
    target: RevokeTarget,
) -> Result<Revoked, RevokeError> {
    let client = RedisClient::connect(RedisOptions::new(redis_url), EphemeralMetrics::default())
        .map_err(RevokeError::Redis)?;
    if !client.wait_until_up(REVOKE_CONNECT_TIMEOUT).await {
        return Err(RevokeError::Unreachable(REVOKE_CONNECT_TIMEOUT));
    }
    let revocations = RedisRevocations::new(client, max_token_lifetime);
    let lifetime = max_token_lifetime.as_secs();
    match target {
        RevokeTarget::Token(jti) => {
            let expires_at = now_secs().saturating_add(lifetime);
            revocations
                .revoke_token(&jti, expires_at)
                .await
                .map_err(RevokeError::Redis)?;
            Ok(Revoked::Token { jti, expires_at })
        }
        RevokeTarget::User {
            user,
            issued_before,
        } => {
            revocations
                .revoke_user(&user, issued_before)
                .await
                .map_err(RevokeError::Redis)?;
            Ok(Revoked::User {
                user,
                issued_before,
                expires_at: issued_before.saturating_add(lifetime),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rooms: &[&str]) -> TokenRequest {
        TokenRequest {
            user: "ann".into(),
            name: Some("Ann".into()),
            ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            rooms: rooms
                .iter()
                .map(|r| r.parse().expect("valid grant"))
                .collect(),
            admin: false,
            service: false,
        }
    }

    #[test]
    fn grants_parse() {
        let grant: RoomGrant = "board-1=read".parse().expect("parses");
        assert_eq!(grant.room, "board-1");
        assert_eq!(grant.access, Access::Read);
        assert_eq!(grant.to_string(), "board-1=read");
        assert_eq!(
            "*=write".parse::<RoomGrant>().map(|g| g.access),
            Ok(Access::Write)
        );
        for bad in ["board", "board=admin", "a/b=read", "=read", "board=READ"] {
            assert!(bad.parse::<RoomGrant>().is_err(), "{bad}");
        }
    }

    #[test]
    fn claims_carry_the_request() {
        let c = claims(&request(&["r1=read", "*=write"]), 1000).expect("valid");
        assert_eq!(c.sub, "ann");
        assert_eq!(c.exp, 1060);
        assert_eq!(c.name.as_deref(), Some("Ann"));
        let rooms = c.rooms.expect("rooms claim");
        assert_eq!(rooms.get("r1"), Some(&Access::Read));
        assert_eq!(rooms.get("*"), Some(&Access::Write));
        assert_eq!(claims(&request(&[]), 0).expect("valid").rooms, None);
        assert_eq!(c.scope, None);
        // Issued now, with an id of its own for revoking it.
        assert_eq!(c.iat, Some(1000));
        let jti = c.jti.expect("a jti");
        assert_eq!(jti.len(), 32, "{jti}");
        assert_ne!(claims(&request(&[]), 1000).expect("valid").jti, Some(jti));
    }

    #[test]
    fn revoke_targets_parse_from_the_flags() {
        let now = 1_700_000_000;
        assert_eq!(
            RevokeTarget::from_flags(Some("t1".into()), None, None, now).expect("jti"),
            RevokeTarget::Token("t1".into())
        );
        let user =
            |before: Option<&str>| RevokeTarget::from_flags(None, Some("ann".into()), before, now);
        let ann = UserId::parse("ann").expect("user");
        assert_eq!(
            user(None).expect("now"),
            RevokeTarget::User {
                user: ann.clone(),
                issued_before: now
            }
        );
        assert_eq!(
            user(Some("1600000000")).expect("seconds"),
            RevokeTarget::User {
                user: ann.clone(),
                issued_before: 1_600_000_000
            }
        );
        assert_eq!(
            user(Some("2023-11-14T22:13:20Z")).expect("rfc 3339"),
            RevokeTarget::User {
                user: ann,
                issued_before: 1_700_000_000
            }
        );
        assert!(matches!(
            user(Some("yesterday")),
            Err(RevokeError::Before(_))
        ));
        assert!(matches!(
            user(Some("1700000001")),
            Err(RevokeError::BeforeInFuture)
        ));
        for (jti, user, before) in [
            (None, None, None),
            (Some("t"), Some("ann"), None),
            (Some(""), None, None),
            (Some("t"), None, Some("5")),
        ] {
            let target =
                RevokeTarget::from_flags(jti.map(Into::into), user.map(Into::into), before, now);
            assert!(
                matches!(target, Err(RevokeError::Target)),
                "{jti:?} {user:?} {before:?}"
            );
        }
        assert!(matches!(
            RevokeTarget::from_flags(None, Some(String::new()), None, now),
            Err(RevokeError::User(_))
        ));
    }

    #[tokio::test]
    async fn admin_tokens_carry_the_admin_scope() {
        let admin = TokenRequest {
            admin: true,
            ..request(&[])
        };
        let c = claims(&admin, 0).expect("valid");
        assert_eq!(c.scope.as_deref(), Some("admin"));
        assert!(c.has_scope(Scope::Admin));
        assert!(
            !claims(&request(&[]), 0)
                .expect("valid")
                .has_scope(Scope::Admin)
        );
        let verified = Auth::new(b"s3cret", false)
            .verify(&mint(b"s3cret", &admin).expect("mints"))
            .await
            .expect("verifies");
        assert!(verified.has_scope(Scope::Admin));
    }

    #[test]
    fn service_tokens_carry_the_service_scope() {
        let service = TokenRequest {
            service: true,
            ..request(&[])
        };
        let c = claims(&service, 0).expect("valid");
        assert_eq!(c.scope.as_deref(), Some("service"));
        assert!(c.has_scope(Scope::Service));
        assert!(!c.has_scope(Scope::Admin));
        let both = TokenRequest {
            admin: true,
            ..service
        };
        let c = claims(&both, 0).expect("valid");
        assert_eq!(c.scope.as_deref(), Some("admin service"));
        assert!(c.has_scope(Scope::Service) && c.has_scope(Scope::Admin));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = request(&[]);
        r.user = String::new();
        assert!(matches!(claims(&r, 0), Err(TokenError::User(_))));
        let mut r = request(&[]);
        r.ttl = Duration::ZERO;
        assert_eq!(claims(&r, 0), Err(TokenError::Ttl));
        let mut r = request(&[]);
        r.ttl = Duration::from_secs(3601);
        assert_eq!(
            claims(&r, 0),
            Err(TokenError::TtlTooLong {
                ttl: 3601,
                max: 3600
            })
        );
        assert_eq!(
            claims(&request(&["a=read", "a=write"]), 0),
            Err(TokenError::DuplicateRoom("a".into()))
        );
    }

    #[tokio::test]
    async fn a_minted_token_verifies_with_the_same_secret() {
        let token = mint(b"s3cret", &request(&["r1=write"])).expect("mints");
        let verified = Auth::new(b"s3cret", false)
            .verify(&token)
            .await
            .expect("verifies");
        assert_eq!(verified.sub, "ann");
        assert!(Auth::new(b"other", false).verify(&token).await.is_err());
    }

    fn test_key(file: &str, kid: &str) -> KeyFile {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/testdata/keys");
        format!("{kid}={}", dir.join(file).display())
            .parse()
            .expect("KID=FILE")
    }

    #[tokio::test]
    async fn a_key_signs_tokens_its_printed_jwks_verifies() {
        let rsa = test_key("rsa-1.pem", "r1");
        let ed = test_key("ed25519-1.pem", "e1");
        let jwks = jwks(&[rsa.clone(), ed.clone()]).expect("a jwks");
        assert!(!jwks.contains("\"d\""), "a private part in {jwks}");
        let file = tempfile::NamedTempFile::new().expect("a temp file");
        std::fs::write(file.path(), &jwks).expect("writes");
        let auth = Auth::build(
            collab_gateway::AuthOptions {
                secret: None,
                dev_mode: false,
                jwks: Some(collab_gateway::JwksOptions::new(
                    collab_gateway::JwksSource::File(file.path().to_owned()),
                    Duration::from_secs(3600),
                )),
                algorithms: collab_gateway::JWKS_ALGORITHMS.to_vec(),
            },
            collab_gateway::KeySetMetrics::default(),
        )
        .await
        .expect("the printed jwks loads");
        for key in [&rsa, &ed] {
            let token = mint_with_key(key, &request(&[])).expect("mints");
            let header = jsonwebtoken::decode_header(&token).expect("a header");
            assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
            assert_eq!(auth.verify(&token).await.expect("verifies").sub, "ann");
        }
        // The secret's tokens are not among them.
        let hs256 = mint(b"s3cret", &request(&[])).expect("mints");
        assert!(auth.verify(&hs256).await.is_err());
    }

    #[test]
    fn key_files_are_kid_equals_path() {
        assert!("=a.pem".parse::<KeyFile>().is_err());
        assert!("k1=".parse::<KeyFile>().is_err());
        assert!("a.pem".parse::<KeyFile>().is_err());
        let missing: KeyFile = "k1=/nonexistent/key.pem".parse().expect("parses");
        assert!(matches!(
            mint_with_key(&missing, &request(&[])),
            Err(TokenError::ReadKey { .. })
        ));
        let not_a_key = test_key("README.md", "k1");
        assert!(matches!(
            mint_with_key(&not_a_key, &request(&[])),
            Err(TokenError::BadKey { .. })
        ));
    }
}
