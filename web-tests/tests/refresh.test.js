// The page renews its token on the open connection, without a reload or a
// reconnect: in dev mode from the dev token endpoint; with a token given
// in a link, from the refresh URL the link names; without one, by asking
// the person. Each page starts with a token that lives 12 s — shorter than
// the server's 30 s warning lead, so the server warns at once — and stays
// connected (the same connection, sending and receiving) past its exp.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { createRoom, launch, newPage, statusOf, waitFor } from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

const SHORT_TTL_SECS = 12;
const SECRET = 'a-test-secret-for-refresh-0123456789abcdef';

let dev;
let prod;
let browser;

before(async () => {
  [dev, prod] = await Promise.all([CollabServer.start(), CollabServer.start({ secret: SECRET })]);
  browser = await launch();
});

after(async () => {
  await browser?.close();
  for (const server of [dev, prod]) {
    if (!server) continue;
    if (process.exitCode) console.error(server.tail());
    await server.stop();
  }
});

/** The `exp` of a JWT, in ms since the epoch. */
function expOf(token) {
  const claims = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString());
  return claims.exp * 1000;
}

/**
 * Sends a chat message from the page and waits until the server acked it
 * (nothing unsaved) and it is shown.
 */
async function say(page, text) {
  await page.getByLabel('Message', { exact: true }).fill(text);
  await page.getByLabel('Message', { exact: true }).press('Enter');
  await waitFor(`"${text}" acked`, async () => (await page.locator('#status').getAttribute('data-unsaved')) === '0'
    && (await page.locator('.chat-message', { hasText: text }).count()) === 1);
}

/**
 * Checks that the page is connected on the connection it had, with a
 * token refreshed once, past `exp`, and still sends.
 */
async function staysConnectedPast(page, exp, conn) {
  await waitFor('the refresh', async () => (await page.evaluate(() => window.collab.refreshes)) === 1);
  await waitFor('the first token\'s exp to pass', async () => Date.now() > exp + 1500, { timeout: SHORT_TTL_SECS * 1000 + 10_000, interval: 250 });
  assert.equal(await statusOf(page), 'online');
  assert.equal(await page.evaluate(() => window.collab.conn), conn, 'the same connection: no reconnect');
  assert.equal(await page.evaluate(() => window.notReloaded), true, 'no reload');
  await say(page, 'after the first exp');
}

test('dev mode: a short-lived dev token is renewed silently from /v1/dev/token', async () => {
  const page = await newPage(browser);
  // The page's first dev token is made short-lived; later ones are as the page asks.
  const asked = [];
  let shortToken = null;
  await page.route('**/v1/dev/token', async (route) => {
    const body = JSON.parse(route.request().postData() || '{}');
    asked.push(body);
    if (asked.length > 1) return route.continue();
    const response = await route.fetch({ postData: JSON.stringify({ ...body, ttl_secs: SHORT_TTL_SECS }) });
    const answer = await response.json();
    shortToken = answer.token;
    return route.fulfill({ response, json: answer });
  });
  await createRoom(page, dev.url, 'Ann', 'channel');
  await page.evaluate(() => { window.notReloaded = true; });
  const conn = await page.evaluate(() => window.collab.conn);
  assert.ok(conn, 'connected');
  assert.ok(shortToken, 'the page got the short token');
  await staysConnectedPast(page, expOf(shortToken), conn);
  assert.equal(asked.length, 2, 'one dev token to start, one to refresh');
  assert.equal(asked[1].user, asked[0].user, 'the same user');
  await page.context().close();
});

test('a given token is renewed from the refresh URL in the link', async () => {
  const owner = prod.mintToken('olga');
  const code = (await prod.createRoom(owner, { kind: 'channel' })).id;
  const short = prod.mintToken('ann', '--name', 'Ann', '--ttl-secs', String(SHORT_TTL_SECS));
  const page = await newPage(browser);
  // The app's backend, on the page's origin (an ingress would route it).
  const refreshCalls = [];
  await page.route(`${prod.url}/auth/collab-token`, (route) => {
    refreshCalls.push(route.request().method());
    return route.fulfill({ json: { token: prod.mintToken('ann', '--name', 'Ann') } });
  });
  await page.goto(`${prod.url}/?room=${code}#token=${short}&refresh=/auth/collab-token`);
  await waitFor('Ann in the room', async () => (await statusOf(page)) === 'online');
  assert.equal(new URL(page.url()).hash, '', 'the token and the URL are not left in the address bar');
  await page.evaluate(() => { window.notReloaded = true; });
  const conn = await page.evaluate(() => window.collab.conn);
  await staysConnectedPast(page, expOf(short), conn);
  assert.deepEqual(refreshCalls, ['POST']);
  await page.context().close();
});

test('a given token without a refresh URL: the page asks for a new one', async () => {
  const owner = prod.mintToken('olga');
  const code = (await prod.createRoom(owner, { kind: 'channel' })).id;
  const short = prod.mintToken('bob', '--name', 'Bob', '--ttl-secs', String(SHORT_TTL_SECS));
  const page = await newPage(browser);
  await page.goto(`${prod.url}/?room=${code}#token=${short}`);
  await waitFor('Bob in the room', async () => (await statusOf(page)) === 'online');
  await page.evaluate(() => { window.notReloaded = true; });
  const conn = await page.evaluate(() => window.collab.conn);
  const ask = page.getByLabel('Your access token expires soon. Paste a new one to stay connected:');
  await waitFor('the request for a new token', () => ask.isVisible());
  await ask.fill(prod.mintToken('bob', '--name', 'Bob'));
  await page.getByRole('button', { name: 'Use it' }).click();
  await staysConnectedPast(page, expOf(short), conn);
  assert.equal(await ask.count(), 0, 'the request is gone');
  await page.context().close();
});
