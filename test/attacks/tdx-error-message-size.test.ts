/**
 * Attack review (TDX collateral and quote): refusals must not echo attacker-sized text. A
 * collateral document or chain is read before anything about it is verified, so a member name, a
 * PEM label or a certificate common name can be as large as the input (1 MiB JSON, 4 MiB PEM, a
 * 64 KiB quote); error messages quote them clipped.
 */
import { generateKeyPairSync } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { derToPem } from '../../src/spiffe/pem.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { chainFromPem, verifyIntelChain } from '../../src/tdx/pki.js';
import { splitSignedJson } from '../../src/tdx/signed-json.js';
import { verifyTdxCollateral, verifyTdxQuote } from '../../src/tdx/verify.js';
import { T0, makeCollateral, makeTdxQuote, makeTdxTestPki } from '../tdx/synthetic.js';

const MAX_MESSAGE = 2000;
const pki = makeTdxTestPki();

function messageOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).message;
  }
  throw new Error('no error');
}

const bigCnCert = (cn: string): string => {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const name = encodeName([['CN', cn]]);
  return derToPem(
    encodeCertificate({ subjectDer: name, issuerDer: name, subjectSpki: k.publicKey.export({ format: 'der', type: 'spki' }), serial: Buffer.from([1]), notBefore: new Date(T0.getTime() - 1e9), notAfter: new Date(T0.getTime() + 1e9), extensions: [], signerKey: k.privateKey }),
    'CERTIFICATE',
  );
};

describe('tdx refusals stay short whatever the input', () => {
  it('signed JSON: an extra or duplicated top-level member with a huge name', () => {
    const key = 'k'.repeat(900_000);
    const extra = Buffer.from(`{"tcbInfo":{},"signature":"${'00'.repeat(64)}","${key}":"x"}`);
    expect(messageOf(() => splitSignedJson(extra, 'tcbInfo', 'TCB Info')).length).toBeLessThan(MAX_MESSAGE);
    const dup = Buffer.from(`{"${key}":"x","${key}":"y"}`);
    expect(messageOf(() => splitSignedJson(dup, 'tcbInfo', 'TCB Info')).length).toBeLessThan(MAX_MESSAGE);
    const c = { ...makeCollateral(pki), tcbInfo: extra };
    expect(messageOf(() => verifyTdxCollateral(c, { now: T0, rootSha256: pki.rootSha256 })).length).toBeLessThan(MAX_MESSAGE);
  });

  it('PEM: a block label as large as the chain', () => {
    const pem = `-----BEGIN ${'A'.repeat(1_000_000)}-----\nAAAA\n-----END X-----\n`;
    expect(messageOf(() => chainFromPem(pem, 'tcb_signing')).length).toBeLessThan(MAX_MESSAGE);
  });

  it('a certificate common name as large as the certificate (collateral chain and quote chain)', () => {
    const root = bigCnCert('R'.repeat(30_000));
    const chain = bigCnCert('Intel SGX TCB Signing') + root;
    expect(messageOf(() => verifyIntelChain(chainFromPem(chain, 'tcb_signing'), 'tcb_signing', { now: T0 })).length).toBeLessThan(MAX_MESSAGE);
    const leafOnly = bigCnCert('L'.repeat(30_000));
    const pckPem = leafOnly + pki.pckChainPem.slice(pki.pckChainPem.indexOf('-----BEGIN', 10));
    const q = makeTdxQuote(pki, { pckChainPem: pckPem });
    expect(messageOf(() => verifyTdxQuote(q, undefined, { now: T0, rootSha256: pki.rootSha256, allowUnknownTcb: true })).length).toBeLessThan(MAX_MESSAGE);
  });
});
