// Unit tests of the SDK against a fake socket: the test plays the server
// frame by frame, and Node's mocked timers play the clock.

import assert from 'node:assert/strict';
import { afterEach, beforeEach, mock, test } from 'node:test';

import {
  ClosedError, CollabClient, ERROR_CODES, MemoryStorage, NotFoundError, NothingToUndoError, RateLimitedError,
  UnauthorizedError, errorFromCode,
} from '../dist/index.js';
import { FakeSocket, fakeFetch, fakeToken, flush } from './lib/fake.js';

const ANN = { id: 'ann', name: 'Ann', color: '#123456' };

beforeEach(() => {
  FakeSocket.reset();
  mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 1_000_000 });
});

afterEach(() => {
  mock.timers.reset();
});

/**
 * A client whose joins go over the socket alone (no snapshot over HTTP
 * first), so the test plays every frame.
 * @param {Partial<import('../dist/index.js').ClientOptions>} [options]
 */
function client(options = {}) {
  const { fetch } = fakeFetch({ '/v1/me/rooms': [200, { rooms: [] }] });
  return new CollabClient({
    url: 'http://collab.test', token: 'tok', WebSocket: FakeSocket, fetch, watchNetwork: false, snapshots: false,
    ...options,
  });
}

/** Answers the last join of `room` on `ws` with an empty room at `head` (or the given ops). */
function joined(ws, room, { head = 0, epoch = 'e1', reset = true, ops = [], state = { strokes: [], messages: [] } } = {}) {
  ws.receive(reset
    ? { type: 'joined', room, kind: 'board', epoch, head, presence: [ANN], reset: true, state }
    : { type: 'joined', room, kind: 'board', epoch, head, presence: [ANN], reset: false, ops });
}

function opFrame(room, seq, op, { user = 'bob', cid = `x${seq}` } = {}) {
  return { type: 'op', room, seq, user, ts: 1, cid, op };
}

test('one connection carries many rooms, each joined after the welcome', async () => {
  const c = client({ token: () => 'tok-1' });
  const a = c.room('a');
  const b = c.room('b');
  await flush();
  assert.equal(FakeSocket.made.length, 1, 'one socket');
  const ws = FakeSocket.last;
  assert.equal(new URL(ws.url).pathname, '/v1/ws');
  assert.equal(ws.token, 'tok-1');
  assert.equal(ws.sent.length, 0, 'nothing before the welcome');
  ws.accept();
  assert.deepEqual(ws.sentOf('join'), [{ type: 'join', room: 'a', resume_strokes: true }, { type: 'join', room: 'b', resume_strokes: true }]);
  joined(ws, 'a');
  joined(ws, 'b', { head: 3 });
  await a.ready;
  await b.ready;
  assert.equal(b.lastSeq, 3);
  assert.equal(c.status.state, 'connected');
  assert.throws(() => c.room('not a room!'), /not a room id/);
  c.close();
});

test('op() resolves with the ack\'s seq, once, and the op frame lands in the state', async () => {
  const c = client();
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r', { head: 4 });
  const p = room.say('hello');
  const [sent] = ws.sentOf('op');
  assert.deepEqual(sent.op, { kind: 'message', text: 'hello' });
  assert.match(sent.cid, /^[a-z0-9]{12}\.\d+$/);
  assert.equal(room.unsaved, 1);
  ws.receive(opFrame('r', 5, sent.op, { user: 'ann', cid: sent.cid }));
  ws.receive({ type: 'ack', room: 'r', cid: sent.cid, seq: 5 });
  assert.deepEqual(await p, { cid: sent.cid, seq: 5 });
  assert.equal(room.unsaved, 0);
  assert.equal(room.lastSeq, 5);
  assert.deepEqual(room.messages().sent[0].op, { kind: 'message', text: 'hello' });
  c.close();
});

test('after a drop it reconnects with backoff and jitter, resumes with since/epoch and resends the same cids', async () => {
  const c = client();
  const room = c.room('r');
  await flush();
  let ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r', { head: 7, epoch: 'ep' });
  const p = room.say('kept');
  const cid = ws.sentOf('op')[0].cid;
  const statuses = [];
  c.on('status', (s) => statuses.push(s));
  ws.drop(1006);
  await flush();
  const offline = statuses.find((s) => s.state === 'offline');
  assert.ok(offline, 'offline status');
  assert.equal(offline.code, 1006);
  const wait = offline.retryAt - Date.now();
  assert.ok(wait >= 125 && wait <= 250, `first retry after 125–250 ms, not ${wait}`);
  assert.equal(room.status, 'offline');
  mock.timers.tick(wait);
  await flush();
  assert.equal(FakeSocket.made.length, 2);
  ws = FakeSocket.last;
  ws.accept();
  assert.deepEqual(ws.sentOf('join'), [{ type: 'join', room: 'r', resume_strokes: true, since: 7, epoch: 'ep' }]);
  joined(ws, 'r', { reset: false, head: 7 });
  const resent = ws.sentOf('op');
  assert.equal(resent.length, 1);
  assert.equal(resent[0].cid, cid, 'the same cid');
  ws.receive({ type: 'ack', room: 'r', cid, seq: 8 });
  ws.receive({ type: 'ack', room: 'r', cid, seq: 8 }); // a repeat changes nothing
  assert.deepEqual(await p, { cid, seq: 8 });
  c.close();
});

test('the backoff doubles up to its cap and starts again after a welcome', async () => {
  const c = client({ backoff: { firstMs: 100, maxMs: 800 } });
  c.room('r');
  await flush();
  const caps = [];
  for (let i = 0; i < 6; i++) {
    FakeSocket.last.drop(1006);
    await flush(); // the token check of a socket that never said welcome
    await flush();
    const wait = c.status.retryAt - Date.now();
    caps.push(wait);
    mock.timers.tick(wait);
    await flush();
  }
  const limits = [100, 200, 400, 800, 800, 800];
  caps.forEach((w, i) => assert.ok(w >= limits[i] / 2 && w <= limits[i], `attempt ${i}: ${w} within ${limits[i] / 2}–${limits[i]}`));
  FakeSocket.last.accept();
  FakeSocket.last.drop(1001);
  await flush();
  assert.ok(c.status.retryAt - Date.now() <= 100, 'back to the first delay');
  c.close();
});

test('a gap in seqs re-joins with since; a misfit op asks for the full state', async () => {
  const c = client();
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r', { head: 2, epoch: 'ep' });
  ws.receive(opFrame('r', 4, { kind: 'message', text: 'skipped one' }));
  assert.deepEqual(ws.sentOf('join').at(-1), { type: 'join', room: 'r', resume_strokes: true, since: 2, epoch: 'ep' });
  assert.equal(room.lastSeq, 2, 'the op after the gap is not applied');
  joined(ws, 'r', { reset: false, head: 4, ops: [
    opFrame('r', 3, { kind: 'message', text: 'three' }), opFrame('r', 4, { kind: 'message', text: 'skipped one' })] });
  assert.equal(room.lastSeq, 4);
  assert.equal(room.messages().sent.length, 2);
  // Points on a stroke never seen: our state is not the server's.
  ws.receive(opFrame('r', 5, { kind: 'stroke_points', stroke: 'nope', points: [[1, 1]] }));
  assert.deepEqual(ws.sentOf('join').at(-1), { type: 'join', room: 'r', resume_strokes: true });
  c.close();
});

test('a reset replaces the whole state and says so', async () => {
  const c = client();
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r', { head: 1, state: { strokes: [], messages: [opFrame('r', 1, { kind: 'message', text: 'old' })] } });
  const resets = [];
  room.on('reset', (s) => resets.push(s));
  joined(ws, 'r', { head: 9, epoch: 'new', state: {
    strokes: [{ id: 's1', user: 'bob', color: '#000000', width: 2, points: [[0, 0]], done: true }], messages: [] } });
  assert.equal(resets.length, 1);
  assert.equal(room.epoch, 'new');
  assert.equal(room.lastSeq, 9);
  assert.deepEqual(room.strokes().map((s) => s.id), ['s1']);
  assert.equal(room.messages().sent.length, 0);
  c.close();
});

test('a quiet connection is pinged, and one that does not answer is replaced within 10 s', async () => {
  const c = client();
  c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  mock.timers.tick(3999);
  assert.equal(ws.sentOf('ping').length, 0, 'no ping while not quiet for 4 s');
  mock.timers.tick(1);
  const [ping] = ws.sentOf('ping');
  assert.ok(ping, 'a ping after 4 s of quiet');
  ws.receive({ type: 'pong', id: ping.id });
  mock.timers.tick(4000);
  assert.equal(ws.sentOf('ping').length, 2, 'an answered ping keeps it; the next comes 4 s later');
  const deadAt = Date.now();
  mock.timers.tick(4000);
  await flush();
  assert.ok(ws.closedByClient, 'the silent socket is given up');
  assert.equal(c.status.state, 'offline');
  assert.equal(c.status.reason, 'no answer to ping');
  assert.ok(Date.now() - (deadAt - 4000) <= 8000, 'noticed within 8 s of the last frame');
  c.close();
});

test('a socket that never says welcome is given up after the connect timeout', async () => {
  const c = client({ connectTimeoutMs: 3000 });
  c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.readyState = 1;
  ws.onopen?.({});
  mock.timers.tick(3000);
  await flush();
  await flush();
  assert.ok(ws.closedByClient);
  assert.equal(c.status.state, 'offline');
  c.close();
});

test('cursor moves are coalesced to the configured rate, the latest position winning', async () => {
  const c = client({ cursorsPerSecond: 10 });
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  for (let i = 0; i < 25; i++) {
    room.cursor(i, i);
    mock.timers.tick(10);
  }
  // 250 ms at 10/s: the first at once, then the latest every 100 ms.
  assert.deepEqual(ws.sentOf('cursor').map((f) => f.x), [0, 9, 19]);
  mock.timers.tick(100);
  assert.deepEqual(ws.sentOf('cursor').map((f) => f.x), [0, 9, 19, 24], 'the latest position is sent last');
  mock.timers.tick(1000);
  assert.equal(ws.sentOf('cursor').length, 4, 'nothing more without a move');
  room.cursorLeave();
  assert.equal(ws.sentOf('cursor_leave').length, 1);
  c.close();
});

test('every protocol error code is a typed error; final refusals reject, retriable ones retry', async () => {
  for (const code of ERROR_CODES) {
    const e = errorFromCode(code, 'm', { room: 'r', cid: 'c' });
    assert.equal(e.code, code);
    assert.equal(e.room, 'r');
    assert.ok(e instanceof Error);
    assert.notEqual(e.constructor.name, 'CollabError', `${code} has a class of its own`);
  }
  assert.equal(errorFromCode('made_up_later', 'm').code, 'made_up_later');
  const c = client();
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  const errors = [];
  room.on('error', (e) => errors.push(e));
  const undo = room.undo();
  const undoCid = ws.sentOf('op')[0].cid;
  ws.receive({ type: 'error', code: 'nothing_to_undo', message: 'nothing', room: 'r', cid: undoCid });
  await assert.rejects(undo, NothingToUndoError);
  const say = room.say('busy');
  const cid = ws.sentOf('op')[1].cid;
  ws.receive({ type: 'error', code: 'rate_limited', message: 'slow down', room: 'r', cid });
  assert.ok(errors.some((e) => e instanceof RateLimitedError), 'rate limits are reported');
  mock.timers.tick(300);
  assert.equal(ws.sentOf('op').filter((f) => f.cid === cid).length, 2, 'retried with the same cid');
  ws.receive({ type: 'ack', room: 'r', cid, seq: 1 });
  assert.equal((await say).seq, 1);
  c.close();
});

test('a refused join rejects `ready` with its typed error and leaves the room', async () => {
  const c = client();
  const room = c.room('gone');
  await flush();
  FakeSocket.last.accept();
  FakeSocket.last.receive({ type: 'error', code: 'not_found', message: 'no such room', room: 'gone' });
  await assert.rejects(room.ready, NotFoundError);
  assert.equal(room.status, 'left');
  assert.notEqual(c.room('gone'), room, 'a new room object next time');
  c.close();
});

test('a room deleted while joined says so, leaves, and drops its outbox for good', async () => {
  const memory = new MemoryStorage();
  const c = client({ storage: memory });
  const room = c.room('doomed');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'doomed');
  await room.ready;
  const deleted = [];
  room.on('deleted', (e) => deleted.push(e));
  const said = room.say('never answered');
  await flush();
  assert.equal(ws.sentOf('op').length, 1, 'the message went out');
  ws.receive({ type: 'error', code: 'not_found', message: 'the room was deleted', room: 'doomed' });
  await assert.rejects(said, NotFoundError);
  assert.equal(deleted.length, 1);
  assert.ok(deleted[0] instanceof NotFoundError);
  assert.equal(room.status, 'left');
  await flush();
  assert.deepEqual(await memory.load('ann', 'doomed'), [], 'nothing kept for a reload');
  await assert.rejects(room.say('too late'), ClosedError);
  assert.notEqual(c.room('doomed'), room, 'a new room object next time');
  c.close();
});

test('4001 asks the token provider again; the same token again closes the client', async () => {
  const reasons = [];
  let next = 'first';
  const c = client({ token: ({ reason }) => { reasons.push(reason); return next; } });
  c.room('r');
  await flush();
  FakeSocket.last.accept();
  next = 'second';
  FakeSocket.last.drop(4001);
  await flush();
  mock.timers.tick(0);
  await flush();
  assert.deepEqual(reasons, ['connect', 'expired']);
  assert.equal(FakeSocket.last.token, 'second');
  FakeSocket.last.accept();
  FakeSocket.last.drop(4001);
  await flush();
  mock.timers.tick(0);
  await flush();
  assert.equal(c.status.state, 'closed');
  assert.ok(c.status.error instanceof UnauthorizedError);
});

test('an upgrade refused for its token (a 401 from the API) asks for another token', async () => {
  const { fetch } = fakeFetch({ '/v1/me/rooms': [401, { error: { code: 'unauthorized', message: 'bad token' } }] });
  const reasons = [];
  const c = client({ fetch, token: ({ reason }) => { reasons.push(reason); return `t${reasons.length}`; } });
  c.room('r');
  await flush();
  FakeSocket.last.drop(1006);
  for (let i = 0; i < 5; i++) await flush();
  mock.timers.tick(0);
  await flush();
  assert.deepEqual(reasons, ['connect', 'refused']);
  assert.equal(FakeSocket.last.token, 't2');
  c.close();
});

test('a token about to expire is presented on the open connection', async () => {
  const now = Date.now();
  let n = 0;
  const reasons = [];
  const c = client({
    refreshBeforeMs: 60_000,
    token: ({ reason }) => {
      reasons.push(reason);
      return fakeToken('ann', Math.floor(now / 1000) + 120 + 1000 * n++);
    },
  });
  const refreshed = [];
  c.on('refreshed', ({ exp }) => refreshed.push(exp));
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r', { head: 3, epoch: 'e' });
  // The server's warning comes before the client's own timer.
  ws.receive({ type: 'token_expiring', exp: Math.floor(now / 1000) + 120 });
  await flush();
  const sent = ws.sentOf('refresh');
  assert.equal(sent.length, 1, 'a refresh frame');
  assert.notEqual(sent[0].token, ws.token);
  // While it waits for its answer, the timer asks for no other.
  mock.timers.tick(60_000);
  await flush();
  assert.equal(ws.sentOf('refresh').length, 1);
  ws.receive({ type: 'refreshed', exp: Math.floor(now / 1000) + 1120 });
  await flush();
  assert.deepEqual(refreshed, [(Math.floor(now / 1000) + 1120) * 1000]);
  assert.equal(FakeSocket.made.length, 1, 'the same connection');
  assert.equal(room.status, 'joined');
  assert.deepEqual(reasons, ['connect', 'refresh']);
  c.close();
});

test('a refused refresh is an UnauthorizedError, and a new connection gets a fresh token', async () => {
  const now = Date.now();
  const reasons = [];
  const c = client({
    token: ({ reason }) => {
      reasons.push(reason);
      return fakeToken(reason === 'refresh' ? 'bob' : 'ann', Math.floor(now / 1000) + 3600 * reasons.length);
    },
  });
  const errors = [];
  c.on('error', (e) => errors.push(e));
  c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  ws.receive({ type: 'token_expiring', exp: Math.floor(now / 1000) + 10 });
  await flush();
  assert.equal(ws.sentOf('refresh').length, 1);
  ws.receive({ type: 'error', code: 'unauthorized', message: 'refresh refused: the token is for another user' });
  await flush();
  assert.equal(errors.length, 1);
  assert.ok(errors[0] instanceof UnauthorizedError);
  assert.equal(ws.closedWith, 1000);
  assert.equal(FakeSocket.made.length, 2, 'a new connection');
  assert.deepEqual(reasons, ['connect', 'refresh', 'refused']);
  c.close();
});

test('a server that does not know refresh (bad_request) gets the new token on a new connection', async () => {
  const now = Date.now();
  let n = 0;
  const c = client({ token: () => fakeToken('ann', Math.floor(now / 1000) + 120 + 1000 * n++) });
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r', { head: 3, epoch: 'e' });
  ws.receive({ type: 'token_expiring', exp: Math.floor(now / 1000) + 120 });
  await flush();
  const [sent] = ws.sentOf('refresh');
  ws.receive({ type: 'error', code: 'bad_request', message: 'unknown frame type "refresh"' });
  await flush();
  assert.equal(ws.closedWith, 1000);
  assert.equal(FakeSocket.made.length, 2, 'a new connection');
  const next = FakeSocket.last;
  assert.equal(next.token, sent.token);
  next.accept();
  assert.deepEqual(next.sentOf('join'), [{ type: 'join', room: 'r', resume_strokes: true, since: 3, epoch: 'e' }]);
  assert.equal(room.status, 'joining');
  c.close();
});

test('a room the refreshed token no longer covers is left, with a ForbiddenError', async () => {
  const c = client();
  const room = c.room('r');
  const errors = [];
  room.on('error', (e) => errors.push(e));
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  ws.receive({ type: 'error', code: 'forbidden', room: 'r', message: 'your new token does not cover this room; left it' });
  await flush();
  assert.equal(errors.length, 1);
  assert.equal(errors[0].code, 'forbidden');
  assert.equal(room.status, 'left');
  assert.deepEqual(c.joinedRooms(), []);
  c.close();
});

test('a client adopts the unsent ops a dead one left in the storage, with their cids', async () => {
  // A storage shared by two "processes": no liveness, so others count as gone.
  const memory = new MemoryStorage();
  const storage = { save: memory.save.bind(memory), load: memory.load.bind(memory) };
  const first = client({ storage });
  const room1 = first.room('r');
  await flush();
  FakeSocket.last.accept();
  joined(FakeSocket.last, 'r');
  FakeSocket.last.drop(1006);
  await flush();
  const id = room1.beginStroke({ color: '#ff0000', width: 2, points: [[1, 1]] });
  room1.addPoints(id, [[2, 2]]);
  room1.addPoints(id, [[3, 3]]);
  room1.say('made offline');
  await flush();
  const saved = await memory.load('ann', 'r');
  assert.equal(saved.length, 1);
  assert.deepEqual(saved[0].ops.map((o) => o.op.kind), ['stroke_begin', 'message'], 'points merged into the unsent begin');
  // The first client dies here (never closed). A second one starts.
  const second = client({ storage });
  const room2 = second.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  await flush();
  await flush();
  joined(ws, 'r');
  const sent = ws.sentOf('op');
  assert.deepEqual(sent.map((f) => f.cid).slice(0, 2), saved[0].ops.map((o) => o.cid), 'the original cids');
  assert.deepEqual(sent.map((f) => f.op.kind), ['stroke_begin', 'message', 'stroke_end'], 'the open stroke is ended');
  for (const [i, f] of sent.entries()) {
    ws.receive(opFrame('r', i + 1, f.op, { user: 'ann', cid: f.cid }));
    ws.receive({ type: 'ack', room: 'r', cid: f.cid, seq: i + 1 });
  }
  await room2.settled();
  await flush();
  assert.deepEqual(await memory.load('ann', 'r'), [], 'nothing left saved');
  first.close();
  second.close();
});

test('a live client\'s outbox is adopted only once it is gone', async () => {
  const storage = new MemoryStorage();
  const first = client({ storage });
  const room1 = first.room('r');
  await flush();
  FakeSocket.last.accept();
  joined(FakeSocket.last, 'r');
  FakeSocket.last.drop(1006);
  const p = room1.say('still mine');
  await flush();
  const second = client({ storage });
  second.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  await flush();
  assert.equal(ws.sentOf('op').length, 0, 'not taken while its owner lives');
  first.close();
  await assert.rejects(p, ClosedError);
  for (let i = 0; i < 4; i++) await flush();
  assert.deepEqual(ws.sentOf('op').map((f) => f.op.text), ['still mine']);
  second.close();
});

test('close() leaves every room, closes with 1000 and rejects what is pending', async () => {
  const c = client();
  const room = c.room('r');
  await flush();
  const ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  const p = room.say('never acked');
  c.close();
  assert.deepEqual(ws.sentOf('leave'), [{ type: 'leave', room: 'r' }]);
  assert.equal(ws.closedWith, 1000);
  assert.equal(c.status.state, 'closed');
  await assert.rejects(p, ClosedError);
  mock.timers.tick(60_000);
  assert.equal(FakeSocket.made.length, 1, 'no reconnect after close');
});

test('the browser\'s offline event drops the connection at once, online brings it back', async () => {
  const target = new EventTarget();
  const g = /** @type {any} */ (globalThis);
  g.addEventListener = target.addEventListener.bind(target);
  g.removeEventListener = target.removeEventListener.bind(target);
  const hadNavigator = 'navigator' in g;
  const navigator = { onLine: true };
  Object.defineProperty(g, 'navigator', { value: navigator, configurable: true, writable: true });
  try {
    const c = client({ watchNetwork: true });
    c.room('r');
    await flush();
    const ws = FakeSocket.last;
    ws.accept();
    navigator.onLine = false;
    target.dispatchEvent(new Event('offline'));
    await flush();
    assert.ok(ws.closedByClient);
    assert.equal(c.status.state, 'offline');
    assert.equal(c.status.reason, 'network offline');
    navigator.onLine = true;
    target.dispatchEvent(new Event('online'));
    await flush();
    assert.equal(FakeSocket.made.length, 2, 'reconnecting at once');
    c.close();
  } finally {
    delete g.addEventListener;
    delete g.removeEventListener;
    if (!hadNavigator) delete g.navigator;
  }
});

test('points refused because the server ended the stroke go on as a new stroke from its last point', async () => {
  const c = client();
  const room = c.room('r');
  await flush();
  let ws = FakeSocket.last;
  ws.accept();
  joined(ws, 'r');
  const id = room.beginStroke({ color: '#00ff00', width: 3, points: [[0, 0], [5, 5]] });
  const begin = ws.sentOf('op')[0];
  ws.receive(opFrame('r', 1, begin.op, { user: 'ann', cid: begin.cid }));
  ws.drop(1006);
  await flush();
  const more = room.addPoints(id, [[6, 6]]);
  room.endStroke(id);
  mock.timers.tick(250);
  await flush();
  ws = FakeSocket.last;
  ws.accept();
  // While we were away the server ended the stroke for us.
  joined(ws, 'r', { reset: false, head: 2, ops: [opFrame('r', 2, { kind: 'stroke_end', stroke: id }, { user: 'ann', cid: null })] });
  const [points, end] = ws.sentOf('op');
  ws.receive({ type: 'error', code: 'bad_request', message: 'the stroke has ended', room: 'r', cid: points.cid });
  ws.receive({ type: 'error', code: 'bad_request', message: 'the stroke has ended', room: 'r', cid: end.cid });
  mock.timers.tick(300);
  const rewritten = ws.sentOf('op').slice(2);
  assert.equal(rewritten[0].op.kind, 'stroke_begin');
  assert.deepEqual(rewritten[0].op.points, [[5, 5], [6, 6]], 'from where the cut stroke stopped');
  assert.equal(rewritten[0].op.color, '#00ff00');
  assert.deepEqual(rewritten[1].op, { kind: 'stroke_end', stroke: rewritten[0].op.stroke });
  ws.receive({ type: 'ack', room: 'r', cid: rewritten[0].cid, seq: 3 });
  assert.equal((await more).seq, 3, 'the points\' promise follows them into the new stroke');
  c.close();
});

test('history pages come as an async iterator; HTTP errors are typed', async () => {
  const pages = {
    '': { ops: [opFrame('r', 3, { kind: 'message', text: 'c' }), opFrame('r', 2, { kind: 'message', text: 'b' })], next_before: 2 },
    2: { ops: [opFrame('r', 1, { kind: 'message', text: 'a' })], next_before: null },
  };
  const { fetch, calls } = fakeFetch({
    '/v1/rooms/r/history': (u) => [200, pages[u.searchParams.get('before') ?? '']],
    '/v1/rooms/missing': [404, { error: { code: 'not_found', message: 'no such room' } }],
  });
  const c = client({ fetch });
  const texts = [];
  for await (const page of c.history('r', { limit: 2, kinds: ['message'] })) texts.push(...page.ops.map((o) => (o.op.kind === 'message' ? o.op.text : '')));
  assert.deepEqual(texts, ['c', 'b', 'a']);
  assert.equal(calls[0].url.searchParams.get('kinds'), 'message');
  assert.equal(calls[0].init.headers.Authorization, 'Bearer tok');
  await assert.rejects(c.getRoom('missing'), (e) => e instanceof NotFoundError && e.status === 404);
  c.close();
});

/** A packed snapshot (the format of docs/PROTOCOL.md), every coordinate as hundredths or as a double. */
function packSnapshot({ room, head, epoch = 'e1', strokes, messages = [] }) {
  const users = [...new Set(strokes.map((s) => s.user))];
  const colors = [...new Set(strokes.map((s) => s.color))];
  const header = new TextEncoder().encode(JSON.stringify({
    room, kind: 'board', epoch, head, messages, users, colors,
    strokes: strokes.map((s) => [s.id, users.indexOf(s.user), colors.indexOf(s.color), s.width, s.done ? 1 : 0, s.points.length]),
  }));
  const bytes = [0x43, 0x53, 0x50, 0x31, ...new Uint8Array(new Uint32Array([header.length]).buffer), ...header];
  const varint = (v) => { while (v >= 128) { bytes.push((v % 128) | 128); v = Math.floor(v / 128); } bytes.push(v); };
  for (const s of strokes) {
    const prev = [0, 0];
    for (const p of s.points) {
      for (const axis of [0, 1]) {
        const h = Math.round(p[axis] * 100);
        if (h / 100 === p[axis] && !Object.is(p[axis], -0)) {
          const d = h - prev[axis];
          prev[axis] = h;
          varint((d >= 0 ? 2 * d : -2 * d - 1) + 1);
        } else {
          varint(0);
          bytes.push(...new Uint8Array(new Float64Array([p[axis]]).buffer));
        }
      }
    }
  }
  return new Uint8Array(bytes);
}

test('a first join loads the snapshot, joins with since = its head, and drops one that comes too late', async () => {
  const stroke = { id: 's1', user: 'bob', color: '#112233', width: 2, points: [[1.25, -2.5], [1 / 3, 4]], done: false };
  /** @type {(() => void)[]} */
  const held = [];
  let asked = 0;
  /** @type {typeof globalThis.fetch} */
  const snapshotFetch = async (url) => {
    asked += 1;
    assert.equal(new URL(String(url)).pathname, '/v1/rooms/r/snapshot');
    assert.equal(new URL(String(url)).searchParams.get('format'), 'packed');
    await new Promise((resolve) => held.push(() => resolve(undefined)));
    return new Response(packSnapshot({ room: 'r', head: 7, strokes: [stroke] }), { status: 200 });
  };
  const c = client({ fetch: snapshotFetch, snapshots: true });
  const room = c.room('r');
  /** @type {string[]} */
  const seen = [];
  room.on('reset', () => seen.push('reset'));
  room.on('joined', (e) => seen.push(`joined ${e.head} reset=${e.reset}`));
  await flush();
  let ws = FakeSocket.last;
  ws.accept();
  await flush();
  assert.equal(asked, 1);
  assert.deepEqual(ws.sentOf('join'), [], 'no join before the snapshot');
  // The connection drops while the snapshot is on its way: it is not used
  // for the next connection's join, which asks again.
  ws.drop();
  held.shift()();
  await flush();
  mock.timers.tick(10_000); // the reconnection's backoff
  await flush();
  ws = FakeSocket.last;
  ws.accept();
  await flush();
  assert.equal(asked, 2);
  assert.deepEqual(ws.sentOf('join'), []);
  held.shift()();
  await flush();
  await flush();
  assert.deepEqual(ws.sentOf('join'), [{ type: 'join', room: 'r', resume_strokes: true, since: 7, epoch: 'e1' }]);
  joined(ws, 'r', { head: 8, reset: false, ops: [opFrame('r', 8, { kind: 'stroke_points', stroke: 's1', points: [[5, 6]] })] });
  await room.ready;
  assert.equal(room.lastSeq, 8);
  assert.deepEqual(room.strokes().map((s) => [s.id, s.points]), [['s1', [[1.25, -2.5], [1 / 3, 4], [5, 6]]]]);
  assert.deepEqual(seen, ['reset', 'joined 8 reset=true'], 'a state from a snapshot is a reset');
  c.close();
});

test('a packed snapshot cut short is refused', async () => {
  const { decodePackedSnapshot } = await import('../dist/index.js');
  const bytes = packSnapshot({ room: 'r', head: 1, strokes: [{ id: 's', user: 'u', color: '#000000', width: 1, points: [[1e300, 2]], done: true }] });
  assert.deepEqual(decodePackedSnapshot(bytes).state.strokes[0].points, [[1e300, 2]]);
  assert.throws(() => decodePackedSnapshot(bytes.subarray(0, bytes.length - 1)), /cut short/);
  assert.throws(() => decodePackedSnapshot(new Uint8Array([1, 2, 3, 4, 0, 0, 0, 0])), /not a packed snapshot/);
});
