// One joined room as this page knows it: the server's state, rebuilt only
// from what the server sent (joined + op frames applied strictly by seq),
// plus this page's own ops not yet confirmed (the outbox), which are drawn
// on top of it until their op frames come back.
//
// Keeping the two apart is what makes the page converge: the picture is
// always "server state + my pending ops", so once the outbox is empty it is
// exactly the server's state — never a stroke drawn twice because it was
// both predicted and received, never one missing because a prediction was
// thrown away.

import { Outbox, MAX_POINTS } from './outbox.js';
import { randomId } from './ui.js';

/** Messages in `joined.state`; fewer means there is nothing older. */
const STATE_MESSAGES = 50;

export class Room {
  /**
   * @param {object} o
   * @param {string} o.id
   * @param {{id: string, name: string, color: string}} o.me
   * @param {(frame: object) => boolean} o.send   false when the socket is down
   * @param {(what: string) => void} o.onChange   "board", "chat", "presence", "cursors", "status", "joined"
   * @param {(code: string, message: string, context: object) => void} o.onError
   */
  constructor(o) {
    this.o = o;
    this.id = o.id;
    this.me = o.me;
    this.kind = null;
    this.epoch = null;
    this.lastSeq = null; // the last seq applied; null before the first joined
    this.joined = false;
    this.resyncing = false;
    this.strokes = new Map(); // id -> {id, user, color, width, points, done, visible}
    this.order = []; // stroke ids in the order they were begun (drawing order)
    this.myEnded = []; // my strokes in stroke_end order, for predicting undo
    this.myUndone = []; // my undone strokes, most recent last, for predicting redo
    this.alias = new Map(); // a stroke the server ended for us -> its continuation
    this.messages = new Map(); // seq -> message op frame
    this.hasOlder = false;
    this.presence = new Map(); // user id -> {id, name, color}
    this.names = loadNames(); // user id -> last known display name
    this.cursors = new Map(); // user id -> {x, y} in world coordinates
    this.outbox = new Outbox({
      storageKey: `collab.outbox.${o.me.id}.${o.id}`,
      send: (e) => this.o.send({ type: 'op', room: this.id, cid: e.cid, op: e.op }),
      onChange: () => { this.o.onChange('board'); this.o.onChange('chat'); this.o.onChange('status'); },
    });
    this.rememberName(o.me);
  }

  /**
   * Op frames carry only user ids; names come with presence. Names seen
   * are kept (in localStorage too), so messages of people who have left
   * still show a name where this browser ever saw one.
   */
  rememberName(user) {
    if (this.names.get(user.id) === user.name) return;
    this.names.delete(user.id); // re-inserted last: the most recently learnt
    this.names.set(user.id, user.name);
    saveNames(this.names);
  }

  // === connection events ===

  /** A (new) connection said welcome: (re-)join, resuming where we were. */
  connected(me) {
    this.me = me;
    this.rememberName(me);
    this.sendJoin();
  }

  /** The connection is gone: nothing is joined until the next `joined`. */
  disconnected() {
    this.joined = false;
    this.resyncing = false;
    this.outbox.setReady(false);
    this.cursors.clear();
    this.o.onChange('cursors');
    this.o.onChange('status');
  }

  sendJoin(fresh = false) {
    const frame = { type: 'join', room: this.id };
    if (!fresh && this.lastSeq !== null) {
      frame.since = this.lastSeq;
      frame.epoch = this.epoch;
    }
    this.o.send(frame);
  }

  /**
   * Our state and the server's disagree (a gap, an op about a stroke we
   * never saw): ask again. `fresh` asks for the full state.
   */
  resync(fresh) {
    if (this.resyncing) return;
    this.resyncing = true;
    if (fresh) this.lastSeq = null;
    this.sendJoin(fresh);
  }

  /** Every frame that names this room (and acks/errors with our cids). */
  handle(frame) {
    switch (frame.type) {
      case 'joined': return this.onJoined(frame);
      case 'op': return this.onOp(frame);
      case 'ack': return this.outbox.ack(frame.cid, frame.seq, this.lastSeq ?? 0);
      case 'error': return this.onServerError(frame);
      case 'presence': return this.onPresence(frame);
      case 'cursor':
        this.cursors.set(frame.user, { x: frame.x, y: frame.y });
        return this.o.onChange('cursors');
      case 'cursor_leave':
        this.cursors.delete(frame.user);
        return this.o.onChange('cursors');
      default:
    }
  }

  onJoined(f) {
    this.kind = f.kind;
    if (f.reset) {
      this.epoch = f.epoch;
      this.strokes = new Map();
      this.order = [];
      this.myEnded = [];
      this.myUndone = []; // undone strokes are not in a state: redo cannot be predicted
      for (const s of f.state.strokes) {
        this.strokes.set(s.id, { ...s, visible: true });
        this.order.push(s.id);
        if (s.user === this.me.id && s.done) this.myEnded.push(s.id);
      }
      this.messages = new Map(f.state.messages.map((m) => [m.seq, m]));
      this.hasOlder = f.state.messages.length >= STATE_MESSAGES;
      this.lastSeq = f.head;
    } else {
      this.resyncing = false;
      for (const op of f.ops) {
        this.onOp(op);
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
    for (const u of f.presence) this.rememberName(u);
    this.cursors.clear();
    this.joined = true;
    this.outbox.settle(this.lastSeq);
    this.outbox.setReady(true);
    for (const what of ['joined', 'board', 'chat', 'presence', 'cursors', 'status']) this.o.onChange(what);
  }

  onOp(f) {
    if (this.lastSeq === null || this.resyncing) return; // a joined is on its way
    if (f.seq <= this.lastSeq) return; // already applied
    if (f.seq !== this.lastSeq + 1) {
      this.resync(false);
      return;
    }
    this.lastSeq = f.seq;
    if (!this.apply(f)) {
      // An op about a stroke we never saw: our state is not the server's.
      this.resync(true);
      return;
    }
    if (f.user === this.me.id && f.cid) this.outbox.confirm(f.cid);
    this.outbox.settle(this.lastSeq);
    this.o.onChange(f.op.kind === 'message' ? 'chat' : 'board');
  }

  /** Applies one op frame to the server state; false if it does not fit it. */
  apply(f) {
    const op = f.op;
    const mine = f.user === this.me.id;
    switch (op.kind) {
      case 'stroke_begin':
        this.strokes.set(op.stroke, {
          id: op.stroke, user: f.user, color: op.color, width: op.width,
          points: op.points.slice(), done: false, visible: true,
        });
        this.order.push(op.stroke);
        return true;
      case 'stroke_points': {
        const s = this.strokes.get(op.stroke);
        if (!s) return false;
        for (const p of op.points) s.points.push(p);
        return true;
      }
      case 'stroke_end': {
        const s = this.strokes.get(op.stroke);
        if (!s) return false;
        s.done = true;
        if (mine) {
          this.myEnded.push(op.stroke);
          this.myUndone = [];
        }
        return true;
      }
      case 'undo':
      case 'redo': {
        const s = this.strokes.get(op.stroke);
        if (!s) return false; // e.g. redo of a stroke undone before our last full state
        s.visible = op.kind === 'redo';
        if (mine && op.kind === 'undo') this.myUndone.push(op.stroke);
        if (mine && op.kind === 'redo') this.myUndone = this.myUndone.filter((id) => id !== op.stroke);
        return true;
      }
      case 'message':
        this.messages.set(f.seq, f);
        return true;
      default:
        return true; // a kind added to the protocol later: nothing to draw
    }
  }

  onPresence(f) {
    if (f.event === 'join') {
      this.presence.set(f.user.id, f.user);
      this.rememberName(f.user);
    } else {
      this.presence.delete(f.user.id);
      this.cursors.delete(f.user.id);
      this.o.onChange('cursors');
    }
    this.o.onChange('presence');
  }

  onServerError(f) {
    if (!f.cid) {
      // About the room itself: a refused join.
      if (f.code === 'rate_limited' || f.code === 'unavailable') {
        setTimeout(() => this.sendJoin(), 1000);
      }
      this.o.onError(f.code, f.message, { join: true });
      return;
    }
    const entry = this.outbox.find(f.cid);
    if (!entry) return;
    const op = entry.op;
    const stroke = op.stroke && this.strokes.get(op.stroke);
    // The server ended our stroke while we were away (our last connection
    // left the room); points we drew since then are refused. They go on as
    // a new stroke from where the old one stopped, so nothing drawn is lost.
    if (f.code === 'bad_request' && stroke && stroke.done && stroke.user === this.me.id) {
      if (op.kind === 'stroke_end') {
        this.outbox.fail(f.cid, 'ended'); // already ended: nothing to say
        return;
      }
      if (op.kind === 'stroke_points') {
        this.continueStroke(entry, stroke);
        return;
      }
    }
    const outcome = this.outbox.fail(f.cid, f.code);
    if (outcome === 'dropped' || f.code === 'rate_limited') {
      this.o.onError(f.code, f.message, { op });
    }
  }

  continueStroke(entry, stroke) {
    const next = newStrokeId();
    this.alias.set(stroke.id, next);
    const last = stroke.points[stroke.points.length - 1];
    let first = true;
    this.outbox.rewrite(entry.cid,
      (op) => (op.kind === 'stroke_points' || op.kind === 'stroke_end') && op.stroke === stroke.id,
      (op) => {
        if (first) {
          first = false;
          const points = last ? [last, ...op.points] : op.points;
          return { kind: 'stroke_begin', stroke: next, color: stroke.color, width: stroke.width, points: points.slice(0, MAX_POINTS + 1) };
        }
        return { ...op, stroke: next };
      });
  }

  // === what the page does ===

  /** Starts a stroke of mine; returns its id. */
  beginStroke(color, width, points) {
    const id = newStrokeId();
    this.outbox.add({ kind: 'stroke_begin', stroke: id, color, width, points });
    return id;
  }

  addPoints(id, points) {
    for (let i = 0; i < points.length; i += MAX_POINTS) {
      this.outbox.add({ kind: 'stroke_points', stroke: this.resolve(id), points: points.slice(i, i + MAX_POINTS) });
    }
  }

  endStroke(id) {
    this.outbox.add({ kind: 'stroke_end', stroke: this.resolve(id) });
  }

  undo() { this.outbox.add({ kind: 'undo' }); }
  redo() { this.outbox.add({ kind: 'redo' }); }
  say(text) { this.outbox.add({ kind: 'message', text }); }

  /** My pointer, in world coordinates (never stored, so not queued). */
  moveCursor(x, y) {
    if (this.joined) this.o.send({ type: 'cursor', room: this.id, x, y });
  }

  leaveCursor() {
    if (this.joined) this.o.send({ type: 'cursor_leave', room: this.id });
  }

  leave() {
    this.o.send({ type: 'leave', room: this.id });
  }

  resolve(id) {
    while (this.alias.has(id)) id = this.alias.get(id);
    return id;
  }

  // === what the views read ===

  /**
   * The strokes to draw, bottom to top: the server's visible strokes in
   * begin order, with my pending ops applied on top (new strokes, more
   * points, and a best guess of what my pending undo/redo will resolve to).
   */
  drawList() {
    const extra = new Map();
    const pending = new Map();
    const hide = new Set();
    const show = new Set();
    const ended = this.myEnded.slice();
    const undone = this.myUndone.slice();
    const visible = (id) => {
      if (hide.has(id)) return false;
      if (show.has(id)) return true;
      const s = this.strokes.get(id);
      return s ? s.visible : pending.has(id);
    };
    for (const { op } of this.outbox.pending()) {
      switch (op.kind) {
        case 'stroke_begin':
          if (!this.strokes.has(op.stroke) && !pending.has(op.stroke)) {
            pending.set(op.stroke, {
              id: op.stroke, user: this.me.id, color: op.color, width: op.width,
              points: op.points.slice(), done: false, visible: true, pending: true,
            });
          }
          break;
        case 'stroke_points': {
          const p = pending.get(op.stroke);
          const s = this.strokes.get(op.stroke);
          if (p) p.points.push(...op.points);
          else if (s && !s.done) {
            if (!extra.has(op.stroke)) extra.set(op.stroke, []);
            extra.get(op.stroke).push(...op.points);
          }
          break;
        }
        case 'stroke_end':
          if (!ended.includes(op.stroke)) ended.push(op.stroke);
          undone.length = 0;
          break;
        case 'undo':
          for (let i = ended.length - 1; i >= 0; i--) {
            if (visible(ended[i])) {
              hide.add(ended[i]);
              show.delete(ended[i]);
              undone.push(ended[i]);
              break;
            }
          }
          break;
        case 'redo': {
          const id = undone.pop();
          if (id) {
            show.add(id);
            hide.delete(id);
          }
          break;
        }
        default:
      }
    }
    const list = [];
    for (const id of this.order) {
      if (!visible(id)) continue;
      const s = this.strokes.get(id);
      const more = extra.get(id);
      list.push(more ? { ...s, points: s.points.concat(more), pending: true } : s);
    }
    for (const [id, p] of pending) if (visible(id)) list.push(p);
    return list;
  }

  /** Messages by seq, oldest first, then mine still on their way. */
  messageList() {
    const sent = [...this.messages.keys()].sort((a, b) => a - b).map((seq) => this.messages.get(seq));
    const sending = this.outbox.pending()
      .filter((e) => e.op.kind === 'message')
      .map((e) => ({ cid: e.cid, user: this.me.id, op: e.op, pending: true }));
    return { sent, sending };
  }

  /** Older messages from the history endpoint (newest first, as it answers). */
  addOlder(ops, nextBefore) {
    for (const m of ops) if (m.op && m.op.kind === 'message') this.messages.set(m.seq, m);
    this.hasOlder = nextBefore !== null && nextBefore !== undefined;
    this.o.onChange('chat');
  }

  oldestMessageSeq() {
    let oldest = null;
    for (const seq of this.messages.keys()) if (oldest === null || seq < oldest) oldest = seq;
    return oldest;
  }

  nameOf(user) {
    return this.names.get(user) || user;
  }

  colorOf(user) {
    const p = this.presence.get(user);
    return p ? p.color : null;
  }
}

const NAMES_KEY = 'collab.names';
const NAMES_MAX = 500;

function loadNames() {
  try {
    const saved = JSON.parse(localStorage.getItem(NAMES_KEY) || '{}');
    return new Map(Object.entries(saved).filter(([, v]) => typeof v === 'string'));
  } catch {
    return new Map();
  }
}

function saveNames(names) {
  // Most recently learnt last; the oldest are forgotten first.
  const entries = [...names].slice(-NAMES_MAX);
  try { localStorage.setItem(NAMES_KEY, JSON.stringify(Object.fromEntries(entries))); } catch { /* optional */ }
}

function newStrokeId() {
  return `s-${randomId(12)}`;
}
