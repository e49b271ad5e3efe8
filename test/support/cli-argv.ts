/**
 * How tests start the real `sigil` CLI as a child process. The compiled CLI (`node bin/sigil`,
 * dist/) starts in a fraction of the time the sources take through tsx, so it is used whenever
 * dist/ is at least as new as every file under src/ — as after `npm ci` (its prepare step builds
 * dist/) in CI. While sources are newer (editing without `npm run build`), the sources run through
 * tsx, so a test never runs stale code.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

const root = resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../..');

function newestMtime(dir: string): number {
  let newest = 0;
  for (const d of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, d.name);
    if (d.isDirectory()) newest = Math.max(newest, newestMtime(p));
    else if (d.isFile()) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

function distIsCurrent(): boolean {
  try {
    return statSync(join(root, 'dist/cli/main.js')).mtimeMs >= newestMtime(join(root, 'src'));
  } catch {
    return false;
  }
}

let cached: string[] | undefined;

/** argv (without the CLI's own arguments) that runs `sigil`: `[node, bin/sigil]` or `[node, --import, tsx, test/support/run-cli.ts]`. */
export function cliArgv(): string[] {
  cached ??= distIsCurrent() ? [process.execPath, join(root, 'bin/sigil')] : [process.execPath, '--import', 'tsx', join(root, 'test/support/run-cli.ts')];
  return cached;
}
