/**
 * The verifier warns at start when listen.maxConnections cannot fit under its open-file limit:
 * connections past the limit would fail at accept with EMFILE instead of being refused by the cap.
 * A real verifier process under a real lowered limit (prlimit), and the parser on real
 * /proc/<pid>/limits texts.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connectionCapWarning, openFileLimit, parseOpenFileLimit } from '../../src/util/open-file-limit.js';
import { startupOutputUnder } from '../support/verifier-under-limit.js';

const root = resolve(__dirname, '../..');
const dir = mkdtempSync(join(tmpdir(), 'sigil-nofile-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('open-file limit', () => {
  it('reads the soft limit of /proc/self/limits as prlimit reports it', () => {
    const soft = Number(execFileSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output', 'SOFT', '--noheadings']).toString().trim());
    expect(openFileLimit()).toBe(soft);
    expect(parseOpenFileLimit(readFileSync('/proc/self/limits', 'utf8'))).toBe(soft);
    expect(parseOpenFileLimit('Limit                     Soft Limit           Hard Limit           Units\nMax open files            unlimited            unlimited            files\n')).toBeUndefined();
    expect(parseOpenFileLimit('Max processes 10 10 processes\n')).toBeUndefined();
    expect(parseOpenFileLimit('Max open files            lots                 4096                 files\n')).toBeUndefined();
    expect(openFileLimit(join(dir, 'missing'))).toBeUndefined();
  });

  it('warns only when the cap plus a margin does not fit', () => {
    expect(connectionCapWarning('listen.maxConnections', 16384, 20000)).toBeUndefined();
    expect(connectionCapWarning('listen.maxConnections', 16384, undefined)).toBeUndefined();
    const w = connectionCapWarning('listen.maxConnections', 16384, 1024);
    expect(w).toContain('listen.maxConnections 16384');
    expect(w).toContain('open-file limit 1024');
    expect(w).toContain('EMFILE');
  });

  async function startUnder(limit: number, maxConnections: number): Promise<string> {
    const config = join(dir, `v${limit}-${maxConnections}.yaml`);
    writeFileSync(config, `trustDomain: example.org\nlisten: { address: 127.0.0.1, port: 0, maxConnections: ${maxConnections} }\nadminSocket: ${join(dir, `a${limit}-${maxConnections}.sock`)}\ndataDir: ${join(dir, `d${limit}-${maxConnections}`)}\nlogLevel: warn\nnodeAttestors: { join_token: {} }\n`);
    return startupOutputUnder(root, config, limit);
  }

  it('a verifier under a limit of 1,024 with the default cap of 16,384 says so at start; under 20,000 with a cap of 1,000 it does not', async () => {
    const low = await startUnder(1024, 16384);
    expect(low).toContain('verifier.open_file_limit_low');
    expect(low).toContain('listen.maxConnections 16384 does not fit under the open-file limit 1024');
    const fine = await startUnder(20000, 1000);
    expect(fine).not.toContain('open_file_limit_low');
  }, 60_000);
});
