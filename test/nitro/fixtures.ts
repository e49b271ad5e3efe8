/**
 * Synthetic Nitro PKI and document builder for tests: an ES384 test root, intermediates and
 * signing (leaf) certificates made with @peculiar/x509, and COSE_Sign1 documents signed with the
 * leaf key, so every field (nonce, public_key, PCRs, timestamp) can be chosen.
 */
import 'reflect-metadata';
import { createHash, KeyObject, sign, webcrypto } from 'node:crypto';
type CryptoKeyPair = webcrypto.CryptoKeyPair;
import * as x509 from '@peculiar/x509';
import { decode, encode, Tag } from 'cbor2';
import { sigStructure } from '../../src/nitro/document.js';
import type { NsmTransport } from '../../src/nitro/plugin.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

export const ES384 = { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' } as const;

export interface CaNode {
  cert: x509.X509Certificate;
  der: Buffer;
  keys: CryptoKeyPair;
}

export interface TestPki {
  root: CaNode;
  /** Intermediates, top (issued by root) first. */
  intermediates: CaNode[];
  rootPem: string;
  rootSha256: string;
  /** cabundle as AWS sends it: root first, then intermediates. */
  cabundle: Buffer[];
}

export interface Leaf {
  der: Buffer;
  key: KeyObject;
}

function u8(b: Uint8Array): Uint8Array {
  return new Uint8Array(b);
}

async function genKeys(curve: 'P-384' | 'P-256' = 'P-384'): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: curve }, true, ['sign', 'verify'])) as CryptoKeyPair;
}

let serial = 1;
function nextSerial(): string {
  serial += 1;
  return serial.toString(16).padStart(4, '0');
}

export interface CaOptions {
  name: string;
  notBefore?: Date;
  notAfter?: Date;
  pathLength?: number;
  ca?: boolean;
  bcCritical?: boolean;
  keyUsage?: x509.KeyUsageFlags;
  extraExtensions?: x509.Extension[];
  issuerName?: string;
}

export async function makeCa(parent: CaNode | null, o: CaOptions): Promise<CaNode> {
  const keys = await genKeys();
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(o.ca ?? true, o.pathLength, o.bcCritical ?? true),
    new x509.KeyUsagesExtension(o.keyUsage ?? (x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature), true),
    ...(o.extraExtensions ?? []),
  ];
  const base = {
    serialNumber: nextSerial(),
    notBefore: o.notBefore ?? new Date(Date.UTC(2020, 0, 1)),
    notAfter: o.notAfter ?? new Date(Date.UTC(2045, 0, 1)),
    signingAlgorithm: ES384,
    extensions,
  };
  const cert = parent
    ? await x509.X509CertificateGenerator.create({ ...base, subject: o.name, issuer: o.issuerName ?? parent.cert.subject, publicKey: keys.publicKey, signingKey: parent.keys.privateKey })
    : await x509.X509CertificateGenerator.createSelfSigned({ ...base, name: o.name, keys });
  return { cert, der: Buffer.from(cert.rawData), keys };
}

export async function makePki(opts: { intermediates?: number; name?: string } = {}): Promise<TestPki> {
  const name = opts.name ?? 'test';
  const root = await makeCa(null, { name: `CN=${name}.nitro-enclaves, O=Sigil Test, C=US` });
  const intermediates: CaNode[] = [];
  let parent = root;
  const n = opts.intermediates ?? 3;
  for (let i = 0; i < n; i++) {
    const node = await makeCa(parent, { name: `CN=${name}-int${i}.nitro-enclaves, O=Sigil Test, C=US`, pathLength: n - 1 - i });
    intermediates.push(node);
    parent = node;
  }
  return {
    root,
    intermediates,
    rootPem: root.cert.toString('pem'),
    rootSha256: createHash('sha256').update(root.der).digest('hex'),
    cabundle: [root.der, ...intermediates.map((c) => c.der)],
  };
}

export interface LeafOptions {
  notBefore?: Date;
  notAfter?: Date;
  ca?: boolean;
  keyUsage?: x509.KeyUsageFlags;
  curve?: 'P-384' | 'P-256';
  extraExtensions?: x509.Extension[];
  issuerName?: string;
}

/** A signing certificate under the last intermediate (or the given CA). */
export async function makeLeaf(pki: TestPki, o: LeafOptions = {}, issuer?: CaNode): Promise<Leaf> {
  const parent = issuer ?? pki.intermediates[pki.intermediates.length - 1] ?? pki.root;
  const keys = await genKeys(o.curve ?? 'P-384');
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(o.ca ?? false, undefined, true),
    new x509.KeyUsagesExtension(o.keyUsage ?? (x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.nonRepudiation), false),
    ...(o.extraExtensions ?? []),
  ];
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: nextSerial(),
    subject: 'CN=i-0123456789abcdef0-enc0123456789abcdef.test.aws, O=Sigil Test, C=US',
    issuer: o.issuerName ?? parent.cert.subject,
    notBefore: o.notBefore ?? new Date(Date.UTC(2024, 0, 1)),
    notAfter: o.notAfter ?? new Date(Date.UTC(2040, 0, 1)),
    signingAlgorithm: ES384,
    publicKey: keys.publicKey,
    signingKey: parent.keys.privateKey,
    extensions,
  });
  return { der: Buffer.from(cert.rawData), key: KeyObject.from(keys.privateKey) };
}

export interface DocFields {
  moduleId?: string;
  timestamp?: number;
  digest?: string;
  pcrs?: Map<number, Uint8Array>;
  nonce?: Uint8Array | null;
  publicKey?: Uint8Array | null;
  userData?: Uint8Array | null;
  certificate?: Uint8Array;
  cabundle?: Uint8Array[];
}

export const MODULE_ID = 'i-0123456789abcdef0-enc0123456789abcdef';

/** Production-looking PCRs: 0,1,2 set, 3..15 zero. */
export function defaultPcrs(): Map<number, Uint8Array> {
  const m = new Map<number, Uint8Array>();
  for (let i = 0; i < 16; i++) m.set(i, i < 3 ? createHash('sha384').update(`pcr${i}`).digest() : new Uint8Array(48));
  return m;
}

export function debugPcrs(): Map<number, Uint8Array> {
  const m = defaultPcrs();
  for (const i of [0, 1, 2]) m.set(i, new Uint8Array(48));
  return m;
}

/** Payload map in AWS field order; `mutate` may edit the Map before encoding. */
export function payloadMap(pki: TestPki, leaf: Leaf, f: DocFields = {}): Map<string, unknown> {
  const pcrs = new Map<number, Uint8Array>();
  for (const [k, v] of f.pcrs ?? defaultPcrs()) pcrs.set(k, u8(v));
  return new Map<string, unknown>([
    ['module_id', f.moduleId ?? MODULE_ID],
    ['digest', f.digest ?? 'SHA384'],
    ['timestamp', f.timestamp ?? Date.UTC(2025, 5, 1, 12, 0, 0)],
    ['pcrs', pcrs],
    ['certificate', u8(f.certificate ?? leaf.der)],
    ['cabundle', (f.cabundle ?? pki.cabundle).map(u8)],
    ['public_key', f.publicKey === undefined || f.publicKey === null ? null : u8(f.publicKey)],
    ['user_data', f.userData === undefined || f.userData === null ? null : u8(f.userData)],
    ['nonce', f.nonce === undefined || f.nonce === null ? null : u8(f.nonce)],
  ]);
}

export interface SignOptions {
  tagged?: boolean;
  protectedHeader?: Uint8Array;
  unprotected?: unknown;
}

/** COSE_Sign1 over raw payload bytes, ES384 with the leaf key. */
export function signPayload(payload: Uint8Array, key: KeyObject, o: SignOptions = {}): Buffer {
  const prot = o.protectedHeader ?? Buffer.from('a1013822', 'hex');
  const sig = sign('sha384', sigStructure(prot, payload), { key, dsaEncoding: 'ieee-p1363' });
  const arr = [u8(prot), o.unprotected ?? new Map(), u8(payload), u8(sig)];
  return Buffer.from(encode(o.tagged ? new Tag(18, arr) : arr));
}

export function makeDocument(pki: TestPki, leaf: Leaf, f: DocFields = {}, o: SignOptions = {}): Buffer {
  return signPayload(encode(payloadMap(pki, leaf, f)), leaf.key, o);
}

/** A transport that plays the NSM: it answers Attestation requests with documents from this PKI. */
export function fakeNsm(pki: TestPki, leaf: Leaf, f: () => DocFields = () => ({})): NsmTransport & { requests: Buffer[] } {
  const requests: Buffer[] = [];
  const t = async (req: Buffer): Promise<Buffer> => {
    requests.push(req);
    const m = decode(req, { preferMap: true }) as Map<string, Map<string, Uint8Array | null>>;
    const body = m.get('Attestation');
    if (!body) return Buffer.from(encode(new Map([['Error', 'InvalidOperation']])));
    const doc = makeDocument(pki, leaf, { ...f(), nonce: body.get('nonce') ?? null, publicKey: body.get('public_key') ?? null, userData: body.get('user_data') ?? null });
    return Buffer.from(encode(new Map([['Attestation', new Map([['document', u8(doc)]])]])));
  };
  return Object.assign(t, { requests });
}
