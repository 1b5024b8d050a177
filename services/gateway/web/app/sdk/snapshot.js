// A room's full state over HTTP (`GET /v1/rooms/{id}/snapshot`), for a
// first join: the state a `joined` with `reset: true` would carry, at the
// `head` and `epoch` it belongs to. The room then joins the socket with
// `since` = that head, and gets only the ops committed in between, so a
// large room loads compressed and packed instead of as one JSON frame.
//
// The packed encoding (`?format=packed`, see docs/PROTOCOL.md): `CSP1`, the
// header's length (4 bytes, little-endian), the header (JSON: room, kind,
// epoch, head, messages, users and colors, and each stroke as
// [id, user index, colour index, width, done 1 or 0, number of points]),
// then every stroke's points, x then y, each coordinate a
// LEB128 varint `v`: 0 means an IEEE 754 double follows (8 bytes,
// little-endian), otherwise the coordinate is h / 100 where h is the
// stroke's previous h on that axis (0 at the stroke's start) plus the
// zigzag-decoded v − 1.
/** The media type of a packed snapshot. */
export const PACKED_SNAPSHOT_TYPE = 'application/vnd.collab.snapshot';
const MAGIC = [0x43, 0x53, 0x50, 0x31]; // "CSP1"
/** Where the decoder is in the bytes (one decoder runs at a time: it never waits). */
let at = 0;
/**
 * The LEB128 varint at `at`. Multiplications, not shifts: a value may pass
 * 2^31 (it stays below 2^53). Past the end a byte reads as undefined, which
 * ends the loop; the caller sees `at` beyond the end.
 */
function varint(bytes) {
    let byte = bytes[at++];
    if (byte < 0x80)
        return byte;
    let v = byte & 0x7f;
    let scale = 128;
    do {
        byte = bytes[at++];
        v += (byte & 0x7f) * scale;
        scale *= 128;
    } while (byte >= 0x80);
    return v;
}
/** Decodes a packed snapshot; throws on anything that is not one, or is cut short. */
export function decodePackedSnapshot(bytes) {
    if (bytes.length < 8 || MAGIC.some((b, i) => bytes[i] !== b))
        throw new Error('not a packed snapshot');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const headerEnd = 8 + view.getUint32(4, true);
    if (headerEnd > bytes.length)
        throw new Error('a packed snapshot cut short in its header');
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, headerEnd)));
    const end = bytes.length;
    at = headerEnd;
    const strokes = new Array(header.strokes.length);
    try {
        for (let i = 0; i < header.strokes.length; i++) {
            const [id, user, color, width, done, count] = header.strokes[i];
            const points = new Array(count);
            // Each axis's h, in hundredths; a coordinate is h / 100 unless it
            // came as a double (varint 0).
            let hx = 0;
            let hy = 0;
            for (let j = 0; j < count; j++) {
                let v = varint(bytes);
                let x;
                if (v === 0) {
                    x = view.getFloat64(at, true);
                    at += 8;
                }
                else {
                    v -= 1;
                    hx += v % 2 === 0 ? v / 2 : -(v + 1) / 2;
                    x = hx / 100;
                }
                v = varint(bytes);
                let y;
                if (v === 0) {
                    y = view.getFloat64(at, true);
                    at += 8;
                }
                else {
                    v -= 1;
                    hy += v % 2 === 0 ? v / 2 : -(v + 1) / 2;
                    y = hy / 100;
                }
                points[j] = [x, y];
            }
            const who = header.users[user];
            const colour = header.colors[color];
            if (who === undefined || colour === undefined)
                throw new Error(`stroke ${id} names no user or colour of the header`);
            strokes[i] = { id, user: who, color: colour, width, points, done: done === 1 };
        }
    }
    catch (e) {
        if (e instanceof RangeError)
            throw new Error('a packed snapshot cut short in its points');
        throw e;
    }
    if (at > end)
        throw new Error('a packed snapshot cut short in its points');
    if (at !== end)
        throw new Error(`${end - at} bytes after the last point of a packed snapshot`);
    return {
        room: header.room, kind: header.kind, epoch: header.epoch, head: header.head,
        state: { strokes, messages: header.messages },
    };
}
