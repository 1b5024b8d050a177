// A room's state over HTTP (`GET /v1/rooms/{id}/snapshot`) against a real
// `collab serve`: it is exactly what a `joined` carries, compressed as the
// client asks; a first join loads it and then joins with `since`, and ends
// with the server's state while others keep editing, ops committed between
// the snapshot and the join included; a failed snapshot falls back to the
// plain join.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';

import { Editor, assertConverged, CollabServer, nodeClient, pause, serverHistory, waitFor } from './lib/harness.js';

/** @type {CollabServer} */
let server;

before(async () => {
  server = await CollabServer.start();
});

after(async () => {
  if (server) {
    if (process.exitCode) console.error(server.tail());
    await server.stop();
  }
});

/** The `joined` a plain join (no `since`) gets, on a socket of its own. */
async function plainJoined(token, room) {
  const ws = new WebSocket(`${server.url.replace('http', 'ws')}/v1/ws`, { headers: { Authorization: `Bearer ${token}` } });
  try {
    return await new Promise((resolve, reject) => {
      ws.on('error', reject);
      ws.on('message', (data) => {
        const frame = JSON.parse(data.toString());
        if (frame.type === 'welcome') ws.send(JSON.stringify({ type: 'join', room }));
        if (frame.type === 'joined') resolve(frame);
        if (frame.type === 'error') reject(new Error(JSON.stringify(frame)));
      });
    });
  } finally {
    ws.close();
  }
}

/**
 * A fetch that records the paths asked and lets a test act on a snapshot's
 * answer before the client sees it (`onSnapshot`), or replace it.
 */
function spyFetch({ onSnapshot = async (/** @type {Response} */ r) => r } = {}) {
  /** @type {string[]} */
  const paths = [];
  /** @type {typeof fetch} */
  const spy = async (url, init) => {
    const path = new URL(String(url)).pathname;
    paths.push(path);
    const response = await fetch(url, init);
    return path.endsWith('/snapshot') ? onSnapshot(response) : response;
  };
  return { fetch: spy, paths };
}

test('a snapshot is exactly what a joined carries, compressed as the client asks', async () => {
  const token = await server.devToken('ann', 'Ann');
  const ann = nodeClient(server.url, token, { snapshots: false });
  try {
    const { id } = await ann.createRoom({ kind: 'board' });
    const board = ann.room(id);
    await board.ready;
    // Coordinates of two decimals as the page makes them, and others.
    const kept = board.beginStroke({ color: '#1f6feb', width: 3, points: [[10.25, -3.5], [1 / 3, 1e300], [0.1 + 0.2, 523.47]] });
    await board.endStroke(kept);
    const undone = board.beginStroke({ color: '#d1242f', width: 2, points: [[1, 2]] });
    await board.endStroke(undone);
    await board.undo();
    board.beginStroke({ color: '#2da44e', width: 5, points: [[7.5, 8.25], [9, 10]] }); // still open
    await board.say('hello');
    await board.settled();

    const joined = await plainJoined(token, id);
    assert.equal(joined.reset, true);
    for (const encoding of ['gzip', 'br']) {
      const r = await fetch(`${server.url}/v1/rooms/${id}/snapshot`, {
        headers: { Authorization: `Bearer ${token}`, 'Accept-Encoding': encoding },
      });
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('content-encoding'), encoding);
      const snapshot = await r.json();
      assert.deepEqual(snapshot, { room: id, kind: 'board', epoch: joined.epoch, head: joined.head, state: joined.state });
    }
    const packed = await ann.snapshot(id);
    assert.deepEqual(packed, { room: id, kind: 'board', epoch: joined.epoch, head: joined.head, state: joined.state });
    assert.equal(packed.state.strokes[0].points[2][0], 0.1 + 0.2, 'every bit kept');
    assert.equal(packed.state.strokes.length, 2, 'the undone stroke is not in the state');
  } finally {
    ann.close();
  }
});

test('a first join loads the snapshot, then gets what was committed after it, while others edit', async () => {
  const annToken = await server.devToken('ann', 'Ann');
  const owner = nodeClient(server.url, annToken);
  const { id } = await owner.createRoom({ kind: 'board' });
  owner.close();
  const ann = nodeClient(server.url, annToken);
  const bob = nodeClient(server.url, await server.devToken('bob', 'Bob'));
  const eve = nodeClient(server.url, await server.devToken('eve', 'Eve'));
  let snapshotHead = -1;
  const spy = spyFetch({
    // Hold the snapshot until the others have committed more: the join
    // that follows must bring exactly those ops.
    onSnapshot: async (response) => {
      const bytes = new Uint8Array(await response.arrayBuffer());
      const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + new DataView(bytes.buffer).getUint32(4, true))));
      snapshotHead = header.head;
      await waitFor('ops committed after the snapshot', async () => (await ann.getRoom(id)).head >= header.head + 10);
      return new Response(bytes, { status: response.status, headers: response.headers });
    },
  });
  const cy = nodeClient(server.url, await server.devToken('cy', 'Cy'), { fetch: spy.fetch });
  try {
    const undoer = new Editor('eve', eve.room(id));
    const editors = [new Editor('ann', ann.room(id)), new Editor('bob', bob.room(id)), undoer];
    await Promise.all(editors.map((e) => e.room.ready));
    const editing = Promise.all(editors.slice(0, 2).map((e) => e.edit(90)));
    // Undo and redo too, one after the other so that each is allowed: a
    // redo of a stroke undone before the snapshot does not fit the
    // snapshot, and must still end in the server's state.
    const undoing = (async () => {
      /** @param {import('../dist/index.js').Op} op */
      const made = (op) => {
        const p = undoer.room.op(op);
        undoer.track(p, op);
        return p;
      };
      for (let i = 0; i < 6; i++) {
        const stroke = `eve-s${i}`;
        await made({ kind: 'stroke_begin', stroke, color: '#8250df', width: 4, points: [[i, i]] });
        await made({ kind: 'stroke_end', stroke });
        await made({ kind: 'undo' });
        await pause(20 + 40 * (i % 3));
        if (i < 5) await made({ kind: 'redo' });
      }
    })();
    await waitFor('a few ops in the room', async () => (await ann.getRoom(id)).head >= 30);

    const late = cy.room(id);
    /** @type {any[]} */
    const joins = [];
    late.on('joined', (e) => joins.push(e));
    await late.ready;
    assert.ok(spy.paths.includes(`/v1/rooms/${id}/snapshot`), `a snapshot was asked for: ${spy.paths}`);
    assert.ok(snapshotHead >= 30, `the snapshot's head: ${snapshotHead}`);
    assert.equal(joins[0].reset, true, 'the state was replaced as a whole');
    assert.ok(joins[0].head >= snapshotHead + 10, `joined at ${joins[0].head}, after the snapshot's ${snapshotHead}`);

    await editing;
    await undoing;
    await waitFor('every edit settled', () => editors.every((e) => e.settled));
    const history = await serverHistory(ann, id);
    await waitFor('everyone at the head', () => [...editors.map((e) => e.room), late].every((r) => r.lastSeq === history.length));
    assertConverged(editors, history, late);
  } finally {
    ann.close();
    bob.close();
    eve.close();
    cy.close();
  }
});

test('a snapshot that fails falls back to the plain join', async () => {
  const token = await server.devToken('dee', 'Dee');
  const dee = nodeClient(server.url, token, { snapshots: false });
  // A server without the route answers 404, as for any unknown path.
  const spy = spyFetch({
    onSnapshot: async () => new Response(JSON.stringify({ error: { code: 'not_found', message: 'no such path' } }), { status: 404 }),
  });
  const again = nodeClient(server.url, token, { fetch: spy.fetch });
  try {
    const { id } = await dee.createRoom({ kind: 'board' });
    const board = dee.room(id);
    await board.ready;
    const s = board.beginStroke({ color: '#1f6feb', width: 3, points: [[1, 2], [3, 4]] });
    await board.endStroke(s);
    const room = again.room(id);
    await room.ready;
    assert.ok(spy.paths.includes(`/v1/rooms/${id}/snapshot`));
    assert.deepEqual(room.strokes().map((x) => [x.id, x.points, x.done]), [[s, [[1, 2], [3, 4]], true]]);
    // A room that does not exist is refused as before: by the join.
    await assert.rejects(again.room('nosuchroom').ready, (e) => /** @type {any} */ (e).code === 'not_found');
  } finally {
    dee.close();
    again.close();
  }
});

test('a redo of a stroke undone before the snapshot reloads by a snapshot, not the whole joined frame', async () => {
  const ann = nodeClient(server.url, await server.devToken('ann', 'Ann'), { snapshots: false });
  const spy = spyFetch();
  const cy = nodeClient(server.url, await server.devToken('cy', 'Cy'), { fetch: spy.fetch });
  try {
    const { id } = await ann.createRoom({ kind: 'board' });
    const board = ann.room(id);
    await board.ready;
    const s = board.beginStroke({ color: '#1f6feb', width: 3, points: [[1.5, 2.5]] });
    await board.endStroke(s);
    await board.undo();
    const late = cy.room(id);
    await late.ready;
    assert.deepEqual(late.strokes(), [], 'the undone stroke is not in the state');
    /** @type {boolean[]} */
    const resets = [];
    late.on('joined', (e) => resets.push(e.reset));
    const redo = await board.redo();
    await waitFor('the redone stroke on the newcomer\'s side', () => late.lastSeq === redo.seq && late.strokes().length === 1);
    assert.deepEqual(late.strokes().map((x) => [x.id, x.points, x.done]), [[s, [[1.5, 2.5]], true]]);
    assert.deepEqual(spy.paths.filter((p) => p.endsWith('/snapshot')).length, 2, `a second snapshot: ${spy.paths}`);
    assert.deepEqual(resets, [true]);
  } finally {
    ann.close();
    cy.close();
  }
});
