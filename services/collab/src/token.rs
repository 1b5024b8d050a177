//! `collab token`: mints a JWT that a collab server with the same secret
//! accepts.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use collab_gateway::{Auth, now_secs};
use collab_protocol::{Access, Claims, RoomId, Scope, UserId};

/// `"*"` in the `rooms` claim: every room.
pub const ALL_ROOMS: &str = "*";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("bad user id: {0}")]
    User(String),
    #[error("--ttl-secs must be at least 1")]
    Ttl,
    #[error("room {0} is given twice")]
    DuplicateRoom(String),
    #[error("cannot sign the token: {0}")]
    Sign(String),
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
    /// Empty: write access to every room (no `rooms` claim).
    pub rooms: Vec<RoomGrant>,
    /// The `admin` scope: the operators' inspection endpoints.
    pub admin: bool,
}

/// The claims for `request`, expiring `ttl` after `now` (seconds since the
/// Unix epoch).
pub fn claims(request: &TokenRequest, now: u64) -> Result<Claims, TokenError> {
    UserId::parse(request.user.as_str()).map_err(|e| TokenError::User(e.to_string()))?;
    if request.ttl.as_secs() == 0 {
        return Err(TokenError::Ttl);
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
        scope: request.admin.then(|| Scope::Admin.as_str().to_owned()),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(rooms: &[&str]) -> TokenRequest {
        TokenRequest {
            user: "ann".into(),
            name: Some("Ann".into()),
            ttl: Duration::from_secs(60),
            rooms: rooms
                .iter()
                .map(|r| r.parse().expect("valid grant"))
                .collect(),
            admin: false,
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
    }

    #[test]
    fn admin_tokens_carry_the_admin_scope() {
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
            .expect("verifies");
        assert!(verified.has_scope(Scope::Admin));
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut r = request(&[]);
        r.user = String::new();
        assert!(matches!(claims(&r, 0), Err(TokenError::User(_))));
        let mut r = request(&[]);
        r.ttl = Duration::ZERO;
        assert_eq!(claims(&r, 0), Err(TokenError::Ttl));
        assert_eq!(
            claims(&request(&["a=read", "a=write"]), 0),
            Err(TokenError::DuplicateRoom("a".into()))
        );
    }

    #[test]
    fn a_minted_token_verifies_with_the_same_secret() {
        let token = mint(b"s3cret", &request(&["r1=write"])).expect("mints");
        let verified = Auth::new(b"s3cret", false)
            .verify(&token)
            .expect("verifies");
        assert_eq!(verified.sub, "ann");
        assert!(Auth::new(b"other", false).verify(&token).is_err());
    }
}
