/**
 * Test material for AMD CRL checks: an ARK whose private key the test holds and CRLs it signs.
 *
 * The synthetic chains (test/support/sev-synthetic.ts) keep their ARK key private, so
 * `ownArk(chain)` re-issues the chain's ARK under a fresh RSA key (same names, validity and
 * extensions) and re-signs its ASK/ASVK with it. The ASK/ASVK keeps its key, so the chain's
 * VCEK/VLEK, and reports signed with it, still verify through the re-issued chain.
 *
 * `makeAmdCrl` writes a v2 CertificateList the way AMD KDS serves them (RSASSA-PSS SHA-384,
 * MGF1-SHA-384, salt 48, issuer = the ARK's subject), signed by any key the test chooses.
 */
import { constants, createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import { TAG, bytesOf, children, encodeTime, readSingle, tlv, tlvOf } from '../../src/x509/der.js';
import type { SnpProduct } from '../../src/sev/report.js';
import type { SnpTestChain } from '../support/sev-synthetic.js';

const C = 'test.der';

function parts(der: Buffer): { tbs: Buffer; tbsFields: Buffer[]; alg: Buffer } {
  const top = readSingle(der, C, TAG.SEQUENCE);
  const [tbsT, algT] = children(der, top, C);
  return { tbs: bytesOf(der, tbsT!), tbsFields: children(der, tbsT!, C).map((t) => Buffer.from(bytesOf(der, t))), alg: Buffer.from(bytesOf(der, algT!)) };
}

function pssSign(data: Buffer, key: KeyObject): Buffer {
  return sign('sha384', data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 });
}

function signed(tbs: Buffer, alg: Buffer, key: KeyObject): Buffer {
  return tlv(TAG.SEQUENCE, tbs, alg, tlv(TAG.BIT_STRING, Buffer.from([0]), pssSign(tbs, key)));
}

/** The signature AlgorithmIdentifier DER of a certificate (AMD's RSASSA-PSS one for AMD chains). */
export function algorithmOf(certDer: Buffer): Buffer {
  return parts(certDer).alg;
}

/** The subject Name DER of a certificate. */
export function subjectOf(certDer: Buffer): Buffer {
  const f = parts(certDer).tbsFields;
  return f[f[0]![0] === 0xa0 ? 5 : 4]!;
}

/** The serial number content octets of a certificate. */
export function serialOf(certDer: Buffer): Buffer {
  const f = parts(certDer).tbsFields;
  const t = readSingle(f[f[0]![0] === 0xa0 ? 1 : 0]!, C, TAG.INTEGER);
  return f[f[0]![0] === 0xa0 ? 1 : 0]!.subarray(t.valueStart);
}

export interface OwnArk {
  product: SnpProduct;
  ark: Buffer;
  intermediate: Buffer;
  /** [intermediate, ark], as KDS serves them. */
  chainDer: Buffer[];
  chainPem: string;
  key: KeyObject;
  arkSha256: string;
  arkPins: Partial<Record<SnpProduct, string>>;
}

const toPem = (der: Buffer): string => `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/(.{64})/g, '$1\n').replace(/\n$/, '')}\n-----END CERTIFICATE-----\n`;

/** `chain`'s ARK re-issued under a new key the test holds, and its ASK/ASVK re-signed by it. */
export function ownArk(chain: SnpTestChain): OwnArk {
  const key = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const a = parts(chain.ark);
  const spkiIndex = a.tbsFields[0]![0] === 0xa0 ? 6 : 5;
  const arkTbs = tlvOf(TAG.SEQUENCE, a.tbsFields.map((f, i) => (i === spkiIndex ? key.publicKey.export({ type: 'spki', format: 'der' }) : f)));
  const ark = signed(arkTbs, a.alg, key.privateKey);
  const i = parts(chain.intermediate);
  const intermediate = signed(i.tbs, i.alg, key.privateKey);
  const arkSha256 = createHash('sha256').update(ark).digest('hex');
  return {
    product: chain.product,
    ark,
    intermediate,
    chainDer: [intermediate, ark],
    chainPem: toPem(intermediate) + toPem(ark),
    key: key.privateKey,
    arkSha256,
    arkPins: { [chain.product]: arkSha256 },
  };
}

export interface CrlOptions {
  /** Issuer Name DER (the ARK's subject). */
  issuer: Buffer;
  /** Signing key (the ARK's, or another for forgeries). */
  key: KeyObject;
  /** Signature AlgorithmIdentifier DER (AMD's RSASSA-PSS one). */
  alg: Buffer;
  thisUpdate: Date;
  nextUpdate: Date;
  /** Revoked serial numbers (INTEGER content octets). */
  revoked?: Buffer[];
  /** Sign with RSA PKCS#1 v1.5 SHA-384 instead (alg is then replaced). */
  pkcs1?: boolean;
}

const RSA_SHA384 = Buffer.from('300d06092a864886f70d01010c0500', 'hex');

/** A DER CertificateList signed as AMD KDS signs its CRLs. */
export function makeAmdCrl(o: CrlOptions): Buffer {
  const alg = o.pkcs1 ? RSA_SHA384 : o.alg;
  const revoked = (o.revoked ?? []).map((s) => tlv(TAG.SEQUENCE, tlv(TAG.INTEGER, s), encodeTime(o.thisUpdate)));
  const fields = [tlv(TAG.INTEGER, Buffer.from([1])), alg, o.issuer, encodeTime(o.thisUpdate), encodeTime(o.nextUpdate)];
  if (revoked.length > 0) fields.push(tlvOf(TAG.SEQUENCE, revoked));
  const tbs = tlvOf(TAG.SEQUENCE, fields);
  const sig = o.pkcs1 ? sign('sha384', tbs, o.key) : pssSign(tbs, o.key);
  return tlv(TAG.SEQUENCE, tbs, alg, tlv(TAG.BIT_STRING, Buffer.from([0]), sig));
}

/** A CRL for `root` (its issuer, key and algorithm) with the given validity and revoked serials. */
export function crlFor(root: Pick<OwnArk, 'ark' | 'key'>, thisUpdate: Date, nextUpdate: Date, revoked: Buffer[] = []): Buffer {
  return makeAmdCrl({ issuer: subjectOf(root.ark), key: root.key, alg: algorithmOf(root.ark), thisUpdate, nextUpdate, revoked });
}
