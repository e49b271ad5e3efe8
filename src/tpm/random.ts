/**
 * Random bytes for per-attestation secrets (the credential secret, the RSA-OAEP seed), handed out
 * from a pool refilled 4 KiB at a time. On Node 20 each `randomBytes` call costs some 9 µs of CPU
 * whatever its size (OpenSSL 3.0 DRBG overhead per call; measured, against 2 µs for a
 * `randomUUID`, which Node serves from a pool in the same way), and a TPM attestation needs two.
 *
 * Every byte is handed out once, as a copy, and zeroed in the pool at once. The copy has memory of
 * its own (`Buffer.alloc`, never Node's shared 8 KiB allocation pool that `Buffer.from` and
 * `allocUnsafe` use for small buffers): a pooled copy would sit in one ArrayBuffer with unrelated
 * buffers (other attestations' decoded input, say), readable through any of their `.buffer`s for
 * as long as that slab lives, and a caller zeroing its secret would not make those views clean.
 * A refill rewrites only the pool, never a handed-out buffer.
 */
import { randomFillSync } from 'node:crypto';

const POOL = Buffer.alloc(4096);
let offset = POOL.length;

/** `n` fresh random bytes (n ≤ 256): a new buffer that alone owns its memory (byteOffset 0, buffer n bytes). */
export function poolRandomBytes(n: number): Buffer {
  if (!Number.isInteger(n) || n < 1 || n > 256) throw new RangeError(`poolRandomBytes: ${n} bytes asked (1–256)`);
  if (offset + n > POOL.length) {
    // The unused tail is zeroed before the refill; if the refill throws, offset stays at the end
    // and the next call refills again, so no byte is handed out unless this fill wrote it.
    POOL.fill(0, offset);
    offset = POOL.length;
    randomFillSync(POOL);
    offset = 0;
  }
  const out = Buffer.alloc(n);
  POOL.copy(out, 0, offset, offset + n);
  POOL.fill(0, offset, offset + n);
  offset += n;
  return out;
}
