//! Id newtypes. Ids that clients choose are validated when constructed (and
//! so when decoded), which makes an ill-formed id unrepresentable.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ProtocolError;
use crate::limits::MAX_ID_LEN;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, validate = $validate:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Checks `value` against the id's rule.
            pub fn parse(value: impl Into<String>) -> Result<Self, ProtocolError> {
                let value = value.into();
                let check: fn(&str) -> Result<(), ProtocolError> = $validate;
                check(&value)?;
                Ok($name(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProtocolError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

string_id!(
    /// A room id: `[A-Za-z0-9_-]{1,64}`.
    RoomId,
    validate = validate_room_id
);
string_id!(
    /// A user id, the JWT `sub`. Any non-empty string.
    UserId,
    validate = |s| non_empty(s, "user id")
);
string_id!(
    /// A client-chosen stroke id, 1–64 characters, unique per room.
    StrokeId,
    validate = |s| short_id(s, "stroke id")
);
string_id!(
    /// A client-chosen op id, 1–64 characters, unique per user and room.
    Cid,
    validate = |s| short_id(s, "cid")
);
string_id!(
    /// A room's history epoch: opaque, changes only when history restarts.
    Epoch,
    validate = |s| non_empty(s, "epoch")
);
string_id!(
    /// A connection id, unique within the gateway that assigned it.
    ConnId,
    validate = |s| non_empty(s, "connection id")
);

string_id!(
    /// A room node's id, unique in a cluster.
    NodeId,
    validate = |s| non_empty(s, "node id")
);

/// The rule for room ids.
pub fn validate_room_id(s: &str) -> Result<(), ProtocolError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(
            "room id must match [A-Za-z0-9_-]{1,64}",
        ))
    }
}

fn short_id(s: &str, what: &str) -> Result<(), ProtocolError> {
    let n = s.chars().count();
    if (1..=MAX_ID_LEN).contains(&n) {
        Ok(())
    } else {
        Err(ProtocolError::bad_request(format!(
            "{what} must be 1 to {MAX_ID_LEN} characters"
        )))
    }
}

fn non_empty(s: &str, what: &str) -> Result<(), ProtocolError> {
    if s.is_empty() {
        Err(ProtocolError::bad_request(format!(
            "{what} must not be empty"
        )))
    } else {
        Ok(())
    }
}

/// A room's sequence number: per room, from 1, gapless. `Seq(0)` means
/// "nothing yet" (an empty room's head).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_id_edges() {
        assert!(RoomId::parse("a").is_ok());
        assert!(RoomId::parse("A-z_09").is_ok());
        assert!(RoomId::parse("x".repeat(64)).is_ok());
        assert!(RoomId::parse("x".repeat(65)).is_err());
        assert!(RoomId::parse("").is_err());
        assert!(RoomId::parse("a/b").is_err());
        assert!(RoomId::parse("é").is_err());
        assert!(RoomId::parse("a b").is_err());
    }

    #[test]
    fn short_ids_count_characters() {
        assert!(Cid::parse("é".repeat(64)).is_ok());
        assert!(Cid::parse("é".repeat(65)).is_err());
        assert!(Cid::parse("").is_err());
        assert!(StrokeId::parse("s".repeat(64)).is_ok());
        assert!(StrokeId::parse("s".repeat(65)).is_err());
    }

    #[test]
    fn ids_validate_when_decoded() {
        assert!(serde_json::from_str::<RoomId>("\"ok\"").is_ok());
        assert!(serde_json::from_str::<RoomId>("\"no/pe\"").is_err());
        assert!(serde_json::from_str::<Cid>("\"\"").is_err());
    }
}
