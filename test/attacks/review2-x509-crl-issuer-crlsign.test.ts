/**
 * Attack review 2: checkCrl (src/x509/crl.ts) accepted a CRL from an issuer whose keyUsage does
 * not allow CRL signing. RFC 5280 §4.2.1.3: a key used to verify CRL signatures must have cRLSign
 * asserted when keyUsage is present; a CA whose key was certified for certificates only (or a
 * signing key of another purpose with the CA's name) must not be able to issue the revocation
 * verdict for its subordinates — a CRL "from" it that drops a revoked serial would be believed.
 * Now refused with `x509.crl_issuer_not_crl_signer` (TDX: `tdx.cert_usage_invalid`); an issuer
 * without keyUsage is still accepted (RFC 5280 only binds a keyUsage that is present).
 */
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { checkCrl, parseCertificate, parseCrl } from '../../src/x509/index.js';
import { TAG, encodeTime, tlv, tlvOf } from '../../src/x509/der.js';
import { KU, OID_BC, OID_KU, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue } from '../../src/x509/ext.js';
import { ALG_ID_DER } from '../../src/x509/sigalg.js';
import { checkCrl as checkIntelCrl, parseIntelCert } from '../../src/tdx/pki.js';
import { codeOf } from '../support/codes.js';

const T0 = new Date('2025-06-01T00:00:00Z');
const DAY = 86_400_000;
const nb = new Date(T0.getTime() - DAY);
const na = new Date(T0.getTime() + DAY);

function issuer(usage: number | undefined): { key: KeyObject; name: Buffer; der: Buffer } {
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const name = encodeName([['O', 'crl test'], ['CN', 'issuing CA']]);
  const exts = [encodeExtension(OID_BC, true, encodeBasicConstraintsValue(true))];
  if (usage !== undefined) exts.push(encodeExtension(OID_KU, true, encodeKeyUsageValue(usage)));
  const der = encodeCertificate({ subjectDer: name, subjectSpki: k.publicKey.export({ format: 'der', type: 'spki' }), serial: Buffer.from([7]), notBefore: nb, notAfter: na, extensions: exts, signerKey: k.privateKey });
  return { key: k.privateKey, name, der };
}

function crlBy(key: KeyObject, issuerName: Buffer): Buffer {
  const tbs = tlvOf(TAG.SEQUENCE, [tlv(TAG.INTEGER, Buffer.from([1])), ALG_ID_DER.ecdsaSha256, issuerName, encodeTime(nb), encodeTime(na)]);
  return tlv(TAG.SEQUENCE, tbs, ALG_ID_DER.ecdsaSha256, tlv(TAG.BIT_STRING, Buffer.from([0]), sign('sha256', tbs, key)));
}

describe('attack: a CRL signed by a CA whose keyUsage lacks cRLSign', () => {
  it('keyUsage keyCertSign only: refused (x509.crl_issuer_not_crl_signer)', () => {
    const ca = issuer(KU.keyCertSign);
    expect(codeOf(() => checkCrl(parseCrl(crlBy(ca.key, ca.name)), parseCertificate(ca.der), T0))).toBe('x509.crl_issuer_not_crl_signer');
  });

  it('keyUsage digitalSignature only: refused', () => {
    const ca = issuer(KU.digitalSignature);
    expect(codeOf(() => checkCrl(parseCrl(crlBy(ca.key, ca.name)), parseCertificate(ca.der), T0))).toBe('x509.crl_issuer_not_crl_signer');
  });

  it('under the TDX vocabulary: tdx.cert_usage_invalid', () => {
    const ca = issuer(KU.keyCertSign);
    expect(codeOf(() => checkIntelCrl(parseCrl(crlBy(ca.key, ca.name)), parseIntelCert(ca.der, 'test CA'), T0, 'PCK CRL'))).toBe('tdx.cert_usage_invalid');
  });

  it('controls: keyUsage with cRLSign, and no keyUsage at all, are accepted', () => {
    for (const usage of [KU.keyCertSign | KU.cRLSign, KU.cRLSign, undefined]) {
      const ca = issuer(usage);
      expect(codeOf(() => checkCrl(parseCrl(crlBy(ca.key, ca.name)), parseCertificate(ca.der), T0)), String(usage)).toBe('no error');
    }
  });
});
