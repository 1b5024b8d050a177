// Two people on one board, then a third who comes late, then a crash of
// the server in the middle of it all. Everything is asserted on what the
// pages show (canvas pixels, the DOM) and on the server's history.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  board, createRoom, drawWithMouse, isColor, joinRoom, launch, newPage, screenshot, statusOf, waitFor,
} from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

const RED = '#d1242f';
const BLUE = '#1f6feb';
const GREEN = '#1a7f37';
const ORANGE = '#e16f24';
const PURPLE = '#8250df';

let server;
let browser;
let ann;
let bob;
let code;

before(async () => {
  server = await CollabServer.start();
  browser = await launch();
});

after(async () => {
  await browser?.close();
  if (server) {
    if (process.exitCode) console.error(server.tail());
    await server.stop();
  }
});

/** Both pages show the same picture, with ink: returns it. */
async function samePicture(what, pages, { ink = true } = {}) {
  return waitFor(what, async () => {
    const shots = await Promise.all(pages.map((p) => board(p)));
    const same = shots.every((s) => s.hash === shots[0].hash);
    return same && (ink ? shots[0].ink > 0 : shots[0].ink === 0) && shots[0];
  });
}

async function pickColor(page, name) {
  await page.locator('#palette label', { hasText: name }).click();
}

test('two people on one board see each other draw, undo and chat', async (t) => {
  ann = await newPage(browser);
  bob = await newPage(browser);

  await t.test('the lobby', async () => {
    await ann.goto(`${server.url}/`);
    await ann.getByLabel('Display name').fill('Ann');
    await screenshot(ann, 'lobby.png');
  });

  await t.test('Ann creates a board and Bob joins it by its link', async () => {
    code = await createRoom(ann, server.url, 'Ann');
    assert.match(code, /^[a-z0-9]{8}$/);
    await joinRoom(bob, server.url, 'Bob', code);
    // Presence: each sees the other (and themselves).
    await waitFor('Bob in Ann\'s presence list', async () => (await ann.locator('#presence-list').innerText()).includes('Bob'));
    assert.match(await bob.locator('#presence-list').innerText(), /Ann/);
    assert.match(await bob.locator('#presence-list').innerText(), /Bob \(you\)/);
  });

  await t.test('a stroke Ann draws with the mouse appears on Bob\'s canvas', async () => {
    await pickColor(ann, 'Red');
    await ann.locator('#pen-width').fill('8');
    await drawWithMouse(ann, [[100, 120], [300, 120], [420, 220]]);
    const picture = await samePicture('the red stroke on both pages', [ann, bob]);
    const shot = await board(bob, [[200, 120], [360, 170]]);
    assert.ok(isColor(shot.colors[0], RED), `red at (200,120): ${shot.colors[0]}`);
    assert.ok(picture.ink > 1000, `ink ${picture.ink}`);
  });

  await t.test('Ann\'s cursor shows on Bob\'s page with her name, and hides when she leaves the canvas', async () => {
    const box = await ann.locator('#board').boundingBox();
    await ann.mouse.move(box.x + 500, box.y + 300, { steps: 4 });
    const cursor = bob.locator('.cursor .cursor-name', { hasText: 'Ann' });
    await waitFor('Ann\'s cursor on Bob\'s page', () => cursor.isVisible());
    await ann.mouse.move(box.x + box.width + 60, box.y + 300, { steps: 2 }); // off the canvas, onto the chat
    await waitFor('Ann\'s cursor gone from Bob\'s page', async () => (await cursor.count()) === 0);
  });

  await t.test('Ctrl+Z removes the stroke on both pages, Redo brings it back', async () => {
    await ann.locator('#board').focus();
    await ann.keyboard.press('Control+z');
    await samePicture('an empty board on both pages', [ann, bob], { ink: false });
    await ann.getByRole('button', { name: 'Redo' }).click();
    const shot = await samePicture('the red stroke back on both pages', [ann, bob]);
    assert.ok(shot.ink > 1000);
  });

  await t.test('Bob draws too, and both pages agree', async () => {
    await pickColor(bob, 'Blue');
    await bob.locator('#pen-width').fill('12');
    await drawWithMouse(bob, [[520, 400], [560, 300], [640, 260], [720, 300], [760, 400]]);
    const shot = await samePicture('the blue stroke on both pages', [ann, bob]);
    assert.ok(isColor((await board(ann, [[640, 260]])).colors[0], BLUE));
    assert.ok(shot.ink > 2000);
  });

  await t.test('chat messages arrive on both pages with names', async () => {
    await ann.getByLabel('Message', { exact: true }).fill('Hello Bob, this is the plan');
    await ann.keyboard.press('Enter');
    await bob.getByLabel('Message', { exact: true }).fill('Looks good to me');
    await bob.getByRole('button', { name: 'Send' }).click();
    for (const page of [ann, bob]) {
      await waitFor('both messages', async () => (await page.locator('.chat-message:not(.pending)').count()) === 2);
      const texts = await page.locator('.chat-message').allInnerTexts();
      assert.match(texts[0], /Ann/);
      assert.match(texts[0], /Hello Bob, this is the plan/);
      assert.match(texts[1], /Bob/);
      assert.match(texts[1], /Looks good to me/);
      assert.equal(await page.locator('.chat-message time').count(), 2);
    }
  });

  await t.test('a third person joining late sees the same picture and the messages', async () => {
    const cy = await newPage(browser);
    await joinRoom(cy, server.url, 'Cy', code);
    await samePicture('the late joiner\'s picture', [ann, cy]);
    await waitFor('the messages', async () => (await cy.locator('.chat-message').count()) === 2);
    await cy.context().close();
  });
});

test('the server is killed and restarted mid-session: nothing lost, nothing doubled', async (t) => {
  assert.ok(code, 'needs the board of the first test');
  const o = await (async () => {
    const box = await ann.locator('#board').boundingBox();
    return { x: box.x, y: box.y };
  })();

  await t.test('a stroke still being drawn shows live on Bob\'s page', async () => {
    await pickColor(ann, 'Orange');
    await ann.locator('#pen-width').fill('10');
    await ann.mouse.move(o.x + 560, o.y + 620);
    await ann.mouse.down();
    await ann.mouse.move(o.x + 700, o.y + 620, { steps: 10 });
    await waitFor('the open stroke on Bob\'s page', async () => isColor((await board(bob, [[640, 620]])).colors[0], ORANGE));
  });

  await t.test('both pages notice the crash', async () => {
    await server.kill();
    for (const page of [ann, bob]) {
      await waitFor('offline status', async () => ['offline', 'connecting'].includes(await statusOf(page)));
    }
  });

  await t.test('Ann finishes her stroke, draws another and writes while the server is down', async () => {
    await ann.mouse.move(o.x + 820, o.y + 680, { steps: 10 });
    await ann.mouse.move(o.x + 900, o.y + 620, { steps: 10 });
    await ann.mouse.up();
    await pickColor(ann, 'Green');
    await drawWithMouse(ann, [[140, 480], [260, 560], [380, 480], [500, 560]]);
    await ann.getByLabel('Message', { exact: true }).fill('Drawn while the server was down');
    await ann.keyboard.press('Enter');
    const shot = await board(ann, [[260, 560], [820, 680]]);
    assert.ok(isColor(shot.colors[0], GREEN), `green drawn locally: ${shot.colors[0]}`);
    assert.ok(isColor(shot.colors[1], ORANGE), `orange drawn locally: ${shot.colors[1]}`);
    assert.ok(Number(await ann.locator('#status').getAttribute('data-unsaved')) > 0);
    assert.match(await ann.locator('#status').innerText(), /waiting to be sent|Connecting/);
  });

  await t.test('after the restart both pages reconnect by themselves and converge', async () => {
    await server.restart();
    for (const page of [ann, bob]) {
      await waitFor('online again', async () => (await statusOf(page)) === 'online', { timeout: 30_000 });
    }
    await waitFor('Ann\'s outbox empty', async () => (await ann.locator('#status').getAttribute('data-unsaved')) === '0');
    await samePicture('the same picture after the restart', [ann, bob]);
    const shot = await board(bob, [[260, 560], [640, 620], [820, 680]]);
    assert.ok(isColor(shot.colors[0], GREEN), 'the outage stroke on Bob\'s page');
    assert.ok(isColor(shot.colors[1], ORANGE), 'the part drawn before the crash');
    assert.ok(isColor(shot.colors[2], ORANGE), 'the part drawn during the outage');
    await waitFor('the offline message on Bob\'s page', async () =>
      (await bob.locator('.chat-message', { hasText: 'Drawn while the server was down' }).count()) === 1);
  });

  await t.test('the server has every stroke exactly once, and the pages show exactly those', async () => {
    const token = await server.devToken('auditor');
    const ops = await server.allOps(token, code);
    const begins = ops.filter((o) => o.op.kind === 'stroke_begin').map((o) => o.op.stroke);
    assert.equal(new Set(begins).size, begins.length, 'no stroke id twice');
    // Red, blue, orange (two strokes if the server ended it during the
    // outage and the page continued it as a new one), green.
    assert.ok(begins.length === 4 || begins.length === 5, `strokes begun: ${begins}`);
    const ends = ops.filter((o) => o.op.kind === 'stroke_end').map((o) => o.op.stroke);
    assert.deepEqual([...ends].sort(), [...begins].sort(), 'each stroke ended once');
    for (const page of [ann, bob]) {
      const shown = await page.evaluate(() => window.collab.strokeIds());
      assert.deepEqual(shown, begins, 'the page draws exactly the server\'s strokes, in order');
    }
    const offline = ops.filter((o) => o.op.kind === 'message' && o.op.text === 'Drawn while the server was down');
    assert.equal(offline.length, 1, 'the offline message once');
    // Gapless seqs from 1: nothing lost in between.
    ops.forEach((o, i) => assert.equal(o.seq, i + 1));
  });

  await t.test('a fresh page shows exactly the same picture', async () => {
    const dee = await newPage(browser);
    await joinRoom(dee, server.url, 'Dee', code);
    await samePicture('the fresh page\'s picture', [ann, bob, dee]);
    await waitFor('Dee in the presence list', async () => (await ann.locator('#presence-list').innerText()).includes('Dee'));
    await screenshot(dee, 'board.png');
    await dee.context().close();
  });

  await t.test('no page logged an error', () => {
    for (const page of [ann, bob]) {
      // A dead server makes the browser log failed WebSocket connections;
      // anything else is a bug.
      const problems = page.problems.filter((p) => !/WebSocket connection|ERR_CONNECTION_REFUSED|Failed to load resource/.test(p));
      assert.deepEqual(problems, []);
    }
  });
});

test('a stroke cut by a short drop stays one stroke, and one Undo takes all of it', async () => {
  assert.ok(code, 'needs the board of the first test');
  const box = await ann.locator('#board').boundingBox();
  const token = await server.devToken('auditor');
  const seen = (await server.allOps(token, code)).length;

  await pickColor(ann, 'Green');
  await ann.mouse.move(box.x + 80, box.y + 60);
  await ann.mouse.down();
  await ann.mouse.move(box.x + 280, box.y + 60, { steps: 10 });
  await waitFor('the open stroke on Bob\'s page', async () => isColor((await board(bob, [[180, 60]])).colors[0], GREEN));
  // The connection drops and the page reconnects while the pen is down.
  await ann.evaluate(() => window.collab.dropConnection());
  await ann.mouse.move(box.x + 480, box.y + 60, { steps: 10 });
  await ann.mouse.up();
  await waitFor('Ann online again', async () => (await statusOf(ann)) === 'online');
  await waitFor('Ann\'s outbox empty', async () => (await ann.locator('#status').getAttribute('data-unsaved')) === '0');
  await samePicture('the same picture after the short drop', [ann, bob]);
  assert.ok(isColor((await board(bob, [[380, 60]])).colors[0], GREEN), 'the part drawn after the drop, on Bob\'s page');

  const ops = (await server.allOps(token, code)).slice(seen);
  const begins = ops.filter((o) => o.op.kind === 'stroke_begin');
  assert.equal(begins.length, 1, `one stroke: ${JSON.stringify(begins)}`);
  const ends = ops.filter((o) => o.op.kind === 'stroke_end');
  assert.equal(ends.length, 1, 'ended once');
  assert.notEqual(ends[0].cid, null, 'by Ann, not by the server');
  const stroke = begins[0].op.stroke;
  assert.ok(ops.every((o) => !o.op.stroke || o.op.stroke === stroke), 'every point went to that stroke');

  // One Undo takes the whole gesture away, on both pages.
  await ann.locator('#board').focus();
  await ann.keyboard.press('Control+z');
  await waitFor('the whole stroke gone from Bob\'s page', async () => {
    const shot = await board(bob, [[180, 60], [380, 60]]);
    return shot.colors.every((c) => !isColor(c, GREEN));
  });
  await samePicture('the same picture after the undo', [ann, bob]);
  await ann.getByRole('button', { name: 'Redo' }).click();
  await waitFor('the stroke back on Bob\'s page', async () => isColor((await board(bob, [[380, 60]])).colors[0], GREEN));
});

test('a stroke cut for longer than the grace goes on as a new stroke, nothing lost', async () => {
  assert.ok(code, 'needs the board of the first test');
  const box = await ann.locator('#board').boundingBox();
  const token = await server.devToken('auditor');
  const serverEnded = async () => (await server.allOps(token, code))
    .filter((o) => o.op.kind === 'stroke_end' && o.cid === null).length;
  const endedBefore = await serverEnded();

  await pickColor(ann, 'Purple');
  await ann.mouse.move(box.x + 80, box.y + 330);
  await ann.mouse.down();
  await ann.mouse.move(box.x + 280, box.y + 330, { steps: 10 });
  await waitFor('the open stroke on Bob\'s page', async () => isColor((await board(bob, [[180, 330]])).colors[0], PURPLE));
  // The connection drops and stays down past the grace: the server ends
  // the stroke for Ann.
  await ann.context().setOffline(true);
  await ann.evaluate(() => window.collab.dropConnection());
  await waitFor('the server ending the orphaned stroke', async () => (await serverEnded()) === endedBefore + 1);
  // Ann has not lifted her pen: the rest of the line must not be lost.
  await ann.mouse.move(box.x + 480, box.y + 400, { steps: 10 });
  await ann.mouse.up();
  await ann.context().setOffline(false);
  await waitFor('Ann online again', async () => (await statusOf(ann)) === 'online', { timeout: 30_000 });
  await waitFor('Ann\'s outbox empty', async () => (await ann.locator('#status').getAttribute('data-unsaved')) === '0');
  await samePicture('the same picture after the drop', [ann, bob]);
  assert.ok(isColor((await board(bob, [[380, 365]])).colors[0], PURPLE), 'the part drawn after the drop, on Bob\'s page');

  const ops = await server.allOps(token, code);
  const begins = ops.filter((o) => o.op.kind === 'stroke_begin');
  const last = begins[begins.length - 1].op;
  const before = begins[begins.length - 2].op;
  assert.equal(last.color, before.color, 'the continuation has the colour of the cut stroke');
  const cutEnd = ops.filter((o) => o.op.stroke === before.stroke && o.op.kind !== 'stroke_end')
    .flatMap((o) => o.op.points).pop();
  assert.deepEqual(last.points[0], cutEnd, 'and starts where the cut stroke stopped');
  assert.deepEqual(await ann.evaluate(() => window.collab.strokeIds()), begins.map((b) => b.op.stroke));
});
