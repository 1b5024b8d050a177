// The SDK against a real `collab serve`: rooms on one connection, live ops,
// presence and cursors as typed events, history pages, and the server's
// refusals as typed errors.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  BadRequestError, ConflictError, ForbiddenError, NotFoundError, NothingToUndoError, UnauthorizedError,
} from '../dist/index.js';
import { CollabServer, nodeClient, serverHistory, waitFor } from './lib/harness.js';

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

test('two people in a board and a channel, each on one connection', async () => {
  const ann = nodeClient(server.url, await server.devToken('ann', 'Ann'));
  const bob = nodeClient(server.url, await server.devToken('bob', 'Bob'));
  try {
    const board = await ann.createRoom({ kind: 'board', name: 'Plan' });
    const channel = await ann.createRoom({ kind: 'channel' });
    assert.match(board.id, /^[a-z0-9]{8}$/);
    const annBoard = ann.room(board.id);
    const annChat = ann.room(channel.id);
    await Promise.all([annBoard.ready, annChat.ready]);

    const presence = [];
    annBoard.on('presence', (f) => presence.push(`${f.event}:${f.user.name}`));
    const cursors = [];
    annBoard.on('cursor', (f) => cursors.push([f.user, f.x, f.y]));
    const bobBoard = bob.room(board.id);
    const bobChat = bob.room(channel.id);
    await Promise.all([bobBoard.ready, bobChat.ready]);
    await waitFor('Bob\'s arrival on Ann\'s side', () => presence.includes('join:Bob'));
    assert.deepEqual([...bobBoard.presence.keys()].sort(), ['ann', 'bob']);

    const stroke = annBoard.beginStroke({ color: '#d1242f', width: 4, points: [[0, 0]] });
    annBoard.addPoints(stroke, [[10, 10], [20, 5]]);
    const end = await annBoard.endStroke(stroke);
    const said = await annChat.say('hello Bob');
    assert.equal(said.seq, 1, 'the channel has its own seqs');
    assert.equal(end.seq, 3);
    await waitFor('the stroke on Bob\'s board', () => bobBoard.strokes().some((s) => s.id === stroke && s.done));
    assert.deepEqual(bobBoard.strokes()[0].points, [[0, 0], [10, 10], [20, 5]]);
    await waitFor('the message in Bob\'s channel', () => bobChat.messages().sent.some((m) => m.op.kind === 'message' && m.op.text === 'hello Bob'));

    bobBoard.cursor(42, 24);
    await waitFor('Bob\'s cursor on Ann\'s side', () => cursors.some(([user, x, y]) => user === 'bob' && x === 42 && y === 24));

    const undone = await annBoard.undo();
    assert.equal(undone.seq, 4);
    await waitFor('the stroke undone on Bob\'s side', () => bobBoard.strokes().length === 0);
    await assert.rejects(bobBoard.undo(), NothingToUndoError);

    bob.close();
    await waitFor('Bob\'s leaving', () => presence.includes('leave:Bob'));
  } finally {
    ann.close();
    bob.close();
  }
});

test('the server\'s refusals arrive as typed errors', async () => {
  const token = await server.devToken('cy', 'Cy');
  const cy = nodeClient(server.url, token);
  try {
    const channel = await cy.createRoom({ kind: 'channel', id: `typed-${Date.now().toString(36)}` });
    await assert.rejects(cy.createRoom({ kind: 'channel', id: channel.id }), (e) => e instanceof ConflictError && e.status === 409);
    await assert.rejects(cy.getRoom('nosuchroom'), NotFoundError);
    const room = cy.room(channel.id);
    await room.ready;
    await assert.rejects(room.op({ kind: 'stroke_begin', stroke: 's', color: '#000000', width: 2, points: [] }), BadRequestError);
    await assert.rejects(cy.room('nosuchroom').ready, NotFoundError);

    const readOnly = nodeClient(server.url, server.mintToken('vic', '--room', `${channel.id}=read`));
    try {
      const r = readOnly.room(channel.id);
      await r.ready;
      await assert.rejects(r.say('may I?'), ForbiddenError);
    } finally {
      readOnly.close();
    }
  } finally {
    cy.close();
  }
});

test('history comes page by page, newest first, as an async iterator', async () => {
  const dee = nodeClient(server.url, await server.devToken('dee'));
  try {
    const { id } = await dee.createRoom({ kind: 'channel' });
    const room = dee.room(id);
    await room.ready;
    // 60 ops at once: more than the server lets wait for their ack (64 is
    // the limit, the outbox keeps 32 in flight), so the outbox paces them.
    await Promise.all(Array.from({ length: 60 }, (_, i) => room.say(`m${i}`)));
    const pages = [];
    for await (const page of room.history({ limit: 25 })) pages.push(page);
    assert.deepEqual(pages.map((p) => p.ops.length), [25, 25, 10]);
    assert.deepEqual(pages.map((p) => p.nextBefore), [36, 11, null]);
    const all = await serverHistory(dee, id);
    assert.deepEqual(all.map((o) => o.op.text), Array.from({ length: 60 }, (_, i) => `m${i}`), 'in the order made');
  } finally {
    dee.close();
  }
});

test('a room deleted by its creator closes on every member\'s side, and cannot be joined again', async () => {
  const ann = nodeClient(server.url, await server.devToken('dee', 'Dee'));
  const bob = nodeClient(server.url, await server.devToken('fay', 'Fay'));
  try {
    const board = await ann.createRoom({ kind: 'board' });
    const annBoard = ann.room(board.id);
    const bobBoard = bob.room(board.id);
    await Promise.all([annBoard.ready, bobBoard.ready]);
    const gone = [];
    annBoard.on('deleted', (e) => gone.push(['dee', e]));
    bobBoard.on('deleted', (e) => gone.push(['fay', e]));
    await assert.rejects(bob.deleteRoom(board.id), ForbiddenError, 'only its creator (or an admin)');
    await ann.deleteRoom(board.id);
    await waitFor('both told', () => gone.length === 2);
    assert.ok(gone.every(([, e]) => e instanceof NotFoundError));
    assert.equal(annBoard.status, 'left');
    assert.equal(bobBoard.status, 'left');
    await assert.rejects(bob.room(board.id).ready, NotFoundError);
    await assert.rejects(ann.getRoom(board.id), NotFoundError);
  } finally {
    ann.close();
    bob.close();
  }
});

test('a token the server refuses closes the client with a typed error', async () => {
  const forged = `${(await server.devToken('eve')).slice(0, -4)}AAAA`;
  const eve = nodeClient(server.url, forged);
  try {
    const room = eve.room('anything');
    await waitFor('the client closed', () => eve.status.state === 'closed');
    assert.ok(eve.status.error instanceof UnauthorizedError);
    assert.equal(room.status, 'left');
  } finally {
    eve.close();
  }
});
