// Accessibility: an axe-core scan of the lobby and of a board in use, and
// the board's controls reached and used from the keyboard alone.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';

import { createRoom, drawWithMouse, launch, newPage, screenshot, waitFor } from '../lib/browser.js';
import { CollabServer } from '../lib/server.js';

const AXE = createRequire(import.meta.url).resolve('axe-core/axe.min.js');

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

/** Runs axe on the page; returns its violations. */
async function axe(page) {
  await page.addScriptTag({ path: AXE });
  return page.evaluate(async () => {
    const result = await window.axe.run(document, { resultTypes: ['violations'] });
    return result.violations.map((v) => ({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map((n) => n.target.join(' ')) }));
  });
}

function assertNoSerious(violations, where) {
  const serious = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  if (violations.length) console.log(`axe on ${where}:`, JSON.stringify(violations, null, 2));
  assert.deepEqual(serious, [], `serious or critical accessibility violations on ${where}`);
}

test('the lobby and the board have no serious accessibility violations', async () => {
  // The page's Content-Security-Policy forbids injected scripts; axe is one.
  const page = await newPage(browser, { bypassCSP: true });
  await page.goto(`${server.url}/`);
  assertNoSerious(await axe(page), 'the lobby');

  await createRoom(page, server.url, 'Ann');
  await drawWithMouse(page, [[80, 80], [240, 160]]);
  await page.getByLabel('Message', { exact: true }).fill('Hello');
  await page.keyboard.press('Enter');
  await waitFor('the message', async () => (await page.locator('.chat-message:not(.pending)').count()) === 1);
  assertNoSerious(await axe(page), 'the board');
  await screenshot(page, 'board-a11y.png');
  await page.context().close();
});

test('the board\'s controls are reachable by keyboard with a visible focus', async () => {
  const page = await newPage(browser);
  await createRoom(page, server.url, 'Kay');
  await page.locator('.skip-link').focus();
  const reached = new Set();
  for (let i = 0; i < 40; i++) {
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => {
      const el = document.activeElement;
      const style = getComputedStyle(el);
      return { id: el.id, outline: style.outlineStyle, width: parseFloat(style.outlineWidth) };
    });
    if (focused.id) reached.add(focused.id);
    if (['undo-button', 'export-button', 'chat-input', 'board'].includes(focused.id)) {
      assert.notEqual(focused.outline, 'none', `visible focus on #${focused.id}`);
      assert.ok(focused.width >= 2, `a thick enough focus ring on #${focused.id}`);
    }
  }
  for (const id of ['copy-link', 'leave-button', 'pen-width', 'undo-button', 'redo-button', 'zoom-in-button', 'export-button', 'board', 'chat-input']) {
    assert.ok(reached.has(id), `#${id} is reachable with Tab (reached: ${[...reached]})`);
  }
  // Keys on the focused board pan and zoom; the view can be reset.
  await page.locator('#board').focus();
  await page.keyboard.press('+');
  await page.keyboard.press('ArrowRight');
  await page.keyboard.press('0');
  await page.context().close();
});
