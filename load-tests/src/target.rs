//! What the generator talks to, and how each target's wire protocol carries
//! the generator's three kinds of traffic: durable ops (with an ack),
//! cursors (fire and forget) and nothing else.
//!
//! Every op and cursor carries its sender's number, a per-sender counter
//! `n` (1, 2, 3, … per connection and kind) and the time it was due to be
//! sent `t` (µs since the Unix epoch; all processes run on one host and one
//! clock). Receivers take latency as `now - t` and check that each sender's
//! `n` arrives exactly once and in order.
//!
//! - **collab**: `op` frames whose `cid` is `"{n}.{t}"` (the server echoes
//!   the cid in the `op` broadcast and in the `ack`), sender = the `user` id
//!   `u{number}`; cursors carry `x = t`, `y = n`.
//! - **relay**: the bare relay forwards text frames unchanged. A frame is one
//!   byte (`o` op, `c` cursor) and a JSON object `{"s","n","t","op"}`; ops are
//!   echoed to their sender too, which serves as its ack.
//! - **centrifugo**: Centrifugo's JSON client protocol: `connect` with a
//!   token, `subscribe`, `publish` with the same JSON object as data; the
//!   publish reply is the ack; pushes carry publications.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// Which kind of server, ours first (summaries sort by this).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// `collab serve` (or a cluster's gateways).
    Collab,
    /// The bare relay of `collab-load relay`: broadcast, nothing else.
    Relay,
    /// Centrifugo's client protocol, memory engine.
    Centrifugo,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Collab => "collab",
            TargetKind::Relay => "relay",
            TargetKind::Centrifugo => "centrifugo",
        }
    }
}

/// How clients get their tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Auth {
    /// HS256 JWTs minted by the generator with the server's secret.
    Secret(String),
    /// `POST /v1/dev/token` (collab in dev mode; rate-limited per address).
    DevToken,
    /// No token (the relay).
    None,
}

/// A target: a list of WebSocket URLs (clients are spread over them round
/// robin, so a cluster's gateways are just more URLs), an HTTP base URL for
/// room creation where the target has rooms to create, and how to get
/// tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    pub kind: TargetKind,
    /// `ws://host:port/v1/ws` (collab), `ws://host:port` (relay; the room
    /// is appended as the path), `ws://host:port/connection/websocket`
    /// (centrifugo).
    pub ws_urls: Vec<String>,
    /// `http://host:port` of a collab gateway, for `POST /v1/rooms` and dev
    /// tokens.
    pub http_url: Option<String>,
    pub auth: Auth,
}

impl Target {
    /// The URL client number `i` connects to.
    pub fn ws_url(&self, i: usize, room: &str, token: Option<&str>) -> String {
        let base = &self.ws_urls[i % self.ws_urls.len()];
        match self.kind {
            TargetKind::Collab => match token {
                Some(token) => format!("{base}?token={token}"),
                None => base.clone(),
            },
            TargetKind::Relay => format!("{}/{room}", base.trim_end_matches('/')),
            TargetKind::Centrifugo => base.clone(),
        }
    }
}

/// One of the generator's ops, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    StrokeBegin,
    StrokePoints,
    StrokeEnd,
    Message,
}

/// Everything needed to write one op.
pub struct OpOut<'a> {
    pub kind: OpKind,
    pub stroke: &'a str,
    /// Pre-rendered JSON array of points, e.g. `[[1.5,2],[3,4]]`.
    pub points: &'a str,
    pub text: &'a str,
}

/// Appends the op's JSON object (`{"kind": …}`) to `out`.
fn write_op_json(out: &mut String, op: &OpOut<'_>) {
    match op.kind {
        OpKind::StrokeBegin => {
            let _ = write!(
                out,
                r##"{{"kind":"stroke_begin","stroke":"{}","color":"#1f77b4","width":4,"points":{}}}"##,
                op.stroke, op.points
            );
        }
        OpKind::StrokePoints => {
            let _ = write!(
                out,
                r#"{{"kind":"stroke_points","stroke":"{}","points":{}}}"#,
                op.stroke, op.points
            );
        }
        OpKind::StrokeEnd => {
            let _ = write!(out, r#"{{"kind":"stroke_end","stroke":"{}"}}"#, op.stroke);
        }
        OpKind::Message => {
            let _ = write!(out, r#"{{"kind":"message","text":"{}"}}"#, op.text);
        }
    }
}

/// Encodes and decodes one target's frames for one connection.
#[derive(Debug, Clone)]
pub struct Codec {
    pub kind: TargetKind,
    /// The room (collab, relay) or channel (centrifugo).
    pub room: String,
    /// This connection's sender number.
    pub me: u32,
    /// Centrifugo command ids.
    next_id: u64,
}

/// What a received frame means to the generator.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// An op from `sender`, with its counter, due time and (collab) seq.
    Op {
        sender: u32,
        n: u64,
        t: u64,
        seq: Option<u64>,
    },
    /// An op without a generator identity (collab: a stroke the server
    /// ended for a user who left): counts for the seq check only.
    ForeignOp {
        seq: Option<u64>,
    },
    Cursor {
        sender: u32,
        t: u64,
    },
    /// The target confirmed this connection's op `n` sent at `t`.
    Ack {
        n: u64,
        t: u64,
    },
    /// collab `joined` (with its head) or centrifugo's subscribe reply.
    Joined {
        head: Option<u64>,
    },
    /// centrifugo's connect reply.
    Connected,
    /// The target refused something.
    Error {
        code: String,
    },
    /// centrifugo's ping: answer with `{}`.
    Ping,
    Other,
}

#[derive(Deserialize)]
struct CollabFrame<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    seq: Option<u64>,
    head: Option<u64>,
    #[serde(borrow)]
    user: Option<&'a RawValue>,
    #[serde(borrow)]
    cid: Option<&'a str>,
    x: Option<f64>,
    y: Option<f64>,
    #[serde(borrow)]
    code: Option<&'a str>,
}

/// The JSON object that relay frames and centrifugo publications carry.
#[derive(Deserialize)]
struct Data {
    s: u32,
    n: u64,
    t: u64,
    /// `"o"` op or `"c"` cursor (centrifugo; the relay says it in its first
    /// byte).
    #[serde(default)]
    k: Option<char>,
}

#[derive(Deserialize)]
struct CentReply<'a> {
    #[serde(default)]
    id: u64,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
    #[serde(borrow)]
    push: Option<CentPush<'a>>,
    #[serde(borrow)]
    connect: Option<&'a RawValue>,
    #[serde(borrow)]
    subscribe: Option<&'a RawValue>,
    #[serde(borrow)]
    publish: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct CentPush<'a> {
    #[serde(rename = "pub")]
    publication: Option<CentPub>,
    #[serde(borrow)]
    #[allow(dead_code)]
    channel: Option<&'a str>,
}

#[derive(Deserialize)]
struct CentPub {
    data: Data,
}

/// A centrifugo command id says what it was for: ids are `n * 4 + tag`.
const CENT_CONNECT: u64 = 1;
const CENT_SUBSCRIBE: u64 = 2;
const CENT_OP: u64 = 0;
const CENT_CURSOR: u64 = 3;

/// `u123` → 123.
fn sender_of_user(raw: &RawValue) -> Option<u32> {
    raw.get()
        .strip_prefix("\"u")?
        .strip_suffix('"')?
        .parse()
        .ok()
}

/// `"17.1795000000000000"` → (17, 1795000000000000).
fn parse_cid(cid: &str) -> Option<(u64, u64)> {
    let (n, t) = cid.split_once('.')?;
    Some((n.parse().ok()?, t.parse().ok()?))
}

impl Codec {
    pub fn new(kind: TargetKind, room: String, me: u32) -> Codec {
        Codec {
            kind,
            room,
            me,
            next_id: 0,
        }
    }

    /// The frames that join the room after the WebSocket is open (the
    /// relay joins by its URL path).
    pub fn join_frames(&mut self, token: Option<&str>) -> Vec<String> {
        match self.kind {
            TargetKind::Collab => vec![format!(r#"{{"type":"join","room":"{}"}}"#, self.room)],
            TargetKind::Relay => Vec::new(),
            TargetKind::Centrifugo => {
                let token = token.unwrap_or_default();
                vec![
                    format!(
                        r#"{{"id":{CENT_CONNECT},"connect":{{"token":"{token}","name":"collab-load"}}}}"#
                    ),
                    format!(
                        r#"{{"id":{CENT_SUBSCRIBE},"subscribe":{{"channel":"{}"}}}}"#,
                        self.room
                    ),
                ]
            }
        }
    }

    /// An op frame: this connection's op number `n`, due at `t`.
    pub fn op(&mut self, n: u64, t: u64, op: &OpOut<'_>) -> String {
        let mut out = String::with_capacity(256 + op.points.len());
        match self.kind {
            TargetKind::Collab => {
                let _ = write!(
                    out,
                    r#"{{"type":"op","room":"{}","cid":"{n}.{t}","op":"#,
                    self.room
                );
                write_op_json(&mut out, op);
                out.push('}');
            }
            TargetKind::Relay => {
                let _ = write!(out, r#"o{{"s":{},"n":{n},"t":{t},"op":"#, self.me);
                write_op_json(&mut out, op);
                out.push('}');
            }
            TargetKind::Centrifugo => {
                let _ = write!(
                    out,
                    r#"{{"id":{},"publish":{{"channel":"{}","data":{{"k":"o","s":{},"n":{n},"t":{t},"op":"#,
                    n * 4 + CENT_OP,
                    self.room,
                    self.me
                );
                write_op_json(&mut out, op);
                out.push_str("}}}");
            }
        }
        out
    }

    /// A cursor frame: this connection's cursor number `n`, due at `t`.
    pub fn cursor(&mut self, n: u64, t: u64) -> String {
        match self.kind {
            // f64 holds µs timestamps exactly (they are below 2^53).
            TargetKind::Collab => format!(
                r#"{{"type":"cursor","room":"{}","x":{t},"y":{n}}}"#,
                self.room
            ),
            TargetKind::Relay => format!(r#"c{{"s":{},"n":{n},"t":{t}}}"#, self.me),
            TargetKind::Centrifugo => {
                self.next_id += 1;
                format!(
                    r#"{{"id":{},"publish":{{"channel":"{}","data":{{"k":"c","s":{},"n":{n},"t":{t}}}}}}}"#,
                    self.next_id * 4 + CENT_CURSOR,
                    self.room,
                    self.me
                )
            }
        }
    }

    /// The answer to a centrifugo ping.
    pub fn pong(&self) -> &'static str {
        "{}"
    }

    /// Decodes one received text frame into `out` (a centrifugo frame may
    /// hold several replies, one per line).
    pub fn decode(&self, text: &str, out: &mut Vec<Event>) {
        match self.kind {
            TargetKind::Collab => out.push(self.decode_collab(text)),
            TargetKind::Relay => out.push(self.decode_relay(text)),
            TargetKind::Centrifugo => {
                for line in text.split('\n').filter(|l| !l.is_empty()) {
                    out.push(self.decode_centrifugo(line));
                }
            }
        }
    }

    fn decode_collab(&self, text: &str) -> Event {
        let Ok(frame) = serde_json::from_str::<CollabFrame<'_>>(text) else {
            return Event::Error {
                code: "undecodable".into(),
            };
        };
        match frame.ty {
            "op" => {
                let sender = frame.user.and_then(sender_of_user);
                match (sender, frame.cid.and_then(parse_cid)) {
                    (Some(sender), Some((n, t))) => Event::Op {
                        sender,
                        n,
                        t,
                        seq: frame.seq,
                    },
                    _ => Event::ForeignOp { seq: frame.seq },
                }
            }
            "cursor" => match (frame.user.and_then(sender_of_user), frame.x) {
                (Some(sender), Some(x)) if x >= 0.0 => Event::Cursor {
                    sender,
                    t: x as u64,
                },
                _ => Event::Other,
            },
            "ack" => match frame.cid.and_then(parse_cid) {
                Some((n, t)) => Event::Ack { n, t },
                None => Event::Other,
            },
            "joined" => Event::Joined { head: frame.head },
            "error" => Event::Error {
                code: frame.code.unwrap_or("unknown").to_owned(),
            },
            _ => {
                let _ = frame.y;
                Event::Other
            }
        }
    }

    fn decode_relay(&self, text: &str) -> Event {
        let (kind, json) = text.split_at(text.len().min(1));
        let Ok(data) = serde_json::from_str::<Data>(json) else {
            return Event::Error {
                code: "undecodable".into(),
            };
        };
        match kind {
            // An op's echo to its sender is also its ack: the connection
            // handles both.
            "o" => Event::Op {
                sender: data.s,
                n: data.n,
                t: data.t,
                seq: None,
            },
            "c" => Event::Cursor {
                sender: data.s,
                t: data.t,
            },
            _ => Event::Other,
        }
    }

    fn decode_centrifugo(&self, line: &str) -> Event {
        if line == "{}" {
            return Event::Ping;
        }
        let Ok(reply) = serde_json::from_str::<CentReply<'_>>(line) else {
            return Event::Error {
                code: "undecodable".into(),
            };
        };
        if let Some(error) = reply.error {
            return Event::Error {
                code: format!("centrifugo {}", error.get()),
            };
        }
        if let Some(push) = reply.push {
            return match push.publication {
                Some(CentPub { data }) if data.k == Some('c') => Event::Cursor {
                    sender: data.s,
                    t: data.t,
                },
                Some(CentPub { data }) => Event::Op {
                    sender: data.s,
                    n: data.n,
                    t: data.t,
                    seq: None,
                },
                None => Event::Other,
            };
        }
        if reply.connect.is_some() {
            return Event::Connected;
        }
        if reply.subscribe.is_some() {
            return Event::Joined { head: None };
        }
        if reply.publish.is_some() && reply.id % 4 == CENT_OP {
            return Event::Ack {
                n: reply.id / 4,
                // The reply does not carry the due time: the connection
                // looks it up.
                t: 0,
            };
        }
        Event::Other
    }
}

#[cfg(test)]
mod tests;
