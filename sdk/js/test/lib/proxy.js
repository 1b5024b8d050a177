// A TCP proxy between the SDK and a real server that breaks the network
// on demand: cut every connection, stall them (take bytes, deliver
// nothing, close nothing — a link that silently stopped), or drop them in
// the middle of the server's next frame.

import { createServer, connect } from 'node:net';

export class FaultProxy {
  /** @param {number} targetPort the server's port on 127.0.0.1 */
  constructor(targetPort) {
    this.targetPort = targetPort;
    this.port = 0;
    this.stalled = false;
    /** @type {Set<{ client: import('node:net').Socket, upstream: import('node:net').Socket, stalled: boolean, dropNext: boolean }>} */
    this.pairs = new Set();
    /** Connections accepted, ever. */
    this.accepted = 0;
    this.server = createServer((client) => this.accept(client));
  }

  /** @param {number} targetPort */
  static async start(targetPort) {
    const proxy = new FaultProxy(targetPort);
    await new Promise((resolve) => proxy.server.listen(0, '127.0.0.1', () => resolve(undefined)));
    proxy.port = /** @type {import('node:net').AddressInfo} */ (proxy.server.address()).port;
    return proxy;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  /** @param {import('node:net').Socket} client */
  accept(client) {
    this.accepted += 1;
    const upstream = connect(this.targetPort, '127.0.0.1');
    const pair = { client, upstream, stalled: this.stalled, dropNext: false };
    this.pairs.add(pair);
    const end = () => {
      this.pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.on('data', (chunk) => {
      if (!pair.stalled) upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (pair.stalled) return;
      if (pair.dropNext) {
        // Half of what the server sent, then nothing: a frame cut in two.
        client.write(chunk.subarray(0, Math.max(1, chunk.length >> 1)), () => end());
        return;
      }
      client.write(chunk);
    });
  }

  /** Closes every connection now (new ones still pass). */
  cut() {
    for (const pair of [...this.pairs]) {
      pair.client.destroy();
      pair.upstream.destroy();
    }
  }

  /** From now on nothing is delivered either way, and nothing is closed. */
  stall() {
    this.stalled = true;
    for (const pair of this.pairs) pair.stalled = true;
  }

  /** Delivers again to new connections; the stalled ones lost bytes, so they are closed. */
  resume() {
    this.stalled = false;
    for (const pair of [...this.pairs]) {
      if (pair.stalled) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
    }
  }

  /** Every open connection dies in the middle of the next thing the server sends it. */
  dropMidFrame() {
    for (const pair of this.pairs) pair.dropNext = true;
  }

  /** Connections open now. */
  get open() {
    return this.pairs.size;
  }

  async stop() {
    this.cut();
    await new Promise((resolve) => this.server.close(() => resolve(undefined)));
  }
}
