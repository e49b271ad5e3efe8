/**
 * How many bytes a memo entry keeps alive, for the byte bounds of the event log memos (the check
 * cache's texts and outcomes, the outcome memo, the verified-data memo, the replay memo). A bound
 * that counted only an entry's key or text let an entry keep several times that in other objects:
 * an outcome's selector and fact strings, a UEFI variable's certificate fingerprints, Map records
 * and key strings, and the 8-KiB Buffer pool that a copy of a few bytes pins.
 *
 * These are ESTIMATES, not measurements: constants rounded up from what V8 in Node 20 on x64 (no
 * pointer compression) takes, measured with --expose-gc over 20,000 objects of each kind:
 *  - a one-byte string of n characters is a 16-byte header and n bytes; strings are counted here
 *    at 2 bytes a character plus 24 (up to twice the truth for ASCII text, right for UTF-16 text),
 *    so no character needs to be looked at;
 *  - a Buffer with an ArrayBuffer of its own: some 250 bytes of objects besides its bytes
 *    (JSTypedArray, JSArrayBuffer, backing store); each further view of it some 50–100;
 *  - a Map record some 55 bytes amortised (the table doubles); a small object or array 40–60
 *    bytes plus 8 a slot.
 * Objects shared between entries (an outcome kept by two memos, the prefix of a selector) are
 * counted for each, so an estimate errs high. test/attacks/eventlog-memo-retained-bytes.test.ts
 * checks the heap a filled memo holds against its configured bound.
 */

/** A string's header (rounded up) besides its characters. */
const STRING_HEADER = 24;
/** An object's or array's header and its hidden-class share, besides 8 bytes a slot. */
export const OBJECT_BYTES = 64;
/** A Map (or Set) record: key, value and chain slots, with the table's slack. */
export const MAP_ENTRY_BYTES = 64;
/** A Buffer with an ArrayBuffer of its own, besides its bytes. */
export const BUFFER_BYTES = 320;
/** A further view (subarray) of a Buffer's store. */
export const VIEW_BYTES = 128;
/** Objects deeper than this are counted as one object (the outcomes counted here are a few levels deep). */
const MAX_DEPTH = 12;

/** Estimated bytes of a string (2 a character: see above). */
export function stringBytes(s: string): number {
  return STRING_HEADER + 2 * s.length;
}

/**
 * Estimated bytes of a JSON-like value — strings, numbers, booleans, arrays, plain objects, Maps,
 * Sets, Buffers — and everything it refers to (each reference counted, shared or not).
 */
export function valueBytes(v: unknown, depth = 0): number {
  switch (typeof v) {
    case 'string':
      return stringBytes(v);
    case 'number':
    case 'bigint':
      return 16; // a heap number (small integers take none: counted anyway)
    case 'object':
      break;
    default:
      return 0; // booleans, undefined, symbols and functions (shared constants)
  }
  if (v === null) return 0;
  if (depth >= MAX_DEPTH) return OBJECT_BYTES;
  if (ArrayBuffer.isView(v)) return BUFFER_BYTES + v.byteLength;
  let n = OBJECT_BYTES;
  if (Array.isArray(v)) {
    for (const x of v) n += 8 + valueBytes(x, depth + 1);
    return n;
  }
  if (v instanceof Map) {
    for (const [k, x] of v) n += MAP_ENTRY_BYTES + valueBytes(k, depth + 1) + valueBytes(x, depth + 1);
    return n;
  }
  if (v instanceof Set) {
    for (const x of v) n += MAP_ENTRY_BYTES + valueBytes(x, depth + 1);
    return n;
  }
  for (const k in v) {
    if (!Object.hasOwn(v, k)) continue;
    // Property names are mostly shared constants; names made from data (PCR indices, bank names) are counted too.
    n += 8 + stringBytes(k) + valueBytes((v as Record<string, unknown>)[k], depth + 1);
  }
  return n;
}
