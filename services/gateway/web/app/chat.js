// The chat panel: messages of the room by seq, older ones fetched from the
// history endpoint when the reader scrolls up, and the reader's own
// messages shown as "sending…" until the server has them.

import { describeError } from './words.js';
import { el, formatTime, notify } from './ui.js';

/** Code points in one message, at most (the server's default limit). */
const MAX_TEXT = 4000;
const PAGE = 50;

export class Chat {
  /**
   * @param {object} o
   * @param {import('./sdk/index.js').Room} o.room
   * @param {import('./names.js').Names} o.names
   * @param {string} o.me  my user id
   * @param {boolean} o.readOnly
   */
  constructor(o) {
    this.room = o.room;
    this.names = o.names;
    this.me = o.me;
    this.log = document.getElementById('chat-log');
    this.list = document.getElementById('chat-messages');
    this.olderButton = document.getElementById('chat-older');
    this.form = document.getElementById('chat-form');
    this.input = document.getElementById('chat-input');
    this.nodes = new Map(); // key -> <li>
    this.loading = false;
    this.listeners = [];
    this.on(this.form, 'submit', (e) => {
      e.preventDefault();
      this.send();
    });
    this.on(this.input, 'keydown', (e) => {
      // Enter sends, Shift+Enter starts a new line (as in most chat apps).
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        this.send();
      }
    });
    this.on(this.olderButton, 'click', () => this.loadOlder());
    this.on(this.log, 'scroll', () => {
      if (this.log.scrollTop < 40 && this.room.hasOlderMessages) this.loadOlder();
    });
    this.input.disabled = o.readOnly;
    this.form.querySelector('button').disabled = o.readOnly;
    this.input.placeholder = o.readOnly ? 'You can read this room but not write in it' : 'Write a message';
    this.list.replaceChildren();
    this.render();
  }

  destroy() {
    for (const [target, type, fn] of this.listeners) target.removeEventListener(type, fn);
    this.list.replaceChildren();
  }

  on(target, type, fn) {
    target.addEventListener(type, fn);
    this.listeners.push([target, type, fn]);
  }

  send() {
    const text = this.input.value.trim();
    if (!text) return;
    if ([...text].length > MAX_TEXT) {
      notify(`Messages can be at most ${MAX_TEXT.toLocaleString()} characters long.`, 'error');
      return;
    }
    this.room.say(text);
    this.input.value = '';
    this.stickToBottom = true;
  }

  async loadOlder() {
    if (this.loading || !this.room.hasOlderMessages) return;
    this.loading = true;
    this.olderButton.textContent = 'Loading…';
    try {
      const keepScroll = this.log.scrollHeight - this.log.scrollTop;
      if (await this.room.loadOlderMessages(PAGE) > 0) this.keepScroll = keepScroll;
    } catch (e) {
      notify(`Older messages could not be loaded. ${describeError(e.code, e.message)}`, 'error');
    } finally {
      this.loading = false;
      this.olderButton.textContent = 'Load older messages';
      this.render();
    }
  }

  /** Brings the list in line with the room's messages, reusing nodes. */
  render() {
    const nearBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 60;
    const { sent, sending } = this.room.messages();
    const wanted = [
      ...sent.map((m) => [`s${m.seq}`, m]),
      ...sending.map((m) => [`c${m.cid}`, m]),
    ];
    const keys = new Set(wanted.map(([k]) => k));
    for (const [key, node] of this.nodes) {
      if (!keys.has(key)) {
        node.remove();
        this.nodes.delete(key);
      }
    }
    let previous = null;
    for (const [key, m] of wanted) {
      let node = this.nodes.get(key);
      if (!node) {
        node = this.messageNode(m);
        this.nodes.set(key, node);
      } else {
        this.refreshName(node, m);
      }
      const expected = previous ? previous.nextSibling : this.list.firstChild;
      if (node !== expected) this.list.insertBefore(node, expected);
      previous = node;
    }
    this.olderButton.hidden = !this.room.hasOlderMessages;
    document.getElementById('chat-empty').hidden = wanted.length > 0;
    if (this.keepScroll !== undefined) {
      // Older messages went in above: keep what the reader was looking at.
      this.log.scrollTop = this.log.scrollHeight - this.keepScroll;
      this.keepScroll = undefined;
    } else if (nearBottom || this.stickToBottom) {
      this.log.scrollTop = this.log.scrollHeight;
      this.stickToBottom = false;
    }
  }

  messageNode(m) {
    const mine = m.pending || m.user === this.me;
    const time = m.pending
      ? el('span', { class: 'chat-time', text: 'sending…' })
      : el('time', { class: 'chat-time', datetime: new Date(m.ts).toISOString(), title: new Date(m.ts).toLocaleString(), text: formatTime(m.ts) });
    const name = el('span', { class: 'chat-name' });
    const node = el('li', { class: `chat-message${mine ? ' mine' : ''}${m.pending ? ' pending' : ''}`, dataset: { user: m.pending ? this.me : m.user } },
      el('div', { class: 'chat-meta' }, name, ' ', time),
      el('p', { class: 'chat-text', text: m.op.text }));
    this.refreshName(node, m);
    return node;
  }

  /** Names can arrive after the message (a presence event), so they are refreshed. */
  refreshName(node, m) {
    const user = m.pending ? this.me : m.user;
    const mine = user === this.me;
    const label = mine ? `${this.names.nameOf(user)} (you)` : this.names.nameOf(user);
    const name = node.querySelector('.chat-name');
    if (name.textContent !== label) name.textContent = label;
    const color = this.room.presence.get(user)?.color;
    if (color) name.style.setProperty('--user-color', color);
  }
}
