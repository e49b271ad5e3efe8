/**
 * A fetch already running when the operator re-anchors (or deletes and re-creates) a relationship
 * never lands over the operator's bundle: every write of a relationship gives it a new generation,
 * a fetch stores its bundle only while the relationship still has the generation it started with
 * (checked in the statement that writes), and a fetch running on the same verifier is abandoned and
 * made again with the new anchors.
 *
 * The foreign endpoint is real HTTPS (https_spiffe): "compromised", it holds the first request
 * (authenticated with the old anchors) and later answers it with an attacker's CA at a huge
 * sequence; "fixed", it presents an SVID of the new CA and serves the legitimate successor.
 * SQLite, and PostgreSQL with a second store (another verifier) holding the stale fetch.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import pg from 'pg';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fetchBundleDocument } from '../../src/federation/fetch.js';
import { FederationService } from '../../src/federation/service.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';
import { PostgresStore } from '../../src/store/postgres.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { DataStore } from '../../src/store/types.js';
import { waitFor } from '../agent/harness.js';
import { startPostgres } from '../support/postgres.js';

const TD = 'b.org';
const ENDPOINT_ID = `spiffe://${TD}/sigil/verifier`;
const HOUR = 3600_000;
const EVIL_SEQ = 2 ** 40;

function trustDomainCa(name: string) {
  const k = generateKey('ec-p256');
  const der = issueCaCertificate({ trustDomain: TD, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + HOUR) });
  const leafKey = generateKey('ec-p256');
  const leaf = issueX509Svid({ caCertDer: der, caKey: k.privateKey, subjectSpki: spkiDer(leafKey.publicKey), spiffeId: ENDPOINT_ID, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + HOUR) });
  return {
    name,
    der,
    tls: { cert: certsToPem([leaf]), key: leafKey.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string },
    jwks: (seq: number) => JSON.stringify(new SpiffeBundle(TD, { x509Authorities: [der], sequence: seq, refreshHintSeconds: 3600 }).toJwks()),
  };
}

const CA_OLD = trustDomainCa('CA_OLD');
const CA_EVIL = trustDomainCa('CA_EVIL');
const CA_NEW = trustDomainCa('CA_NEW');
const nameOf = (der: Buffer) => [CA_OLD, CA_EVIL, CA_NEW].find((c) => c.der.equals(der))?.name ?? 'unknown';

/**
 * The foreign bundle endpoint. Compromised (CA_OLD's SVID): it holds every request. Fixed
 * (CA_NEW's SVID): it answers CA_NEW's bundle at sequence 6. `releaseHeld` answers the held
 * requests with the attacker's bundle.
 */
class ForeignEndpoint {
  private server!: Server;
  port = 0;
  private held: ServerResponse[] = [];
  private fixed = false;
  async start(): Promise<void> {
    this.server = createServer(CA_OLD.tls, (_req, res) => {
      if (this.fixed) res.writeHead(200, { 'content-type': 'application/json' }).end(CA_NEW.jwks(6));
      else this.held.push(res);
    });
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', () => r()));
    this.port = (this.server.address() as AddressInfo).port;
  }
  get holding(): number {
    return this.held.length;
  }
  compromise(): void {
    this.fixed = false;
    this.server.setSecureContext(CA_OLD.tls);
  }
  fix(): void {
    this.fixed = true;
    this.server.setSecureContext(CA_NEW.tls);
  }
  releaseHeld(): void {
    for (const res of this.held.splice(0)) {
      if (!res.destroyed) res.writeHead(200, { 'content-type': 'application/json' }).end(CA_EVIL.jwks(EVIL_SEQ));
    }
  }
  close(): Promise<void> {
    this.releaseHeld();
    return new Promise((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
  }
}

/** A verifier's federation service on `store`, fetching over real HTTPS and noting the anchors of each fetch. */
function verifierOn(store: DataStore) {
  const anchors: string[][] = [];
  const f = new FederationService({
    store,
    trustDomain: 'a.org',
    logger: pino({ level: 'silent' }),
    registry: new Registry(),
    now: () => new Date(),
    refresh: { minSeconds: 1, maxSeconds: 3600, defaultSeconds: 3600, maxBackoffSeconds: 1, timeoutMs: 20_000 },
    fetch: (rel, o) => {
      anchors.push((o.trust?.x509Authorities ?? []).map(nameOf));
      return fetchBundleDocument(rel, o);
    },
  });
  return { f, anchors };
}

async function storedAuthority(store: DataStore): Promise<{ ca: string; sequence: number } | undefined> {
  const b = await store.getFederatedBundle(TD);
  if (!b) return undefined;
  return { ca: nameOf(SpiffeBundle.fromJwks(TD, b.bundle).x509Authorities[0]!), sequence: b.sequence };
}

const settle = () => new Promise((r) => setTimeout(r, 300));

let ep: ForeignEndpoint;
const cleanups: (() => Promise<void> | void)[] = [];
beforeAll(async () => {
  ep = new ForeignEndpoint();
  await ep.start();
});
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
  ep.releaseHeld();
  ep.compromise();
});
afterAll(async () => ep?.close());

const relInput = () => ({ trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${ep.port}/`, profile: 'https_spiffe' as const, endpointSpiffeId: ENDPOINT_ID });

/**
 * The race on one verifier (operator and refresher on the same service) or two (`operator` is
 * another verifier's service on the same datastore): a fetch with the old anchors is held in flight,
 * the operator acts, the endpoint is fixed, and the held answer (attacker's CA, huge sequence) is
 * released.
 */
async function raceReanchor(
  refresher: ReturnType<typeof verifierOn>,
  operator: FederationService,
  store: DataStore,
  act: (op: FederationService) => Promise<unknown>,
): Promise<void> {
  await refresher.f.start();
  cleanups.push(() => refresher.f.stop());
  await waitFor(async () => (ep.holding > 0 ? true : undefined), 5000, 'a fetch held by the compromised endpoint', 20);
  expect(refresher.anchors[0]).toEqual(['CA_OLD']);
  await act(operator);
  expect(await storedAuthority(store)).toEqual({ ca: 'CA_NEW', sequence: 5 });
  ep.fix();
  ep.releaseHeld();
  await settle();
  // The operator's bundle (or its legitimate successor from the fixed endpoint) stays.
  expect((await storedAuthority(store))?.ca).toBe('CA_NEW');
  // The next fetch is authenticated with the new anchors and accepted (no sequence_downgrade).
  const v = await refresher.f.refresh(TD);
  expect(v.refresh.lastError).toBeUndefined();
  expect(refresher.anchors.at(-1)).toEqual(['CA_NEW']);
  expect(await storedAuthority(store)).toEqual({ ca: 'CA_NEW', sequence: 6 });
  expect(refresher.anchors.filter((a) => a.includes('CA_EVIL'))).toEqual([]);
}

describe('a fetch in flight during re-anchoring (SQLite, one verifier)', () => {
  async function setup() {
    const store = new SqliteStore(':memory:');
    const v = verifierOn(store);
    cleanups.push(() => store.close());
    await v.f.create({ ...relInput(), initialBundle: CA_OLD.jwks(1) });
    return { store, v };
  }

  it('update --trust-bundle: the held answer with a higher sequence does not replace the operator bundle; the next fetch uses the new anchors', async () => {
    const { store, v } = await setup();
    await raceReanchor(v, v.f, store, (op) => op.update(TD, { initialBundle: CA_NEW.jwks(5) }));
  });

  it('delete and create again with the new bundle: the held answer is not stored either', async () => {
    const { store, v } = await setup();
    await raceReanchor(v, v.f, store, async (op) => {
      await op.delete(TD);
      await op.create({ ...relInput(), initialBundle: CA_NEW.jwks(5) });
    });
  });
});

describe('a fetch in flight during re-anchoring (PostgreSQL, another verifier holds the stale fetch)', () => {
  let server: Awaited<ReturnType<typeof startPostgres>>;
  let admin: pg.Client | undefined;
  let n = 0;
  beforeAll(async () => {
    server = await startPostgres();
    if (!server) return;
    admin = new pg.Client(server.url);
    await admin.connect();
  }, 90_000);
  afterAll(async () => {
    await admin?.end().catch(() => undefined);
    await server?.stop();
  });

  /** Two verifiers' stores on one schema: `op` (where the operator acts; not refreshing) and `other` (refreshing). */
  async function twoVerifiers() {
    const schema = `fed_reanchor_${process.pid}_${n++}`;
    const opStore = await PostgresStore.open(server!.url, { schema });
    const otherStore = await PostgresStore.open(server!.url, { schema });
    cleanups.push(async () => {
      await opStore.close();
      await otherStore.close();
      await admin!.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
    });
    const op = verifierOn(opStore);
    const other = verifierOn(otherStore);
    await op.f.create({ ...relInput(), initialBundle: CA_OLD.jwks(1) });
    return { schema, opStore, otherStore, op, other };
  }

  it('update --trust-bundle through one verifier: the other verifier\'s held answer is refused by the datastore, and it fetches again with the new anchors', async ({ skip }) => {
    if (!server) return skip();
    const { opStore, other, op } = await twoVerifiers();
    await raceReanchor(other, op.f, opStore, (o) => o.update(TD, { initialBundle: CA_NEW.jwks(5) }));
  });

  it('delete and create again through one verifier: the other verifier\'s held answer is not stored', async ({ skip }) => {
    if (!server) return skip();
    const { opStore, other, op } = await twoVerifiers();
    await raceReanchor(other, op.f, opStore, async (o) => {
      await o.delete(TD);
      await o.create({ ...relInput(), initialBundle: CA_NEW.jwks(5) });
    });
  });

  it('a save racing an uncommitted change of the relationship waits for it and is refused once it commits', async ({ skip }) => {
    if (!server) return skip();
    const { schema, otherStore } = await twoVerifiers();
    const gen = (await otherStore.getFederation(TD))!.generation!;
    const tx = new pg.Client(server!.url);
    await tx.connect();
    try {
      await tx.query('BEGIN');
      await tx.query(`UPDATE "${schema}".federations SET generation = 'changed-by-operator' WHERE trust_domain = $1`, [TD]);
      let settled = false;
      const save = otherStore.saveFederatedBundle({ trustDomain: TD, bundle: CA_EVIL.jwks(EVIL_SEQ), sequence: EVIL_SEQ, updatedAt: new Date().toISOString() }, gen).finally(() => {
        settled = true;
      });
      await settle();
      expect(settled).toBe(false); // waits for the relationship row
      await tx.query('COMMIT');
      expect(await save).toBe(false);
      expect((await storedAuthority(otherStore))?.ca).toBe('CA_OLD');
    } finally {
      await tx.end();
    }
  });
});

describe('the relationship generation in the datastore', () => {
  async function checkGenerations(store: DataStore): Promise<void> {
    const at = new Date().toISOString();
    const rel = { trustDomain: TD, bundleEndpointUrl: 'https://b.example/', profile: 'https_web' as const, createdAt: at, updatedAt: at };
    const rec = (seq: number) => ({ trustDomain: TD, bundle: CA_OLD.jwks(seq), sequence: seq, updatedAt: at });
    expect(await store.putFederation(rel, true)).toBe(true);
    const g1 = (await store.getFederation(TD))!.generation!;
    expect(g1).toMatch(/^[0-9a-f-]{32,}$/);
    expect((await store.listFederations())[0]!.generation).toBe(g1);
    expect(await store.saveFederatedBundle(rec(3), g1)).toBe(true);
    // An update gives a new generation; a save carrying the old one is refused whatever its sequence.
    expect(await store.putFederation({ ...rel, bundleEndpointUrl: 'https://b2.example/' }, false)).toBe(true);
    const g2 = (await store.getFederation(TD))!.generation!;
    expect(g2).not.toBe(g1);
    expect(await store.saveFederatedBundle(rec(EVIL_SEQ), g1)).toBe(false);
    expect(await store.saveFederatedBundle(rec(4), g2)).toBe(true);
    // Re-anchoring: a new generation and the operator's bundle whatever its sequence, together.
    expect(await store.putFederation(rel, false, rec(2))).toBe(true);
    const g3 = (await store.getFederation(TD))!.generation!;
    expect([g1, g2]).not.toContain(g3);
    expect((await store.getFederatedBundle(TD))!.sequence).toBe(2);
    expect(await store.saveFederatedBundle(rec(EVIL_SEQ), g2)).toBe(false);
    // Deleted and created again: another generation still.
    expect(await store.deleteFederation(TD)).toBe(true);
    expect(await store.putFederation(rel, true, rec(1))).toBe(true);
    const g4 = (await store.getFederation(TD))!.generation!;
    expect([g1, g2, g3]).not.toContain(g4);
    expect(await store.saveFederatedBundle(rec(EVIL_SEQ), g3)).toBe(false);
    expect((await store.getFederatedBundle(TD))!.sequence).toBe(1);
    // The generation is a column of its own, not part of the stored body.
    expect(Object.keys((await store.getFederation(TD))!).sort()).toEqual(['bundleEndpointUrl', 'createdAt', 'generation', 'profile', 'trustDomain', 'updatedAt']);
  }

  it('SQLite: every write of a relationship gives it a new generation; a save carrying an older one is refused', async () => {
    const store = new SqliteStore(':memory:');
    try {
      await checkGenerations(store);
    } finally {
      await store.close();
    }
  });

  it('SQLite: a schema version 3 database is upgraded; its relationships get distinct generations and keep their bundles', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-fedgen-'));
    try {
      const path = join(dir, 'sigil.db');
      const at = new Date().toISOString();
      const s1 = new SqliteStore(path);
      for (const td of ['b.org', 'c.org']) await s1.putFederation({ trustDomain: td, bundleEndpointUrl: `https://${td}/`, profile: 'https_web', createdAt: at, updatedAt: at }, true, { trustDomain: td, bundle: '{"keys":[]}', sequence: 7, updatedAt: at });
      await s1.close();
      const db = new Database(path);
      db.exec('ALTER TABLE federations DROP COLUMN generation');
      db.pragma('user_version = 3');
      db.close();
      const s2 = new SqliteStore(path);
      try {
        const gens = (await s2.listFederations()).map((r) => r.generation);
        expect(gens).toHaveLength(2);
        for (const g of gens) expect(g).toMatch(/^[0-9a-f]{32}$/);
        expect(new Set(gens).size).toBe(2);
        expect((await s2.getFederatedBundle('b.org'))?.sequence).toBe(7);
        expect(await s2.saveFederatedBundle({ trustDomain: 'b.org', bundle: '{"keys":[]}', sequence: 8, updatedAt: at }, gens[0])).toBe(true);
      } finally {
        await s2.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('PostgreSQL', () => {
    let server: Awaited<ReturnType<typeof startPostgres>>;
    beforeAll(async () => {
      server = await startPostgres();
    }, 90_000);
    afterAll(async () => server?.stop());

    it('every write of a relationship gives it a new generation; a save carrying an older one is refused', async ({ skip }) => {
      if (!server) return skip();
      const store = await PostgresStore.open(server.url, { schema: 'fed_generation' });
      try {
        await checkGenerations(store);
      } finally {
        await store.close();
      }
    });

    it('a schema version 3 database is upgraded; its relationships get distinct generations and keep their bundles', async ({ skip }) => {
      if (!server) return skip();
      const schema = 'fed_generation_upgrade';
      const at = new Date().toISOString();
      const s1 = await PostgresStore.open(server.url, { schema });
      for (const td of ['b.org', 'c.org']) await s1.putFederation({ trustDomain: td, bundleEndpointUrl: `https://${td}/`, profile: 'https_web', createdAt: at, updatedAt: at }, true, { trustDomain: td, bundle: '{"keys":[]}', sequence: 7, updatedAt: at });
      await s1.close();
      const admin = new pg.Client(server.url);
      await admin.connect();
      try {
        await admin.query(`ALTER TABLE "${schema}".federations DROP COLUMN generation`);
        await admin.query(`UPDATE "${schema}".schema_version SET version = 3`);
        const s2 = await PostgresStore.open(server.url, { schema });
        try {
          const gens = (await s2.listFederations()).map((r) => r.generation);
          expect(gens).toHaveLength(2);
          for (const g of gens) expect(g).toMatch(/^[0-9a-f]{32}$/);
          expect(new Set(gens).size).toBe(2);
          expect((await admin.query(`SELECT version FROM "${schema}".schema_version`)).rows).toEqual([{ version: 4 }]);
          expect((await s2.getFederatedBundle('b.org'))?.sequence).toBe(7);
          expect(await s2.saveFederatedBundle({ trustDomain: 'b.org', bundle: '{"keys":[]}', sequence: 8, updatedAt: at }, gens[0])).toBe(true);
        } finally {
          await s2.close();
        }
      } finally {
        await admin.end();
      }
    });
  });
});
