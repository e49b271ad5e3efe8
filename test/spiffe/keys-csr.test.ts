import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, sign, type KeyObject } from 'node:crypto';
import {
  createCsr,
  generateKey,
  jwsAlgFor,
  keyTypeOf,
  loadPrivateKeyPkcs8,
  parseCsr,
  savePrivateKeyPkcs8,
  spkiDer,
  type KeyType,
} from '../../src/spiffe/index.js';
import { SigilError } from '../../src/errors.js';
import { tlv } from '../../src/spiffe/der.js';
import { codeOf } from '../support/codes.js';


let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-spiffe-keys-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('keys', () => {
  it.each([
    ['ec-p256', 'ES256'],
    ['ec-p384', 'ES384'],
    ['rsa-2048', 'RS256'],
  ] as [KeyType, string][])('%s generates, classifies and names its JWS alg', (t, alg) => {
    const k = generateKey(t);
    expect(keyTypeOf(k.privateKey)).toBe(t);
    expect(keyTypeOf(k.publicKey)).toBe(t);
    expect(jwsAlgFor(k.privateKey)).toBe(alg);
    expect(spkiDer(k.privateKey).equals(k.publicKey.export({ type: 'spki', format: 'der' }))).toBe(true);
  });

  it('refuses unsupported key types', () => {
    const ed = generateKeyPairSync('ed25519');
    expect(codeOf(() => keyTypeOf(ed.privateKey))).toBe('keys.unsupported_type');
    const k1 = generateKeyPairSync('ec', { namedCurve: 'secp256k1' });
    expect(codeOf(() => keyTypeOf(k1.publicKey))).toBe('keys.unsupported_type');
    expect(codeOf(() => generateKey('ec-p521' as KeyType))).toBe('keys.unsupported_type');
  });

  it('saves atomically with mode 0600 and loads back', () => {
    const k = generateKey('ec-p256');
    const p = join(dir, 'ca.key');
    savePrivateKeyPkcs8(p, k.privateKey);
    expect(statSync(p).mode & 0o777).toBe(0o600);
    expect(readFileSync(p, 'utf8')).toMatch(/^-----BEGIN PRIVATE KEY-----\n/);
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    const loaded = loadPrivateKeyPkcs8(p);
    expect(spkiDer(loaded).equals(spkiDer(k.publicKey))).toBe(true);
    // Overwrite keeps 0600 and replaces the content.
    const k2 = generateKey('rsa-2048');
    savePrivateKeyPkcs8(p, k2.privateKey);
    expect(statSync(p).mode & 0o777).toBe(0o600);
    expect(keyTypeOf(loadPrivateKeyPkcs8(p))).toBe('rsa-2048');
  });

  it('refuses a key file readable by group or others', () => {
    const p = join(dir, 'loose.key');
    savePrivateKeyPkcs8(p, generateKey('ec-p256').privateKey);
    chmodSync(p, 0o640);
    expect(codeOf(() => loadPrivateKeyPkcs8(p))).toBe('keys.file_permissions');
    chmodSync(p, 0o604);
    expect(codeOf(() => loadPrivateKeyPkcs8(p))).toBe('keys.file_permissions');
    chmodSync(p, 0o400);
    expect(keyTypeOf(loadPrivateKeyPkcs8(p))).toBe('ec-p256');
  });

  it('reports missing and malformed key files', () => {
    expect(codeOf(() => loadPrivateKeyPkcs8(join(dir, 'nope.key')))).toBe('keys.file_unreadable');
    const p = join(dir, 'bad.key');
    writeFileSync(p, 'hello', { mode: 0o600 });
    expect(codeOf(() => loadPrivateKeyPkcs8(p))).toBe('keys.malformed');
    writeFileSync(p, '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n', { mode: 0o600 });
    expect(codeOf(() => loadPrivateKeyPkcs8(p))).toBe('keys.malformed');
    const ed = generateKeyPairSync('ed25519').privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    writeFileSync(p, ed, { mode: 0o600 });
    expect(codeOf(() => loadPrivateKeyPkcs8(p))).toBe('keys.unsupported_type');
  });
});

function opensslCsr(key: KeyObject, args: string[]): Buffer {
  const kp = join(dir, `k-${Math.random().toString(36).slice(2)}.pem`);
  writeFileSync(kp, key.export({ type: 'pkcs8', format: 'pem' }) as string, { mode: 0o600 });
  return execFileSync('openssl', ['req', '-new', '-key', kp, '-outform', 'DER', ...args]);
}

describe('parseCsr', () => {
  it.each(['ec-p256', 'ec-p384', 'rsa-2048'] as KeyType[])('round-trips createCsr (%s) and openssl accepts it', (t) => {
    const k = generateKey(t);
    const der = createCsr(k, { spiffeId: 'spiffe://example.org/agent' });
    const p = parseCsr(der);
    expect(p.spki.equals(spkiDer(k.publicKey))).toBe(true);
    expect(p.uris).toEqual(['spiffe://example.org/agent']);
    expect(p.subject).toBe('');
    expect(spkiDer(p.publicKey).equals(p.spki)).toBe(true);
    const f = join(dir, `csr-${t}.der`);
    writeFileSync(f, der);
    const out = execFileSync('openssl', ['req', '-inform', 'DER', '-in', f, '-noout', '-verify'], { stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out.toString()).not.toMatch(/fail/i);
  });

  it('parses CSRs made by openssl, with subject and SANs', () => {
    const k = generateKey('ec-p256');
    const der = opensslCsr(k.privateKey, [
      '-subj',
      '/C=US/O=Acme, Inc./CN=web',
      '-addext',
      'subjectAltName=URI:spiffe://example.org/web,DNS:web.example.org',
    ]);
    const p = parseCsr(der);
    expect(p.subject).toBe('CN=web,O=Acme\\, Inc.,C=US');
    expect(p.uris).toEqual(['spiffe://example.org/web']);
    expect(p.dnsNames).toEqual(['web.example.org']);
    expect(p.keyFamily).toBe('ec-p256');
  });

  it('accepts RSA 4096 and refuses RSA 1024, Ed25519 and secp256k1 keys', () => {
    expect(parseCsr(opensslCsr(generateKeyPairSync('rsa', { modulusLength: 4096 }).privateKey, ['-subj', '/CN=x'])).keyFamily).toBe('rsa');
    expect(codeOf(() => parseCsr(opensslCsr(generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey, ['-subj', '/CN=x']))))
      .toBe('csr.unsupported_key');
    expect(codeOf(() => parseCsr(opensslCsr(generateKeyPairSync('ed25519').privateKey, ['-subj', '/CN=x'])))).toBe('csr.unsupported_key');
    expect(codeOf(() => parseCsr(opensslCsr(generateKeyPairSync('ec', { namedCurve: 'secp256k1' }).privateKey, ['-subj', '/CN=x']))))
      .toBe('csr.unsupported_key');
  });

  it('refuses a CSR whose signature does not verify', () => {
    const k = generateKey('ec-p256');
    const der = Buffer.from(createCsr(k));
    // Flip a bit of the ECDSA s value near the end of the signature.
    der[der.length - 5] = der[der.length - 5]! ^ 0x01;
    expect(codeOf(() => parseCsr(der))).toBe('csr.bad_signature');
    // A CSR for key A re-signed by key B.
    const a = generateKey('ec-p256');
    const b = generateKey('ec-p256');
    const good = createCsr(a);
    const swapped = resign(good, b.privateKey);
    expect(codeOf(() => parseCsr(swapped))).toBe('csr.bad_signature');
  });

  it('refuses a signature algorithm that does not fit the key', () => {
    const rsa = generateKey('rsa-2048');
    const csr = createCsr(rsa);
    const info = firstElement(csr);
    const ecdsaAlg = Buffer.from('300a06082a8648ce3d040302', 'hex');
    const forged = tlv(0x30, info, ecdsaAlg, tlv(0x03, Buffer.from([0]), sign('sha256', info, rsa.privateKey)));
    expect(codeOf(() => parseCsr(forged))).toBe('csr.bad_signature');
    const md5Alg = Buffer.from('300d06092a864886f70d0101040500', 'hex');
    const md5 = tlv(0x30, info, md5Alg, tlv(0x03, Buffer.from([0]), sign('sha256', info, rsa.privateKey)));
    expect(codeOf(() => parseCsr(md5))).toBe('csr.unsupported_algorithm');
  });

  it('refuses non-DER and truncated input', () => {
    const good = createCsr(generateKey('ec-p256'));
    expect(codeOf(() => parseCsr(Buffer.alloc(0)))).toBe('csr.malformed');
    expect(codeOf(() => parseCsr(Buffer.from('not a csr')))).toBe('csr.malformed');
    expect(codeOf(() => parseCsr(good.subarray(0, good.length - 1)))).toBe('csr.malformed');
    expect(codeOf(() => parseCsr(Buffer.concat([good, Buffer.from([0])])))).toBe('csr.malformed');
    // Same content with a non-minimal (long-form) outer length.
    const body = good.subarray(good[1]! & 0x80 ? 2 + (good[1]! & 0x7f) : 2);
    const longForm = Buffer.concat([Buffer.from([0x30, 0x83, 0, body.length >> 8, body.length & 0xff]), body]);
    expect(codeOf(() => parseCsr(longForm))).toBe('csr.malformed');
    // Indefinite length.
    const indef = Buffer.concat([Buffer.from([0x30, 0x80]), body, Buffer.from([0, 0])]);
    expect(codeOf(() => parseCsr(indef))).toBe('csr.malformed');
    expect(codeOf(() => parseCsr(Buffer.alloc(70_000, 0x30)))).toBe('csr.malformed');
  });

  it('never throws anything but SigilError on mutated input', () => {
    const good = createCsr(generateKey('ec-p256'), { spiffeId: 'spiffe://example.org/x' });
    let seed = 12345;
    const rnd = (): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed;
    };
    for (let i = 0; i < 400; i++) {
      const m = Buffer.from(good);
      const n = 1 + (rnd() % 3);
      for (let j = 0; j < n; j++) m[rnd() % m.length] = rnd() & 0xff;
      try {
        parseCsr(m);
      } catch (e) {
        expect(e).toBeInstanceOf(SigilError);
        expect((e as SigilError).code).toMatch(/^csr\./);
      }
    }
  });
});

function firstElement(der: Buffer): Buffer {
  const hdr = der[1]! & 0x80 ? 2 + (der[1]! & 0x7f) : 2;
  const inner = der.subarray(hdr);
  const ilen = inner[1]! & 0x80 ? inner.readUIntBE(2, inner[1]! & 0x7f) + 2 + (inner[1]! & 0x7f) : inner[1]! + 2;
  return inner.subarray(0, ilen);
}

function resign(csr: Buffer, key: KeyObject): Buffer {
  const info = firstElement(csr);
  const alg = Buffer.from('300a06082a8648ce3d040302', 'hex');
  return tlv(0x30, info, alg, tlv(0x03, Buffer.from([0]), sign('sha256', info, key)));
}
