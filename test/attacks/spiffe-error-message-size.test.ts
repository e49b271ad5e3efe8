/**
 * Attack review: refusals of peer-presented SVIDs echoed attacker-chosen text in full. A presented
 * intermediate's subject Name (up to the 64 KiB certificate cap) went whole into the
 * `x509svid.*` message, and a JWT-SVID's kid / typ (up to the 16 KiB token cap) into the
 * `jwtsvid.*` message: every refused handshake or token writes that much into logs and replies.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { generateKey, issueCaCertificate, spkiDer, validateJwtSvid, verifyX509Svid, KU } from '../../src/spiffe/index.js';
import { encodeCertificate, encodeName } from '../../src/spiffe/x509svid.js';
import { OID_BC, OID_KU, OID_SAN, encodeBasicConstraintsValue, encodeExtension, encodeKeyUsageValue, encodeSanExtensionValue } from '../../src/x509/ext.js';

const NOW = new Date('2030-06-01T12:00:00Z');
const DAY = 86_400_000;
const LIMIT = 1024;

function messageOf(f: () => unknown): { code: string; message: string } {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return { code: (e as SigilError).code, message: (e as SigilError).message };
  }
  return { code: 'no error', message: '' };
}

async function messageOfAsync(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return { code: (e as SigilError).code, message: (e as SigilError).message };
  }
  return { code: 'no error', message: '' };
}

describe('attack: huge attacker text in refusal messages', () => {
  const rootKey = generateKey('ec-p256');
  const root = issueCaCertificate({ subjectKey: rootKey.publicKey, signerKey: rootKey.privateKey, trustDomain: 'example.org', commonName: 'root', notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + 30 * DAY) });

  it('X.509-SVID: an intermediate with a 25 000-character subject', () => {
    const k = generateKey('ec-p256');
    const huge = encodeName([['CN', 'A'.repeat(25_000)]]);
    const base = { issuerDer: huge, notBefore: new Date(NOW.getTime() - DAY), notAfter: new Date(NOW.getTime() + DAY), signerKey: k.privateKey };
    // Not a CA: refused as a signing certificate, with its name in the message.
    const inter = encodeCertificate({ ...base, subjectDer: huge, subjectSpki: spkiDer(k.publicKey), serial: Buffer.from([1]), extensions: [encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.keyCertSign))] });
    const wk = generateKey('ec-p256');
    const leaf = encodeCertificate({
      ...base,
      subjectDer: encodeName([['O', 'leaf']]),
      subjectSpki: spkiDer(wk.publicKey),
      serial: Buffer.from([2]),
      extensions: [
        encodeExtension(OID_BC, true, encodeBasicConstraintsValue(false)),
        encodeExtension(OID_KU, true, encodeKeyUsageValue(KU.digitalSignature)),
        encodeExtension(OID_SAN, true, encodeSanExtensionValue(['spiffe://example.org/w'], [])),
      ],
    });
    const r = messageOf(() => verifyX509Svid([leaf, inter], (td) => (td === 'example.org' ? [root] : undefined), NOW));
    expect(r.code).toBe('x509svid.bad_signing_cert');
    expect(r.message.length).toBeLessThan(LIMIT);
  });

  it('JWT-SVID: a 10 000-character kid and typ', async () => {
    const enc = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
    const keysFor = (): { kid: string; publicKey: ReturnType<typeof generateKey>['publicKey'] }[] => [{ kid: 'k1', publicKey: rootKey.publicKey }];
    const claims = enc({ sub: 'spiffe://example.org/w', aud: 'x', exp: Math.floor(NOW.getTime() / 1000) + 60 });
    const kidToken = `${enc({ alg: 'ES256', kid: 'K'.repeat(10_000) })}.${claims}.AAAA`;
    const r1 = await messageOfAsync(validateJwtSvid(kidToken, { audience: 'x', keysFor, now: NOW }));
    expect(r1.code).toBe('jwtsvid.unknown_kid');
    expect(r1.message.length).toBeLessThan(LIMIT);
    const typToken = `${enc({ alg: 'ES256', kid: 'k1', typ: 'T'.repeat(10_000) })}.${claims}.AAAA`;
    const r2 = await messageOfAsync(validateJwtSvid(typToken, { audience: 'x', keysFor, now: NOW }));
    expect(r2.code).toBe('jwtsvid.bad_typ');
    expect(r2.message.length).toBeLessThan(LIMIT);
    const algToken = `${enc({ alg: 'X'.repeat(10_000), kid: 'k1' })}.${claims}.AAAA`;
    const r3 = await messageOfAsync(validateJwtSvid(algToken, { audience: 'x', keysFor, now: NOW }));
    expect(r3.code).toBe('jwtsvid.bad_alg');
    expect(r3.message.length).toBeLessThan(LIMIT);
    const hdrToken = `${enc({ alg: 'ES256', kid: 'k1', ['H'.repeat(10_000)]: 1 })}.${claims}.AAAA`;
    const r4 = await messageOfAsync(validateJwtSvid(hdrToken, { audience: 'x', keysFor, now: NOW }));
    expect(r4.code).toBe('jwtsvid.bad_header');
    expect(r4.message.length).toBeLessThan(LIMIT);
  });
});
