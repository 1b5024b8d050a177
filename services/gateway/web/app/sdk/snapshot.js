// A room's full state over HTTP (`GET /v1/rooms/{id}/snapshot`), for a
// first join: the state a `joined` with `reset: true` would carry, at the
// `head` and `epoch` it belongs to. The room then joins the socket with
// `since` = that head, and gets only the ops committed in between, so a
// large room loads compressed and packed instead of as one JSON frame.
//
// The packed encoding (`?format=packed`, see docs/PROTOCOL.md): `CSP1`, the
// header's length (4 bytes, little-endian), the header (JSON: room, kind,
// epoch, head, messages, and the strokes without their points but with
// their number), then every stroke's points, x then y, each coordinate a
// LEB128 varint `v`: 0 means an IEEE 754 double follows (8 bytes,
// little-endian), otherwise the coordinate is h / 100 where h is the
// stroke's previous h on that axis (0 at the stroke's start) plus the
// zigzag-decoded v − 1.
/** The media type of a packed snapshot. */
export const PACKED_SNAPSHOT_TYPE = 'application/vnd.collab.snapshot';
const MAGIC = [0x43, 0x53, 0x50, 0x31]; // "CSP1"
/** Decodes a packed snapshot; throws on anything that is not one, or is cut short. */
export function decodePackedSnapshot(bytes) {
    if (bytes.length < 8 || MAGIC.some((b, i) => bytes[i] !== b))
        throw new Error('not a packed snapshot');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const headerEnd = 8 + view.getUint32(4, true);
    if (headerEnd > bytes.length)
        throw new Error('a packed snapshot cut short in its header');
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, headerEnd)));
    let at = headerEnd;
    const end = bytes.length;
    const cut = () => { throw new Error('a packed snapshot cut short in its points'); };
    // One coordinate; `h` is the axis's previous h, returned beside the value.
    let h = 0;
    const coordinate = (previous) => {
        if (at >= end)
            cut();
        let byte = bytes[at++];
        let v = byte & 0x7f;
        // Multiplications, not shifts: v may pass 2^31 (it stays below 2^53).
        for (let scale = 128; byte & 0x80; scale *= 128) {
            if (at >= end)
                cut();
            byte = bytes[at++];
            v += (byte & 0x7f) * scale;
        }
        if (v === 0) {
            if (at + 8 > end)
                cut();
            const raw = view.getFloat64(at, true);
            at += 8;
            h = previous;
            return raw;
        }
        const z = v - 1;
        h = previous + (z % 2 === 0 ? z / 2 : -(z + 1) / 2);
        return h / 100;
    };
    const strokes = new Array(header.strokes.length);
    for (let i = 0; i < header.strokes.length; i++) {
        const s = header.strokes[i];
        const points = new Array(s.points);
        let hx = 0;
        let hy = 0;
        for (let j = 0; j < s.points; j++) {
            const x = coordinate(hx);
            hx = h;
            const y = coordinate(hy);
            hy = h;
            points[j] = [x, y];
        }
        strokes[i] = { id: s.id, user: s.user, color: s.color, width: s.width, points, done: s.done };
    }
    if (at !== end)
        throw new Error(`${end - at} bytes after the last point of a packed snapshot`);
    return {
        room: header.room, kind: header.kind, epoch: header.epoch, head: header.head,
        state: { strokes, messages: header.messages },
    };
}
