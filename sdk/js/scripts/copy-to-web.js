// Copies the built SDK (dist/*.js) to where the web page loads it from,
// services/gateway/web/app/sdk/, so the server embeds it and runs from a
// fresh clone with no npm step. Run after `npm run build`; a test fails
// while the copy differs from a fresh build.

import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
export const DIST = join(here, '..', 'dist');
export const WEB = join(here, '..', '..', '..', 'services', 'gateway', 'web', 'app', 'sdk');

/** The built modules: what the page needs (no type declarations). */
export function modules(dir) {
  return readdirSync(dir).filter((f) => f.endsWith('.js')).sort();
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  rmSync(WEB, { recursive: true, force: true });
  mkdirSync(WEB, { recursive: true });
  for (const file of modules(DIST)) copyFileSync(join(DIST, file), join(WEB, file));
  console.log(`copied ${modules(WEB).length} modules to ${WEB}`);
}
