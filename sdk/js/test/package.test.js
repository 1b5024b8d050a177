// The package as it ships and as the page uses it: the page's committed
// copy of the SDK is exactly a fresh build, the README's examples are the
// type-checked files in examples/, and `npm pack` ships what an app needs.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { DIST, WEB, modules } from '../scripts/copy-to-web.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');

test('the page\'s copy of the SDK (services/gateway/web/app/sdk) is exactly a fresh build', () => {
  const built = modules(DIST);
  assert.ok(built.includes('index.js'), `built: ${built}`);
  assert.deepEqual(modules(WEB), built, 'the same modules (run `npm run build && npm run web` in sdk/js)');
  for (const file of built) {
    assert.ok(readFileSync(join(WEB, file)).equals(readFileSync(join(DIST, file))),
      `${file} differs from a fresh build: run \`npm run build && npm run web\` in sdk/js`);
  }
});

test('the README\'s examples are the type-checked files in examples/, each under 40 lines', () => {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  for (const name of ['whiteboard.ts', 'chat.ts']) {
    const code = readFileSync(join(ROOT, 'examples', name), 'utf8');
    assert.ok(readme.includes(`\`\`\`ts\n${code}\`\`\``), `README.md shows examples/${name} as it is`);
    assert.ok(code.trimEnd().split('\n').length < 40, `examples/${name} is under 40 lines`);
  }
});

test('npm pack ships the built modules, their types and the README, and nothing else', () => {
  const [pack] = JSON.parse(execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: ROOT }).toString());
  const files = pack.files.map((f) => f.path).sort();
  assert.equal(pack.name, '@collab/client');
  assert.match(pack.version, /^0\.\d+\.\d+$/, 'semver 0.x');
  for (const file of ['README.md', 'package.json', 'dist/index.js', 'dist/index.d.ts', 'dist/client.d.ts']) {
    assert.ok(files.includes(file), `${file} in ${files}`);
  }
  assert.deepEqual(files.filter((f) => !/^(README\.md|package\.json|dist\/[a-z]+\.(js|d\.ts))$/.test(f)), []);
  const manifest = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.equal(manifest.dependencies, undefined, 'no runtime dependencies');
});
