// Server error codes in plain words. The protocol's `message` is written
// for developers; people see these sentences instead, and the raw message
// only where it adds something a person can act on.

const SENTENCES = {
  bad_request: 'The server did not accept that.',
  too_large: 'That is too large to send.',
  unauthorized: 'Your access token is missing, expired or not valid here.',
  forbidden: 'You do not have permission to do that in this room.',
  not_found: 'That room does not exist. Check the code and try again.',
  conflict: 'A room with that code already exists.',
  rate_limited: 'Slow down a little: the server is getting too many requests from you. Retrying shortly.',
  nothing_to_undo: 'Nothing to undo.',
  nothing_to_redo: 'Nothing to redo.',
  unavailable: 'The room is briefly unavailable. Retrying…',
  internal: 'Something went wrong on the server. Please try again.',
  network: 'The server cannot be reached. Check that it is running.',
};

/** A sentence for a protocol error `code` (with its `message` as a hint). */
export function describeError(code, message) {
  const sentence = SENTENCES[code];
  if (!sentence) return message || 'Something went wrong.';
  // For these, the server's message says which limit or field: worth showing.
  if ((code === 'bad_request' || code === 'too_large') && message) {
    return `${sentence} (${message})`;
  }
  return sentence;
}

/** What a WebSocket close code means for the person at the page. */
export function describeClose(code) {
  switch (code) {
    case 1001: return 'The server is restarting.';
    case 1009: return 'A message was too large for the server.';
    case 4001: return 'Your access token has expired.';
    case 4008: return 'The connection was too slow to keep up.';
    default: return 'The connection was lost.';
  }
}

/** Why the connection is down, from the SDK's status (`code`, `reason`). */
export function describeDrop(code, reason) {
  if (reason === 'network offline') return 'This device is offline.';
  if (reason === 'no answer to ping') return 'The server stopped answering.';
  return describeClose(code);
}
