/**
 * Real Nitro attestation documents from ../shared/testdata/nitro (see its README), each verified at
 * its own timestamp with the outcome the README gives. Selectors are compared with values decoded
 * here independently (plain cbor2 decode, no strict options, no Sigil code).
 */
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { decode } from 'cbor2';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { AWS_NITRO_ROOT_G1_PEM, AWS_NITRO_ROOT_G1_SHA256 } from '../../src/nitro/aws-root.js';
import { NitroCertCache } from '../../src/nitro/certs.js';
import { nitroClaims, nitroSelectors, verifyNitroDocument, type NitroVerifyOptions } from '../../src/nitro/verify.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();

interface Case {
  file: string;
  at: string;
  expect: 'accept' | 'debug' | 'untrusted';
  pcrsSet: number[];
}

const CASES: Case[] = [
  { file: 'marlin-aws.cbor', at: '2024-12-13T07:37:58.960Z', expect: 'accept', pcrsSet: [0, 1, 2, 4] },
  { file: 'evervault-beta-valid.cbor', at: '2022-10-13T08:58:02.136Z', expect: 'accept', pcrsSet: [0, 1, 2, 3, 4, 8] },
  { file: 'evervault-debug.b64', at: '2023-09-18T15:03:30.860Z', expect: 'debug', pcrsSet: [3, 4] },
  { file: 'marlin-custom-root.cbor', at: '2024-12-13T09:05:45.008Z', expect: 'untrusted', pcrsSet: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] },
];

function load(file: string): Buffer {
  const raw = readFileSync(td('nitro', file));
  return file.endsWith('.b64') ? Buffer.from(raw.toString('latin1').trim(), 'base64') : raw;
}

/** Independent, permissive decode of the payload. */
function plainPayload(doc: Buffer): Map<string, unknown> {
  const cose = decode(doc, { preferMap: true }) as unknown[];
  return decode(cose[2] as Uint8Array, { preferMap: true }) as Map<string, unknown>;
}

function rejectCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
  throw new Error('expected rejection');
}

describe.skipIf(!have)('real Nitro documents', () => {
  it('built-in AWS root PEM matches the pin and the testdata root', () => {
    const der = new X509Certificate(AWS_NITRO_ROOT_G1_PEM).raw;
    expect(createHash('sha256').update(der).digest('hex')).toBe(AWS_NITRO_ROOT_G1_SHA256);
    const tdDer = new X509Certificate(readFileSync(td('nitro', 'aws-nitro-root-g1.pem'))).raw;
    expect(tdDer.equals(der)).toBe(true);
    expect(AWS_NITRO_ROOT_G1_SHA256).toBe('641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b');
  });

  for (const c of CASES) {
    it(`${c.file}: ${c.expect}`, () => {
      const doc = load(c.file);
      const at = new Date(c.at);
      const plain = plainPayload(doc);
      // The README's timestamp is the document's own.
      expect(plain.get('timestamp')).toBe(at.getTime());
      const opts: NitroVerifyOptions = { at, cache: new NitroCertCache() };
      if (c.expect === 'untrusted') {
        expect(rejectCode(() => verifyNitroDocument(doc, opts))).toBe('nitro.untrusted_root');
        expect(rejectCode(() => verifyNitroDocument(doc, { ...opts, allowDebug: true }))).toBe('nitro.untrusted_root');
        return;
      }
      if (c.expect === 'debug') {
        expect(rejectCode(() => verifyNitroDocument(doc, opts))).toBe('nitro.debug_enclave');
        opts.allowDebug = true;
      }
      const v = verifyNitroDocument(doc, opts);
      const pcrs = plain.get('pcrs') as Map<number, Uint8Array>;
      const moduleId = plain.get('module_id') as string;
      const expected: string[] = [];
      for (const [i, val] of [...pcrs.entries()].sort((a, b) => a[0] - b[0])) {
        if (val.some((b) => b !== 0)) expected.push(`aws_nitro:pcr${i}:${Buffer.from(val).toString('hex')}`);
      }
      expect([...pcrs.keys()].filter((i) => (pcrs.get(i) as Uint8Array).some((b) => b !== 0))).toEqual(c.pcrsSet);
      expected.push(`aws_nitro:module_id:${moduleId}`);
      expected.push(`aws_nitro:instance_id:${moduleId.split('-enc')[0]}`);
      expected.push(`aws_nitro:debug:${c.expect === 'debug'}`);
      expect(nitroSelectors(v)).toEqual(expected);
      expect(v.moduleId).toBe(moduleId);
      expect(v.timestamp.getTime()).toBe(at.getTime());
      expect(v.rootSha256).toBe(AWS_NITRO_ROOT_G1_SHA256);
      const claims = nitroClaims(v);
      expect(JSON.parse(JSON.stringify(claims))).toEqual(claims);
      expect(claims.freshness).toMatch(/not checked/);
      const nonce = plain.get('nonce');
      expect(claims.nonce).toBe(nonce instanceof Uint8Array ? Buffer.from(nonce).toString('hex') : null);
    });
  }

  it('marlin-custom-root verifies when its own root is the pinned anchor', () => {
    const doc = load('marlin-custom-root.cbor');
    const root = (plainPayload(doc).get('cabundle') as Uint8Array[])[0] as Uint8Array;
    const pin = createHash('sha256').update(root).digest('hex');
    const v = verifyNitroDocument(doc, { at: new Date('2024-12-13T09:05:45.008Z'), rootSha256: pin, cache: new NitroCertCache() });
    expect(v.rootSha256).toBe(pin);
    expect(v.debug).toBe(false); // PCR0 is zero but PCR1 and PCR2 are not
  });

  it('nonce binding and freshness on a real document', () => {
    const doc = load('evervault-beta-valid.cbor');
    const at = new Date('2022-10-13T08:58:02.136Z');
    const nonce = Buffer.from(plainPayload(doc).get('nonce') as Uint8Array);
    expect(verifyNitroDocument(doc, { at, expectedNonce: nonce, maxAgeSeconds: 300 }).nonceChecked).toBe(true);
    const wrong = Buffer.from(nonce);
    wrong[0] = (wrong[0] as number) ^ 1;
    expect(rejectCode(() => verifyNitroDocument(doc, { at, expectedNonce: wrong }))).toBe('nitro.nonce_mismatch');
    expect(rejectCode(() => verifyNitroDocument(doc, { at, expectedNonce: nonce.subarray(1) }))).toBe('nitro.nonce_mismatch');
    // public_key is absent in this document
    expect(rejectCode(() => verifyNitroDocument(doc, { at, expectedPublicKey: Buffer.alloc(91) }))).toBe('nitro.public_key_mismatch');
    // 5 minutes + 1 s later the document is stale (future timestamps: see synthetic tests, as the
    // real leaf certificate is issued only moments before its document)
    expect(verifyNitroDocument(doc, { at: new Date(at.getTime() + 300_000), maxAgeSeconds: 300 }).freshnessChecked).toBe(true);
    expect(rejectCode(() => verifyNitroDocument(doc, { at: new Date(at.getTime() + 301_000), maxAgeSeconds: 300 }))).toBe('nitro.document_stale');
  });

  it('certificate validity is checked at the verification time on every call, cache or not', () => {
    const doc = load('marlin-aws.cbor');
    const cache = new NitroCertCache();
    const at = new Date('2024-12-13T07:37:58.960Z');
    verifyNitroDocument(doc, { at, cache });
    const misses = cache.misses;
    expect(cache.pathHits).toBe(0);
    verifyNitroDocument(doc, { at, cache });
    expect(cache.misses).toBe(misses); // second call: the whole verified path came from the cache
    expect(cache.pathHits).toBe(1);
    // leaf notAfter is 2024-12-13T08:57:45Z; the zonal intermediate expires 2024-12-18T12:51:06Z
    expect(rejectCode(() => verifyNitroDocument(doc, { at: new Date('2024-12-13T09:00:00Z'), cache }))).toBe('nitro.cert_expired');
    expect(rejectCode(() => verifyNitroDocument(doc, { at: new Date('2024-12-13T05:00:00Z'), cache }))).toBe('nitro.cert_not_yet_valid');
    expect(rejectCode(() => verifyNitroDocument(doc, { at: new Date('2025-06-01T00:00:00Z'), cache }))).toBe('nitro.cert_expired');
    // and without --at (now) the old document's certificates are expired, never silently accepted
    expect(rejectCode(() => verifyNitroDocument(doc, { at: new Date() }))).toBe('nitro.cert_expired');
  });

  it('required PCR values', () => {
    const doc = load('marlin-aws.cbor');
    const at = new Date('2024-12-13T07:37:58.960Z');
    const pcrs = plainPayload(doc).get('pcrs') as Map<number, Uint8Array>;
    const pcr0 = Buffer.from(pcrs.get(0) as Uint8Array);
    expect(verifyNitroDocument(doc, { at, expectedPcrs: new Map([[0, pcr0]]) }).pcrs.get(0)?.equals(pcr0)).toBe(true);
    const other = Buffer.from(pcr0);
    other[47] = (other[47] as number) ^ 0x80;
    expect(rejectCode(() => verifyNitroDocument(doc, { at, expectedPcrs: new Map([[0, other]]) }))).toBe('nitro.pcr_mismatch');
    expect(rejectCode(() => verifyNitroDocument(doc, { at, expectedPcrs: new Map([[20, other]]) }))).toBe('nitro.pcr_mismatch');
  });
});
