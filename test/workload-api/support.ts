/**
 * Test support: an in-memory WorkloadIdentitySource with real keys and certificates (a root CA,
 * an intermediate, P-256 leaf SVIDs issued by src/spiffe/x509svid.ts), real ES256 JWT-SVIDs
 * (jose) and a server starter.
 */
import { createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, chmodSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportJWK, jwtVerify, SignJWT, createLocalJWKSet } from 'jose';
import pino from 'pino';
import { SigilError } from '../../src/errors.js';
import type { CachedX509Svid, JwtSvidResult, WorkloadIdentitySource } from '../../src/agent/identity-source.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';
import { exportJwk, spkiDer } from '../../src/spiffe/keys.js';
import { startWorkloadApi, type WorkloadApiOptions, type WorkloadApiServer } from '../../src/agent/workload-api/server.js';
import type { WorkloadAttestor } from '../../src/plugins/types.js';

export const TD = 'example.org';

export interface Pki {
  rootDer: Buffer;
  interDer: Buffer;
  interKey: KeyObject;
  issue(spiffeId: string, ttlMs?: number): { chainDer: Buffer[]; privateKey: KeyObject; privateKeyPkcs8Der: Buffer; expiresAt: Date };
}

export function makePki(td = TD): Pki {
  const now = Date.now();
  const root = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const rootDer = issueCaCertificate({
    subjectKey: root.publicKey,
    signerKey: root.privateKey,
    trustDomain: td,
    commonName: 'test root',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 24 * 3600_000),
  });
  const inter = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const interDer = issueCaCertificate({
    subjectKey: inter.publicKey,
    signerKey: root.privateKey,
    issuerCertDer: rootDer,
    trustDomain: td,
    commonName: 'test intermediate',
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 12 * 3600_000),
  });
  return {
    rootDer,
    interDer,
    interKey: inter.privateKey,
    issue(spiffeId: string, ttlMs = 3600_000) {
      const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const notAfter = new Date(Date.now() + ttlMs);
      const leaf = issueX509Svid({
        caCertDer: interDer,
        caKey: inter.privateKey,
        subjectSpki: spkiDer(k.publicKey),
        spiffeId,
        notBefore: new Date(Date.now() - 1000),
        notAfter,
      });
      const pkcs8 = k.privateKey.export({ format: 'der', type: 'pkcs8' });
      return { chainDer: [leaf, interDer], privateKey: createPrivateKey({ key: pkcs8, format: 'der', type: 'pkcs8' }), privateKeyPkcs8Der: pkcs8, expiresAt: notAfter };
    },
  };
}

export interface FakeEntry {
  id: string;
  spiffeId: string;
  selectors: string[];
  hint?: string;
}

export class FakeSource implements WorkloadIdentitySource {
  readonly pki: Pki;
  readonly entries: FakeEntry[] = [];
  readonly svids = new Map<string, CachedX509Svid>();
  readonly federated = new Map<string, Buffer[]>();
  private readonly listeners = new Set<() => void>();
  private readonly jwtKey = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  private readonly kid = 'test-kid-1';
  jwtCalls = 0;

  constructor(pki: Pki = makePki()) {
    this.pki = pki;
  }

  addEntry(e: FakeEntry, withSvid = true): void {
    this.entries.push(e);
    if (withSvid) this.rotate(e.id, false);
  }

  removeEntry(id: string): void {
    const i = this.entries.findIndex((e) => e.id === id);
    if (i >= 0) this.entries.splice(i, 1);
    this.svids.delete(id);
    this.fire();
  }

  rotate(entryId: string, fire = true): CachedX509Svid {
    const e = this.entries.find((x) => x.id === entryId);
    if (!e) throw new Error(`no entry ${entryId}`);
    const issued = this.pki.issue(e.spiffeId);
    const svid: CachedX509Svid = { entryId, spiffeId: e.spiffeId, hint: e.hint ?? '', ...issued };
    this.svids.set(entryId, svid);
    if (fire) this.fire();
    return svid;
  }

  fire(): void {
    for (const l of [...this.listeners]) l();
  }

  get listenerCount(): number {
    return this.listeners.size;
  }

  private matching(selectors: string[]): FakeEntry[] {
    const have = new Set(selectors);
    return this.entries.filter((e) => e.selectors.every((s) => have.has(s)));
  }

  x509SvidsFor(selectors: string[]): CachedX509Svid[] {
    const out: CachedX509Svid[] = [];
    for (const e of this.matching(selectors)) {
      const s = this.svids.get(e.id);
      if (s) out.push(s);
    }
    return out;
  }

  x509Bundles(): Map<string, Buffer[]> {
    return new Map([[TD, [this.pki.rootDer]], ...this.federated]);
  }

  jwtBundles(): Map<string, Buffer> {
    const jwk = { kty: 'EC', crv: 'P-256', ...this.publicJwk, kid: this.kid, use: 'jwt-svid' };
    return new Map([[TD, Buffer.from(JSON.stringify({ keys: [jwk] }))]]);
  }

  private get publicJwk(): { x: string; y: string } {
    const j = exportJwk(this.jwtKey.publicKey) as { x: string; y: string };
    return { x: j.x, y: j.y };
  }

  async jwtSvidsFor(selectors: string[], audience: string[], spiffeId?: string): Promise<JwtSvidResult[]> {
    this.jwtCalls++;
    let entries = this.matching(selectors);
    if (spiffeId !== undefined) {
      entries = entries.filter((e) => e.spiffeId === spiffeId);
      if (entries.length === 0) throw new SigilError('agent.jwt_not_entitled', `caller is not entitled to ${spiffeId}`, { status: 403 });
    }
    const out: JwtSvidResult[] = [];
    for (const e of entries) {
      const exp = Math.floor(Date.now() / 1000) + 300;
      const token = await new SignJWT({})
        .setProtectedHeader({ alg: 'ES256', kid: this.kid, typ: 'JWT' })
        .setSubject(e.spiffeId)
        .setAudience(audience)
        .setExpirationTime(exp)
        .setIssuedAt()
        .sign(this.jwtKey.privateKey);
      out.push({ spiffeId: e.spiffeId, token, hint: e.hint ?? '', expiresAt: new Date(exp * 1000) });
    }
    return out;
  }

  async validateJwtSvid(token: string, audience: string): Promise<{ spiffeId: string; claims: Record<string, unknown> }> {
    const jwk = await exportJWK(createPublicKey({ key: this.jwtKey.publicKey.export({ type: 'spki', format: 'der' }), format: 'der', type: 'spki' })); // not the generated object: see exportJwk in src/spiffe/keys.ts
    const jwks = createLocalJWKSet({ keys: [{ ...jwk, kid: this.kid, alg: 'ES256' }] });
    try {
      const r = await jwtVerify(token, jwks, { audience, algorithms: ['ES256'] });
      return { spiffeId: String(r.payload.sub), claims: r.payload as Record<string, unknown> };
    } catch (e) {
      throw new SigilError('jwtsvid.invalid', `JWT-SVID is not valid: ${(e as Error).message}`, { status: 400 });
    }
  }

  onChange(listener: () => void): () => void {
    const l = (): void => listener();
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
}

/** SIGIL_TEST_LOG: a pino level name, or any other non-empty value for debug (as test/agent/harness.ts reads it). */
const testLogLevel = (v: string | undefined): string => (!v ? 'silent' : ['trace', 'debug', 'info', 'warn', 'error', 'fatal'].includes(v) ? v : 'debug');
export const silentLogger = pino({ level: testLogLevel(process.env.SIGIL_TEST_LOG) });

/** A temp directory reachable by other uids (0755), for the socket. */
export function socketDir(): { dir: string; socket: string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-wl-'));
  chmodSync(dir, 0o755);
  return { dir, socket: join(dir, 'agent.sock'), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export async function startTestServer(
  source: WorkloadIdentitySource,
  attestors: Map<string, WorkloadAttestor>,
  extra: Partial<WorkloadApiOptions> = {},
): Promise<{ server: WorkloadApiServer; socket: string; cleanup(): Promise<void> }> {
  const d = socketDir();
  const server = await startWorkloadApi({ socketPath: d.socket, trustDomain: TD, source, attestors, logger: silentLogger, ...extra });
  return {
    server,
    socket: d.socket,
    async cleanup() {
      await server.close();
      d.cleanup();
    },
  };
}
