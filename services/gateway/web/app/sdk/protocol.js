// The wire contract as types: every frame the client sends and receives,
// the ops and the room state, as docs/PROTOCOL.md of the collab server
// describes them. Field names are the protocol's own (snake_case).
/** The limits the server enforces by default (docs/PROTOCOL.md). */
export const LIMITS = {
    /** Points in one op. */
    pointsPerOp: 1024,
    /** Unicode code points in one chat message. */
    messageChars: 4000,
    /** Ops sent and not yet acked on one connection. */
    unackedOps: 64,
};
