import { describe, expect, it } from 'vitest';
import * as sigil from '../src/index.js';

describe('library entry point', () => {
  it('exposes the SPIFFE primitives and every evidence verifier', () => {
    expect(typeof sigil.spiffe.SpiffeId.parse).toBe('function');
    expect(typeof sigil.spiffe.verifyX509Svid).toBe('function');
    expect(typeof sigil.spiffe.validateJwtSvid).toBe('function');
    expect(typeof sigil.tpm.verifyTpmEvidenceOffline).toBe('function');
    expect(typeof sigil.nitro.verifyNitroDocument).toBe('function');
    expect(typeof sigil.sev.verifySnpEvidence).toBe('function');
    expect(sigil.spiffe.SpiffeId.parse('spiffe://example.org/a').trustDomain).toBe('example.org');
    expect(() => sigil.spiffe.SpiffeId.parse('spiffe://example.org/a/')).toThrow(sigil.SigilError);
  });
});
