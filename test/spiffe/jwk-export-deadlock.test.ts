/**
 * Node 20 can deadlock exporting a JWK of a key straight from generateKeyPair[Sync]: the export
 * holds a lock of the key's data while allocating, and a garbage collection there that frees the
 * key-generation job takes the same lock (a CI run hung in `KeyGenJob::~KeyGenJob` under
 * `ExportJWKRsaKey`). exportJwk (src/spiffe/keys.ts) exports from a key object made from DER. With
 * a 1-MiB young generation (a collection every few exports) 8,000 direct exports hung in 3 of 4
 * runs here; this runs exportJwk the same way in a child process, which must finish.
 */
import { spawnSync } from 'node:child_process';
import { resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(__dirname, '../..');

describe('exportJwk', () => {
  it('exports JWKs of freshly generated keys under constant garbage collection without hanging', () => {
    const code = `
      import { generateKeyPairSync } from 'node:crypto';
      import { exportJwk } from './src/spiffe/keys.ts';
      for (let i = 0; i < 8000; i++) {
        const { publicKey, privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
        if (exportJwk(i % 2 ? publicKey : privateKey).kty !== 'EC') throw new Error('not an EC JWK');
      }
      console.log('exported');
    `;
    const r = spawnSync(process.execPath, ['--max-semi-space-size=1', '--import', 'tsx', '--input-type=module', '-e', code], { cwd: root, encoding: 'utf8', timeout: 90_000, killSignal: 'SIGKILL' });
    expect(r.signal, `the child was killed after 90 s (a deadlock): ${r.stderr}`).toBeNull();
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe('exported');
  }, 120_000);
});
