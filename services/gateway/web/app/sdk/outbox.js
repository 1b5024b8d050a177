// The outbox: every op of one room that this client has made and the
// server has not yet confirmed, in the order it was made.
//
// This is what "never lose an edit" rests on. An op is sent with a `cid`
// and stays here until its own `op` frame comes back (or its `ack`, once
// the room's log has reached the acked seq). When the connection drops,
// everything still here is sent again, in order, with the same cids, after
// the room is re-joined: the server applies a cid at most once and answers
// a repeat with the original ack, so a retry can never double an op. With
// a storage the outbox is saved on every change, so a reload or a crash
// loses nothing either (see storage.ts).
//
// Order matters (points before their stroke's begin are refused), so a
// refused or deferred op stops the line: nothing after it is sent until the
// ops in flight have been answered and the outbox retries from the oldest.
import { ClosedError } from './errors.js';
/** Ops sent and not yet answered, at most; the server allows 64 per connection. */
export const MAX_IN_FLIGHT = 32;
/** Points in one op this client sends, at most; the server allows 1,024. */
export const MAX_POINTS = 1000;
// Worth retrying with the same cid: the op may or may not have been applied.
const RETRIABLE = new Set(['rate_limited', 'unavailable', 'internal']);
// `internal` is a bug on the server; retrying forever would hide it.
const MAX_INTERNAL_TRIES = 3;
const RETRY_FIRST_MS = 300;
const RETRY_MAX_MS = 5000;
export class Outbox {
    o;
    entries = [];
    ready = false; // the room is joined: ops may be sent
    blocked = false; // waiting to retry from the oldest held op
    retryTimer = null;
    retryAttempt = 0;
    place = null;
    saving = false;
    dirty = false;
    closed = false;
    idle = [];
    constructor(o) {
        this.o = o;
    }
    /** Ops not yet confirmed durable. */
    get unsaved() {
        let n = 0;
        for (const e of this.entries)
            if (e.state !== 'acked')
                n += 1;
        return n;
    }
    /** Every pending op in order (acked ones until their op frame is applied). */
    pending() {
        return this.entries;
    }
    find(cid) {
        return this.entries.find((e) => e.cid === cid);
    }
    /** Resolves once nothing is waiting to be confirmed. */
    settled() {
        if (this.unsaved === 0)
            return Promise.resolve();
        return new Promise((resolve) => this.idle.push(resolve));
    }
    /** Queues `op` and sends it when it can; the promise resolves with its ack. */
    add(op, merge = false) {
        if (this.closed)
            return Promise.reject(new ClosedError('the client is closed'));
        return new Promise((resolve, reject) => {
            const waiter = { resolve, reject };
            const last = this.entries[this.entries.length - 1];
            // Points made while the line is busy or down join the still-unsent op
            // before them: fewer, larger frames, and less to resend. Only an op
            // that never left may change; a sent one may already be applied.
            if (merge && op.kind === 'stroke_points' && last && last.state === 'queued' && !last.everSent
                && (last.op.kind === 'stroke_begin' || last.op.kind === 'stroke_points')
                && last.op.stroke === op.stroke
                && last.op.points.length + op.points.length <= MAX_POINTS) {
                last.op.points = last.op.points.concat(op.points);
                last.waiters.push(waiter);
            }
            else {
                // A copy: merging replaces its `points`, never the caller's.
                this.entries.push(this.entry({ ...op }, [waiter]));
            }
            this.changed();
            this.pump();
        });
    }
    /** Saves from now on to `place`, and adopts what earlier owners left there. */
    attach(place) {
        this.place = place;
        this.save();
    }
    /**
     * Takes over ops an earlier run (or another tab, now gone) left unsent.
     * They may have been sent before: they are never merged into. A stroke
     * they left open is ended, since that run's gesture is over.
     */
    adopt(saved) {
        if (saved.length === 0 || this.closed)
            return;
        const open = new Set();
        for (const s of saved) {
            if (this.find(s.cid))
                continue;
            const entry = this.entry(s.op, []);
            Object.assign(entry, { cid: s.cid, everSent: true });
            if (typeof s.acked === 'number') {
                entry.state = 'acked';
                entry.ackedSeq = s.acked;
            }
            this.entries.push(entry);
            if (s.op.kind === 'stroke_begin' || s.op.kind === 'stroke_points')
                open.add(s.op.stroke);
            if (s.op.kind === 'stroke_end')
                open.delete(s.op.stroke);
        }
        for (const stroke of open)
            this.entries.push(this.entry({ kind: 'stroke_end', stroke }, []));
        this.changed();
        this.pump();
    }
    /** The room is joined (true) or the connection is gone (false). */
    setReady(ready) {
        this.ready = ready;
        if (!ready) {
            // Whatever was in flight is unknown now: all of it goes again, in
            // order, once the room is joined again. Acked ops stay until seen.
            this.clearRetry();
            this.blocked = false;
            for (const e of this.entries)
                if (e.state !== 'acked')
                    e.state = 'queued';
        }
        this.pump();
    }
    /** Sends what may be sent now. */
    pump() {
        if (!this.ready || this.blocked || this.closed)
            return;
        let inFlight = this.entries.filter((e) => e.state === 'inflight').length;
        for (const e of this.entries) {
            if (inFlight >= MAX_IN_FLIGHT)
                break;
            if (e.state === 'held')
                break; // nothing may overtake it
            if (e.state !== 'queued')
                continue;
            if (!this.o.send(e))
                break;
            e.state = 'inflight';
            e.everSent = true;
            e.tries += 1;
            inFlight += 1;
        }
    }
    /** The op with `cid` is durable with `seq`; the room has applied up to `lastSeq`. */
    ack(cid, seq, lastSeq) {
        const e = this.find(cid);
        if (!e)
            return;
        this.retryAttempt = 0;
        resolve(e, seq);
        if (seq <= lastSeq) {
            this.remove(e);
        }
        else {
            // Durable, but its op frame has not arrived: keep showing it until
            // it has, or it would blink out and back in.
            e.state = 'acked';
            e.ackedSeq = seq;
        }
        this.afterAnswer();
    }
    /** Our own op came back as an `op` frame with `seq`: the room's state has it now. */
    confirm(cid, seq) {
        const e = this.find(cid);
        if (!e)
            return;
        resolve(e, seq);
        this.remove(e);
        this.afterAnswer();
    }
    /** Forgets acked ops whose seq the room has applied. */
    settle(lastSeq) {
        const before = this.entries.length;
        this.entries = this.entries.filter((e) => !(e.state === 'acked' && (e.ackedSeq ?? Infinity) <= lastSeq));
        if (this.entries.length !== before)
            this.changed();
    }
    /**
     * The server refused the op with `cid`: "dropped" (it will never be
     * applied; its promise rejects with `error`), "held" (it goes again
     * later, in order), or null (not ours, or already settled).
     */
    fail(cid, error, final = false) {
        const e = this.find(cid);
        if (!e || e.state === 'acked')
            return null;
        const first = this.entries.find((x) => x.state !== 'acked');
        const retriable = !final && RETRIABLE.has(error.code)
            && !(error.code === 'internal' && e.tries >= MAX_INTERNAL_TRIES);
        if (!retriable && e === first) {
            // Nothing before it can explain the refusal: it is final.
            for (const w of e.waiters)
                w.reject(error);
            e.waiters = [];
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
     * ops `rewrite` makes of them (fresh cids: the old ones were refused and
     * used up nothing; their promises follow). Used to continue a stroke the
     * server ended for us.
     */
    rewrite(cid, match, rewrite) {
        const start = this.entries.findIndex((e) => e.cid === cid);
        if (start < 0)
            return;
        const out = this.entries.slice(0, start);
        let orphans = [];
        for (const e of this.entries.slice(start)) {
            if (e.state !== 'acked' && (e.cid === cid || match(e.op))) {
                const op = rewrite(e.op);
                if (op) {
                    out.push(this.entry(op, orphans.concat(e.waiters)));
                    orphans = [];
                }
                else {
                    orphans = orphans.concat(e.waiters);
                }
            }
            else {
                out.push(e);
            }
        }
        // Nothing took them: they follow the last replacement, or resolve with it.
        const lastNew = [...out].reverse().find((e) => !e.everSent);
        if (lastNew)
            lastNew.waiters.push(...orphans);
        this.entries = out;
        // Ops after it may be in flight with stale ids; retry from the oldest
        // once they are answered, as for any refusal.
        this.blocked = true;
        this.afterAnswer();
    }
    /** Stops sending; pending promises reject with `error`. What is saved stays saved. */
    close(error) {
        if (this.closed)
            return;
        this.closed = true;
        this.clearRetry();
        for (const e of this.entries) {
            for (const w of e.waiters)
                w.reject(error);
            e.waiters = [];
        }
    }
    /**
     * The room is gone (deleted): every op waiting here fails with `error`
     * and none is kept, saved or sent, not even to a room created later
     * under the same id.
     */
    discard(error) {
        if (this.closed)
            return;
        const entries = this.entries;
        this.entries = [];
        this.changed();
        this.close(error);
        for (const e of entries)
            for (const w of e.waiters)
                w.reject(error);
    }
    // === internals ===
    entry(op, waiters) {
        return { cid: this.o.nextCid(), op, state: 'queued', everSent: false, tries: 0, waiters };
    }
    afterAnswer() {
        this.changed();
        if (this.blocked) {
            if (this.entries.some((e) => e.state === 'inflight') || this.retryTimer)
                return;
            const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** this.retryAttempt);
            this.retryAttempt += 1;
            this.retryTimer = setTimeout(() => {
                this.retryTimer = null;
                this.blocked = false;
                for (const e of this.entries)
                    if (e.state === 'held')
                        e.state = 'queued';
                this.pump();
            }, delay);
        }
        else {
            this.pump();
        }
    }
    clearRetry() {
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
    }
    remove(entry) {
        const i = this.entries.indexOf(entry);
        if (i >= 0)
            this.entries.splice(i, 1);
    }
    changed() {
        this.save();
        if (this.unsaved === 0 && this.idle.length > 0) {
            const idle = this.idle;
            this.idle = [];
            for (const wake of idle)
                wake();
        }
        this.o.onChange();
    }
    /** Writes the outbox; one write at a time, the latest state wins. */
    save() {
        if (!this.place)
            return;
        if (this.saving) {
            this.dirty = true;
            return;
        }
        this.saving = true;
        this.dirty = false;
        const { storage, owner, user, room } = this.place;
        const ops = this.entries.map((e) => (e.ackedSeq === undefined ? { cid: e.cid, op: e.op } : { cid: e.cid, op: e.op, acked: e.ackedSeq }));
        storage.save(owner, user, room, ops)
            .catch((error) => this.o.onSaveError?.(error))
            .finally(() => {
            this.saving = false;
            if (this.dirty)
                this.save();
        });
    }
}
function resolve(e, seq) {
    for (const w of e.waiters)
        w.resolve({ cid: e.cid, seq });
    e.waiters = [];
}
