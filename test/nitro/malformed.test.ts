/**
 * Malformed documents: truncation at every length, trailing bytes, wrong COSE shapes, huge lengths
 * in CBOR heads, deep nesting, indefinite lengths, duplicate and unknown keys, wrong field types and
 * sizes. Every case must end in a SigilError with a nitro.* code, quickly, never in a raw
 * exception or a hang. Payload-level cases are properly signed so the field check is what decides.
 */
import 'reflect-metadata';
import { KeyObject } from 'node:crypto';
import { encode, Tag } from 'cbor2';
import { beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { NitroCertCache } from '../../src/nitro/certs.js';
import { MAX_DOCUMENT_BYTES } from '../../src/nitro/document.js';
import { verifyNitroDocument } from '../../src/nitro/verify.js';
import { makeDocument, makeLeaf, makePki, payloadMap, signPayload, type Leaf, type TestPki } from './fixtures.js';

const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
let pki: TestPki;
let leaf: Leaf;
let good: Buffer;
const cache = new NitroCertCache();

beforeAll(async () => {
  pki = await makePki({ name: 'malformed' });
  leaf = await makeLeaf(pki);
  good = makeDocument(pki, leaf, { timestamp: T0, nonce: new Uint8Array(32), publicKey: new Uint8Array(91).fill(1), userData: new Uint8Array([1, 2, 3]) });
});

function codeOf(doc: Uint8Array): string {
  const t = performance.now();
  try {
    verifyNitroDocument(doc, { at: new Date(T0), rootSha256: pki.rootSha256, allowDebug: true, cache });
    return 'accepted';
  } catch (e) {
    if (!(e instanceof SigilError)) throw new Error(`raw exception escaped: ${e instanceof Error ? e.stack : String(e)}`);
    expect(e.code).toMatch(/^nitro\.[a-z_]+$/);
    expect(e.message.length).toBeGreaterThan(0);
    return e.code;
  } finally {
    expect(performance.now() - t).toBeLessThan(2000);
  }
}

const h = (hex: string) => Buffer.from(hex.replace(/\s+/g, ''), 'hex');
const cat = (...parts: Uint8Array[]) => Buffer.concat(parts);

/** CBOR head for major type `mt` with argument `n` (preferred encoding). */
function head(mt: number, n: number | bigint): Buffer {
  const v = BigInt(n);
  const m = mt << 5;
  if (v < 24n) return Buffer.from([m | Number(v)]);
  if (v < 0x100n) return Buffer.from([m | 24, Number(v)]);
  if (v < 0x10000n) return Buffer.from([m | 25, Number(v >> 8n), Number(v & 0xffn)]);
  if (v < 0x100000000n) {
    const b = Buffer.alloc(5);
    b[0] = m | 26;
    b.writeUInt32BE(Number(v), 1);
    return b;
  }
  const b = Buffer.alloc(9);
  b[0] = m | 27;
  b.writeBigUInt64BE(v, 1);
  return b;
}
const tstr = (s: string) => cat(head(3, Buffer.byteLength(s)), Buffer.from(s));
const bstr = (b: Uint8Array) => cat(head(2, b.length), b);

/** Encode the good payload's entries by hand so keys can be duplicated or values replaced by raw CBOR. */
function rawPayload(edit: (entries: [Buffer, Buffer][]) => [Buffer, Buffer][]): Buffer {
  const m = payloadMap(pki, leaf, { timestamp: T0 });
  const entries: [Buffer, Buffer][] = [...m.entries()].map(([k, v]) => [tstr(k), Buffer.from(encode(v))]);
  const out = edit(entries);
  return cat(head(5, out.length), ...out.flat());
}
function setRaw(key: string, value: Buffer | null): (e: [Buffer, Buffer][]) => [Buffer, Buffer][] {
  return (e) => (value === null ? e.filter(([k]) => !k.equals(tstr(key))) : e.map(([k, v]) => [k, k.equals(tstr(key)) ? value : v]));
}
const signed = (payload: Uint8Array) => signPayload(payload, leaf.key);

describe('malformed Nitro documents', () => {
  it('baseline is accepted', () => {
    expect(codeOf(good)).toBe('accepted');
  });

  it('truncated at every length', () => {
    const t = performance.now();
    for (let n = 0; n < good.length; n++) expect(codeOf(good.subarray(0, n))).toBe('nitro.cbor_invalid');
    expect(performance.now() - t).toBeLessThan(20_000);
  });

  it('trailing bytes, oversize input', () => {
    expect(codeOf(cat(good, h('00')))).toBe('nitro.cbor_invalid');
    expect(codeOf(cat(good, good))).toBe('nitro.cbor_invalid');
    expect(codeOf(Buffer.alloc(MAX_DOCUMENT_BYTES + 1))).toBe('nitro.too_large');
  });

  it('wrong COSE shapes and headers', () => {
    const prot = h('a1013822');
    const sig = new Uint8Array(96);
    const pl = encode(payloadMap(pki, leaf, { timestamp: T0 }));
    const arr = (...items: unknown[]) => Buffer.from(encode(items.map((i) => (Buffer.isBuffer(i) ? new Uint8Array(i) : i))));
    const cases: [Buffer, string][] = [
      [Buffer.from(encode(new Map([[1, 2]]))), 'nitro.cose_invalid'],
      [Buffer.from(encode(5)), 'nitro.cose_invalid'],
      [Buffer.from(encode('text')), 'nitro.cose_invalid'],
      [arr(prot, new Map(), pl), 'nitro.cose_invalid'],
      [arr(prot, new Map(), pl, sig, sig), 'nitro.cose_invalid'],
      [Buffer.from(encode(new Tag(17, [prot, new Map(), pl, sig]))), 'nitro.cose_invalid'],
      [Buffer.from(encode(new Tag(18, new Tag(18, [prot, new Map(), pl, sig])))), 'nitro.cose_invalid'],
      [arr(new Map([[1, -35]]), new Map(), pl, sig), 'nitro.cose_invalid'],
      [arr(h('a10126'), new Map(), pl, sig), 'nitro.bad_protected_header'],
      [arr(h('a201382204 41 00'.replace(/ /g, '')), new Map(), pl, sig), 'nitro.bad_protected_header'],
      [arr(h('a1 01 38 22 00'.replace(/ /g, '')), new Map(), pl, sig), 'nitro.bad_protected_header'],
      [arr(new Uint8Array(0), new Map(), pl, sig), 'nitro.bad_protected_header'],
      [arr(prot, new Map([[4, new Uint8Array([1])]]), pl, sig), 'nitro.bad_unprotected_header'],
      [arr(prot, null, pl, sig), 'nitro.bad_unprotected_header'],
      [arr(prot, [], pl, sig), 'nitro.bad_unprotected_header'],
      [arr(prot, new Map(), null, sig), 'nitro.cose_invalid'],
      [arr(prot, new Map(), new Uint8Array(0), sig), 'nitro.cose_invalid'],
      [arr(prot, new Map(), 'payload', sig), 'nitro.cose_invalid'],
      [arr(prot, new Map(), pl, new Uint8Array(64)), 'nitro.cose_invalid'],
      [arr(prot, new Map(), pl, new Uint8Array(97)), 'nitro.cose_invalid'],
      [arr(prot, new Map(), pl, 'sig'), 'nitro.cose_invalid'],
      // all-zero signature: well-formed, never valid
      [arr(prot, new Map(), pl, sig), 'nitro.signature_invalid'],
    ];
    for (const [doc, want] of cases) expect(codeOf(doc), doc.subarray(0, 16).toString('hex')).toBe(want);
  });

  it('huge lengths in CBOR heads', () => {
    for (const hx of ['5bffffffffffffffff', '5b0000000100000000', '5affffffff', '7bffffffffffffffff', '9bffffffffffffffff', '9affffffff', 'bbffffffffffffffff', 'baffffffff', '84 5bffffffffffffffff', '84 44a1013822 a0 5a7fffffff']) {
      expect(codeOf(h(hx)), hx).toBe('nitro.cbor_invalid');
    }
    // inside a signed payload
    const cases = [
      rawPayload(setRaw('module_id', h('7bffffffffffffffff'))),
      rawPayload(setRaw('pcrs', h('bbffffffffffffffff'))),
      rawPayload(setRaw('cabundle', h('9b7fffffffffffffff'))),
      rawPayload(setRaw('certificate', h('5a00100000'))),
      cat(head(5, 0xffffffffn)),
    ];
    for (const p of cases) expect(codeOf(signed(p))).toBe('nitro.cbor_invalid');
  });

  it('deep nesting and indefinite lengths', () => {
    expect(codeOf(cat(Buffer.alloc(10_000, 0x81), h('00')))).toBe('nitro.cbor_invalid');
    expect(codeOf(cat(Buffer.alloc(5_000, 0xa1).map((_, i) => (i % 2 === 0 ? 0xa1 : 0x00)), h('00')))).toBe('nitro.cbor_invalid');
    expect(codeOf(signed(rawPayload(setRaw('pcrs', cat(Buffer.alloc(1000, 0x81), h('00'))))))).toBe('nitro.cbor_invalid');
    // indefinite-length array, byte string and map
    const prot = h('a1013822');
    expect(codeOf(cat(h('9f'), bstr(prot), h('a0'), bstr(h('a0')), bstr(new Uint8Array(96)), h('ff')))).toBe('nitro.cbor_invalid');
    expect(codeOf(cat(h('84 5f 44a1013822 ff'.replace(/ /g, '')), h('a0'), bstr(h('a0')), bstr(new Uint8Array(96))))).toBe('nitro.cbor_invalid');
    expect(codeOf(cat(h('84'), bstr(prot), h('bfff'), bstr(h('a0')), bstr(new Uint8Array(96))))).toBe('nitro.cbor_invalid');
    expect(codeOf(signed(rawPayload(setRaw('module_id', h('7f6169ff')))))).toBe('nitro.cbor_invalid');
  });

  it('duplicate and unknown keys', () => {
    expect(codeOf(signed(rawPayload((e) => [...e, [tstr('nonce'), h('f6')]])))).toBe('nitro.cbor_invalid');
    expect(codeOf(signed(rawPayload((e) => [...e, [tstr('module_id'), tstr('i-0123456789abcdef0-encffffffffffffffff')]])))).toBe('nitro.cbor_invalid');
    expect(codeOf(signed(rawPayload((e) => [...e, [tstr('extra'), h('00')]])))).toBe('nitro.payload_unknown_field');
    expect(codeOf(signed(rawPayload((e) => [...e, [h('01'), h('00')]])))).toBe('nitro.payload_unknown_field');
    expect(codeOf(signed(rawPayload((e) => [...e, [bstr(h('6e6f6e6365')), h('00')]])))).toBe('nitro.payload_unknown_field');
    const dupPcr = cat(h('a2'), h('00'), bstr(new Uint8Array(48)), h('00'), bstr(new Uint8Array(48).fill(1)));
    expect(codeOf(signed(rawPayload(setRaw('pcrs', dupPcr))))).toBe('nitro.cbor_invalid');
    // the same key twice, once in a non-preferred (longer) head: still a duplicate, not an overwrite
    const longTstr = (s: string) => cat(h('78'), Buffer.from([Buffer.byteLength(s)]), Buffer.from(s));
    expect(codeOf(signed(rawPayload((e) => [...e, [longTstr('nonce'), bstr(new Uint8Array(32).fill(7))]])))).toBe('nitro.cbor_invalid');
    const dupPcrLong = cat(h('a2'), h('00'), bstr(new Uint8Array(48)), h('1800'), bstr(new Uint8Array(48).fill(1)));
    expect(codeOf(signed(rawPayload(setRaw('pcrs', dupPcrLong))))).toBe('nitro.cbor_invalid');
    // duplicate keys in the unprotected header
    expect(codeOf(cat(h('84'), bstr(h('a1013822')), h('a2 04 40 04 40'.replace(/ /g, '')), bstr(h('a0')), bstr(new Uint8Array(96))))).toBe('nitro.cbor_invalid');
  });

  it('wrong field types and sizes', () => {
    const pcrMap = (n: number, len = 48) => cat(head(5, n), ...Array.from({ length: n }, (_, i) => cat(head(0, i), bstr(new Uint8Array(len).fill(1)))));
    const cases: [string, Buffer | null, string][] = [
      ['module_id', null, 'nitro.payload_missing_field'],
      ['module_id', h('f6'), 'nitro.payload_missing_field'],
      ['module_id', h('05'), 'nitro.payload_bad_field'],
      ['module_id', tstr(''), 'nitro.payload_bad_field'],
      ['module_id', tstr('a/b'), 'nitro.payload_bad_field'],
      ['module_id', tstr('..'), 'nitro.payload_bad_field'],
      ['module_id', tstr('x'.repeat(129)), 'nitro.payload_bad_field'],
      ['digest', tstr('SHA256'), 'nitro.payload_bad_field'],
      ['digest', bstr(Buffer.from('SHA384')), 'nitro.payload_bad_field'],
      ['timestamp', null, 'nitro.payload_missing_field'],
      ['timestamp', h('00'), 'nitro.payload_bad_field'],
      ['timestamp', h('20'), 'nitro.payload_bad_field'],
      ['timestamp', tstr('1734075478960'), 'nitro.payload_bad_field'],
      ['timestamp', h('1bffffffffffffffff'), 'nitro.cbor_invalid'], // beyond 2^53 - 1: refused by the decoder itself
      ['timestamp', h('fb4000000000000000'), 'nitro.cbor_invalid'],
      ['timestamp', cat(h('c1'), head(0, 1734075478)), 'nitro.payload_bad_field'],
      ['timestamp', h('c249010000000000000000'), 'nitro.payload_bad_field'],
      ['timestamp', h('f7'), 'nitro.cbor_invalid'],
      ['timestamp', h('f0'), 'nitro.cbor_invalid'],
      ['pcrs', null, 'nitro.payload_missing_field'],
      ['pcrs', h('a0'), 'nitro.payload_bad_field'],
      ['pcrs', h('80'), 'nitro.payload_bad_field'],
      ['pcrs', pcrMap(33), 'nitro.payload_bad_field'],
      ['pcrs', pcrMap(32), 'nitro.signature_invalid'],
      ['pcrs', pcrMap(2, 20), 'nitro.payload_bad_field'],
      ['pcrs', pcrMap(2, 0), 'nitro.payload_bad_field'],
      ['pcrs', cat(h('a1'), head(0, 32), bstr(new Uint8Array(48))), 'nitro.payload_bad_field'],
      ['pcrs', cat(h('a1'), h('20'), bstr(new Uint8Array(48))), 'nitro.payload_bad_field'],
      ['pcrs', cat(h('a1'), tstr('0'), bstr(new Uint8Array(48))), 'nitro.payload_bad_field'],
      ['pcrs', cat(h('a1'), h('00'), tstr('0'.repeat(48))), 'nitro.payload_bad_field'],
      ['certificate', h('40'), 'nitro.payload_bad_field'],
      ['certificate', bstr(new Uint8Array(1025)), 'nitro.payload_bad_field'],
      ['certificate', tstr('cert'), 'nitro.payload_bad_field'],
      ['certificate', bstr(new Uint8Array(10)), 'nitro.cert_invalid'],
      ['cabundle', null, 'nitro.payload_missing_field'],
      ['cabundle', h('80'), 'nitro.payload_bad_field'],
      ['cabundle', bstr(new Uint8Array(10)), 'nitro.payload_bad_field'],
      ['cabundle', cat(h('81'), tstr('x')), 'nitro.payload_bad_field'],
      ['cabundle', cat(h('81'), h('40')), 'nitro.payload_bad_field'],
      ['cabundle', cat(head(4, 17), ...Array.from({ length: 17 }, () => bstr(new Uint8Array(5)))), 'nitro.payload_bad_field'],
      ['public_key', h('40'), 'nitro.payload_bad_field'],
      ['public_key', bstr(new Uint8Array(1025)), 'nitro.payload_bad_field'],
      ['public_key', h('01'), 'nitro.payload_bad_field'],
      ['user_data', bstr(new Uint8Array(1025)), 'nitro.payload_bad_field'],
      ['nonce', tstr('abc'), 'nitro.payload_bad_field'],
      ['nonce', h('f5'), 'nitro.payload_bad_field'],
      // optional fields may be absent altogether
      ['nonce', null, 'nitro.signature_invalid'],
      ['user_data', h('40'), 'nitro.signature_invalid'],
    ];
    for (const [field, value, want] of cases) {
      // signature_invalid: the edit passes every field check; the signature is over the original
      // payload (sign first, then splice), so the outcome proves the field checks let it through.
      const edited = rawPayload(setRaw(field, value));
      const doc = want === 'nitro.signature_invalid' ? spliceSignature(edited) : signed(edited);
      expect(codeOf(doc), `${field}=${value?.subarray(0, 12).toString('hex') ?? 'absent'}`).toBe(want);
    }
    expect(codeOf(signed(h('80')))).toBe('nitro.payload_invalid');
    expect(codeOf(signed(h('05')))).toBe('nitro.payload_invalid');
    expect(codeOf(signed(cat(rawPayload((e) => e), h('00'))))).toBe('nitro.cbor_invalid');
    expect(codeOf(signed(h('ff')))).toBe('nitro.cbor_invalid');
  });

  it('a well-formed payload signed by any key but the leaf\'s is rejected', () => {
    const payload = rawPayload((e) => e);
    expect(codeOf(signPayload(payload, leaf.key))).toBe('accepted');
    expect(codeOf(signPayload(payload, KeyObject.from(pki.root.keys.privateKey)))).toBe('nitro.signature_invalid');
  });
});

/** A document whose payload is `payload` but whose signature is over the good payload. */
function spliceSignature(payload: Buffer): Buffer {
  const goodPayload = encode(payloadMap(pki, leaf, { timestamp: T0 }));
  const sig = signPayload(goodPayload, leaf.key).subarray(-96);
  return Buffer.from(encode([new Uint8Array(h('a1013822')), new Map(), new Uint8Array(payload), new Uint8Array(sig)]));
}
