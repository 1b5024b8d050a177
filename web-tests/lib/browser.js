// Debian's Chromium driven by playwright-core, and the helpers the tests
// share: polling with a deadline (never a fixed sleep), reading the board's
// pixels, and saving screenshots as artifacts.

import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const VIEWPORT = { width: 1280, height: 800 };

export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run',
    ],
  });
}

/**
 * A fresh browser context (its own storage: another person) with one page.
 * Console errors and page errors are collected in `page.problems`.
 */
export async function newPage(browser, options = {}) {
  const context = await browser.newContext({ viewport: VIEWPORT, deviceScaleFactor: 1, ...options });
  const page = await context.newPage();
  page.problems = [];
  page.on('pageerror', (e) => page.problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error') page.problems.push(`console: ${m.text()}`);
  });
  return page;
}

/**
 * Polls `fn` until it returns something truthy, and returns that; fails
 * with `what` (and the last value seen) after `timeout` ms.
 */
export async function waitFor(what, fn, { timeout = 20_000, interval = 50 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}; last: ${last instanceof Error ? last.stack : JSON.stringify(last)}`);
    }
    await new Promise((r) => setTimeout(r, interval));
  }
}

/**
 * The board canvas as numbers: how many pixels have ink, a hash of every
 * pixel (equal hashes = the same picture), and the colour at `at` points
 * given in CSS pixels of the canvas.
 */
export function board(page, at = []) {
  return page.evaluate((at) => {
    const canvas = document.getElementById('board');
    const ctx = canvas.getContext('2d');
    const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
    let ink = 0;
    let hash = 0x811c9dc5;
    for (let i = 0; i < data.length; i += 4) {
      if (data[i + 3] > 0) ink += 1;
      for (let k = 0; k < 4; k++) hash = Math.imul(hash ^ data[i + k], 0x01000193) >>> 0;
    }
    const scale = canvas.width / canvas.clientWidth;
    const colors = at.map(([x, y]) => {
      const px = ctx.getImageData(Math.round(x * scale), Math.round(y * scale), 1, 1).data;
      return [px[0], px[1], px[2], px[3]];
    });
    return { ink, hash: hash.toString(16), colors, size: [canvas.width, canvas.height] };
  }, at);
}

/** Whether `rgba` is close to `hex` and opaque. */
export function isColor(rgba, hex) {
  const want = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
  return rgba[3] > 200 && want.every((v, i) => Math.abs(v - rgba[i]) <= 40);
}

/** The canvas's top-left corner on the page. */
export async function canvasOrigin(page) {
  const box = await page.locator('#board').boundingBox();
  return { x: box.x, y: box.y };
}

/** Draws a line through `points` (canvas CSS pixels) with the mouse. */
export async function drawWithMouse(page, points, steps = 8) {
  const o = await canvasOrigin(page);
  await page.mouse.move(o.x + points[0][0], o.y + points[0][1]);
  await page.mouse.down();
  for (const [x, y] of points.slice(1)) await page.mouse.move(o.x + x, o.y + y, { steps });
  await page.mouse.up();
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path });
  return path;
}

export function statusOf(page) {
  return page.locator('#status').getAttribute('data-state');
}

/** Opens the lobby, types a name, and creates a room of `kind`; returns its code. */
export async function createRoom(page, baseUrl, name, kind = 'board') {
  await page.goto(`${baseUrl}/`);
  await page.getByLabel('Display name').fill(name);
  await page.getByRole('button', { name: kind === 'board' ? 'New board' : 'New channel' }).click();
  await waitFor(`${name} in a new ${kind}`, async () => (await statusOf(page)) === 'online');
  return new URL(page.url()).searchParams.get('room');
}

/** Opens a room's link as a newcomer: types a name and joins. */
export async function joinRoom(page, baseUrl, name, code) {
  await page.goto(`${baseUrl}/?room=${code}`);
  await page.getByLabel('Display name').fill(name);
  await page.getByRole('button', { name: 'Join', exact: true }).click();
  await waitFor(`${name} in room ${code}`, async () => (await statusOf(page)) === 'online');
}
