/**
 * AWS Nitro Enclaves attestation document verifier. Pure: document bytes, trust anchor pin,
 * verification time and expectations in; a typed result or a SigilError (code `nitro.*`) out.
 *
 * Steps: strict COSE_Sign1 decode (document.ts) → payload field checks → certificate path from
 * `certificate` through `cabundle` to the pinned root, valid at the verification time (certs.ts) →
 * ES384 signature over the Sig_structure built from the received bytes → debug-mode check →
 * freshness → nonce / public_key binding → required PCR values.
 */
import { createPublicKey, timingSafeEqual, verify as cryptoVerify } from 'node:crypto';
import { SigilError, errorMessage } from '../errors.js';
import { AWS_NITRO_ROOT_G1_SHA256 } from './aws-root.js';
import { NitroCertCache, validateNitroChain } from './certs.js';
import { parseCoseSign1, parseNitroPayload, withSigStructure } from './document.js';

export const DEFAULT_MAX_AGE_SECONDS = 300;
export const DEFAULT_MAX_FUTURE_SKEW_SECONDS = 60;

export interface NitroVerifyOptions {
  /** Verification time: certificate validity and freshness are judged at this instant. */
  at: Date;
  /** SHA-256 (hex or bytes) of the DER of the root that `cabundle[0]` must be. Default: AWS Nitro Enclaves Root-G1. */
  rootSha256?: string | Uint8Array;
  /** Accept debug-mode enclaves (PCR0, PCR1 and PCR2 all zero). Default false. */
  allowDebug?: boolean;
  /** Reject documents older than this many seconds at `at`. Undefined: age is not checked (offline use). */
  maxAgeSeconds?: number;
  /** Reject documents whose timestamp is more than this many seconds after `at` (finite, >= 0). Default 60. */
  maxFutureSkewSeconds?: number;
  /** When given, the document's `nonce` must equal it (constant-time compare). */
  expectedNonce?: Uint8Array;
  /** When given, the document's `public_key` must equal it (e.g. the SPKI DER of the agent's key). */
  expectedPublicKey?: Uint8Array;
  /** PCR index → required value. */
  expectedPcrs?: ReadonlyMap<number, Uint8Array>;
  /**
   * Cache of verified CA and leaf certificates (NitroCertCache: bounded, keyed by DER hash and
   * issuer, validity still checked at `at`); default: a module-wide cache of 1024 entries each.
   * A verifier instance (the aws_nitro plugin) owns its own.
   */
  cache?: NitroCertCache;
}

export interface NitroVerified {
  moduleId: string;
  /** EC2 instance ID derived from module_id (`i-<hex>-enc<hex>` → `i-<hex>`), or null when module_id has another form. */
  instanceId: string | null;
  /** Document timestamp. */
  timestamp: Date;
  digest: 'SHA384';
  pcrs: Map<number, Buffer>;
  /** PCR0, PCR1 and PCR2 are all zero (or absent): the enclave runs in debug mode. */
  debug: boolean;
  publicKey: Buffer | null;
  userData: Buffer | null;
  nonce: Buffer | null;
  /** SHA-256 of the trusted root's DER (hex). */
  rootSha256: string;
  leafNotAfter: Date;
  /** Certificates in the path, leaf and root included. */
  chainLength: number;
  tagged: boolean;
  verifiedAt: Date;
  /** Whether document age was checked against maxAge. */
  freshnessChecked: boolean;
  maxAgeSeconds: number | null;
  nonceChecked: boolean;
  publicKeyChecked: boolean;
}

const defaultCache = new NitroCertCache(1024);

/** The module-wide certificate cache used when no cache is passed. */
export function defaultNitroCertCache(): NitroCertCache {
  return defaultCache;
}

function fail(code: string, message: string, status = 401): SigilError {
  return new SigilError(code, message, { status });
}

function normalisePin(pin: string | Uint8Array | undefined): string {
  if (pin === undefined) return AWS_NITRO_ROOT_G1_SHA256;
  if (typeof pin === 'string') {
    const h = pin.trim().toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(h)) throw new SigilError('nitro.bad_options', 'rootSha256 must be 64 hex digits');
    return h;
  }
  if (pin.length !== 32) throw new SigilError('nitro.bad_options', 'rootSha256 must be 32 bytes');
  return Buffer.from(pin).toString('hex');
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  // Length is not secret here (both are fixed by the protocol); contents are compared in constant time.
  return a.length === b.length && timingSafeEqual(a, b);
}

const INSTANCE_RE = /^(i-(?:[0-9a-f]{8}|[0-9a-f]{17}))-enc[0-9a-f]+$/;

/** `i-0f1cd77d37fd8bcc9-enc018e7aa61e2040ff` → `i-0f1cd77d37fd8bcc9`; null for other forms. */
export function instanceIdFromModuleId(moduleId: string): string | null {
  return INSTANCE_RE.exec(moduleId)?.[1] ?? null;
}

function isZero(b: Uint8Array | undefined): boolean {
  return b === undefined || b.every((x) => x === 0);
}

/** Verify a Nitro attestation document. Throws SigilError (nitro.*) on any failure. */
export function verifyNitroDocument(document: Uint8Array, opts: NitroVerifyOptions): NitroVerified {
  try {
    return verifyInner(document, opts);
  } catch (e) {
    if (e instanceof SigilError) throw e;
    // Every expected failure is typed below; this only keeps an unforeseen library error from escaping untyped.
    throw new SigilError('nitro.verify_failed', `attestation document could not be verified: ${errorMessage(e)}`, { status: 400, cause: e });
  }
}

function verifyInner(document: Uint8Array, opts: NitroVerifyOptions): NitroVerified {
  const atMs = opts.at instanceof Date ? opts.at.getTime() : NaN;
  if (!Number.isFinite(atMs)) throw new SigilError('nitro.bad_options', 'verification time is not a valid date');
  const pin = normalisePin(opts.rootSha256);
  const cache = opts.cache ?? defaultCache;
  const skew = opts.maxFutureSkewSeconds ?? DEFAULT_MAX_FUTURE_SKEW_SECONDS;
  if (opts.maxAgeSeconds !== undefined && !(opts.maxAgeSeconds > 0)) throw new SigilError('nitro.bad_options', 'maxAgeSeconds must be > 0');
  // NaN would turn the future check off (every comparison with it is false).
  if (!(skew >= 0 && Number.isFinite(skew))) throw new SigilError('nitro.bad_options', 'maxFutureSkewSeconds must be a finite number >= 0');

  const cose = parseCoseSign1(document);
  const doc = parseNitroPayload(cose.payload);
  const chain = validateNitroChain(doc.certificate, doc.cabundle, pin, atMs, cache);

  // The one P-384 verification a repeated document costs: the leaf's imported KeyObject comes from
  // the cache, the Sig_structure is written into a preallocated buffer, and the signature stays in
  // COSE's r‖s form (ieee-p1363), as received.
  const key = { key: chain.leaf.key, dsaEncoding: 'ieee-p1363' } as const;
  let sigOk = false;
  try {
    sigOk = withSigStructure(cose.protectedHeader, cose.payload, (tbs) => cryptoVerify('sha384', tbs, key, cose.signature));
  } catch {
    sigOk = false;
  }
  if (!sigOk) throw fail('nitro.signature_invalid', 'COSE_Sign1 ES384 signature does not verify under the signing certificate');

  const debug = isZero(doc.pcrs.get(0)) && isZero(doc.pcrs.get(1)) && isZero(doc.pcrs.get(2));
  if (debug && opts.allowDebug !== true) {
    throw fail('nitro.debug_enclave', 'enclave runs in debug mode (PCR0, PCR1 and PCR2 are zero); set allowDebug to accept it', 403);
  }

  if (doc.timestamp > atMs + skew * 1000) {
    throw fail('nitro.document_from_future', `document timestamp ${new Date(doc.timestamp).toISOString()} is more than ${skew}s after the verification time ${new Date(atMs).toISOString()}`);
  }
  if (opts.maxAgeSeconds !== undefined && atMs - doc.timestamp > opts.maxAgeSeconds * 1000) {
    throw fail('nitro.document_stale', `document from ${new Date(doc.timestamp).toISOString()} is older than ${opts.maxAgeSeconds}s at ${new Date(atMs).toISOString()}`);
  }

  if (opts.expectedNonce !== undefined) {
    if (doc.nonce === null) throw fail('nitro.nonce_mismatch', 'document has no nonce, but one is required');
    if (!sameBytes(doc.nonce, opts.expectedNonce)) throw fail('nitro.nonce_mismatch', 'document nonce does not equal the expected nonce (session binding)');
  }
  if (opts.expectedPublicKey !== undefined) {
    if (doc.publicKey === null) throw fail('nitro.public_key_mismatch', 'document has no public_key, but one is required');
    if (!sameBytes(doc.publicKey, opts.expectedPublicKey)) throw fail('nitro.public_key_mismatch', 'document public_key does not equal the expected key');
  }
  for (const [idx, want] of opts.expectedPcrs ?? []) {
    const got = doc.pcrs.get(idx);
    if (got === undefined) throw fail('nitro.pcr_mismatch', `PCR${idx} is required but absent from the document`, 403);
    if (!sameBytes(got, want)) throw fail('nitro.pcr_mismatch', `PCR${idx} is ${got.toString('hex')}, expected ${Buffer.from(want).toString('hex')}`, 403);
  }

  return {
    moduleId: doc.moduleId,
    instanceId: instanceIdFromModuleId(doc.moduleId),
    timestamp: new Date(doc.timestamp),
    digest: doc.digest,
    pcrs: doc.pcrs,
    debug,
    publicKey: doc.publicKey,
    userData: doc.userData,
    nonce: doc.nonce,
    rootSha256: chain.root.sha256,
    leafNotAfter: new Date(chain.leaf.notAfter),
    chainLength: chain.length,
    tagged: cose.tagged,
    verifiedAt: new Date(atMs),
    freshnessChecked: opts.maxAgeSeconds !== undefined,
    maxAgeSeconds: opts.maxAgeSeconds ?? null,
    nonceChecked: opts.expectedNonce !== undefined,
    publicKeyChecked: opts.expectedPublicKey !== undefined,
  };
}

/** Selectors (DESIGN §4): `aws_nitro:pcr<N>:<hex>` for each non-zero PCR, module_id, instance_id, debug. */
export function nitroSelectors(v: NitroVerified): string[] {
  const out: string[] = [];
  for (const [i, val] of v.pcrs) {
    if (!isZero(val)) out.push(`aws_nitro:pcr${i}:${val.toString('hex')}`);
  }
  out.push(`aws_nitro:module_id:${v.moduleId}`);
  if (v.instanceId !== null) out.push(`aws_nitro:instance_id:${v.instanceId}`);
  out.push(`aws_nitro:debug:${v.debug ? 'true' : 'false'}`);
  return out;
}

/** JSON-serialisable claims for the attestation result. */
export function nitroClaims(v: NitroVerified): Record<string, unknown> {
  const pcrs: Record<string, string> = {};
  for (const [i, val] of v.pcrs) pcrs[String(i)] = val.toString('hex');
  let publicKeyType: string | null = null;
  if (v.publicKey !== null) {
    try {
      const k = createPublicKey({ key: v.publicKey, format: 'der', type: 'spki' });
      publicKeyType = k.asymmetricKeyType ?? null;
    } catch {
      publicKeyType = null; // public_key is opaque to Nitro; it need not be an SPKI
    }
  }
  return {
    moduleId: v.moduleId,
    instanceId: v.instanceId,
    timestamp: v.timestamp.toISOString(),
    digest: v.digest,
    pcrs,
    debug: v.debug,
    publicKey: v.publicKey?.toString('hex') ?? null,
    publicKeySpkiType: publicKeyType,
    userData: v.userData?.toString('hex') ?? null,
    nonce: v.nonce?.toString('hex') ?? null,
    rootSha256: v.rootSha256,
    leafNotAfter: v.leafNotAfter.toISOString(),
    chainLength: v.chainLength,
    coseTagged: v.tagged,
    verifiedAt: v.verifiedAt.toISOString(),
    freshness: v.freshnessChecked ? `document age checked against maxAge ${v.maxAgeSeconds}s` : 'not checked: maxAge is not applied offline (certificate validity was checked at verifiedAt)',
    nonceChecked: v.nonceChecked,
    publicKeyChecked: v.publicKeyChecked,
  };
}
