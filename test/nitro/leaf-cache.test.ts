/**
 * The verified-leaf cache (issue 15 item 4): the same enclave's next document costs one P-384
 * verification (its COSE signature); validity is still judged at every verification time; another
 * leaf — same subject, or the same bytes under another issuer — is verified in full; the cache is
 * bounded. The whole verified path is remembered with its own copies of the certificates' bytes
 * and used only for the same bytes under the same pin, inside the path's validity window.
 * node:crypto's verify is counted to see what each verification costs.
 */
import { describe, expect, it, vi } from 'vitest';
import { NitroCertCache } from '../../src/nitro/certs.js';
import { verifyNitroDocument } from '../../src/nitro/verify.js';
import { createHash } from 'node:crypto';
import { makeCa, makeDocument, makeLeaf, makePki, type TestPki } from './fixtures.js';

const counter = vi.hoisted(() => ({ verifies: 0 }));
vi.mock('node:crypto', async (importOriginal) => {
  const orig = await importOriginal<typeof import('node:crypto')>();
  const verify = ((...args: Parameters<typeof orig.verify>) => {
    counter.verifies++;
    return orig.verify(...args);
  }) as typeof orig.verify;
  return { ...orig, verify, default: { ...orig, verify } };
});

const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
const at = new Date(T0);

function verifiesDuring(fn: () => unknown): number {
  const before = counter.verifies;
  fn();
  return counter.verifies - before;
}

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
  return 'accepted';
}

describe('Nitro verified-leaf cache', () => {
  it('a repeated document costs one verification (COSE); a fresh cache costs the whole path', async () => {
    const pki = await makePki({ name: 'leafcache' });
    const leaf = await makeLeaf(pki);
    const cache = new NitroCertCache();
    const docs = [0, 1, 2].map((i) => makeDocument(pki, leaf, { timestamp: T0 - i * 1000 }));
    const opts = { at, rootSha256: pki.rootSha256, cache };
    // First: each intermediate, the leaf and the COSE signature.
    expect(verifiesDuring(() => verifyNitroDocument(docs[0]!, opts))).toBe(pki.intermediates.length + 2);
    // Same enclave, other documents (other timestamps): only the COSE signature.
    for (const d of docs) expect(verifiesDuring(() => verifyNitroDocument(d, opts))).toBe(1);
    expect(cache.size.leaf).toBe(1);
  });

  it('a cache hit still refuses the leaf outside its validity at a later (or earlier) verification time', async () => {
    const pki = await makePki({ name: 'leafcache-expiry' });
    const leaf = await makeLeaf(pki, { notBefore: new Date(T0 - 3600_000), notAfter: new Date(T0 + 3600_000) });
    const cache = new NitroCertCache();
    const doc = makeDocument(pki, leaf, { timestamp: T0 });
    const opts = (when: number) => ({ at: new Date(when), rootSha256: pki.rootSha256, cache, maxFutureSkewSeconds: 86_400 * 365 });
    expect(codeOf(() => verifyNitroDocument(doc, opts(T0)))).toBe('accepted');
    const misses = cache.misses;
    expect(codeOf(() => verifyNitroDocument(doc, opts(T0 + 3600_000 + 1)))).toBe('nitro.cert_expired');
    expect(codeOf(() => verifyNitroDocument(doc, opts(T0 - 3600_000 - 1)))).toBe('nitro.cert_not_yet_valid');
    expect(cache.misses).toBe(misses); // the refusals came from cached entries, not re-parsed ones
    expect(codeOf(() => verifyNitroDocument(doc, opts(T0 + 60_000)))).toBe('accepted');
  });

  it('a different leaf with the same subject and issuer name is not a hit: its signature is checked', async () => {
    const pki = await makePki({ name: 'leafcache-subject' });
    const issuer = pki.intermediates[pki.intermediates.length - 1]!;
    const cache = new NitroCertCache();
    const genuine = await makeLeaf(pki);
    expect(codeOf(() => verifyNitroDocument(makeDocument(pki, genuine, { timestamp: T0 }), { at, rootSha256: pki.rootSha256, cache }))).toBe('accepted');
    // An attacker's CA signs a leaf with the same subject, naming the genuine intermediate as issuer.
    const rogue = await makeCa(null, { name: 'rogue' });
    const forged = await makeLeaf(pki, { issuerName: issuer.cert.subject }, rogue);
    const forgedDoc = makeDocument(pki, forged, { timestamp: T0 });
    expect(codeOf(() => verifyNitroDocument(forgedDoc, { at, rootSha256: pki.rootSha256, cache }))).toBe('nitro.cert_signature_invalid');
    // And a genuine second leaf of the same subject is a miss that verifies in full.
    const second = await makeLeaf(pki);
    expect(verifiesDuring(() => verifyNitroDocument(makeDocument(pki, second, { timestamp: T0 }), { at, rootSha256: pki.rootSha256, cache }))).toBe(2);
    expect(cache.size.leaf).toBe(2);
  });

  it('the same leaf bytes under another chain (same names, other keys) are not a hit', async () => {
    const a = await makePki({ name: 'leafcache-twin' });
    const b = await makePki({ name: 'leafcache-twin' });
    const cache = new NitroCertCache();
    const leaf = await makeLeaf(a);
    expect(codeOf(() => verifyNitroDocument(makeDocument(a, leaf, { timestamp: T0 }), { at, rootSha256: a.rootSha256, cache }))).toBe('accepted');
    // A's leaf presented with B's cabundle, B's root pinned: the cached entry belongs to A's issuer.
    const doc = makeDocument(b, leaf, { timestamp: T0 });
    expect(codeOf(() => verifyNitroDocument(doc, { at, rootSha256: b.rootSha256, cache }))).toBe('nitro.cert_signature_invalid');
  });

  it('the cache is bounded: least recently used leaves go first and are verified in full again', async () => {
    const pki = await makePki({ name: 'leafcache-bound' });
    const cache = new NitroCertCache(16, 3);
    const leaves = await Promise.all([0, 1, 2, 3, 4].map(() => makeLeaf(pki)));
    const docs = leaves.map((l) => makeDocument(pki, l, { timestamp: T0 }));
    const opts = { at, rootSha256: pki.rootSha256, cache };
    for (const d of docs) verifyNitroDocument(d, opts);
    expect(cache.size.leaf).toBe(3);
    // docs[4], [3], [2] are cached; [0] was evicted.
    expect(verifiesDuring(() => verifyNitroDocument(docs[4]!, opts))).toBe(1);
    expect(verifiesDuring(() => verifyNitroDocument(docs[0]!, opts))).toBe(2);
    expect(cache.size.leaf).toBe(3);
    expect(cache.size.ca).toBe(pki.intermediates.length + 1);
    expect(() => new NitroCertCache(16, 0)).toThrow(/positive integer/);
  });

  it('a leaf that failed is never cached: the same document fails again at full cost', async () => {
    const pki = await makePki({ name: 'leafcache-fail' });
    const rogue = await makeCa(null, { name: 'rogue-2' });
    const forged = await makeLeaf(pki, { issuerName: pki.intermediates[pki.intermediates.length - 1]!.cert.subject }, rogue);
    const cache = new NitroCertCache();
    const doc = makeDocument(pki, forged, { timestamp: T0 });
    for (let i = 0; i < 2; i++) expect(codeOf(() => verifyNitroDocument(doc, { at, rootSha256: pki.rootSha256, cache }))).toBe('nitro.cert_signature_invalid');
    expect(cache.size.leaf).toBe(0);
  });

  it('a cached path keeps its own bytes: overwriting the caller\'s buffer after verification changes nothing', async () => {
    const pki = await makePki({ name: 'pathcache-copy' });
    const leaf = await makeLeaf(pki);
    const cache = new NitroCertCache();
    const doc = makeDocument(pki, leaf, { timestamp: T0 });
    const callers = Buffer.from(doc);
    expect(codeOf(() => verifyNitroDocument(callers, { at, rootSha256: pki.rootSha256, cache }))).toBe('accepted');
    callers.fill(0); // e.g. a pooled network buffer reused for the next request
    expect(verifiesDuring(() => verifyNitroDocument(Buffer.from(doc), { at, rootSha256: pki.rootSha256, cache }))).toBe(1);
    expect(cache.pathHits).toBe(1);
  });

  it('a cached path counts only under the same pin and with the same cabundle bytes', async () => {
    const pki = await makePki({ name: 'pathcache-pin' });
    const other = await makePki({ name: 'pathcache-pin-other' });
    const leaf = await makeLeaf(pki);
    const cache = new NitroCertCache();
    const doc = makeDocument(pki, leaf, { timestamp: T0 });
    expect(codeOf(() => verifyNitroDocument(doc, { at, rootSha256: pki.rootSha256, cache }))).toBe('accepted');
    // The same document under another pin: its root is not that pin.
    expect(codeOf(() => verifyNitroDocument(doc, { at, rootSha256: other.rootSha256, cache }))).toBe('nitro.untrusted_root');
    // The same leaf with its issuer left out of the cabundle: verified step by step, and refused.
    const misses = cache.pathMisses;
    const short = makeDocument(pki, leaf, { timestamp: T0, cabundle: pki.cabundle.slice(0, -1) });
    expect(codeOf(() => verifyNitroDocument(short, { at, rootSha256: pki.rootSha256, cache }))).toBe('nitro.chain_invalid');
    expect(cache.pathMisses).toBe(misses + 1);
    expect(cache.pathHits).toBe(0);
  });

  it('a cached path is used only inside the validity of every certificate in it (an intermediate expiring first)', async () => {
    const root = await makeCa(null, { name: 'CN=pathcache-window.nitro-enclaves, O=Sigil Test, C=US' });
    const int = await makeCa(root, { name: 'CN=pathcache-window-int.nitro-enclaves, O=Sigil Test, C=US', notAfter: new Date(T0 + 3600_000) });
    const pki: TestPki = {
      root,
      intermediates: [int],
      rootPem: root.cert.toString('pem'),
      rootSha256: createHash('sha256').update(root.der).digest('hex'),
      cabundle: [root.der, int.der],
    };
    const leaf = await makeLeaf(pki); // valid until 2040
    const cache = new NitroCertCache();
    const doc = makeDocument(pki, leaf, { timestamp: T0 });
    const opts = (when: number) => ({ at: new Date(when), rootSha256: pki.rootSha256, cache, maxFutureSkewSeconds: 86_400 * 365 });
    expect(codeOf(() => verifyNitroDocument(doc, opts(T0)))).toBe('accepted');
    expect(codeOf(() => verifyNitroDocument(doc, opts(T0 + 3600_000)))).toBe('accepted'); // notAfter itself is inside
    expect(cache.pathHits).toBe(1);
    let message = '';
    try {
      verifyNitroDocument(doc, opts(T0 + 3600_000 + 1));
    } catch (e) {
      message = `${(e as { code?: string }).code}: ${(e as Error).message}`;
    }
    expect(message).toMatch(/^nitro\.cert_expired: cabundle\[1\]/);
    expect(cache.pathHits).toBe(1);
  });
});
