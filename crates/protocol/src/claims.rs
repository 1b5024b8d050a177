//! JWT claims and the access they grant.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::RoomId;

/// What a token allows in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Join, history and cursors.
    Read,
    /// Everything `Read` allows, and ops.
    Write,
}

/// A scope a token can carry in its `scope` claim, beyond rooms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The operators' inspection endpoints (`/v1/admin/*`).
    Admin,
    /// A backend's publishing into rooms (`POST /v1/rooms/{id}/ops`).
    Service,
}

impl Scope {
    /// The scope as it appears in the claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Admin => "admin",
            Scope::Service => "service",
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The claims collab reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Room id (or `"*"`) → access. Absent: write access everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<HashMap<String, Access>>,
    /// Space-separated scopes, OAuth style (`"admin"`). Scopes this server
    /// does not know are ignored, so one token can serve several services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The token's id, for revoking this one token. `collab token` and the
    /// dev token set a random one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// When the token was issued, seconds since the Unix epoch: a
    /// revocation of a user's tokens issued before a time covers the
    /// tokens without it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

impl Claims {
    /// The access these claims grant in `room`: the room's own key wins over
    /// `"*"`; `None` means the room is not covered (`forbidden`).
    pub fn access(&self, room: &RoomId) -> Option<Access> {
        match &self.rooms {
            None => Some(Access::Write),
            Some(rooms) => rooms.get(room.as_str()).or_else(|| rooms.get("*")).copied(),
        }
    }

    /// Whether the `scope` claim lists `scope`.
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|scopes| scopes.split_ascii_whitespace().any(|s| s == scope.as_str()))
    }

    /// Creating rooms needs write access to `"*"`, or no `rooms` claim.
    pub fn can_create_rooms(&self) -> bool {
        match &self.rooms {
            None => true,
            Some(rooms) => rooms.get("*") == Some(&Access::Write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(rooms: Option<&[(&str, Access)]>) -> Claims {
        Claims {
            sub: "u".into(),
            exp: 1,
            name: None,
            rooms: rooms.map(|r| r.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()),
            scope: None,
            jti: None,
            iat: None,
        }
    }

    fn room(id: &str) -> RoomId {
        RoomId::parse(id).expect("valid room id")
    }

    #[test]
    fn absent_rooms_claim_is_write_everywhere() {
        let c = claims(None);
        assert_eq!(c.access(&room("any")), Some(Access::Write));
        assert!(c.can_create_rooms());
    }

    #[test]
    fn own_key_wins_over_star() {
        let c = claims(Some(&[("*", Access::Write), ("lobby", Access::Read)]));
        assert_eq!(c.access(&room("lobby")), Some(Access::Read));
        assert_eq!(c.access(&room("other")), Some(Access::Write));
        assert!(c.can_create_rooms());
        let c = claims(Some(&[("*", Access::Read), ("mine", Access::Write)]));
        assert_eq!(c.access(&room("mine")), Some(Access::Write));
        assert_eq!(c.access(&room("other")), Some(Access::Read));
        assert!(!c.can_create_rooms());
    }

    #[test]
    fn uncovered_room_is_none() {
        let c = claims(Some(&[("a", Access::Write)]));
        assert_eq!(c.access(&room("b")), None);
        assert!(!c.can_create_rooms());
    }

    #[test]
    fn decodes_claims_json() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"ann","exp":99,"name":"Ann","rooms":{"*":"read","x":"write"},"iat":1}"#,
        )
        .expect("claims decode");
        assert_eq!(c.access(&room("x")), Some(Access::Write));
        assert!(serde_json::from_str::<Claims>(r#"{"sub":"ann"}"#).is_err());
        assert!(serde_json::from_str::<Claims>(r#"{"exp":5}"#).is_err());
    }

    #[test]
    fn scopes_are_a_space_separated_list() {
        let with = |scope: Option<&str>| Claims {
            scope: scope.map(str::to_owned),
            ..claims(None)
        };
        assert!(!with(None).has_scope(Scope::Admin));
        assert!(with(Some("admin")).has_scope(Scope::Admin));
        assert!(with(Some("read:all  admin service")).has_scope(Scope::Admin));
        assert!(with(Some(" service\tadmin ")).has_scope(Scope::Admin));
        // Whole words only, and case matters, as in OAuth.
        for no in ["", "administrator", "Admin", "admin:rooms", "service"] {
            assert!(!with(Some(no)).has_scope(Scope::Admin), "{no:?}");
        }
        assert!(with(Some("admin service")).has_scope(Scope::Service));
        for no in ["admin", "services", "Service", "service:rooms"] {
            assert!(!with(Some(no)).has_scope(Scope::Service), "{no:?}");
        }
        let decoded: Claims =
            serde_json::from_str(r#"{"sub":"op","exp":9,"scope":"billing admin"}"#)
                .expect("claims decode");
        assert!(decoded.has_scope(Scope::Admin));
        // OAuth's scope is one string; a list is not a valid claim.
        assert!(
            serde_json::from_str::<Claims>(r#"{"sub":"op","exp":9,"scope":["admin"]}"#).is_err()
        );
        // An absent scope stays absent on the wire.
        let encoded = serde_json::to_string(&claims(None)).expect("encodes");
        assert!(!encoded.contains("scope"), "{encoded}");
    }
}
