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
import { MAX_POINTS, Outbox } from './outbox.js';
import { RoomState } from './state.js';
// A join refused with these codes will not succeed by retrying.
const FINAL_JOIN_ERRORS = new Set(['not_found', 'forbidden', 'bad_request']);
const JOIN_RETRY_MS = 1000;
export class Room extends Emitter {
    host;
    id;
    kind = null;
    epoch = null;
    /** The last seq applied; null before the first `joined`. */
    lastSeq = null;
    status = 'joining';
    /** The state as the server has it. */
    state;
    /** Everyone here (me included), by user id. */
    presence = new Map();
    /** Other people's pointers, by user id. */
    cursors = new Map();
    /** Resolves at the first `joined`; rejects if the join is refused for good. */
    ready;
    /** Me, as the server says in `welcome` (null before it). */
    me = null;
    outbox;
    resyncing = false;
    alias = new Map(); // a stroke the server ended for us -> its continuation
    cursorAt = null;
    cursorSentAt = -Infinity;
    cursorTimer = null;
    joinTimer = null;
    adoption = new AbortController();
    attached = false;
    settleReady;
    constructor(id, host) {
        super();
        this.host = host;
        this.id = id;
        this.state = new RoomState('');
        this.ready = new Promise((resolve, reject) => { this.settleReady = { resolve, reject }; });
        this.ready.catch(() => { });
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
    get joined() {
        return this.status === 'joined';
    }
    /** Ops made and not yet confirmed durable. */
    get unsaved() {
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
    op(op) {
        return handled(this.outbox.add(op));
    }
    /** Starts a stroke of mine; returns its id. */
    beginStroke(options) {
        const id = options.id ?? `s-${randomId(12)}`;
        const points = options.points ?? [];
        this.op({ kind: 'stroke_begin', stroke: id, color: options.color, width: options.width, points: points.slice(0, MAX_POINTS) });
        if (points.length > MAX_POINTS)
            this.addPoints(id, points.slice(MAX_POINTS));
        return id;
    }
    /**
     * Adds points to my stroke, in ops of at most 1,000 points. Points added
     * while the previous ones have not left yet join them in one op.
     */
    addPoints(stroke, points) {
        let last = Promise.resolve({ cid: '', seq: 0 });
        for (let i = 0; i < points.length; i += MAX_POINTS) {
            last = handled(this.outbox.add({ kind: 'stroke_points', stroke: this.resolve(stroke), points: points.slice(i, i + MAX_POINTS) }, true));
        }
        return last;
    }
    endStroke(stroke) {
        return this.op({ kind: 'stroke_end', stroke: this.resolve(stroke) });
    }
    undo() {
        return this.op({ kind: 'undo' });
    }
    redo() {
        return this.op({ kind: 'redo' });
    }
    /** A chat message. */
    say(text) {
        return this.op({ kind: 'message', text });
    }
    /**
     * My pointer moved (world coordinates). Never stored, so not queued:
     * sent at most at the client's cursor rate, the latest position wins.
     */
    cursor(x, y) {
        if (!this.joined)
            return;
        this.cursorAt = { x, y };
        const wait = this.cursorSentAt + this.host.cursorIntervalMs - Date.now();
        if (wait <= 0)
            this.flushCursor();
        else if (!this.cursorTimer)
            this.cursorTimer = setTimeout(() => this.flushCursor(), wait);
    }
    /** My pointer left the canvas. */
    cursorLeave() {
        this.cancelCursor();
        if (this.joined)
            this.host.send({ type: 'cursor_leave', room: this.id });
    }
    /** Resolves once every op made so far is confirmed durable. */
    settled() {
        return this.outbox.settled();
    }
    /**
     * The room's history, newest first, one page at a time (the HTTP history
     * endpoint): `for await (const page of room.history({kinds: ['message']}))`.
     */
    history(options = {}) {
        return this.host.history(this.id, options);
    }
    /** Fetches up to `limit` messages older than those held into the state; returns how many came. */
    async loadOlderMessages(limit = 50) {
        const before = this.state.oldestMessageSeq();
        if (before === null || !this.state.hasOlderMessages)
            return 0;
        const pages = this.history({ before, limit, kinds: ['message'] });
        const first = await pages.next();
        await pages.return(undefined);
        if (first.done)
            return 0;
        this.state.addOlder(first.value.ops, first.value.nextBefore);
        return first.value.ops.length;
    }
    /**
     * Leaves the room. Ops not yet confirmed stay in the outbox's storage and
     * are sent the next time this user joins the room with that storage;
     * their promises reject with a ClosedError.
     */
    leave() {
        if (this.status === 'left')
            return;
        if (this.joined)
            this.host.send({ type: 'leave', room: this.id });
        this.finish(new ClosedError('the room was left', { room: this.id }));
    }
    // === what a view reads ===
    /** The strokes to draw, bottom to top: the server's, with my pending ops on top. */
    strokes() {
        return this.state.visibleStrokes(this.outbox.pending());
    }
    /** Messages by seq, oldest first, then mine still on their way. */
    messages() {
        return this.state.messageList(this.outbox.pending());
    }
    /** Older messages exist in the history than those in the state. */
    get hasOlderMessages() {
        return this.state.hasOlderMessages;
    }
    // === what the client tells a room ===
    /**
     * @internal Who I am, as soon as it is known (from the token's `sub`
     * before any connection succeeds): what earlier runs left in the
     * outbox's storage is restored at once, so it shows while offline.
     */
    knowUser(user) {
        if (this.status === 'left' || this.attached)
            return;
        this.attached = true;
        this.state.setMe(user);
        void this.attachOutbox(user);
    }
    /** @internal A (new) connection said welcome: (re-)join, resuming where we were. */
    connected(me) {
        if (this.status === 'left')
            return;
        this.me = me;
        this.state.setMe(me.id);
        this.knowUser(me.id);
        this.setStatus('joining');
        this.sendJoin();
    }
    /** @internal The connection is gone: nothing is joined until the next `joined`. */
    disconnected() {
        if (this.status === 'left')
            return;
        this.resyncing = false;
        this.outbox.setReady(false);
        this.cancelCursor();
        if (this.joinTimer)
            clearTimeout(this.joinTimer);
        this.joinTimer = null;
        if (this.cursors.size > 0) {
            for (const user of [...this.cursors.keys()])
                this.emit('cursor_leave', { type: 'cursor_leave', room: this.id, user });
            this.cursors.clear();
        }
        this.setStatus('offline');
    }
    /** @internal The client closed. */
    close() {
        if (this.status === 'left')
            return;
        if (this.joined)
            this.host.send({ type: 'leave', room: this.id });
        this.finish(new ClosedError('the client was closed', { room: this.id }));
    }
    /** @internal Every frame that names this room. */
    handle(frame) {
        if (this.status === 'left')
            return;
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
    owns(cid) {
        return this.outbox.find(cid) !== undefined;
    }
    // === internals ===
    setStatus(status) {
        if (this.status === status)
            return;
        this.status = status;
        this.emit('status', status);
    }
    finish(error) {
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
    async attachOutbox(user) {
        const place = { storage: this.host.storage, owner: this.host.owner, user, room: this.id };
        let saved = [];
        try {
            saved = await place.storage.load(user, this.id);
        }
        catch (e) {
            console.warn('collab: saved outboxes could not be read', e);
        }
        if (this.status === 'left')
            return;
        for (const s of saved)
            if (s.owner === place.owner)
                this.outbox.adopt(s.ops);
        this.outbox.attach(place);
        for (const s of saved) {
            if (s.owner === place.owner)
                continue;
            const signal = this.adoption.signal;
            const gone = place.storage.whenGone ? place.storage.whenGone(s.owner, signal) : Promise.resolve();
            void gone.then(async () => {
                if (signal.aborted)
                    return;
                // Read again: the owner may have sent some before it went.
                const now = (await place.storage.load(user, this.id)).find((x) => x.owner === s.owner);
                if (signal.aborted || !now)
                    return;
                this.outbox.adopt(now.ops);
                await place.storage.save(s.owner, user, this.id, []);
            }).catch((e) => console.warn('collab: an outbox could not be adopted', e));
        }
    }
    sendJoin(fresh = false) {
        // A stroke cut by a dropped connection stays open on the server for a
        // while, so the outbox's points go on with it after the reconnect.
        const frame = { type: 'join', room: this.id, resume_strokes: true };
        if (!fresh && this.lastSeq !== null && this.epoch !== null) {
            frame.since = this.lastSeq;
            frame.epoch = this.epoch;
        }
        this.host.send(frame);
    }
    /** Our state and the server's disagree: ask again (`fresh`: for the full state). */
    resync(fresh) {
        if (this.resyncing)
            return;
        this.resyncing = true;
        if (fresh)
            this.lastSeq = null;
        this.sendJoin(fresh);
    }
    onJoined(f) {
        this.kind = f.kind;
        if (f.reset) {
            this.epoch = f.epoch;
            this.state.reset(f.state ?? { strokes: [], messages: [] });
            this.lastSeq = f.head;
        }
        else {
            this.resyncing = false;
            for (const op of f.ops ?? []) {
                // Replayed ops may come without their `type`: give every op event the same shape.
                this.onOp(op.type === 'op' ? op : { ...op, type: 'op' });
                // The replay did not fit our state: a new join is on its way, and
                // its `joined` takes over from here.
                if (this.resyncing)
                    return;
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
        if (f.reset)
            this.emit('reset', this.state);
        this.emit('joined', { kind: f.kind, epoch: f.epoch, head: f.head, reset: f.reset });
        this.settleReady.resolve();
    }
    onOp(f) {
        if (this.lastSeq === null || this.resyncing)
            return; // a joined is on its way
        if (f.seq <= this.lastSeq)
            return; // already applied
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
        if (f.cid !== null && this.me && f.user === this.me.id)
            this.outbox.confirm(f.cid, f.seq);
        this.outbox.settle(this.lastSeq);
        this.emit('op', f);
    }
    onPresence(f) {
        if (f.event === 'join') {
            this.presence.set(f.user.id, f.user);
        }
        else {
            this.presence.delete(f.user.id);
            if (this.cursors.delete(f.user.id))
                this.emit('cursor_leave', { type: 'cursor_leave', room: this.id, user: f.user.id });
        }
        this.emit('presence', f);
    }
    onServerError(f) {
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
                        if (this.status === 'joining')
                            this.sendJoin();
                    }, JOIN_RETRY_MS);
                }
            }
            this.emit('error', error);
            return;
        }
        const entry = this.outbox.find(f.cid);
        if (!entry)
            return;
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
        if (outcome === 'dropped' || f.code === 'rate_limited')
            this.emit('error', error);
    }
    continueStroke(cid, stroke) {
        const next = `s-${randomId(12)}`;
        this.alias.set(stroke.id, next);
        const last = stroke.points[stroke.points.length - 1];
        let first = true;
        this.outbox.rewrite(cid, (op) => (op.kind === 'stroke_points' || op.kind === 'stroke_end') && op.stroke === stroke.id, (op) => {
            if (op.kind !== 'stroke_points' && op.kind !== 'stroke_end')
                return op;
            if (first) {
                first = false;
                const points = op.kind === 'stroke_points' ? op.points : [];
                const all = last ? [last, ...points] : points;
                const begin = { kind: 'stroke_begin', stroke: next, color: stroke.color, width: stroke.width, points: all.slice(0, MAX_POINTS + 1) };
                return begin;
            }
            return { ...op, stroke: next };
        });
    }
    resolve(id) {
        let at = id;
        for (let next = this.alias.get(at); next !== undefined; next = this.alias.get(at))
            at = next;
        return at;
    }
    flushCursor() {
        this.cursorTimer = null;
        if (!this.cursorAt || !this.joined)
            return;
        this.cursorSentAt = Date.now();
        this.host.send({ type: 'cursor', room: this.id, x: this.cursorAt.x, y: this.cursorAt.y });
        this.cursorAt = null;
    }
    cancelCursor() {
        if (this.cursorTimer)
            clearTimeout(this.cursorTimer);
        this.cursorTimer = null;
        this.cursorAt = null;
    }
}
/** The promise, marked as handled: a refusal nobody awaits is not an unhandled rejection. */
function handled(p) {
    p.catch(() => { });
    return p;
}
/** A short random string of [a-z0-9], for ids no one else will pick. */
export function randomId(length = 10) {
    const bytes = crypto.getRandomValues(new Uint8Array(length));
    const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
    return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}
