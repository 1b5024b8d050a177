// The whiteboard view: the canvas, pointer input, pan and zoom, other
// people's cursors, and the drawing toolbar.
//
// Everything is kept in world coordinates (what goes over the wire); the
// view only maps world to screen with a scale and an offset. Resizing the
// window or zooming therefore never moves a stroke relative to another, and
// every page agrees where a stroke is whatever its window size.

import { drawStrokes, exportPng, pruneCache } from './render.js';
import { MAX_POINTS } from './sdk/index.js';
import { el, notify } from './ui.js';

const MIN_SCALE = 0.1;
const MAX_SCALE = 8;
// Points closer than this (in screen pixels) to the previous one add
// nothing visible and only make ops bigger.
const MIN_POINT_DISTANCE_PX = 0.75;
// A finger's line starts once it moved this far or stayed this long, so the
// first finger of a two-finger pan or pinch draws nothing.
const TOUCH_SLOP_PX = 8;
const TOUCH_WAIT_MS = 150;

export const PALETTE = [
  ['Black', '#1f2328'],
  ['Blue', '#1f6feb'],
  ['Red', '#d1242f'],
  ['Green', '#1a7f37'],
  ['Orange', '#e16f24'],
  ['Purple', '#8250df'],
  ['Pink', '#e85aad'],
  ['Teal', '#0e8a8a'],
];

export class Board {
  /**
   * @param {object} o
   * @param {import('./sdk/index.js').Room} o.room
   * @param {import('./names.js').Names} o.names
   * @param {string} o.me  my user id
   * @param {boolean} o.readOnly  no drawing, only looking
   */
  constructor(o) {
    this.room = o.room;
    this.names = o.names;
    this.me = o.me;
    this.readOnly = o.readOnly;
    this.canvas = document.getElementById('board');
    this.ctx = this.canvas.getContext('2d');
    this.cursorLayer = document.getElementById('cursors');
    this.view = { scale: 1, tx: 0, ty: 0 };
    this.dpr = window.devicePixelRatio || 1;
    this.color = PALETTE[0][1];
    this.width = 4;
    this.drawing = null; // {pointerId, id, queued, last}
    this.panning = null; // {pointerId, x, y}
    this.touches = new Map(); // pointerId -> {x, y}, for two-finger pan/zoom
    this.pinch = null;
    this.spaceHeld = false;
    this.frame = 0; // a pending requestAnimationFrame
    this.cursorAt = null; // latest own pointer position not yet sent
    this.cursorEls = new Map();
    this.listeners = [];
    this.setupToolbar();
    this.setupInput();
    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.canvas);
    this.resize();
  }

  destroy() {
    cancelAnimationFrame(this.frame);
    this.resizeObserver.disconnect();
    for (const [target, type, fn, opts] of this.listeners) target.removeEventListener(type, fn, opts);
    this.cursorLayer.replaceChildren();
    this.ctx.setTransform(1, 0, 0, 1, 0, 0);
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  on(target, type, fn, opts) {
    target.addEventListener(type, fn, opts);
    this.listeners.push([target, type, fn, opts]);
  }

  // === toolbar ===

  setupToolbar() {
    const palette = document.getElementById('palette');
    palette.replaceChildren(...PALETTE.map(([name, color], i) => {
      const input = el('input', { type: 'radio', name: 'color', value: color, id: `color-${i}`, class: 'visually-hidden', checked: i === 0 });
      const label = el('label', { for: `color-${i}`, class: 'swatch', title: name },
        el('span', { class: 'visually-hidden', text: name }));
      label.style.setProperty('--swatch', color);
      return el('span', { class: 'swatch-item' }, input, label);
    }));
    this.on(palette, 'change', (e) => { this.color = e.target.value; });
    const width = document.getElementById('pen-width');
    const output = document.getElementById('pen-width-value');
    width.value = String(this.width);
    output.textContent = String(this.width);
    this.on(width, 'input', () => {
      this.width = Number(width.value);
      output.textContent = width.value;
    });
    const buttons = {
      'undo-button': () => this.room.undo(),
      'redo-button': () => this.room.redo(),
      'zoom-in-button': () => this.zoomBy(1.25),
      'zoom-out-button': () => this.zoomBy(0.8),
      'zoom-reset-button': () => this.resetView(),
      'export-button': () => this.exportPng(),
    };
    for (const [id, fn] of Object.entries(buttons)) this.on(document.getElementById(id), 'click', fn);
    for (const id of ['undo-button', 'redo-button', 'pen-width']) document.getElementById(id).disabled = this.readOnly;
    for (const input of palette.querySelectorAll('input')) input.disabled = this.readOnly;
  }

  async exportPng() {
    const blob = await exportPng(this.room.strokes());
    if (!blob) {
      notify('Nothing to export yet: the board is empty.');
      return;
    }
    const url = URL.createObjectURL(blob);
    const link = el('a', { href: url, download: `collab-${this.room.id}.png` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // === input ===

  setupInput() {
    const c = this.canvas;
    this.on(c, 'pointerdown', (e) => this.pointerDown(e));
    this.on(c, 'pointermove', (e) => this.pointerMove(e));
    this.on(c, 'pointerup', (e) => this.pointerUp(e));
    this.on(c, 'pointercancel', (e) => this.pointerUp(e));
    this.on(c, 'pointerleave', () => {
      this.cursorAt = null;
      this.room.cursorLeave();
    });
    this.on(c, 'wheel', (e) => this.wheel(e), { passive: false });
    this.on(c, 'keydown', (e) => this.canvasKey(e));
    this.on(window, 'keydown', (e) => this.shortcut(e));
    this.on(window, 'keyup', (e) => { if (e.code === 'Space') this.spaceHeld = false; });
    this.on(window, 'blur', () => { this.spaceHeld = false; });
    // The browser's own gestures (scroll, pinch, long-press menu) would
    // fight drawing on a touch screen.
    this.on(c, 'contextmenu', (e) => e.preventDefault());
  }

  /** Where a pointer event is, in world coordinates. */
  toWorld(e) {
    const rect = this.canvas.getBoundingClientRect();
    const sx = e.clientX - rect.left;
    const sy = e.clientY - rect.top;
    return [round((sx - this.view.tx) / this.view.scale), round((sy - this.view.ty) / this.view.scale)];
  }

  pointerDown(e) {
    this.canvas.focus({ preventScroll: true });
    if (e.pointerType === 'touch') {
      this.touches.set(e.pointerId, { x: e.clientX, y: e.clientY });
      if (this.touches.size === 2) {
        // A second finger turns the gesture into pan/zoom. If the first
        // one's line was not sent yet (see flushPoints) it was the start of
        // the gesture, not a line: it is dropped; otherwise it is kept.
        if (this.drawing && !this.drawing.id) this.drawing = null;
        else this.finishStroke();
        this.startPinch();
        return;
      }
      if (this.touches.size > 2) return;
    }
    const wantsPan = e.button === 1 || (e.button === 0 && (this.spaceHeld || this.readOnly));
    if (wantsPan) {
      this.panning = { pointerId: e.pointerId, x: e.clientX, y: e.clientY };
      this.canvas.setPointerCapture(e.pointerId);
      this.canvas.classList.add('panning');
      e.preventDefault();
      return;
    }
    if (e.button !== 0 || this.drawing) return;
    this.canvas.setPointerCapture(e.pointerId);
    e.preventDefault();
    const p = this.toWorld(e);
    this.drawing = {
      pointerId: e.pointerId, id: null, queued: [p], last: p, color: this.color, width: this.width,
      // A finger may be the first of two (a pan or a pinch): wait a moment.
      touchAt: e.pointerType === 'touch' ? performance.now() : null,
    };
    this.scheduleFrame();
  }

  pointerMove(e) {
    if (e.pointerType === 'touch' && this.touches.has(e.pointerId)) {
      this.touches.set(e.pointerId, { x: e.clientX, y: e.clientY });
      if (this.pinch) {
        this.movePinch();
        return;
      }
    }
    if (this.panning && this.panning.pointerId === e.pointerId) {
      this.view.tx += e.clientX - this.panning.x;
      this.view.ty += e.clientY - this.panning.y;
      this.panning.x = e.clientX;
      this.panning.y = e.clientY;
      this.scheduleFrame();
      return;
    }
    this.cursorAt = this.toWorld(e);
    const d = this.drawing;
    if (d && d.pointerId === e.pointerId) {
      // Coalesced events carry every position the device reported since the
      // last frame: without them a fast line becomes a polygon.
      const events = (e.getCoalescedEvents && e.getCoalescedEvents().length) ? e.getCoalescedEvents() : [e];
      const min = MIN_POINT_DISTANCE_PX / this.view.scale;
      for (const ev of events) {
        const p = this.toWorld(ev);
        if (Math.hypot(p[0] - d.last[0], p[1] - d.last[1]) < min) continue;
        d.queued.push(p);
        d.last = p;
      }
    }
    this.scheduleFrame();
  }

  pointerUp(e) {
    if (e.pointerType === 'touch') {
      this.touches.delete(e.pointerId);
      if (this.pinch && this.touches.size < 2) this.pinch = null;
    }
    if (this.panning && this.panning.pointerId === e.pointerId) {
      this.panning = null;
      this.canvas.classList.remove('panning');
      return;
    }
    if (this.drawing && this.drawing.pointerId === e.pointerId) this.finishStroke();
  }

  /** Sends what is left of the current stroke and ends it. */
  finishStroke() {
    const d = this.drawing;
    if (!d) return;
    d.touchAt = null; // the finger lifted alone: it was a line (or a dot)
    this.flushPoints();
    if (d.id) this.room.endStroke(d.id);
    this.drawing = null;
  }

  /**
   * Once per frame: the points gathered since the last frame become one op
   * (the stroke's begin, then its points), so a stroke costs about 60 ops a
   * second however fast the device reports.
   */
  flushPoints() {
    const d = this.drawing;
    if (!d || d.queued.length === 0) return;
    if (d.touchAt !== null && !d.id) {
      // A touch becomes a line once it has moved a little or stayed long
      // enough that no second finger is coming; until then nothing is sent.
      const [x0, y0] = d.queued[0];
      const moved = Math.hypot(d.last[0] - x0, d.last[1] - y0) * this.view.scale;
      if (moved < TOUCH_SLOP_PX && performance.now() - d.touchAt < TOUCH_WAIT_MS) {
        this.scheduleFrame();
        return;
      }
      d.touchAt = null;
    }
    const points = d.queued;
    d.queued = [];
    if (!d.id) {
      d.id = this.room.beginStroke({ color: d.color, width: d.width, points: points.slice(0, MAX_POINTS) });
      if (points.length > MAX_POINTS) this.room.addPoints(d.id, points.slice(MAX_POINTS));
    } else {
      this.room.addPoints(d.id, points);
    }
  }

  startPinch() {
    const [a, b] = [...this.touches.values()];
    const rect = this.canvas.getBoundingClientRect();
    const mid = { x: (a.x + b.x) / 2 - rect.left, y: (a.y + b.y) / 2 - rect.top };
    this.pinch = {
      dist: Math.hypot(a.x - b.x, a.y - b.y) || 1,
      scale: this.view.scale,
      world: [(mid.x - this.view.tx) / this.view.scale, (mid.y - this.view.ty) / this.view.scale],
    };
  }

  movePinch() {
    const [a, b] = [...this.touches.values()];
    const rect = this.canvas.getBoundingClientRect();
    const mid = { x: (a.x + b.x) / 2 - rect.left, y: (a.y + b.y) / 2 - rect.top };
    const scale = clamp(this.pinch.scale * (Math.hypot(a.x - b.x, a.y - b.y) / this.pinch.dist));
    // Keep the world point that started under the fingers under them.
    this.view.scale = scale;
    this.view.tx = mid.x - this.pinch.world[0] * scale;
    this.view.ty = mid.y - this.pinch.world[1] * scale;
    this.scheduleFrame();
  }

  wheel(e) {
    e.preventDefault();
    const unit = e.deltaMode === 1 ? 16 : e.deltaMode === 2 ? this.canvas.clientHeight : 1;
    if (e.ctrlKey || e.metaKey) {
      // Ctrl+wheel, and a trackpad pinch (which browsers report that way).
      const rect = this.canvas.getBoundingClientRect();
      this.zoomBy(Math.exp(-e.deltaY * unit * 0.002), e.clientX - rect.left, e.clientY - rect.top);
    } else {
      this.view.tx -= e.deltaX * unit;
      this.view.ty -= e.deltaY * unit;
      this.scheduleFrame();
    }
  }

  /** Keys on the focused canvas: arrows pan, +/- zoom, 0 resets. */
  canvasKey(e) {
    const step = e.shiftKey ? 200 : 50;
    const moves = { ArrowLeft: [step, 0], ArrowRight: [-step, 0], ArrowUp: [0, step], ArrowDown: [0, -step] };
    if (moves[e.key]) {
      this.view.tx += moves[e.key][0];
      this.view.ty += moves[e.key][1];
    } else if (e.key === '+' || e.key === '=') {
      this.zoomBy(1.25);
    } else if (e.key === '-' || e.key === '_') {
      this.zoomBy(0.8);
    } else if (e.key === '0') {
      this.resetView();
    } else {
      return;
    }
    e.preventDefault();
    this.scheduleFrame();
  }

  /** Undo/redo from anywhere on the page but a text field (which has its own undo). */
  shortcut(e) {
    const t = e.target;
    const typing = t instanceof HTMLElement && (t.isContentEditable || t.tagName === 'TEXTAREA'
      || (t.tagName === 'INPUT' && !['radio', 'range', 'checkbox', 'button'].includes(t.type)));
    if (e.code === 'Space' && !typing) {
      this.spaceHeld = true;
      if (t === this.canvas) e.preventDefault();
      return;
    }
    if (typing || this.readOnly || !(e.ctrlKey || e.metaKey) || e.altKey) return;
    const key = e.key.toLowerCase();
    if (key === 'z' && !e.shiftKey) {
      this.room.undo();
    } else if ((key === 'z' && e.shiftKey) || key === 'y') {
      this.room.redo();
    } else {
      return;
    }
    e.preventDefault();
  }

  zoomBy(factor, sx = this.canvas.clientWidth / 2, sy = this.canvas.clientHeight / 2) {
    const scale = clamp(this.view.scale * factor);
    // Zoom about (sx, sy): the world point there stays there.
    const wx = (sx - this.view.tx) / this.view.scale;
    const wy = (sy - this.view.ty) / this.view.scale;
    this.view.scale = scale;
    this.view.tx = sx - wx * scale;
    this.view.ty = sy - wy * scale;
    this.scheduleFrame();
  }

  resetView() {
    this.view = { scale: 1, tx: 0, ty: 0 };
    this.scheduleFrame();
  }

  resize() {
    this.dpr = window.devicePixelRatio || 1;
    const w = Math.max(1, Math.round(this.canvas.clientWidth * this.dpr));
    const h = Math.max(1, Math.round(this.canvas.clientHeight * this.dpr));
    if (this.canvas.width !== w || this.canvas.height !== h) {
      this.canvas.width = w;
      this.canvas.height = h;
    }
    this.render();
  }

  // === output ===

  /** Something changed: draw (once) on the next frame. */
  scheduleFrame() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.flushPoints();
      this.sendCursor();
      this.render();
    });
  }

  /** At most once a frame; the SDK sends at most 20 a second, the latest position winning. */
  sendCursor() {
    if (!this.cursorAt) return;
    this.room.cursor(this.cursorAt[0], this.cursorAt[1]);
    this.cursorAt = null;
  }

  render() {
    const { ctx, canvas, dpr } = this;
    const { scale, tx, ty } = this.view;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr * scale, 0, 0, dpr * scale, dpr * tx, dpr * ty);
    const strokes = this.room.strokes();
    const visible = {
      minX: -tx / scale,
      minY: -ty / scale,
      maxX: (canvas.clientWidth - tx) / scale,
      maxY: (canvas.clientHeight - ty) / scale,
    };
    drawStrokes(ctx, strokes, visible);
    pruneCache(strokes);
    this.placeCursors();
  }

  /** Other people's pointers, as named arrows in their colours. */
  placeCursors() {
    const seen = new Set();
    for (const [user, at] of this.room.cursors) {
      if (user === this.me) continue;
      seen.add(user);
      let node = this.cursorEls.get(user);
      if (!node) {
        node = el('div', { class: 'cursor', 'aria-hidden': 'true' }, el('span', { class: 'cursor-name' }));
        this.cursorEls.set(user, node);
        this.cursorLayer.append(node);
      }
      node.querySelector('.cursor-name').textContent = this.names.nameOf(user);
      node.style.setProperty('--cursor-color', this.room.presence.get(user)?.color || '#57606a');
      const x = at.x * this.view.scale + this.view.tx;
      const y = at.y * this.view.scale + this.view.ty;
      node.style.transform = `translate(${x}px, ${y}px)`;
      node.hidden = x < -20 || y < -20 || x > this.canvas.clientWidth || y > this.canvas.clientHeight;
    }
    for (const [user, node] of this.cursorEls) {
      if (!seen.has(user)) {
        node.remove();
        this.cursorEls.delete(user);
      }
    }
  }
}

function clamp(scale) {
  return Math.min(MAX_SCALE, Math.max(MIN_SCALE, scale));
}

/** Two decimals: plenty for a pen, and a third fewer bytes on the wire. */
function round(v) {
  return Math.round(v * 100) / 100;
}
