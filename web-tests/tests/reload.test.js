// A tab reloaded with edits still in its outbox: the SDK keeps them in
// IndexedDB, and the page after the reload sends them, with their
// original cids, once it can reach the server again.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  board, createRoom, drawWithMouse, isColor, joinRoom, launch, newPage, statusOf, waitFor,
} from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

const RED = '#d1242f';

let server;
let browser;

before(async () => {
  server = await CollabServer.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  if (server) {
    if (process.exitCode) console.error(server.tail());
    await server.stop();
  }
});

/** The ops the page keeps in IndexedDB, as {cid, kind}. */
function savedOps(page) {
  return page.evaluate(() => new Promise((resolve, reject) => {
    const open = indexedDB.open('collab-outbox');
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      if (!db.objectStoreNames.contains('outboxes')) return resolve([]);
      const all = db.transaction('outboxes').objectStore('outboxes').getAll();
      all.onsuccess = () => resolve(all.result.flatMap((o) => o.ops.map((s) => ({ cid: s.cid, kind: s.op.kind }))));
      all.onerror = () => reject(all.error);
    };
  }));
}

test('a tab reloaded with unsent edits sends them after the reload', async () => {
  const ann = await newPage(browser);
  // Ann's WebSockets reach nowhere while `blocked`: her page is up, the
  // server is up, but nothing she draws can be sent. (Routes apply from
  // the next page load on: set before the first.)
  let blocked = false;
  await ann.routeWebSocket(/\/v1\/ws/, (ws) => {
    if (blocked) ws.close();
    else ws.connectToServer();
  });
  const code = await createRoom(ann, server.url, 'Ann');
  const bob = await newPage(browser);
  await joinRoom(bob, server.url, 'Bob', code);

  blocked = true;
  await ann.evaluate(() => window.collab.dropConnection());
  await waitFor('Ann offline', async () => (await statusOf(ann)) !== 'online');

  await ann.locator('#palette label', { hasText: 'Red' }).click();
  await drawWithMouse(ann, [[120, 200], [320, 200], [420, 300]]);
  await ann.getByLabel('Message', { exact: true }).fill('written before the reload');
  await ann.keyboard.press('Enter');
  // The points join the unsent begin: the stroke's begin, its end and the message wait.
  const unsaved = 3;
  await waitFor('three ops waiting', async () =>
    Number(await ann.locator('#status').getAttribute('data-unsaved')) === unsaved);
  const saved = await waitFor('the outbox saved in IndexedDB', async () => {
    const ops = await savedOps(ann);
    return ops.length === unsaved && ops;
  });
  assert.deepEqual(saved.map((o) => o.kind).slice(0, 1), ['stroke_begin']);
  assert.ok(saved.some((o) => o.kind === 'message'));

  // The page asks before unloading with unsent edits; the reload goes ahead.
  ann.on('dialog', (dialog) => dialog.accept());
  await ann.reload();
  await waitFor('the room again after the reload', async () => (await ann.locator('#room-code').innerText()) === code);
  await waitFor('the restored edits counted as unsent', async () =>
    Number(await ann.locator('#status').getAttribute('data-unsaved')) === unsaved);
  assert.equal((await board(bob)).ink, 0, 'nothing reached Bob yet');

  blocked = false;
  await waitFor('Ann online again', async () => (await statusOf(ann)) === 'online', { timeout: 30_000 });
  await waitFor('Ann\'s outbox empty', async () => (await ann.locator('#status').getAttribute('data-unsaved')) === '0');
  await waitFor('the red stroke on Bob\'s page', async () => isColor((await board(bob, [[220, 200]])).colors[0], RED));
  await waitFor('the message on Bob\'s page', async () =>
    (await bob.locator('.chat-message', { hasText: 'written before the reload' }).count()) === 1);

  const token = await server.devToken('auditor');
  const ops = await server.allOps(token, code);
  assert.deepEqual(ops.map((o) => o.cid), saved.map((o) => o.cid), 'sent once each, with the cids saved before the reload');
  assert.deepEqual(await savedOps(ann), [], 'nothing left in IndexedDB');
  const problems = ann.problems.filter((p) => !/WebSocket|Failed to load resource/.test(p));
  assert.deepEqual(problems, []);
  await ann.context().close();
  await bob.context().close();
});
