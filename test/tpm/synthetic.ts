/**
 * Synthetic TPM material for tests and the benchmark: EK CA chains made with @peculiar/x509
 * (EK certificates with the TCG subjectAltName), TPMT_PUBLIC areas for software keys, and
 * quotes signed in software the way a TPM lays them out. Real-TPM behaviour is covered by the
 * swtpm tests; this is for exercising certificate paths and throughput without a TPM.
 */
import 'reflect-metadata';
import { constants, createDecipheriv, createHash, createHmac, createPublicKey, diffieHellman, generateKeyPairSync, privateDecrypt, sign, timingSafeEqual, webcrypto, type KeyObject } from 'node:crypto';
import { exportJwk } from '../../src/spiffe/keys.js';
import { AsnConvert } from '@peculiar/asn1-schema';
import { AttributeTypeAndValue, AttributeValue, GeneralName, Name, RelativeDistinguishedName, SubjectAlternativeName } from '@peculiar/asn1-x509';
import * as x509 from '@peculiar/x509';
import { TPM_ALG, TPM_GENERATED_VALUE, TPM_ST, hashByName, type HashName } from '../../src/tpm/constants.js';
import { TpmWriter } from '../../src/tpm/reader.js';
import { encodePcrSelection, parseTpm2bPublic, qualifiedNameUnderEk, type PcrBankSelection } from '../../src/tpm/structures.js';

const subtle = webcrypto.subtle;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
const EC_ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };

export interface CaKey {
  cert: x509.X509Certificate;
  keys: CryptoKeyPair;
  der: Buffer;
}

export async function ecKeys(): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(EC_ALG, true, ['sign', 'verify'])) as CryptoKeyPair;
}

export async function makeRoot(cn: string, opts: { notBefore?: Date; notAfter?: Date } = {}): Promise<CaKey> {
  const keys = await ecKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=${cn}`,
    keys,
    signingAlgorithm: EC_ALG,
    notBefore: opts.notBefore ?? new Date('2020-01-01T00:00:00Z'),
    notAfter: opts.notAfter ?? new Date('2040-01-01T00:00:00Z'),
    extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)],
  });
  return { cert, keys, der: Buffer.from(cert.rawData) };
}

export async function makeIntermediate(
  cn: string,
  issuer: CaKey,
  opts: { notBefore?: Date; notAfter?: Date; ca?: boolean; pathLen?: number; extra?: x509.Extension[] } = {},
): Promise<CaKey> {
  const keys = await ecKeys();
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${cn}`,
    issuer: issuer.cert.subject,
    publicKey: keys.publicKey,
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: EC_ALG,
    notBefore: opts.notBefore ?? new Date('2020-01-01T00:00:00Z'),
    notAfter: opts.notAfter ?? new Date('2040-01-01T00:00:00Z'),
    extensions: [new x509.BasicConstraintsExtension(opts.ca ?? true, opts.pathLen, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true), ...(opts.extra ?? [])],
  });
  return { cert, keys, der: Buffer.from(cert.rawData) };
}

/** subjectAltName directoryName with TPM manufacturer/model/version (2.23.133.2.1/2/3). */
export function tpmSan(opts: { manufacturer?: string; model?: string; version?: string; multiValued?: boolean; critical?: boolean; duplicate?: boolean } = {}): x509.Extension {
  const atv = (oid: string, v: string): AttributeTypeAndValue => new AttributeTypeAndValue({ type: oid, value: new AttributeValue({ utf8String: v }) });
  const list: AttributeTypeAndValue[] = [];
  if (opts.manufacturer !== undefined) list.push(atv('2.23.133.2.1', opts.manufacturer));
  if (opts.model !== undefined) list.push(atv('2.23.133.2.2', opts.model));
  if (opts.version !== undefined) list.push(atv('2.23.133.2.3', opts.version));
  if (opts.duplicate && opts.model !== undefined) list.push(atv('2.23.133.2.2', opts.model));
  const rdns = opts.multiValued ? [new RelativeDistinguishedName(list)] : list.map((a) => new RelativeDistinguishedName([a]));
  const san = new SubjectAlternativeName([new GeneralName({ directoryName: new Name(rdns) })]);
  return new x509.Extension('2.5.29.17', opts.critical ?? true, AsnConvert.serialize(san));
}

export async function makeEkCert(
  ekPublic: KeyObject,
  issuer: CaKey,
  opts: { notBefore?: Date; notAfter?: Date; extensions?: x509.Extension[]; san?: x509.Extension | null } = {},
): Promise<Buffer> {
  const san = opts.san === undefined ? tpmSan({ manufacturer: 'id:53544D20', model: 'ST33KTPM2X', version: 'id:00090100' }) : opts.san;
  const cert = await x509.X509CertificateGenerator.create({
    subject: '',
    issuer: issuer.cert.subject,
    publicKey: ekPublic.export({ type: 'spki', format: 'der' }),
    signingKey: issuer.keys.privateKey,
    signingAlgorithm: EC_ALG,
    notBefore: opts.notBefore ?? new Date('2020-01-01T00:00:00Z'),
    notAfter: opts.notAfter ?? new Date('2040-01-01T00:00:00Z'),
    extensions: [
      ...(san ? [san] : []),
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyEncipherment, true),
      new x509.ExtendedKeyUsageExtension(['2.23.133.8.1'], false),
      ...(opts.extensions ?? []),
    ],
  });
  return Buffer.from(cert.rawData);
}

const POLICY_A_SHA256 = Buffer.from('837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa', 'hex');
const EK_ATTRS = 0x000300b2; // fixedTPM|fixedParent|sensitiveDataOrigin|adminWithPolicy|restricted|decrypt
const AK_ATTRS = 0x00050072; // fixedTPM|fixedParent|sensitiveDataOrigin|userWithAuth|restricted|sign

function jwkBytes(k: KeyObject): { n?: Buffer; e?: Buffer; x?: Buffer; y?: Buffer; crv?: string } {
  const j = exportJwk(k);
  return {
    ...(j.n ? { n: Buffer.from(j.n, 'base64url') } : {}),
    ...(j.e ? { e: Buffer.from(j.e, 'base64url') } : {}),
    ...(j.x ? { x: Buffer.from(j.x, 'base64url') } : {}),
    ...(j.y ? { y: Buffer.from(j.y, 'base64url') } : {}),
    ...(j.crv ? { crv: j.crv } : {}),
  };
}

/** TPM2B_PUBLIC for an EK-like (restricted decryption, AES-128-CFB, sha256) software key. */
export function ekPublicFor(pub: KeyObject, attrs = EK_ATTRS): Buffer {
  const j = jwkBytes(pub);
  const w = new TpmWriter();
  if (j.n) {
    w.u16(TPM_ALG.RSA).u16(TPM_ALG.SHA256).u32(attrs).tpm2b(POLICY_A_SHA256);
    w.u16(TPM_ALG.AES).u16(128).u16(TPM_ALG.CFB).u16(TPM_ALG.NULL).u16(j.n.length * 8).u32(0).tpm2b(j.n);
  } else {
    if (j.crv !== 'P-256' || !j.x || !j.y) throw new Error('synthetic EK: RSA or P-256 only');
    w.u16(TPM_ALG.ECC).u16(TPM_ALG.SHA256).u32(attrs).tpm2b(POLICY_A_SHA256);
    w.u16(TPM_ALG.AES).u16(128).u16(TPM_ALG.CFB).u16(TPM_ALG.NULL).u16(0x0003).u16(TPM_ALG.NULL).tpm2b(j.x).tpm2b(j.y);
  }
  return new TpmWriter().tpm2b(w.toBuffer()).toBuffer();
}

/**
 * TPM2B_PUBLIC for an AK-like (restricted signing, RSASSA-SHA256 / ECDSA-SHA256) software key.
 * `rsaScheme` picks the RSA key's fixed scheme (RSASSA by default, or RSAPSS).
 */
export function akPublicFor(pub: KeyObject, attrs = AK_ATTRS, rsaScheme: 'rsassa' | 'rsapss' = 'rsassa'): Buffer {
  const j = jwkBytes(pub);
  const w = new TpmWriter();
  if (j.n) {
    w.u16(TPM_ALG.RSA).u16(TPM_ALG.SHA256).u32(attrs).tpm2b(Buffer.alloc(0));
    w.u16(TPM_ALG.NULL).u16(rsaScheme === 'rsapss' ? TPM_ALG.RSAPSS : TPM_ALG.RSASSA).u16(TPM_ALG.SHA256).u16(j.n.length * 8).u32(0).tpm2b(j.n);
  } else {
    if (j.crv !== 'P-256' || !j.x || !j.y) throw new Error('synthetic AK: RSA or P-256 only');
    w.u16(TPM_ALG.ECC).u16(TPM_ALG.SHA256).u32(attrs).tpm2b(Buffer.alloc(0));
    w.u16(TPM_ALG.NULL).u16(TPM_ALG.ECDSA).u16(TPM_ALG.SHA256).u16(0x0003).u16(TPM_ALG.NULL).tpm2b(j.x).tpm2b(j.y);
  }
  return new TpmWriter().tpm2b(w.toBuffer()).toBuffer();
}

export interface SyntheticQuoteInput {
  ak: KeyObject; // private
  extraData: Buffer;
  selection: PcrBankSelection[];
  values: Map<string, Buffer>; // "bank:index" → value
  clock: bigint;
  resetCount: number;
  restartCount: number;
  hash?: HashName;
  /** RSA AKs: sign RSASSA-PKCS1-v1_5 (default) or RSASSA-PSS with this salt length in bytes. */
  pssSaltLength?: number;
  /**
   * The quote's qualifiedSigner: the bytes themselves, or the EK and AK (TPM2B_PUBLIC) to compute
   * it from as a TPM does for an AK made as the EK's child (what the tpm attestor requires).
   * Without it, a fixed fake name (enough for verifyQuote without `expectedSigner`).
   */
  signer?: Buffer | { ekPub: Buffer; akPub: Buffer };
}

/** The qualifiedSigner a TPM writes in quotes by the AK `akPub` made under the EK `ekPub` (both TPM2B_PUBLIC). */
export function signerUnderEk(ekPub: Buffer, akPub: Buffer): Buffer {
  return qualifiedNameUnderEk(parseTpm2bPublic(ekPub), parseTpm2bPublic(akPub));
}

/** A TPMS_ATTEST quote laid out as a TPM does, signed with the AK in software; returns TPM2B_ATTEST + TPMT_SIGNATURE. */
export function syntheticQuote(q: SyntheticQuoteInput): { attest: Buffer; signature: Buffer } {
  const hash = q.hash ?? 'sha256';
  const h = hashByName(hash);
  if (!h) throw new Error('hash');
  const digest = createHash(hash);
  for (const s of q.selection) {
    for (const i of s.pcrs) {
      const v = q.values.get(`${s.bank}:${i}`);
      if (!v) throw new Error(`no value for ${s.bank}:${i}`);
      digest.update(v);
    }
  }
  const signerName =
    q.signer === undefined
      ? Buffer.concat([Buffer.from([0, 0x0b]), createHash('sha256').update('synthetic-signer').digest()])
      : Buffer.isBuffer(q.signer)
        ? q.signer
        : signerUnderEk(q.signer.ekPub, q.signer.akPub);
  const body = new TpmWriter()
    .u32(TPM_GENERATED_VALUE)
    .u16(TPM_ST.ATTEST_QUOTE)
    .tpm2b(signerName)
    .tpm2b(q.extraData)
    .u64(q.clock)
    .u32(q.resetCount)
    .u32(q.restartCount)
    .u8(1)
    .u64(0x2019102300163636n)
    .bytes(encodePcrSelection(q.selection))
    .tpm2b(digest.digest())
    .toBuffer();
  const key = q.ak;
  let signature: Buffer;
  if (key.asymmetricKeyType === 'rsa' && q.pssSaltLength !== undefined) {
    const s = sign(hash, body, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: q.pssSaltLength });
    signature = new TpmWriter().u16(TPM_ALG.RSAPSS).u16(h.alg).tpm2b(s).toBuffer();
  } else if (key.asymmetricKeyType === 'rsa') {
    const s = sign(hash, body, key);
    signature = new TpmWriter().u16(TPM_ALG.RSASSA).u16(h.alg).tpm2b(s).toBuffer();
  } else {
    const s = sign(hash, body, { key, dsaEncoding: 'ieee-p1363' });
    signature = new TpmWriter().u16(TPM_ALG.ECDSA).u16(h.alg).tpm2b(s.subarray(0, 32)).tpm2b(s.subarray(32)).toBuffer();
  }
  return { attest: new TpmWriter().tpm2b(body).toBuffer(), signature };
}

export function rsaKeyPair(): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync('rsa', { modulusLength: 2048 });
}

export function p256KeyPair(): { publicKey: KeyObject; privateKey: KeyObject } {
  return generateKeyPairSync('ec', { namedCurve: 'P-256' });
}

// ---------------------------------------------------------------- software ActivateCredential

/** KDFa (SP800-108 counter mode, HMAC), written here from TPM 2.0 Part 1 independently of src/tpm/kdf.ts. */
function kdfaSha256(key: Buffer, label: string, u: Buffer, v: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  const lab = Buffer.concat([Buffer.from(label, 'latin1'), Buffer.from([0])]);
  const len = Buffer.alloc(4);
  len.writeUInt32BE(bits);
  for (let i = 1, have = 0; have * 8 < bits; i++) {
    const ctr = Buffer.alloc(4);
    ctr.writeUInt32BE(i);
    const block = createHmac('sha256', key).update(ctr).update(lab).update(u).update(v).update(len).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, bits / 8);
}

/** KDFe (SP800-56A concatenation KDF) for SHA-256. */
function kdfeSha256(z: Buffer, label: string, u: Buffer, v: Buffer, bits: number): Buffer {
  const out: Buffer[] = [];
  const lab = Buffer.concat([Buffer.from(label, 'latin1'), Buffer.from([0])]);
  for (let i = 1, have = 0; have * 8 < bits; i++) {
    const ctr = Buffer.alloc(4);
    ctr.writeUInt32BE(i);
    const block = createHash('sha256').update(ctr).update(z).update(lab).update(u).update(v).digest();
    out.push(block);
    have += block.length;
  }
  return Buffer.concat(out).subarray(0, bits / 8);
}

function take2b(buf: Buffer, at: number, what: string): { value: Buffer; next: number } {
  if (at + 2 > buf.length) throw new Error(`${what}: truncated size`);
  const n = buf.readUInt16BE(at);
  if (at + 2 + n > buf.length) throw new Error(`${what}: truncated body`);
  return { value: buf.subarray(at + 2, at + 2 + n), next: at + 2 + n };
}

function leftPad(b: Buffer, size: number): Buffer {
  return b.length >= size ? b : Buffer.concat([Buffer.alloc(size - b.length), b]);
}

/**
 * TPM2_ActivateCredential done in software with the private key of an EK made by `ekPublicFor`
 * (nameAlg SHA-256, AES-128-CFB): what the TPM holding that EK does with the verifier's
 * challenge. The AK Name is computed from `akPub` (TPM2B_PUBLIC), so a credential made for
 * another AK fails the integrity check, as it would in a TPM. Returns the recovered secret.
 */
export function activateCredentialSoftware(ekPrivate: KeyObject, akPub: Buffer, credentialBlob: Buffer, encryptedSecret: Buffer): Buffer {
  const akName = Buffer.concat([Buffer.from([0x00, 0x0b]), createHash('sha256').update(take2b(akPub, 0, 'akPub').value).digest()]);
  const secretOuter = take2b(encryptedSecret, 0, 'encryptedSecret');
  if (secretOuter.next !== encryptedSecret.length) throw new Error('encryptedSecret: trailing bytes');
  let seed: Buffer;
  if (ekPrivate.asymmetricKeyType === 'rsa') {
    seed = privateDecrypt({ key: ekPrivate, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256', oaepLabel: Buffer.from('IDENTITY\0', 'latin1') }, secretOuter.value);
  } else {
    const x = take2b(secretOuter.value, 0, 'ephemeral x');
    const y = take2b(secretOuter.value, x.next, 'ephemeral y');
    if (y.next !== secretOuter.value.length) throw new Error('ephemeral point: trailing bytes');
    const eph = createPublicKey({ key: { kty: 'EC', crv: 'P-256', x: x.value.toString('base64url'), y: y.value.toString('base64url') }, format: 'jwk' });
    const z = leftPad(diffieHellman({ privateKey: ekPrivate, publicKey: eph }), 32);
    const ekX = Buffer.from(exportJwk(ekPrivate).x as string, 'base64url');
    // partyUInfo / partyVInfo: the ephemeral and EK x coordinates as the TPM2Bs hold them.
    seed = kdfeSha256(z, 'IDENTITY', x.value, ekX, 256);
  }
  const idObject = take2b(credentialBlob, 0, 'credentialBlob');
  if (idObject.next !== credentialBlob.length) throw new Error('credentialBlob: trailing bytes');
  const integrity = take2b(idObject.value, 0, 'integrityHMAC');
  const encIdentity = idObject.value.subarray(integrity.next);
  const hmacKey = kdfaSha256(seed, 'INTEGRITY', Buffer.alloc(0), Buffer.alloc(0), 256);
  const mac = createHmac('sha256', hmacKey).update(encIdentity).update(akName).digest();
  if (mac.length !== integrity.value.length || !timingSafeEqual(mac, integrity.value)) throw new Error('credential integrity check failed (wrong EK or AK)');
  const symKey = kdfaSha256(seed, 'STORAGE', akName, Buffer.alloc(0), 128);
  const d = createDecipheriv('aes-128-cfb', symKey, Buffer.alloc(16));
  const plain = Buffer.concat([d.update(encIdentity), d.final()]);
  const secret = take2b(plain, 0, 'credential');
  if (secret.next !== plain.length) throw new Error('credential: trailing bytes');
  return Buffer.from(secret.value);
}
