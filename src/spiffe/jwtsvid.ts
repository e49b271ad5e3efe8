/**
 * JWT-SVIDs (SPIFFE JWT-SVID standard).
 *
 * Minting signs with node:crypto directly (JWS compact serialization, ECDSA in IEEE P1363
 * form): jose's SignJWT goes through WebCrypto and costs several times the raw signature
 * (see bench/jwt-mint.ts). Validation first applies the SPIFFE-specific header and claim rules
 * itself, then lets jose verify the signature and the time/audience claims.
 */
import { sign as cryptoSign, type KeyObject } from 'node:crypto';
import { jwtVerify, errors as joseErrors } from 'jose';
import { SigilError, errorMessage } from '../errors.js';
import { SpiffeId } from './id.js';
import { jwsAlgFor, keyFamilyOf } from './keys.js';

export type JwtAuthority = { kid: string; publicKey: KeyObject };

export const JWT_SVID_ALGS = ['RS256', 'RS384', 'RS512', 'ES256', 'ES384', 'ES512', 'PS256', 'PS384', 'PS512'] as const;
export type JwtSvidAlg = (typeof JWT_SVID_ALGS)[number];
const ALG_SET: ReadonlySet<string> = new Set(JWT_SVID_ALGS);
const ALLOWED_HEADER = new Set(['alg', 'kid', 'typ']);
export const JWT_SVID_MAX_BYTES = 16 * 1024;

function err(code: string, msg: string): SigilError {
  return new SigilError(code, msg, { status: 401 });
}

/** A token-supplied value for a message, cut short (a token runs to 16 KiB). */
function shown(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}

export interface MintJwtSvidOptions {
  privateKey: KeyObject;
  kid: string;
  spiffeId: string;
  audience: string[];
  notAfter: Date;
  now: Date;
}

/** Mint a JWT-SVID: header exactly {alg, kid, typ:"JWT"}; claims sub, aud (a string if one), exp, iat. */
export async function mintJwtSvid(opts: MintJwtSvidOptions): Promise<string> {
  return mintJwtSvidSync(opts);
}

/** Synchronous form of mintJwtSvid. */
export function mintJwtSvidSync(opts: MintJwtSvidOptions): string {
  const key = opts.privateKey;
  if (!key || key.type !== 'private') throw new SigilError('jwtsvid.bad_key', 'mintJwtSvid needs a private key');
  const alg = jwsAlgFor(key);
  if (typeof opts.kid !== 'string' || opts.kid.length === 0) throw new SigilError('jwtsvid.missing_kid', 'kid must be a non-empty string');
  const sub = SpiffeId.parse(opts.spiffeId).toString();
  if (!Array.isArray(opts.audience) || opts.audience.length === 0 || opts.audience.some((a) => typeof a !== 'string' || a.length === 0)) {
    throw new SigilError('jwtsvid.missing_aud', 'audience must be a non-empty list of non-empty strings');
  }
  const iat = Math.floor(opts.now.getTime() / 1000);
  const exp = Math.floor(opts.notAfter.getTime() / 1000);
  if (!Number.isFinite(iat) || !Number.isFinite(exp)) throw new SigilError('jwtsvid.bad_time', 'now and notAfter must be valid dates');
  if (exp <= iat) throw new SigilError('jwtsvid.bad_time', 'notAfter must be after now');
  const header = Buffer.from(JSON.stringify({ alg, kid: opts.kid, typ: 'JWT' })).toString('base64url');
  const aud = opts.audience.length === 1 ? opts.audience[0] : opts.audience;
  const payload = Buffer.from(JSON.stringify({ sub, aud, exp, iat })).toString('base64url');
  const input = `${header}.${payload}`;
  const sig =
    alg === 'RS256'
      ? cryptoSign('sha256', Buffer.from(input), key)
      : cryptoSign(alg === 'ES256' ? 'sha256' : 'sha384', Buffer.from(input), { key, dsaEncoding: 'ieee-p1363' });
  return `${input}.${sig.toString('base64url')}`;
}

export interface ValidateJwtSvidOptions {
  audience: string;
  keysFor: (trustDomain: string) => JwtAuthority[] | undefined;
  now: Date;
  /** Clock skew allowed on exp/nbf, seconds (default 30). */
  leewaySeconds?: number;
}

export interface ValidatedJwtSvid {
  spiffeId: SpiffeId;
  claims: Record<string, unknown>;
  expiresAt: Date;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

function decodeSegment(seg: string, what: string): Record<string, unknown> {
  if (seg.length === 0 || !B64URL.test(seg) || seg.length % 4 === 1) throw err('jwtsvid.malformed', `JWT ${what} is not base64url`);
  let v: unknown;
  try {
    v = JSON.parse(Buffer.from(seg, 'base64url').toString('utf8'));
  } catch {
    throw err('jwtsvid.malformed', `JWT ${what} is not JSON`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw err('jwtsvid.malformed', `JWT ${what} is not a JSON object`);
  return v as Record<string, unknown>;
}

/** Parse the header and claims of a JWT-SVID without verifying anything (for routing/logging). */
export function decodeJwtSvidUnverified(token: string): { header: Record<string, unknown>; claims: Record<string, unknown>; signature: string } {
  if (typeof token !== 'string' || token.length === 0) throw err('jwtsvid.malformed', 'token is empty');
  if (token.length > JWT_SVID_MAX_BYTES) throw err('jwtsvid.malformed', `token is longer than ${JWT_SVID_MAX_BYTES} bytes`);
  const parts = token.split('.');
  if (parts.length !== 3) throw err('jwtsvid.malformed', 'token is not a JWS compact serialization (three parts)');
  if (!B64URL.test(parts[2]!) || parts[2]!.length % 4 === 1) throw err('jwtsvid.malformed', 'JWT signature is not base64url');
  return { header: decodeSegment(parts[0]!, 'header'), claims: decodeSegment(parts[1]!, 'payload'), signature: parts[2]! };
}

function keyFitsAlg(key: KeyObject, alg: string): boolean {
  let fam: string;
  try {
    fam = keyFamilyOf(key);
  } catch {
    return false;
  }
  const kt = key.asymmetricKeyType;
  if (alg.startsWith('RS') || alg.startsWith('PS')) return fam === 'rsa';
  if (kt !== 'ec') return false;
  return (alg === 'ES256' && fam === 'ec-p256') || (alg === 'ES384' && fam === 'ec-p384');
}

/**
 * Validate a JWT-SVID: alg in RS/ES/PS 256–512 (none/HS* refused), kid required, only
 * alg/kid/typ headers (typ, if present, JWT or JOSE), aud and exp required, sub a valid SPIFFE
 * ID, key found by kid among the JWT authorities of the subject's trust domain, signature,
 * expiry (with leeway), nbf, and that `audience` is among aud.
 */
export async function validateJwtSvid(token: string, opts: ValidateJwtSvidOptions): Promise<ValidatedJwtSvid> {
  const { header, claims, signature } = decodeJwtSvidUnverified(token);
  for (const k of Object.keys(header)) {
    if (!ALLOWED_HEADER.has(k)) throw err('jwtsvid.bad_header', `JWT header parameter "${shown(k)}" is not allowed (only alg, kid, typ)`);
  }
  const alg = header.alg;
  if (typeof alg !== 'string' || !ALG_SET.has(alg)) {
    throw err('jwtsvid.bad_alg', `JWT alg ${shown(JSON.stringify(alg ?? null))} is not allowed (RS/ES/PS 256-512 only)`);
  }
  if (signature.length === 0) throw err('jwtsvid.malformed', 'JWT has no signature');
  if (typeof header.kid !== 'string' || header.kid.length === 0) throw err('jwtsvid.missing_kid', 'JWT header has no kid');
  if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
    throw err('jwtsvid.bad_typ', `JWT typ ${shown(JSON.stringify(header.typ))} must be JWT or JOSE`);
  }
  if (claims.aud === undefined) throw err('jwtsvid.missing_aud', 'JWT has no aud claim');
  const aud = claims.aud;
  if (!(typeof aud === 'string' || (Array.isArray(aud) && aud.length > 0 && aud.every((a) => typeof a === 'string')))) {
    throw err('jwtsvid.malformed', 'JWT aud must be a string or a non-empty array of strings');
  }
  if (claims.exp === undefined) throw err('jwtsvid.missing_exp', 'JWT has no exp claim');
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp)) throw err('jwtsvid.malformed', 'JWT exp is not a number');
  if (typeof claims.sub !== 'string') throw err('jwtsvid.bad_subject', 'JWT has no sub claim');
  let spiffeId: SpiffeId;
  try {
    spiffeId = SpiffeId.parse(claims.sub);
  } catch (e) {
    throw err('jwtsvid.bad_subject', `JWT sub is not a SPIFFE ID: ${(e as Error).message}`);
  }
  if (typeof opts.audience !== 'string' || opts.audience.length === 0) throw new SigilError('jwtsvid.missing_aud', 'expected audience must be a non-empty string');
  const leeway = opts.leewaySeconds ?? 30;
  if (!Number.isFinite(leeway) || leeway < 0) throw new SigilError('jwtsvid.bad_time', 'leewaySeconds must be a non-negative number');

  const authorities = opts.keysFor(spiffeId.trustDomain);
  if (!authorities || authorities.length === 0) throw err('jwtsvid.no_bundle', `no JWT authorities for trust domain ${spiffeId.trustDomain}`);
  const authority = authorities.find((a) => a.kid === header.kid);
  if (!authority) throw err('jwtsvid.unknown_kid', `kid "${shown(header.kid)}" is not a JWT authority of ${spiffeId.trustDomain}`);
  if (!keyFitsAlg(authority.publicKey, alg)) throw err('jwtsvid.key_mismatch', `authority "${shown(header.kid)}" key does not fit alg ${alg}`);

  try {
    await jwtVerify(token, authority.publicKey, {
      algorithms: [alg],
      audience: opts.audience,
      currentDate: opts.now,
      clockTolerance: leeway,
      requiredClaims: ['exp', 'aud', 'sub'],
    });
  } catch (e) {
    throw mapJoseError(e);
  }
  return { spiffeId, claims, expiresAt: new Date(claims.exp * 1000) };
}

function mapJoseError(e: unknown): SigilError {
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) return err('jwtsvid.bad_signature', 'JWT signature does not verify');
  if (e instanceof joseErrors.JWTExpired) return err('jwtsvid.expired', `JWT-SVID has expired (${e.message})`);
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.claim === 'aud') return err('jwtsvid.audience_mismatch', 'JWT aud does not contain the expected audience');
    if (e.claim === 'nbf') return err('jwtsvid.not_yet_valid', 'JWT-SVID is not valid yet (nbf)');
    return err('jwtsvid.bad_claims', `JWT claim ${e.claim} is invalid: ${e.message}`);
  }
  if (e instanceof joseErrors.JOSEError) return err('jwtsvid.invalid', `JWT rejected: ${e.message}`);
  return err('jwtsvid.invalid', `JWT rejected: ${errorMessage(e)}`);
}
