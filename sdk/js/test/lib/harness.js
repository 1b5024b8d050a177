// What the tests against a real server share: the server (a real `collab
// serve` on a free port in a temp dir, as the browser tests start it),
// clients on the `ws` package, polling with a deadline, and the checks
// that a room's clients agree with the server's history.

import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { CollabClient, RoomState } from '../../dist/index.js';

export { CollabServer } from '../../../../web-tests/lib/server.js';

/**
 * Polls `fn` until it returns something truthy, and returns that; fails
 * with `what` (and the last value seen) after `timeout` ms.
 * @template T
 * @param {string} what
 * @param {() => T | Promise<T>} fn
 * @returns {Promise<T>}
 */
export async function waitFor(what, fn, { timeout = 20_000, interval = 20 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * A client of `url` for `token` (a token, or a token provider) on the `ws` package.
 * @param {string} url
 * @param {string | import('../../dist/index.js').TokenProvider} token
 * @param {Partial<import('../../dist/index.js').ClientOptions>} [options]
 */
export function nodeClient(url, token, options = {}) {
  return new CollabClient({
    url, token, WebSocket: /** @type {any} */ (WebSocket), ...options,
  });
}

/** @param {number} ms */
export function pause(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/**
 * One client editing a room the way a person does — messages and whole
 * strokes, paced — and keeping the outcome of every op it made.
 */
export class Editor {
  /**
   * @param {string} label
   * @param {import('../../dist/index.js').Room} room
   */
  constructor(label, room) {
    this.label = label;
    this.room = room;
    /** @type {{ op: any, outcome: null | { ack?: any, error?: any }, settled: number }[]} */
    this.made = [];
    this.running = null;
  }

  /** @param {Promise<any>} promise @param {any} op */
  track(promise, op) {
    const record = { op, outcome: /** @type {any} */ (null), settled: 0 };
    this.made.push(record);
    promise.then(
      (ack) => { record.settled += 1; record.outcome = { ack }; },
      (error) => { record.settled += 1; record.outcome = { error }; },
    );
  }

  /** Makes `count` edits, one every few ms; resolves when all are made (not confirmed). */
  edit(count) {
    this.running = (async () => {
      for (let i = 0; i < count; i++) {
        if (i % 3 === 2) {
          const stroke = `${this.label}-s${i}`;
          /** @type {import('../../dist/index.js').Op} */
          const begin = { kind: 'stroke_begin', stroke, color: '#1f6feb', width: 3, points: [[i, 0], [i, 1]] };
          this.track(this.room.op(begin), begin);
          this.track(this.room.addPoints(stroke, [[i, 2], [i, 3]]), { kind: 'stroke_points', stroke });
          this.track(this.room.endStroke(stroke), { kind: 'stroke_end', stroke });
        } else {
          /** @type {import('../../dist/index.js').Op} */
          const op = { kind: 'message', text: `${this.label}-m${i}` };
          this.track(this.room.op(op), op);
        }
        await pause(5 + Math.random() * 20);
      }
    })();
    return this.running;
  }

  get acked() {
    return this.made.filter((m) => m.outcome && m.outcome.ack).length;
  }

  get settled() {
    return this.made.every((m) => m.settled === 1);
  }
}

/**
 * Every op of the room, oldest first, read page by page over HTTP.
 * @param {CollabClient} client
 * @param {string} room
 */
export async function serverHistory(client, room) {
  const ops = [];
  for await (const page of client.history(room, { limit: 500 })) ops.push(...page.ops);
  return ops.reverse();
}

/**
 * The checks after a fault: every op each editor made settled exactly
 * once, as acked (a stroke's end may be refused only when the server had
 * ended that stroke itself); the log holds each acked cid once, at its
 * acked seq, and nothing else from these editors; every editor's state is
 * the state the server's history makes, and what a fresh client gets.
 * @param {Editor[]} editors
 * @param {any[]} history
 * @param {import('../../dist/index.js').Room} fresh a room joined after everything
 */
export function assertConverged(editors, history, fresh) {
  const head = history.length;
  history.forEach((o, i) => assert.equal(o.seq, i + 1, 'gapless seqs from 1'));
  const byCid = new Map();
  for (const o of history) {
    if (o.cid === null) continue;
    assert.ok(!byCid.has(`${o.user}/${o.cid}`), `cid ${o.cid} applied twice`);
    byCid.set(`${o.user}/${o.cid}`, o);
  }
  const serverEnded = new Set(history.filter((o) => o.cid === null && o.op.kind === 'stroke_end').map((o) => o.op.stroke));
  let acks = 0;
  for (const editor of editors) {
    const me = editor.room.me.id;
    for (const m of editor.made) {
      assert.equal(m.settled, 1, `${editor.label}: ${JSON.stringify(m.op)} settled once`);
      if (m.outcome.error) {
        assert.equal(m.op.kind, 'stroke_end', `${editor.label}: only a stroke's end may be refused: ${JSON.stringify(m.op)} ${m.outcome.error}`);
        assert.ok(serverEnded.has(m.op.stroke), `${editor.label}: ${m.op.stroke} refused, but the server did not end it`);
        continue;
      }
      const { cid, seq } = m.outcome.ack;
      const logged = byCid.get(`${me}/${cid}`);
      assert.ok(logged, `${editor.label}: acked ${cid} is in the log`);
      assert.equal(logged.seq, seq, `${editor.label}: ${cid} acked with its seq in the log`);
      acks += 1;
    }
    for (const m of editor.made.filter((x) => x.op.kind === 'message')) {
      assert.equal(history.filter((o) => o.op.kind === 'message' && o.op.text === m.op.text).length, 1, `"${m.op.text}" once`);
    }
  }
  // Nothing in the log from these editors that no op of theirs explains.
  const ackedCids = new Set(editors.flatMap((e) => e.made.filter((m) => m.outcome.ack).map((m) => `${e.room.me.id}/${m.outcome.ack.cid}`)));
  for (const key of byCid.keys()) assert.ok(ackedCids.has(key), `${key} in the log but acked to no one`);

  const replay = new RoomState('');
  for (const o of history) assert.ok(replay.apply(o), `the log applies in order (seq ${o.seq})`);
  const expected = JSON.stringify(replay.visibleStrokes([]));
  const messages = JSON.stringify(history.filter((o) => o.op.kind === 'message').slice(-50).map(message));
  for (const room of [...editors.map((e) => e.room), fresh]) {
    assert.equal(room.lastSeq, head, `${room.me.id} is at the head`);
    assert.equal(room.unsaved, 0, `${room.me.id} has nothing unsent`);
    assert.equal(JSON.stringify(room.strokes().map(plain)), JSON.stringify(JSON.parse(expected).map(plain)), `${room.me.id}'s strokes are the server's`);
    assert.equal(JSON.stringify(room.messages().sent.slice(-50).map(message)), messages, `${room.me.id}'s messages are the server's`);
  }
  return { acks, head };
}

/** A message op frame's fields (a replayed one in `joined.ops` may come without its `type`). */
function message(m) {
  return { room: m.room, seq: m.seq, user: m.user, ts: m.ts, cid: m.cid, op: m.op };
}

/** A stroke without what only a client knows (`visible` is implied, `pending` must be gone). */
function plain(s) {
  return { id: s.id, user: s.user, color: s.color, width: s.width, points: s.points, done: s.done, pending: s.pending ?? false };
}
