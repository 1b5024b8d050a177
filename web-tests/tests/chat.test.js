// Chat-only channels, paging back through older messages, and errors in
// plain words.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { createRoom, joinRoom, launch, newPage, waitFor } from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

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

test('a channel is chat only, and older messages load when scrolling up', async () => {
  const ann = await newPage(browser);
  const code = await createRoom(ann, server.url, 'Ann', 'channel');
  assert.equal(await ann.locator('#board-area').isVisible(), false, 'no board in a channel');
  assert.equal(await ann.locator('#room-kind').textContent(), 'Channel');

  // 70 messages from another client, straight over the protocol, so that
  // the last 50 come with `joined` and 20 are only in the history.
  const token = await server.devToken('bot', 'Bot');
  await ann.evaluate(async ({ token, code }) => {
    const ws = new WebSocket(`ws://${location.host}/v1/ws?token=${encodeURIComponent(token)}`);
    await new Promise((resolve, reject) => {
      let acked = 0;
      ws.onerror = reject;
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.type === 'welcome') ws.send(JSON.stringify({ type: 'join', room: code }));
        // At most 64 ops may wait for their ack: send in rounds of 35.
        const round = () => {
          for (let i = acked + 1; i <= Math.min(acked + 35, 70); i++) {
            ws.send(JSON.stringify({ type: 'op', room: code, cid: `m${i}`, op: { kind: 'message', text: `message ${i}` } }));
          }
        };
        if (f.type === 'joined') round();
        if (f.type === 'ack') {
          acked += 1;
          if (acked === 70) resolve();
          else if (acked % 35 === 0) round();
        }
        if (f.type === 'error') reject(new Error(JSON.stringify(f)));
      };
    });
    ws.close();
  }, { token, code });
  await waitFor('70 messages live on Ann\'s page', async () => (await ann.locator('.chat-message').count()) === 70);

  const bob = await newPage(browser);
  await joinRoom(bob, server.url, 'Bob', code);
  await waitFor('the last 50 messages', async () => (await bob.locator('.chat-message').count()) === 50);
  assert.match(await bob.locator('.chat-message').first().innerText(), /message 21\b/);
  // Bot has left: only its user id is known to a newcomer.
  assert.match(await bob.locator('.chat-message').first().innerText(), /bot/);
  // Scrolling to the top fetches the older ones from the history endpoint.
  await bob.locator('#chat-log').evaluate((log) => { log.scrollTop = 0; });
  await waitFor('all 70 messages', async () => (await bob.locator('.chat-message').count()) === 70);
  assert.match(await bob.locator('.chat-message').first().innerText(), /message 1\b/);
  assert.equal(await bob.locator('#chat-older').isVisible(), false, 'nothing older left');

  // Live messages in a channel, both ways.
  await bob.getByLabel('Message', { exact: true }).fill('hi from Bob');
  await bob.keyboard.press('Enter');
  await waitFor('Bob\'s message on Ann\'s page', async () =>
    (await ann.locator('.chat-message', { hasText: 'hi from Bob' }).count()) === 1);
  await ann.context().close();
  await bob.context().close();
});

test('a wrong room code is explained in plain words', async () => {
  const page = await newPage(browser);
  await page.goto(`${server.url}/`);
  await page.getByLabel('Display name').fill('Eve');
  await page.getByLabel('Room code or link').fill('doesnotexist');
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitFor('the error', async () => (await page.locator('#lobby-error').innerText()).includes('does not exist'));
  await page.getByLabel('Room code or link').fill('not a code!');
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitFor('the error', async () => (await page.locator('#lobby-error').innerText()).includes('Room codes are'));
  await page.context().close();
});

test('a room deleted while someone is in it takes them back to the lobby, saying so', async () => {
  const token = await server.devToken('host', 'Host');
  const room = await server.createRoom(token, { kind: 'channel' });
  const page = await newPage(browser);
  await joinRoom(page, server.url, 'Gus', room.id);
  await server.deleteRoom(token, room.id);
  await waitFor('the lobby', async () => page.locator('#lobby').isVisible());
  assert.match(await page.locator('#lobby-error').innerText(), /was deleted/);
  assert.equal(new URL(page.url()).searchParams.get('room'), null, 'the room is gone from the address');
  await page.context().close();
});

test('the page is served with its assets, content types and caching headers', async () => {
  const page = await fetch(`${server.url}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type'), /^text\/html/);
  assert.equal(page.headers.get('cache-control'), 'no-cache');
  const etag = page.headers.get('etag');
  assert.ok(etag);
  const again = await fetch(`${server.url}/`, { headers: { 'If-None-Match': etag } });
  assert.equal(again.status, 304);
  const js = await fetch(`${server.url}/app/main.js`);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  const css = await fetch(`${server.url}/app/style.css`);
  assert.match(css.headers.get('content-type'), /^text\/css/);
  assert.equal((await fetch(`${server.url}/app/nope.js`)).status, 404);
});
