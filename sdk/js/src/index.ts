// @collab/client: the client SDK for collab. One WebSocket for many rooms,
// resume after any drop, a persistent outbox so no edit is ever lost,
// typed events and errors. See README.md for examples.

export {
  CollabClient, CLOSE_CODES, tokenClaims, tokenExpiry,
  type ClientEvents, type ClientOptions, type ClientStatus, type ConnectionState, type TokenProvider,
  type TokenReason, type TokenRequest, type WebSocketConstructor, type WebSocketLike,
} from './client.js';
export {
  Room, type HistoryOptions, type JoinedEvent, type RoomEvents, type RoomStatus, type StrokeOptions,
} from './room.js';
export { PACKED_SNAPSHOT_TYPE, decodePackedSnapshot, type Snapshot } from './snapshot.js';
export { RoomState, STATE_MESSAGES, type SendingMessage, type Stroke } from './state.js';
export { MAX_IN_FLIGHT, MAX_POINTS, type Ack } from './outbox.js';
export {
  IndexedDbStorage, MemoryStorage, type OutboxStorage, type SavedOp, type SavedOutbox,
} from './storage.js';
export {
  BadRequestError, ClosedError, CollabError, ConflictError, ERROR_CODES, ForbiddenError, InternalError,
  NetworkError, NotFoundError, NothingToRedoError, NothingToUndoError, RateLimitedError, TooLargeError,
  UnauthorizedError, UnavailableError, errorFromCode, isErrorCode,
  type ClientErrorCode, type ErrorCode, type ErrorContext,
} from './errors.js';
export { LIMITS } from './protocol.js';
export type * from './protocol.js';
export type { Listener } from './emitter.js';
