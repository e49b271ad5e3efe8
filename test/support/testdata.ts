import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, resolve } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
/** ../shared/testdata beside the checkout (CI always has it). Override with SIGIL_TESTDATA. */
export const TESTDATA = process.env.SIGIL_TESTDATA ?? resolve(here, '../../../shared/testdata');
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
