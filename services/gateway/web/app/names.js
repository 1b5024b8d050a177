// Display names of the people this browser has met.
//
// Op frames carry only user ids; names come with presence and `welcome`.
// Names seen are kept (in localStorage too), so messages of people who
// have left still show a name where this browser ever saw one.

const NAMES_KEY = 'collab.names';
const NAMES_MAX = 500;

export class Names {
  constructor() {
    this.names = load(); // user id -> last known display name
  }

  /** Learns `user.name` for `user.id`. */
  remember(user) {
    if (this.names.get(user.id) === user.name) return;
    this.names.delete(user.id); // re-inserted last: the most recently learnt
    this.names.set(user.id, user.name);
    save(this.names);
  }

  nameOf(user) {
    return this.names.get(user) || user;
  }
}

function load() {
  try {
    const saved = JSON.parse(localStorage.getItem(NAMES_KEY) || '{}');
    return new Map(Object.entries(saved).filter(([, v]) => typeof v === 'string'));
  } catch {
    return new Map();
  }
}

function save(names) {
  // Most recently learnt last; the oldest are forgotten first.
  const entries = [...names].slice(-NAMES_MAX);
  try { localStorage.setItem(NAMES_KEY, JSON.stringify(Object.fromEntries(entries))); } catch { /* optional */ }
}
