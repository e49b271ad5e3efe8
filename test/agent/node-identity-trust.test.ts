/**
 * The node identity across verifier trouble: a TLS trust failure never costs the node SVID (a
 * join token is single use), renewals are retried before the SVID expires, and an SVID that
 * expired with no way to attest again is reported as such.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { NodeIdentity } from '../../src/agent/node-attestation.js';
import { TrustStore } from '../../src/agent/trust.js';
import type { VerifierClient } from '../../src/agent/verifier-client.js';
import { SigilError } from '../../src/errors.js';
import type { NodeAttestorAgent } from '../../src/plugins/types.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { parseCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';
import { waitFor } from './harness.js';

const AGENT_ID = 'spiffe://example.org/sigil/agent/join_token/t1';

/** A scripted verifier: each call takes the next scripted failure (if any) for its kind. */
class ScriptedVerifier {
  readonly caKey = generateKey('ec-p256');
  readonly caDer = issueCaCertificate({ subjectKey: this.caKey.publicKey, signerKey: this.caKey.privateKey, trustDomain: 'example.org', notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
  calls: string[] = [];
  ttlMs = 3600_000;
  renewFailures: SigilError[] = [];
  /** How long each renewal takes before it answers. */
  renewDelayMs = 0;
  attestFailure: SigilError | undefined;
  /** Every trust list the agent set for TLS. */
  trustSets: Buffer[][] = [];
  private spki: Buffer | undefined;

  private issue(spki: Buffer): Buffer {
    return issueX509Svid({ caCertDer: this.caDer, caKey: this.caKey.privateKey, subjectSpki: spki, spiffeId: AGENT_ID, notBefore: new Date(Date.now() - 10_000), notAfter: new Date(Date.now() + this.ttlMs) });
  }
  private jwks() {
    return new SpiffeBundle('example.org', { x509Authorities: [this.caDer] }).toJwks();
  }
  client(): VerifierClient {
    return {
      setTrust: (ders: Buffer[]) => void this.trustSets.push(ders),
      setIdentity: () => undefined,
      attestBegin: async (_h: unknown, csr: Buffer) => {
        this.calls.push('attest');
        if (this.attestFailure) throw this.attestFailure;
        this.spki = parseCsr(csr).spki;
        return { session: 's', nonce: Buffer.alloc(32, 1), challenges: {} };
      },
      attestFinish: async () => ({ agentId: AGENT_ID, svid: [this.issue(this.spki!)], bundle: this.jwks(), result: { status: 'affirming' } }),
      renew: async (csr: Buffer) => {
        this.calls.push('renew');
        if (this.renewDelayMs > 0) await new Promise((r) => setTimeout(r, this.renewDelayMs));
        const f = this.renewFailures.shift();
        if (f) throw f;
        return { svid: [this.issue(parseCsr(csr).spki)], bundle: this.jwks() };
      },
    } as unknown as VerifierClient;
  }
}

const dirs: string[] = [];
const nodes: NodeIdentity[] = [];
afterEach(async () => {
  for (const n of nodes.splice(0)) await n.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setup(v: ScriptedVerifier, backoff = { baseMs: 1000, capMs: 60_000, random: () => 0.999 }) {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-node-trust-'));
  dirs.push(dir);
  writeFileSync(join(dir, 'bootstrap.pem'), certsToPem([v.caDer]));
  const logs: { level: number; msg: string; code?: string; cause?: string }[] = [];
  const logger = pino(
    { level: 'debug' },
    new Writable({
      write(c: Buffer, _e, cb) {
        for (const l of c.toString().split('\n')) if (l) logs.push(JSON.parse(l) as (typeof logs)[number]);
        cb();
      },
    }),
  );
  const attestor: NodeAttestorAgent = { hello: async () => ({}), respond: async () => ({}) };
  const trust = TrustStore.load({ trustDomain: 'example.org', dataDir: dir, bootstrapPath: join(dir, 'bootstrap.pem'), logger });
  const node = new NodeIdentity({ trustDomain: 'example.org', dataDir: dir, client: v.client(), trust, attestors: new Map([['join_token', attestor]]), logger, now: () => new Date(), backoff });
  nodes.push(node);
  return { node, dir, logs };
}

const untrusted = () => new SigilError('agent.verifier_untrusted', 'verifier TLS certificate not trusted (CERT_HAS_EXPIRED)', { status: 502 });

describe('node identity and verifier trust', () => {
  it('keeps its node SVID and key when the verifier is not trusted for a while (no re-attestation: a join token is single use)', async () => {
    const v = new ScriptedVerifier();
    v.ttlMs = 2000;
    const { node, dir } = setup(v, { baseMs: 50, capMs: 200, random: () => 0.5 });
    node.start();
    await node.whenReady();
    const key = readFileSync(join(dir, 'node-key.pem'), 'utf8');
    // Entry sync saw an untrusted verifier certificate; the next renewal fails the same way once.
    node.trustFailure(untrusted());
    v.renewFailures.push(untrusted());
    await waitFor(() => v.calls.filter((c) => c === 'renew').length >= 2, 5000, 'renewal after the trust failure');
    expect(v.calls.filter((c) => c === 'attest')).toHaveLength(1);
    expect(readFileSync(join(dir, 'node-key.pem'), 'utf8')).toBe(key);
    expect(node.current()).toBeDefined();
    expect(node.error()).toBeUndefined();
    // The bootstrap bundle was added to the TLS trust meanwhile.
    expect(v.trustSets.length).toBeGreaterThanOrEqual(2);
  }, 15_000);

  it('retries a failing renewal several times before the node SVID expires (the backoff is capped by the time left)', async () => {
    const v = new ScriptedVerifier();
    v.ttlMs = 3000;
    const { node } = setup(v); // backoff 1 s, 2 s, 4 s … (random ≈ 1): without the cap the SVID would expire first
    node.start();
    await node.whenReady();
    const unreachable = () => new SigilError('agent.verifier_unreachable', 'connection refused', { status: 503 });
    v.renewFailures.push(unreachable(), unreachable(), unreachable());
    let lapsed = false;
    const watch = setInterval(() => (lapsed ||= node.current() === undefined), 20);
    try {
      await waitFor(() => v.calls.filter((c) => c === 'renew').length >= 4 && node.error() === undefined, 6000, 'a successful renewal');
    } finally {
      clearInterval(watch);
    }
    expect(lapsed).toBe(false);
    expect(v.calls.filter((c) => c === 'attest')).toHaveLength(1);
  }, 15_000);

  it('a renewal that fails after the node SVID expired says it was the renewal that failed, then attests again', async () => {
    const v = new ScriptedVerifier();
    v.ttlMs = 1200;
    const { node, logs } = setup(v, { baseMs: 100, capMs: 200, random: () => 0.5 });
    node.start();
    await node.whenReady();
    // The renewal starts at half life and answers (unreachable) only after the SVID's end.
    v.renewDelayMs = 1500;
    v.renewFailures.push(new SigilError('agent.verifier_unreachable', 'connection refused', { status: 503 }));
    v.attestFailure = new SigilError('join_token.used', 'verifier refused POST /v1/attest: join token was already used', { status: 401 });
    const err = await waitFor(() => (node.error()?.code === 'agent.node_svid_expired' ? node.error() : undefined), 5000, 'agent.node_svid_expired');
    expect(err!.message).toMatch(/expired at .* renewing it failed \(agent\.verifier_unreachable: connection refused\)/);
    await waitFor(() => v.calls.includes('attest') && v.calls.lastIndexOf('attest') > v.calls.indexOf('renew'), 5000, 'an attestation after the failed renewal');
    await waitFor(() => (/attesting again failed \(join_token\.used: /.test(node.error()?.message ?? '') ? true : undefined), 5000, 'the attestation failure reported');
    expect(logs.some((l) => l.msg === 'node SVID expired and the agent cannot attest again' && l.cause === 'agent.verifier_unreachable')).toBe(true);
  }, 15_000);

  it('says plainly that the node SVID expired and why attesting again fails, instead of looping on the attestor error', async () => {
    const v = new ScriptedVerifier();
    v.ttlMs = 1200;
    const { node, logs } = setup(v, { baseMs: 100, capMs: 200, random: () => 0.5 });
    node.start();
    await node.whenReady();
    // The verifier stays unreachable past the SVID's end, then refuses the (used) join token.
    const down = new SigilError('agent.verifier_unreachable', 'connection refused', { status: 503 });
    v.renewFailures.push(...Array.from({ length: 50 }, () => down));
    v.attestFailure = new SigilError('join_token.used', 'verifier refused POST /v1/attest: join token was already used', { status: 401 });
    // A renewal still under way when the SVID expires reports its own failure first ("renewing it
    // failed (agent.verifier_unreachable …)"); the attestation that follows names the used token.
    const expired = () => {
      const e = node.error();
      return e?.code === 'agent.node_svid_expired' && /attesting again failed/.test(e.message) ? e : undefined;
    };
    const err = await waitFor(expired, 5000, 'agent.node_svid_expired from an attestation');
    expect(err!.message).toMatch(/expired at .* attesting again failed \(join_token\.used: /);
    expect(err!.message).toMatch(/new one in tokenFile/);
    const line = logs.find((l) => l.msg === 'node SVID expired and the agent cannot attest again' && l.cause === 'join_token.used');
    expect(line).toMatchObject({ level: 50, code: 'agent.node_svid_expired', cause: 'join_token.used' });
    expect(node.current()).toBeUndefined();
    // Once an attestation succeeds again (e.g. a new token), the identity is back and the error is gone.
    v.attestFailure = undefined;
    await waitFor(() => node.current(), 5000, 'identity regained');
    expect(node.error()).toBeUndefined();
    expect(logs.some((l) => l.msg === 'node identity regained')).toBe(true);
  }, 15_000);
});
