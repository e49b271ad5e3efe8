/**
 * The COSE Sig_structure (RFC 9052 §4.4) as the verifier builds it: into one preallocated buffer
 * (withSigStructure) or a fresh one (sigStructure), both byte for byte cbor2's encoding of
 * ["Signature1", protected, h'', payload], for payloads of every head width.
 */
import { encode } from 'cbor2';
import { describe, expect, it } from 'vitest';
import { ES384_PROTECTED_HEADER, MAX_DOCUMENT_BYTES, sigStructure, withSigStructure } from '../../src/nitro/document.js';

function reference(prot: Uint8Array, payload: Uint8Array): Buffer {
  return Buffer.from(encode(['Signature1', new Uint8Array(prot), new Uint8Array(0), new Uint8Array(payload)]));
}

describe('Sig_structure', () => {
  it('equals cbor2\'s encoding at every head-width boundary, in the scratch buffer and in a fresh one', () => {
    for (const len of [0, 1, 23, 24, 255, 256, 4535, 16384, 65535, 65536, MAX_DOCUMENT_BYTES + 1]) {
      const payload = Buffer.alloc(len);
      for (let i = 0; i < len; i++) payload[i] = (i * 31 + len) & 0xff;
      const want = reference(ES384_PROTECTED_HEADER, payload);
      expect(sigStructure(ES384_PROTECTED_HEADER, payload).equals(want), `fresh, ${len}`).toBe(true);
      expect(withSigStructure(ES384_PROTECTED_HEADER, payload, (tbs) => Buffer.from(tbs).equals(want)), `scratch, ${len}`).toBe(true);
    }
    // A protected header of another length gets its own head too.
    const prot = Buffer.alloc(30, 0xa1);
    expect(withSigStructure(prot, Buffer.from('x'), (tbs) => Buffer.from(tbs).equals(reference(prot, Buffer.from('x'))))).toBe(true);
  });

  it('the scratch buffer is reused: a view does not outlive its call, and a shorter structure leaves no old bytes in view', () => {
    const long = Buffer.alloc(2000, 0x55);
    const short = Buffer.from('abc');
    const first = withSigStructure(ES384_PROTECTED_HEADER, long, (tbs) => tbs);
    const second = withSigStructure(ES384_PROTECTED_HEADER, short, (tbs) => Buffer.from(tbs));
    expect(second.equals(reference(ES384_PROTECTED_HEADER, short))).toBe(true);
    // `first` pointed into the same memory, which now holds the second structure's bytes.
    expect(first.buffer).toBe(withSigStructure(ES384_PROTECTED_HEADER, short, (tbs) => tbs.buffer));
    expect(first.subarray(0, second.length).equals(second)).toBe(true);
  });
});
