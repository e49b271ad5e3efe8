/**
 * Flipping any single byte of a real document never yields acceptance, even with allowDebug and no
 * freshness check: every position of marlin-aws.cbor (a second mask on every fourth), and a seeded sample
 * of 600 (position, mask) pairs of evervault-beta-valid.cbor spread over header, payload,
 * certificates and signature. Every rejection is a SigilError with a nitro.* code.
 */
import { readFileSync } from 'node:fs';
import { decode } from 'cbor2';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { NitroCertCache } from '../../src/nitro/certs.js';
import { verifyNitroDocument } from '../../src/nitro/verify.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();

function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function outcome(doc: Buffer, at: Date, cache: NitroCertCache): string {
  try {
    verifyNitroDocument(doc, { at, allowDebug: true, cache });
    return 'accepted';
  } catch (e) {
    if (!(e instanceof SigilError)) return `raw exception: ${String(e)}`;
    if (!e.code.startsWith('nitro.')) return `non-nitro code ${e.code}`;
    return e.code;
  }
}

/** Byte ranges of the regions of a document, for reporting where a sample landed. */
function regions(doc: Buffer): { name: string; start: number; end: number }[] {
  const cose = decode(doc, { preferMap: true }) as Uint8Array[];
  const payload = cose[2] as Uint8Array;
  const sig = cose[3] as Uint8Array;
  const payloadStart = doc.indexOf(Buffer.from(payload));
  const sigStart = doc.length - sig.length;
  const out = [
    { name: 'header', start: 0, end: payloadStart },
    { name: 'signature', start: sigStart, end: doc.length },
  ];
  const p = decode(payload, { preferMap: true }) as Map<string, unknown>;
  const certs = [p.get('certificate') as Uint8Array, ...(p.get('cabundle') as Uint8Array[])];
  for (const c of certs) {
    const s = doc.indexOf(Buffer.from(c));
    out.push({ name: 'certificate', start: s, end: s + c.length });
  }
  out.push({ name: 'payload', start: payloadStart, end: sigStart });
  return out;
}

describe.skipIf(!have)('single-byte mutations of real documents', () => {
  it('every position of marlin-aws.cbor (one mask each, a second on every 4th)', () => {
    const doc = readFileSync(td('nitro', 'marlin-aws.cbor'));
    const at = new Date('2024-12-13T07:37:58.960Z');
    const cache = new NitroCertCache();
    expect(outcome(doc, at, cache)).toBe('accepted');
    const codes = new Map<string, number>();
    for (let i = 0; i < doc.length; i++) {
      for (const mask of i % 4 === 0 ? [0x01, 0xa5] : [0x80]) {
        const m = Buffer.from(doc);
        m[i] = (m[i] as number) ^ mask;
        const o = outcome(m, at, cache);
        if (o === 'accepted' || !o.startsWith('nitro.')) throw new Error(`flip at ${i} mask ${mask.toString(16)}: ${o}`);
        codes.set(o, (codes.get(o) ?? 0) + 1);
      }
    }
    // the signature and the CBOR decoder both did real work
    expect(codes.get('nitro.signature_invalid') ?? 0).toBeGreaterThan(1000);
    expect([...codes.values()].reduce((a, b) => a + b, 0)).toBe(doc.length + Math.ceil(doc.length / 4));
    expect(codes.get('nitro.cbor_invalid') ?? 0).toBeGreaterThan(0);
  }, 60_000);

  it('600 seeded samples of evervault-beta-valid.cbor over header, payload, certificates and signature', () => {
    const doc = readFileSync(td('nitro', 'evervault-beta-valid.cbor'));
    const at = new Date('2022-10-13T08:58:02.136Z');
    const cache = new NitroCertCache();
    expect(outcome(doc, at, cache)).toBe('accepted');
    const rs = regions(doc);
    const rnd = mulberry32(0x5197);
    const hitRegions = new Map<string, number>();
    for (let n = 0; n < 600; n++) {
      // pick a region first so small regions (header, signature) get samples too
      const r = rs[Math.floor(rnd() * rs.length)] as { name: string; start: number; end: number };
      const pos = r.start + Math.floor(rnd() * (r.end - r.start));
      const mask = 1 + Math.floor(rnd() * 255);
      const m = Buffer.from(doc);
      m[pos] = (m[pos] as number) ^ mask;
      const o = outcome(m, at, cache);
      if (o === 'accepted' || !o.startsWith('nitro.')) throw new Error(`flip at ${pos} (${r.name}) mask ${mask.toString(16)}: ${o}`);
      hitRegions.set(r.name, (hitRegions.get(r.name) ?? 0) + 1);
    }
    for (const name of ['header', 'payload', 'certificate', 'signature']) expect(hitRegions.get(name) ?? 0).toBeGreaterThan(20);
  }, 60_000);
});
