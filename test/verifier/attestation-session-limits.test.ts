/**
 * Issue 11 item 4: `POST /v1/attest` is unauthenticated, and one credential (a public, chain-valid EK
 * certificate, or one unused join token) used to be enough to fill every attestation session and
 * lock real agents out with `attest.busy`. Sessions are now limited per credential, per source
 * address and in total with a reserve; each test floods a real verifier over HTTPS and then shows
 * that a legitimate agent with another credential still attests all the way to its SVID.
 *
 * Flood traffic comes from other loopback addresses (127.0.0.2…) than the legitimate agent
 * (127.0.0.1), as an attacker's would come from another host.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import type { KeyObject } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { addressBucket, SessionLedger } from '../../src/verifier/attestation.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { activateCredentialSoftware, akPublicFor, ekPublicFor, makeEkCert, makeIntermediate, makeRoot, rsaKeyPair, syntheticQuote } from '../tpm/synthetic.js';

interface Reply {
  status: number;
  body: { session?: string; nonce?: string; challenges?: Record<string, unknown>; agentId?: string; svid?: string[]; error?: { code: string; message: string } };
}

/** POST JSON over HTTPS from a chosen local (source) address, trusting the verifier's bundle. */
function post(tv: TestVerifier, caPem: string, path: string, body: unknown, from = '127.0.0.1'): Promise<Reply> {
  const payload = Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: tv.v.port,
        method: 'POST',
        path,
        localAddress: from,
        agent: false,
        ca: caPem,
        headers: { 'content-type': 'application/json', 'content-length': String(payload.length) },
        checkServerIdentity: (_h, cert) => (cert.subjectaltname === 'URI:spiffe://example.org/sigil/verifier' ? undefined : new Error('wrong verifier')),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Reply['body'] }));
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}

const csr = () => createCsr(generateKey('ec-p256')).toString('base64');

async function newToken(tv: TestVerifier): Promise<string> {
  return (await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {})).token;
}

/** `n` hellos at once; returns the status/code of each. */
async function flood(tv: TestVerifier, caPem: string, n: number, hello: (i: number) => Record<string, unknown>, from: string): Promise<Reply[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => post(tv, caPem, '/v1/attest', { attestors: hello(i), csr: csr() }, from)));
}

function tally(rs: Reply[]): Record<string, number> {
  const out: Record<string, number> = {};
  for (const r of rs) {
    const k = r.status === 200 ? 'opened' : (r.body.error?.code ?? String(r.status));
    out[k] = (out[k] ?? 0) + 1;
  }
  return out;
}

/** A full join-token attestation (hello, then the session's response); resolves the agent ID it got. */
async function attestWithToken(tv: TestVerifier, caPem: string, token: string, from = '127.0.0.1'): Promise<Reply> {
  const r1 = await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token } }, csr: csr() }, from);
  if (r1.status !== 200) return r1;
  return post(tv, caPem, `/v1/attest/${r1.body.session as string}`, { responses: { join_token: {} } }, from);
}

describe('attestation sessions: one join token, one address', () => {
  let tv: TestVerifier;
  let caPem: string;
  beforeAll(async () => {
    tv = await startTestVerifier(); // default limits
    caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  });
  afterAll(async () => tv?.stop());

  it('a flood with one token opens at most maxSessionsPerCredential (4) sessions; another agent still attests', async () => {
    const stolen = await newToken(tv);
    const rs = await flood(tv, caPem, 40, () => ({ join_token: { token: stolen } }), '127.0.0.2');
    expect(tally(rs)).toEqual({ opened: 4, 'attest.credential_busy': 36 });
    const refused = rs.find((r) => r.status !== 200) as Reply;
    expect(refused.status).toBe(429);
    expect(refused.body.error?.message).toMatch(/maxSessionsPerCredential/);
    // A hello that varies the JSON around the same token is still the same credential.
    const varied = await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token: stolen, x: 1 } }, csr: csr() }, '127.0.0.3');
    expect(varied.body.error?.code).toBe('attest.credential_busy');

    const done = await attestWithToken(tv, caPem, await newToken(tv));
    expect(done.status).toBe(200);
    expect(done.body.svid?.length).toBeGreaterThan(0);
    expect(tv.v.core.attestation.openSessions).toBe(4);
  });

  it('a finished session gives its slot back at once', async () => {
    const token = await newToken(tv);
    const opened = await flood(tv, caPem, 4, () => ({ join_token: { token } }), '127.0.0.4');
    expect(tally(opened)).toEqual({ opened: 4 });
    expect((await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token } }, csr: csr() }, '127.0.0.4')).body.error?.code).toBe('attest.credential_busy');
    // Finishing one (here: it attests, using the token up) frees its slot; the token is then spent, so
    // the next hello with it is refused by the token check, not by the limit.
    const fin = await post(tv, caPem, `/v1/attest/${opened[0]?.body.session as string}`, { responses: { join_token: {} } }, '127.0.0.4');
    expect(fin.status).toBe(200);
    const again = await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token } }, csr: csr() }, '127.0.0.4');
    expect(again.body.error?.code).not.toBe('attest.credential_busy');
  });
});

describe('attestation sessions: limits per address, reserve, expiry', () => {
  let tv: TestVerifier;
  let caPem: string;
  let clock = Date.now();
  beforeAll(async () => {
    tv = await startTestVerifier(
      { attestation: { maxSessions: 12, reservedSessions: 4, maxSessionsPerAddress: 6, maxSessionsPerCredential: 2, sessionTtl: '10s' } },
      { now: () => new Date(clock) },
    );
    caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  });
  afterAll(async () => tv?.stop());
  afterEach(() => {
    clock += 11_000; // every test starts with the previous one's sessions expired
  });

  it('one address with many valid tokens stops at maxSessionsPerAddress', async () => {
    const tokens = await Promise.all(Array.from({ length: 10 }, () => newToken(tv)));
    const rs = await flood(tv, caPem, 10, (i) => ({ join_token: { token: tokens[i] } }), '127.0.0.5');
    expect(tally(rs)).toEqual({ opened: 6, 'attest.address_busy': 4 });
    expect(rs.find((r) => r.status !== 200)?.status).toBe(429);
    expect((await attestWithToken(tv, caPem, await newToken(tv))).status).toBe(200);
  });

  it('abandoned sessions expire after sessionTtl and free their slots', async () => {
    const token = await newToken(tv);
    expect(tally(await flood(tv, caPem, 3, () => ({ join_token: { token } }), '127.0.0.6'))).toEqual({ opened: 2, 'attest.credential_busy': 1 });
    clock += 9_000;
    expect((await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token } }, csr: csr() }, '127.0.0.6')).body.error?.code).toBe('attest.credential_busy');
    clock += 1_000; // 10 s after they opened
    expect((await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token } }, csr: csr() }, '127.0.0.6')).status).toBe(200);
  });

  it('the reserve goes only to credentials and addresses with no session open; then the total cap holds', async () => {
    // Attackers on four addresses, two tokens each: 8 sessions = maxSessions - reservedSessions.
    const tokens = await Promise.all(Array.from({ length: 8 }, () => newToken(tv)));
    const rs = await Promise.all(tokens.map((t, i) => post(tv, caPem, '/v1/attest', { attestors: { join_token: { token: t } }, csr: csr() }, `127.0.1.${1 + (i % 4)}`)));
    expect(tally(rs)).toEqual({ opened: 8 });
    // More from an address that holds sessions, or with a token that holds one: refused.
    const fresh = await newToken(tv);
    expect((await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token: fresh } }, csr: csr() }, '127.0.1.1')).body.error?.code).toBe('attest.busy_reserved');
    expect((await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token: tokens[0] } }, csr: csr() }, '127.0.1.9')).body.error?.code).toBe('attest.busy_reserved');
    // A legitimate agent from an address and with a credential that hold nothing attests.
    const done = await attestWithToken(tv, caPem, fresh, '127.0.0.1');
    expect(done.status).toBe(200);
    expect(done.body.svid?.length).toBeGreaterThan(0);
    // Fill the reserve from fresh addresses with fresh tokens; then nothing more opens.
    const more = await Promise.all(Array.from({ length: 4 }, () => newToken(tv)));
    const rr = await Promise.all(more.map((t, i) => post(tv, caPem, '/v1/attest', { attestors: { join_token: { token: t } }, csr: csr() }, `127.0.2.${1 + i}`)));
    expect(tally(rr)).toEqual({ opened: 4 });
    const full = await post(tv, caPem, '/v1/attest', { attestors: { join_token: { token: await newToken(tv) } }, csr: csr() }, '127.0.3.1');
    expect(full.status).toBe(503);
    expect(full.body.error?.code).toBe('attest.busy');
  });
});

describe('attestation sessions: one public EK certificate', () => {
  let tv: TestVerifier;
  let caPem: string;
  let dir = '';
  let inter: Awaited<ReturnType<typeof makeIntermediate>>;

  async function fakeTpm() {
    const ek = rsaKeyPair();
    const ak = rsaKeyPair();
    return {
      ek,
      ak,
      hello: {
        ekCert: (await makeEkCert(ek.publicKey, inter, { notBefore: new Date(Date.now() - 86_400_000) })).toString('base64'),
        ekPub: ekPublicFor(ek.publicKey).toString('base64'),
        akPub: akPublicFor(ak.publicKey).toString('base64'),
      },
    };
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-limits-'));
    const root = await makeRoot('Limits Test Root');
    inter = await makeIntermediate('Limits Test CA', root);
    writeFileSync(join(dir, 'ek-roots.pem'), root.cert.toString('pem') + '\n' + inter.cert.toString('pem'));
    tv = await startTestVerifier({ nodeAttestors: { tpm: { ekCa: [join(dir, 'ek-roots.pem')], pcrs: { sha256: [7] } } } });
    caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  });
  afterAll(async () => {
    await tv?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('a flood with one EK certificate (no TPM needed) opens at most 4 sessions; a real TPM still attests', async () => {
    const pub = await fakeTpm();
    // The attacker has the certificate and EK public key only; other AKs do not make it another credential.
    const aks = [pub.hello.akPub, akPublicFor(rsaKeyPair().publicKey).toString('base64')];
    const rs = await flood(tv, caPem, 20, (i) => ({ tpm: { ...pub.hello, akPub: aks[i % 2] } }), '127.0.0.7');
    expect(tally(rs)).toEqual({ opened: 4, 'attest.credential_busy': 16 });

    const t = await fakeTpm();
    const key = generateKey('ec-p256');
    const r1 = await post(tv, caPem, '/v1/attest', { attestors: { tpm: t.hello }, csr: createCsr(key).toString('base64') });
    expect(r1.status).toBe(200);
    const ch = r1.body.challenges?.tpm as { credentialBlob: string; encryptedSecret: string };
    const binding = sessionBinding(Buffer.from(r1.body.nonce as string, 'base64'), spkiDer(key.publicKey));
    const secret = activateCredentialSoftware(t.ek.privateKey as KeyObject, Buffer.from(t.hello.akPub, 'base64'), Buffer.from(ch.credentialBlob, 'base64'), Buffer.from(ch.encryptedSecret, 'base64'));
    const q = syntheticQuote({ ak: t.ak.privateKey, extraData: binding, selection: [{ bank: 'sha256', pcrs: [7] }], values: new Map([['sha256:7', Buffer.alloc(32, 7)]]), clock: 1000n, resetCount: 1, restartCount: 0, signer: { ekPub: Buffer.from(t.hello.ekPub, 'base64'), akPub: Buffer.from(t.hello.akPub, 'base64') } });
    const r2 = await post(tv, caPem, `/v1/attest/${r1.body.session as string}`, {
      responses: { tpm: { secret: secret.toString('base64'), quote: q.attest.toString('base64'), signature: q.signature.toString('base64'), pcrValues: [{ bank: 'sha256', index: 7, value: '07'.repeat(32) }] } },
    });
    expect(r2.body.error).toBeUndefined();
    expect(r2.status).toBe(200);
    expect(r2.body.agentId).toMatch(/^spiffe:\/\/example\.org\/sigil\/agent\/tpm\//);
  });
});

describe('SessionLedger and address buckets', () => {
  it('IPv6 addresses share a bucket per /64; IPv4-mapped addresses count as IPv4', () => {
    expect(addressBucket('2001:db8:1:2:aaaa::1')).toBe(addressBucket('2001:db8:1:2:ffff:ffff:ffff:ffff'));
    expect(addressBucket('2001:db8:1:2::1')).toBe('2001:db8:1:2::/64');
    expect(addressBucket('2001:db8:1:3::1')).not.toBe(addressBucket('2001:db8:1:2::1'));
    expect(addressBucket('::1')).toBe('0:0:0:0::/64');
    expect(addressBucket('fe80::1%eth0')).toBe('fe80:0:0:0::/64');
    expect(addressBucket('::ffff:192.0.2.7')).toBe('192.0.2.7');
    expect(addressBucket('192.0.2.7')).toBe('192.0.2.7');
  });

  it('a slot refused or given back leaves every count as it was', () => {
    const l = new SessionLedger({ sessionTtlSeconds: 10, maxSessions: 3, reservedSessions: 0, maxSessionsPerCredential: 1, maxSessionsPerAddress: 3 });
    const a = l.admit(['c1'], 'x', 0);
    expect(() => l.admit(['c1', 'c2'], 'y', 0)).toThrow(expect.objectContaining({ code: 'attest.credential_busy' }));
    const b = l.admit(['c2'], 'y', 0);
    l.release(a);
    l.release(a); // twice: no effect
    expect(l.open).toBe(1);
    l.admit(['c1'], 'x', 0);
    l.bind(b, 's-b');
    l.releaseSession('s-b');
    expect(l.open).toBe(1);
    expect(l.admit(['c2'], 'x', 0)).toBeTruthy();
    expect(l.open).toBe(2);
    expect(l.admit(['c3'], 'x', 10_000)).toBeTruthy(); // the others expired at 10 s
    expect(l.open).toBe(1);
  });
});
