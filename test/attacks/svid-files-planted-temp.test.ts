/**
 * `sigil svid fetch --write DIR` wrote the private key to `DIR/key.pem.<pid>.tmp` with
 * writeFileSync (no O_EXCL) and chmod'ed it afterwards. In a directory another user can write,
 * that user creates the temp name first (the pid is easy to guess), keeps it open, and reads the
 * key that lands in their own file; the chmod that follows fails on a file they own, too late.
 * Now the temp file is created O_EXCL under a random name (util/atomic-file.ts), so a planted file
 * is never written to.
 */
import { chmodSync, chownSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSvidFiles } from '../../src/cli/svid-commands.js';

const OTHER = 65534;
const isRoot = process.geteuid?.() === 0;
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-svidfiles-'));
  chmodSync(dir, 0o1777); // a shared directory (sticky, as /tmp)
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const svid = {
  spiffeId: 'spiffe://example.org/w',
  chain: [Buffer.from('leaf-der')],
  keyPkcs8Der: Buffer.from('THE-SECRET-KEY-BYTES'),
  bundle: [Buffer.from('ca-der')],
  hint: '',
};

describe.skipIf(!isRoot)('svid files in a directory others can write', () => {
  it("a temp file planted by another user never receives the key", () => {
    const planted = join(dir, `key.pem.${process.pid}.tmp`);
    writeFileSync(planted, '');
    chownSync(planted, OTHER, OTHER);
    chmodSync(planted, 0o666);
    try {
      writeSvidFiles(dir, svid);
    } catch {
      // refusing is fine too; what matters is where the key went
    }
    expect(readFileSync(planted, 'utf8')).not.toContain(svid.keyPkcs8Der.toString('base64'));
    expect(readFileSync(planted, 'utf8')).toBe('');
  });

  it('key.pem ends up 0600 and owned by the caller even where a 0644 key.pem was', () => {
    const d = mkdtempSync(join(tmpdir(), 'sigil-svidfiles2-'));
    try {
      writeFileSync(join(d, 'key.pem'), 'old', { mode: 0o644 });
      chmodSync(join(d, 'key.pem'), 0o644);
      writeSvidFiles(d, svid);
      const st = statSync(join(d, 'key.pem'));
      expect(st.mode & 0o777).toBe(0o600);
      expect(st.uid).toBe(process.geteuid?.());
      expect(readdirSync(d).sort()).toEqual(['bundle.pem', 'key.pem', 'svid.pem']);
    } finally {
      rmSync(d, { recursive: true, force: true });
    }
  });
});
