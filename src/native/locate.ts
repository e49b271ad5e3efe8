/**
 * Finds and loads Sigil's compiled addons (build/Release/<name>.node under the package root).
 * The package root is found from this module's own location, which is src/native/ when run from
 * sources (tsx, vitest) and dist/native/ when compiled; SIGIL_NATIVE_DIR overrides the folder.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { errorMessage } from '../errors.js';

const here = dirname(fileURLToPath(import.meta.url));
const requireNative = createRequire(import.meta.url);

function isSigilRoot(dir: string): boolean {
  const pkg = join(dir, 'package.json');
  if (!existsSync(pkg)) return false;
  try {
    const parsed = JSON.parse(readFileSync(pkg, 'utf8')) as { name?: unknown };
    return parsed.name === 'sigil';
  } catch {
    return false;
  }
}

/** The package root (the folder holding Sigil's package.json), searched upwards from this file. */
export function packageRoot(): string {
  let dir = here;
  for (let i = 0; i < 6; i++) {
    if (isSigilRoot(dir)) return dir;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  // Both src/native and dist/native sit two levels below the root.
  return resolve(here, '..', '..');
}

/** Folder holding the .node files. */
export function nativeDir(): string {
  const override = process.env.SIGIL_NATIVE_DIR;
  if (override !== undefined && override !== '') return resolve(override);
  return join(packageRoot(), 'build', 'Release');
}

export function addonPath(name: 'sigil_sys' | 'sigil_tpm'): string {
  return join(nativeDir(), `${name}.node`);
}

export type LoadResult<T> = { ok: true; addon: T } | { ok: false; missing: 'file'; path: string } | { ok: false; missing: 'load'; path: string; error: string };

/** Loads an addon without throwing; says whether the file is absent or failed to load. */
export function loadAddon<T>(name: 'sigil_sys' | 'sigil_tpm'): LoadResult<T> {
  const path = addonPath(name);
  if (!existsSync(path)) return { ok: false, missing: 'file', path };
  try {
    return { ok: true, addon: requireNative(path) as T };
  } catch (e) {
    return { ok: false, missing: 'load', path, error: errorMessage(e) };
  }
}

export const REBUILD_HINT = 'run `npm rebuild sigil` (in a checkout: `node scripts/build-native.mjs`; needs python3, make and a C++ compiler)';
