/**
 * Bounded big-endian reader and writer for TPM 2.0 wire structures.
 *
 * Hand-written: no maintained JavaScript library parses TPM 2.0 marshalled
 * structures strictly (bounded sizes, no trailing bytes, typed errors), so Sigil
 * carries its own. Every read is bounds-checked; a short buffer never yields
 * `undefined` or a partial value, it throws SigilError with the caller's code.
 */
import { SigilError } from '../errors.js';

export class TpmReader {
  private off = 0;

  constructor(
    private readonly buf: Buffer,
    /** Error code for malformed input, e.g. `tpm.malformed_public`. */
    readonly code: string,
    /** Structure name for messages, e.g. `TPMT_PUBLIC`. */
    readonly what: string,
  ) {}

  get offset(): number {
    return this.off;
  }

  get remaining(): number {
    return this.buf.length - this.off;
  }

  fail(message: string): never {
    throw new SigilError(this.code, `${this.what}: ${message}`);
  }

  private need(n: number, field: string): void {
    if (n > this.remaining) this.fail(`truncated reading ${field} at offset ${this.off} (need ${n} bytes, have ${this.remaining})`);
  }

  u8(field: string): number {
    this.need(1, field);
    const v = this.buf.readUInt8(this.off);
    this.off += 1;
    return v;
  }

  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16BE(this.off);
    this.off += 2;
    return v;
  }

  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32BE(this.off);
    this.off += 4;
    return v;
  }

  u64(field: string): bigint {
    this.need(8, field);
    const v = this.buf.readBigUInt64BE(this.off);
    this.off += 8;
    return v;
  }

  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = Buffer.from(this.buf.subarray(this.off, this.off + n));
    this.off += n;
    return v;
  }

  /** A TPM2B: u16 size then that many bytes, with size ≤ max. */
  tpm2b(max: number, field: string): Buffer {
    const size = this.u16(`${field}.size`);
    if (size > max) this.fail(`${field} size ${size} exceeds the maximum ${max}`);
    return this.bytes(size, field);
  }

  /** Reject trailing bytes. */
  end(): void {
    if (this.remaining !== 0) this.fail(`${this.remaining} trailing byte(s) after the structure`);
  }
}

export class TpmWriter {
  private readonly parts: Buffer[] = [];

  u8(v: number): this {
    const b = Buffer.alloc(1);
    b.writeUInt8(v);
    this.parts.push(b);
    return this;
  }

  u16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeUInt16BE(v);
    this.parts.push(b);
    return this;
  }

  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v >>> 0);
    this.parts.push(b);
    return this;
  }

  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.parts.push(b);
    return this;
  }

  bytes(b: Uint8Array): this {
    this.parts.push(Buffer.from(b));
    return this;
  }

  tpm2b(b: Uint8Array): this {
    if (b.length > 0xffff) throw new SigilError('tpm.encode_too_large', `TPM2B of ${b.length} bytes exceeds 65535`);
    return this.u16(b.length).bytes(b);
  }

  toBuffer(): Buffer {
    return Buffer.concat(this.parts);
  }
}

/** Wrap bytes as a TPM2B (u16 size prefix). */
export function tpm2b(b: Uint8Array): Buffer {
  return new TpmWriter().tpm2b(b).toBuffer();
}
