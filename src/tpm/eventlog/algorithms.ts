/**
 * Digest algorithms an event log may declare (TCG Algorithm Registry IDs and sizes), and how
 * Sigil names them: the bank names used by PCR selectors (`sha1`, `sha256`, …).
 */
import * as nodeCrypto from 'node:crypto';
import { createHash, getHashes } from 'node:crypto';
import { SigilError } from '../../errors.js';

export interface EventLogAlgorithm {
  /** TPM_ALG_ID. */
  readonly id: number;
  /** Bank name as Sigil spells it (`sha256`). */
  readonly name: string;
  /** Digest size in bytes. */
  readonly size: number;
  /** node:crypto hash name. */
  readonly nodeHash: string;
}

const ALGORITHMS: readonly EventLogAlgorithm[] = [
  { id: 0x0004, name: 'sha1', size: 20, nodeHash: 'sha1' },
  { id: 0x000b, name: 'sha256', size: 32, nodeHash: 'sha256' },
  { id: 0x000c, name: 'sha384', size: 48, nodeHash: 'sha384' },
  { id: 0x000d, name: 'sha512', size: 64, nodeHash: 'sha512' },
  { id: 0x0012, name: 'sm3_256', size: 32, nodeHash: 'sm3' },
  { id: 0x0027, name: 'sha3_256', size: 32, nodeHash: 'sha3-256' },
  { id: 0x0028, name: 'sha3_384', size: 48, nodeHash: 'sha3-384' },
  { id: 0x0029, name: 'sha3_512', size: 64, nodeHash: 'sha3-512' },
];

const BY_ID = new Map(ALGORITHMS.map((a) => [a.id, a]));
const BY_NAME = new Map(ALGORITHMS.map((a) => [a.name, a]));

export function algorithmById(id: number): EventLogAlgorithm | undefined {
  return BY_ID.get(id);
}

export function algorithmByName(name: string): EventLogAlgorithm | undefined {
  return BY_NAME.get(name);
}

let available: Set<string> | undefined;

function requireHash(alg: EventLogAlgorithm): void {
  available ??= new Set(getHashes());
  if (!available.has(alg.nodeHash)) {
    throw new SigilError('tpm.eventlog_unsupported_algorithm', `event log bank ${alg.name}: this Node.js build cannot compute ${alg.nodeHash}`);
  }
}

/** Hash `parts` with the bank's algorithm; a bank this Node build cannot hash is a typed error. */
export function bankHash(alg: EventLogAlgorithm, ...parts: Uint8Array[]): Buffer {
  requireHash(alg);
  // One-shot crypto.hash (Node ≥ 20.12, 22, 24) is markedly cheaper than createHash for the
  // short inputs of a replay; older Node 20 releases take the streaming path.
  if (oneShot !== undefined) return oneShot(alg.nodeHash, parts.length === 1 ? parts[0]! : Buffer.concat(parts), 'buffer');
  const h = createHash(alg.nodeHash);
  for (const p of parts) h.update(p);
  return h.digest();
}

/**
 * A register extender for one bank: `extend(register, digest)` = H(register ‖ digest), a new
 * buffer. Both inputs are copied into one scratch buffer owned by the extender (no allocation per
 * call besides the result), so an extender must not be shared between interleaved replays that
 * rely on the scratch between calls — it is not: each call reads it only within itself.
 * Throws `tpm.eventlog_unsupported_algorithm` at creation if Node cannot hash the bank.
 */
export function bankExtender(alg: EventLogAlgorithm): (register: Uint8Array, digest: Uint8Array) => Buffer {
  requireHash(alg);
  const n = alg.size;
  const scratch = Buffer.allocUnsafe(2 * n);
  return (register, digest) => {
    if (register.length !== n || digest.length !== n) {
      throw new SigilError('tpm.eventlog_bad_digest_size', `event log: extending ${alg.name} needs ${n}-byte register and digest, got ${register.length} and ${digest.length}`);
    }
    scratch.set(register, 0);
    scratch.set(digest, n);
    if (oneShot !== undefined) return oneShot(alg.nodeHash, scratch, 'buffer');
    return createHash(alg.nodeHash).update(scratch).digest();
  };
}

const oneShot = (nodeCrypto as { hash?: (alg: string, data: Uint8Array, enc: 'buffer') => Buffer }).hash;
