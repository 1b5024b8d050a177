// The page: the lobby, and the room screen it opens.
//
// Where things live: the room code is in the URL's query (`/?room=CODE`) so
// a link can be shared; a token handed over in a link comes in the fragment
// (`#token=…`, never sent to a server or kept in history: we move it to
// sessionStorage and strip it); in dev mode the page asks the server for a
// token in the name the person typed, with a user id kept in localStorage.
//
// Tokens are refreshed on the open connection when the server says the one
// in use expires soon, without a word: in dev mode from the dev token
// endpoint; with a given token, from the refresh URL the link named
// (`#token=…&refresh=/path`, a path on this origin that answers a POST
// with `{"token"}`); without one, or when it fails, the page asks the
// person to paste a new token.

import { ApiError, accessIn, devToken, refreshedToken } from './api.js';
import { Board } from './board.js';
import { Chat } from './chat.js';
import { Names } from './names.js';
import { CollabClient, CollabError, IndexedDbStorage, MemoryStorage, tokenClaims } from './sdk/index.js';
import { $, el, notify, randomId, store } from './ui.js';
import { describeClose, describeDrop, describeError } from './words.js';

const ROOM_CODE = /^[A-Za-z0-9_-]{1,64}$/;
const RECENT_MAX = 8;

const app = {
  token: null,      // the token in use
  dev: null,        // true: tokens come from /v1/dev/token; false: from the person
  client: null,     // the SDK's client: the connection, its rooms and outboxes
  room: null,       // the SDK's room on screen
  names: new Names(),
  board: null,
  chat: null,
  authFailures: 0,
  conn: null,       // the connection's id, from its welcome
  refreshes: 0,     // tokens replaced on open connections
  statusTimer: null,
};

// === identity and tokens ===

/**
 * This browser's user id in dev mode, made once from the first name used
 * ("ann-k3x9p2"): people who have left a room are known only by their id,
 * so a readable one helps. Kept across reloads, so undo/redo stays yours.
 */
function userId() {
  let id = store.get('localStorage', 'collab.user');
  if (!id) {
    const slug = displayName().toLowerCase().normalize('NFKD').replace(/[^a-z0-9]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 24);
    id = `${slug || 'user'}-${randomId(6)}`;
    store.set('localStorage', 'collab.user', id);
  }
  return id;
}

function displayName() {
  return ($('#name-input').value || '').trim();
}

/**
 * A token from the URL fragment (`#token=…`), and the URL to refresh it
 * from (`&refresh=…`, only on this origin: the page may connect nowhere
 * else), moved out of the address bar.
 */
function takeFragmentToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (!token) return;
  store.set('sessionStorage', 'collab.token', token);
  const refresh = params.get('refresh');
  let url = null;
  try {
    url = refresh ? new URL(refresh, location.origin) : null;
  } catch { /* not a URL: no refresh URL */ }
  store.set('sessionStorage', 'collab.refresh', url && url.origin === location.origin ? url.pathname + url.search : null);
  history.replaceState(history.state, '', location.pathname + location.search);
}

/**
 * Whether `token` is still good to connect with. A few seconds are
 * enough: one about to expire is refreshed on the open connection.
 */
function fresh(token) {
  const claims = tokenClaims(token);
  return !!claims && typeof claims.exp === 'number' && claims.exp * 1000 > Date.now() + 5_000;
}

function newDevToken() {
  return devToken(userId(), store.get('localStorage', 'collab.name') || userId());
}

/**
 * The token to use: a given one (fragment or the token field) if there is
 * one, otherwise a dev token for the typed name. Throws an Error whose
 * message is for the person when there is none.
 */
async function ensureToken() {
  const given = ($('#token-input').value || '').trim() || store.get('sessionStorage', 'collab.token');
  if (given) {
    if (!tokenClaims(given)) throw new Error('That access token is not valid: it should be three parts separated by dots.');
    store.set('sessionStorage', 'collab.token', given);
    app.dev = false;
    app.token = given;
    return given;
  }
  const name = displayName();
  if (!name) {
    $('#name-input').focus();
    throw new Error('Choose a display name first.');
  }
  store.set('localStorage', 'collab.name', name);
  const claims = app.token && tokenClaims(app.token);
  if (app.dev && claims && claims.name === name && fresh(app.token)) return app.token;
  const token = await devToken(userId(), name);
  if (token === null) {
    app.dev = false;
    showTokenField(true);
    $('#token-input').focus();
    throw new Error('This server needs an access token. Paste the one you were given, or open the link that contains it.');
  }
  app.dev = true;
  app.token = token;
  return token;
}

/** With a real secret the name comes from the token: the token field replaces the name. */
function showTokenField(show) {
  $('#token-field').hidden = !show;
  $('#name-field').hidden = show;
}

// === lobby ===

function showLobby(message, code) {
  $('#lobby').hidden = false;
  $('#room').hidden = true;
  $('#room-header').hidden = true;
  document.title = 'collab';
  renderStatus();
  const error = $('#lobby-error');
  error.textContent = message || '';
  error.hidden = !message;
  if (code) $('#join-code').value = code;
  renderRecent();
  if (!$('#token-field').hidden) {
    if (!$('#token-input').value) $('#token-input').focus();
    else if (code) $('#join-button').focus();
  } else if (!displayName()) $('#name-input').focus();
  else if (code) $('#join-button').focus();
}

function lobbyError(e) {
  const message = e instanceof ApiError || e instanceof CollabError ? describeError(e.code, e.message) : e.message;
  const error = $('#lobby-error');
  error.textContent = message;
  error.hidden = false;
}

/** A room code from what was typed: a code, or a link with `?room=`. */
function parseCode(text) {
  const t = text.trim();
  try {
    const url = new URL(t);
    const room = url.searchParams.get('room');
    if (room) return room;
  } catch { /* not a link */ }
  return t;
}

async function create(kind) {
  const busy = lobbyBusy();
  try {
    const token = await ensureToken();
    const name = $('#room-name').value.trim();
    const body = { kind };
    if (name) body.name = name;
    const info = await http(token).createRoom(body);
    await enterRoom(info.id, { push: true, info });
  } catch (e) {
    lobbyError(e);
  } finally {
    busy();
  }
}

async function join() {
  const code = parseCode($('#join-code').value);
  if (!ROOM_CODE.test(code)) {
    lobbyError(new Error('Room codes are letters, digits, "-" and "_" (up to 64), like "k3x9p2qa".'));
    $('#join-code').focus();
    return;
  }
  const busy = lobbyBusy();
  try {
    await enterRoom(code, { push: true });
  } catch (e) {
    lobbyError(e);
  } finally {
    busy();
  }
}

/** Disables the lobby's buttons while a request runs; returns the undo. */
function lobbyBusy() {
  const buttons = [...document.querySelectorAll('#lobby button')];
  for (const b of buttons) b.disabled = true;
  $('#lobby-error').hidden = true;
  return () => { for (const b of buttons) b.disabled = false; };
}

function recentRooms() {
  try { return JSON.parse(store.get('localStorage', 'collab.recent') || '[]'); } catch { return []; }
}

function remember(info) {
  const list = recentRooms().filter((r) => r.id !== info.id);
  list.unshift({ id: info.id, kind: info.kind, name: info.name || '' });
  store.set('localStorage', 'collab.recent', JSON.stringify(list.slice(0, RECENT_MAX)));
}

function renderRecent() {
  const list = recentRooms();
  $('#recent').hidden = list.length === 0;
  $('#recent-list').replaceChildren(...list.map((r) => el('li', {},
    el('a', { href: `/?room=${encodeURIComponent(r.id)}` }, r.name || r.id),
    ' ', el('span', { class: 'muted', text: `${r.kind === 'channel' ? 'channel' : 'board'} · ${r.id}` }))));
}

// === the room screen ===

async function enterRoom(code, { push = false, info = null } = {}) {
  const token = await ensureToken();
  const claims = tokenClaims(token);
  const access = accessIn(claims, code);
  if (!access) throw new Error(`Your access token does not cover the room "${code}".`);
  // Learn the room's kind and name first: a wrong code is said in the
  // lobby, before any drawing surface appears.
  const room = info || await http(token).getRoom(code);
  if (push) history.pushState({ room: code }, '', `/?room=${encodeURIComponent(code)}`);
  remember(room);
  closeRoom();
  openRoom(room, claims, access === 'read');
}

function openRoom(info, claims, readOnly) {
  const me = claims.sub;
  app.names.remember({ id: me, name: claims.name || claims.sub });
  const isBoard = info.kind === 'board';
  $('#lobby').hidden = true;
  $('#room').hidden = false;
  $('#room-header').hidden = false;
  $('#room').classList.toggle('channel', !isBoard);
  $('#board-area').hidden = !isBoard;
  const named = info.name && info.name !== info.id;
  $('#room-title').textContent = named ? info.name : (isBoard ? 'Untitled board' : 'Untitled channel');
  $('#room-kind').textContent = isBoard ? 'Board' : 'Channel';
  $('#room-code').textContent = info.id;
  $('#read-only').hidden = !readOnly;
  document.title = `${named ? info.name : info.id} · collab`;

  // The SDK keeps the connection, resumes the room after any drop and
  // keeps unsent ops in IndexedDB, so a reload or a crash loses none.
  const client = new CollabClient({
    url: location.origin,
    token: (request) => provideToken(request),
    storage: typeof indexedDB === 'undefined' ? new MemoryStorage() : new IndexedDbStorage(),
  });
  app.client = client;
  client.on('status', () => renderStatus());
  client.on('welcome', ({ user, conn }) => {
    app.authFailures = 0;
    app.conn = conn;
    app.names.remember(user);
  });
  client.on('error', (e) => notify(describeError(e.code, e.message), 'error'));
  client.on('refreshed', () => { app.refreshes += 1; });

  const room = client.room(info.id);
  app.room = room;
  room.on('status', () => renderStatus());
  room.on('joined', () => {
    for (const user of room.presence.values()) app.names.remember(user);
    for (const what of ['board', 'chat', 'presence', 'cursors', 'status']) changed(what);
  });
  room.on('op', (f) => changed(f.op.kind === 'message' ? 'chat' : 'board'));
  room.on('presence', (f) => {
    if (f.event === 'join') app.names.remember(f.user);
    changed('presence');
  });
  room.on('cursor', () => changed('cursors'));
  room.on('cursor_leave', () => changed('cursors'));
  room.on('outbox', () => {
    changed('board');
    changed('chat');
    changed('status');
  });
  room.on('error', (e) => roomError(e));
  room.on('deleted', () => {
    closeRoom();
    history.pushState({}, '', '/');
    showLobby('This room was deleted, with its history.');
  });
  app.board = isBoard ? new Board({ room, names: app.names, me, readOnly }) : null;
  app.chat = new Chat({ room, names: app.names, me, readOnly });
  exposeForTests();
  renderStatus();
  if (isBoard) $('#board').focus({ preventScroll: true });
  else $('#chat-input').focus();
}

/** An SDK client for the HTTP API alone (the lobby has no room yet). */
function http(token) {
  return new CollabClient({ url: location.origin, token });
}

/**
 * The SDK's token provider: the token in use, unless the server refused it
 * or it expired. Dev tokens are free, so then a new one is fetched (three
 * times at most in a row); otherwise the person is sent to the lobby.
 */
async function provideToken({ reason }) {
  if (reason === 'refresh') return refreshToken();
  if (reason === 'connect') {
    if (app.dev && !fresh(app.token)) app.token = await newDevToken();
    return app.token;
  }
  app.authFailures += 1;
  if (app.dev && app.authFailures <= 3) {
    const token = await devToken(userId(), store.get('localStorage', 'collab.name') || userId()).catch(() => null);
    if (token) {
      app.token = token;
      return token;
    }
  }
  authFailed(reason);
  throw new Error('no valid token');
}

/**
 * A new token for the open connection, the one in use expiring soon: a
 * dev token, or one from the refresh URL, without a word; otherwise the
 * person is asked for one (the connection stays up meanwhile, until the
 * old token expires).
 */
async function refreshToken() {
  if (app.dev) {
    app.token = await newDevToken();
    return app.token;
  }
  const url = store.get('sessionStorage', 'collab.refresh');
  if (url) {
    try {
      return keepToken(await refreshedToken(url));
    } catch (e) {
      notify(`Your access token could not be renewed (${e.message}).`, 'error');
    }
  }
  return keepToken(await askForToken());
}

function keepToken(token) {
  app.token = token;
  store.set('sessionStorage', 'collab.token', token);
  return token;
}

/** Asks the person to paste a new token, in a notice that stays until they do or leave the room. */
function askForToken() {
  return new Promise((resolve) => {
    $('#token-ask')?.remove();
    const input = el('input', { id: 'token-ask-input', autocomplete: 'off', spellcheck: 'false' });
    const form = el('form', { id: 'token-ask', class: 'notice notice-error token-ask' },
      el('label', { for: 'token-ask-input', text: 'Your access token expires soon. Paste a new one to stay connected:' }),
      input,
      el('button', { type: 'submit' }, 'Use it'));
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!tokenClaims(token)) {
        input.setCustomValidity('That is not an access token: it should be three parts separated by dots.');
        input.reportValidity();
        return;
      }
      form.remove();
      resolve(token);
    });
    input.addEventListener('input', () => input.setCustomValidity(''));
    $('#notices').append(form);
  });
}

function closeRoom() {
  $('#token-ask')?.remove();
  if (!app.room) return;
  app.client?.close();
  app.board?.destroy();
  app.chat?.destroy();
  app.room = app.board = app.chat = app.client = app.conn = null;
  $('#presence-list').replaceChildren();
}

function roomError(e) {
  const code = e.code;
  if (!e.cid && (code === 'not_found' || code === 'forbidden')) {
    const text = code === 'not_found' ? describeError(code) : 'You are not allowed into this room.';
    closeRoom();
    history.pushState({}, '', '/');
    showLobby(text);
    return;
  }
  notify(describeError(code, e.message), code === 'rate_limited' || code.startsWith('nothing_to') ? 'info' : 'error');
}

function authFailed(reason) {
  const code = app.room && app.room.id;
  store.set('sessionStorage', 'collab.token', null);
  $('#token-input').value = '';
  closeRoom();
  showTokenField(!app.dev);
  showLobby(reason === 'expired'
    ? `${describeClose(4001)} Get a new one and join again; nothing you drew is lost.`
    : 'The server did not accept your access token. Paste a valid one and join again; nothing you drew is lost.', code);
}

// === what changes on screen ===

let pending = new Set();
let frame = 0;

/** Room changes are many and small: redraw each part at most once a frame. */
function changed(what) {
  if (what === 'board' || what === 'cursors') {
    app.board?.scheduleFrame();
    return;
  }
  pending.add(what);
  if (frame) return;
  frame = requestAnimationFrame(() => {
    frame = 0;
    const parts = pending;
    pending = new Set();
    if (!app.room) return;
    if (parts.has('chat')) app.chat?.render();
    if (parts.has('presence') || parts.has('joined')) renderPresence();
    if (parts.has('status')) renderStatus();
  });
}

function renderPresence() {
  const room = app.room;
  const people = [...room.presence.values()].sort((a, b) => a.name.localeCompare(b.name));
  $('#presence-count').textContent = String(people.length);
  $('#presence-list').replaceChildren(...people.map((u) => {
    const dot = el('span', { class: 'dot', 'aria-hidden': 'true' });
    dot.style.setProperty('--user-color', u.color);
    return el('li', { dataset: { user: u.id } }, dot, u.id === room.me?.id ? `${u.name} (you)` : u.name);
  }));
  app.chat?.render(); // names in the chat may have become known
}

/** The status line: the connection and the room as the SDK reports them, and what waits to be sent. */
function renderStatus() {
  const node = $('#status');
  const s = app.client ? app.client.status : { state: 'idle' };
  const unsaved = app.room ? app.room.unsaved : 0;
  const changes = unsaved === 1 ? '1 change' : `${unsaved} changes`;
  let text;
  let state;
  clearTimeout(app.statusTimer);
  switch (s.state) {
    case 'connected':
      if (app.room && !app.room.joined) {
        state = 'joining';
        text = 'Joining…';
      } else {
        state = 'online';
        text = unsaved > 0 ? `Connected · saving ${changes}…` : 'Connected';
      }
      break;
    case 'connecting':
      state = 'connecting';
      text = 'Connecting…';
      break;
    case 'offline': {
      state = 'offline';
      const secs = Math.max(0, Math.ceil((s.retryAt - Date.now()) / 1000));
      text = `${describeDrop(s.code, s.reason)} Reconnecting${secs > 0 ? ` in ${secs} s` : '…'}`;
      if (unsaved > 0) text += ` · ${changes} waiting to be sent`;
      if (secs > 0) app.statusTimer = setTimeout(renderStatus, 1000);
      break;
    }
    default:
      state = 'idle';
      text = '';
  }
  node.dataset.state = state;
  node.dataset.unsaved = String(unsaved);
  if (node.textContent !== text) node.textContent = text;
}

/** A read-only view of the page's state for the browser tests and for debugging. */
function exposeForTests() {
  window.collab = {
    get room() { return app.room && app.room.id; },
    get lastSeq() { return app.room ? app.room.lastSeq : null; },
    get unsaved() { return app.room ? app.room.unsaved : 0; },
    /** The connection's id from its `welcome`: a new one after every reconnect. */
    get conn() { return app.conn; },
    /** Tokens replaced on the open connection so far. */
    get refreshes() { return app.refreshes; },
    strokeIds() { return app.room ? app.room.strokes().map((s) => s.id) : []; },
    /** Ends the connection as a network drop would; the page reconnects by itself. */
    dropConnection() { app.client?.dropConnection(); },
  };
}

// === start ===

function route() {
  const code = new URLSearchParams(location.search).get('room');
  if (!code) {
    closeRoom();
    showLobby();
    return;
  }
  if (app.room && app.room.id === code) return;
  const haveName = displayName() || store.get('sessionStorage', 'collab.token');
  if (!haveName || !ROOM_CODE.test(code)) {
    closeRoom();
    showLobby(ROOM_CODE.test(code) ? '' : `"${code}" is not a room code.`, code);
    return;
  }
  enterRoom(code).catch((e) => {
    closeRoom();
    showLobby();
    lobbyError(e);
    $('#join-code').value = code;
  });
}

function start() {
  takeFragmentToken();
  $('#name-input').value = store.get('localStorage', 'collab.name') || '';
  const given = store.get('sessionStorage', 'collab.token');
  $('#token-input').value = given || '';
  showTokenField(!!given);
  $('#create-board').addEventListener('click', () => create('board'));
  $('#create-channel').addEventListener('click', () => create('channel'));
  $('#join-form').addEventListener('submit', (e) => {
    e.preventDefault();
    join();
  });
  $('#profile-form').addEventListener('submit', (e) => e.preventDefault());
  $('#leave-button').addEventListener('click', () => {
    closeRoom();
    history.pushState({}, '', '/');
    showLobby();
  });
  $('#copy-link').addEventListener('click', copyLink);
  window.addEventListener('popstate', route);
  // Ops still in the outbox survive a reload or a crash (the SDK keeps them
  // in IndexedDB), but are sent only when this room is opened again: ask
  // before the tab closes with some unsent.
  window.addEventListener('beforeunload', (e) => {
    if (app.room && app.room.unsaved > 0) e.preventDefault();
  });
  route();
}

async function copyLink() {
  const link = `${location.origin}/?room=${encodeURIComponent(app.room.id)}`;
  try {
    await navigator.clipboard.writeText(link);
    notify('Link copied. Anyone with it (and access to this server) can join.');
  } catch {
    // No clipboard (plain http on another host, or denied): show it instead.
    notify(`Share this link: ${link}`);
  }
}

start();
