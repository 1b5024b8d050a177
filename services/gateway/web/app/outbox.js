// The outbox: every op this page has made and the server has not yet
// confirmed, in the order it was made.
//
// This is what "never lose a stroke" rests on. An op is sent with a `cid`
// and stays here until its own `op` frame comes back (or its `ack`, once
// the room's log has reached the acked seq). When the connection drops,
// everything still here is sent again, in order, with the same cids, after
// the room is re-joined: the server applies a cid at most once and answers
// a repeat with the original ack, so a retry can never double a stroke.
//
// Order matters (points before their stroke's begin are refused), so a
// refused or deferred op stops the line: nothing after it is sent until the
// ops in flight have been answered and the outbox retries from the oldest.
// The outbox is kept in sessionStorage, so a reload of the tab keeps it too.

/** Ops sent and not yet answered, at most; the server allows 64 per connection. */
export const MAX_IN_FLIGHT = 32;
/** Points in one op, at most; the server allows 1,024. */
export const MAX_POINTS = 1000;

// Worth retrying with the same cid: the op may or may not have been applied.
const RETRIABLE = new Set(['rate_limited', 'unavailable', 'internal']);
// `internal` is a bug on the server; retrying forever would hide it.
const MAX_INTERNAL_TRIES = 3;
const RETRY_FIRST_MS = 300;
const RETRY_MAX_MS = 5000;

export class Outbox {
  /**
   * @param {object} o
   * @param {string|null} o.storageKey  sessionStorage key, or null for memory only
   * @param {(entry: object) => boolean} o.send  sends `entry`; false if it could not
   * @param {() => void} o.onChange  the pending ops changed (redraw, status)
   */
  constructor(o) {
    this.o = o;
    this.entries = [];
    this.ready = false;   // joined: ops may be sent
    this.blocked = false; // waiting to retry from the oldest held op
    this.retryTimer = null;
    this.retryAttempt = 0;
    this.prefix = randomPrefix();
    this.counter = 0;
    this.restore();
  }

  /** Ops not yet confirmed (what "N changes not saved" counts). */
  get unsaved() {
    return this.entries.filter((e) => e.state !== 'acked').length;
  }

  /** Every pending op in order, for drawing them before the server confirms. */
  pending() {
    return this.entries;
  }

  nextCid() {
    this.counter += 1;
    return `${this.prefix}.${this.counter}`;
  }

  /** Queues `op` and sends it when it can. Returns its entry. */
  add(op) {
    const last = this.entries[this.entries.length - 1];
    // Points made while the line is busy or down join the still-unsent op
    // before them: fewer, larger frames, and less to resend. Only an op that
    // never left the page may change; a sent one may already be applied.
    if (op.kind === 'stroke_points' && last && last.state === 'queued' && !last.everSent
      && (last.op.kind === 'stroke_begin' || last.op.kind === 'stroke_points')
      && last.op.stroke === op.stroke
      && last.op.points.length + op.points.length <= MAX_POINTS) {
      last.op.points = last.op.points.concat(op.points);
      this.changed();
      this.pump();
      return last;
    }
    const entry = { cid: this.nextCid(), op, state: 'queued', everSent: false, tries: 0 };
    this.entries.push(entry);
    this.changed();
    this.pump();
    return entry;
  }

  /** The room is joined (true) or the connection is gone (false). */
  setReady(ready) {
    this.ready = ready;
    if (!ready) {
      // Whatever was in flight is unknown now: all of it goes again, in
      // order, once the room is joined again. Acked ops stay until seen.
      clearTimeout(this.retryTimer);
      this.retryTimer = null;
      this.blocked = false;
      for (const e of this.entries) if (e.state !== 'acked') e.state = 'queued';
    }
    this.pump();
  }

  pump() {
    if (!this.ready || this.blocked) return;
    let inFlight = this.entries.filter((e) => e.state === 'inflight').length;
    for (const e of this.entries) {
      if (inFlight >= MAX_IN_FLIGHT) break;
      if (e.state === 'held') break; // nothing may overtake it
      if (e.state !== 'queued') continue;
      if (!this.o.send(e)) break;
      e.state = 'inflight';
      e.everSent = true;
      e.tries += 1;
      inFlight += 1;
    }
    this.save();
  }

  /** The op with `cid` is durable with `seq`; the room has applied up to `lastSeq`. */
  ack(cid, seq, lastSeq) {
    const e = this.find(cid);
    if (!e) return;
    this.retryAttempt = 0;
    if (seq <= lastSeq) {
      this.remove(e);
    } else {
      // Durable, but its op frame has not arrived: keep drawing it until
      // it has, or it would blink out and back in.
      e.state = 'acked';
      e.ackedSeq = seq;
      this.changed();
    }
    this.afterAnswer();
  }

  /** Our own op came back as an `op` frame: the room's state has it now. */
  confirm(cid) {
    const e = this.find(cid);
    if (e) {
      this.remove(e);
      this.afterAnswer();
    }
  }

  /** Forgets acked ops whose seq the room has applied. */
  settle(lastSeq) {
    const before = this.entries.length;
    this.entries = this.entries.filter((e) => !(e.state === 'acked' && e.ackedSeq <= lastSeq));
    if (this.entries.length !== before) this.changed();
  }

  /**
   * The server refused the op with `cid`. Returns "dropped" (it will never
   * be applied: tell the person), "held" (it goes again later, in order),
   * or null (not ours, or already settled).
   */
  fail(cid, code) {
    const e = this.find(cid);
    if (!e || e.state === 'acked') return null;
    const first = this.entries.find((x) => x.state !== 'acked');
    const retriable = RETRIABLE.has(code) && !(code === 'internal' && e.tries >= MAX_INTERNAL_TRIES);
    if (!retriable && e === first) {
      // Nothing before it can explain the refusal: it is final.
      this.remove(e);
      this.afterAnswer();
      return 'dropped';
    }
    // Either worth a retry, or possibly refused only because an op before
    // it failed (points for a stroke whose begin was rate limited): stop
    // the line and try again from the oldest once the flight is answered.
    e.state = 'held';
    this.blocked = true;
    this.afterAnswer();
    return 'held';
  }

  /**
   * Replaces the op with `cid` and every later one matching `match` by the
   * ops `rewrite` makes of them (fresh cids; the old ones were refused and
   * used up nothing). Used to continue a stroke the server ended for us.
   */
  rewrite(cid, match, rewrite) {
    const start = this.entries.findIndex((e) => e.cid === cid);
    if (start < 0) return;
    const out = this.entries.slice(0, start);
    for (const e of this.entries.slice(start)) {
      if (e.state !== 'acked' && (e.cid === cid || match(e.op))) {
        const op = rewrite(e.op);
        if (op) out.push({ cid: this.nextCid(), op, state: 'queued', everSent: false, tries: 0 });
      } else {
        out.push(e);
      }
    }
    this.entries = out;
    // Ops after it may be in flight with stale ids; retry from the oldest
    // once they are answered, as for any refusal.
    this.blocked = true;
    this.changed();
    this.afterAnswer();
  }

  afterAnswer() {
    this.changed();
    if (this.blocked) {
      if (this.entries.some((e) => e.state === 'inflight') || this.retryTimer) return;
      const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.retryAttempt);
      this.retryAttempt += 1;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.blocked = false;
        for (const e of this.entries) if (e.state === 'held') e.state = 'queued';
        this.pump();
      }, delay);
    } else {
      this.pump();
    }
  }

  find(cid) {
    return this.entries.find((e) => e.cid === cid);
  }

  remove(entry) {
    const i = this.entries.indexOf(entry);
    if (i >= 0) this.entries.splice(i, 1);
    this.changed();
  }

  changed() {
    this.save();
    this.o.onChange();
  }

  save() {
    if (!this.o.storageKey) return;
    try {
      if (this.entries.length === 0) {
        sessionStorage.removeItem(this.o.storageKey);
      } else {
        const kept = this.entries.map((e) => ({ cid: e.cid, op: e.op, ackedSeq: e.ackedSeq }));
        sessionStorage.setItem(this.o.storageKey, JSON.stringify(kept));
      }
    } catch { /* storage full or disabled: the outbox still lives in memory */ }
  }

  restore() {
    if (!this.o.storageKey) return;
    let kept = [];
    try { kept = JSON.parse(sessionStorage.getItem(this.o.storageKey) || '[]'); } catch { kept = []; }
    if (!Array.isArray(kept)) return;
    const open = new Set();
    for (const k of kept) {
      if (!k || typeof k.cid !== 'string' || !k.op) continue;
      // Restored ops may have been sent before the reload: never merge into them.
      const acked = typeof k.ackedSeq === 'number';
      this.entries.push({ cid: k.cid, op: k.op, state: acked ? 'acked' : 'queued', everSent: true, tries: 0, ackedSeq: k.ackedSeq });
      if (k.op.kind === 'stroke_begin' || k.op.kind === 'stroke_points') open.add(k.op.stroke);
      if (k.op.kind === 'stroke_end') open.delete(k.op.stroke);
    }
    // A stroke cut off by the reload is ended, so it does not stay open.
    for (const stroke of open) {
      this.entries.push({ cid: this.nextCid(), op: { kind: 'stroke_end', stroke }, state: 'queued', everSent: false, tries: 0 });
    }
  }
}

function randomPrefix() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(36).padStart(2, '0')).join('');
}
