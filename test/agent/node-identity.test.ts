/** NodeIdentity against a scripted verifier client: binding, persistence, renewal timing, re-attestation, backoff. */
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { NodeIdentity, halfLife } from '../../src/agent/node-attestation.js';
import { TrustStore } from '../../src/agent/trust.js';
import type { VerifierClient } from '../../src/agent/verifier-client.js';
import { SigilError } from '../../src/errors.js';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { NodeAttestorAgent } from '../../src/plugins/types.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { parseCsr } from '../../src/spiffe/csr.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';
import { waitFor } from './harness.js';

const logger = pino({ level: 'silent' });
const AGENT_ID = 'spiffe://example.org/sigil/agent/fake/n1';

class FakeVerifier {
  readonly caKey = generateKey('ec-p256');
  readonly caDer = issueCaCertificate({ subjectKey: this.caKey.publicKey, signerKey: this.caKey.privateKey, trustDomain: 'example.org', notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
  calls: string[] = [];
  fail: SigilError | undefined;
  ttlMs = 3600_000;
  wrongKey = false;
  identity: unknown;
  /** When set, renewals wait for it (a renewal in flight). */
  renewGate: Promise<void> | undefined;
  private pendingSpki: Buffer | undefined;

  jwks() {
    return new SpiffeBundle('example.org', { x509Authorities: [this.caDer] }).toJwks();
  }
  private issue(spki: Buffer) {
    const subject = this.wrongKey ? spkiDer(generateKey('ec-p256').publicKey) : spki;
    return issueX509Svid({ caCertDer: this.caDer, caKey: this.caKey.privateKey, subjectSpki: subject, spiffeId: AGENT_ID, notBefore: new Date(Date.now() - 10_000), notAfter: new Date(Date.now() + this.ttlMs) });
  }
  client(): VerifierClient {
    const fake = {
      setTrust: () => undefined,
      setIdentity: (id: unknown) => {
        this.identity = id;
      },
      attestBegin: async (_hellos: Record<string, unknown>, csr: Buffer) => {
        this.calls.push('attest');
        if (this.fail) throw this.fail;
        this.pendingSpki = parseCsr(csr).spki;
        return { session: 's1', nonce: Buffer.alloc(32, 7), challenges: { fake: { round: 1 } } };
      },
      attestFinish: async () => ({ agentId: AGENT_ID, svid: [this.issue(this.pendingSpki!)], bundle: this.jwks(), result: { status: 'affirming' } }),
      renew: async (csr: Buffer) => {
        this.calls.push('renew');
        if (this.renewGate) await this.renewGate;
        if (this.fail) throw this.fail;
        return { svid: [this.issue(parseCsr(csr).spki)], bundle: this.jwks() };
      },
    };
    return fake as unknown as VerifierClient;
  }
}

const dirs: string[] = [];
const nodes: NodeIdentity[] = [];
afterEach(async () => {
  for (const n of nodes.splice(0)) await n.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setup(v: FakeVerifier, dataDir?: string) {
  const dir = dataDir ?? mkdtempSync(join(tmpdir(), 'sigil-node-'));
  if (!dataDir) {
    dirs.push(dir);
    writeFileSync(join(dir, 'bootstrap.pem'), certsToPem([v.caDer]));
  }
  const seen: { challenge: unknown; binding: Buffer; nonce: Buffer; csrSpki: Buffer }[] = [];
  const attestor: NodeAttestorAgent = {
    hello: async () => ({ hi: true }),
    respond: async (challenge, s) => {
      seen.push({ challenge, ...s });
      return {};
    },
  };
  const trust = TrustStore.load({ trustDomain: 'example.org', dataDir: dir, bootstrapPath: join(dir, 'bootstrap.pem'), logger });
  const node = new NodeIdentity({ trustDomain: 'example.org', dataDir: dir, client: v.client(), trust, attestors: new Map([['fake', attestor]]), logger, now: () => new Date(), backoff: { baseMs: 50, capMs: 200 } });
  nodes.push(node);
  return { node, dir, seen };
}

describe('node identity', () => {
  it('computes the renewal point from receipt time', () => {
    const t = new Date(1000_000);
    expect(halfLife(t, new Date(990_000), new Date(1000_000 + 60_000)).getTime()).toBe(1030_000);
    expect(halfLife(t, new Date(1010_000), new Date(1070_000)).getTime()).toBe(1040_000);
  });

  it('attests with a bound response, persists key, SVID and bundle, and reuses them on restart', async () => {
    const v = new FakeVerifier();
    const { node, dir, seen } = setup(v);
    node.start();
    const s = await node.whenReady();
    expect(s.agentId).toBe(AGENT_ID);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.challenge).toEqual({ round: 1 });
    expect(seen[0]!.binding).toEqual(sessionBinding(seen[0]!.nonce, seen[0]!.csrSpki));
    expect(seen[0]!.csrSpki).toEqual(spkiDer(s.privateKey));
    expect(statSync(join(dir, 'node-key.pem')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'bundle.pem'), 'utf8')).toBe(certsToPem([v.caDer]));
    expect(v.identity).toBeDefined();
    await node.close();

    const again = setup(v, dir);
    again.node.start();
    expect(again.node.current()?.agentId).toBe(AGENT_ID);
    await new Promise((r) => setTimeout(r, 100));
    expect(v.calls).toEqual(['attest']);
  });

  it('renews at half life, keeping the agent ID and key', async () => {
    const v = new FakeVerifier();
    v.ttlMs = 3000;
    const { node } = setup(v);
    node.start();
    const first = await node.whenReady();
    const receivedAt = Date.now();
    const gen = node.generation();
    await waitFor(() => v.calls.includes('renew'), 4000, 'renewal');
    // notAfter has whole-second precision: renewal is due halfway from receipt to the actual notAfter.
    const half = (first.notAfter.getTime() - receivedAt) / 2;
    expect(Date.now() - receivedAt).toBeGreaterThanOrEqual(half - 60);
    expect(Date.now()).toBeLessThan(first.notAfter.getTime());
    await waitFor(() => node.generation() > gen, 1000, 'renewed SVID adopted');
    expect(node.agentId()).toBe(AGENT_ID);
    expect(node.current()!.privateKey).toBe(first.privateKey);
    expect(node.current()!.notAfter.getTime()).toBeGreaterThan(first.notAfter.getTime());
  });

  it('re-attests with a fresh key when told the SVID is refused, ignoring refusals of superseded SVIDs', async () => {
    const v = new FakeVerifier();
    const { node, dir } = setup(v);
    node.start();
    await node.whenReady();
    const key1 = readFileSync(join(dir, 'node-key.pem'), 'utf8');
    node.invalidate(new SigilError('agent.stale_svid', 'old'), node.generation() - 1);
    await new Promise((r) => setTimeout(r, 100));
    expect(v.calls).toEqual(['attest']);
    node.invalidate(new SigilError('agent.unknown', 'evicted'), node.generation());
    await waitFor(() => v.calls.length === 2, 2000, 're-attestation');
    await waitFor(() => readFileSync(join(dir, 'node-key.pem'), 'utf8') !== key1, 2000, 'fresh node key');
  });

  it('a refusal of the SVID a renewal in flight replaces does not throw the identity away (a join-token node could never attest again)', async () => {
    // Seen under load: the verifier records the renewal, a request still signed with the old SVID
    // is refused as superseded (agent.stale_svid) before the agent adopts the new one.
    const v = new FakeVerifier();
    v.ttlMs = 2000;
    const { node } = setup(v);
    node.start();
    await node.whenReady();
    let release!: () => void;
    v.renewGate = new Promise((r) => (release = r));
    await waitFor(() => v.calls.includes('renew'), 3000, 'renewal in flight');
    const gen = node.generation();
    node.invalidate(new SigilError('agent.stale_svid', 'superseded by a newer one'), gen);
    release();
    v.renewGate = undefined;
    await waitFor(() => node.generation() > gen, 2000, 'renewed SVID adopted');
    // The next step of the identity loop is another renewal at half life, not an attestation.
    await waitFor(() => v.calls.length >= 3, 3000, 'the next identity request');
    expect(v.calls.slice(0, 3)).toEqual(['attest', 'renew', 'renew']);
    expect(node.current()).toBeDefined();
    expect(node.error()).toBeUndefined();
  });

  it('a refusal reported while a renewal is in flight is acted on when the renewal fails', async () => {
    const v = new FakeVerifier();
    v.ttlMs = 2000;
    const { node } = setup(v);
    node.start();
    await node.whenReady();
    let release!: () => void;
    v.renewGate = new Promise((r) => (release = r));
    await waitFor(() => v.calls.includes('renew'), 3000, 'renewal in flight');
    node.invalidate(new SigilError('agent.unknown', 'evicted'), node.generation());
    v.fail = new SigilError('agent.verifier_unreachable', 'answer lost', { status: 503 });
    release();
    v.renewGate = undefined;
    await waitFor(() => v.calls.filter((c) => c === 'attest').length >= 2, 3000, 're-attestation after the failed renewal');
    v.fail = undefined;
    await waitFor(() => node.error() === undefined && node.current() !== undefined, 3000, 'attested again');
  });

  it('backs off while the verifier is unreachable and recovers; refuses an SVID for another key', async () => {
    const v = new FakeVerifier();
    v.fail = new SigilError('agent.verifier_unreachable', 'down', { status: 503 });
    const { node } = setup(v);
    node.start();
    await waitFor(() => v.calls.length >= 4, 3000, 'several attempts');
    expect(node.error()?.code).toBe('agent.verifier_unreachable');
    expect(node.current()).toBeUndefined();
    v.fail = undefined;
    v.wrongKey = true;
    await waitFor(() => node.error()?.code === 'agent.bad_node_svid', 3000, 'wrong-key SVID refused');
    expect(node.current()).toBeUndefined();
    v.wrongKey = false;
    await node.whenReady();
    expect(node.error()).toBeUndefined();
  });
});
