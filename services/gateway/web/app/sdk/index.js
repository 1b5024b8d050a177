// @collab/client: the client SDK for collab. One WebSocket for many rooms,
// resume after any drop, a persistent outbox so no edit is ever lost,
// typed events and errors. See README.md for examples.
export { CollabClient, CLOSE_CODES, tokenClaims, tokenExpiry, } from './client.js';
export { Room, } from './room.js';
export { PACKED_SNAPSHOT_TYPE, decodePackedSnapshot } from './snapshot.js';
export { RoomState, STATE_MESSAGES } from './state.js';
export { MAX_IN_FLIGHT, MAX_POINTS } from './outbox.js';
export { IndexedDbStorage, MemoryStorage, } from './storage.js';
export { BadRequestError, ClosedError, CollabError, ConflictError, ERROR_CODES, ForbiddenError, InternalError, NetworkError, NotFoundError, NothingToRedoError, NothingToUndoError, RateLimitedError, TooLargeError, UnauthorizedError, UnavailableError, errorFromCode, isErrorCode, } from './errors.js';
export { LIMITS } from './protocol.js';
