import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, isAbsolute, resolve } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const checkout = resolve(here, '../..');

/** When this checkout is a clone of a local repository, that repository's directory. */
function localOrigin(): string | undefined {
  try {
    const url = execFileSync('git', ['-C', checkout, 'config', '--get', 'remote.origin.url'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    const path = url.startsWith('file://') ? fileURLToPath(url) : url;
    return isAbsolute(path) ? path : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The shared real evidence: $SIGIL_TESTDATA, else ../shared/testdata beside the checkout (where CI
 * has it), else beside the local repository this checkout was cloned from (a scratch clone in /tmp).
 */
function findTestdata(): string {
  if (process.env.SIGIL_TESTDATA) return resolve(process.env.SIGIL_TESTDATA);
  const beside = resolve(checkout, '../shared/testdata');
  if (existsSync(beside)) return beside;
  const origin = localOrigin();
  if (origin) {
    const o = resolve(origin, '../shared/testdata');
    if (existsSync(o)) return o;
  }
  return beside;
}

export const TESTDATA = findTestdata();
export const hasTestdata = existsSync(TESTDATA);

/**
 * Tests that need the shared real evidence are skipped (with a reason) when the folder is
 * absent, except under CI=true, where a missing folder is a hard failure.
 */
export function requireTestdata(): boolean {
  if (hasTestdata) return true;
  if (process.env.CI === 'true') {
    throw new Error(`shared testdata not found at ${TESTDATA}; CI must not skip evidence tests`);
  }
  console.warn(`[skip] shared testdata not found at ${TESTDATA}; evidence tests skipped`);
  return false;
}

export function td(...parts: string[]): string {
  return resolve(TESTDATA, ...parts);
}
