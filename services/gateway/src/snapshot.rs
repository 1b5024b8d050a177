//! `GET /v1/rooms/{id}/snapshot`: a room's full state, exactly the `state`
//! a `joined` with `reset: true` carries, with the `head` and `epoch` it
//! belongs to, over HTTP. A client that loads it and then joins with
//! `since` = `head` and that `epoch` gets only the ops committed in between
//! on the socket, so a large room's late join costs what HTTP compression
//! (gzip, br or zstd, negotiated by `Accept-Encoding`) and a compact
//! encoding of the points make of it, instead of one uncompressed JSON
//! frame. See ADR 0015.
//!
//! Two encodings: JSON (the default, `{"room","kind","epoch","head",
//! "state"}`) and `?format=packed`, where the strokes' points, almost all
//! of the bytes, are varints instead of decimal text ([`pack`]).
//!
//! The checks are those of history: authentication, the room id and the
//! query (`bad_request`), the token's claim (`forbidden`), the room's
//! existence (`not_found`), its membership (`forbidden`). The state comes
//! from the room's owner, which answers once it is exactly the committed
//! one, joining nobody.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, get};
use collab_protocol::envelope::{RoomReply, RoomRequest};
use collab_protocol::frames::RoomView;
use collab_protocol::{Epoch, ErrorCode, RoomId, RoomKind, Seq, ServerFrame};
use serde::{Deserialize, Serialize};
use tower_http::compression::{CompressionLayer, CompressionLevel};

use crate::error::{ApiError, room_reply_error};
use crate::http::{ApiResult, AppState, Caller, RoomPath, Rooms, bad_request};

/// The media type of a packed snapshot.
pub const PACKED_CONTENT_TYPE: &str = "application/vnd.collab.snapshot";
/// The first bytes of a packed snapshot: the format and its version.
pub const PACKED_MAGIC: &[u8; 4] = b"CSP1";
/// Coordinates are packed as integer hundredths when that is exact and
/// their size stays far from where a JavaScript number loses integers
/// (2^53), so a client decodes every varint exactly.
const PACKED_MAX_HUNDREDTHS: f64 = (1u64 << 50) as f64;

/// The snapshot route, with its compression: the fastest level of each
/// encoding, since the body is made for one client and sent at once (a
/// higher level costs the server more time than it saves on the wire).
pub(crate) fn route() -> MethodRouter<AppState> {
    get(snapshot).layer(CompressionLayer::new().quality(CompressionLevel::Fastest))
}

#[derive(Debug, Default, Deserialize)]
struct SnapshotQuery {
    format: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Packed,
}

/// The JSON snapshot.
#[derive(Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub room: RoomId,
    pub kind: RoomKind,
    pub epoch: Epoch,
    pub head: Seq,
    pub state: RoomView,
}

async fn snapshot(
    State(rooms): State<Arc<Rooms>>,
    caller: Caller,
    RoomPath(room): RoomPath,
    query: Result<Query<SnapshotQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) =
        query.map_err(|e| bad_request(format!("invalid query: {}", e.body_text())))?;
    let format = match query.format.as_deref() {
        None | Some("json") => Format::Json,
        Some("packed") => Format::Packed,
        Some(other) => {
            return Err(bad_request(format!(
                "format must be json or packed, not {other:?}"
            )));
        }
    };
    caller.readable_room(&*rooms.store, &room).await?;
    let request = RoomRequest::Snapshot {
        room: room.clone(),
        user: caller.user.clone(),
    };
    let body = match rooms.bus.request(request, rooms.request_timeout()).await {
        Ok(RoomReply::Joined(body)) => body,
        other => return Err(room_reply_error(other, "retry").into()),
    };
    let snapshot = Snapshot {
        room: body.room,
        kind: body.kind,
        epoch: body.epoch,
        head: body.head,
        state: body.state.unwrap_or_default(),
    };
    // Tens of megabytes for a large room: encoded off the runtime's
    // threads, which carry every connection.
    let encoded = tokio::task::spawn_blocking(move || match format {
        Format::Json => serde_json::to_vec(&snapshot).map(|bytes| (bytes, "application/json")),
        Format::Packed => pack(&snapshot).map(|bytes| (bytes, PACKED_CONTENT_TYPE)),
    })
    .await;
    let (bytes, content_type) = match encoded {
        Ok(Ok(encoded)) => encoded,
        Ok(Err(e)) => return Err(internal(format!("encoding the snapshot: {e}"))),
        Err(e) => return Err(internal(format!("encoding the snapshot: {e}"))),
    };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        // A snapshot is the state of one moment, for one caller.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, bytes).into_response())
}

fn internal(message: String) -> ApiError {
    ApiError::new(ErrorCode::Internal, message)
}

/// A stroke in a packed snapshot's header, as a JSON array: its id, its
/// user and colour as indexes into the header's `users` and `colors`, its
/// width, whether it is done (1) or open (0), and how many points follow
/// for it. A board's strokes share few users and colours, and an array
/// has no keys: the header of 10,000 strokes is about a third of what
/// objects would be.
type PackedStroke<'a> = (&'a str, usize, usize, f64, u8, usize);

/// The JSON header of a packed snapshot.
#[derive(Debug, Serialize)]
struct PackedHeader<'a> {
    room: &'a RoomId,
    kind: RoomKind,
    epoch: &'a Epoch,
    head: Seq,
    users: Vec<&'a str>,
    colors: Vec<&'a str>,
    strokes: Vec<PackedStroke<'a>>,
    /// As in `state.messages`: each exactly as its `op` frame.
    messages: Vec<ServerFrame>,
}

/// Numbers each distinct string in the order first seen.
#[derive(Default)]
struct Table<'a> {
    list: Vec<&'a str>,
    index: std::collections::HashMap<&'a str, usize>,
}

impl<'a> Table<'a> {
    fn of(&mut self, value: &'a str) -> usize {
        *self.index.entry(value).or_insert_with(|| {
            self.list.push(value);
            self.list.len() - 1
        })
    }
}

/// A packed snapshot: the same content as the JSON one, in
///
/// - the 4 bytes `CSP1`;
/// - the length of the header, 4 bytes, little-endian;
/// - the header, JSON: `room`, `kind`, `epoch`, `head`, `messages` as in
///   the JSON snapshot, `users` and `colors` (each once), and `strokes`,
///   each a [`PackedStroke`] array;
/// - the points of every stroke, in the header's order, each point x then
///   y, each coordinate a LEB128 varint `v`: `0` means the 8 bytes that
///   follow are the coordinate as a little-endian IEEE 754 double;
///   otherwise the coordinate is `h / 100`, where `h` is the stroke's
///   previous `h` on the same axis (0 at the start of each stroke) plus
///   the zigzag-decoded `v − 1` (0, −1, 1, −2, … for 0, 1, 2, 3, …).
///
/// A coordinate takes the second form only when `h / 100` gives back
/// exactly its double, so the decoded state is bit for bit the server's.
/// The page's coordinates have two decimals, and a stroke moves a little
/// from point to point: most take one or two bytes instead of six to
/// eight of decimal text.
fn pack(snapshot: &Snapshot) -> Result<Vec<u8>, serde_json::Error> {
    let strokes = &snapshot.state.strokes;
    let (mut users, mut colors) = (Table::default(), Table::default());
    let packed = strokes
        .iter()
        .map(|s| {
            let (user, color) = (users.of(s.user.as_str()), colors.of(&s.color));
            (
                s.id.as_str(),
                user,
                color,
                s.width,
                u8::from(s.done),
                s.points.len(),
            )
        })
        .collect();
    let header = PackedHeader {
        room: &snapshot.room,
        kind: snapshot.kind,
        epoch: &snapshot.epoch,
        head: snapshot.head,
        users: users.list,
        colors: colors.list,
        strokes: packed,
        messages: snapshot
            .state
            .messages
            .iter()
            .cloned()
            .map(ServerFrame::Op)
            .collect(),
    };
    let header = serde_json::to_vec(&header)?;
    let points: usize = strokes.iter().map(|s| s.points.len()).sum();
    let mut out = Vec::with_capacity(8 + header.len() + points * 4);
    out.extend_from_slice(PACKED_MAGIC);
    let header_len = u32::try_from(header.len()).map_err(serde::ser::Error::custom)?;
    out.extend_from_slice(&header_len.to_le_bytes());
    out.extend_from_slice(&header);
    for stroke in strokes {
        let (mut x, mut y) = (0i64, 0i64);
        for point in &stroke.points {
            put_coordinate(&mut out, point[0], &mut x);
            put_coordinate(&mut out, point[1], &mut y);
        }
    }
    Ok(out)
}

/// One coordinate (see [`pack`]); `previous` is the axis's last `h`.
fn put_coordinate(out: &mut Vec<u8>, value: f64, previous: &mut i64) {
    let hundredths = (value * 100.0).round();
    // Within ±2^50 the cast keeps the integer; comparing what a client
    // computes from it (`h / 100`) with the bits of `value` leaves out
    // everything else, negative zero included.
    let h = hundredths as i64;
    if hundredths.abs() < PACKED_MAX_HUNDREDTHS && (h as f64 / 100.0).to_bits() == value.to_bits() {
        let delta = h - *previous;
        *previous = h;
        put_varint(out, zigzag(delta) + 1);
    } else {
        put_varint(out, 0);
        out.extend_from_slice(&value.to_le_bytes());
    }
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Decodes a packed snapshot (the tests' check of [`pack`], and the
/// reference for clients).
#[cfg(test)]
pub(crate) fn unpack(bytes: &[u8]) -> Result<Snapshot, String> {
    use collab_protocol::frames::StrokeView;
    use collab_protocol::{OpEvent, Point, StrokeId, UserId};

    #[derive(Deserialize)]
    struct Header<'a> {
        room: RoomId,
        kind: RoomKind,
        epoch: Epoch,
        head: Seq,
        #[serde(borrow)]
        users: Vec<&'a str>,
        #[serde(borrow)]
        colors: Vec<&'a str>,
        #[serde(borrow)]
        strokes: Vec<PackedStroke<'a>>,
        messages: Vec<OpEvent>,
    }
    let rest = bytes
        .strip_prefix(PACKED_MAGIC)
        .ok_or("not a packed snapshot")?;
    let (len, rest) = rest.split_first_chunk::<4>().ok_or("truncated")?;
    let len = u32::from_le_bytes(*len) as usize;
    let (header, mut points) = rest.split_at_checked(len).ok_or("truncated header")?;
    let header: Header = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut next = |previous: &mut i64| -> Result<f64, String> {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let (byte, rest) = points.split_first().ok_or("truncated points")?;
            points = rest;
            v |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        if v == 0 {
            let (raw, rest) = points.split_first_chunk::<8>().ok_or("truncated double")?;
            points = rest;
            return Ok(f64::from_le_bytes(*raw));
        }
        let z = v - 1;
        let delta = (z >> 1) as i64 ^ -((z & 1) as i64);
        *previous += delta;
        Ok(*previous as f64 / 100.0)
    };
    let mut strokes = Vec::with_capacity(header.strokes.len());
    for &(id, user, color, width, done, count) in &header.strokes {
        let (mut x, mut y) = (0i64, 0i64);
        let mut list: Vec<Point> = Vec::with_capacity(count);
        for _ in 0..count {
            list.push([next(&mut x)?, next(&mut y)?]);
        }
        let user = header.users.get(user).ok_or("no such user")?;
        let color = header.colors.get(color).ok_or("no such colour")?;
        strokes.push(StrokeView {
            id: StrokeId::parse(id.to_owned()).map_err(|e| e.to_string())?,
            user: UserId::parse((*user).to_owned()).map_err(|e| e.to_string())?,
            color: (*color).to_owned(),
            width,
            points: list,
            done: done == 1,
        });
    }
    if !points.is_empty() {
        return Err(format!("{} bytes after the last point", points.len()));
    }
    Ok(Snapshot {
        room: header.room,
        kind: header.kind,
        epoch: header.epoch,
        head: header.head,
        state: RoomView {
            strokes,
            messages: header.messages,
        },
    })
}

#[cfg(test)]
mod tests;
