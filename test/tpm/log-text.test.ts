import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { LogDecoder, decodeCanonicalInto, decodeLogB64 } from '../../src/tpm/log-text.js';

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
/** Characters an attacker would try: the alphabet, both URL-safe ones, padding, whitespace, junk, non-ASCII. */
const ATTACK = `${ALPHABET}-_=\n\r\t .,:;!@#$%^&*()[]{}<>\\"'\`~?|\0\u00e9\u0100\u2028\ud83d`;

/** The reference: canonical means re-encoding the decoded bytes gives the text back. */
function canonical(t: string): boolean {
  return t.length > 0 && Buffer.from(t, 'base64').toString('base64') === t;
}

function accepts(t: string): Buffer | undefined {
  const b = Buffer.alloc(Math.floor((t.length * 3) / 4) + 8);
  try {
    return b.subarray(0, decodeCanonicalInto(t, b, 'eventLog'));
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    expect((e as SigilError).code).toBe('tpm.bad_response');
    expect((e as SigilError).message).toBe('eventLog is not canonical standard base64');
    return undefined;
  }
}

function pick(s: string): string {
  return s[Math.floor(Math.random() * s.length)]!;
}

/** One random edit: replace, insert or delete a character, or cut the end. */
function mutate(t: string): string {
  const i = Math.floor(Math.random() * (t.length + 1));
  switch (Math.floor(Math.random() * 4)) {
    case 0:
      return t.slice(0, i) + pick(ATTACK) + t.slice(i + 1);
    case 1:
      return t.slice(0, i) + pick(ATTACK) + t.slice(i);
    case 2:
      return t.slice(0, i) + t.slice(i + 1);
    default:
      return t.slice(0, i);
  }
}

describe('canonical base64 of measurement logs (decoded without encoding again)', () => {
  it('accepts exactly the texts that re-encode to themselves, over many mutated texts of every padding', () => {
    let accepted = 0;
    let refused = 0;
    for (let k = 0; k < 3000; k++) {
      const bytes = randomBytes(1 + (k % 40));
      let t = bytes.toString('base64');
      for (let m = Math.floor(Math.random() * 3); m >= 0; m--) t = mutate(t);
      if (t.length === 0) continue;
      const got = accepts(t);
      expect(got !== undefined, `text ${JSON.stringify(t)}`).toBe(canonical(t));
      if (got) {
        expect(got.equals(Buffer.from(t, 'base64'))).toBe(true);
        accepted++;
      } else refused++;
    }
    // Both outcomes were exercised.
    expect(accepted).toBeGreaterThan(100);
    expect(refused).toBeGreaterThan(1000);
  });

  it('refuses each way a lenient decoder reads the same bytes from another text', () => {
    const bytes = Buffer.from([0xfb, 0xff, 0xbf, 0x01]); // "+/+/AQ==": both characters that have URL-safe twins
    const text = bytes.toString('base64');
    expect(text).toBe('+/+/AQ==');
    expect(accepts(text)?.equals(bytes)).toBe(true);
    for (const bad of ['-/+/AQ==', '+_+/AQ==', '+/+/AQ', '+/+/AR==', '+/+/AQ=', '+/+/AQ===', '+/+/\nAQ==', ' +/+/AQ==', '+/+/AQ==AAAA', '+/+/A=Q=', '+/+/AQé=', '+/+/AQ\u0000=']) {
      expect(Buffer.from(bad, 'base64').equals(bytes) || !canonical(bad)).toBe(true);
      expect(accepts(bad), JSON.stringify(bad)).toBeUndefined();
    }
    // One "=": the last character's low 2 bits carry nothing.
    expect(accepts(Buffer.from([1, 2]).toString('base64'))).toBeDefined();
    expect(accepts('AQI=')?.equals(Buffer.from([1, 2]))).toBe(true);
    expect(accepts('AQJ=')).toBeUndefined();
  });

  it('refuses non-ASCII look-alikes that Node\'s decoder reads by their low byte', () => {
    const text = Buffer.from('hello world!').toString('base64');
    expect(text).toBe('aGVsbG8gd29ybGQh');
    // U+0161 has the low byte 0x61 ('a'), U+0147 0x47 ('G'), U+FF2B 0x2b ('+'): each decodes as that character.
    for (const bad of ['\u0161GVsbG8gd29ybGQh', 'a\u0147VsbG8gd29ybGQh', 'aGVsbG8gd29ybGQ\u0168', '\uff2b/+/AQ==']) {
      expect(accepts(bad), JSON.stringify(bad)).toBeUndefined();
    }
    for (let c = 0x80; c < 0x10000; c += 0x3f) {
      const t = String.fromCharCode(c) + text.slice(1);
      expect(accepts(t), `U+${c.toString(16)}`).toBeUndefined();
    }
  });

  it('LogDecoder reuses its buffer and reads each text at its own length; decodeLogB64 gives a buffer of its own', () => {
    const d = new LogDecoder('imaLog', 1000);
    const big = randomBytes(700);
    const small = randomBytes(5);
    const a = d.decode(big.toString('base64'));
    expect(a.equals(big)).toBe(true);
    const b = d.decode(small.toString('base64'));
    expect(b.equals(small)).toBe(true);
    expect(b.buffer).toBe(a.buffer);
    expect(() => d.decode(randomBytes(1001).toString('base64'))).toThrow(/imaLog is larger than 1000 bytes/);
    expect(() => d.decode('')).toThrow(/imaLog must be a non-empty base64 string/);
    expect(() => d.decode(42)).toThrow(/imaLog must be a non-empty base64 string/);
    const own = decodeLogB64(small.toString('base64'), 'imaLog', 1000);
    expect(own.equals(small)).toBe(true);
    expect(own.buffer).not.toBe(a.buffer);
    expect(() => decodeLogB64('AQJ=', 'imaLog', 1000)).toThrow(/imaLog is not canonical standard base64/);
  });
});
