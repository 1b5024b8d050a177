//! The fast path of [`decode_client_frame`](super::decode_client_frame).
//!
//! `ClientFrame` and `Op` deserialize through a `serde_json::Value`, only so
//! that a numeric tag is refused instead of being read as a variant index.
//! Building that tree (a node per number of a `stroke_points`) and then
//! converting it cost some 5% of the server's CPU under load. This path
//! reads the keys a frame may have as raw JSON slices and, by the tag,
//! parses just the fields of that variant straight into their types.
//!
//! It answers `Some` only with the frame the Value path would return, and
//! `None` for anything it is not sure of (invalid JSON, a duplicate or
//! escaped key, a tag that is not a plain string, a missing or mistyped
//! field, ...). The caller then runs the Value path, unchanged, so every
//! refused frame and every error message stays exactly what it was.
//!
//! Being sure takes more than parsing the variant's fields. The Value path
//! reads every value of the frame, so a value that no variant uses (an
//! unknown key, a field of another variant) must still be one that `Value`
//! accepts, whereas a raw slice is only checked for syntax: those values
//! are walked with [`Check`], which fails where `Value` fails (a lone
//! surrogate escape, a number beyond `f64`, nesting beyond serde_json's
//! limit). And with serde_json's `raw_value` feature, `Value` reads an
//! object keyed by serde_json's private token as a raw value; keys that
//! start with that prefix are left to the Value path.
//!
//! Only `decode_client_frame` takes this path: `Op`'s `Deserialize`, which
//! reads ops from the store and the bus, is unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::ClientFrame;
use crate::ops::Op;

/// The frame in `text`, if the fast path is sure of it.
pub(super) fn decode(text: &str) -> Option<ClientFrame> {
    let mut f: RawFrame = read_object(text)?;
    let frame = match required::<&str>(f.tag.take())? {
        "join" => ClientFrame::Join {
            room: required(f.room.take())?,
            since: optional(f.since.take())?,
            epoch: optional(f.epoch.take())?,
            resume_strokes: flag(f.resume_strokes.take())?,
        },
        "leave" => ClientFrame::Leave {
            room: required(f.room.take())?,
        },
        "op" => ClientFrame::Op {
            room: required(f.room.take())?,
            cid: required(f.cid.take())?,
            op: decode_op(f.op.take()?)?,
        },
        "cursor" => ClientFrame::Cursor {
            room: required(f.room.take())?,
            x: required(f.x.take())?,
            y: required(f.y.take())?,
        },
        "cursor_leave" => ClientFrame::CursorLeave {
            room: required(f.room.take())?,
        },
        "ping" => ClientFrame::Ping {
            // Any JSON: checked as a value no variant reads, then read.
            id: match f.id.take() {
                Some(raw) if !well_formed(raw) => return None,
                raw => optional(raw)?,
            },
        },
        _ => return None,
    };
    // The keys of other variants: ignored, but still read into the Value.
    f.rest()
        .into_iter()
        .flatten()
        .all(well_formed)
        .then_some(frame)
}

/// The op in `raw`, the `op` of an `op` frame, if the fast path is sure of it.
fn decode_op(raw: &RawValue) -> Option<Op> {
    let mut o: RawOp = read_object(raw.get())?;
    let op = match required::<&str>(o.kind.take())? {
        "stroke_begin" => Op::StrokeBegin {
            stroke: required(o.stroke.take())?,
            color: required(o.color.take())?,
            width: required(o.width.take())?,
            // `#[serde(default)]`: absent is empty, but `null` is refused.
            points: match o.points.take() {
                None => Vec::new(),
                raw => required(raw)?,
            },
        },
        "stroke_points" => Op::StrokePoints {
            stroke: required(o.stroke.take())?,
            points: required(o.points.take())?,
        },
        "stroke_end" => Op::StrokeEnd {
            stroke: required(o.stroke.take())?,
        },
        "undo" => Op::Undo {
            stroke: optional(o.stroke.take())?,
        },
        "redo" => Op::Redo {
            stroke: optional(o.stroke.take())?,
        },
        "message" => Op::Message {
            text: required(o.text.take())?,
        },
        _ => return None,
    };
    o.rest()
        .into_iter()
        .flatten()
        .all(well_formed)
        .then_some(op)
}

/// A field the variant requires, parsed from its raw JSON.
fn required<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(raw?.get()).ok()
}

/// An `Option` field with `#[serde(default)]`: absent and `null` are `None`.
fn optional<'a, T: Deserialize<'a>>(raw: Option<&'a RawValue>) -> Option<Option<T>> {
    match raw {
        None => Some(None),
        Some(raw) => serde_json::from_str(raw.get()).ok(),
    }
}

/// A `bool` field with `#[serde(default)]`: absent is `false`, `null` is
/// not a bool.
fn flag(raw: Option<&RawValue>) -> Option<bool> {
    match raw {
        None => Some(false),
        Some(raw) => serde_json::from_str(raw.get()).ok(),
    }
}

// === raw objects ===

/// The raw values of the keys a frame may have.
#[derive(Default)]
struct RawFrame<'a> {
    tag: Option<&'a RawValue>,
    room: Option<&'a RawValue>,
    cid: Option<&'a RawValue>,
    op: Option<&'a RawValue>,
    x: Option<&'a RawValue>,
    y: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    epoch: Option<&'a RawValue>,
    resume_strokes: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
}

impl<'a> RawFrame<'a> {
    fn rest(self) -> [Option<&'a RawValue>; 10] {
        let RawFrame {
            tag,
            room,
            cid,
            op,
            x,
            y,
            since,
            epoch,
            resume_strokes,
            id,
        } = self;
        [tag, room, cid, op, x, y, since, epoch, resume_strokes, id]
    }
}

impl<'a> Keys<'a> for RawFrame<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match key {
            "type" => &mut self.tag,
            "room" => &mut self.room,
            "cid" => &mut self.cid,
            "op" => &mut self.op,
            "x" => &mut self.x,
            "y" => &mut self.y,
            "since" => &mut self.since,
            "epoch" => &mut self.epoch,
            "resume_strokes" => &mut self.resume_strokes,
            "id" => &mut self.id,
            _ => return None,
        })
    }
}

/// The raw values of the keys an op may have.
#[derive(Default)]
struct RawOp<'a> {
    kind: Option<&'a RawValue>,
    stroke: Option<&'a RawValue>,
    color: Option<&'a RawValue>,
    width: Option<&'a RawValue>,
    points: Option<&'a RawValue>,
    text: Option<&'a RawValue>,
}

impl<'a> RawOp<'a> {
    fn rest(self) -> [Option<&'a RawValue>; 6] {
        let RawOp {
            kind,
            stroke,
            color,
            width,
            points,
            text,
        } = self;
        [kind, stroke, color, width, points, text]
    }
}

impl<'a> Keys<'a> for RawOp<'a> {
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>> {
        Some(match key {
            "kind" => &mut self.kind,
            "stroke" => &mut self.stroke,
            "color" => &mut self.color,
            "width" => &mut self.width,
            "points" => &mut self.points,
            "text" => &mut self.text,
            _ => return None,
        })
    }
}

/// An object's known keys, each holding its raw value once read.
trait Keys<'a>: Default {
    /// Where the value of `key` goes; `None` for a key no variant reads.
    fn slot(&mut self, key: &str) -> Option<&mut Option<&'a RawValue>>;
}

/// Reads `text`, one JSON object, into the raw values of its known keys.
fn read_object<'a, K: Keys<'a>>(text: &'a str) -> Option<K> {
    serde_json::from_str::<RawObject<K>>(text)
        .ok()
        .map(|object| object.0)
}

struct RawObject<K>(K);

impl<'de, K: Keys<'de>> Deserialize<'de> for RawObject<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // A map only: serde_json would also read a struct from an array.
        deserializer.deserialize_map(RawObjectVisitor(PhantomData))
    }
}

struct RawObjectVisitor<K>(PhantomData<K>);

impl<'de, K: Keys<'de>> Visitor<'de> for RawObjectVisitor<K> {
    type Value = RawObject<K>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = K::default();
        // A key with escapes cannot be borrowed: an error, so the Value path.
        while let Some(key) = map.next_key::<&'de str>()? {
            match keys.slot(key) {
                Some(slot) if slot.is_none() => *slot = Some(map.next_value()?),
                // `Value` keeps the last; let the Value path decide.
                Some(_) => return Err(de::Error::custom("duplicate key")),
                None => {
                    check_key(key)?;
                    map.next_value_seed(Check::TOP)?;
                }
            }
        }
        Ok(RawObject(keys))
    }
}

// === values no variant reads ===

/// Whether `raw` is a value that `Value` reads like any other: see [`Check`].
fn well_formed(raw: &RawValue) -> bool {
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    Check::TOP.deserialize(&mut deserializer).is_ok() && deserializer.end().is_ok()
}

/// Walks a JSON value as `Value` reads it, without building it: it fails
/// where `Value` fails (serde_json parses every string and number the same
/// way for both) and also on keys `Value` may read specially, and on
/// nesting deeper than `depth` more levels. serde_json refuses a frame
/// nested over 127 levels; a raw slice parsed on its own starts counting
/// afresh, so the fast path stays well within that.
#[derive(Clone, Copy)]
struct Check {
    depth: u8,
}

impl Check {
    const TOP: Check = Check { depth: 32 };

    fn inner<E: de::Error>(self) -> Result<Check, E> {
        match self.depth.checked_sub(1) {
            Some(depth) => Ok(Check { depth }),
            None => Err(E::custom("nested too deep for the fast path")),
        }
    }
}

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Check {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while seq.next_element_seed(inner)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let inner = self.inner()?;
        while map.next_key_seed(CheckKey)?.is_some() {
            map.next_value_seed(inner)?;
        }
        Ok(())
    }
}

/// An object's key, checked with [`check_key`].
struct CheckKey;

impl<'de> DeserializeSeed<'de> for CheckKey {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for CheckKey {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<(), E> {
        check_key(key)
    }
}

/// Refuses the keys serde_json reserves (`$serde_json::private::RawValue`
/// with the `raw_value` feature): `Value` reads an object with one as
/// something else than a map.
fn check_key<E: de::Error>(key: &str) -> Result<(), E> {
    if key.starts_with("$serde_json::private::") {
        Err(E::custom("a key serde_json reserves"))
    } else {
        Ok(())
    }
}
