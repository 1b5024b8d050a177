// A room's state as the server has it, rebuilt only from what the server
// sent (a `joined` with the full state, then op frames applied strictly by
// seq), and the view a client shows: that state with the client's own
// pending ops on top.
//
// Keeping the two apart is what makes a client converge: the picture is
// always "server state + my pending ops", so once the outbox is empty it
// is exactly the server's state — never a stroke drawn twice because it
// was both predicted and received, never one missing because a prediction
// was thrown away.
/** Messages in a `joined` state; fewer means there is nothing older. */
export const STATE_MESSAGES = 50;
export class RoomState {
    me;
    /** Every stroke seen, visible or not, by id. */
    strokes = new Map();
    /** Stroke ids in the order they were begun (drawing order). */
    order = [];
    /** Messages by seq. */
    messages = new Map();
    /** Older messages exist in the history than those held. */
    hasOlderMessages = false;
    /** My strokes in stroke_end order, for predicting undo. */
    myEnded = [];
    /** My undone strokes, most recent last, for predicting redo. */
    myUndone = [];
    constructor(me) {
        this.me = me;
    }
    setMe(me) {
        this.me = me;
    }
    /** Replaces everything with a full state (a `joined` with `reset: true`). */
    reset(snapshot) {
        this.strokes = new Map();
        this.order = [];
        this.myEnded = [];
        this.myUndone = []; // undone strokes are not in a state: redo cannot be predicted
        for (const s of snapshot.strokes) {
            this.strokes.set(s.id, { ...s, points: s.points.slice(), visible: true });
            this.order.push(s.id);
            if (s.user === this.me && s.done)
                this.myEnded.push(s.id);
        }
        this.messages = new Map(snapshot.messages.map((m) => [m.seq, m]));
        this.hasOlderMessages = snapshot.messages.length >= STATE_MESSAGES;
    }
    /** Applies one op frame; false if it does not fit (an op about a stroke never seen). */
    apply(f) {
        const op = f.op;
        const mine = f.user === this.me;
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
                if (!s)
                    return false;
                for (const p of op.points)
                    s.points.push(p);
                return true;
            }
            case 'stroke_end': {
                const s = this.strokes.get(op.stroke);
                if (!s)
                    return false;
                s.done = true;
                if (mine) {
                    this.myEnded.push(op.stroke);
                    this.myUndone = [];
                }
                return true;
            }
            case 'undo':
            case 'redo': {
                const s = op.stroke === undefined ? undefined : this.strokes.get(op.stroke);
                if (!s || op.stroke === undefined)
                    return false; // e.g. redo of a stroke undone before our last full state
                s.visible = op.kind === 'redo';
                if (mine && op.kind === 'undo')
                    this.myUndone.push(op.stroke);
                if (mine && op.kind === 'redo')
                    this.myUndone = this.myUndone.filter((id) => id !== op.stroke);
                return true;
            }
            case 'message':
                this.messages.set(f.seq, f);
                return true;
            default:
                return true; // a kind added to the protocol later: nothing to keep
        }
    }
    /** Adds older messages from the history endpoint. */
    addOlder(ops, nextBefore) {
        for (const m of ops)
            if (m.op && m.op.kind === 'message')
                this.messages.set(m.seq, m);
        this.hasOlderMessages = nextBefore !== null;
    }
    /** The seq of the oldest message held, or null. */
    oldestMessageSeq() {
        let oldest = null;
        for (const seq of this.messages.keys())
            if (oldest === null || seq < oldest)
                oldest = seq;
        return oldest;
    }
    /**
     * The strokes to draw, bottom to top: the server's visible strokes in
     * begin order, with my pending ops applied on top (new strokes, more
     * points, and a best guess of what my pending undo/redo will resolve to).
     */
    visibleStrokes(pending) {
        const extra = new Map();
        const mine = new Map();
        const hide = new Set();
        const show = new Set();
        const ended = this.myEnded.slice();
        const undone = this.myUndone.slice();
        const visible = (id) => {
            if (hide.has(id))
                return false;
            if (show.has(id))
                return true;
            const s = this.strokes.get(id);
            return s ? s.visible : mine.has(id);
        };
        for (const { op } of pending) {
            switch (op.kind) {
                case 'stroke_begin':
                    if (!this.strokes.has(op.stroke) && !mine.has(op.stroke)) {
                        mine.set(op.stroke, {
                            id: op.stroke, user: this.me, color: op.color, width: op.width,
                            points: op.points.slice(), done: false, visible: true, pending: true,
                        });
                    }
                    break;
                case 'stroke_points': {
                    const p = mine.get(op.stroke);
                    const s = this.strokes.get(op.stroke);
                    if (p)
                        p.points.push(...op.points);
                    else if (s && !s.done) {
                        if (!extra.has(op.stroke))
                            extra.set(op.stroke, []);
                        extra.get(op.stroke).push(...op.points);
                    }
                    break;
                }
                case 'stroke_end':
                    if (!ended.includes(op.stroke))
                        ended.push(op.stroke);
                    undone.length = 0;
                    break;
                case 'undo':
                    for (let i = ended.length - 1; i >= 0; i--) {
                        const id = ended[i];
                        if (visible(id)) {
                            hide.add(id);
                            show.delete(id);
                            undone.push(id);
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
            if (!visible(id))
                continue;
            const s = this.strokes.get(id);
            const more = extra.get(id);
            list.push(more ? { ...s, points: s.points.concat(more), pending: true } : s);
        }
        for (const [id, p] of mine)
            if (visible(id))
                list.push(p);
        return list;
    }
    /** Messages by seq, oldest first, then mine still on their way. */
    messageList(pending) {
        const sent = [...this.messages.keys()].sort((a, b) => a - b).map((seq) => this.messages.get(seq));
        const sending = [];
        for (const e of pending) {
            if (e.op.kind === 'message')
                sending.push({ cid: e.cid, user: this.me, op: e.op, pending: true });
        }
        return { sent, sending };
    }
}
