/**
 * Federated bundles are per caller (SPIFFE Federation; issue 17 item 3): two workloads on one
 * agent whose entries federate with different trust domains get different bundle sets from
 * FetchX509Bundles, FetchJWTBundles and FetchX509SVID, and ValidateJWTSVID refuses a JWT-SVID of
 * a trust domain the caller's entries do not federate with. Real parts: the agent's SVID cache
 * (src/agent/svid-cache.ts) and foreign-bundle store (src/federation/agent-bundles.ts), the
 * Workload API server, and grpc-js clients in two separate processes; only the workload
 * attestor is a stand-in that names each process by its pid.
 */
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SvidCache } from '../../src/agent/svid-cache.js';
import type { AuthorizedEntry } from '../../src/agent/verifier-client.js';
import { workloadProtoPath } from '../../src/agent/workload-api/proto.js';
import { FederatedBundles } from '../../src/federation/agent-bundles.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { mintJwtSvidSync } from '../../src/spiffe/jwtsvid.js';
import type { WorkloadAttestor } from '../../src/plugins/types.js';
import { TD, makePki, silentLogger, startTestServer } from './support.js';

const FIXTURE = fileURLToPath(new URL('./fixtures/federated-caller.mjs', import.meta.url));

interface CallerView {
  x509: string[];
  jwt: string[];
  validate: Record<string, { spiffeId?: string; code?: number; message?: string }>;
}

function trustDomain(td: string): { bundle: SpiffeBundle; token(sub: string): string } {
  const pki = makePki(td);
  const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const bundle = new SpiffeBundle(td, { x509Authorities: [pki.rootDer], jwtAuthorities: [{ kid: `${td}-k1`, publicKey: k.publicKey }], sequence: 1 });
  const token = (sub: string): string =>
    mintJwtSvidSync({ privateKey: k.privateKey, kid: `${td}-k1`, spiffeId: `spiffe://${td}/${sub}`, audience: ['svc'], notAfter: new Date(Date.now() + 300_000), now: new Date() });
  return { bundle, token };
}

function entry(id: string, selector: string): AuthorizedEntry {
  return { id, spiffeId: `spiffe://${TD}/${id}`, parentId: `spiffe://${TD}/sigil/agent/x`, selectors: [selector], x509SvidTtl: 3600, jwtSvidTtl: 300, dnsNames: [], hint: '', admin: false, expiresAt: null, revisionNumber: 1 };
}

describe('federated bundles per caller', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-wl-fed-'));
  const own = trustDomain(TD);
  const foreign = { 'b.org': trustDomain('b.org'), 'c.org': trustDomain('c.org'), 'd.org': trustDomain('d.org') };
  const ownPki = makePki(TD);
  const roles = new Map<number, string>();
  let federated: FederatedBundles;
  let cache: SvidCache;
  let t: Awaited<ReturnType<typeof startTestServer>>;

  /** Run the fixture as a separate process known to the attestor as `role`. */
  function asCaller(role: string, tokens: Record<string, string>): Promise<CallerView> {
    return new Promise((resolve, reject) => {
      const child = execFile(process.execPath, [FIXTURE, t.socket, JSON.stringify(tokens), workloadProtoPath()], { timeout: 30_000 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`${err.message}\n${stderr}`));
        else resolve(JSON.parse(stdout) as CallerView);
      });
      roles.set(child.pid!, role);
    });
  }

  function adopt(entries: Record<string, string[]>): void {
    const bundles = Object.fromEntries(Object.entries(foreign).map(([td, f]) => [td, f.bundle.toJwks()]));
    if (federated.adopt({ bundles, entries })) cache.bundleUpdated();
  }

  beforeAll(async () => {
    federated = new FederatedBundles(TD, dir, silentLogger);
    cache = new SvidCache({
      trustDomain: TD,
      logger: silentLogger,
      now: () => new Date(),
      bundle: () => new SpiffeBundle(TD, { x509Authorities: [ownPki.rootDer], jwtAuthorities: own.bundle.jwtAuthorities }),
      federated,
      mintJwt: () => Promise.reject(new Error('not used')),
    });
    const entries = [entry('alice', 't:alice'), entry('bob', 't:bob'), entry('carol', 't:carol')];
    cache.setEntries(entries);
    for (const e of entries) {
      const issued = ownPki.issue(e.spiffeId);
      cache.putSvid(e, issued.chainDer, issued.privateKey, new Date(Date.now() - 1000), issued.expiresAt, new Date());
    }
    // alice federates with b.org, bob with c.org, carol with nothing; d.org is held for nobody here.
    adopt({ alice: ['b.org'], bob: ['c.org'], carol: [] });
    const attestor: WorkloadAttestor = { attest: async (c) => [`t:${roles.get(c.pid) ?? 'stranger'}`] };
    t = await startTestServer(cache, new Map([['t', attestor]]));
  });

  afterAll(async () => {
    await t?.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const tokens = (): Record<string, string> => ({ own: own.token('peer'), b: foreign['b.org'].token('svc'), c: foreign['c.org'].token('svc'), d: foreign['d.org'].token('svc') });

  it('gives each caller its own bundle and only the foreign bundles its entries federate with', async () => {
    const [alice, bob, carol] = await Promise.all([asCaller('alice', tokens()), asCaller('bob', tokens()), asCaller('carol', tokens())]);
    expect(alice.x509).toEqual([`spiffe://b.org`, `spiffe://${TD}`]);
    expect(alice.jwt).toEqual([`spiffe://b.org`, `spiffe://${TD}`]);
    expect(bob.x509).toEqual([`spiffe://c.org`, `spiffe://${TD}`]);
    expect(bob.jwt).toEqual([`spiffe://c.org`, `spiffe://${TD}`]);
    expect(carol.x509).toEqual([`spiffe://${TD}`]);
    expect(carol.jwt).toEqual([`spiffe://${TD}`]);

    // ValidateJWTSVID: the own trust domain for everyone, a foreign one only where federated.
    expect(alice.validate.own).toEqual({ spiffeId: `spiffe://${TD}/peer` });
    expect(alice.validate.b).toEqual({ spiffeId: 'spiffe://b.org/svc' });
    expect(alice.validate.c).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, message: expect.stringContaining('trust domain c.org is not trusted by this caller') });
    expect(alice.validate.d).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect(bob.validate.b).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, message: expect.stringContaining('b.org') });
    expect(bob.validate.c).toEqual({ spiffeId: 'spiffe://c.org/svc' });
    expect(carol.validate.own).toEqual({ spiffeId: `spiffe://${TD}/peer` });
    expect(carol.validate.b).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it('pushes a new bundle set on an open stream when the caller\'s federation changes', async () => {
    // This test process is the caller "dave" with an entry that federates with nothing, then with d.org.
    roles.set(process.pid, 'dave');
    const dave = entry('dave', 't:dave');
    cache.setEntries([entry('alice', 't:alice'), entry('bob', 't:bob'), entry('carol', 't:carol'), dave]);
    const issued = ownPki.issue(dave.spiffeId);
    cache.putSvid(dave, issued.chainDer, issued.privateKey, new Date(Date.now() - 1000), issued.expiresAt, new Date());
    cache.notify();
    const def = protoLoader.loadSync(workloadProtoPath(), { keepCase: true, defaults: true });
    const Ctor = grpc.loadPackageDefinition(def).SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
    const stub = new Ctor(`unix://${t.socket}`, grpc.credentials.createInsecure()) as unknown as Record<string, (r: object, m: grpc.Metadata) => grpc.ClientReadableStream<{ bundles: Record<string, Buffer> }>> & grpc.Client;
    const md = new grpc.Metadata();
    md.set('workload.spiffe.io', 'true');
    const call = stub.FetchJWTBundles!({}, md);
    const seen: string[][] = [];
    const next = (): Promise<string[]> =>
      new Promise((resolve, reject) => {
        const have = seen.length;
        const check = (): void => {
          if (seen.length > have) {
            clearInterval(iv);
            resolve(seen[have]!);
          }
        };
        const iv = setInterval(check, 10);
        call.once('error', reject);
      });
    call.on('data', (v: { bundles: Record<string, Buffer> }) => seen.push(Object.keys(v.bundles).sort()));
    try {
      expect(await next()).toEqual([`spiffe://${TD}`]);
      adopt({ alice: ['b.org'], bob: ['c.org'], carol: [], dave: ['d.org'] });
      expect(await next()).toEqual([`spiffe://d.org`, `spiffe://${TD}`]);
      // Alice's set did not change with Dave's.
      const alice = await asCaller('alice', {});
      expect(alice.jwt).toEqual([`spiffe://b.org`, `spiffe://${TD}`]);
    } finally {
      call.cancel();
      stub.close();
      roles.delete(process.pid);
    }
  });
});
