// The late join of a large board, as an app sees it: the SDK in Node
// joins a board of 100,000 ops (10,000 strokes of a `stroke_begin`, eight
// `stroke_points` and a `stroke_end`, 16 points per op that has points:
// 1.44 M points, the shape of `collab-load late-join`), first as before
// (the whole state in the `joined` frame), then with a snapshot over HTTP
// and a join with `since`, with Node's fetch as it is (it asks for gzip)
// and asking for no compression. For each way, newcomers one after the other:
// the time from `client.room(id)` (connected already) to the full state in
// the room (`ready`), and, through a counting proxy on a second pass, the
// bytes the server sent. Every newcomer's state is checked against the
// first one's.
//
//   node load-tests/sdk/late-join.mjs [--ops 100000] [--joiners 5]
//        [--points drawn|generator] [--small 100]
//
// `--points drawn` (default): each stroke a random walk of two-decimal
// coordinates, as the page sends them; `generator`: the load generator's
// points (the same 16 in every op of a user), which compress far better
// than anything drawn. `--small N` also times a board of N ops both ways.
// COLLAB_BIN names the server binary (scripts/bench-late-join.sh passes a
// release build). The server's op and HTTP rate limits are raised, only so
// that the board fills in seconds.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

const sdk = new URL('../../sdk/js/', import.meta.url);
const require = createRequire(new URL('package.json', sdk));
const WebSocket = require('ws');
const { CollabClient } = await import(new URL('dist/index.js', sdk).href);

const { values: args } = parseArgs({
  options: {
    ops: { type: 'string', default: '100000' },
    joiners: { type: 'string', default: '5' },
    points: { type: 'string', default: 'drawn' },
    small: { type: 'string', default: '0' },
  },
});
const OPS = Number(args.ops);
const JOINERS = Number(args.joiners);
const STROKE_OPS = 10;
const POINTS = 16;
const WRITERS = 10;
const BATCH = 100;

const log = (...a) => console.error('[late-join]', ...a);

/** `collab serve` in a temp dir on a free port, dev mode, limits raised for filling. */
async function startServer() {
  const bin = process.env.COLLAB_BIN;
  if (!bin) throw new Error('set COLLAB_BIN to the collab binary (scripts/bench-late-join.sh does)');
  const root = mkdtempSync(joinPath(tmpdir(), 'collab-late-join-'));
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('COLLAB_')));
  Object.assign(env, {
    RUST_LOG: 'warn',
    COLLAB_GATEWAY__RATE_LIMITS__OPS_PER_SEC: '1000000',
    COLLAB_GATEWAY__RATE_LIMITS__OPS_BURST: '1000000',
    COLLAB_GATEWAY__RATE_LIMITS__HTTP_PER_SEC: '100000',
    COLLAB_GATEWAY__RATE_LIMITS__HTTP_BURST: '100000',
  });
  const proc = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--data-dir', joinPath(root, 'data')], { env, stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await new Promise((resolve, reject) => {
    proc.on('exit', (code) => reject(new Error(`collab exited (${code})`)));
    createInterface({ input: proc.stdout }).on('line', (line) => {
      const at = line.indexOf('listening on http://');
      if (at >= 0) resolve(Number(line.trim().split(':').pop()));
    });
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    stop() { proc.kill('SIGKILL'); rmSync(root, { recursive: true, force: true }); },
  };
}

/** A TCP proxy that counts the bytes the server sends. */
async function countingProxy(targetPort) {
  const proxy = { port: 0, down: 0 };
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1');
    client.on('data', (b) => upstream.write(b));
    upstream.on('data', (b) => { proxy.down += b.length; client.write(b); });
    const end = () => { client.destroy(); upstream.destroy(); };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  proxy.port = server.address().port;
  proxy.close = () => server.close();
  return proxy;
}

async function api(url, token, path, body) {
  const r = await fetch(`${url}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await r.json();
  if (!r.ok) throw new Error(`${path}: ${r.status} ${JSON.stringify(json)}`);
  return json;
}

async function devToken(url, user, scope) {
  const r = await fetch(`${url}/v1/dev/token`, { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ user, scope }) });
  return (await r.json()).token;
}

/** A deterministic random number source. */
function random(seed) {
  let s = seed;
  return () => { s = (s * 16807) % 2147483647; return s / 2147483647; };
}

/** The points of one op of `writer`'s stroke `n`, part `part` (0–8). */
function pointsFor(writer, rnd, at) {
  const points = [];
  for (let i = 0; i < POINTS; i++) {
    if (args.points === 'generator') {
      points.push([100 + writer + i * 3.5, 200 + i * 1.25]);
    } else {
      at[0] += (rnd() - 0.5) * 12;
      at[1] += (rnd() - 0.5) * 12;
      points.push([Math.round(at[0] * 100) / 100, Math.round(at[1] * 100) / 100]);
    }
  }
  return points;
}

/** Fills `room` with `ops` ops from WRITERS users publishing over HTTP. */
async function fill(url, room, ops) {
  const perWriter = Math.ceil(ops / WRITERS / STROKE_OPS) * STROKE_OPS;
  await Promise.all(Array.from({ length: WRITERS }, async (_, w) => {
    const token = await devToken(url, `w${w + 1}`, 'service');
    const rnd = random(w + 1);
    let batch = [];
    let at = [0, 0];
    for (let n = 0; n < perWriter; n++) {
      const stroke = `w${w + 1}s${Math.floor(n / STROKE_OPS)}`;
      const part = n % STROKE_OPS;
      let op;
      if (part === 0) {
        at = [rnd() * 2000, rnd() * 1200];
        op = { kind: 'stroke_begin', stroke, color: '#1f6feb', width: 3, points: pointsFor(w + 1, rnd, at) };
      } else if (part < STROKE_OPS - 1) {
        op = { kind: 'stroke_points', stroke, points: pointsFor(w + 1, rnd, at) };
      } else {
        op = { kind: 'stroke_end', stroke };
      }
      batch.push({ cid: `f${n}`, op });
      if (batch.length === BATCH || n === perWriter - 1) {
        await api(url, token, `/v1/rooms/${room}/ops`, batch);
        batch = [];
      }
    }
  }));
  return perWriter * WRITERS;
}

/**
 * A fetch that asks for gzip, as a browser would, where the SDK asks for
 * no content encoding (Node 20's fetch decodes gzip in many small steps,
 * slower than the bytes it saves take on loopback).
 */
const gzipped = (url, init = {}) => fetch(url, { ...init, headers: { ...init.headers, 'Accept-Encoding': 'gzip' } });

/** The ways a newcomer joins: a label, the client's `snapshots`, its fetch. */
const WAYS = [
  ['joined frame (before)', false, undefined],
  ['snapshot + since (after: the SDK asks it uncompressed)', true, undefined],
  ['snapshot + since, gzip', true, gzipped],
];

/** A connected client of `url` for `user`. */
async function connected(url, user, snapshots, fetchImpl) {
  const token = await devToken(url, user);
  const client = new CollabClient({ url, token, WebSocket, snapshots, fetch: fetchImpl });
  client.connect();
  await new Promise((resolve) => {
    const check = (s) => { if (s.state === 'connected') resolve(undefined); };
    client.on('status', check);
    check(client.status);
  });
  return client;
}

/** One newcomer: ms from `room()` to the full state, and a digest of that state. */
async function join(url, room, user, snapshots, fetchImpl) {
  const client = await connected(url, user, snapshots, fetchImpl);
  try {
    const t0 = performance.now();
    const r = client.room(room);
    await r.ready;
    const ms = performance.now() - t0;
    const strokes = r.strokes();
    let points = 0;
    let sum = 0;
    for (const s of strokes) {
      points += s.points.length;
      for (const p of s.points) sum += p[0] - p[1];
    }
    return { ms, head: r.lastSeq, strokes: strokes.length, points, digest: `${strokes.length}/${points}/${sum.toFixed(2)}` };
  } finally {
    client.close();
  }
}

/** Every newcomer's figures, each way; bytes through the proxy on a second pass. */
async function measure(server, room, joiners) {
  const rows = [];
  for (const [way, snapshots, fetchImpl] of WAYS) {
    const times = [];
    let seen = null;
    for (let j = 0; j < joiners; j++) {
      const got = await join(server.url, room, `n${j}`, snapshots, fetchImpl);
      times.push(got.ms);
      seen ??= got;
      if (got.digest !== seen.digest || got.head !== seen.head) throw new Error(`${way}: newcomer ${j} got ${got.digest} at ${got.head}, the first ${seen.digest} at ${seen.head}`);
    }
    const proxy = await countingProxy(server.port);
    const client = await connected(`http://127.0.0.1:${proxy.port}`, 'counted', snapshots, fetchImpl);
    const before = proxy.down;
    const r = client.room(room);
    await r.ready;
    const bytes = proxy.down - before;
    client.close();
    proxy.close();
    rows.push({ way, times, bytes, ...seen });
  }
  for (const r of rows) if (r.digest !== rows[0].digest) throw new Error(`${r.way} disagrees: ${r.digest} against ${rows[0].digest}`);
  return rows;
}

/**
 * The options side by side: the snapshot route in each format and content
 * encoding, bytes on the wire (through the proxy; zstd is counted but not
 * decoded: Node 20's fetch cannot) and the time to the decoded state.
 */
async function encodings(server, room) {
  const { decodePackedSnapshot } = await import(new URL('dist/index.js', sdk).href);
  const token = await devToken(server.url, 'enc');
  const proxy = await countingProxy(server.port);
  console.log('\n| snapshot format | Content-Encoding | bytes from the server | time to the decoded state (ms) |');
  console.log('|---|---|---|---|');
  for (const format of ['json', 'packed']) {
    for (const encoding of ['identity', 'gzip', 'br', 'zstd']) {
      const before = proxy.down;
      const t0 = performance.now();
      const r = await fetch(`http://127.0.0.1:${proxy.port}/v1/rooms/${room}/snapshot?format=${format}`, {
        headers: { Authorization: `Bearer ${token}`, 'Accept-Encoding': encoding },
      });
      let ms = '—';
      if (encoding === 'zstd') {
        await r.arrayBuffer();
      } else if (format === 'json') {
        await r.json();
        ms = (performance.now() - t0).toFixed(0);
      } else {
        decodePackedSnapshot(new Uint8Array(await r.arrayBuffer()));
        ms = (performance.now() - t0).toFixed(0);
      }
      const got = r.headers.get('content-encoding') ?? 'identity';
      console.log(`| ${format} | ${got} | ${((proxy.down - before) / 1e6).toFixed(2)} MB | ${ms} |`);
    }
  }
  proxy.close();
}

function report(title, rows) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`\n### ${title}\n`);
  console.log('| way | bytes from the server | full state at the client, each newcomer (ms) | median |');
  console.log('|---|---|---|---|');
  for (const r of rows) {
    console.log(`| ${r.way} | ${(r.bytes / 1e6).toFixed(2)} MB | ${r.times.map((t) => t.toFixed(0)).join(', ')} | ${median(r.times).toFixed(0)} |`);
  }
  const share = rows.slice(1).map((r) => `${(r.bytes / rows[0].bytes * 100).toFixed(1)}%`).join(' and ');
  console.log(`\nhead ${rows[0].head}, ${rows[0].strokes} strokes, ${rows[0].points} points; after / before: ${share} of the bytes`);
}

const server = await startServer();
try {
  const owner = await devToken(server.url, 'owner');
  for (const [label, ops] of [['large', OPS], ['small', Number(args.small)]]) {
    if (!ops) continue;
    const { id } = await api(server.url, owner, '/v1/rooms', { kind: 'board' });
    const t = performance.now();
    const total = await fill(server.url, id, ops);
    log(`${label}: ${total} ops in ${((performance.now() - t) / 1000).toFixed(1)} s (${args.points} points)`);
    const rows = await measure(server, id, JOINERS);
    report(`a board of ${total} ops, ${args.points} points`, rows);
    if (label === 'large') await encodings(server, id);
  }
} finally {
  server.stop();
}
