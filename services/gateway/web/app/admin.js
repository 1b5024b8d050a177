// The admin page at /admin: the cluster's members with the rooms and
// connections each holds, and a room looked up by its code (owner, term,
// head, members and their gateways, mailbox, last commit). Both refresh
// every 2 seconds. It needs a token with the admin scope: pasted, given in
// the link's fragment (`#token=…`, moved out of the address bar at once),
// or, on a dev-mode server, fetched from /v1/dev/token.

import { ApiError, adminCluster, adminRoom, devToken } from './api.js';
import { $, el, store } from './ui.js';

const REFRESH_MS = 2000;
const TOKEN_KEY = 'collab.admin-token';

const admin = {
  token: null,
  room: null,     // the room code looked up, refreshed with the members
  timer: null,
  running: false, // a refresh is under way: never two at once…
  again: false,   // …but one asked for meanwhile runs right after it
};

// === token ===

/** The token from the URL fragment (`#token=…`), moved out of the address bar. */
function takeTokenFromFragment() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (!token) return null;
  history.replaceState(null, '', location.pathname + location.search);
  return token;
}

function useToken(token) {
  admin.token = token;
  store.set('sessionStorage', TOKEN_KEY, token);
  $('#admin-token').value = token;
  showError(null);
  $('#cluster').hidden = false;
  $('#lookup').hidden = false;
  schedule(0);
}

async function fetchDevToken() {
  try {
    const token = await devToken('admin', 'Admin', 'admin');
    if (token === null) {
      showError('This server is not in dev mode: mint a token with `collab token --user you --admin` and paste it.');
      return;
    }
    useToken(token);
  } catch (e) {
    showError(describe(e));
  }
}

// === refreshing ===

function schedule(delay) {
  clearTimeout(admin.timer);
  admin.timer = setTimeout(refresh, delay);
}

async function refresh() {
  if (!admin.token) return;
  if (admin.running) {
    admin.again = true;
    return;
  }
  admin.running = true;
  try {
    renderCluster(await adminCluster(admin.token));
    if (admin.room) await refreshRoom();
    setStatus('online', 'Live');
    schedule(REFRESH_MS);
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
      // Asking again will not help: wait for another token.
      setStatus('offline', 'Stopped');
      showError(describe(e));
    } else {
      setStatus('offline', 'Offline');
      schedule(REFRESH_MS);
    }
  } finally {
    admin.running = false;
    if (admin.again) {
      admin.again = false;
      schedule(0);
    }
  }
}

async function refreshRoom() {
  const id = admin.room;
  try {
    const room = await adminRoom(admin.token, id);
    if (admin.room === id) renderRoom(room);
  } catch (e) {
    if (!(e instanceof ApiError) || e.status === 401 || e.status === 403 || e.code === 'network') throw e;
    if (admin.room !== id) return;
    $('#room-view').hidden = true;
    showError(e.status === 404 ? `There is no room ${id}.` : describe(e));
  }
}

// === rendering ===

function renderCluster(cluster) {
  $('#cluster-mode').textContent = cluster.mode === 'serve' ? '(collab serve)' : '(cluster)';
  const rows = cluster.members.map((m) => el('tr', { dataset: { node: m.node, role: m.role } },
    el('th', { scope: 'row', text: m.node }),
    el('td', { text: m.role === 'room_node' ? 'room node' : 'gateway' }),
    el('td', {}, el('code', { text: m.instance })),
    el('td', { class: 'num', dataset: { field: 'rooms' }, text: figure(m.rooms) }),
    el('td', { class: 'num', dataset: { field: 'connections' }, text: figure(m.connections) })));
  $('#members tbody').replaceChildren(...rows);
  $('#cluster-updated').textContent = new Date().toLocaleTimeString();
}

function renderRoom(room) {
  $('#room-view').hidden = false;
  $('#room-name').textContent = `${room.name} (${room.kind}, ${room.id})`;
  $('#room-live').textContent = room.live ? 'yes' : 'no (nobody has used it lately)';
  $('#room-owner').textContent = room.owner ? room.owner.node : 'none (no room node serves it now)';
  $('#room-term').textContent = room.owner && room.owner.term !== null ? String(room.owner.term) : '—';
  $('#room-head').textContent = String(room.head);
  $('#room-last-commit').textContent = room.last_commit
    ? `seq ${room.last_commit.seq} at ${new Date(room.last_commit.at).toLocaleString()}`
    : 'none yet';
  $('#room-mailbox').textContent = `${room.mailbox_depth} waiting`;
  $('#room-epoch').textContent = room.epoch;
  $('#room-member-count').textContent = `(${room.members.length})`;
  const rows = room.members.map((m) => el('tr', { dataset: { user: m.user } },
    el('th', { scope: 'row', text: m.user }),
    el('td', { text: m.name }),
    el('td', {}, el('code', { text: m.conn })),
    el('td', {}, el('code', { text: m.gateway }))));
  $('#room-members tbody').replaceChildren(...rows);
}

function figure(n) {
  return n === null || n === undefined ? '—' : String(n);
}

function setStatus(state, text) {
  const status = $('#status');
  status.dataset.state = state;
  status.textContent = text;
}

function showError(message) {
  const box = $('#admin-error');
  box.hidden = !message;
  box.textContent = message || '';
}

function describe(e) {
  if (!(e instanceof ApiError)) return String(e);
  if (e.status === 401) return 'The server does not accept this token: it is malformed, expired or signed with another secret.';
  if (e.status === 403) return 'This token does not have the admin scope (mint one with `collab token --admin`).';
  if (e.code === 'network') return 'The server cannot be reached.';
  if (e.code === 'bad_request') return `That is not a room code: ${e.message}`;
  return `${e.code}: ${e.message}`;
}

// === start ===

$('#token-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const token = $('#admin-token').value.trim();
  if (token) useToken(token);
  else showError('Paste a token first.');
});
$('#dev-token').addEventListener('click', fetchDevToken);
$('#room-form').addEventListener('submit', (event) => {
  event.preventDefault();
  const id = $('#room-id').value.trim();
  if (!id) return;
  admin.room = id;
  showError(null);
  const url = new URL(location.href);
  url.searchParams.set('room', id);
  history.replaceState(null, '', url);
  schedule(0);
});

const linked = new URLSearchParams(location.search).get('room');
if (linked) {
  admin.room = linked;
  $('#room-id').value = linked;
}
const token = takeTokenFromFragment() || store.get('sessionStorage', TOKEN_KEY);
if (token) useToken(token);
