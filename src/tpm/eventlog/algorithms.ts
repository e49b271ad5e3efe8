/**
 * Digest algorithms an event log may declare (TCG Algorithm Registry IDs and sizes), and how
 * Sigil names them: the bank names used by PCR selectors (`sha1`, `sha256`, …).
 */
import { getHashes } from 'node:crypto';
import { digest, digestHex, digestInto } from '../../util/digest.js';
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

/** Digest sizes by TPM_ALG_ID (every registered ID here is under 64); 0 for an ID Sigil does not know. */
const SIZE_BY_ID = new Uint8Array(64);
for (const a of ALGORITHMS) SIZE_BY_ID[a.id] = a.size;

/** The digest size of algorithm `id`, or 0 when Sigil does not know it: a table read, for loops over every record's digests. */
export function digestSizeById(id: number): number {
  return id >= 0 && id < 64 ? SIZE_BY_ID[id]! : 0;
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
  return digest(alg.nodeHash, parts.length === 1 ? parts[0]! : Buffer.concat(parts));
}

/** Lowercase hex of the bank hash of `data` (no intermediate Buffer: the one-shot hash's Buffer output costs 3× its hex). */
export function bankHashHex(alg: EventLogAlgorithm, data: Uint8Array): string {
  requireHash(alg);
  return digestHex(alg.nodeHash, data);
}

/**
 * A register for one bank held in a buffer of twice the digest size: the value in the first half,
 * the second half scratch for the digest being extended, so an extend allocates nothing but the
 * hash's own output. `extendFrom(src, off)` extends by the digest at `src[off .. off + size)`.
 */
export class BankRegister {
  private readonly buf: Buffer;
  constructor(
    readonly alg: EventLogAlgorithm,
    initial: Uint8Array,
  ) {
    requireHash(alg);
    if (initial.length !== alg.size) throw new SigilError('tpm.eventlog_bad_initial_value', `event log: initial ${alg.name} register value is ${initial.length} bytes, expected ${alg.size}`);
    this.buf = Buffer.alloc(2 * alg.size);
    this.buf.set(initial, 0);
  }

  extendFrom(src: Uint8Array, off: number): void {
    const n = this.alg.size;
    if (off < 0 || off + n > src.length) throw new SigilError('tpm.eventlog_bad_digest_size', `event log: a ${this.alg.name} digest at byte ${off} does not fit in ${src.length} bytes`);
    const b = this.buf;
    for (let i = 0; i < n; i++) b[n + i] = src[off + i]!;
    this.rehash();
  }

  extend(digest: Uint8Array): void {
    const n = this.alg.size;
    if (digest.length !== n) throw new SigilError('tpm.eventlog_bad_digest_size', `event log: extending ${this.alg.name} needs a ${n}-byte digest, got ${digest.length}`);
    this.buf.set(digest, n);
    this.rehash();
  }

  private rehash(): void {
    // One-shot hash written back in place (src/util/digest.ts: the cheapest round trip on Node 20).
    digestInto(this.alg.nodeHash, this.buf, this.buf);
  }

  /** The value, a new buffer. */
  value(): Buffer {
    return Buffer.from(this.buf.subarray(0, this.alg.size));
  }
}

