// The client: one WebSocket to a collab server that comes back by itself,
// carrying every room the app has joined, and the HTTP API beside it.
//
// Whatever ends a connection — a restart (1001), a crash (1006), a slow
// link (4008), a link that silently stopped carrying packets — the answer
// is the same: wait a little (exponential backoff with jitter, so a
// restarted server is not hit by every client at once), connect again with
// a token from the app's token provider, and let every room re-join with
// `since`/`epoch` and resend its outbox. A quiet connection is pinged, and
// one that does not answer within seconds is given up on; in a browser the
// `offline` event drops the connection at once and `online` brings it back.
// Only a token the server refuses, offered again by the provider, stops
// the loop, because retrying cannot fix it.
//
// A token that expires soon (the server says so with `token_expiring`) is
// replaced on the open connection: a new one from the provider goes out in
// a `refresh` frame, and nothing else changes. Only if the server refuses
// it does the client fall back to a new connection with a fresh token.
import { Emitter } from './emitter.js';
import { ClosedError, CollabError, NetworkError, UnauthorizedError, errorFromCode, } from './errors.js';
import { Room, randomId } from './room.js';
import { MemoryStorage } from './storage.js';
const OPEN = 1;
/** The WebSocket close codes of the protocol. */
export const CLOSE_CODES = {
    /** The server is going away (restart, deploy), or we were silent. */
    goingAway: 1001,
    /** A message over the size limit. */
    tooBig: 1009,
    /** The token expired or was revoked. */
    expired: 4001,
    /** We did not read fast enough. */
    tooSlow: 4008,
};
export class CollabClient extends Emitter {
    status = { state: 'idle' };
    /** Me, from the last `welcome` (null before the first). */
    me = null;
    /** This client's id in the outbox storage (and the prefix of its cids). */
    owner;
    httpBase;
    wsBase;
    provider;
    WS;
    fetchImpl;
    storage;
    firstDelay;
    maxDelay;
    quietMs;
    timeoutMs;
    connectTimeoutMs;
    cursorIntervalMs;
    refreshBeforeMs;
    watchNetwork;
    rooms = new Map();
    ws = null;
    welcomed = false;
    openedAt = 0;
    lastHeard = 0;
    awaitingPong = false;
    pingId = 0;
    attempt = 0;
    retryTimer = null;
    watchTimer = null;
    refreshTimer = null;
    token = null;
    /** My user id: the token's `sub`, then the `welcome`'s. */
    user = null;
    nextToken = null;
    /** A token sent in a `refresh`, waiting for the server's answer. */
    refreshing = null;
    /** The provider is being asked for a token to refresh with. */
    refreshAsked = false;
    nextReason = 'connect';
    refusedToken = null;
    cidCounter = 0;
    started = false;
    stopped = false;
    release = null;
    onOnline = () => { if (!this.ws)
        this.retryNow(); };
    onOffline = () => { if (this.ws)
        this.giveUp('network offline'); };
    constructor(options) {
        super();
        const url = new URL(options.url);
        const secure = url.protocol === 'https:' || url.protocol === 'wss:';
        const base = `${url.host}${url.pathname.replace(/\/v1\/ws$/, '').replace(/\/+$/, '')}`;
        this.httpBase = `${secure ? 'https' : 'http'}://${base}`;
        this.wsBase = `${secure ? 'wss' : 'ws'}://${base}/v1/ws`;
        const token = options.token;
        this.provider = typeof token === 'string' ? () => token : token;
        const WS = options.WebSocket ?? globalThis.WebSocket;
        if (!WS)
            throw new TypeError('no WebSocket implementation: pass one as the `WebSocket` option (in Node 20, the `ws` package)');
        this.WS = WS;
        this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
        this.storage = options.storage ?? new MemoryStorage();
        this.firstDelay = options.backoff?.firstMs ?? 250;
        this.maxDelay = options.backoff?.maxMs ?? 5000;
        this.quietMs = options.heartbeat?.quietMs ?? 4000;
        this.timeoutMs = options.heartbeat?.timeoutMs ?? 4000;
        this.connectTimeoutMs = options.connectTimeoutMs ?? 10_000;
        this.cursorIntervalMs = 1000 / (options.cursorsPerSecond ?? 20);
        this.refreshBeforeMs = options.refreshBeforeMs ?? 60_000;
        const g = globalThis;
        this.watchNetwork = options.watchNetwork ?? (typeof g.addEventListener === 'function' && typeof g.navigator?.onLine === 'boolean');
        this.owner = randomId(12);
    }
    // === rooms ===
    /**
     * The room `id`, joined on this client's connection (connecting first if
     * needed). The same Room is returned while it is not left.
     */
    room(id) {
        if (!/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
            throw errorFromCode('bad_request', `"${id}" is not a room id: 1–64 of A–Z, a–z, 0–9, "-" and "_"`, { room: id });
        }
        if (this.stopped)
            throw new ClosedError('the client is closed', { room: id });
        let room = this.rooms.get(id);
        if (!room) {
            room = new Room(id, {
                send: (frame) => this.send(frame),
                nextCid: () => `${this.owner}.${++this.cidCounter}`,
                storage: this.storage,
                owner: this.owner,
                cursorIntervalMs: this.cursorIntervalMs,
                history: (room, options) => this.history(room, options),
                forget: (r) => { if (this.rooms.get(r.id) === r)
                    this.rooms.delete(r.id); },
            });
            this.rooms.set(id, room);
            if (this.user !== null)
                room.knowUser(this.user);
            if (this.me && this.isOpen)
                room.connected(this.me);
        }
        this.connect();
        return room;
    }
    /** Every room joined (or being joined) on this client. */
    joinedRooms() {
        return [...this.rooms.values()];
    }
    // === the connection ===
    /** Starts connecting (rooms do it themselves); safe to call again. */
    connect() {
        if (this.started || this.stopped)
            return;
        this.started = true;
        this.release = this.storage.hold?.(this.owner) ?? null;
        if (this.watchNetwork) {
            addEventListener('online', this.onOnline);
            addEventListener('offline', this.onOffline);
        }
        void this.open();
    }
    /** True while a connection is open and welcomed. */
    get isOpen() {
        return !!this.ws && this.welcomed && this.ws.readyState === OPEN;
    }
    /**
     * Closes the client: leaves every room, closes the connection (1000) and
     * stops reconnecting. Ops not yet confirmed stay in the storage (the next
     * client of this user adopts them); their promises reject with a ClosedError.
     */
    close() {
        if (this.stopped)
            return;
        for (const room of [...this.rooms.values()])
            room.close();
        this.stop({ state: 'closed' });
    }
    /**
     * Ends the connection as a network failure would (for tests and for a
     * "reconnect" button): the client reconnects by itself.
     */
    dropConnection() {
        if (this.ws)
            this.giveUp('dropped by the app');
    }
    /** Connects now instead of waiting for the backoff. */
    retryNow() {
        if (this.stopped || this.ws || !this.started)
            return;
        this.clearRetry();
        void this.open();
    }
    /** @internal Sends a frame if the connection is open and welcomed; false if not. */
    send(frame) {
        if (!this.isOpen || !this.ws)
            return false;
        this.ws.send(JSON.stringify(frame));
        return true;
    }
    // === the HTTP API ===
    /** Creates a board or a channel (`POST /v1/rooms`). */
    createRoom(room) {
        return this.request('/v1/rooms', { method: 'POST', body: room });
    }
    /**
     * Deletes a room with its history (`DELETE /v1/rooms/{id}`): its creator
     * or an admin. Everyone in it, this client included, is told, and the
     * room closes with a `deleted` event.
     */
    async deleteRoom(id) {
        await this.request(`/v1/rooms/${encodeURIComponent(id)}`, { method: 'DELETE' });
    }
    /** A room's metadata and head (`GET /v1/rooms/{id}`). */
    getRoom(id) {
        return this.request(`/v1/rooms/${encodeURIComponent(id)}`);
    }
    /**
     * A room's history, newest first, page by page (`GET /v1/rooms/{id}/history`),
     * from `before` (exclusive) back to the first op.
     */
    async *history(room, options = {}) {
        let before = options.before ?? null;
        for (;;) {
            const query = new URLSearchParams({ limit: String(options.limit ?? 100) });
            if (before !== null)
                query.set('before', String(before));
            if (options.kinds)
                query.set('kinds', options.kinds.join(','));
            const page = await this.request(`/v1/rooms/${encodeURIComponent(room)}/history?${query}`);
            yield { ops: page.ops, nextBefore: page.next_before };
            if (page.next_before === null)
                return;
            before = page.next_before;
        }
    }
    /** An HTTP request to the API with the current token; errors become typed errors. */
    async request(path, init = {}) {
        const token = this.token ?? await this.provider({ reason: 'connect', previous: null });
        const headers = { Authorization: `Bearer ${token}` };
        if (init.body !== undefined)
            headers['Content-Type'] = 'application/json';
        let response;
        try {
            response = await this.fetchImpl(`${this.httpBase}${path}`, {
                method: init.method ?? 'GET',
                headers,
                body: init.body === undefined ? null : JSON.stringify(init.body),
                cache: 'no-store',
            });
        }
        catch (e) {
            throw new NetworkError(`the server could not be reached: ${String(e)}`);
        }
        let json = null;
        try {
            json = await response.json();
        }
        catch { /* not JSON: handled below */ }
        if (!response.ok) {
            const error = json?.error;
            throw errorFromCode(error?.code ?? statusCode(response.status), error?.message ?? response.statusText, { status: response.status });
        }
        return json;
    }
    // === internals ===
    setStatus(status) {
        this.status = status;
        this.emit('status', status);
    }
    stop(status) {
        this.stopped = true;
        this.clearRetry();
        this.clearWatch();
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        if (this.watchNetwork) {
            removeEventListener('online', this.onOnline);
            removeEventListener('offline', this.onOffline);
        }
        const ws = this.ws;
        this.ws = null;
        if (ws) {
            detach(ws);
            try {
                ws.close(1000, 'bye');
            }
            catch { /* already closing */ }
        }
        this.release?.();
        this.release = null;
        this.setStatus(status);
    }
    async open() {
        this.retryTimer = null;
        this.setStatus({ state: 'connecting' });
        let token;
        try {
            token = this.nextToken ?? await this.provider({ reason: this.nextReason, previous: this.token });
        }
        catch (e) {
            if (this.stopped)
                return;
            this.emit('error', providerError(e));
            this.scheduleRetry(undefined, 'no token');
            return;
        }
        this.nextToken = null;
        if (this.stopped || this.ws)
            return;
        if (this.refusedToken !== null && token === this.refusedToken) {
            // The same token again: retrying cannot fix it.
            const error = new UnauthorizedError(this.nextReason === 'expired'
                ? 'the token expired or was revoked, and the token provider gave no new one'
                : 'the server refused the token, and the token provider gave no other');
            for (const room of [...this.rooms.values()])
                room.close();
            this.stop({ state: 'closed', error });
            return;
        }
        this.token = token;
        const sub = tokenClaims(token)?.sub;
        if (typeof sub === 'string') {
            this.user = sub;
            for (const room of this.rooms.values())
                room.knowUser(sub);
        }
        let ws;
        try {
            ws = new this.WS(`${this.wsBase}?token=${encodeURIComponent(token)}`);
        }
        catch (e) {
            this.scheduleRetry(undefined, `could not open a WebSocket: ${String(e)}`);
            return;
        }
        this.ws = ws;
        this.welcomed = false;
        this.openedAt = Date.now();
        this.lastHeard = this.openedAt;
        this.awaitingPong = false;
        ws.onopen = () => { this.heard(); };
        ws.onmessage = (event) => this.onMessage(ws, event.data);
        ws.onerror = () => { };
        ws.onclose = (event) => {
            if (this.ws !== ws)
                return; // a socket we already gave up on
            this.ws = null;
            void this.closed(event.code, this.welcomed, token, event.reason || undefined);
        };
        this.armWatch(this.connectTimeoutMs);
    }
    heard() {
        this.lastHeard = Date.now();
        this.awaitingPong = false;
    }
    onMessage(ws, data) {
        if (this.ws !== ws)
            return;
        this.heard();
        let frame;
        try {
            frame = JSON.parse(String(data));
        }
        catch {
            return;
        }
        switch (frame.type) {
            case 'welcome':
                this.welcomed = true;
                this.attempt = 0;
                this.refusedToken = null;
                this.nextReason = 'connect';
                this.me = frame.user;
                this.user = frame.user.id;
                this.setStatus({ state: 'connected' });
                this.scheduleRefresh();
                this.armWatch(this.quietMs);
                this.emit('welcome', { user: frame.user, conn: frame.conn });
                for (const room of [...this.rooms.values()])
                    room.connected(frame.user);
                return;
            case 'pong':
                return;
            case 'token_expiring':
                void this.refresh();
                return;
            case 'refreshed':
                this.onRefreshed(frame.exp);
                return;
            case 'error': {
                // The answer to a refresh names no room and no op.
                if (this.refreshing !== null && frame.room === undefined && frame.cid === undefined
                    && (frame.code === 'unauthorized' || frame.code === 'bad_request')) {
                    this.onRefreshRefused(frame.code, frame.message);
                    return;
                }
                const room = (frame.room !== undefined && this.rooms.get(frame.room))
                    || (frame.cid !== undefined && [...this.rooms.values()].find((r) => r.owns(frame.cid)));
                if (room)
                    room.handle(frame);
                else
                    this.emit('error', errorFromCode(frame.code, frame.message, { room: frame.room, cid: frame.cid }));
                return;
            }
            default:
                if ('room' in frame)
                    this.rooms.get(frame.room)?.handle(frame);
        }
    }
    /** A connection ended: find out why, then connect again (or stop). */
    async closed(code, welcomed, token, reason) {
        this.clearWatch();
        if (this.refreshing !== null) {
            // Sent but not answered: the next connection starts with it.
            this.nextToken = this.refreshing;
            this.refreshing = null;
        }
        for (const room of this.rooms.values())
            room.disconnected();
        if (this.stopped)
            return;
        if (code === CLOSE_CODES.expired) {
            // Expired or revoked: ask for a new token now; the same one again stops us.
            this.refusedToken = token;
            this.nextReason = 'expired';
            this.scheduleRetry(code, 'token expired or revoked', 0);
            return;
        }
        // A browser cannot see the HTTP status of a refused upgrade: a socket
        // that never got its welcome may have been refused for its token.
        if (!welcomed && await this.tokenRefused(token)) {
            if (this.stopped)
                return;
            this.refusedToken = token;
            this.nextReason = 'refused';
            this.scheduleRetry(code, 'token refused', 0);
            return;
        }
        if (this.stopped)
            return;
        this.scheduleRetry(code, reason);
    }
    /** Whether the server refuses `token` (401 from the API); false when it cannot tell. */
    async tokenRefused(token) {
        try {
            const response = await this.fetchImpl(`${this.httpBase}/v1/me/rooms`, {
                headers: { Authorization: `Bearer ${token}` }, cache: 'no-store',
            });
            return response.status === 401;
        }
        catch {
            return false;
        }
    }
    scheduleRetry(code, reason, delay) {
        if (this.stopped)
            return;
        this.clearRetry();
        let wait = delay;
        if (wait === undefined) {
            const cap = Math.min(this.maxDelay, this.firstDelay * 2 ** this.attempt);
            this.attempt += 1;
            wait = Math.round(cap * (0.5 + Math.random() * 0.5));
        }
        const offline = this.watchNetwork && globalThis.navigator?.onLine === false;
        // Offline, the `online` event brings us back; a slow retry in case it never comes.
        if (offline)
            wait = Math.max(wait, this.maxDelay);
        const status = { state: 'offline', retryAt: Date.now() + wait };
        if (code !== undefined)
            status.code = code;
        const why = offline ? 'network offline' : reason;
        if (why !== undefined)
            status.reason = why;
        this.setStatus(status);
        this.retryTimer = setTimeout(() => { void this.open(); }, wait);
    }
    clearRetry() {
        if (this.retryTimer)
            clearTimeout(this.retryTimer);
        this.retryTimer = null;
    }
    /** Gives up on the current socket now (a dead link may take minutes to report its close). */
    giveUp(reason) {
        const ws = this.ws;
        if (!ws)
            return;
        const welcomed = this.welcomed;
        this.ws = null;
        detach(ws);
        try {
            ws.close();
        }
        catch { /* already closed */ }
        void this.closed(1006, welcomed, this.token ?? '', reason).catch(() => { });
    }
    // === the watchdog ===
    armWatch(ms) {
        this.clearWatch();
        this.watchTimer = setTimeout(() => this.checkAlive(), Math.max(0, ms));
    }
    clearWatch() {
        if (this.watchTimer)
            clearTimeout(this.watchTimer);
        this.watchTimer = null;
    }
    /**
     * Any frame proves the link alive. A quiet one is pinged, and one that
     * does not answer in time is dead: a half-open TCP connection can
     * otherwise look open for many minutes.
     */
    checkAlive() {
        this.watchTimer = null;
        const ws = this.ws;
        if (!ws)
            return;
        const now = Date.now();
        if (!this.welcomed) {
            const left = this.openedAt + this.connectTimeoutMs - now;
            if (left <= 0)
                this.giveUp('no welcome in time');
            else
                this.armWatch(left);
            return;
        }
        if (this.awaitingPong) {
            this.giveUp('no answer to ping');
            return;
        }
        const quiet = now - this.lastHeard;
        if (quiet >= this.quietMs) {
            this.awaitingPong = true;
            this.send({ type: 'ping', id: `p${++this.pingId}` });
            this.armWatch(this.timeoutMs);
        }
        else {
            this.armWatch(this.quietMs - quiet);
        }
    }
    // === tokens ===
    /**
     * Asks for a fresh token `refreshBeforeMs` before the one in use expires,
     * in case the server's warning (`token_expiring`) does not come first.
     */
    scheduleRefresh() {
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
        const exp = this.token ? tokenExpiry(this.token) : null;
        if (exp === null)
            return;
        const wait = exp - this.refreshBeforeMs - Date.now();
        if (wait <= 0 || wait > 2 ** 31 - 1)
            return; // the server's 4001 will ask for one
        this.refreshTimer = setTimeout(() => { void this.refresh(); }, wait);
    }
    /**
     * Presents a fresh token from the provider on the open connection
     * (`refresh`); the server answers `refreshed`, or refuses it. Without a
     * new token from the provider the connection lasts until the old one
     * expires (4001), and the provider is asked again then.
     */
    async refresh() {
        if (this.refreshTimer)
            clearTimeout(this.refreshTimer);
        this.refreshTimer = null;
        if (this.refreshAsked || this.refreshing !== null)
            return;
        this.refreshAsked = true;
        let token;
        try {
            token = await this.provider({ reason: 'refresh', previous: this.token });
        }
        catch (e) {
            this.emit('error', providerError(e));
            return;
        }
        finally {
            this.refreshAsked = false;
        }
        if (this.stopped || token === this.token)
            return;
        if (this.send({ type: 'refresh', token }))
            this.refreshing = token;
        else
            this.nextToken = token; // no connection now: the next one takes it
    }
    onRefreshed(exp) {
        if (this.refreshing === null)
            return;
        this.token = this.refreshing;
        this.refreshing = null;
        this.scheduleRefresh();
        this.emit('refreshed', { exp: exp * 1000 });
    }
    /**
     * The server refused the token of a refresh (`unauthorized`: reported as
     * an UnauthorizedError, and a new connection with a fresh token from the
     * provider follows), or does not know the frame (`bad_request`: a server
     * older than refresh; the token goes on a new connection).
     */
    onRefreshRefused(code, message) {
        const token = this.refreshing;
        this.refreshing = null;
        if (token === null)
            return;
        if (code === 'bad_request') {
            this.renew(token);
            return;
        }
        this.emit('error', new UnauthorizedError(message));
        this.refusedToken = token;
        this.nextReason = 'refused';
        this.reconnect();
    }
    /** Presents `token` on a new connection. */
    renew(token) {
        this.nextToken = token;
        this.reconnect();
    }
    /** Replaces the connection now: the next one gets `nextToken`, or asks the provider. */
    reconnect() {
        this.refreshing = null;
        const ws = this.ws;
        if (!ws)
            return; // the next connection takes it
        this.ws = null;
        detach(ws);
        try {
            ws.close(1000, 'token refresh');
        }
        catch { /* already closed */ }
        this.clearWatch();
        for (const room of this.rooms.values())
            room.disconnected();
        this.clearRetry();
        void this.open();
    }
}
function detach(ws) {
    ws.onopen = null;
    ws.onmessage = null;
    ws.onclose = null;
    ws.onerror = () => { };
}
/** A token's `exp` in ms since the epoch, read without checking it (the server does); null if none. */
export function tokenExpiry(token) {
    const claims = tokenClaims(token);
    return claims && typeof claims.exp === 'number' ? claims.exp * 1000 : null;
}
/** A JWT's claims, read without checking its signature; null if it is not a JWT. */
export function tokenClaims(token) {
    try {
        const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
        const padded = part + '='.repeat((4 - (part.length % 4)) % 4);
        const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
        const claims = JSON.parse(new TextDecoder().decode(bytes));
        return claims && typeof claims === 'object' ? claims : null;
    }
    catch {
        return null;
    }
}
/** What a token provider that threw is reported as: its own typed error, or a network error. */
function providerError(e) {
    return e instanceof CollabError ? e : new NetworkError(`the token provider failed: ${String(e)}`);
}
function statusCode(status) {
    const codes = {
        400: 'bad_request', 401: 'unauthorized', 403: 'forbidden', 404: 'not_found', 409: 'conflict',
        413: 'too_large', 429: 'rate_limited', 500: 'internal', 503: 'unavailable',
    };
    return codes[status] ?? (status >= 500 ? 'unavailable' : 'bad_request');
}
