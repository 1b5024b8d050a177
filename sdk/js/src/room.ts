// One joined room: its state (rebuilt only from what the server sent), its
// presence and cursors, and its outbox.
//
// Joining resumes: after a reconnect the room re-joins with the last seq it
// applied and that seq's epoch, and gets exactly the ops it missed; a
// `reset` (the server's history was lost and restarted, or we were too far
// behind) replaces the whole state. An op frame whose seq is not the next
// one, or that does not fit the state, means our state is not the server's:
// the room re-joins (with `since` for a gap, from scratch for a misfit).

import { Emitter } from './emitter.js';
import { BadRequestError, ClosedError, CollabError, NotFoundError, errorFromCode } from './errors.js';
import { MAX_POINTS, Outbox, type Ack } from './outbox.js';
import type {
  ClientFrame, CursorFrame, CursorLeaveFrame, ErrorFrame, HistoryPage, JoinedFrame, Op, OpFrame, OpKind, Point,
  PresenceFrame, RoomKind, ServerFrame, User,
} from './protocol.js';
import { RoomState, type SendingMessage, type Stroke } from './state.js';
import type { OutboxStorage } from './storage.js';

/** Where a room is: joining (or re-joining), joined, offline (no connection), or left for good. */
export type RoomStatus = 'joining' | 'joined' | 'offline' | 'left';

export interface JoinedEvent {
  kind: RoomKind;
  epoch: string;
  head: number;
  /** True when the state was replaced as a whole (a first join, or a `reset`). */
  reset: boolean;
}

/** A room's events and their payloads. */
export interface RoomEvents {
  status: RoomStatus;
  /** Joined (again): the state is the server's as of `head`. */
  joined: JoinedEvent;
  /** The whole state was replaced (a first join or a reset): redraw everything. */
  reset: RoomState;
  /** An op applied to the state, in seq order (mine included). */
  op: OpFrame;
  /** Someone came or went (`event`: join or leave). */
  presence: PresenceFrame;
  cursor: CursorFrame;
  cursor_leave: CursorLeaveFrame;
  /** The outbox changed: `unsaved` ops wait to be confirmed. */
  outbox: { unsaved: number };
  /** The server refused an op for good, or refused the join. */
  error: CollabError;
  /**
   * The room was deleted (by its creator, an admin, or its time to live)
   * while joined: the room is left for good, and the ops still in its
   * outbox fail with `NotFoundError` and are not kept.
   */
  deleted: NotFoundError;
}

/** What a room needs from its client. */
export interface RoomHost {
  send(frame: ClientFrame): boolean;
  nextCid(): string;
  storage: OutboxStorage;
  owner: string;
  cursorIntervalMs: number;
  history(room: string, options: HistoryOptions): AsyncGenerator<HistoryPage>;
  forget(room: Room): void;
}

export interface HistoryOptions {
  /** Exclusive; default the newest. */
  before?: number;
  /** Ops per page, 1–500 (default 100). */
  limit?: number;
  /** Only these op kinds. */
  kinds?: OpKind[];
}

export interface StrokeOptions {
  color: string;
  width: number;
  points?: Point[];
  /** The stroke's id (1–64 characters, new in the room); a random one by default. */
  id?: string;
}

// A join refused with these codes will not succeed by retrying.
const FINAL_JOIN_ERRORS = new Set(['not_found', 'forbidden', 'bad_request']);
const JOIN_RETRY_MS = 1000;

export class Room extends Emitter<RoomEvents> {
  readonly id: string;
  kind: RoomKind | null = null;
  epoch: string | null = null;
  /** The last seq applied; null before the first `joined`. */
  lastSeq: number | null = null;
  status: RoomStatus = 'joining';
  /** The state as the server has it. */
  readonly state: RoomState;
  /** Everyone here (me included), by user id. */
  presence = new Map<string, User>();
  /** Other people's pointers, by user id. */
  cursors = new Map<string, { x: number; y: number }>();
  /** Resolves at the first `joined`; rejects if the join is refused for good. */
  readonly ready: Promise<void>;
  /** Me, as the server says in `welcome` (null before it). */
  me: User | null = null;

  private readonly outbox: Outbox;
  private resyncing = false;
  private alias = new Map<string, string>(); // a stroke the server ended for us -> its continuation
  private cursorAt: { x: number; y: number } | null = null;
  private cursorSentAt = -Infinity;
  private cursorTimer: ReturnType<typeof setTimeout> | null = null;
  private joinTimer: ReturnType<typeof setTimeout> | null = null;
  private adoption = new AbortController();
  private attached = false;
  private settleReady!: { resolve: () => void; reject: (e: CollabError) => void };

  constructor(id: string, private readonly host: RoomHost) {
    super();
    this.id = id;
    this.state = new RoomState('');
    this.ready = new Promise((resolve, reject) => { this.settleReady = { resolve, reject }; });
    this.ready.catch(() => { /* also reported as an `error` event */ });
    this.outbox = new Outbox({
      // One cid sequence for the whole client, so a room left and joined
      // again never reuses a cid (the server would answer with the old op).
      nextCid: () => this.host.nextCid(),
      send: (e) => this.host.send({ type: 'op', room: this.id, cid: e.cid, op: e.op }),
      onChange: () => this.emit('outbox', { unsaved: this.outbox.unsaved }),
      onSaveError: (e) => console.warn('collab: the outbox could not be saved; it lives in memory', e),
    });
  }

  /** True while joined: ops go out now. */
  get joined(): boolean {
    return this.status === 'joined';
  }

  /** Ops made and not yet confirmed durable. */
  get unsaved(): number {
    return this.outbox.unsaved;
  }

  // === what an app does ===

  /**
   * Sends a durable op. It waits in the outbox (saved, when the client has
   * a storage) until the server confirms it, across reconnects, reloads
   * and restarts, and is sent with the same cid each time. Resolves with
   * its ack (the op's seq); rejects with a typed error if the server
   * refuses it for good. Refusals are also `error` events, so a promise
   * nobody awaits is never an unhandled rejection.
   */
  op(op: Op): Promise<Ack> {
    return handled(this.outbox.add(op));
  }

  /** Starts a stroke of mine; returns its id. */
  beginStroke(options: StrokeOptions): string {
    const id = options.id ?? `s-${randomId(12)}`;
    const points = options.points ?? [];
    this.op({ kind: 'stroke_begin', stroke: id, color: options.color, width: options.width, points: points.slice(0, MAX_POINTS) });
    if (points.length > MAX_POINTS) this.addPoints(id, points.slice(MAX_POINTS));
    return id;
  }

  /**
   * Adds points to my stroke, in ops of at most 1,000 points. Points added
   * while the previous ones have not left yet join them in one op.
   */
  addPoints(stroke: string, points: Point[]): Promise<Ack> {
    let last: Promise<Ack> = Promise.resolve({ cid: '', seq: 0 });
    for (let i = 0; i < points.length; i += MAX_POINTS) {
      last = handled(this.outbox.add({ kind: 'stroke_points', stroke: this.resolve(stroke), points: points.slice(i, i + MAX_POINTS) }, true));
    }
    return last;
  }

  endStroke(stroke: string): Promise<Ack> {
    return this.op({ kind: 'stroke_end', stroke: this.resolve(stroke) });
  }

  undo(): Promise<Ack> {
    return this.op({ kind: 'undo' });
  }

  redo(): Promise<Ack> {
    return this.op({ kind: 'redo' });
  }

  /** A chat message. */
  say(text: string): Promise<Ack> {
    return this.op({ kind: 'message', text });
  }

  /**
   * My pointer moved (world coordinates). Never stored, so not queued:
   * sent at most at the client's cursor rate, the latest position wins.
   */
  cursor(x: number, y: number): void {
    if (!this.joined) return;
    this.cursorAt = { x, y };
    const wait = this.cursorSentAt + this.host.cursorIntervalMs - Date.now();
    if (wait <= 0) this.flushCursor();
    else if (!this.cursorTimer) this.cursorTimer = setTimeout(() => this.flushCursor(), wait);
  }

  /** My pointer left the canvas. */
  cursorLeave(): void {
    this.cancelCursor();
    if (this.joined) this.host.send({ type: 'cursor_leave', room: this.id });
  }

  /** Resolves once every op made so far is confirmed durable. */
  settled(): Promise<void> {
    return this.outbox.settled();
  }

  /**
   * The room's history, newest first, one page at a time (the HTTP history
   * endpoint): `for await (const page of room.history({kinds: ['message']}))`.
   */
  history(options: HistoryOptions = {}): AsyncGenerator<HistoryPage> {
    return this.host.history(this.id, options);
  }

  /** Fetches up to `limit` messages older than those held into the state; returns how many came. */
  async loadOlderMessages(limit = 50): Promise<number> {
    const before = this.state.oldestMessageSeq();
    if (before === null || !this.state.hasOlderMessages) return 0;
    const pages = this.history({ before, limit, kinds: ['message'] });
    const first = await pages.next();
    await pages.return(undefined);
    if (first.done) return 0;
    this.state.addOlder(first.value.ops, first.value.nextBefore);
    return first.value.ops.length;
  }

  /**
   * Leaves the room. Ops not yet confirmed stay in the outbox's storage and
   * are sent the next time this user joins the room with that storage;
   * their promises reject with a ClosedError.
   */
  leave(): void {
    if (this.status === 'left') return;
    if (this.joined) this.host.send({ type: 'leave', room: this.id });
    this.finish(new ClosedError('the room was left', { room: this.id }));
  }

  // === what a view reads ===

  /** The strokes to draw, bottom to top: the server's, with my pending ops on top. */
  strokes(): Stroke[] {
    return this.state.visibleStrokes(this.outbox.pending());
  }

  /** Messages by seq, oldest first, then mine still on their way. */
  messages(): { sent: OpFrame[]; sending: SendingMessage[] } {
    return this.state.messageList(this.outbox.pending());
  }

  /** Older messages exist in the history than those in the state. */
  get hasOlderMessages(): boolean {
    return this.state.hasOlderMessages;
  }

  // === what the client tells a room ===

  /**
   * @internal Who I am, as soon as it is known (from the token's `sub`
   * before any connection succeeds): what earlier runs left in the
   * outbox's storage is restored at once, so it shows while offline.
   */
  knowUser(user: string): void {
    if (this.status === 'left' || this.attached) return;
    this.attached = true;
    this.state.setMe(user);
    void this.attachOutbox(user);
  }

  /** @internal A (new) connection said welcome: (re-)join, resuming where we were. */
  connected(me: User): void {
    if (this.status === 'left') return;
    this.me = me;
    this.state.setMe(me.id);
    this.knowUser(me.id);
    this.setStatus('joining');
    this.sendJoin();
  }

  /** @internal The connection is gone: nothing is joined until the next `joined`. */
  disconnected(): void {
    if (this.status === 'left') return;
    this.resyncing = false;
    this.outbox.setReady(false);
    this.cancelCursor();
    if (this.joinTimer) clearTimeout(this.joinTimer);
    this.joinTimer = null;
    if (this.cursors.size > 0) {
      for (const user of [...this.cursors.keys()]) this.emit('cursor_leave', { type: 'cursor_leave', room: this.id, user });
      this.cursors.clear();
    }
    this.setStatus('offline');
  }

  /** @internal The client closed. */
  close(): void {
    if (this.status === 'left') return;
    if (this.joined) this.host.send({ type: 'leave', room: this.id });
    this.finish(new ClosedError('the client was closed', { room: this.id }));
  }

  /** @internal Every frame that names this room. */
  handle(frame: ServerFrame): void {
    if (this.status === 'left') return;
    switch (frame.type) {
      case 'joined': return this.onJoined(frame);
      case 'op': return this.onOp(frame);
      case 'ack': return this.outbox.ack(frame.cid, frame.seq, this.lastSeq ?? 0);
      case 'error': return this.onServerError(frame);
      case 'presence': return this.onPresence(frame);
      case 'cursor':
        this.cursors.set(frame.user, { x: frame.x, y: frame.y });
        return this.emit('cursor', frame);
      case 'cursor_leave':
        this.cursors.delete(frame.user);
        return this.emit('cursor_leave', frame);
      default:
    }
  }

  /** @internal Whether an op with this cid waits in this room's outbox. */
  owns(cid: string): boolean {
    return this.outbox.find(cid) !== undefined;
  }

  // === internals ===

  private setStatus(status: RoomStatus): void {
    if (this.status === status) return;
    this.status = status;
    this.emit('status', status);
  }

  private finish(error: ClosedError): void {
    this.disconnected();
    this.adoption.abort();
    this.outbox.close(error);
    this.settleReady.reject(error);
    this.setStatus('left');
    this.host.forget(this);
  }

  /**
   * Saves the outbox from now on, and takes over what earlier runs of this
   * user left for this room: at once for this client's own, and for another
   * owner once it is gone (a reloaded tab at once; an open one when it closes).
   */
  private async attachOutbox(user: string): Promise<void> {
    const place = { storage: this.host.storage, owner: this.host.owner, user, room: this.id };
    let saved: Awaited<ReturnType<OutboxStorage['load']>> = [];
    try {
      saved = await place.storage.load(user, this.id);
    } catch (e) {
      console.warn('collab: saved outboxes could not be read', e);
    }
    if (this.status === 'left') return;
    for (const s of saved) if (s.owner === place.owner) this.outbox.adopt(s.ops);
    this.outbox.attach(place);
    for (const s of saved) {
      if (s.owner === place.owner) continue;
      const signal = this.adoption.signal;
      const gone = place.storage.whenGone ? place.storage.whenGone(s.owner, signal) : Promise.resolve();
      void gone.then(async () => {
        if (signal.aborted) return;
        // Read again: the owner may have sent some before it went.
        const now = (await place.storage.load(user, this.id)).find((x) => x.owner === s.owner);
        if (signal.aborted || !now) return;
        this.outbox.adopt(now.ops);
        await place.storage.save(s.owner, user, this.id, []);
      }).catch((e: unknown) => console.warn('collab: an outbox could not be adopted', e));
    }
  }

  private sendJoin(fresh = false): void {
    // A stroke cut by a dropped connection stays open on the server for a
    // while, so the outbox's points go on with it after the reconnect.
    const frame: ClientFrame = { type: 'join', room: this.id, resume_strokes: true };
    if (!fresh && this.lastSeq !== null && this.epoch !== null) {
      frame.since = this.lastSeq;
      frame.epoch = this.epoch;
    }
    this.host.send(frame);
  }

  /** Our state and the server's disagree: ask again (`fresh`: for the full state). */
  private resync(fresh: boolean): void {
    if (this.resyncing) return;
    this.resyncing = true;
    if (fresh) this.lastSeq = null;
    this.sendJoin(fresh);
  }

  private onJoined(f: JoinedFrame): void {
    this.kind = f.kind;
    if (f.reset) {
      this.epoch = f.epoch;
      this.state.reset(f.state ?? { strokes: [], messages: [] });
      this.lastSeq = f.head;
    } else {
      this.resyncing = false;
      for (const op of f.ops ?? []) {
        // Replayed ops may come without their `type`: give every op event the same shape.
        this.onOp(op.type === 'op' ? op : { ...op, type: 'op' });
        // The replay did not fit our state: a new join is on its way, and
        // its `joined` takes over from here.
        if (this.resyncing) return;
      }
      if (this.lastSeq !== f.head) {
        this.resync(true);
        return;
      }
    }
    this.resyncing = false;
    this.presence = new Map(f.presence.map((u) => [u.id, u]));
    this.cursors.clear();
    this.outbox.settle(this.lastSeq ?? 0);
    this.setStatus('joined');
    this.outbox.setReady(true);
    if (f.reset) this.emit('reset', this.state);
    this.emit('joined', { kind: f.kind, epoch: f.epoch, head: f.head, reset: f.reset });
    this.settleReady.resolve();
  }

  private onOp(f: OpFrame): void {
    if (this.lastSeq === null || this.resyncing) return; // a joined is on its way
    if (f.seq <= this.lastSeq) return; // already applied
    if (f.seq !== this.lastSeq + 1) {
      this.resync(false); // a gap: ask for what we missed
      return;
    }
    this.lastSeq = f.seq;
    if (!this.state.apply(f)) {
      // An op about a stroke we never saw: our state is not the server's.
      this.resync(true);
      return;
    }
    if (f.cid !== null && this.me && f.user === this.me.id) this.outbox.confirm(f.cid, f.seq);
    this.outbox.settle(this.lastSeq);
    this.emit('op', f);
  }

  private onPresence(f: PresenceFrame): void {
    if (f.event === 'join') {
      this.presence.set(f.user.id, f.user);
    } else {
      this.presence.delete(f.user.id);
      if (this.cursors.delete(f.user.id)) this.emit('cursor_leave', { type: 'cursor_leave', room: this.id, user: f.user.id });
    }
    this.emit('presence', f);
  }

  private onServerError(f: ErrorFrame): void {
    const error = errorFromCode(f.code, f.message, { room: this.id, cid: f.cid });
    if (!f.cid) {
      // Unasked, while joined: the room was deleted. Nothing in the outbox
      // may go anywhere now (a room created later under the id is another
      // room), so it is dropped, not kept for a reload.
      if (this.joined && f.code === 'not_found') {
        const gone = new NotFoundError(f.message || 'the room was deleted', { room: this.id });
        this.emit('deleted', gone);
        this.outbox.discard(gone);
        this.finish(new ClosedError('the room was deleted', { room: this.id }));
        return;
      }
      // Unasked, while joined: the token a refresh put in force does not
      // cover this room, and the server took us out of it. Joining again
      // would be refused too; the room is left (its unsent ops stay in the
      // storage, as on close).
      if (this.joined && f.code === 'forbidden') {
        this.emit('error', error);
        this.finish(new ClosedError('the token in force no longer covers this room', { room: this.id }));
        return;
      }
      // About the room itself: a refused join (or a cursor after the
      // server dropped us, which the next join mends).
      if (!this.joined && FINAL_JOIN_ERRORS.has(f.code)) {
        this.emit('error', error);
        this.settleReady.reject(error);
        this.finish(new ClosedError(`the join was refused: ${f.code}`, { room: this.id }));
        return;
      }
      if (f.code === 'rate_limited' || f.code === 'unavailable') {
        if (!this.joinTimer) {
          this.joinTimer = setTimeout(() => {
            this.joinTimer = null;
            if (this.status === 'joining') this.sendJoin();
          }, JOIN_RETRY_MS);
        }
      }
      this.emit('error', error);
      return;
    }
    const entry = this.outbox.find(f.cid);
    if (!entry) return;
    const op = entry.op;
    const stroke = 'stroke' in op && op.stroke !== undefined ? this.state.strokes.get(op.stroke) : undefined;
    // The server ended our stroke while we were away (our last connection
    // left the room); points drawn since are refused. They go on as a new
    // stroke from where the old one stopped, so nothing drawn is lost.
    if (f.code === 'bad_request' && stroke && stroke.done && this.me && stroke.user === this.me.id) {
      if (op.kind === 'stroke_end') {
        // Already ended: nothing to say.
        this.outbox.fail(f.cid, new BadRequestError('the server had already ended this stroke', { room: this.id, cid: f.cid }), true);
        return;
      }
      if (op.kind === 'stroke_points') {
        this.continueStroke(f.cid, stroke);
        return;
      }
    }
    const outcome = this.outbox.fail(f.cid, error);
    if (outcome === 'dropped' || f.code === 'rate_limited') this.emit('error', error);
  }

  private continueStroke(cid: string, stroke: Stroke): void {
    const next = `s-${randomId(12)}`;
    this.alias.set(stroke.id, next);
    const last = stroke.points[stroke.points.length - 1];
    let first = true;
    this.outbox.rewrite(cid,
      (op) => (op.kind === 'stroke_points' || op.kind === 'stroke_end') && op.stroke === stroke.id,
      (op) => {
        if (op.kind !== 'stroke_points' && op.kind !== 'stroke_end') return op;
        if (first) {
          first = false;
          const points = op.kind === 'stroke_points' ? op.points : [];
          const all = last ? [last, ...points] : points;
          const begin: Op = { kind: 'stroke_begin', stroke: next, color: stroke.color, width: stroke.width, points: all.slice(0, MAX_POINTS + 1) };
          return begin;
        }
        return { ...op, stroke: next };
      });
  }

  private resolve(id: string): string {
    let at = id;
    for (let next = this.alias.get(at); next !== undefined; next = this.alias.get(at)) at = next;
    return at;
  }

  private flushCursor(): void {
    this.cursorTimer = null;
    if (!this.cursorAt || !this.joined) return;
    this.cursorSentAt = Date.now();
    this.host.send({ type: 'cursor', room: this.id, x: this.cursorAt.x, y: this.cursorAt.y });
    this.cursorAt = null;
  }

  private cancelCursor(): void {
    if (this.cursorTimer) clearTimeout(this.cursorTimer);
    this.cursorTimer = null;
    this.cursorAt = null;
  }
}

/** The promise, marked as handled: a refusal nobody awaits is not an unhandled rejection. */
function handled<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}

/** A short random string of [a-z0-9], for ids no one else will pick. */
export function randomId(length = 10): string {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}
