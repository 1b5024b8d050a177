// Pointer events other than the mouse: a finger and a pen draw like a
// mouse; two fingers pan instead of drawing. And the PNG export.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';

import { board, canvasOrigin, createRoom, isColor, launch, newPage, waitFor } from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

let server;
let browser;

before(async () => {
  server = await CollabServer.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  if (server) await server.stop();
});

/** The strokes the server has for `code`, as {id, points}. */
async function serverStrokes(code) {
  const token = await server.devToken('auditor');
  const ops = await server.allOps(token, code, ['stroke_begin', 'stroke_points']);
  const strokes = new Map();
  for (const o of ops) {
    if (!strokes.has(o.op.stroke)) strokes.set(o.op.stroke, []);
    strokes.get(o.op.stroke).push(...o.op.points);
  }
  return [...strokes].map(([id, points]) => ({ id, points }));
}

test('a finger and a pen draw; two fingers pan', async () => {
  const page = await newPage(browser, { hasTouch: true });
  const code = await createRoom(page, server.url, 'Tess');
  const o = await canvasOrigin(page);
  const cdp = await page.context().newCDPSession(page);

  // One finger: a stroke.
  const touch = (type, points) => cdp.send('Input.dispatchTouchEvent', {
    type, touchPoints: points.map(([x, y], id) => ({ x: o.x + x, y: o.y + y, id })),
  });
  await touch('touchStart', [[100, 100]]);
  for (let x = 110; x <= 300; x += 10) await touch('touchMove', [[x, 100]]);
  await touch('touchEnd', []);
  await waitFor('the finger\'s stroke', async () => isColor((await board(page, [[200, 100]])).colors[0], '#1f2328'));

  // A pen: another stroke.
  const pen = (type, x, y) => cdp.send('Input.dispatchMouseEvent', {
    type, x: o.x + x, y: o.y + y, button: 'left', buttons: type === 'mouseReleased' ? 0 : 1, clickCount: 1, pointerType: 'pen',
  });
  await pen('mousePressed', 100, 200);
  for (let x = 110; x <= 300; x += 10) await pen('mouseMoved', x, 200 + (x - 100) / 4);
  await pen('mouseReleased', 300, 250);
  await waitFor('the pen\'s stroke', async () => isColor((await board(page, [[200, 225]])).colors[0], '#1f2328'));
  await waitFor('both saved', async () => (await page.locator('#status').getAttribute('data-unsaved')) === '0');

  const strokes = await serverStrokes(code);
  assert.equal(strokes.length, 2, 'two strokes on the server');
  assert.deepEqual(strokes[0].points[0], [100, 100]);
  assert.deepEqual(strokes[1].points[0], [100, 200]);

  // Two fingers moving together pan the view: no new stroke, the picture moves.
  await touch('touchStart', [[400, 400], [500, 400]]);
  for (let d = 10; d <= 100; d += 10) await touch('touchMove', [[400 + d, 400 + d], [500 + d, 400 + d]]);
  await touch('touchEnd', []);
  await waitFor('the picture moved by the pan', async () => isColor((await board(page, [[300, 200]])).colors[0], '#1f2328'));
  assert.equal((await serverStrokes(code)).length, 2, 'still two strokes');

  // Export: the whole drawing as a PNG, whatever the view.
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Export PNG' }).click(),
  ]);
  assert.equal(download.suggestedFilename(), `collab-${code}.png`);
  const png = await readFile(await download.path());
  assert.deepEqual([...png.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'a PNG');
  // The drawing spans 200 x 150 world units; add the pen's width and a margin.
  const [width, height] = [png.readUInt32BE(16), png.readUInt32BE(20)];
  assert.ok(width >= 230 && width <= 250 && height >= 180 && height <= 200, `${width} x ${height}`);
  await page.context().close();
});
