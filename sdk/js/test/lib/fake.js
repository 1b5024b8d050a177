// A fake WebSocket and a fake fetch for unit tests: the test plays the
// server, frame by frame, with Node's mocked timers for the clock.

/** A WebSocket the test drives: `accept()`, `receive(frame)`, `drop(code)`. */
export class FakeSocket {
  /** @type {FakeSocket[]} every socket made, oldest first */
  static made = [];

  /** @param {string} url */
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    /** @type {any[]} frames the client sent, parsed */
    this.sent = [];
    /** @type {number | undefined} the code the client closed with */
    this.closedWith = undefined;
    this.closedByClient = false;
    /** @type {((e: unknown) => void) | null} */
    this.onopen = null;
    /** @type {((e: { data: unknown }) => void) | null} */
    this.onmessage = null;
    /** @type {((e: { code: number, reason: string }) => void) | null} */
    this.onclose = null;
    /** @type {((e: unknown) => void) | null} */
    this.onerror = null;
    FakeSocket.made.push(this);
  }

  static reset() {
    FakeSocket.made = [];
  }

  static get last() {
    return FakeSocket.made[FakeSocket.made.length - 1];
  }

  /** @param {string} data */
  send(data) {
    if (this.readyState !== 1) throw new Error('send on a socket that is not open');
    this.sent.push(JSON.parse(data));
  }

  /** @param {number} [code] */
  close(code) {
    this.closedByClient = true;
    this.closedWith = code;
    this.readyState = 3;
  }

  /** The token in the URL. */
  get token() {
    return new URL(this.url).searchParams.get('token');
  }

  /** Opens and says welcome as `user`. */
  accept(user = { id: 'ann', name: 'Ann', color: '#123456' }) {
    this.readyState = 1;
    this.onopen?.({});
    this.receive({ type: 'welcome', user, conn: `c${FakeSocket.made.length}` });
  }

  /** @param {object} frame */
  receive(frame) {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }

  /** The connection ends from the server's side (or the network's). */
  drop(code = 1006) {
    this.readyState = 3;
    this.onclose?.({ code, reason: '' });
  }

  /** @param {string} type */
  sentOf(type) {
    return this.sent.filter((f) => f.type === type);
  }
}

/**
 * A fetch that answers from `routes` (path → [status, body]); records calls.
 * @param {Record<string, [number, unknown] | ((url: URL) => [number, unknown])>} routes
 */
export function fakeFetch(routes) {
  /** @type {{ url: URL, init: any }[]} */
  const calls = [];
  /** @param {string} url @param {any} init */
  const fetch = async (url, init) => {
    const u = new URL(url);
    calls.push({ url: u, init });
    const route = routes[u.pathname];
    if (!route) throw new TypeError('fetch failed');
    const [status, body] = typeof route === 'function' ? route(u) : route;
    return new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } });
  };
  return { fetch: /** @type {typeof globalThis.fetch} */ (/** @type {unknown} */ (fetch)), calls };
}

/** Lets pending promise callbacks run (the timers are mocked, this is not). */
export function flush() {
  return new Promise((resolve) => setImmediate(resolve));
}

/** A JWT-shaped token (unsigned: the fake server does not check) for `sub`, expiring at `exp` (s). */
export function fakeToken(sub, exp) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp })}.sig`;
}
