/**
 * Property-based tests of the Intel TDX quote parser (src/tdx/quote.ts) and the ACPI CCEL table
 * parser (src/tdx/ccel.ts).
 *
 * Quotes are written by the synthetic quote builder (test/tdx/synthetic.ts, v4 and v5, TD report
 * 1.0 and 1.5, signed by a test PKI); the two real quotes of the shared testdata are further bases
 * for the truncation, trailing-byte and mutation properties.
 */
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { CCEL_TABLE_SIZE, parseCcelTable } from '../../src/tdx/ccel.js';
import { INTEL_QE_VENDOR_ID, parseTdxQuote } from '../../src/tdx/quote.js';
import { hasTestdata } from '../support/testdata.js';
import { cosQuote, sprQuote } from '../tdx/helpers.js';
import { makeTdxQuote, makeTdxTestPki, type TdxTestPki } from '../tdx/synthetic.js';
import { bytes, parseOrRefuse, refusedWith, runs } from './support.js';

const TDX = /^tdx\.[a-z_]+$/;

let pki: TdxTestPki;
beforeAll(() => {
  pki = makeTdxTestPki();
});

const quoteArb = fc.record({
  version: fc.constantFrom(4 as const, 5 as const),
  body15: fc.boolean(),
  reportData: bytes(64, 64),
  tdAttributes: bytes(8, 8),
  teeTcbSvn: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 16, maxLength: 16 }),
  mrTd: bytes(48, 48),
  rtmrs: fc.array(bytes(48, 48), { minLength: 4, maxLength: 4 }),
  qeIsvSvn: fc.integer({ min: 0, max: 0xffff }),
  qeAuthData: bytes(0, 128),
});
type QuoteModel = typeof quoteArb extends fc.Arbitrary<infer T> ? T : never;

const make = (m: QuoteModel): Buffer => makeTdxQuote(pki, { ...m, body15: m.version === 5 && m.body15 });

/** A valid quote: a generated one or, with the shared testdata, one of the two real ones. */
const anyQuote = (): fc.Arbitrary<Buffer> => (hasTestdata ? fc.oneof(quoteArb.map(make), fc.constantFrom(sprQuote(), cosQuote())) : quoteArb.map(make));

describe('TDX quote parser', () => {
  it('parse(build(x)) reads back the header, the TD report body, the QE report and the certification data', () => {
    fc.assert(
      fc.property(quoteArb, (m) => {
        const q = parseTdxQuote(make(m));
        const body15 = m.version === 5 && m.body15;
        expect(q.version).toBe(m.version);
        expect(q.body.version).toBe(body15 ? '1.5' : '1.0');
        expect(q.body.reportData.equals(m.reportData)).toBe(true);
        expect(q.body.tdAttributes.equals(m.tdAttributes)).toBe(true);
        expect([...q.body.teeTcbSvn]).toEqual(m.teeTcbSvn);
        expect(q.body.mrTd.equals(m.mrTd)).toBe(true);
        expect(q.body.rtmrs.map((r) => r.toString('hex'))).toEqual(m.rtmrs.map((r) => r.toString('hex')));
        expect(q.body.mrServiceTd !== undefined).toBe(body15);
        expect(q.qeReport.isvSvn).toBe(m.qeIsvSvn);
        expect(q.qeAuthData.equals(m.qeAuthData)).toBe(true);
        expect(q.pckChainPem).toBe(pki.pckChainPem);
        // What the attestation key signed: header (48) ‖ (v5: type u16 ‖ size u32 ‖) body.
        expect(q.signed.length).toBe(48 + (m.version === 5 ? 6 : 0) + (body15 ? 648 : 584));
        expect(q.raw.subarray(0, q.signed.length).equals(q.signed)).toBe(true);
      }),
      runs(60),
    );
  });

  it('every truncation is refused as truncated; trailing bytes are refused as such', () => {
    fc.assert(
      fc.property(anyQuote(), fc.nat(), bytes(1, 16), (quote, cut, extra) => {
        expect(refusedWith(() => parseTdxQuote(quote.subarray(0, cut % quote.length)), TDX)).toBe('tdx.quote_truncated');
        expect(refusedWith(() => parseTdxQuote(Buffer.concat([quote, extra])), TDX)).toBe('tdx.quote_trailing_bytes');
      }),
      runs(200),
    );
  });

  it('the parsed quote is a private copy: changing the input afterwards changes nothing', () => {
    fc.assert(
      fc.property(anyQuote(), (quote) => {
        const input = Buffer.from(quote);
        const q = parseTdxQuote(input);
        const reportData = Buffer.from(q.body.reportData);
        input.fill(0);
        expect(q.raw.equals(quote)).toBe(true);
        expect(q.body.reportData.equals(reportData)).toBe(true);
      }),
      runs(30),
    );
  });

  it('changed bytes give a tdx.* SigilError or a parse; arbitrary bytes give tdx.* only', () => {
    // VERSION 4, ATT_KEY_TYPE 2, TEE_TYPE 0x81, reserved, Intel's QE vendor ID: the junk then meets the later checks.
    const header = Buffer.concat([Buffer.from('040002008100000000000000', 'hex'), Buffer.from(INTEL_QE_VENDOR_ID, 'hex')]);
    fc.assert(
      fc.property(anyQuote(), fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 4 }), bytes(0, 1200), fc.boolean(), (quote, edits, junk, withHeader) => {
        const bad = Buffer.from(quote);
        for (const [pos, v] of edits) bad[pos % bad.length] = v;
        parseOrRefuse(() => parseTdxQuote(bad), TDX);
        parseOrRefuse(() => parseTdxQuote(withHeader ? Buffer.concat([header, junk]) : junk), TDX);
      }),
      runs(300),
    );
  });

  it('a length field that disagrees with the bytes is refused', () => {
    fc.assert(
      fc.property(quoteArb, fc.integer({ min: 1, max: 0xffff }), (m, delta) => {
        const quote = make(m);
        const sigLenAt = 48 + (m.version === 5 ? 6 : 0) + (m.version === 5 && m.body15 ? 648 : 584);
        const bad = Buffer.from(quote);
        bad.writeUInt32LE((bad.readUInt32LE(sigLenAt) + delta) >>> 0, sigLenAt);
        expect(refusedWith(() => parseTdxQuote(bad), TDX)).toBe('tdx.quote_truncated');
        const short = Buffer.from(quote);
        short.writeUInt32LE(short.readUInt32LE(sigLenAt) - Math.min(delta, short.readUInt32LE(sigLenAt)), sigLenAt);
        expect(refusedWith(() => parseTdxQuote(short), TDX)).toBe('tdx.quote_trailing_bytes');
      }),
      runs(60),
    );
  });
});

// ------------------------------------------------------------------ ACPI CCEL table

const tableArb = fc.record({
  revision: fc.integer({ min: 0, max: 255 }),
  oem: bytes(6 + 8 + 4 + 4 + 4, 6 + 8 + 4 + 4 + 4),
  ccSubType: fc.integer({ min: 0, max: 255 }),
  laml: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
  lasa: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
});

/** ACPI CCEL table (ACPI 6.5 §5.2.34): header with checksum, CC type, sub-type, LAML, LASA. */
function writeTable(m: typeof tableArb extends fc.Arbitrary<infer T> ? T : never): Buffer {
  const t = Buffer.alloc(CCEL_TABLE_SIZE);
  t.write('CCEL', 0, 'latin1');
  t.writeUInt32LE(CCEL_TABLE_SIZE, 4);
  t[8] = m.revision;
  m.oem.copy(t, 10); // OEM ID, OEM table ID, OEM revision, creator ID, creator revision
  t[36] = 2; // CC type: TDX
  t[37] = m.ccSubType;
  t.writeBigUInt64LE(m.laml, 40);
  t.writeBigUInt64LE(m.lasa, 48);
  let sum = 0;
  for (const x of t) sum = (sum + x) & 0xff;
  t[9] = (0x100 - sum) & 0xff;
  return t;
}

describe('CCEL table parser', () => {
  it('parse(write(x)) reads back revision, sub-type, LAML and LASA', () => {
    fc.assert(
      fc.property(tableArb, (m) => {
        expect(parseCcelTable(writeTable(m))).toEqual({ revision: m.revision, ccType: 2, ccSubType: m.ccSubType, laml: m.laml, lasa: m.lasa });
      }),
      runs(300),
    );
  });

  it('any single changed byte, any truncation and any trailing byte is refused', () => {
    fc.assert(
      fc.property(tableArb, fc.nat(), fc.integer({ min: 1, max: 255 }), fc.nat(), bytes(1, 8), (m, pos, xor, cut, extra) => {
        const t = writeTable(m);
        const bad = Buffer.from(t);
        bad[pos % bad.length] = bad[pos % bad.length]! ^ xor;
        expect(refusedWith(() => parseCcelTable(bad), TDX)).toBe('tdx.ccel_table_invalid');
        expect(refusedWith(() => parseCcelTable(t.subarray(0, cut % t.length)), TDX)).toBe('tdx.ccel_table_invalid');
        expect(refusedWith(() => parseCcelTable(Buffer.concat([t, extra])), TDX)).toBe('tdx.ccel_table_invalid');
      }),
      runs(300),
    );
  });
});
