// Every error code of the protocol as a class of its own, so callers can
// write `catch (e) { if (e instanceof RateLimitedError) … }` or switch on
// `e.code`. The same classes serve the WebSocket's `error` frames and the
// HTTP API's `{"error": {"code", "message"}}` answers.
/** Any error the server reported, or one of the client's own (`network`, `closed`). */
export class CollabError extends Error {
    code;
    room;
    cid;
    status;
    constructor(code, message, context = {}) {
        super(message || code);
        this.name = new.target.name;
        this.code = code;
        this.room = context.room;
        this.cid = context.cid;
        this.status = context.status;
    }
}
/** Malformed, or not allowed in the room's state (a reused stroke id, points on an ended stroke…). */
export class BadRequestError extends CollabError {
    constructor(message, context) { super('bad_request', message, context); }
}
/** Over a limit: too many points in one op, too long a message. */
export class TooLargeError extends CollabError {
    constructor(message, context) { super('too_large', message, context); }
}
/** No valid token (HTTP 401, or a WebSocket upgrade refused for its token). */
export class UnauthorizedError extends CollabError {
    constructor(message, context) { super('unauthorized', message, context); }
}
/** The token does not cover the room, the room is private, or the stroke is someone else's. */
export class ForbiddenError extends CollabError {
    constructor(message, context) { super('forbidden', message, context); }
}
/** The room or the stroke does not exist. */
export class NotFoundError extends CollabError {
    constructor(message, context) { super('not_found', message, context); }
}
/** The room id is taken. */
export class ConflictError extends CollabError {
    constructor(message, context) { super('conflict', message, context); }
}
/** Too many ops, joins, rooms or requests; the client retries ops by itself. */
export class RateLimitedError extends CollabError {
    constructor(message, context) { super('rate_limited', message, context); }
}
/** The sender's undo stack is empty. */
export class NothingToUndoError extends CollabError {
    constructor(message, context) { super('nothing_to_undo', message, context); }
}
/** The sender's redo stack is empty. */
export class NothingToRedoError extends CollabError {
    constructor(message, context) { super('nothing_to_redo', message, context); }
}
/** The room is moving or its store did not confirm; the client retries ops with the same cid. */
export class UnavailableError extends CollabError {
    constructor(message, context) { super('unavailable', message, context); }
}
/** A bug on the server. */
export class InternalError extends CollabError {
    constructor(message, context) { super('internal', message, context); }
}
/** The server could not be reached over HTTP. */
export class NetworkError extends CollabError {
    constructor(message, context) { super('network', message, context); }
}
/** The client (or the room) was closed before the op was confirmed; it stays in the outbox's storage. */
export class ClosedError extends CollabError {
    constructor(message, context) { super('closed', message, context); }
}
const BY_CODE = {
    bad_request: BadRequestError,
    too_large: TooLargeError,
    unauthorized: UnauthorizedError,
    forbidden: ForbiddenError,
    not_found: NotFoundError,
    conflict: ConflictError,
    rate_limited: RateLimitedError,
    nothing_to_undo: NothingToUndoError,
    nothing_to_redo: NothingToRedoError,
    unavailable: UnavailableError,
    internal: InternalError,
};
/** Every code of the protocol, in the order docs/PROTOCOL.md lists them. */
export const ERROR_CODES = Object.keys(BY_CODE);
export function isErrorCode(code) {
    return Object.prototype.hasOwnProperty.call(BY_CODE, code);
}
/**
 * The error for a code the server sent. A code this version does not know
 * (the protocol may add codes) becomes a plain CollabError with that code.
 */
export function errorFromCode(code, message, context) {
    if (isErrorCode(code))
        return new BY_CODE[code](message, context);
    return new CollabError(code, message, context);
}
