/**
 * Attacker's review of the Nitro verifier (src/nitro/): the edges of its time handling and of the
 * options a library caller passes in.
 * - A signed `timestamp` beyond the JavaScript Date range (8.64e15 ms) made the verifier throw
 *   `RangeError: Invalid time value` from inside an error message, surfacing as the catch-all
 *   `nitro.verify_failed`; it must be refused as a bad payload field, naming the field.
 * - `maxFutureSkewSeconds` was used unchecked: NaN made `timestamp > at + NaN` false, so a document
 *   from days in the future was accepted; a negative value refused current documents. Both must be
 *   refused as `nitro.bad_options`.
 * - The NSM request decoder echoed an unknown key into its error message unbounded.
 */
import 'reflect-metadata';
import { encode } from 'cbor2';
import { beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { NitroCertCache } from '../../src/nitro/certs.js';
import { decodeAttestationRequest } from '../../src/nitro/nsm.js';
import { verifyNitroDocument, type NitroVerifyOptions } from '../../src/nitro/verify.js';
import { makeDocument, makeLeaf, makePki, type Leaf, type TestPki } from '../nitro/fixtures.js';

const T0 = Date.UTC(2025, 5, 1, 12, 0, 0);
/** The largest time value a JavaScript Date can hold (ECMA-262 §21.4.1.1). */
const MAX_DATE_MS = 8.64e15;

let pki: TestPki;
let leaf: Leaf;
const cache = new NitroCertCache();

beforeAll(async () => {
  pki = await makePki({ name: 'bounds' });
  leaf = await makeLeaf(pki);
});

function outcome(doc: Uint8Array, o: Partial<NitroVerifyOptions> = {}): { code: string; message: string } {
  try {
    verifyNitroDocument(doc, { at: new Date(T0), rootSha256: pki.rootSha256, cache, ...o });
    return { code: 'accepted', message: '' };
  } catch (e) {
    if (!(e instanceof SigilError)) throw e;
    return { code: e.code, message: e.message };
  }
}

describe('Nitro timestamp range', () => {
  it('a signed timestamp beyond the Date range is a bad payload field, not a RangeError from a message', () => {
    for (const ts of [MAX_DATE_MS + 1, 9e15, Number.MAX_SAFE_INTEGER]) {
      const r = outcome(makeDocument(pki, leaf, { timestamp: ts }));
      expect(r.code, `timestamp ${ts}: ${r.message}`).toBe('nitro.payload_bad_field');
      expect(r.message).toContain('timestamp');
    }
    // The last representable instant still decodes (and is then judged by the freshness rule).
    expect(outcome(makeDocument(pki, leaf, { timestamp: MAX_DATE_MS })).code).toBe('nitro.document_from_future');
  });
});

describe('Nitro verifier options', () => {
  it('maxFutureSkewSeconds must be a finite number >= 0: NaN no longer switches the future check off', () => {
    const future = makeDocument(pki, leaf, { timestamp: T0 + 10 * 86_400_000 });
    expect(outcome(future).code).toBe('nitro.document_from_future');
    for (const skew of [NaN, -1, Infinity]) {
      expect(outcome(future, { maxFutureSkewSeconds: skew }).code, `skew ${skew}`).toBe('nitro.bad_options');
    }
    const now = makeDocument(pki, leaf, { timestamp: T0 });
    expect(outcome(now, { maxFutureSkewSeconds: 0 }).code).toBe('accepted');
    expect(outcome(now, { maxFutureSkewSeconds: -5 }).code).toBe('nitro.bad_options');
  });
});

describe('NSM request decoder', () => {
  it('does not echo an unknown key unbounded', () => {
    const key = 'k'.repeat(8000);
    let err: unknown;
    try {
      decodeAttestationRequest(Buffer.from(encode(new Map([['Attestation', new Map([[key, null]])]]))));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SigilError);
    expect((err as SigilError).code).toBe('nitro.nsm_request_invalid');
    expect((err as SigilError).message.length).toBeLessThan(200);
  });
});
