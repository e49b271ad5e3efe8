/**
 * Attack review (TDX PCK chain cache): verified PCK chains were cached under their PEM text, and
 * the PEM reader accepts blank lines between blocks, so one public genuine chain padded to the
 * quote's 64 KiB limit in 1024 different ways held ~64 MiB of attacker text in the cache (and
 * evicted every real platform). The chain is verified before the quote signature, so this needs no
 * TD. The cache must key on a digest of the chain, not the text.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { clearTdxCaches, verifyTdxQuote } from '../../src/tdx/verify.js';
import { T0, makeTdxQuote, makeTdxTestPki } from '../tdx/synthetic.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const pki = makeTdxTestPki();

function heapAfterGc(): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

describe('tdx PCK chain cache holds digests, not attacker-padded PEM text', () => {
  it('256 padded copies of one genuine chain do not keep their padding', () => {
    clearTdxCaches();
    const base = heapAfterGc();
    const PAD = 56 * 1024;
    for (let i = 0; i < 256; i++) {
      // Same certificates; the text differs only in where the blank lines between blocks are.
      const [a, b, c] = pki.pckChainPem.split('-----END CERTIFICATE-----\n');
      const pem = `${a}-----END CERTIFICATE-----\n${'\n'.repeat(i + 1)}${b}-----END CERTIFICATE-----\n${'\n'.repeat(PAD - i)}${c}-----END CERTIFICATE-----\n`;
      const q = makeTdxQuote(pki, { pckChainPem: pem });
      q[200]! ^= 1; // the quote signature fails: only the chain (verified first) is cached
      try {
        verifyTdxQuote(q, undefined, { now: T0, rootSha256: pki.rootSha256, allowUnknownTcb: true });
      } catch (e) {
        expect(e).toBeInstanceOf(SigilError);
        expect((e as SigilError).code).toBe('tdx.quote_signature_invalid');
      }
    }
    const held = heapAfterGc() - base;
    clearTdxCaches();
    // 256 × 56 KiB = 14 MiB of padding when kept; the digests and chains are well under 6 MiB.
    expect(held).toBeLessThan(6 * 1024 * 1024);
  }, 60_000);
});
