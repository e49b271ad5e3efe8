/**
 * Files named on the command line (evidence, --root, --trust-bundle, a daemon's --config) were read
 * with readFileSync, whatever they were: a FIFO nobody writes to blocked the process for good (the
 * whole event loop: `sigil agent run` or `verifier run` never starts and never reports why; an
 * offline `sigil evidence verify` never ends), and a device such as /dev/zero or a huge file was
 * read into memory up to Node's 2 GiB limit. A local user who can put such a file where the
 * operator reads from (a shared evidence drop, a collateral directory) stalls the command. Only
 * regular files are read now, and only up to a size limit: anything else fails at once with the
 * command's "cannot read" code.
 */
import { spawnSync } from 'node:child_process';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = resolve(import.meta.dirname, '../..');
let dir: string;
let fifo: string;

/** Run `body` (an async function body; `m` is the imported module) in a child Node; its stdout, or "killed" after 15 s. */
function inChild(module: string, body: string): string {
  const script = `import(${JSON.stringify(join(root, module))}).then(async (m) => { ${body} }).then((r) => process.stdout.write(String(r)), (e) => process.stdout.write('threw ' + (e && e.code)))`;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', script], { cwd: root, encoding: 'utf8', timeout: 15_000 });
  return r.signal ? 'killed' : r.stdout.trim();
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-cli-inputs-'));
  fifo = join(dir, 'fifo');
  execFileSync('mkfifo', [fifo]);
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('command-line files that are not small regular files', () => {
  it('a FIFO as a daemon config fails at once (config.unreadable) instead of blocking', () => {
    expect(inChild('src/util/config-file.ts', `m.readConfigFile(${JSON.stringify(fifo)}); return 'read';`)).toBe('threw config.unreadable');
  }, 30_000);

  it('a FIFO as an evidence file is rejected at once (input.unreadable, exit 1)', () => {
    const body = `const w = process.stdout.write.bind(process.stdout); let out = ''; process.stdout.write = (s) => ((out += s), true);
      const code = m.runNitroEvidence(${JSON.stringify(fifo)}, { json: true }); process.stdout.write = w; return code + ' ' + JSON.parse(out).error.code;`;
    expect(inChild('src/cli/evidence-nitro.ts', body)).toBe('1 input.unreadable');
  }, 30_000);

  it('a character device is refused, not read', () => {
    expect(inChild('src/util/config-file.ts', `m.readConfigFile('/dev/null'); return 'read';`)).toBe('threw config.unreadable');
  }, 30_000);

  it('a config file larger than the limit is refused before it is read', () => {
    const big = join(dir, 'big.yaml');
    writeFileSync(big, '');
    truncateSync(big, 64 * 1024 * 1024);
    expect(inChild('src/util/config-file.ts', `m.readConfigFile(${JSON.stringify(big)}); return 'read';`)).toBe('threw config.unreadable');
  }, 30_000);

  it('an ordinary config file is still read', () => {
    const ok = join(dir, 'ok.yaml');
    writeFileSync(ok, 'trustDomain: example.org\n');
    expect(inChild('src/util/config-file.ts', `return JSON.stringify(m.readConfigFile(${JSON.stringify(ok)}).raw);`)).toBe('{"trustDomain":"example.org"}');
  }, 30_000);
});
