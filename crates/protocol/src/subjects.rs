//! How the bus envelopes travel over NATS in a cluster: subjects, headers,
//! the membership registry and the wire encoding.
//!
//! | what | where | how | payload | headers |
//! |---|---|---|---|---|
//! | join, leave, op, fetch, inspect for a room | `{prefix}.node.{node}`, the subject of the room's owner | request/reply; the reply goes to the requester's inbox | [`RoomRequest`] → [`RoomReply`] | — |
//! | the owner's room events (ops, presence) | `{prefix}.room.{room}` | publish; subscribed only by gateways with members in the room, unsubscribed when the last one leaves | [`RoomEvent`] | [`header::NODE`], [`header::TERM`] |
//! | cursors | `{prefix}.room.{room}` | fire-and-forget publish by the sender's gateway | [`RoomEvent::Cursor`], [`RoomEvent::CursorLeave`] | — |
//! | membership | JetStream KV bucket `{prefix}_members` (dots → `_`), key `{node}` | a put every heartbeat interval with a per-key TTL (`Nats-TTL`); everyone watches the bucket | [`MemberRecord`] | `Nats-TTL` |
//!
//! `prefix` defaults to [`DEFAULT_PREFIX`]; several clusters can share one
//! NATS account with different prefixes.
//!
//! **Encoding.** Every payload is the envelope's JSON, exactly as serde
//! writes it here. The envelopes are internally tagged enums (`"type": …`),
//! which only a self-describing format can decode, and an op event is
//! turned into a JSON frame for the clients anyway; JSON also keeps the
//! traffic readable with a plain NATS subscriber. Fields are only ever
//! added (old readers ignore them), and so are request types (a member
//! that does not know one answers it with a `bad_request` error); anything
//! else bumps [`WIRE_VERSION`], which every member announces in its
//! [`MemberRecord`].
//!
//! **Terms.** An owner stamps its room events with its node id and its
//! ownership term for the room. A new owner of a room always has a higher
//! term than the previous one, so a subscriber that has seen term `t` drops
//! events with a lower term: they come from an owner that has been replaced.
//! Events without a term (cursors, which gateways publish) are never stale.
//!
//! [`RoomRequest`]: crate::envelope::RoomRequest
//! [`RoomReply`]: crate::envelope::RoomReply
//! [`RoomEvent`]: crate::envelope::RoomEvent
//! [`RoomEvent::Cursor`]: crate::envelope::RoomEvent::Cursor
//! [`RoomEvent::CursorLeave`]: crate::envelope::RoomEvent::CursorLeave

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{NodeId, RoomId};

/// The subject prefix of a cluster unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "collab";

/// The version of this wire contract: subjects, headers, encoding and the
/// placement hash. Members of one cluster must agree on it.
pub const WIRE_VERSION: u32 = 1;

/// The longest node id: it is a subject token and a KV key.
pub const MAX_NODE_ID_LEN: usize = 128;

/// Headers on room events.
pub mod header {
    /// The node that published the event (its owner's id).
    pub const NODE: &str = "Collab-Node";
    /// The owner's term for the room, a decimal `u64`.
    pub const TERM: &str = "Collab-Term";
}

/// A subject, prefix or node id that NATS cannot carry as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    #[error("subject prefix {0:?} must be dot-separated tokens of [A-Za-z0-9_-]")]
    Prefix(String),
    #[error("node id {0:?} must match [A-Za-z0-9_-]{{1,128}} to be used in a cluster")]
    NodeId(String),
}

/// An envelope that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("bad bus payload: {0}")]
pub struct WireError(#[from] serde_json::Error);

/// The subjects and names of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// Subjects under `prefix`: one or more dot-separated tokens of
    /// `[A-Za-z0-9_-]`.
    pub fn new(prefix: impl Into<String>) -> Result<Self, SubjectError> {
        let prefix = prefix.into();
        if prefix.split('.').all(is_token) {
            Ok(Subjects { prefix })
        } else {
            Err(SubjectError::Prefix(prefix))
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Where a node receives the requests for the rooms it owns.
    pub fn node(&self, node: &NodeId) -> Result<String, SubjectError> {
        check_node_id(node)?;
        Ok(format!("{}.node.{}", self.prefix, node))
    }

    /// Where a room's events are published. Room ids are valid tokens by
    /// construction.
    pub fn room(&self, room: &RoomId) -> String {
        format!("{}.room.{}", self.prefix, room)
    }

    /// Every room's events (for tools; gateways subscribe room by room).
    pub fn all_rooms(&self) -> String {
        format!("{}.room.*", self.prefix)
    }

    /// The JetStream KV bucket of the membership registry.
    pub fn members_bucket(&self) -> String {
        format!("{}_members", self.prefix.replace('.', "_"))
    }
}

/// Checks that `node` can be a subject token and a KV key.
pub fn check_node_id(node: &NodeId) -> Result<(), SubjectError> {
    let s = node.as_str();
    if s.len() <= MAX_NODE_ID_LEN && is_token(s) {
        Ok(())
    } else {
        Err(SubjectError::NodeId(s.to_owned()))
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a member of the cluster announces with each heartbeat, under its
/// node id in the members bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Hosts rooms, and so takes part in placement.
    pub room_node: bool,
    /// Holds client connections (a room node drops a dead gateway's
    /// connections from its rooms).
    pub gateway: bool,
    /// How long this record stands without a newer heartbeat, in
    /// milliseconds; the bucket's per-key TTL says the same to the server.
    pub ttl_ms: u64,
    /// The sender's [`WIRE_VERSION`].
    pub wire: u32,
    /// This run of the member (its node id and start time). A gateway
    /// names its connections after it, so when a gateway restarts under
    /// the same node id, room nodes see the old instance go and drop
    /// exactly its connections.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// A room node's live rooms when it sent this record, for the
    /// operators' cluster view (absent from members that do not report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<u64>,
    /// A gateway's open client connections when it sent this record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
}

impl MemberRecord {
    /// Whether `other` announces the same member: the same roles, TTL,
    /// wire version and instance. The load figures are left out: they
    /// change with every heartbeat and move no room.
    pub fn same_member(&self, other: &MemberRecord) -> bool {
        self.room_node == other.room_node
            && self.gateway == other.gateway
            && self.ttl_ms == other.ttl_ms
            && self.wire == other.wire
            && self.instance == other.instance
    }
}

/// Encodes an envelope (or member record) as its payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    Ok(serde_json::to_vec(value)?)
}

/// Decodes a payload; never panics, whatever the bytes.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, WireError> {
    Ok(serde_json::from_slice(payload)?)
}

/// Reads a [`header::TERM`] value.
pub fn parse_term(value: &str) -> Option<u64> {
    value.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ConnRef, RoomEvent, RoomInspection, RoomReply, RoomRequest};
    use crate::http::{LastCommit, RoomMember};
    use crate::ids::{ConnId, Seq, UserId};

    fn node(s: &str) -> NodeId {
        NodeId::parse(s).expect("id")
    }

    #[test]
    fn subjects_are_stable() {
        let s = Subjects::default();
        let room = RoomId::parse("board-1").expect("id");
        assert_eq!(
            s.node(&node("room-node-0")).expect("ok"),
            "collab.node.room-node-0"
        );
        assert_eq!(s.room(&room), "collab.room.board-1");
        assert_eq!(s.all_rooms(), "collab.room.*");
        assert_eq!(s.members_bucket(), "collab_members");
        let staging = Subjects::new("acme.staging").expect("ok");
        assert_eq!(staging.room(&room), "acme.staging.room.board-1");
        assert_eq!(staging.members_bucket(), "acme_staging_members");
    }

    #[test]
    fn prefixes_and_node_ids_must_be_tokens() {
        for bad in ["", ".", "a.", "a..b", "a b", "a*", ">", "é"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
        let s = Subjects::default();
        for bad in ["a.b", "a b", "*", ">", "é", &"n".repeat(129)] {
            assert!(s.node(&node(bad)).is_err(), "{bad:?}");
        }
        assert!(s.node(&node(&"n".repeat(128))).is_ok());
    }

    #[test]
    fn envelopes_round_trip() {
        let conn = ConnRef {
            gateway: "gw-1".into(),
            conn: ConnId::parse("c1").expect("id"),
        };
        let request = RoomRequest::Fetch {
            room: RoomId::parse("r").expect("id"),
            after: Seq(41),
            limit: 100,
        };
        let bytes = encode(&request).expect("encodes");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            r#"{"type":"fetch","room":"r","after":41,"limit":100}"#
        );
        assert_eq!(decode::<RoomRequest>(&bytes).expect("decodes"), request);
        let reply = RoomReply::Ack { seq: Seq(42) };
        assert_eq!(
            decode::<RoomReply>(&encode(&reply).expect("encodes")).expect("decodes"),
            reply
        );
        let event = RoomEvent::CursorLeave {
            room: RoomId::parse("r").expect("id"),
            user: UserId::parse("u").expect("id"),
            origin: conn,
        };
        assert_eq!(
            decode::<RoomEvent>(&encode(&event).expect("encodes")).expect("decodes"),
            event
        );
    }

    #[test]
    fn bad_payloads_are_errors() {
        for bad in [
            &b""[..],
            b"{",
            b"null",
            b"{\"type\":\"nope\"}",
            &[0xff, 0xfe],
        ] {
            assert!(decode::<RoomRequest>(bad).is_err());
            assert!(decode::<RoomEvent>(bad).is_err());
        }
        // Unknown fields are ignored, so fields can be added.
        let record: MemberRecord =
            decode(br#"{"room_node":true,"gateway":false,"ttl_ms":3000,"wire":1,"zone":"b"}"#)
                .expect("decodes");
        assert!(record.room_node);
        // A record of a member that reports no load figures has none.
        assert_eq!((record.rooms, record.connections), (None, None));
    }

    #[test]
    fn member_records_carry_load_figures_that_older_members_ignore() {
        let record = MemberRecord {
            room_node: true,
            gateway: false,
            ttl_ms: 3000,
            wire: WIRE_VERSION,
            instance: "r1-1".into(),
            rooms: Some(12),
            connections: None,
        };
        let bytes = encode(&record).expect("encodes");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            r#"{"room_node":true,"gateway":false,"ttl_ms":3000,"wire":1,"instance":"r1-1","rooms":12}"#
        );
        assert_eq!(decode::<MemberRecord>(&bytes).expect("decodes"), record);

        /// The record as a member without load figures reads it: serde
        /// ignores the fields it does not know.
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct OlderRecord {
            room_node: bool,
            gateway: bool,
            ttl_ms: u64,
            wire: u32,
            #[serde(default)]
            instance: String,
        }
        let older: OlderRecord = decode(&bytes).expect("an older member decodes it");
        assert!(older.room_node && older.instance == "r1-1");

        // Load aside, it is the same member; not so with another role.
        let busier = MemberRecord {
            rooms: Some(13),
            ..record.clone()
        };
        assert!(busier.same_member(&record) && busier != record);
        let gateway_too = MemberRecord {
            gateway: true,
            ..record.clone()
        };
        assert!(!gateway_too.same_member(&record));
    }

    #[test]
    fn a_publish_travels_as_a_tagged_request() {
        let request = RoomRequest::Publish {
            room: RoomId::parse("r").expect("id"),
            user: UserId::parse("bot").expect("id"),
            cid: crate::Cid::parse("m1").expect("id"),
            op: crate::Op::Message { text: "hi".into() },
        };
        let bytes = encode(&request).expect("encodes");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            r#"{"type":"publish","room":"r","user":"bot","cid":"m1","op":{"kind":"message","text":"hi"}}"#
        );
        assert_eq!(decode::<RoomRequest>(&bytes).expect("decodes"), request);
        assert_eq!(request.room().as_str(), "r");
    }

    #[test]
    fn an_inspection_travels_as_a_tagged_request_and_reply() {
        let room = RoomId::parse("r").expect("id");
        let request = RoomRequest::Inspect { room: room.clone() };
        let bytes = encode(&request).expect("encodes");
        assert_eq!(
            std::str::from_utf8(&bytes).expect("utf-8"),
            r#"{"type":"inspect","room":"r"}"#
        );
        assert_eq!(decode::<RoomRequest>(&bytes).expect("decodes"), request);
        assert_eq!(request.room(), &room);

        let reply = RoomReply::Inspected(RoomInspection {
            node: Some(node("r2")),
            live: true,
            term: Some(1_700_000_000_000),
            head: Some(Seq(42)),
            members: vec![RoomMember {
                user: UserId::parse("ann").expect("id"),
                name: "Ann".into(),
                conn: ConnId::parse("g1-7").expect("id"),
                gateway: "g1-18f".into(),
            }],
            mailbox_depth: 3,
            last_commit: Some(LastCommit {
                seq: Seq(42),
                at: 1_700_000_000_123,
            }),
        });
        let bytes = encode(&reply).expect("encodes");
        assert_eq!(decode::<RoomReply>(&bytes).expect("decodes"), reply);
        // A room that is not live says only who would serve it.
        let not_live = RoomReply::Inspected(RoomInspection::not_live(None));
        assert_eq!(
            std::str::from_utf8(&encode(&not_live).expect("encodes")).expect("utf-8"),
            r#"{"type":"inspected","node":null,"live":false,"members":[],"mailbox_depth":0}"#
        );
    }

    #[test]
    fn terms_parse() {
        assert_eq!(parse_term("7"), Some(7));
        assert_eq!(parse_term(" 18446744073709551615 "), Some(u64::MAX));
        assert_eq!(parse_term("-1"), None);
        assert_eq!(parse_term("x"), None);
    }
}
