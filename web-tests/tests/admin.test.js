// The admin page at /admin: it takes an admin token (here a dev-mode one
// it fetches itself), shows the local node with its rooms and connections,
// looks a room up (owner, head, members and their gateways), and follows
// both live as people join, draw and leave. A token without the admin
// scope is refused in plain words.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';

import { createRoom, drawWithMouse, joinRoom, launch, newPage, screenshot, waitFor } from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

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

/** The local node's row of one role: its rooms and connections as shown. */
function nodeRow(page, role) {
  return page.evaluate((role) => {
    const row = document.querySelector(`#members tr[data-node="local"][data-role="${role}"]`);
    if (!row) return null;
    const cell = (field) => row.querySelector(`[data-field="${field}"]`).textContent;
    return { rooms: cell('rooms'), connections: cell('connections') };
  }, role);
}

/** The user ids in the looked-up room's member table. */
function roomMembers(page) {
  return page.evaluate(() => [...document.querySelectorAll('#room-members tbody tr')]
    .map((tr) => `${tr.dataset.user}@${tr.querySelector('td:last-child').textContent}`));
}

test('the admin page shows the local node and a room, and follows them live', async () => {
  const admin = await newPage(browser);
  await admin.goto(`${server.url}/admin`);
  await admin.getByRole('button', { name: 'Get a dev-mode token' }).click();
  await waitFor('the local node in the members table', async () => {
    const gateway = await nodeRow(admin, 'gateway');
    const roomNode = await nodeRow(admin, 'room_node');
    return gateway && roomNode && gateway.connections === '0' && roomNode.rooms === '0';
  });
  assert.match(await admin.locator('#cluster-mode').innerText(), /collab serve/);
  assert.equal(await admin.locator('#status').getAttribute('data-state'), 'online');

  // Ann starts a board: one connection, one live room, seen without a reload.
  const ann = await newPage(browser);
  const code = await createRoom(ann, server.url, 'Ann');
  await waitFor('Ann counted', async () => {
    const gateway = await nodeRow(admin, 'gateway');
    const roomNode = await nodeRow(admin, 'room_node');
    return gateway.connections === '1' && roomNode.rooms === '1';
  });

  await admin.getByLabel('Room code').fill(code);
  await admin.getByRole('button', { name: 'Look up' }).click();
  await waitFor('the room looked up', async () => (await admin.locator('#room-live').innerText()) === 'yes');
  assert.equal(await admin.locator('#room-owner').innerText(), 'local');
  assert.match(await admin.locator('#room-term').innerText(), /^\d+$/);
  assert.equal(await admin.locator('#room-head').innerText(), '0');
  const annId = (await roomMembers(admin))[0];
  assert.match(annId, /@local$/, 'Ann is connected through the local gateway');
  assert.equal(new URL(admin.url()).searchParams.get('room'), code, 'the lookup is in the link');

  // Ann draws: the head and the last commit move.
  await drawWithMouse(ann, [[100, 100], [220, 160], [300, 120]]);
  await waitFor('the stroke saved', async () => (await ann.locator('#status').getAttribute('data-unsaved')) === '0');
  await waitFor('the head after the stroke', async () => Number(await admin.locator('#room-head').innerText()) >= 2);
  assert.match(await admin.locator('#room-last-commit').innerText(), /^seq \d+ at /);

  // Bob joins, then leaves.
  const bob = await newPage(browser);
  await joinRoom(bob, server.url, 'Bob', code);
  await waitFor('Bob among the members', async () => (await roomMembers(admin)).length === 2);
  await waitFor('two connections', async () => (await nodeRow(admin, 'gateway')).connections === '2');
  await screenshot(admin, 'admin-page.png');
  await bob.context().close();
  await waitFor('Bob gone', async () => (await roomMembers(admin)).length === 1);
  await waitFor('one connection', async () => (await nodeRow(admin, 'gateway')).connections === '1');
  assert.deepEqual(await roomMembers(admin), [annId]);

  assert.deepEqual(admin.problems, [], 'no errors on the admin page');
  await ann.context().close();
  await admin.context().close();
});

test('a token without the admin scope is refused in plain words', async () => {
  const token = await server.devToken('mo', 'Mo');
  const page = await newPage(browser);
  await page.goto(`${server.url}/admin#token=${token}`);
  await waitFor('the refusal', async () => (await page.locator('#admin-error').innerText()).includes('admin scope'));
  assert.equal(new URL(page.url()).hash, '', 'the token is not left in the URL');
  assert.equal(await page.locator('#status').getAttribute('data-state'), 'offline');
  assert.equal(await page.locator('#members tbody tr').count(), 0);
  await page.context().close();
});

test('the admin page has no serious accessibility violations', async () => {
  const page = await newPage(browser, { bypassCSP: true });
  await page.goto(`${server.url}/admin`);
  await page.getByRole('button', { name: 'Get a dev-mode token' }).click();
  await waitFor('the members', async () => (await page.locator('#members tbody tr').count()) === 2);
  await page.addScriptTag({ path: AXE });
  const violations = await page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
  if (violations.length) console.log('axe on the admin page:', JSON.stringify(violations, null, 2));
  const serious = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  assert.deepEqual(serious, [], 'serious or critical accessibility violations on the admin page');
  await page.context().close();
});
