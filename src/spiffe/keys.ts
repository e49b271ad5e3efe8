/**
 * Key helpers. Keys are node:crypto KeyObjects everywhere in Sigil.
 */
import {
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type JsonWebKey,
  type KeyObject,
} from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, constants as fsc } from 'node:fs';
import { SigilError } from '../errors.js';
import { replaceFileAtomic } from '../util/atomic-file.js';
import { RSA_MAX_BITS, RSA_MIN_BITS } from '../x509/spki.js';

export type KeyType = 'ec-p256' | 'ec-p384' | 'rsa-2048';
export type JwsAlg = 'ES256' | 'ES384' | 'RS256';

export const KEY_TYPES: readonly KeyType[] = ['ec-p256', 'ec-p384', 'rsa-2048'];

/** RSA moduli accepted anywhere in Sigil (CSRs, CA keys, JWT authorities). */
export { RSA_MAX_BITS, RSA_MIN_BITS };

export function isKeyType(s: unknown): s is KeyType {
  return typeof s === 'string' && (KEY_TYPES as readonly string[]).includes(s);
}

export function generateKey(t: KeyType): { privateKey: KeyObject; publicKey: KeyObject } {
  switch (t) {
    case 'ec-p256':
      return generateKeyPairSync('ec', { namedCurve: 'P-256' });
    case 'ec-p384':
      return generateKeyPairSync('ec', { namedCurve: 'P-384' });
    case 'rsa-2048':
      return generateKeyPairSync('rsa', { modulusLength: 2048, publicExponent: 0x10001 });
    default:
      throw new SigilError('keys.unsupported_type', `unsupported key type "${String(t)}"; use ec-p256, ec-p384 or rsa-2048`);
  }
}

/** Family of a supported key: 'ec-p256' | 'ec-p384' | 'rsa' (any accepted modulus size). */
export function keyFamilyOf(k: KeyObject): 'ec-p256' | 'ec-p384' | 'rsa' {
  if (k.type === 'secret') throw new SigilError('keys.unsupported_type', 'a secret key is not an asymmetric key');
  const t = k.asymmetricKeyType;
  const d = k.asymmetricKeyDetails ?? {};
  if (t === 'ec') {
    if (d.namedCurve === 'prime256v1') return 'ec-p256';
    if (d.namedCurve === 'secp384r1') return 'ec-p384';
    throw new SigilError('keys.unsupported_type', `unsupported EC curve ${d.namedCurve ?? '(explicit parameters)'}; use P-256 or P-384`);
  }
  if (t === 'rsa') {
    const bits = d.modulusLength ?? 0;
    if (bits < RSA_MIN_BITS || bits > RSA_MAX_BITS) {
      throw new SigilError('keys.unsupported_type', `RSA key of ${bits} bits is outside ${RSA_MIN_BITS}..${RSA_MAX_BITS}`);
    }
    return 'rsa';
  }
  throw new SigilError('keys.unsupported_type', `unsupported key type ${t ?? 'unknown'}; use EC P-256/P-384 or RSA`);
}

/** The KeyType of a private or public key; RSA keys other than 2048 bits are refused. */
export function keyTypeOf(k: KeyObject): KeyType {
  const f = keyFamilyOf(k);
  if (f !== 'rsa') return f;
  const bits = k.asymmetricKeyDetails?.modulusLength ?? 0;
  if (bits !== 2048) throw new SigilError('keys.unsupported_type', `RSA key of ${bits} bits is not one of the key types (rsa-2048)`);
  return 'rsa-2048';
}

/** The JWS algorithm Sigil signs with for this key. */
export function jwsAlgFor(k: KeyObject): JwsAlg {
  const f = keyFamilyOf(k);
  return f === 'ec-p256' ? 'ES256' : f === 'ec-p384' ? 'ES384' : 'RS256';
}

/** Hash used with this key for X.509 signatures. */
export function hashFor(k: KeyObject): 'sha256' | 'sha384' {
  return keyFamilyOf(k) === 'ec-p384' ? 'sha384' : 'sha256';
}

const spkiCache = new WeakMap<KeyObject, Buffer>();

/** SubjectPublicKeyInfo DER of a public key, or of the public half of a private key. */
export function spkiDer(k: KeyObject): Buffer {
  const hit = spkiCache.get(k);
  if (hit) return hit;
  if (k.type === 'secret') throw new SigilError('keys.unsupported_type', 'a secret key has no SubjectPublicKeyInfo');
  const pub = k.type === 'private' ? createPublicKey(k) : k;
  const der = pub.export({ type: 'spki', format: 'der' });
  spkiCache.set(k, der);
  return der;
}

/**
 * The JWK of a key, exported from a fresh key object made from its DER encoding, never from the
 * object itself. Node 20 can deadlock exporting a JWK: the export holds a lock of the key's data
 * while it allocates the JWK's strings, and a garbage collection in that allocation that frees the
 * key-generation job the key came from (generateKeyPair[Sync]) takes the same lock in the job's
 * destructor. The thread then waits on itself forever (seen in CI: a vitest worker stuck in
 * `KeyGenJob::~KeyGenJob` under `ExportJWKRsaKey`; reproduced with a loop of P-256 keys). A key
 * object made from DER shares no lock with any job.
 */
export function exportJwk(k: KeyObject): JsonWebKey {
  if (k.type === 'secret') throw new SigilError('keys.unsupported_type', 'a secret key is not exported as a JWK here');
  const fresh =
    k.type === 'private'
      ? createPrivateKey({ key: k.export({ type: 'pkcs8', format: 'der' }), format: 'der', type: 'pkcs8' })
      : createPublicKey({ key: k.export({ type: 'spki', format: 'der' }), format: 'der', type: 'spki' });
  return fresh.export({ format: 'jwk' });
}

/** Public half of a private key (or the key itself if already public). */
export function publicKeyOf(k: KeyObject): KeyObject {
  return k.type === 'private' ? createPublicKey(k) : k;
}

/**
 * Write a private key as PKCS#8 PEM atomically: a temp file created with mode 0600 in the same
 * directory, fsync'd, then renamed over `path`; the directory is fsync'd afterwards.
 */
export function savePrivateKeyPkcs8(path: string, key: KeyObject): void {
  if (key.type !== 'private') throw new SigilError('keys.not_private', 'savePrivateKeyPkcs8 needs a private key');
  const pem = key.export({ type: 'pkcs8', format: 'pem' }) as string;
  try {
    replaceFileAtomic(path, pem, 0o600);
  } catch (e) {
    throw new SigilError('keys.write_failed', `cannot write private key to ${path}: ${(e as Error).message}`, { cause: e });
  }
}

/**
 * Read a file that holds a secret (a private key, a join token). The file is opened once and
 * checked on the opened descriptor, so a rename between check and read cannot swap it: it must be
 * a regular file of at most 1 MiB, not accessible by group or others (`keys.file_permissions`,
 * naming the file, its mode and the chmod to run). `what` names the file in messages
 * ("private key file", "ca.upstream.key", …). Other failures are `keys.file_unreadable`.
 */
export function readSecretFile(path: string, what: string): Buffer {
  let fd: number | undefined;
  try {
    fd = openSync(path, fsc.O_RDONLY);
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SigilError('keys.file_unreadable', `${what} ${path} is not a regular file`);
    if ((st.mode & 0o077) !== 0) {
      throw new SigilError(
        'keys.file_permissions',
        `${what} ${path} has mode ${(st.mode & 0o777).toString(8)}; it must not be accessible by group or others (chmod 600 ${path})`,
      );
    }
    if (st.size > 1 << 20) throw new SigilError('keys.malformed', `${what} ${path} is larger than 1 MiB`);
    return readFileSync(fd);
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw new SigilError('keys.file_unreadable', `cannot read ${what} ${path}: ${(e as Error).message}`, { cause: e });
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/**
 * Load a PKCS#8 PEM private key. Refuses a file readable or writable by group or others
 * (`keys.file_permissions`, see readSecretFile) and keys of unsupported types.
 */
export function loadPrivateKeyPkcs8(path: string): KeyObject {
  const text = readSecretFile(path, 'private key file').toString('utf8');
  const m = /^-----BEGIN PRIVATE KEY-----\r?\n([A-Za-z0-9+/=\r\n]+)-----END PRIVATE KEY-----\s*$/.exec(text.trimStart());
  if (!m) throw new SigilError('keys.malformed', `${path} is not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)`);
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: Buffer.from(m[1]!.replace(/[\r\n]/g, ''), 'base64'), format: 'der', type: 'pkcs8' });
  } catch (e) {
    throw new SigilError('keys.malformed', `${path}: cannot parse PKCS#8 private key: ${(e as Error).message}`, { cause: e });
  }
  keyFamilyOf(key);
  return key;
}
