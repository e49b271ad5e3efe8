/**
 * Validation of federation input (SPIFFE Federation standard; docs/federation.md): relationship
 * fields and foreign bundles. Pure: bytes, names and the last good bundle in, a typed result or a
 * `SigilError` out. Nothing here does I/O.
 */
import { SigilError, errorMessage } from '../errors.js';
import { SpiffeBundle } from '../spiffe/bundle.js';
import { parseCertificate } from '../spiffe/cert.js';
import { SpiffeId, parseTrustDomain } from '../spiffe/id.js';
import { pemToDers } from '../spiffe/pem.js';

/** Largest foreign bundle document accepted (bytes of JSON). */
export const FOREIGN_BUNDLE_MAX_BYTES = 256 * 1024;
/** Most keys a foreign bundle may hold. */
export const FOREIGN_BUNDLE_MAX_KEYS = 64;
/** Deepest JSON nesting of a foreign bundle (a JWKS needs 4: object, keys, key, x5c). */
const FOREIGN_BUNDLE_MAX_DEPTH = 8;
const URL_MAX = 2048;

export type FederationProfile = 'https_web' | 'https_spiffe';

export interface RelationshipInput {
  trustDomain: unknown;
  bundleEndpointUrl: unknown;
  profile: unknown;
  endpointSpiffeId?: unknown;
  webCaPem?: unknown;
}

export interface ValidRelationship {
  trustDomain: string;
  bundleEndpointUrl: string;
  profile: FederationProfile;
  endpointSpiffeId?: string;
  webCaPem?: string;
}

function fail(code: string, msg: string, status = 400): never {
  throw new SigilError(code, msg, { status });
}

/** A foreign trust domain name (bare or `spiffe://name`); never the local one. */
export function foreignTrustDomain(value: unknown, localTrustDomain: string, what = 'trustDomain'): string {
  if (typeof value !== 'string') fail('federation.invalid_trust_domain', `${what} must be a trust domain name`);
  let td: string;
  try {
    td = parseTrustDomain(value);
  } catch (e) {
    fail('federation.invalid_trust_domain', `${what} "${value.slice(0, 80)}": ${errorMessage(e)}`);
  }
  if (td === localTrustDomain) fail('federation.local_trust_domain', `${what} ${td} is this verifier's own trust domain; a foreign bundle can never replace its own`);
  return td;
}

/** An https URL with a host, no userinfo and no fragment. */
export function bundleEndpointUrl(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0) fail('federation.invalid_url', 'bundleEndpointUrl must be an https URL');
  if (value.length > URL_MAX) fail('federation.invalid_url', `bundleEndpointUrl is longer than ${URL_MAX} characters`);
  let u: URL;
  try {
    u = new URL(value);
  } catch {
    fail('federation.invalid_url', `bundleEndpointUrl "${value.slice(0, 80)}" is not a URL`);
  }
  if (u.protocol !== 'https:') fail('federation.url_not_https', `bundleEndpointUrl must use https, not ${u.protocol.replace(/:$/, '')}`);
  if (u.hostname.length === 0) fail('federation.invalid_url', 'bundleEndpointUrl has no host');
  if (u.username !== '' || u.password !== '') fail('federation.invalid_url', 'bundleEndpointUrl must not carry credentials');
  if (u.hash !== '') fail('federation.invalid_url', 'bundleEndpointUrl must not have a fragment');
  return u.toString();
}

/** PEM CA certificates for an https_web endpoint (each parsed). */
export function webCaPem(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > 1024 * 1024) fail('federation.invalid_web_ca', 'webCaPem must be PEM certificates (at most 1 MiB)');
  let ders: Buffer[];
  try {
    ders = pemToDers(value);
    for (const d of ders) parseCertificate(d);
  } catch (e) {
    fail('federation.invalid_web_ca', `webCaPem: ${errorMessage(e)}`);
  }
  if (ders.length === 0) fail('federation.invalid_web_ca', 'webCaPem holds no certificate');
  return value;
}

/** Validate a relationship (create, or the merged result of an update). */
export function validateRelationship(input: RelationshipInput, localTrustDomain: string): ValidRelationship {
  const trustDomain = foreignTrustDomain(input.trustDomain, localTrustDomain);
  const url = bundleEndpointUrl(input.bundleEndpointUrl);
  if (input.profile !== 'https_web' && input.profile !== 'https_spiffe') fail('federation.invalid_profile', `profile must be "https_web" or "https_spiffe", not ${JSON.stringify(input.profile)}`);
  const out: ValidRelationship = { trustDomain, bundleEndpointUrl: url, profile: input.profile };
  if (input.profile === 'https_spiffe') {
    if (input.endpointSpiffeId === undefined) fail('federation.endpoint_id_required', 'profile https_spiffe needs endpointSpiffeId (the SPIFFE ID of the bundle endpoint server)');
    let id: SpiffeId;
    try {
      id = SpiffeId.parse(String(input.endpointSpiffeId));
    } catch (e) {
      fail('federation.invalid_endpoint_id', `endpointSpiffeId: ${errorMessage(e)}`);
    }
    // Sigil authenticates the endpoint with the foreign trust domain's own bundle, so the endpoint
    // must hold an SVID of that trust domain.
    if (id.trustDomain !== trustDomain) fail('federation.endpoint_id_wrong_trust_domain', `endpointSpiffeId ${id.toString()} is not in trust domain ${trustDomain}`);
    out.endpointSpiffeId = id.toString();
    if (input.webCaPem !== undefined) fail('federation.invalid_web_ca', 'webCaPem only applies to profile https_web');
  } else {
    if (input.endpointSpiffeId !== undefined) fail('federation.invalid_endpoint_id', 'endpointSpiffeId only applies to profile https_spiffe');
    if (input.webCaPem !== undefined) out.webCaPem = webCaPem(input.webCaPem);
  }
  return out;
}

/** Deepest nesting of `[`/`{` outside strings; stops counting past `limit`. */
function nestingDepth(text: string, limit: number): number {
  let depth = 0;
  let max = 0;
  let inString = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
      continue;
    }
    if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      depth++;
      if (depth > max) max = depth;
      if (max > limit) return max;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return max;
}

/**
 * Parse a foreign trust domain's bundle (SPIFFE JWKS bytes from its bundle endpoint, or an initial
 * bundle given by the operator) with the caps of federation: at most FOREIGN_BUNDLE_MAX_BYTES,
 * nesting depth 8, FOREIGN_BUNDLE_MAX_KEYS keys, no private key members, at least one X.509
 * authority, and no CA certificate naming another trust domain (a trust domain ID URI SAN).
 */
export function parseForeignBundle(trustDomain: string, bytes: Uint8Array | string): SpiffeBundle {
  const size = typeof bytes === 'string' ? Buffer.byteLength(bytes, 'utf8') : bytes.length;
  if (size > FOREIGN_BUNDLE_MAX_BYTES) fail('federation.bundle_too_large', `bundle of ${trustDomain} is ${size} bytes; at most ${FOREIGN_BUNDLE_MAX_BYTES} are accepted`);
  const text = typeof bytes === 'string' ? bytes : Buffer.from(bytes).toString('utf8');
  if (nestingDepth(text, FOREIGN_BUNDLE_MAX_DEPTH) > FOREIGN_BUNDLE_MAX_DEPTH) fail('federation.bundle_malformed', `bundle of ${trustDomain} nests deeper than ${FOREIGN_BUNDLE_MAX_DEPTH} levels`);
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    fail('federation.bundle_malformed', `bundle of ${trustDomain} is not JSON: ${errorMessage(e)}`);
  }
  const keys = (doc as { keys?: unknown } | null)?.keys;
  if (Array.isArray(keys) && keys.length > FOREIGN_BUNDLE_MAX_KEYS) fail('federation.bundle_too_large', `bundle of ${trustDomain} holds ${keys.length} keys; at most ${FOREIGN_BUNDLE_MAX_KEYS} are accepted`);
  let b: SpiffeBundle;
  try {
    b = SpiffeBundle.fromJwks(trustDomain, doc);
  } catch (e) {
    fail('federation.bundle_malformed', `bundle of ${trustDomain}: ${errorMessage(e)}`);
  }
  if (b.x509Authorities.length === 0) fail('federation.bundle_empty', `bundle of ${trustDomain} holds no X.509 authority`);
  for (const der of b.x509Authorities) {
    const c = parseCertificate(der);
    for (const uri of c.san?.uris ?? []) {
      if (!uri.startsWith('spiffe://')) continue;
      let named: string;
      try {
        named = SpiffeId.parse(uri).trustDomain;
      } catch {
        fail('federation.bundle_malformed', `bundle of ${trustDomain}: an X.509 authority carries the invalid SPIFFE ID ${uri.slice(0, 80)}`);
      }
      if (named !== trustDomain) fail('federation.bundle_wrong_trust_domain', `bundle served for ${trustDomain} holds an X.509 authority of trust domain ${named}`);
    }
  }
  return b;
}

/**
 * Whether `next` may replace the last good bundle `last`: a lower `spiffe_sequence` is a downgrade
 * (a replayed or rolled-back bundle) and is refused. Returns whether the content changed.
 */
export function checkSuccessor(trustDomain: string, last: SpiffeBundle | undefined, next: SpiffeBundle): boolean {
  if (!last) return true;
  if (next.sequence < last.sequence) {
    fail('federation.sequence_downgrade', `bundle of ${trustDomain} has spiffe_sequence ${next.sequence}, lower than the last good bundle's ${last.sequence}; kept the last good bundle`);
  }
  return JSON.stringify(canonical(next)) !== JSON.stringify(canonical(last));
}

/** The bundle's keys without the refresh hint (a changed hint alone is no new content). */
function canonical(b: SpiffeBundle): unknown {
  const j = b.toJwks();
  return { keys: j.keys, seq: j.spiffe_sequence };
}

/** The initial bundle of a relationship: SPIFFE JWKS text, or PEM certificates. */
export function parseInitialBundle(trustDomain: string, text: unknown): SpiffeBundle {
  if (typeof text !== 'string' || text.length === 0) fail('federation.bundle_malformed', `initial bundle of ${trustDomain} must be SPIFFE bundle JSON or PEM certificates`);
  if (text.trimStart().startsWith('-----BEGIN')) {
    if (text.length > FOREIGN_BUNDLE_MAX_BYTES) fail('federation.bundle_too_large', `initial bundle of ${trustDomain} is larger than ${FOREIGN_BUNDLE_MAX_BYTES} bytes`);
    let b: SpiffeBundle;
    try {
      b = SpiffeBundle.fromPem(trustDomain, text);
    } catch (e) {
      fail('federation.bundle_malformed', `initial bundle of ${trustDomain}: ${errorMessage(e)}`);
    }
    return parseForeignBundle(trustDomain, JSON.stringify(b.toJwks()));
  }
  return parseForeignBundle(trustDomain, text);
}
