/**
 * The strict CBOR decoder behind Nitro documents and NSM messages (src/nitro/document.ts):
 * the same values as a general decoder (cbor2) on real and generated documents, and refusals of
 * everything outside the strict profile.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { decode, encode, Tag } from 'cbor2';
import { describe, expect, it } from 'vitest';
import { MAX_CBOR_DEPTH, decodeStrict, parseCoseSign1 } from '../../src/nitro/document.js';
import { requireTestdata, td } from '../support/testdata.js';

const have = requireTestdata();
const h = (x: string) => Buffer.from(x.replace(/ /g, ''), 'hex');

function reason(bytes: Uint8Array): string {
  try {
    decodeStrict(bytes, 'x');
  } catch (e) {
    expect((e as { code?: string }).code).toBe('nitro.cbor_invalid');
    return (e as Error).message.replace(/^x is not valid CBOR under the strict profile: /, '');
  }
  return 'accepted';
}

/** Plain JS values for comparison (byte strings as hex, maps as entry lists, tags as objects). */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return { bytes: Buffer.from(v).toString('hex') };
  if (v instanceof Map) return { map: [...v].map(([k, x]) => [plain(k), plain(x)]) };
  if (Array.isArray(v)) return v.map(plain);
  if (v instanceof Tag) return { tag: Number(v.tag), contents: plain(v.contents) };
  return v;
}

describe('strict CBOR decoder', () => {
  it.skipIf(!have)('decodes the real documents (envelope and payload) to what cbor2 decodes', () => {
    for (const f of ['marlin-aws.cbor', 'evervault-beta-valid.cbor', 'marlin-custom-root.cbor']) {
      const doc = readFileSync(td('nitro', f));
      expect(plain(decodeStrict(doc, f))).toEqual(plain(decode(doc, { preferMap: true, ignoreGlobalTags: true })));
      const payload = parseCoseSign1(doc).payload;
      expect(plain(decodeStrict(payload, f))).toEqual(plain(decode(payload, { preferMap: true })));
    }
  });

  it('decodes generated values to what cbor2 decodes', () => {
    for (let i = 0; i < 200; i++) {
      const n = (i * 7919) % 100_000_000;
      const v = new Map<unknown, unknown>([
        ['module_id', `i-${i}`],
        ['n', n],
        ['neg', -n - 1],
        ['big', Number.MAX_SAFE_INTEGER - i],
        ['bytes', new Uint8Array(randomBytes(i % 300))],
        ['pcrs', new Map([[0, new Uint8Array(48)], [i % 32, new Uint8Array(randomBytes(32))]])],
        ['list', [true, false, null, 'ü€😀', new Uint8Array(0)]],
        [i, new Tag(18, [1, 2])],
      ]);
      const bytes = encode(v);
      expect(plain(decodeStrict(bytes, 'generated'))).toEqual(plain(decode(bytes, { preferMap: true, ignoreGlobalTags: true })));
    }
  });

  it('refuses what is outside the strict profile, each with its reason', () => {
    const cases: [string, RegExp][] = [
      ['1805', /preferred/], // 5 written with a one-byte argument
      ['1900ff', /preferred/],
      ['1a0000ffff', /preferred/],
      ['1b00000000ffffffff', /preferred/],
      ['1b0020000000000000', /safe range/], // 2^53
      ['3b001fffffffffffff', /safe range/], // -(2^53) - ... below the safe range
      ['62c328', /UTF-8/], // invalid UTF-8
      ['a2 0100 0100', /duplicate/],
      ['a2 6161 00 6161 01', /duplicate/],
      ['a2 62c3a9 00 62c3a9 01', /duplicate/], // non-ASCII text key
      ['a2 4101 00 4101 01', /duplicate/], // byte-string keys
      ['a2 8100 00 8100 01', /duplicate/], // array keys
      ['a2 c10100 c10101', /duplicate/], // tagged keys
      ['a2 f6 00 f6 01', /duplicate/], // null keys
      ['a3 01 00 4161 00 4161 01', /duplicate/],
      ['6180', /UTF-8/], // a lone continuation byte in a short text
      ['61c3', /UTF-8/], // a two-byte sequence cut short inside the text
      ['5f ff', /indefinite/],
      ['9f ff', /indefinite/],
      ['ff', /break/],
      ['f7', /undefined/],
      ['f0', /simple/],
      ['f820', /simple/],
      ['f93c00', /floating/],
      ['fb3ff0000000000000', /floating/],
      ['1c', /reserved/],
      ['5a 00010000 00', /exceeds/],
      ['9a 00010000 00', /exceeds/],
      ['a5 00 00 00 00', /exceeds/], // 5 entries need at least 10 bytes
      ['00 00', /trailing/],
      ['82 00', /exceeds/],
      ['82 00 19', /truncated/],
      ['19 01', /truncated/],
      ['', /truncated/],
    ];
    for (const [hx, want] of cases) expect(reason(h(hx)), hx).toMatch(want);
  });

  it(`nesting: ${MAX_CBOR_DEPTH} levels of containers or tags decode, one more is refused`, () => {
    const nest = (open: string, n: number) => h(open.repeat(n) + '00');
    expect(reason(nest('81', MAX_CBOR_DEPTH))).toBe('accepted');
    expect(reason(nest('81', MAX_CBOR_DEPTH + 1))).toMatch(/nesting/);
    expect(reason(nest('a100', MAX_CBOR_DEPTH + 1))).toMatch(/nesting/);
    expect(reason(nest('c1', MAX_CBOR_DEPTH + 1))).toMatch(/nesting/);
    expect(reason(Buffer.concat([Buffer.alloc(100_000, 0x81), h('00')]))).toMatch(/nesting/);
  });

  it('keys of different kinds or bytes are not duplicates; text decodes the same on the ASCII path and the UTF-8 path', () => {
    expect(plain(decodeStrict(h('a4 4161 00 6161 01 01 02 6131 03'), 'x'))).toEqual({
      map: [
        [{ bytes: '61' }, 0],
        ['a', 1],
        [1, 2],
        ['1', 3],
      ],
    });
    for (const text of ['', 'a', 'x'.repeat(64), 'y'.repeat(65), '\u007f\u0000', 'é', 'a'.repeat(63) + 'é', '😀 enclave']) {
      expect(decodeStrict(encode(text), 'x'), JSON.stringify(text)).toBe(text);
    }
  });

  it('byte strings are views into the input, not copies', () => {
    const bytes = h('43 010203');
    const v = decodeStrict(bytes, 'x') as Uint8Array;
    expect(v.buffer).toBe(bytes.buffer);
    expect(Buffer.from(v).toString('hex')).toBe('010203');
  });
});
