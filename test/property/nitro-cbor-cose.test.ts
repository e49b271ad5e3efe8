/**
 * Property-based tests of the Nitro document decoding (src/nitro/document.ts): the strict CBOR
 * reader (decodeStrict), the COSE_Sign1 envelope (parseCoseSign1, sigStructure) and the payload
 * map (parseNitroPayload).
 *
 * cbor2's encoder (preferred serialisation, definite lengths) is the reference: whatever it
 * writes inside the strict profile must decode to the same value, and the hand-built
 * Sig_structure must equal cbor2's encoding of the same array. The real documents in the shared
 * testdata are used as bases for truncation and trailing-byte checks.
 */
import { readFileSync } from 'node:fs';
import { Tag, encode } from 'cbor2';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  ES384_PROTECTED_HEADER,
  MAX_CBOR_DEPTH,
  MAX_PAYLOAD_BYTES,
  decodeStrict,
  parseCoseSign1,
  parseNitroPayload,
  sigStructure,
} from '../../src/nitro/document.js';
import { hasTestdata, td } from '../support/testdata.js';
import { bytes, parseOrRefuse, refusedWith, runs } from './support.js';

const STRICT = /^nitro\.cbor_invalid$/;

// ------------------------------------------------------------------ values in the strict profile

const keyArb: fc.Arbitrary<number | string> = fc.oneof(fc.maxSafeInteger(), fc.string({ unit: 'grapheme', maxLength: 12 }));

/** CBOR values the strict profile accepts: safe integers, byte and text strings, arrays, maps, tags, booleans, null. */
const { value: cborValue } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', maxDepth: MAX_CBOR_DEPTH - 1 },
    fc.maxSafeInteger(),
    fc.uint8Array({ maxLength: 40 }),
    fc.string({ unit: 'grapheme', maxLength: 20 }),
    fc.constantFrom(true, false, null),
    fc.array(tie('value'), { maxLength: 5 }),
    fc
      .uniqueArray(fc.tuple(keyArb, tie('value')), { maxLength: 5, selector: ([k]) => (typeof k === 'number' ? `n${k}` : `s${k}`) })
      .map((entries) => new Map(entries)),
    fc.tuple(fc.integer({ min: 0, max: 2 ** 32 }), tie('value')).map(([t, v]) => new Tag(t, v)),
  ),
}));

/** A comparable form: byte strings as hex, maps as entry lists, tags as [tag, contents]. */
function norm(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: Buffer.from(v).toString('hex') };
  if (v instanceof Map) return { map: [...v.entries()].map(([k, x]) => [norm(k), norm(x)]) };
  if (v instanceof Tag) return { tag: Number(v.tag), contents: norm(v.contents) };
  if (Array.isArray(v)) return v.map(norm);
  return v;
}

const enc = (v: unknown): Buffer => Buffer.from(encode(v));

describe('strict CBOR reader', () => {
  it('decodeStrict(encode(x)) == x for every value inside the profile', () => {
    fc.assert(
      fc.property(cborValue, (v) => {
        expect(norm(decodeStrict(enc(v), 'value'))).toEqual(norm(v));
      }),
      runs(500),
    );
  });

  it('every truncation is refused (definite-length CBOR is prefix-free)', () => {
    fc.assert(
      fc.property(cborValue, fc.nat(), (v, cut) => {
        const b = enc(v);
        refusedWith(() => decodeStrict(b.subarray(0, cut % b.length), 'value'), STRICT);
      }),
      runs(500),
    );
  });

  it('trailing bytes are refused', () => {
    fc.assert(
      fc.property(cborValue, bytes(1, 8), (v, extra) => {
        refusedWith(() => decodeStrict(Buffer.concat([enc(v), extra]), 'value'), STRICT);
      }),
      runs(300),
    );
  });

  it('a head not in preferred (shortest) form is refused, for every major type', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 6 }), fc.integer({ min: 0, max: 0xffff }), fc.nat(), (major, n, pick) => {
        const shortest = n < 24 ? 0 : n < 0x100 ? 1 : n < 0x10000 ? 2 : 4;
        const longer = [1, 2, 4, 8].filter((w) => w > shortest);
        const width = longer[pick % longer.length]!;
        const arg = Buffer.alloc(width);
        arg.writeUIntBE(n, width - Math.min(width, 6), Math.min(width, 6));
        const ai = width === 1 ? 24 : width === 2 ? 25 : width === 4 ? 26 : 27;
        // The head is checked before any content is read, so the message must name the head's form.
        const b = Buffer.concat([Buffer.from([(major << 5) | ai]), arg, Buffer.alloc(4)]);
        const r = parseOrRefuse(() => decodeStrict(b, 'value'), STRICT);
        expect(r.ok).toBe(false);
        if (!r.ok) expect(r.error.message).toMatch(/preferred \(shortest\) form/);
      }),
      runs(300),
    );
  });

  it('a map with a key written twice is refused, whatever the values', () => {
    fc.assert(
      fc.property(keyArb, cborValue, cborValue, fc.array(fc.tuple(keyArb, cborValue), { maxLength: 3 }), (k, a, b, others) => {
        const rest = others.filter(([o]) => o !== k);
        const entries = [[k, a], ...rest, [k, b]] as [unknown, unknown][];
        const head = entries.length < 24 ? Buffer.from([0xa0 | entries.length]) : Buffer.from([0xb8, entries.length]);
        const dup = Buffer.concat([head, ...entries.map(([x, y]) => Buffer.concat([enc(x), enc(y)]))]);
        refusedWith(() => decodeStrict(dup, 'value'), STRICT);
      }),
      runs(200),
    );
  });

  it('nesting deeper than MAX_CBOR_DEPTH is refused, at the limit it is accepted', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 3 * MAX_CBOR_DEPTH }), fc.constantFrom(0x81, 0xd8), (depth, kind) => {
        // 0x81 = array of one item; 0xd8 0x20 = tag 32 around one item.
        const wrap = kind === 0x81 ? Buffer.from([0x81]) : Buffer.from([0xd8, 0x20]);
        const b = Buffer.concat([...Array.from({ length: depth }, () => wrap), Buffer.from([0x00])]);
        const r = parseOrRefuse(() => decodeStrict(b, 'value'), STRICT);
        expect(r.ok).toBe(depth <= MAX_CBOR_DEPTH);
      }),
      runs(100),
    );
  });

  it('arbitrary bytes get nitro.cbor_invalid and nothing else', () => {
    fc.assert(
      fc.property(bytes(0, 200), (b) => void parseOrRefuse(() => decodeStrict(b, 'value'), STRICT)),
      runs(2000),
    );
  });
});

// ------------------------------------------------------------------ COSE_Sign1

const coseArb = fc.record({
  payload: bytes(1, 2048),
  signature: bytes(96, 96),
  tagged: fc.boolean(),
});

function cose(c: { payload: Buffer; signature: Buffer; tagged: boolean }): Buffer {
  const arr = [new Uint8Array(ES384_PROTECTED_HEADER), new Map(), new Uint8Array(c.payload), new Uint8Array(c.signature)];
  return enc(c.tagged ? new Tag(18, arr) : arr);
}

function realDocuments(): Buffer[] {
  if (!hasTestdata) return [];
  const files = ['marlin-aws.cbor', 'marlin-custom-root.cbor', 'evervault-beta-valid.cbor', 'evervault-debug.b64'];
  return files.map((f) => {
    const raw = readFileSync(td('nitro', f));
    return f.endsWith('.b64') ? Buffer.from(raw.toString('latin1').trim(), 'base64') : raw;
  });
}
const REAL = realDocuments();
const anyDocument: fc.Arbitrary<Buffer> = REAL.length > 0 ? fc.oneof(coseArb.map(cose), fc.constantFrom(...REAL)) : coseArb.map(cose);

describe('COSE_Sign1 envelope', () => {
  it('parseCoseSign1(encode(x)) gives back the payload, signature and tag; sigStructure equals cbor2\'s encoding of Sig_structure', () => {
    fc.assert(
      fc.property(coseArb, (c) => {
        const p = parseCoseSign1(cose(c));
        expect(p.payload.equals(c.payload)).toBe(true);
        expect(p.signature.equals(c.signature)).toBe(true);
        expect(p.tagged).toBe(c.tagged);
        expect(p.protectedHeader.equals(ES384_PROTECTED_HEADER)).toBe(true);
        const reference = enc(['Signature1', new Uint8Array(p.protectedHeader), new Uint8Array(0), new Uint8Array(p.payload)]);
        expect(sigStructure(p.protectedHeader, p.payload).equals(reference)).toBe(true);
      }),
      runs(200),
    );
  });

  it('sigStructure matches cbor2 for payloads of every head width (up to the 16 KiB limit)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAX_PAYLOAD_BYTES }), fc.integer({ min: 0, max: 300 }), (n, p) => {
        const payload = Buffer.alloc(n, 0x5a);
        const prot = Buffer.alloc(p, 0xa1);
        expect(sigStructure(prot, payload).equals(enc(['Signature1', new Uint8Array(prot), new Uint8Array(0), new Uint8Array(payload)]))).toBe(true);
      }),
      runs(100),
    );
  });

  it('every truncation and any trailing byte is refused (generated and real documents)', () => {
    fc.assert(
      fc.property(anyDocument, fc.nat(), bytes(1, 8), (doc, cut, extra) => {
        refusedWith(() => parseCoseSign1(doc.subarray(0, cut % doc.length)), /^nitro\.cbor_invalid$/);
        refusedWith(() => parseCoseSign1(Buffer.concat([doc, extra])), /^nitro\.cbor_invalid$/);
      }),
      runs(300),
    );
  });

  it('a changed byte gets a nitro.* SigilError or parses; arbitrary bytes get nitro.* only', () => {
    fc.assert(
      fc.property(anyDocument, fc.nat(), fc.integer({ min: 1, max: 255 }), bytes(0, 300), (doc, pos, xor, junk) => {
        const bad = Buffer.from(doc);
        bad[pos % bad.length] = bad[pos % bad.length]! ^ xor;
        const r = parseOrRefuse(() => parseCoseSign1(bad), /^nitro\./);
        if (r.ok) parseOrRefuse(() => parseNitroPayload(r.value.payload), /^nitro\./);
        parseOrRefuse(() => parseCoseSign1(junk), /^nitro\./);
      }),
      runs(1000),
    );
  });
});

// ------------------------------------------------------------------ payload map

const payloadArb = fc.record({
  moduleId: fc.stringMatching(/^[A-Za-z0-9._-]{1,128}$/).filter((s) => s !== '.' && s !== '..'),
  timestamp: fc.integer({ min: 1, max: 8.64e15 /* the last instant a Date holds; beyond it is refused */ }),
  pcrs: fc.uniqueArray(fc.tuple(fc.integer({ min: 0, max: 31 }), fc.constantFrom(32, 48, 64).chain((n) => bytes(n, n))), { minLength: 1, maxLength: 32, selector: ([k]) => k }),
  certificate: bytes(1, 1024),
  cabundle: fc.array(bytes(1, 1024), { minLength: 1, maxLength: 16 }),
  publicKey: fc.option(bytes(1, 1024), { nil: null }),
  userData: fc.option(bytes(0, 1024), { nil: null }),
  nonce: fc.option(bytes(0, 1024), { nil: null }),
});

type PayloadModel = typeof payloadArb extends fc.Arbitrary<infer T> ? T : never;

function payloadMap(m: PayloadModel): Map<string, unknown> {
  const u = (b: Buffer | null): Uint8Array | null => (b === null ? null : new Uint8Array(b));
  return new Map<string, unknown>([
    ['module_id', m.moduleId],
    ['digest', 'SHA384'],
    ['timestamp', m.timestamp],
    ['pcrs', new Map(m.pcrs.map(([k, v]) => [k, new Uint8Array(v)]))],
    ['certificate', new Uint8Array(m.certificate)],
    ['cabundle', m.cabundle.map((c) => new Uint8Array(c))],
    ['public_key', u(m.publicKey)],
    ['user_data', u(m.userData)],
    ['nonce', u(m.nonce)],
  ]);
}

describe('attestation document payload', () => {
  it('parseNitroPayload(encode(x)) reads back every field, PCRs sorted by index', () => {
    fc.assert(
      fc.property(payloadArb, (m) => {
        const p = parseNitroPayload(enc(payloadMap(m)));
        expect(p.moduleId).toBe(m.moduleId);
        expect(p.timestamp).toBe(m.timestamp);
        expect([...p.pcrs.keys()]).toEqual(m.pcrs.map(([k]) => k).sort((a, b) => a - b));
        for (const [k, v] of m.pcrs) expect(p.pcrs.get(k)!.equals(v)).toBe(true);
        expect(p.certificate.equals(m.certificate)).toBe(true);
        expect(p.cabundle.map((c) => c.toString('hex'))).toEqual(m.cabundle.map((c) => c.toString('hex')));
        expect(p.publicKey?.toString('hex') ?? null).toBe(m.publicKey?.toString('hex') ?? null);
        expect(p.userData?.toString('hex') ?? null).toBe(m.userData?.toString('hex') ?? null);
        expect(p.nonce?.toString('hex') ?? null).toBe(m.nonce?.toString('hex') ?? null);
      }),
      runs(100),
    );
  });

  it('a missing required field, an unknown field or a wrong type is refused with its own code', () => {
    const required = ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle'];
    fc.assert(
      fc.property(payloadArb, fc.constantFrom(...required), fc.string({ minLength: 1, maxLength: 20 }), cborValue, (m, field, unknown, junk) => {
        const missing = payloadMap(m);
        missing.delete(field);
        expect(refusedWith(() => parseNitroPayload(enc(missing)), /^nitro\./)).toBe('nitro.payload_missing_field');
        fc.pre(!['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle', 'public_key', 'user_data', 'nonce'].includes(unknown));
        const extra = payloadMap(m);
        extra.set(unknown, 1);
        expect(refusedWith(() => parseNitroPayload(enc(extra)), /^nitro\./)).toBe('nitro.payload_unknown_field');
        const wrong = payloadMap(m);
        wrong.set(field, junk);
        const r = parseOrRefuse(() => parseNitroPayload(enc(wrong)), /^nitro\.payload_(bad_field|missing_field)$/);
        // Only a value equal to a valid one may pass (e.g. "SHA384" for digest); then it reads back as given.
        if (r.ok && field === 'digest') expect(junk).toBe('SHA384');
      }),
      runs(120),
    );
  });
});
