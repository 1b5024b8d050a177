// Token refresh against a real `collab serve`: a token that expires soon
// is replaced on the open connection (the server's `token_expiring`, the
// provider, a `refresh` frame), so the connection outlives it; a refresh
// the server refuses arrives as an UnauthorizedError and the client
// reconnects with a fresh token; and a client whose provider has nothing
// new is closed with 4001 at the token's exp.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { UnauthorizedError, tokenExpiry } from '../dist/index.js';
import { CollabServer, nodeClient, waitFor } from './lib/harness.js';

/** Shorter than the server's warning lead (30 s): warned at once. */
const SHORT_TTL_SECS = 3;

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

/**
 * A token provider that answers each request with `byReason[reason]`,
 * recording the reasons it was asked for.
 * @param {Record<string, () => Promise<string> | string>} byReason
 */
function provider(byReason) {
  /** @type {string[]} */
  const reasons = [];
  const provide = async (/** @type {any} */ request) => {
    reasons.push(request.reason);
    const give = byReason[request.reason];
    if (!give) throw new Error(`no token for ${request.reason}`);
    return give();
  };
  return { provide, reasons };
}

/** A channel, created with a token of its own (the clients' providers are asked only by their connections). */
async function channel() {
  return server.createRoom(await server.devToken('admin', 'Admin'), { kind: 'channel' });
}

test('a short-lived token is refreshed on the open connection, which outlives it', async () => {
  const short = await server.devToken('ann', 'Ann', SHORT_TTL_SECS);
  const firstExp = /** @type {number} */ (tokenExpiry(short));
  const tokens = provider({ connect: () => short, refresh: () => server.devToken('ann', 'Ann') });
  const ann = nodeClient(server.url, tokens.provide);
  try {
    let welcomes = 0;
    ann.on('welcome', () => { welcomes += 1; });
    /** @type {number[]} */
    const refreshed = [];
    ann.on('refreshed', ({ exp }) => refreshed.push(exp));
    const room = ann.room((await channel()).id);
    await room.ready;
    await waitFor('the refresh', () => refreshed.length === 1);
    assert.deepEqual(tokens.reasons, ['connect', 'refresh']);
    assert.ok(refreshed[0] > firstExp + 3_600_000, `the new exp ${refreshed[0]} is the long token's`);
    // Past the first token's exp: the same connection, still working.
    await waitFor('the first token\'s exp to pass', () => Date.now() > firstExp + 1000, { timeout: 10_000, interval: 100 });
    const ack = await room.say('after the first exp');
    assert.ok(ack.seq >= 1);
    assert.equal(welcomes, 1, 'never reconnected');
    assert.equal(ann.status.state, 'connected');
  } finally {
    ann.close();
  }
});

test('a refused refresh is an UnauthorizedError, and the client reconnects with a fresh token', async () => {
  const short = await server.devToken('bea', 'Bea', SHORT_TTL_SECS);
  const someoneElse = await server.devToken('cal', 'Cal');
  const good = await server.devToken('bea', 'Bea');
  const tokens = provider({ connect: () => short, refresh: () => someoneElse, refused: () => good });
  const bea = nodeClient(server.url, tokens.provide);
  try {
    /** @type {any[]} */
    const errors = [];
    bea.on('error', (e) => errors.push(e));
    let welcomes = 0;
    bea.on('welcome', () => { welcomes += 1; });
    const room = bea.room((await channel()).id);
    await room.ready;
    await waitFor('the refused refresh', () => errors.length > 0);
    assert.ok(errors[0] instanceof UnauthorizedError, `${errors[0]}`);
    assert.equal(errors[0].code, 'unauthorized');
    assert.match(errors[0].message, /^refresh refused/);
    await waitFor('the new connection', () => welcomes === 2 && bea.status.state === 'connected');
    assert.deepEqual(tokens.reasons, ['connect', 'refresh', 'refused']);
    await room.ready;
    const ack = await room.say('on the fresh token');
    assert.ok(ack.seq >= 1);
  } finally {
    bea.close();
  }
});

test('without a refresh the server closes the connection with 4001 at exp', async () => {
  const short = await server.devToken('dan', 'Dan', SHORT_TTL_SECS);
  const exp = /** @type {number} */ (tokenExpiry(short));
  // One fixed token: the provider never has a new one.
  const dan = nodeClient(server.url, short);
  try {
    /** @type {any[]} */
    const statuses = [];
    dan.on('status', (s) => statuses.push({ ...s, at: Date.now() }));
    await dan.room((await channel()).id).ready;
    const closed = await waitFor('the close with 4001', () => statuses.find((s) => s.code === 4001), { timeout: 15_000 });
    assert.ok(closed.at >= exp - 1000, `closed at ${closed.at}, exp ${exp}`);
    await waitFor('the client to give up on the expired token', () => dan.status.state === 'closed');
    assert.ok(dan.status.error instanceof UnauthorizedError, `${dan.status.error}`);
  } finally {
    dan.close();
  }
});
