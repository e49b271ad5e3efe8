/**
 * TPM 2.0 key derivation functions (TPM 2.0 Library Part 1, "Key Derivation Functions"):
 * KDFa = SP800-108 counter mode with HMAC, KDFe = SP800-56A concatenation KDF.
 * Labels are used with a terminating 0x00 octet, as the specification requires.
 */
import { createHash, createHmac } from 'node:crypto';
import type { HashName } from './constants.js';

function labelBytes(label: string): Buffer {
  const b = Buffer.from(label, 'latin1');
  return b.length > 0 && b[b.length - 1] === 0 ? b : Buffer.concat([b, Buffer.from([0])]);
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v >>> 0);
  return b;
}

function truncateBits(out: Buffer, bits: number): Buffer {
  const bytes = Math.ceil(bits / 8);
  const r = Buffer.from(out.subarray(0, bytes));
  const extra = bytes * 8 - bits;
  if (extra > 0 && r.length > 0) r[0] = (r[0] ?? 0) & (0xff >> extra);
  return r;
}

/** KDFa(hash, key, label, contextU, contextV, bits). */
export function kdfa(hash: HashName, key: Buffer, label: string, contextU: Buffer, contextV: Buffer, bits: number): Buffer {
  const lab = labelBytes(label);
  const lenField = u32(bits);
  const blocks: Buffer[] = [];
  let have = 0;
  for (let i = 1; have * 8 < bits; i++) {
    const block = createHmac(hash, key).update(u32(i)).update(lab).update(contextU).update(contextV).update(lenField).digest();
    blocks.push(block);
    have += block.length;
  }
  return truncateBits(Buffer.concat(blocks), bits);
}

/** KDFe(hash, Z, label, partyUInfo, partyVInfo, bits). */
export function kdfe(hash: HashName, z: Buffer, label: string, partyUInfo: Buffer, partyVInfo: Buffer, bits: number): Buffer {
  const lab = labelBytes(label);
  const blocks: Buffer[] = [];
  let have = 0;
  for (let i = 1; have * 8 < bits; i++) {
    const block = createHash(hash).update(u32(i)).update(z).update(lab).update(partyUInfo).update(partyVInfo).digest();
    blocks.push(block);
    have += block.length;
  }
  return truncateBits(Buffer.concat(blocks), bits);
}
