// The page's own HTTP calls: dev tokens and the admin endpoints (rooms and
// history go through the SDK). Every failure becomes an ApiError with the
// protocol's error code ("network" when the server could not be reached),
// so callers can word it with describeError.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message || code);
    this.status = status;
    this.code = code;
  }
}

async function request(path, { token, method = 'GET', body } = {}) {
  // Same-origin paths only (the page's policy): cookies go with them.
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (e) {
    throw new ApiError(0, 'network', String(e));
  }
  let json = null;
  try { json = await response.json(); } catch { /* not JSON: handled below */ }
  if (!response.ok) {
    const error = json && json.error;
    throw new ApiError(response.status, (error && error.code) || `http_${response.status}`,
      (error && error.message) || response.statusText);
  }
  return json;
}

/**
 * A dev-mode token for `user` with display `name` (and the space-separated
 * `scope`, e.g. "admin"), or null when the server has a real secret (the
 * endpoint is then 404 and tokens come from elsewhere).
 */
export async function devToken(user, name, scope) {
  try {
    const answer = await request('/v1/dev/token', { method: 'POST', body: { user, name, scope } });
    return answer.token;
  } catch (e) {
    if (e.status === 404) return null;
    throw e;
  }
}

/**
 * A new token from the app's refresh URL (a path on this origin, given
 * with the link): a POST with the browser's cookies, answered `{"token"}`.
 */
export async function refreshedToken(url) {
  const answer = await request(url, { method: 'POST' });
  if (!answer || typeof answer.token !== 'string') throw new ApiError(200, 'bad_answer', 'the refresh URL answered no token');
  return answer.token;
}

/** The cluster's members and what each holds (admin scope). */
export function adminCluster(token) {
  return request('/v1/admin/cluster', { token });
}

/** A room as its owner sees it: owner, term, head, members, mailbox (admin scope). */
export function adminRoom(token, id) {
  return request(`/v1/admin/rooms/${encodeURIComponent(id)}`, { token });
}

/** "write", "read" or null: what `claims` allow in `room`. */
export function accessIn(claims, room) {
  if (!claims || !claims.rooms) return 'write';
  const grant = claims.rooms[room] ?? claims.rooms['*'];
  return grant === 'write' || grant === 'read' ? grant : null;
}
