// One WebSocket to the server that comes back by itself.
//
// Whatever ends a connection — a restart (1001), a crash (1006), a slow
// link (4008), a half-open socket no one noticed — the answer is the same:
// wait a little (exponential backoff with jitter, so a restarted server is
// not hit by every page at once), connect again, and let the room re-join
// with `since`/`epoch`. Only an invalid token stops the loop, because
// retrying cannot fix it.

const BACKOFF_FIRST_MS = 250;
const BACKOFF_MAX_MS = 5000;
// Any frame proves the link is alive. After this long without one we ping,
// and after twice this long we give up on the socket: a half-open TCP
// connection can otherwise look open for many minutes.
const QUIET_MS = 15000;

export class Connection {
  /**
   * @param {object} o
   * @param {() => string} o.url      the WebSocket URL, token included
   * @param {(frame: object) => void} o.onFrame   every frame, welcome included
   * @param {(status: object) => void} o.onStatus `{state, retryAt?, reason?}`
   * @param {() => Promise<boolean|null>} o.checkToken  true/false/null (unknown)
   * @param {(reason: string) => void} o.onAuthFailure  token refused or expired
   */
  constructor(o) {
    this.o = o;
    this.ws = null;
    this.attempt = 0;
    this.timer = null;
    this.stopped = true;
    this.lastHeard = 0;
    this.pingId = 0;
    this.watchdog = null;
    this.onOnline = () => { if (this.timer) this.retryNow(); };
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    window.addEventListener('online', this.onOnline);
    this.watchdog = setInterval(() => this.checkAlive(), QUIET_MS / 3);
    this.open();
  }

  stop() {
    this.stopped = true;
    window.removeEventListener('online', this.onOnline);
    clearInterval(this.watchdog);
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, 'bye');
    }
    this.o.onStatus({ state: 'stopped' });
  }

  /** Sends a frame if the socket is open; false if it is not (nothing queued here). */
  send(frame) {
    if (!this.ws || this.ws.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  get isOpen() {
    return !!this.ws && this.ws.readyState === WebSocket.OPEN;
  }

  retryNow() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.stopped && !this.ws) this.open();
  }

  open() {
    this.timer = null;
    this.o.onStatus({ state: 'connecting' });
    let ws;
    try {
      ws = new WebSocket(this.o.url());
    } catch (e) {
      this.o.onStatus({ state: 'stopped', reason: String(e) });
      return;
    }
    this.ws = ws;
    let welcomed = false;
    ws.onopen = () => { this.lastHeard = Date.now(); };
    ws.onmessage = (event) => {
      this.lastHeard = Date.now();
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.type === 'welcome') {
        welcomed = true;
        this.attempt = 0;
      }
      if (frame.type === 'pong') return;
      this.o.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return; // a socket we already gave up on
      this.ws = null;
      if (this.stopped) return;
      this.closed(event.code, welcomed);
    };
  }

  async closed(code, welcomed) {
    if (code === 4001) {
      this.o.onAuthFailure('expired');
      return;
    }
    // A browser cannot see the HTTP status of a refused upgrade; a socket
    // that never got its welcome may have been refused for its token.
    if (!welcomed) {
      const ok = await this.o.checkToken();
      if (this.stopped) return;
      if (ok === false) {
        this.o.onAuthFailure('refused');
        return;
      }
    }
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * 2 ** this.attempt);
    this.attempt += 1;
    const wait = Math.round(delay * (0.5 + Math.random() * 0.5));
    this.o.onStatus({ state: 'offline', code, retryAt: Date.now() + wait });
    this.timer = setTimeout(() => this.open(), wait);
  }

  checkAlive() {
    if (!this.isOpen) return;
    const quiet = Date.now() - this.lastHeard;
    if (quiet > 2 * QUIET_MS) {
      // Give up on this socket; onclose may take long on a dead link, so
      // we detach it and reconnect now.
      const ws = this.ws;
      this.ws = null;
      ws.close();
      this.closed(1006, true);
    } else if (quiet > QUIET_MS) {
      this.send({ type: 'ping', id: `p${++this.pingId}` });
    }
  }
}
