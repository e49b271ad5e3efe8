/**
 * Helpers shared by the property-based parser tests: run a parser on hostile bytes and check that
 * the only thing it ever throws is a SigilError whose code belongs to the parser's own family.
 */
import { expect } from 'vitest';
import fc from 'fast-check';
import { SigilError } from '../../src/errors.js';

/**
 * Run `parse(bytes)`. If it throws, the error must be a SigilError whose code matches `codes`;
 * anything else (TypeError, RangeError from a Buffer read, a plain Error) fails the test.
 * Returns the parse result, or the SigilError when it refused.
 */
export function parseOrRefuse<T>(parse: () => T, codes: RegExp): { ok: true; value: T } | { ok: false; error: SigilError } {
  try {
    return { ok: true, value: parse() };
  } catch (e) {
    if (!(e instanceof SigilError)) throw new Error(`parser threw ${e instanceof Error ? `${e.name}: ${e.message}` : String(e)} instead of a SigilError`, { cause: e });
    expect(e.code).toMatch(codes);
    return { ok: false, error: e };
  }
}

/** `parse()` must refuse with a SigilError whose code matches `codes`; returns that code. */
export function refusedWith(parse: () => unknown, codes: RegExp): string {
  const r = parseOrRefuse(parse, codes);
  if (r.ok) throw new Error(`parser accepted input it must refuse (expected a ${String(codes)} error)`);
  return r.error.code;
}

/** Arbitrary bytes of the given length range as a Buffer. */
export function bytes(minLength: number, maxLength: number): fc.Arbitrary<Buffer> {
  return fc.uint8Array({ minLength, maxLength }).map((u) => Buffer.from(u));
}

/** A copy of `b` with the byte at `pos % b.length` replaced by `value` (a different value). */
export function withByte(b: Buffer, pos: number, xor: number): Buffer {
  const out = Buffer.from(b);
  const i = pos % out.length;
  out[i] = (out[i]! ^ (xor % 255 + 1)) & 0xff;
  return out;
}

/** Property-run settings: a fixed seed from FC_SEED when set (to replay a failure), else fast-check's own. */
export function runs(numRuns: number): { numRuns: number; seed?: number } {
  const seed = process.env.FC_SEED === undefined ? undefined : Number(process.env.FC_SEED);
  return seed === undefined ? { numRuns } : { numRuns, seed };
}
