// A small typed event emitter: `on(name, fn)` returns the function that
// removes the listener. A listener that throws does not stop the others
// (or the client): the error is reported to the console.
export class Emitter {
    listeners = new Map();
    /** Calls `fn` with every `event`; returns the function that stops it. */
    on(event, fn) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(fn);
        return () => this.off(event, fn);
    }
    off(event, fn) {
        this.listeners.get(event)?.delete(fn);
    }
    emit(event, payload) {
        const set = this.listeners.get(event);
        if (!set)
            return;
        for (const fn of [...set]) {
            try {
                fn(payload);
            }
            catch (e) {
                console.error(`collab: a "${String(event)}" listener threw`, e);
            }
        }
    }
}
