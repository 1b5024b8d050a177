// A server with a real secret (no dev mode): the page takes its token from
// the link's fragment or from the token field, and a read-only token gets a
// board to look at, not to draw on.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { board, drawWithMouse, launch, newPage, statusOf, waitFor } from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

let server;
let browser;
let code;

before(async () => {
  server = await CollabServer.start({ secret: 'a-test-secret-that-is-long-enough-0123456789' });
  browser = await launch();
  const owner = server.mintToken('olga', '--name', 'Olga');
  code = (await server.createRoom(owner, { kind: 'board', name: 'Team board' })).id;
});

after(async () => {
  await browser?.close();
  if (server) {
    if (process.exitCode) console.error(server.tail());
    await server.stop();
  }
});

test('a link with #token= opens the room at once, and the token leaves the address bar', async () => {
  const token = server.mintToken('ann', '--name', 'Ann');
  const page = await newPage(browser);
  await page.goto(`${server.url}/?room=${code}#token=${token}`);
  await waitFor('Ann in the room', async () => (await statusOf(page)) === 'online');
  assert.equal(new URL(page.url()).hash, '', 'the token is not left in the URL');
  assert.equal(await page.locator('#room-title').innerText(), 'Team board');
  assert.match(await page.locator('#presence-list').innerText(), /Ann \(you\)/);
  await drawWithMouse(page, [[100, 100], [200, 150]]);
  await waitFor('the stroke saved', async () => (await page.locator('#status').getAttribute('data-unsaved')) === '0');
  await page.context().close();
});

test('without a token the lobby asks for one, and a pasted one works', async () => {
  const page = await newPage(browser);
  await page.goto(`${server.url}/?room=${code}`);
  await page.getByLabel('Display name').fill('Bob');
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitFor('the request for a token', async () => (await page.locator('#lobby-error').innerText()).includes('needs an access token'));
  await page.getByLabel('Access token').fill('not-a-token');
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitFor('the bad token explained', async () => (await page.locator('#lobby-error').innerText()).includes('not valid'));
  await page.getByLabel('Access token').fill(server.mintToken('bob', '--name', 'Bob'));
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitFor('Bob in the room', async () => (await statusOf(page)) === 'online');
  await page.context().close();
});

test('a read-only token shows the board but no drawing or writing', async () => {
  const token = server.mintToken('vic', '--name', 'Vic', '--room', `${code}=read`);
  const page = await newPage(browser);
  await page.goto(`${server.url}/?room=${code}#token=${token}`);
  await waitFor('Vic in the room', async () => (await statusOf(page)) === 'online');
  assert.ok(await page.locator('#read-only').isVisible(), 'a "View only" badge');
  assert.ok(await page.getByRole('button', { name: 'Undo' }).isDisabled());
  assert.ok(await page.getByLabel('Message', { exact: true }).isDisabled());
  await waitFor('Ann\'s stroke', async () => (await board(page)).ink > 0);
  const before = await board(page);
  // Dragging pans the view instead of drawing: no new stroke anywhere.
  await drawWithMouse(page, [[300, 300], [400, 300]]);
  assert.equal(await page.locator('#status').getAttribute('data-unsaved'), '0');
  await page.getByRole('button', { name: 'Reset view' }).click();
  await waitFor('the same picture as before', async () => (await board(page)).hash === before.hash);
  await page.context().close();
});

test('a token for another room is refused in plain words', async () => {
  const token = server.mintToken('mo', '--room', 'elsewhere=write');
  const page = await newPage(browser);
  await page.goto(`${server.url}/?room=${code}#token=${token}`);
  await waitFor('the refusal', async () => (await page.locator('#lobby-error').innerText()).includes('does not cover'));
  await page.context().close();
});
