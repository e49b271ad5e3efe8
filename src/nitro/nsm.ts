/**
 * Nitro Secure Module (NSM) request/response messages, as the NSM driver exchanges them over the
 * /dev/nsm ioctl (aws/aws-nitro-enclaves-nsm-api: serde's externally tagged enums in CBOR):
 *
 *   request  {"Attestation": {"user_data": bytes|null, "nonce": bytes|null, "public_key": bytes|null}}
 *   response {"Attestation": {"document": bytes}}  or  {"Error": "<ErrorCode>"}
 *
 * The ioctl itself lives in the native addon (src/native); the encoding is here so it can be
 * unit-tested off an enclave.
 */
import { encode } from 'cbor2';
import { SigilError } from '../errors.js';
import { decodeStrict, MAX_DOCUMENT_BYTES } from './document.js';

/** NSM_RESPONSE_MAX_SIZE in the NSM driver: the response buffer handed to the ioctl. */
export const NSM_RESPONSE_MAX_SIZE = 0x3000;
/** NSM limits: nonce and user_data up to 512 bytes, public_key up to 1024. */
export const NSM_MAX_NONCE = 512;
export const NSM_MAX_USER_DATA = 512;
export const NSM_MAX_PUBLIC_KEY = 1024;

export interface NsmAttestationRequest {
  nonce: Uint8Array | null;
  publicKey: Uint8Array | null;
  userData: Uint8Array | null;
}

function plain(b: Uint8Array | null): Uint8Array | null {
  return b === null ? null : new Uint8Array(b);
}

function checkLen(b: Uint8Array | null, name: string, max: number): void {
  if (b !== null && b.length > max) throw new SigilError('nitro.nsm_request_invalid', `NSM ${name} is ${b.length} bytes (limit ${max})`);
}

/** Encode an NSM Attestation request. */
export function encodeAttestationRequest(req: NsmAttestationRequest): Buffer {
  checkLen(req.nonce, 'nonce', NSM_MAX_NONCE);
  checkLen(req.userData, 'user_data', NSM_MAX_USER_DATA);
  checkLen(req.publicKey, 'public_key', NSM_MAX_PUBLIC_KEY);
  const body = new Map<string, Uint8Array | null>([
    ['user_data', plain(req.userData)],
    ['nonce', plain(req.nonce)],
    ['public_key', plain(req.publicKey)],
  ]);
  return Buffer.from(encode(new Map([['Attestation', body]])));
}

function badResponse(msg: string): SigilError {
  return new SigilError('nitro.nsm_bad_response', `NSM response ${msg}`, { status: 500 });
}

function singleEntry(v: unknown, what: string): [string, unknown] {
  if (!(v instanceof Map) || v.size !== 1) throw badResponse(`${what} must be a map with exactly one entry`);
  const [k, val] = [...(v as Map<unknown, unknown>).entries()][0] as [unknown, unknown];
  if (typeof k !== 'string') throw badResponse(`${what} key must be text`);
  return [k, val];
}

/** Decode an NSM Attestation request (the inverse of encodeAttestationRequest; used by test doubles and tools). */
export function decodeAttestationRequest(bytes: Uint8Array): NsmAttestationRequest {
  const top = decodeStrict(bytes, 'NSM request', 'nitro.nsm_request_invalid');
  if (!(top instanceof Map) || top.size !== 1 || !(top.get('Attestation') instanceof Map)) {
    throw new SigilError('nitro.nsm_request_invalid', 'NSM request must be {"Attestation": {…}}');
  }
  const body = top.get('Attestation') as Map<unknown, unknown>;
  const out: NsmAttestationRequest = { nonce: null, publicKey: null, userData: null };
  const names: Record<string, keyof NsmAttestationRequest> = { nonce: 'nonce', public_key: 'publicKey', user_data: 'userData' };
  for (const [k, v] of body) {
    const field = typeof k === 'string' ? names[k] : undefined;
    if (field === undefined) throw new SigilError('nitro.nsm_request_invalid', `NSM request has unknown field ${typeof k === 'string' ? `"${k.slice(0, 64)}"` : 'with a non-text key'}`);
    if (v !== null && !(v instanceof Uint8Array)) throw new SigilError('nitro.nsm_request_invalid', `NSM request field ${String(k)} must be bytes or null`);
    out[field] = v === null ? null : Buffer.from(v);
  }
  checkLen(out.nonce, 'nonce', NSM_MAX_NONCE);
  checkLen(out.userData, 'user_data', NSM_MAX_USER_DATA);
  checkLen(out.publicKey, 'public_key', NSM_MAX_PUBLIC_KEY);
  return out;
}

/** Decode an NSM response to an Attestation request; returns the COSE_Sign1 document bytes. */
export function decodeAttestationResponse(bytes: Uint8Array): Buffer {
  if (bytes.length === 0) throw badResponse('is empty');
  if (bytes.length > NSM_RESPONSE_MAX_SIZE) throw badResponse(`is ${bytes.length} bytes (limit ${NSM_RESPONSE_MAX_SIZE})`);
  const top = decodeStrict(bytes, 'NSM response', 'nitro.nsm_bad_response');
  const [kind, body] = singleEntry(top, 'response');
  if (kind === 'Error') {
    const code = typeof body === 'string' && /^[A-Za-z]{1,64}$/.test(body) ? body : 'unknown';
    throw new SigilError('nitro.nsm_error', `NSM refused the attestation request: ${code}`, { status: 500 });
  }
  if (kind !== 'Attestation') throw badResponse(`is "${kind.slice(0, 32)}", expected "Attestation" or "Error"`);
  const [field, doc] = singleEntry(body, 'Attestation body');
  if (field !== 'document' || !(doc instanceof Uint8Array)) throw badResponse('Attestation body must be {"document": bytes}');
  if (doc.length === 0 || doc.length > MAX_DOCUMENT_BYTES) throw badResponse(`document is ${doc.length} bytes`);
  return Buffer.from(doc);
}
