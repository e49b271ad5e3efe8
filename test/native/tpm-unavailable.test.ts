/**
 * What tpmAvailable()/openTpm say when the TPM addon cannot be used. Each case points
 * SIGIL_NATIVE_DIR at a prepared folder and imports a fresh copy of src/native/tpm.ts.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';

type TpmModule = typeof import('../../src/native/tpm.js');

const dirs: string[] = [];
const prev = process.env.SIGIL_NATIVE_DIR;

async function freshTpm(nativeDir: string): Promise<TpmModule> {
  process.env.SIGIL_NATIVE_DIR = nativeDir;
  vi.resetModules();
  return import('../../src/native/tpm.js');
}

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'sigil-notpm-'));
  dirs.push(d);
  return d;
}

afterEach(() => {
  if (prev === undefined) delete process.env.SIGIL_NATIVE_DIR;
  else process.env.SIGIL_NATIVE_DIR = prev;
  vi.resetModules();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function openError(m: TpmModule): Promise<{ name: string; code: string; message: string }> {
  const err = await m.openTpm('swtpm:host=127.0.0.1,port=2321').then(
    () => undefined,
    (e: unknown) => e,
  );
  // A fresh module graph has its own SigilError class: match on name and code.
  expect(err).toMatchObject({ name: 'SigilError', code: 'native.tpm_unavailable' });
  return err as { name: string; code: string; message: string };
}

describe('TPM support unavailable', () => {
  it('explains a missing addon file', async () => {
    const m = await freshTpm(tempDir());
    const a = m.tpmAvailable();
    expect(a.ok).toBe(false);
    const reason = a.ok ? '' : a.reason;
    expect(reason).toMatch(/sigil_tpm\.node was not built/);
    expect(reason).toMatch(/libtss2-dev/);
    expect(reason).toMatch(/npm rebuild sigil/);
    expect((await openError(m)).message).toBe(reason);
    expect(m.decodeTpmRc(0x000a000a)).toBeNull();
  });

  it('repeats the build script\'s reason when the build left one', async () => {
    const d = tempDir();
    writeFileSync(join(d, 'sigil_tpm.disabled'), 'pkg-config cannot find tss2-esys (Debian/Ubuntu: apt-get install libtss2-dev)\n');
    const m = await freshTpm(d);
    const a = m.tpmAvailable();
    expect(a).toEqual({ ok: false, reason: 'the TPM addon was not built: pkg-config cannot find tss2-esys (Debian/Ubuntu: apt-get install libtss2-dev)' });
    expect((await openError(m)).message).toContain('pkg-config cannot find tss2-esys');
  });

  it('names the missing shared library when the addon cannot be loaded', async () => {
    if (spawnSync('sh', ['-c', 'command -v cc']).status !== 0) return; // needs a C compiler to fake the addon
    const d = tempDir();
    // A tiny library whose soname does not exist at run time, and an "addon" that needs it.
    writeFileSync(join(d, 'lib.c'), 'int sigil_fake(void) { return 1; }\n');
    writeFileSync(join(d, 'addon.c'), 'extern int sigil_fake(void); int sigil_use(void) { return sigil_fake(); }\n');
    const cc = (args: string[]): void => {
      const r = spawnSync('cc', args, { cwd: d, encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`cc ${args.join(' ')} failed: ${r.stderr}`);
    };
    cc(['-shared', '-fPIC', '-o', 'libtss2-sigiltest.so', '-Wl,-soname,libtss2-sigiltest.so.0', 'lib.c']);
    cc(['-shared', '-fPIC', '-o', 'sigil_tpm.node', 'addon.c', '-L.', '-ltss2-sigiltest']);
    rmSync(join(d, 'libtss2-sigiltest.so'));
    const m = await freshTpm(d);
    const a = m.tpmAvailable();
    expect(a.ok).toBe(false);
    const reason = a.ok ? '' : a.reason;
    expect(reason).toBe('libtss2-sigiltest.so.0 not found: install the tpm2-tss library that provides it (Debian: libtss2-dev) and rebuild with `npm rebuild sigil`');
    expect((await openError(m)).message).toBe(reason);
  });
});
