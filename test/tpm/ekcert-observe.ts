/**
 * What Sigil emits for an EK certificate, observed through the public paths only: the offline
 * verifier's selectors and claims (ekCertSerial, ekCertIssuer, TPM manufacturer/model/version,
 * ek_ca, ek_pubhash), the key kind the agent derives its EK algorithm from, and the EK public key
 * comparison. Used by test/tpm/ekcert-claims.test.ts to pin these outputs and by
 * test/fixtures/tpm-ek/generate.ts to record them.
 */
import { SigilError } from '../../src/errors.js';
import { certKeyKind, checkEkPublicMatches, parseCertificate } from '../../src/tpm/ekcert.js';
import { parseTpm2bPublic } from '../../src/tpm/structures.js';
import { verifyTpmEvidenceOffline } from '../../src/tpm/verify.js';

export interface EkFixtureCase {
  name: string;
  /** What the case is about (kept in the fixture file for readers). */
  about: string;
  leaf: string;
  intermediates: string[];
  ekCa: string[];
  at: string;
  /** TPM2B_PUBLIC of the EK (base64), when the case also checks the public key comparison. */
  ekPub?: string;
}

export interface EkQuoteFixture {
  akPub: string;
  quote: string;
  signature: string;
  nonce: string;
}

export interface Observed {
  keyKind?: string;
  parseError?: string;
  pubMatch?: string;
  selectors?: string[];
  claims?: Record<string, unknown>;
  error?: string;
}

function codeOf(e: unknown): string {
  if (e instanceof SigilError) return e.code;
  throw e;
}

const b = (s: string): Buffer => Buffer.from(s, 'base64');

export async function observe(c: EkFixtureCase, q: EkQuoteFixture): Promise<Observed> {
  const out: Observed = {};
  try {
    const p = parseCertificate(b(c.leaf), 'EK certificate');
    out.keyKind = certKeyKind(p);
    if (c.ekPub !== undefined) {
      try {
        checkEkPublicMatches(p, parseTpm2bPublic(b(c.ekPub)));
        out.pubMatch = 'ok';
      } catch (e) {
        out.pubMatch = codeOf(e);
      }
    }
  } catch (e) {
    out.parseError = codeOf(e);
  }
  try {
    const r = await verifyTpmEvidenceOffline({
      ekCert: b(c.leaf),
      ekIntermediates: c.intermediates.map(b),
      ekCa: c.ekCa.map(b),
      akPub: b(q.akPub),
      quote: b(q.quote),
      signature: b(q.signature),
      nonce: b(q.nonce),
      at: new Date(c.at),
    });
    out.selectors = r.selectors;
    out.claims = r.claims;
  } catch (e) {
    out.error = codeOf(e);
  }
  return out;
}
