// A real `collab serve` for one test: a temp data dir, a free loopback
// port, killed at the end. It can be SIGKILLed and started again on the
// same port and data dir, as a crash and a restart would.

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const LISTENING = 'listening on http://';
const START_TIMEOUT_MS = 30_000;

/** The collab binary: $COLLAB_BIN, or debug/collab in the cargo target dir. */
export function collabBinary() {
  if (process.env.COLLAB_BIN) return process.env.COLLAB_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(homedir(), '.cache', 'collab', 'target');
  const binary = join(target, 'debug', 'collab');
  if (!existsSync(binary)) {
    throw new Error(`no collab binary at ${binary}: run \`cargo build -p collab\` or set COLLAB_BIN`);
  }
  return binary;
}

export class CollabServer {
  /**
   * `secret`: run with this JWT secret instead of in dev mode; `settings`:
   * more COLLAB_* environment settings.
   */
  constructor({ secret = null, settings = {} } = {}) {
    this.secret = secret;
    this.settings = settings;
    this.root = mkdtempSync(join(tmpdir(), 'collab-web-test-'));
    this.dataDir = join(this.root, 'data');
    this.proc = null;
    this.port = 0;
    this.logs = [];
  }

  static async start(options) {
    const server = new CollabServer(options);
    await server.spawn('127.0.0.1:0');
    return server;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  spawn(listen) {
    // Our own COLLAB_* settings must not leak into the test's server.
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('COLLAB_')));
    env.RUST_LOG = env.RUST_LOG || 'warn';
    if (this.secret) env.COLLAB_JWT_SECRET = this.secret;
    Object.assign(env, this.settings);
    const proc = spawn(collabBinary(), ['serve', '--listen', listen, '--data-dir', this.dataDir], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    createInterface({ input: proc.stderr }).on('line', (line) => this.log(`[collab ${proc.pid}] ${line}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error(`collab did not start within ${START_TIMEOUT_MS} ms:\n${this.tail()}`));
      }, START_TIMEOUT_MS);
      createInterface({ input: proc.stdout }).on('line', (line) => {
        this.log(`[collab ${proc.pid} stdout] ${line}`);
        const at = line.indexOf(LISTENING);
        if (at >= 0) {
          clearTimeout(timer);
          this.port = Number(line.slice(at + LISTENING.length).trim().split(':').pop());
          resolve(this);
        }
      });
      proc.on('exit', (code, signal) => {
        clearTimeout(timer);
        this.log(`[collab ${proc.pid}] exited code=${code} signal=${signal}`);
        reject(new Error(`collab exited (${code ?? signal}) before listening:\n${this.tail()}`));
      });
    });
  }

  /** SIGKILL: no drain, no goodbye; the sockets just die. */
  async kill() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise((resolve) => proc.once('exit', resolve));
    proc.kill('SIGKILL');
    await exited;
  }

  /** Starts again on the same port and data dir. */
  async restart() {
    await this.kill();
    await this.spawn(`127.0.0.1:${this.port}`);
  }

  async stop() {
    await this.kill();
    rmSync(this.root, { recursive: true, force: true });
  }

  log(line) {
    this.logs.push(line);
    if (this.logs.length > 300) this.logs.shift();
  }

  tail(n = 40) {
    return this.logs.slice(-n).join('\n');
  }

  /** A token minted by `collab token` (args such as `--room r1=read`). */
  mintToken(user, ...args) {
    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('COLLAB_')));
    if (this.secret) env.COLLAB_JWT_SECRET = this.secret;
    else args.push('--data-dir', this.dataDir);
    return execFileSync(collabBinary(), ['token', '--user', user, ...args], { env }).toString().trim();
  }

  // === the HTTP API, for checks from outside the browser ===

  async createRoom(token, body) {
    const r = await fetch(`${this.url}/v1/rooms`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    const answer = await r.json();
    if (r.status !== 201) throw new Error(`create room: ${r.status} ${JSON.stringify(answer)}`);
    return answer;
  }

  async deleteRoom(token, id) {
    const r = await fetch(`${this.url}/v1/rooms/${id}`, {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${token}` },
    });
    if (r.status !== 204) throw new Error(`delete room: ${r.status} ${await r.text()}`);
  }

  /** A dev token; `ttlSecs`: its lifetime (the server's default, a day, if absent). */
  async devToken(user, name, ttlSecs) {
    const r = await fetch(`${this.url}/v1/dev/token`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ user, name, ttl_secs: ttlSecs }),
    });
    if (!r.ok) throw new Error(`dev token: ${r.status}`);
    return (await r.json()).token;
  }

  async getJson(token, path) {
    const r = await fetch(`${this.url}${path}`, { headers: { Authorization: `Bearer ${token}` } });
    const body = await r.json();
    if (!r.ok) throw new Error(`GET ${path}: ${r.status} ${JSON.stringify(body)}`);
    return body;
  }

  /** Every op of the room, oldest first (all history pages). */
  async allOps(token, room, kinds) {
    const ops = [];
    let before = null;
    for (;;) {
      const query = new URLSearchParams({ limit: '500' });
      if (before !== null) query.set('before', String(before));
      if (kinds) query.set('kinds', kinds.join(','));
      const page = await this.getJson(token, `/v1/rooms/${room}/history?${query}`);
      ops.push(...page.ops);
      if (page.next_before === null) break;
      before = page.next_before;
    }
    return ops.reverse();
  }
}
