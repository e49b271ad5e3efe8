/**
 * Attack review: a SHA-1 link verified once under the TPM EK path's list must not be reused by a
 * caller whose list has no SHA-1 through a shared LinkCache (the cache key is the two DER hashes
 * only, so the algorithm check has to come before the cache is consulted), nor through the leaf
 * cache, nor by the self-signed anchor check.
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { EK_SIGNATURE_ALGORITHMS } from '../../src/tpm/ekcert.js';
import { LinkCache, parseCertificateAnyKey, verifyChain, DEFAULT_SIG_ALG_OIDS } from '../../src/x509/index.js';
import { EXT, buildCert, name, utcTime, type SigKind } from '../fixtures/tpm-ek/builder.js';

const AT = new Date('2025-06-01T00:00:00Z');

function code(f: () => unknown): string {
  try {
    f();
    return 'ok';
  } catch (e) {
    if (e instanceof SigilError) return e.code;
    throw e;
  }
}

function chain(sig: SigKind, rsa: boolean): { root: Buffer; ca: Buffer; leaf: Buffer } {
  const gen = (): ReturnType<typeof generateKeyPairSync> => (rsa ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ec', { namedCurve: 'P-256' }));
  const rk = gen();
  const ck = gen();
  const lk = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rootName = name([[['2.5.4.3', 0x0c, `Review Root ${sig}`]]]);
  const caName = name([[['2.5.4.3', 0x0c, `Review CA ${sig}`]]]);
  const base = { notBefore: utcTime('200101000000Z'), notAfter: utcTime('400101000000Z') };
  const spki = (k: { publicKey: { export: (o: { type: 'spki'; format: 'der' }) => Buffer } }): Buffer => k.publicKey.export({ type: 'spki', format: 'der' });
  const root = buildCert({ serial: Buffer.from([1]), sig, issuer: rootName, subject: rootName, spki: spki(rk as never), extensions: [EXT.caBasicConstraints(), EXT.caKeyUsage()], ...base }, rk.privateKey as never);
  const ca = buildCert({ serial: Buffer.from([2]), sig, issuer: rootName, subject: caName, spki: spki(ck as never), extensions: [EXT.caBasicConstraints(), EXT.caKeyUsage()], ...base }, rk.privateKey as never);
  const leaf = buildCert({ serial: Buffer.from([3]), sig, issuer: caName, subject: name([[['2.5.4.3', 0x0c, 'leaf']]]), spki: spki(lk as never), extensions: [EXT.leafBasicConstraints()], ...base }, ck.privateKey as never);
  return { root, ca, leaf };
}

describe('review: SHA-1 links remembered under the EK list are not reused without it', () => {
  for (const [sig, rsa] of [['rsa-sha1', true], ['ecdsa-sha1', false]] as const) {
    it(`${sig}: shared links and leafLinks, anchor self-signature`, () => {
      const { root, ca, leaf } = chain(sig, rsa);
      const p = (d: Buffer): ReturnType<typeof parseCertificateAnyKey> => parseCertificateAnyKey(d, { algorithms: EK_SIGNATURE_ALGORITHMS, pss: true });
      const path = [p(leaf), p(ca), p(root)];
      const links = new LinkCache();
      const leafLinks = new LinkCache();
      expect(code(() => verifyChain(path, { at: AT, links, leafLinks, anchorSelfSigned: true, algorithms: EK_SIGNATURE_ALGORITHMS }))).toBe('ok');
      expect(links.size).toBe(2); // root self-link and ca → root
      expect(leafLinks.size).toBe(1);
      // The same parsed certificates and the same caches, under a list without SHA-1 / no list.
      for (const algorithms of [undefined, DEFAULT_SIG_ALG_OIDS]) {
        const opts = { at: AT, links, leafLinks, ...(algorithms ? { algorithms } : {}) };
        expect(code(() => verifyChain(path, { ...opts, anchorSelfSigned: true }))).toBe('x509.unsupported_algorithm');
        expect(code(() => verifyChain(path, opts))).toBe('x509.unsupported_algorithm');
        expect(code(() => verifyChain(path.slice(0, 2), opts))).toBe('x509.unsupported_algorithm');
      }
      // Still good under the EK list (the refusals above did not damage the cache).
      expect(code(() => verifyChain(path, { at: AT, links, leafLinks, algorithms: EK_SIGNATURE_ALGORITHMS }))).toBe('ok');
    });
  }
});
