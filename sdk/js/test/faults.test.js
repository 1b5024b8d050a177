// The network breaks under clients editing a room concurrently: a proxy
// between them and a real `collab serve` cuts the connections, stalls them,
// drops them in the middle of a frame, and the server is SIGKILLed and
// restarted. After each: every op a client made was acked exactly once,
// every client's state is the server's history, nothing is duplicated.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  CollabServer, Editor, assertConverged, nodeClient, pause, serverHistory, waitFor,
} from './lib/harness.js';
import { FaultProxy } from './lib/proxy.js';

const EDITORS = 3;
const EDITS = 45;
// Short timers so each fault is noticed and healed within a few seconds.
const FAST = {
  heartbeat: { quietMs: 1000, timeoutMs: 1000 },
  connectTimeoutMs: 3000,
  backoff: { firstMs: 50, maxMs: 500 },
};

/** @type {CollabServer} */
let server;
/** @type {FaultProxy} */
let proxy;
let admin;

before(async () => {
  server = await CollabServer.start();
  proxy = await FaultProxy.start(server.port);
  admin = nodeClient(server.url, await server.devToken('auditor'));
});

after(async () => {
  admin?.close();
  await proxy?.stop();
  if (server) {
    if (process.exitCode) console.error(server.tail());
    await server.stop();
  }
});

/**
 * A new board, `EDITORS` clients editing it through the proxy, `fault`
 * applied once some of their ops are acked, then the checks.
 * @param {string} name
 * @param {(editors: Editor[]) => Promise<void>} fault
 */
async function underFault(name, fault) {
  const room = `${name}-${Date.now().toString(36)}`;
  await admin.createRoom({ kind: 'board', id: room });
  const clients = [];
  const editors = [];
  for (let i = 0; i < EDITORS; i++) {
    const client = nodeClient(proxy.url, await server.devToken(`${name}-u${i}`), FAST);
    clients.push(client);
    const r = client.room(room);
    await r.ready;
    editors.push(new Editor(`u${i}`, r));
  }
  try {
    const editing = Promise.all(editors.map((e) => e.edit(EDITS)));
    await waitFor('some ops acked before the fault', () => editors.every((e) => e.acked >= 5));
    await fault(editors);
    await editing;
    await waitFor('every op settled', () => editors.every((e) => e.settled), { timeout: 30_000 });
    await waitFor('every client at the head', async () => {
      const head = (await admin.getRoom(room)).head;
      return editors.every((e) => e.room.lastSeq === head && e.room.unsaved === 0);
    }, { timeout: 30_000 });
    const fresh = admin.room(room);
    await fresh.ready;
    const history = await serverHistory(admin, room);
    const { acks } = assertConverged(editors, history, fresh);
    assert.ok(acks >= EDITORS * EDITS, `${acks} acks`);
    fresh.leave();
  } finally {
    for (const client of clients) client.close();
  }
}

test('a cut connection: every op acked once, every client equal to the server', async () => {
  await underFault('cut', async () => {
    const before = proxy.accepted;
    proxy.cut();
    await waitFor('every client back', () => proxy.accepted >= before + EDITORS);
  });
});

test('a stalled connection is noticed by the watchdog and replaced', async () => {
  await underFault('stall', async (editors) => {
    proxy.stall();
    const stalledAt = Date.now();
    await waitFor('every client noticing', () => editors.every((e) => e.room.status !== 'joined'), { timeout: 10_000 });
    const noticed = Date.now() - stalledAt;
    assert.ok(noticed <= 2 * (FAST.heartbeat.quietMs + FAST.heartbeat.timeoutMs), `noticed in ${noticed} ms`);
    await pause(200);
    proxy.resume();
  });
});

test('a connection dropped in the middle of a frame', async () => {
  await underFault('midframe', async () => {
    const before = proxy.accepted;
    proxy.dropMidFrame();
    await waitFor('every client back', () => proxy.accepted >= before + EDITORS);
  });
});

test('the server SIGKILLed and restarted', async () => {
  await underFault('sigkill', async (editors) => {
    await server.kill();
    await waitFor('every client offline', () => editors.every((e) => e.room.status !== 'joined'));
    await pause(300); // edits go on while the server is down
    await server.restart();
  });
});

test('with the default watchdog, a silent dead link is noticed within 10 s', async () => {
  const room = `quiet-${Date.now().toString(36)}`;
  await admin.createRoom({ kind: 'channel', id: room });
  const client = nodeClient(proxy.url, await server.devToken('quiet'));
  try {
    const r = client.room(room);
    await r.ready;
    await r.say('before the link went quiet');
    proxy.stall();
    const stalledAt = Date.now();
    await waitFor('the client noticing', () => client.status.state !== 'connected', { timeout: 12_000 });
    const noticed = Date.now() - stalledAt;
    assert.ok(noticed < 10_000, `noticed after ${noticed} ms`);
    assert.equal(client.status.reason, 'no answer to ping');
    proxy.resume();
    await waitFor('joined again', () => r.joined);
  } finally {
    proxy.resume();
    client.close();
  }
});

test('a stroke cut by a dropped connection stays one stroke, and one undo takes all of it', async () => {
  const room = `gesture-${Date.now().toString(36)}`;
  await admin.createRoom({ kind: 'board', id: room });
  const client = nodeClient(proxy.url, await server.devToken('gesture'), FAST);
  try {
    const r = client.room(room);
    await r.ready;
    const stroke = r.beginStroke({ color: '#8250df', width: 4, points: [[0, 0], [1, 1]] });
    await r.addPoints(stroke, [[2, 2]]);
    const before = proxy.accepted;
    proxy.cut();
    // The pen is still down while the connection is away.
    const drawn = r.addPoints(stroke, [[3, 3], [4, 4]]);
    const ended = r.endStroke(stroke);
    await waitFor('the client back', () => proxy.accepted > before && r.joined);
    await Promise.all([drawn, ended]);

    const ops = (await serverHistory(admin, room)).filter((o) => o.op.kind.startsWith('stroke'));
    assert.deepEqual(ops.map((o) => [o.op.kind, o.op.stroke]), [
      ['stroke_begin', stroke], ['stroke_points', stroke], ['stroke_points', stroke], ['stroke_end', stroke],
    ]);
    assert.ok(ops.every((o) => o.cid !== null), 'nothing ended by the server');
    assert.deepEqual(r.strokes().map((s) => s.points.length), [5]);
    await r.undo();
    await waitFor('nothing left to draw', () => r.strokes().length === 0);
  } finally {
    client.close();
  }
});

test('a peer whose link goes silent leaves the others\' presence within seconds', async () => {
  // Pinged every second, counted away after 3 s without an answer.
  const quick = await CollabServer.start({
    settings: { COLLAB_GATEWAY__PING_INTERVAL_SECS: '1', COLLAB_GATEWAY__AWAY_AFTER_SECS: '3' },
  });
  const link = await FaultProxy.start(quick.port);
  const room = `silent-${Date.now().toString(36)}`;
  const watcher = nodeClient(quick.url, await quick.devToken('watcher'));
  const quiet = nodeClient(link.url, await quick.devToken('quiet'), FAST);
  try {
    await watcher.createRoom({ kind: 'board', id: room });
    const seen = watcher.room(room);
    await seen.ready;
    const r = quiet.room(room);
    await r.ready;
    await waitFor('the quiet user present', () => seen.presence.has('quiet'));
    link.stall();
    const stalledAt = Date.now();
    await waitFor('the quiet user gone from the presence', () => !seen.presence.has('quiet'), { timeout: 10_000 });
    const gone = Date.now() - stalledAt;
    // Silence counts from the last answer, up to a ping interval before the stall.
    assert.ok(gone >= 1500 && gone < 6000, `gone after ${gone} ms`);
    link.resume();
    await waitFor('the quiet user back', () => seen.presence.has('quiet'), { timeout: 15_000 });
  } finally {
    quiet.close();
    watcher.close();
    await link.stop();
    await quick.stop();
  }
});
