//! The `[[webhooks]]` entries of the configuration, and their checks.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use collab_protocol::{OpKind, RoomKind};
use serde::{Deserialize, Serialize};

/// What an endpoint can be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EventKind {
    /// A room's first op is about to be sent: announced once per room and
    /// endpoint, before the room's op events, from the log.
    #[serde(rename = "room.created")]
    RoomCreated,
    /// The room was deleted (by `DELETE` or its time to live), from the
    /// tombstone in its log.
    #[serde(rename = "room.deleted")]
    RoomDeleted,
    /// An op was committed, from the log.
    #[serde(rename = "op.committed")]
    OpCommitted,
    /// A user joined the room (best-effort).
    #[serde(rename = "member.joined")]
    MemberJoined,
    /// A user left the room (best-effort).
    #[serde(rename = "member.left")]
    MemberLeft,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::RoomCreated,
        EventKind::RoomDeleted,
        EventKind::OpCommitted,
        EventKind::MemberJoined,
        EventKind::MemberLeft,
    ];

    /// The `type` of the event's payload.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::RoomCreated => "room.created",
            EventKind::RoomDeleted => "room.deleted",
            EventKind::OpCommitted => "op.committed",
            EventKind::MemberJoined => "member.joined",
            EventKind::MemberLeft => "member.left",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A webhook secret; never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WebhookSecret(String);

impl WebhookSecret {
    pub fn new(secret: impl Into<String>) -> Self {
        WebhookSecret(secret.into())
    }

    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

/// One `[[webhooks]]` entry: an endpoint and what it is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// The endpoint's name: its cursors are kept under it (change the URL
    /// and keep the id, and delivery goes on where it was), and it is the
    /// `endpoint` label of its metrics. `[A-Za-z0-9_-]`, at most 64.
    pub id: String,
    /// `http://` or `https://` URL the events are POSTed to.
    pub url: String,
    /// The HMAC-SHA256 key of the `Collab-Signature` header; at least 16
    /// bytes.
    pub secret: WebhookSecret,
    /// What to send.
    pub events: Vec<EventKind>,
    /// Only ops of these kinds (`message`, `stroke_begin`, …); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op_kinds: Option<Vec<OpKind>>,
    /// Only events of rooms of these kinds (`board`, `channel`); absent: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_kinds: Option<Vec<RoomKind>>,
    /// How long one attempt may take.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Requests in flight to this endpoint at most, over all rooms (each
    /// room has at most one, to keep its order).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    /// The wait before the first retry; doubled after each failure…
    #[serde(default = "defaults::retry_base_ms")]
    pub retry_base_ms: u64,
    /// …up to this (each wait is then jittered down by up to half).
    #[serde(default = "defaults::retry_max_ms")]
    pub retry_max_ms: u64,
    /// An event still failing this long after its first attempt is given
    /// up: logged, counted (`outcome="expired"`) and skipped, so that one
    /// dead endpoint does not hold its cursor back forever.
    #[serde(default = "defaults::retry_horizon_secs")]
    pub retry_horizon_secs: u64,
}

mod defaults {
    pub fn timeout_ms() -> u64 {
        10_000
    }
    pub fn max_in_flight() -> usize {
        64
    }
    pub fn retry_base_ms() -> u64 {
        500
    }
    pub fn retry_max_ms() -> u64 {
        300_000
    }
    pub fn retry_horizon_secs() -> u64 {
        24 * 3600
    }
}

impl WebhookConfig {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn retry(&self) -> crate::backoff::Backoff {
        crate::backoff::Backoff {
            base: Duration::from_millis(self.retry_base_ms),
            max: Duration::from_millis(self.retry_max_ms),
        }
    }

    pub fn horizon(&self) -> Duration {
        Duration::from_secs(self.retry_horizon_secs)
    }

    pub fn wants(&self, kind: EventKind) -> bool {
        self.events.contains(&kind)
    }

    /// Whether events of a room of `kind` go to this endpoint (`None`: the
    /// room is gone and its kind unknown, which every filter lets through).
    pub fn wants_room(&self, kind: Option<RoomKind>) -> bool {
        match (&self.room_kinds, kind) {
            (Some(kinds), Some(kind)) => kinds.contains(&kind),
            _ => true,
        }
    }

    pub fn wants_op(&self, kind: OpKind) -> bool {
        self.wants(EventKind::OpCommitted)
            && self
                .op_kinds
                .as_ref()
                .is_none_or(|kinds| kinds.contains(&kind))
    }
}

/// The problems of a list of `[[webhooks]]` entries, each naming its entry
/// (`webhooks[0] (id "crm")`); empty when it is fine.
pub fn check(webhooks: &[WebhookConfig]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for (i, hook) in webhooks.iter().enumerate() {
        let mut problem = |message: String| {
            problems.push(format!("webhooks[{i}] (id {:?}): {message}", hook.id));
        };
        let id_ok = !hook.id.is_empty()
            && hook.id.len() <= 64
            && hook
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !id_ok {
            problem("`id` must be 1 to 64 of [A-Za-z0-9_-]".into());
        } else if !ids.insert(hook.id.as_str()) {
            problem("`id` is used by another entry".into());
        }
        if let Err(e) = check_url(&hook.url) {
            problem(format!("`url` {:?}: {e}", hook.url));
        }
        if hook.secret.0.len() < 16 {
            problem("`secret` must be at least 16 bytes".into());
        }
        if hook.events.is_empty() {
            problem(format!(
                "`events` must name at least one of {}",
                EventKind::ALL.map(EventKind::as_str).join(", ")
            ));
        }
        if hook.op_kinds.as_ref().is_some_and(Vec::is_empty) {
            problem("`op_kinds` must not be empty (leave it out for every kind)".into());
        }
        if hook.op_kinds.is_some() && !hook.wants(EventKind::OpCommitted) {
            problem("`op_kinds` filters op.committed, which `events` does not name".into());
        }
        if hook.room_kinds.as_ref().is_some_and(Vec::is_empty) {
            problem("`room_kinds` must not be empty (leave it out for every kind)".into());
        }
        if hook.timeout_ms == 0 {
            problem("`timeout_ms` must be at least 1".into());
        }
        if hook.max_in_flight == 0 {
            problem("`max_in_flight` must be at least 1".into());
        }
        if hook.retry_base_ms == 0 {
            problem("`retry_base_ms` must be at least 1".into());
        }
        if hook.retry_max_ms < hook.retry_base_ms {
            problem("`retry_max_ms` must be at least `retry_base_ms`".into());
        }
        if hook.retry_horizon_secs == 0 {
            problem("`retry_horizon_secs` must be at least 1".into());
        }
    }
    problems
}

/// An http or https URL with a host.
fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("must start with http:// or https://".into()),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str) -> WebhookConfig {
        WebhookConfig {
            id: id.into(),
            url: "https://example.com/hooks".into(),
            secret: WebhookSecret::new("0123456789abcdef"),
            events: vec![EventKind::OpCommitted],
            op_kinds: None,
            room_kinds: None,
            timeout_ms: 1000,
            max_in_flight: 8,
            retry_base_ms: 100,
            retry_max_ms: 1000,
            retry_horizon_secs: 60,
        }
    }

    #[test]
    fn a_good_entry_passes() {
        assert!(check(&[hook("crm"), hook("audit_log-2")]).is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_entry() {
        let mut bad = hook("a b");
        bad.url = "ftp://example.com".into();
        bad.secret = WebhookSecret::new("short");
        bad.events.clear();
        bad.op_kinds = Some(vec![OpKind::Message]);
        bad.retry_max_ms = 10;
        let problems = check(&[hook("crm"), bad, hook("crm")]);
        let joined = problems.join("\n");
        for expected in [
            "webhooks[1] (id \"a b\"): `id` must be",
            "webhooks[1] (id \"a b\"): `url` \"ftp://example.com\": must start with http",
            "`secret` must be at least 16 bytes",
            "`events` must name at least one of room.created",
            "`op_kinds` filters op.committed",
            "`retry_max_ms` must be at least `retry_base_ms`",
            "webhooks[2] (id \"crm\"): `id` is used by another entry",
        ] {
            assert!(joined.contains(expected), "{expected:?} not in:\n{joined}");
        }
        assert_eq!(problems.len(), 7, "{joined}");
    }

    #[test]
    fn filters() {
        let mut only_messages = hook("crm");
        only_messages.op_kinds = Some(vec![OpKind::Message]);
        only_messages.room_kinds = Some(vec![RoomKind::Channel]);
        assert!(only_messages.wants_op(OpKind::Message));
        assert!(!only_messages.wants_op(OpKind::StrokeBegin));
        assert!(only_messages.wants_room(Some(RoomKind::Channel)));
        assert!(!only_messages.wants_room(Some(RoomKind::Board)));
        assert!(only_messages.wants_room(None));
        let mut no_ops = hook("audit");
        no_ops.events = vec![EventKind::RoomDeleted];
        assert!(!no_ops.wants_op(OpKind::Message));
    }

    #[test]
    fn event_kinds_parse_by_their_names() {
        let parsed: Vec<EventKind> = serde_json::from_str(
            r#"["room.created","room.deleted","op.committed","member.joined","member.left"]"#,
        )
        .expect("parses");
        assert_eq!(parsed, EventKind::ALL);
        assert!(serde_json::from_str::<EventKind>(r#""op.commited""#).is_err());
    }
}
