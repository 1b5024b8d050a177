// The wire contract as types: every frame the client sends and receives,
// the ops and the room state, as docs/PROTOCOL.md of the collab server
// describes them. Field names are the protocol's own (snake_case).

/** A board (whiteboard) or a channel (chat; a direct message is a private channel of two). */
export type RoomKind = 'board' | 'channel';

/** A person, as the server names them: a stable id, a display name and a colour (`#rrggbb`). */
export interface User {
  id: string;
  name: string;
  color: string;
}

/** A point in world coordinates: `[x, y]`, finite numbers. */
export type Point = [number, number];

export interface StrokeBeginOp {
  kind: 'stroke_begin';
  stroke: string;
  color: string;
  width: number;
  points: Point[];
}

export interface StrokePointsOp {
  kind: 'stroke_points';
  stroke: string;
  points: Point[];
}

export interface StrokeEndOp {
  kind: 'stroke_end';
  stroke: string;
}

/** Hides the sender's most recently ended visible stroke; the broadcast names it in `stroke`. */
export interface UndoOp {
  kind: 'undo';
  stroke?: string;
}

/** Shows the sender's most recently undone stroke again; the broadcast names it in `stroke`. */
export interface RedoOp {
  kind: 'redo';
  stroke?: string;
}

export interface MessageOp {
  kind: 'message';
  text: string;
}

/** A durable op: what a client asks for, and what every member receives with its `seq`. */
export type Op = StrokeBeginOp | StrokePointsOp | StrokeEndOp | UndoOp | RedoOp | MessageOp;

export type OpKind = Op['kind'];

/** A durable op as the server broadcasts it: to every member, in `seq` order. */
export interface OpFrame {
  type: 'op';
  room: string;
  seq: number;
  user: string;
  /** Milliseconds since the Unix epoch. */
  ts: number;
  /** The sender's id for the op; null when the server made it (a stroke ended for its owner). */
  cid: string | null;
  op: Op;
}

/** A visible stroke in a room's full state. */
export interface StrokeSnapshot {
  id: string;
  user: string;
  color: string;
  width: number;
  points: Point[];
  /** False while it is still being drawn. */
  done: boolean;
}

/** A room's full picture: its visible strokes in begin order and its last 50 messages, oldest first. */
export interface RoomSnapshot {
  strokes: StrokeSnapshot[];
  messages: OpFrame[];
}

// === server → client ===

export interface WelcomeFrame {
  type: 'welcome';
  user: User;
  conn: string;
}

export interface JoinedFrame {
  type: 'joined';
  room: string;
  kind: RoomKind;
  epoch: string;
  head: number;
  presence: User[];
  reset: boolean;
  /** With `reset: true`. */
  state?: RoomSnapshot;
  /** With `reset: false`: every op with `since < seq ≤ head`, in order. */
  ops?: OpFrame[];
}

export interface AckFrame {
  type: 'ack';
  room: string;
  cid: string;
  seq: number;
}

export interface CursorFrame {
  type: 'cursor';
  room: string;
  user: string;
  x: number;
  y: number;
}

export interface CursorLeaveFrame {
  type: 'cursor_leave';
  room: string;
  user: string;
}

export interface PresenceFrame {
  type: 'presence';
  room: string;
  event: 'join' | 'leave';
  user: User;
}

export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
  room?: string;
  cid?: string;
}

export interface PongFrame {
  type: 'pong';
  id?: string;
}

/** The token in force expires at `exp` (seconds since the epoch, the server's clock): send `refresh` before then. */
export interface TokenExpiringFrame {
  type: 'token_expiring';
  exp: number;
}

/** The answer to an accepted `refresh`: the new token, which expires at `exp`, is in force. */
export interface RefreshedFrame {
  type: 'refreshed';
  exp: number;
}

export type ServerFrame =
  | WelcomeFrame
  | JoinedFrame
  | OpFrame
  | AckFrame
  | CursorFrame
  | CursorLeaveFrame
  | PresenceFrame
  | ErrorFrame
  | PongFrame
  | TokenExpiringFrame
  | RefreshedFrame;

// === client → server ===

export type ClientFrame =
  | { type: 'join'; room: string; since?: number; epoch?: string; resume_strokes?: boolean }
  | { type: 'leave'; room: string }
  | { type: 'op'; room: string; cid: string; op: Op }
  | { type: 'cursor'; room: string; x: number; y: number }
  | { type: 'cursor_leave'; room: string }
  | { type: 'ping'; id?: string }
  /** A new token for the same user on the open connection; answered with `refreshed`, or an `error` `unauthorized`. */
  | { type: 'refresh'; token: string };

// === HTTP ===

/** `POST /v1/rooms`: a room's metadata. */
export interface RoomInfo {
  id: string;
  kind: RoomKind;
  name: string;
  epoch: string;
  /** The room's latest seq (`GET /v1/rooms/{id}` only). */
  head?: number;
}

export interface CreateRoom {
  kind: RoomKind;
  id?: string;
  name?: string;
  /** Makes the room private: only these users and the creator may join or read it. */
  members?: string[];
}

/** One page of `GET /v1/rooms/{id}/history`: ops newest first. */
export interface HistoryPage {
  ops: OpFrame[];
  /** Pass as the next page's `before`; null when nothing older of the requested kinds exists. */
  nextBefore: number | null;
}

/** The limits the server enforces by default (docs/PROTOCOL.md). */
export const LIMITS = {
  /** Points in one op. */
  pointsPerOp: 1024,
  /** Unicode code points in one chat message. */
  messageChars: 4000,
  /** Ops sent and not yet acked on one connection. */
  unackedOps: 64,
} as const;
