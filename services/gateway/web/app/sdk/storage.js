// Where outboxes are kept between runs: in memory by default, in IndexedDB
// in a browser (so a reload, a crash of the tab or a closed laptop loses
// no edit), or anything an app provides (a file, SQLite…) in Node.
//
// Each client instance (one page load, one process run) owns its own
// outbox per user and room, saved under its `owner` id; two tabs never
// write over each other's. When an instance is gone — the tab was
// reloaded or closed, the process died — the next client of the same user
// that joins the room adopts what it left and sends it, with the original
// cids (the server applies a cid at most once). Storages that can tell
// whether an owner is still alive (`hold`/`whenGone`; the browser's Web
// Locks do it across tabs) make adoption wait for it; without them every
// other owner counts as gone, which is right for one process per storage.
/** Outboxes in memory: they live as long as this object (the default). */
export class MemoryStorage {
    saved = new Map();
    held = new Set();
    waiters = new Map();
    async save(owner, user, room, ops) {
        const key = JSON.stringify([user, room, owner]);
        if (ops.length === 0)
            this.saved.delete(key);
        else
            this.saved.set(key, { owner, user, room, ops: structuredClone(ops) });
    }
    async load(user, room) {
        return [...this.saved.values()]
            .filter((s) => s.user === user && s.room === room)
            .map((s) => ({ owner: s.owner, ops: structuredClone(s.ops) }));
    }
    hold(owner) {
        this.held.add(owner);
        return () => {
            this.held.delete(owner);
            for (const wake of this.waiters.get(owner) ?? [])
                wake();
            this.waiters.delete(owner);
        };
    }
    whenGone(owner, signal) {
        if (!this.held.has(owner))
            return Promise.resolve();
        return new Promise((resolve) => {
            let set = this.waiters.get(owner);
            if (!set) {
                set = new Set();
                this.waiters.set(owner, set);
            }
            const wake = () => resolve();
            set.add(wake);
            signal.addEventListener('abort', () => set.delete(wake), { once: true });
        });
    }
}
const DB_VERSION = 1;
const STORE = 'outboxes';
const LOCK_PREFIX = 'collab-outbox-owner:';
/**
 * Outboxes in the browser's IndexedDB (database `collab-outbox` unless
 * named), with each owner held alive by a Web Lock for as long as its page
 * lives: a reloaded or closed tab's lock is released by the browser, and
 * the next page of that user adopts its ops.
 */
export class IndexedDbStorage {
    name;
    db = null;
    constructor(name = 'collab-outbox') {
        this.name = name;
    }
    open() {
        if (!this.db) {
            this.db = new Promise((resolve, reject) => {
                const request = indexedDB.open(this.name, DB_VERSION);
                request.onupgradeneeded = () => {
                    request.result.createObjectStore(STORE, { keyPath: ['user', 'room', 'owner'] });
                };
                request.onsuccess = () => resolve(request.result);
                request.onerror = () => reject(request.error);
            });
        }
        return this.db;
    }
    async save(owner, user, room, ops) {
        const db = await this.open();
        await new Promise((resolve, reject) => {
            const tx = db.transaction(STORE, 'readwrite');
            const store = tx.objectStore(STORE);
            if (ops.length === 0)
                store.delete([user, room, owner]);
            else
                store.put({ user, room, owner, ops });
            tx.oncomplete = () => resolve();
            tx.onerror = () => reject(tx.error);
            tx.onabort = () => reject(tx.error);
        });
    }
    async load(user, room) {
        const db = await this.open();
        return new Promise((resolve, reject) => {
            const tx = db.transaction(STORE, 'readonly');
            // Owner ids are [a-z0-9]: this range holds every owner of the pair.
            const range = IDBKeyRange.bound([user, room, ''], [user, room, '\uffff']);
            const request = tx.objectStore(STORE).getAll(range);
            request.onsuccess = () => resolve(request.result.map((r) => ({ owner: r.owner, ops: r.ops })));
            request.onerror = () => reject(request.error);
        });
    }
    hold(owner) {
        let release = () => { };
        const held = new Promise((resolve) => { release = resolve; });
        if (typeof navigator !== 'undefined' && navigator.locks) {
            navigator.locks.request(LOCK_PREFIX + owner, () => held).catch(() => { });
        }
        return release;
    }
    whenGone(owner, signal) {
        if (typeof navigator === 'undefined' || !navigator.locks)
            return Promise.resolve();
        // Granted only once the owner's page has released it: gone.
        return new Promise((resolve) => {
            navigator.locks.request(LOCK_PREFIX + owner, { signal }, () => resolve())
                .catch(() => { });
        });
    }
}
