/**
 * Attack review: SpiffeBundle.fromJwks caps a bundle at BUNDLE_MAX_JSON_BYTES (4 MiB) but
 * measured it in UTF-16 code units after decoding: bytes given as a Uint8Array were decoded
 * whole first, and three-byte UTF-8 characters let a federated peer's bundle run to three times
 * the cap (each counts as one unit). The cap is in bytes and is checked before decoding.
 */
import { describe, expect, it } from 'vitest';
import { BUNDLE_MAX_JSON_BYTES, SpiffeBundle } from '../../src/spiffe/bundle.js';
import { codeOf } from '../support/codes.js';

function jsonOfBytes(n: number, ch: string): string {
  const per = Buffer.byteLength(ch);
  const filler = ch.repeat(Math.ceil((n - 40) / per));
  return `{"keys":[],"spiffe_sequence":1,"x":"${filler}"}`;
}

describe('attack: bundle JSON over the byte cap', () => {
  const big = jsonOfBytes(BUNDLE_MAX_JSON_BYTES + 1024 * 1024, '\u20ac'); // ~5 MiB of UTF-8, ~1.7 M code units

  it('control: a small bundle parses', () => {
    expect(SpiffeBundle.fromJwks('example.org', jsonOfBytes(1000, '\u20ac')).sequence).toBe(1);
  });

  it('as text: refused', () => {
    expect(Buffer.byteLength(big)).toBeGreaterThan(BUNDLE_MAX_JSON_BYTES);
    expect(codeOf(() => SpiffeBundle.fromJwks('example.org', big))).toBe('bundle.malformed');
  });

  it('as bytes: refused', () => {
    expect(codeOf(() => SpiffeBundle.fromJwks('example.org', Buffer.from(big)))).toBe('bundle.malformed');
  });
});
