// Small DOM helpers shared by the views. No framework: the page is a few
// panels whose contents are rebuilt or patched by hand.

/**
 * Creates an element. `attrs` keys starting with "on" become listeners;
 * `class`, `text` and `dataset` are shorthands; everything else is an
 * attribute (false/null/undefined leave it out).
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      node.addEventListener(key.slice(2), value);
    } else if (key === 'class') {
      node.className = value;
    } else if (key === 'text') {
      node.textContent = value;
    } else if (key === 'dataset') {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);

/**
 * Shows a short notice in the live region (screen readers announce it).
 * Errors stay until dismissed or replaced by 8 newer notices; others fade
 * after a few seconds.
 */
export function notify(message, kind = 'info') {
  const region = $('#notices');
  if (!region) return;
  // The same sentence twice in a row (e.g. a retried op) is shown once.
  const last = region.lastElementChild;
  if (last && last.dataset.message === message) {
    last.dataset.count = String(Number(last.dataset.count || 1) + 1);
    return;
  }
  const close = el('button', { type: 'button', class: 'notice-close', 'aria-label': 'Dismiss notice' }, '×');
  const item = el('div', { class: `notice notice-${kind}`, dataset: { message }, role: kind === 'error' ? 'alert' : null },
    el('span', { text: message }), close);
  close.addEventListener('click', () => item.remove());
  region.append(item);
  while (region.children.length > 8) region.firstElementChild.remove();
  if (kind !== 'error') setTimeout(() => item.remove(), 5000);
}

/** "14:03" for today, "3 Mar 14:03" otherwise, in the reader's locale. */
export function formatTime(ms) {
  const date = new Date(ms);
  const now = new Date();
  const time = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  if (date.toDateString() === now.toDateString()) return time;
  return `${date.toLocaleDateString([], { day: 'numeric', month: 'short' })} ${time}`;
}

/** A short random string of [a-z0-9], for ids no one else will pick. */
export function randomId(length = 10) {
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join('');
}

/** Storage that never throws (private mode, full quota, disabled storage). */
export const store = {
  get(kind, key) {
    try { return window[kind].getItem(key); } catch { return null; }
  },
  set(kind, key, value) {
    try {
      if (value === null) window[kind].removeItem(key);
      else window[kind].setItem(key, value);
    } catch { /* the page works without storage; it only forgets more */ }
  },
};
