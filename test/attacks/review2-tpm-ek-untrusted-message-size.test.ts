/**
 * Attack review 2: when an EK certificate does not chain to a configured ekCa certificate, the
 * `tpm.ek_untrusted` message listed every rejected candidate issuer (`reasons.join('; ')`), each
 * with its subject Name, and fell back to the leaf's subject and issuer Names. All of those come
 * from the agent: eight hello intermediates with 8 KiB subjects made a single refusal a 64 KiB+
 * message — returned to the agent and written to the verifier's log on every attempt. The message
 * now names at most the first 5 reasons, with "and N more", and clips each Name it quotes.
 */
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { EK_LIMITS, EkTrustStore, verifyEkChain } from '../../src/tpm/ekcert.js';
import { KU, OID_BC, OID_KU, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue } from '../../src/x509/ext.js';

const AT = new Date('2030-01-01T00:00:00Z');
const nb = new Date('2029-01-01T00:00:00Z');
const na = new Date('2031-01-01T00:00:00Z');
const LONG = encodeName([['CN', `Issuing CA ${'x'.repeat(8000)}`]]);
const LONG_LEAF = encodeName([['CN', `EK ${'y'.repeat(7000)}`]]);

const p256 = (): { publicKey: KeyObject; privateKey: KeyObject } => generateKeyPairSync('ec', { namedCurve: 'P-256' });
const spki = (k: KeyObject): Buffer => k.export({ format: 'der', type: 'spki' });

function cert(subjectDer: Buffer, issuerDer: Buffer, exts: Buffer[], signer = p256().privateKey, key = p256().publicKey): Buffer {
  return encodeCertificate({ issuerDer, subjectDer, subjectSpki: spki(key), serial: Buffer.from([0x35]), notBefore: nb, notAfter: na, extensions: exts, signerKey: signer });
}

const root = p256();
const ROOT_NAME = encodeName([['CN', 'Vendor EK Root']]);
const rootDer = cert(ROOT_NAME, ROOT_NAME, [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true)), encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign | KU.cRLSign))], root.privateKey, root.publicKey);
const trust = new EkTrustStore([rootDer]);

async function refusal(leaf: Buffer, helpers: Buffer[]): Promise<SigilError> {
  try {
    await verifyEkChain(leaf, helpers, trust, AT);
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return e as SigilError;
  }
  throw new Error('the EK chain verified');
}

describe('attack: a tpm.ek_untrusted message built from agent-chosen Names', () => {
  it(`${EK_LIMITS.intermediates} non-CA helpers with 8 KiB subjects: at most 5 reasons, "and 3 more", bounded length`, async () => {
    const leaf = cert(encodeName([]), LONG, []);
    const helpers = Array.from({ length: EK_LIMITS.intermediates }, () => cert(LONG, LONG, []));
    const e = await refusal(leaf, helpers);
    expect(e.code).toBe('tpm.ek_untrusted');
    expect(e.message).toContain('is not a CA');
    expect(e.message).toContain(`and ${EK_LIMITS.intermediates - 5} more`);
    expect(e.message.length).toBeLessThan(2048);
  });

  it('no candidate at all: the leaf subject and issuer it names are clipped', async () => {
    const e = await refusal(cert(LONG_LEAF, LONG, []), []);
    expect(e.code).toBe('tpm.ek_untrusted');
    expect(e.message).toContain('no configured ekCa certificate issued');
    expect(e.message.length).toBeLessThan(1024);
  });

  it('control: a short list is given in full', async () => {
    const short = encodeName([['CN', 'Short CA']]);
    const e = await refusal(cert(encodeName([]), short, []), [cert(short, short, [])]);
    expect(e.message).toBe('EK certificate does not chain to a configured ekCa certificate: issuer CN=Short CA is not a CA (basicConstraints cA is not TRUE)');
  });
});
