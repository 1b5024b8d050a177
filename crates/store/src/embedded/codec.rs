//! Byte layouts of the embedded store's values.
//!
//! A logged op is `[version u8][term u64 LE][node length u16 LE][node]
//! [OpEvent as JSON]`; a deleted room's tombstone in the log is the same
//! header with its own version byte and nothing after it. The writer sits in a small fixed header rather than
//! in the JSON so it costs no extra parse; JSON is used for the event itself
//! because `Op` is an internally tagged enum, which compact self-describing-
//! free formats (postcard, bincode) cannot decode, and because it is the
//! wire format already, so a stored op is readable with any JSON tool.
//! Room records are JSON.
//!
//! A journal batch (one append) is `[room length u16 LE][room][first seq
//! u64 LE][op count u32 LE]` and per op `[kind u8][length u32 LE][logged
//! op]`. Batches are self-delimiting, so a journal row is simply the
//! concatenation of one group's accepted batches.

use collab_protocol::{NodeId, OpEvent};

use crate::{LoggedOp, RoomRecord, StoreError, StoreResult, Writer};

const OP_FORMAT: u8 = 1;
const TOMBSTONE_FORMAT: u8 = 2;
const HEADER_LEN: usize = 1 + 8 + 2;

/// Encodes one logged op (the writer is repeated per op so that every row
/// stands alone: a `read_log` page needs no batch header lookup).
pub(crate) fn encode_op(event: &OpEvent, writer: &Writer) -> StoreResult<Vec<u8>> {
    let mut out = header(OP_FORMAT, writer, 256)?;
    serde_json::to_writer(&mut out, event)
        .map_err(|e| StoreError::InvalidBatch(format!("op {} does not encode: {e}", event.seq)))?;
    Ok(out)
}

/// Encodes the tombstone a deletion writes: who deleted the room.
pub(crate) fn encode_tombstone(writer: &Writer) -> StoreResult<Vec<u8>> {
    header(TOMBSTONE_FORMAT, writer, 0)
}

/// Whether a log row is a tombstone rather than an op.
pub(crate) fn is_tombstone(bytes: &[u8]) -> bool {
    bytes.first() == Some(&TOMBSTONE_FORMAT)
}

fn header(format: u8, writer: &Writer, room_for: usize) -> StoreResult<Vec<u8>> {
    let node = writer.node.as_str().as_bytes();
    let node_len = u16::try_from(node.len())
        .map_err(|_| StoreError::InvalidBatch("node id longer than 65535 bytes".into()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + node.len() + room_for);
    out.push(format);
    out.extend_from_slice(&writer.term.to_le_bytes());
    out.extend_from_slice(&node_len.to_le_bytes());
    out.extend_from_slice(node);
    Ok(out)
}

pub(crate) fn decode_op(bytes: &[u8]) -> StoreResult<LoggedOp> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("logged op: {what}"));
    let header = bytes
        .get(..HEADER_LEN)
        .ok_or_else(|| corrupt("truncated"))?;
    if header[0] != OP_FORMAT {
        return Err(corrupt(&format!("unknown format {}", header[0])));
    }
    let mut term = [0u8; 8];
    term.copy_from_slice(&header[1..9]);
    let node_len = usize::from(u16::from_le_bytes([header[9], header[10]]));
    let node = bytes
        .get(HEADER_LEN..HEADER_LEN + node_len)
        .ok_or_else(|| corrupt("truncated node id"))?;
    let node = std::str::from_utf8(node).map_err(|_| corrupt("node id is not UTF-8"))?;
    let node = NodeId::parse(node).map_err(|e| corrupt(&e.to_string()))?;
    let event = serde_json::from_slice(&bytes[HEADER_LEN + node_len..])
        .map_err(|e| corrupt(&e.to_string()))?;
    Ok(LoggedOp {
        event,
        writer: Writer {
            node,
            term: u64::from_le_bytes(term),
        },
    })
}

/// Decodes only the event of a logged op (history pages need no writer).
pub(crate) fn decode_event(bytes: &[u8]) -> StoreResult<OpEvent> {
    decode_op(bytes).map(|logged| logged.event)
}

/// Encodes one append batch for the journal; `rows` are `(kind code,
/// encoded logged op)` for seqs `first, first + 1, …`.
pub(crate) fn encode_journal(room: &str, first: u64, rows: &[(u8, &[u8])]) -> StoreResult<Vec<u8>> {
    let room_len = u16::try_from(room.len())
        .map_err(|_| StoreError::InvalidBatch("room id too long".into()))?;
    let count =
        u32::try_from(rows.len()).map_err(|_| StoreError::InvalidBatch("batch too long".into()))?;
    let size = 2 + room.len() + 8 + 4 + rows.iter().map(|(_, v)| 5 + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&room_len.to_le_bytes());
    out.extend_from_slice(room.as_bytes());
    out.extend_from_slice(&first.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    for (kind, value) in rows {
        let len = u32::try_from(value.len())
            .map_err(|_| StoreError::InvalidBatch("op too large".into()))?;
        out.push(*kind);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(value);
    }
    Ok(out)
}

/// A decoded journal batch: room, and `(seq, kind code, logged op)` rows.
pub(crate) type JournalBatch<'a> = (&'a str, Vec<(u64, u8, &'a [u8])>);

/// Decodes a journal row: the concatenated batches of one group.
pub(crate) fn decode_journal(bytes: &[u8]) -> StoreResult<Vec<JournalBatch<'_>>> {
    let corrupt = || StoreError::Corrupt("journal row truncated or malformed".into());
    let mut rest = bytes;
    let mut take = |n: usize| -> StoreResult<&[u8]> {
        let (head, tail) = rest.split_at_checked(n).ok_or_else(corrupt)?;
        rest = tail;
        Ok(head)
    };
    let mut batches = Vec::new();
    while let Ok(room_len) = take(2) {
        let room_len = usize::from(u16::from_le_bytes(
            room_len.try_into().map_err(|_| corrupt())?,
        ));
        let room = std::str::from_utf8(take(room_len)?).map_err(|_| corrupt())?;
        let first = u64::from_le_bytes(take(8)?.try_into().map_err(|_| corrupt())?);
        let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
        let mut rows = Vec::with_capacity(count.min(4096) as usize);
        for i in 0..u64::from(count) {
            let kind = take(1)?[0];
            let len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| corrupt())?);
            let value = take(len as usize)?;
            rows.push((first + i, kind, value));
        }
        batches.push((room, rows));
    }
    // `take(2)` failed: either the row ended exactly, or one stray byte is
    // left, which no batch encodes.
    if !rest.is_empty() {
        return Err(corrupt());
    }
    Ok(batches)
}

pub(crate) fn encode_room(room: &RoomRecord) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(room).map_err(|e| StoreError::InvalidBatch(format!("room record: {e}")))
}

pub(crate) fn decode_room(bytes: &[u8]) -> StoreResult<RoomRecord> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("room record: {e}")))
}

#[cfg(test)]
mod tests {
    use collab_protocol::{Op, RoomId, Seq, UserId};

    use super::*;

    #[test]
    fn op_round_trip_and_truncation() {
        let event = OpEvent {
            room: RoomId::parse("r").expect("room"),
            seq: Seq(7),
            user: UserId::parse("u").expect("user"),
            ts: 1,
            cid: None,
            op: Op::Message { text: "hé".into() },
        };
        let writer = Writer {
            node: NodeId::parse("node-1").expect("node"),
            term: 42,
        };
        let bytes = encode_op(&event, &writer).expect("encode");
        let logged = decode_op(&bytes).expect("decode");
        assert_eq!(logged.event, event);
        assert_eq!(logged.writer, writer);
        for cut in [0, 5, HEADER_LEN, HEADER_LEN + 3, bytes.len() - 1] {
            assert!(matches!(
                decode_op(&bytes[..cut]),
                Err(StoreError::Corrupt(_))
            ));
        }
        assert!(!is_tombstone(&bytes));
        let tombstone = encode_tombstone(&writer).expect("encode");
        assert!(is_tombstone(&tombstone));
        assert!(
            matches!(decode_op(&tombstone), Err(StoreError::Corrupt(_))),
            "a tombstone is no op"
        );
    }

    #[test]
    fn journal_round_trip_and_truncation() {
        let rows: Vec<(u8, &[u8])> = vec![(1, b"abc"), (5, b""), (0, b"xyz!")];
        let one = encode_journal("room-1", 41, &rows).expect("encode");
        let two = encode_journal("r2", 7, &[(3, b"q")]).expect("encode");
        let row = [one.clone(), two.clone()].concat();
        assert_eq!(
            decode_journal(&row).expect("decode"),
            vec![
                (
                    "room-1",
                    vec![
                        (41, 1, &b"abc"[..]),
                        (42, 5, &b""[..]),
                        (43, 0, &b"xyz!"[..])
                    ]
                ),
                ("r2", vec![(7, 3, &b"q"[..])]),
            ]
        );
        assert!(decode_journal(&[]).expect("empty").is_empty());
        // Any cut inside a batch is detected (cuts at a batch boundary are
        // a valid, shorter row).
        for cut in (1..row.len()).filter(|&c| c != one.len()) {
            assert!(decode_journal(&row[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = row.clone();
        longer.push(0);
        assert!(decode_journal(&longer).is_err());
    }
}
