/** Strict parsing of TDX quotes: every length checked, nothing after the quote, clean SigilErrors for bad input. */
import { describe, expect, it } from 'vitest';
import { TDX_QUOTE_MAX_BYTES, parseTdxQuote } from '../../src/tdx/quote.js';
import { codeOf } from '../support/codes.js';
import { sprQuote } from './helpers.js';
import { makeTdxQuote, makeTdxTestPki } from './synthetic.js';

const q = sprQuote();
const SIG_LEN_AT = 48 + 584;
const CERT_TYPE_AT = SIG_LEN_AT + 4 + 128;
const INNER_TYPE_AT = CERT_TYPE_AT + 6 + 384 + 64 + 2 + 32;

function patched(at: number, bytes: number[], base: Buffer = q): Buffer {
  const m = Buffer.from(base);
  Buffer.from(bytes).copy(m, at);
  return m;
}

describe('TDX quote parsing', () => {
  it('parses the real v4 quote exactly', () => {
    const p = parseTdxQuote(q);
    expect(p.version).toBe(4);
    expect(p.body.version).toBe('1.0');
    expect(p.qeAuthData.length).toBe(32);
    expect(p.pckChainPem.match(/BEGIN CERTIFICATE/g)).toHaveLength(3);
  });

  it('refuses every truncation with tdx.quote_truncated (or malformed), never a crash', () => {
    for (let n = 0; n < q.length; n += n < 800 ? 1 : 37) {
      expect(['tdx.quote_truncated', 'tdx.quote_malformed'], `length ${n}`).toContain(codeOf(() => parseTdxQuote(q.subarray(0, n))));
    }
  });

  it('refuses trailing bytes and oversized input', () => {
    expect(codeOf(() => parseTdxQuote(Buffer.concat([q, Buffer.from([0])])))).toBe('tdx.quote_trailing_bytes');
    expect(codeOf(() => parseTdxQuote(Buffer.alloc(TDX_QUOTE_MAX_BYTES + 1)))).toBe('tdx.quote_too_large');
  });

  it('refuses other versions, TEE types, key types and QE vendors', () => {
    expect(codeOf(() => parseTdxQuote(patched(0, [3, 0])))).toBe('tdx.quote_version_unsupported');
    expect(codeOf(() => parseTdxQuote(patched(2, [3, 0])))).toBe('tdx.attestation_key_type_unsupported');
    expect(codeOf(() => parseTdxQuote(patched(4, [0, 0, 0, 0])))).toBe('tdx.tee_type_unsupported');
    expect(codeOf(() => parseTdxQuote(patched(12, [0])))).toBe('tdx.qe_vendor_unknown');
  });

  it('refuses certification data of unknown types and inconsistent sizes', () => {
    expect(codeOf(() => parseTdxQuote(patched(CERT_TYPE_AT, [5, 0])))).toBe('tdx.cert_data_unsupported');
    expect(codeOf(() => parseTdxQuote(patched(CERT_TYPE_AT, [7, 0])))).toBe('tdx.cert_data_unsupported');
    expect(codeOf(() => parseTdxQuote(patched(INNER_TYPE_AT, [1, 0])))).toBe('tdx.cert_data_unsupported');
    const size = q.readUInt32LE(CERT_TYPE_AT + 2);
    const m = Buffer.from(q);
    m.writeUInt32LE(size - 1, CERT_TYPE_AT + 2);
    expect(codeOf(() => parseTdxQuote(m))).toBe('tdx.quote_malformed');
    const big = Buffer.from(q);
    big.writeUInt32LE(q.readUInt32LE(SIG_LEN_AT) + 1, SIG_LEN_AT);
    expect(codeOf(() => parseTdxQuote(big))).toBe('tdx.quote_truncated');
  });

  it('refuses v5 body types other than TD reports and sizes that do not fit the type', () => {
    const v5 = makeTdxQuote(makeTdxTestPki(), { version: 5 });
    expect(parseTdxQuote(v5).version).toBe(5);
    expect(codeOf(() => parseTdxQuote(patched(48, [1, 0], v5)))).toBe('tdx.body_type_unsupported');
    expect(codeOf(() => parseTdxQuote(patched(48, [3, 0], v5)))).toBe('tdx.quote_malformed');
  });

  it('refuses a PCK chain with non-PEM bytes', () => {
    const at = q.length - 10;
    expect(codeOf(() => parseTdxQuote(patched(at, [0xff])))).toBe('tdx.pck_chain_malformed');
  });
});
