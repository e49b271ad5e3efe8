/**
 * SPIFFE IDs per the SPIFFE-ID standard (spiffe/spiffe standards/SPIFFE-ID.md):
 * `spiffe://<trust-domain><path>` where the scheme is lowercase `spiffe`, the trust domain uses
 * only [a-z0-9.-_] (no port, no userinfo), the path is empty or a sequence of `/segment` with
 * segments in [A-Za-z0-9.-_], none empty, none `.`/`..`, no trailing slash, no percent-encoding,
 * no query or fragment, and the whole ID is at most 2048 bytes.
 * Every rule has its own error code so callers and tests can tell them apart.
 */
import { SigilError } from '../errors.js';

export const SPIFFE_ID_MAX_BYTES = 2048;
const SCHEME = 'spiffe://';

function err(code: string, msg: string): SigilError {
  return new SigilError(code, msg);
}

function isTdChar(c: number): boolean {
  // a-z 0-9 . - _
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x5f;
}

function isPathChar(c: number): boolean {
  // A-Z a-z 0-9 . - _
  return (
    (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x2d || c === 0x5f
  );
}

function checkTrustDomainName(td: string, whole: string): void {
  if (td.length === 0) throw err('spiffe.id_missing_trust_domain', `SPIFFE ID "${clip(whole)}" has no trust domain`);
  // userinfo is reported first: in "user:pw@host" the ':' belongs to the userinfo, not a port.
  if (td.includes('@')) throw err('spiffe.id_has_userinfo', `trust domain of "${clip(whole)}" contains userinfo ('@')`);
  for (let i = 0; i < td.length; i++) {
    const c = td.charCodeAt(i);
    if (isTdChar(c)) continue;
    if (c === 0x40) throw err('spiffe.id_has_userinfo', `trust domain of "${clip(whole)}" contains userinfo ('@')`);
    if (c === 0x3a) throw err('spiffe.id_has_port', `trust domain of "${clip(whole)}" contains a port (':')`);
    if (c === 0x25) throw err('spiffe.id_percent_encoded', `trust domain of "${clip(whole)}" contains percent-encoding`);
    throw err(
      'spiffe.id_bad_trust_domain_char',
      `trust domain of "${clip(whole)}" contains ${describeChar(td, i)}; only a-z, 0-9, '.', '-' and '_' are allowed`,
    );
  }
}

function describeChar(s: string, i: number): string {
  const cp = s.codePointAt(i) ?? 0;
  return cp >= 0x21 && cp < 0x7f ? `'${String.fromCodePoint(cp)}'` : `U+${cp.toString(16).toUpperCase().padStart(4, '0')}`;
}

function clip(s: string): string {
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

/** Validate one path segment (without slashes). */
function checkSegment(seg: string, whole: string, isLast: boolean): void {
  if (seg.length === 0) {
    if (isLast) throw err('spiffe.id_trailing_slash', `SPIFFE ID "${clip(whole)}" has a trailing slash`);
    throw err('spiffe.id_empty_segment', `SPIFFE ID "${clip(whole)}" has an empty path segment`);
  }
  if (seg === '.' || seg === '..') throw err('spiffe.id_dot_segment', `SPIFFE ID "${clip(whole)}" has a '${seg}' path segment`);
  for (let i = 0; i < seg.length; i++) {
    const c = seg.charCodeAt(i);
    if (isPathChar(c)) continue;
    if (c === 0x25) throw err('spiffe.id_percent_encoded', `path of "${clip(whole)}" contains percent-encoding`);
    throw err(
      'spiffe.id_bad_path_char',
      `path of "${clip(whole)}" contains ${describeChar(seg, i)}; only A-Z, a-z, 0-9, '.', '-' and '_' are allowed`,
    );
  }
}

/** Validate a path ("" or "/seg/seg"). `whole` is used in messages only. */
function checkPath(path: string, whole: string): void {
  if (path.length === 0) return;
  if (path.charCodeAt(0) !== 0x2f) throw err('spiffe.id_bad_path_char', `path "${clip(path)}" must start with '/'`);
  const segs = path.slice(1).split('/');
  for (let i = 0; i < segs.length; i++) checkSegment(segs[i]!, whole, i === segs.length - 1);
}

function checkLength(s: string): void {
  if (s.length > SPIFFE_ID_MAX_BYTES || Buffer.byteLength(s, 'utf8') > SPIFFE_ID_MAX_BYTES) {
    throw err('spiffe.id_too_long', `SPIFFE ID is longer than ${SPIFFE_ID_MAX_BYTES} bytes`);
  }
}

export class SpiffeId {
  readonly trustDomain: string;
  readonly path: string;

  private constructor(trustDomain: string, path: string) {
    this.trustDomain = trustDomain;
    this.path = path;
  }

  /** Parse and validate a SPIFFE ID string. */
  static parse(s: string): SpiffeId {
    if (typeof s !== 'string' || s.length === 0) throw err('spiffe.id_empty', 'SPIFFE ID is empty');
    checkLength(s);
    if (!s.startsWith(SCHEME)) {
      throw err('spiffe.id_bad_scheme', `SPIFFE ID "${clip(s)}" must start with "spiffe://" (lowercase scheme)`);
    }
    // A query or fragment anywhere after the scheme is refused before looking at the parts,
    // so "spiffe://td?x" is reported as a query rather than as a bad trust-domain character.
    const q = s.indexOf('?');
    const h = s.indexOf('#');
    if (h >= 0 && (q < 0 || h < q)) throw err('spiffe.id_has_fragment', `SPIFFE ID "${clip(s)}" has a fragment`);
    if (q >= 0) throw err('spiffe.id_has_query', `SPIFFE ID "${clip(s)}" has a query`);
    const rest = s.slice(SCHEME.length);
    const slash = rest.indexOf('/');
    const td = slash < 0 ? rest : rest.slice(0, slash);
    const path = slash < 0 ? '' : rest.slice(slash);
    checkTrustDomainName(td, s);
    checkPath(path, s);
    return new SpiffeId(td, path);
  }

  /** Build from a trust domain name (or `spiffe://td`) and a path that is "" or starts with '/'. */
  static fromPath(trustDomain: string, path: string): SpiffeId {
    const td = parseTrustDomain(trustDomain);
    const whole = `${SCHEME}${td}${path}`;
    checkLength(whole);
    checkPath(path, whole);
    return new SpiffeId(td, path);
  }

  /** Build from a trust domain and individual path segments (each without '/'). */
  static fromSegments(trustDomain: string, ...segments: string[]): SpiffeId {
    const td = parseTrustDomain(trustDomain);
    const whole = `${SCHEME}${td}/${segments.join('/')}`;
    for (const seg of segments) {
      if (seg.length === 0) throw err('spiffe.id_empty_segment', `SPIFFE ID "${clip(whole)}" has an empty path segment`);
      checkSegment(seg, whole, false);
    }
    const path = segments.length === 0 ? '' : `/${segments.join('/')}`;
    checkLength(`${SCHEME}${td}${path}`);
    return new SpiffeId(td, path);
  }

  /** The trust domain ID `spiffe://<td>`. */
  static forTrustDomain(trustDomain: string): SpiffeId {
    return new SpiffeId(parseTrustDomain(trustDomain), '');
  }

  /** True for a trust domain ID (empty path). */
  get isTrustDomainId(): boolean {
    return this.path.length === 0;
  }

  toString(): string {
    return `${SCHEME}${this.trustDomain}${this.path}`;
  }

  toJSON(): string {
    return this.toString();
  }

  equals(other: SpiffeId | string): boolean {
    return this.toString() === (typeof other === 'string' ? other : other.toString());
  }

  /** Whether this ID belongs to trust domain `td` (a name or `spiffe://name`). Invalid input → false. */
  memberOf(td: string): boolean {
    try {
      return parseTrustDomain(td) === this.trustDomain;
    } catch {
      return false;
    }
  }
}

/**
 * Validate a trust domain name. Accepts a bare name (`example.org`) or a trust domain ID
 * (`spiffe://example.org`); any other SPIFFE ID form is refused. Returns the bare name.
 */
export function parseTrustDomain(s: string): string {
  if (typeof s !== 'string' || s.length === 0) throw err('spiffe.id_missing_trust_domain', 'trust domain is empty');
  if (s.includes('://')) {
    const id = SpiffeId.parse(s);
    if (!id.isTrustDomainId) throw err('spiffe.id_bad_trust_domain_char', `"${clip(s)}" is a SPIFFE ID with a path, not a trust domain`);
    return id.trustDomain;
  }
  checkLength(`${SCHEME}${s}`);
  if (s.includes('?')) throw err('spiffe.id_has_query', `trust domain "${clip(s)}" has a query`);
  if (s.includes('#')) throw err('spiffe.id_has_fragment', `trust domain "${clip(s)}" has a fragment`);
  checkTrustDomainName(s, s);
  return s;
}

/** Non-throwing check. */
export function isValidSpiffeId(s: string): boolean {
  try {
    SpiffeId.parse(s);
    return true;
  } catch {
    return false;
  }
}
