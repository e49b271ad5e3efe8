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

/** Labels as bytes, for the few labels the code uses (shared: read only; a label is public). */
const LABELS = new Map<string, Buffer>();
const LABELS_MAX = 16;

function labelBytesCached(label: string): Buffer {
  let b = LABELS.get(label);
  if (b === undefined) {
    b = labelBytes(label);
    if (LABELS.size < LABELS_MAX) LABELS.set(label, b);
  }
  return b;
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
  const lab = labelBytesCached(label);
  // The HMAC input of one block, i ‖ label ‖ contextU ‖ contextV ‖ bits, in one buffer given in
  // one update (each update is a call into the native side). It holds no key material, so it may
  // come from Node's shared pool (every byte is written below).
  const input = Buffer.allocUnsafe(4 + lab.length + contextU.length + contextV.length + 4);
  let at = 4;
  at += lab.copy(input, at);
  at += contextU.copy(input, at);
  at += contextV.copy(input, at);
  input.writeUInt32BE(bits >>> 0, at);
  const blocks: Buffer[] = [];
  let have = 0;
  for (let i = 1; have * 8 < bits; i++) {
    input.writeUInt32BE(i >>> 0, 0);
    const block = createHmac(hash, key).update(input).digest();
    blocks.push(block);
    have += block.length;
  }
  // One whole block (MakeCredential's HMAC key: one digest long) is the output itself, a buffer of
  // its own that the caller zeroes; otherwise the truncated copy is, and the blocks are zeroed here.
  if (blocks.length === 1 && bits === blocks[0]!.length * 8) return blocks[0]!;
  const out = truncateBits(blocks.length === 1 ? blocks[0]! : Buffer.concat(blocks), bits);
  for (const b of blocks) b.fill(0);
  return out;
}

/** KDFe(hash, Z, label, partyUInfo, partyVInfo, bits). */
export function kdfe(hash: HashName, z: Buffer, label: string, partyUInfo: Buffer, partyVInfo: Buffer, bits: number): Buffer {
  const lab = labelBytesCached(label);
  const blocks: Buffer[] = [];
  let have = 0;
  for (let i = 1; have * 8 < bits; i++) {
    const block = createHash(hash).update(u32(i)).update(z).update(lab).update(partyUInfo).update(partyVInfo).digest();
    blocks.push(block);
    have += block.length;
  }
  return truncateBits(Buffer.concat(blocks), bits);
}
