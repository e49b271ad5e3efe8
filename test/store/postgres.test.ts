/**
 * PostgresStore against a real PostgreSQL server started for this file (test/support/postgres.ts):
 * the shared conformance suite (one fresh schema per test), then what only a shared database
 * has: several verifiers on one schema, concurrent migrations, connection failures.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { PostgresStore, POSTGRES_SCHEMA_VERSION, redactPostgresUrl } from '../../src/store/postgres.js';
import type { JoinTokenRecord, NewEntry } from '../../src/store/types.js';
import { startPostgres } from '../support/postgres.js';
import { runStoreConformance } from './conformance.js';

const server = await startPostgres();

const TD = 'spiffe://example.org';

function entry(over: Partial<NewEntry> = {}): NewEntry {
  return { spiffeId: `${TD}/w/${randomUUID()}`, parentId: `${TD}/agent/a`, selectors: ['unix:uid:0'], x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null, ...over };
}

function tok(): JoinTokenRecord {
  return { id: randomUUID(), secretHash: randomBytes(32).toString('hex'), expiresAt: '2030-01-01T01:00:00.000Z', usedAt: null, spiffeId: null, createdAt: '2030-01-01T00:00:00.000Z' };
}

function schemaName(): string {
  return `t_${randomBytes(6).toString('hex')}`;
}

async function sigilError(p: Promise<unknown>): Promise<SigilError> {
  const e = await p.then(
    () => undefined,
    (err: unknown) => err,
  );
  expect(e).toBeInstanceOf(SigilError);
  return e as SigilError;
}

if (!server) {
  describe.skip('PostgresStore (PostgreSQL not installed)', () => {
    it('skipped', () => undefined);
  });
} else {
  const url = server.url;
  let admin: pg.Client;
  beforeAll(async () => {
    admin = new pg.Client(url);
    await admin.connect();
  });
  afterAll(async () => {
    await admin?.end().catch(() => undefined);
    await server.stop();
  });
  const dropSchema = async (schema: string): Promise<void> => {
    await admin.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
  };

  runStoreConformance('postgres', async () => {
    const schema = schemaName();
    const store = await PostgresStore.open(url, { schema, poolMax: 8 });
    return {
      store,
      async cleanup() {
        await store.close();
        await dropSchema(schema);
      },
    };
  });

  describe('PostgresStore on a shared database', () => {
    it('creates its tables in the chosen schema at the current schema version', async () => {
      const schema = schemaName();
      const s = await PostgresStore.open(url, { schema });
      try {
        expect(s.kind).toBe('postgres');
        const tables = await admin.query<{ table_name: string }>('SELECT table_name FROM information_schema.tables WHERE table_schema = $1 ORDER BY table_name', [schema]);
        expect(tables.rows.map((r) => r.table_name)).toEqual(['agents', 'ca_journals', 'entries', 'federated_bundles', 'federations', 'join_tokens', 'meta', 'plugin_state', 'schema_version', 'sessions']);
        const v = await admin.query<{ version: number }>(`SELECT version FROM "${schema}".schema_version`);
        expect(v.rows).toEqual([{ version: POSTGRES_SCHEMA_VERSION }]);
        const pub = await admin.query(`SELECT 1 FROM information_schema.tables WHERE table_schema = 'public' AND table_name = 'entries'`);
        expect(pub.rowCount).toBe(0);
      } finally {
        await s.close();
        await dropSchema(schema);
      }
    });

    it('lets several verifiers open (and migrate) the same new schema at once', async () => {
      const schema = schemaName();
      const stores = await Promise.all(Array.from({ length: 6 }, () => PostgresStore.open(url, { schema, poolMax: 2 })));
      try {
        const v = await admin.query<{ version: number }>(`SELECT version FROM "${schema}".schema_version`);
        expect(v.rows).toEqual([{ version: POSTGRES_SCHEMA_VERSION }]);
        const rev = await admin.query(`SELECT * FROM "${schema}".meta`);
        expect(rev.rows).toEqual([{ key: 'entries_revision', value: '0' }]);
        // Re-opening an up-to-date schema migrates nothing and keeps the data.
        await stores[0]!.createEntry(entry({ id: 'kept' }));
        const again = await PostgresStore.open(url, { schema });
        expect((await again.getEntry('kept'))?.id).toBe('kept');
        await again.close();
      } finally {
        await Promise.all(stores.map((s) => s.close()));
        await dropSchema(schema);
      }
    });

    it('shares entries, revisions and single-use tokens between verifiers', async () => {
      const schema = schemaName();
      const a = await PostgresStore.open(url, { schema, poolMax: 6 });
      const b = await PostgresStore.open(url, { schema, poolMax: 6 });
      try {
        const e = await a.createEntry(entry());
        expect(await b.getEntry(e.id)).toEqual(e);
        expect(await b.entriesRevision()).toBe(1);

        // 40 concurrent entry writes split over both verifiers: revisions 2..41, each used once.
        const created = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).createEntry(entry())));
        expect(created.map((x) => x.revisionNumber).sort((x, y) => x - y)).toEqual(Array.from({ length: 40 }, (_, i) => i + 2));
        expect(await a.entriesRevision()).toBe(41);
        expect(await b.countEntries()).toBe(41);
        expect(await b.deleteEntry(e.id)).toBe(true);
        expect(await a.entriesRevision()).toBe(42);

        // One token, 20 attempts on each verifier at once: exactly one wins.
        const t = tok();
        await a.createJoinToken(t);
        const now = new Date('2030-01-01T00:00:30.000Z');
        const results = await Promise.all(Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).useJoinToken(t.secretHash, now)));
        expect(results.filter((r) => r !== undefined)).toHaveLength(1);

        await b.upsertAgent({ id: `${TD}/spire/agent/x`, attestors: ['tpm'], selectors: ['tpm:ek:1'], serial: '01', svidExpiresAt: '2030-01-01T01:00:00.000Z', attestedAt: '2030-01-01T00:00:00.000Z', banned: false, factorIds: [`${TD}/spire/agent/x`] });
        expect(await a.evictAgent(`${TD}/spire/agent/x`, true)).toBe(true);
        expect((await b.getAgent(`${TD}/spire/agent/x`))?.banned).toBe(true);
      } finally {
        await a.close();
        await b.close();
        await dropSchema(schema);
      }
    });

    it('keeps working after the server terminates its connections', async () => {
      const schema = schemaName();
      const s = await PostgresStore.open(url, { schema, poolMax: 3 });
      try {
        await Promise.all([s.ping(), s.ping(), s.ping()]);
        await admin.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'sigil-verifier' AND pid <> pg_backend_pid()`);
        // Idle connections that died are dropped by the pool; the first query may still meet one
        // that has not noticed yet, and must then fail as a SigilError, never crash the process.
        let ok = false;
        for (let i = 0; i < 5 && !ok; i++) {
          try {
            await s.ping();
            ok = true;
          } catch (e) {
            expect(e).toBeInstanceOf(SigilError);
            expect((e as SigilError).code, (e as Error).message).toBe('store.unavailable');
          }
        }
        expect(ok).toBe(true);
        expect(await s.countEntries()).toBe(0);
      } finally {
        await s.close();
        await dropSchema(schema);
      }
    });

    it('migrates a version 1 schema: existing agents get their own ID as their only factor ID', async () => {
      const schema = schemaName();
      const s = await PostgresStore.open(url, { schema });
      await s.close();
      // Back to what version 1 had: no factor_ids column; an agent written then.
      await admin.query(`ALTER TABLE "${schema}".agents DROP COLUMN factor_ids`);
      // … and nothing of version 3 (federation).
      await admin.query(`DROP TABLE "${schema}".federated_bundles, "${schema}".federations`);
      await admin.query(`ALTER TABLE "${schema}".entries DROP COLUMN federates_with`);
      await admin.query(`UPDATE "${schema}".schema_version SET version = 1`);
      const id = `${TD}/sigil/agent/tpm/old`;
      await admin.query(
        `INSERT INTO "${schema}".agents (id, attestors, selectors, serial, svid_expires_at, attested_at, banned)
         VALUES ($1, '["tpm","join_token"]', '[]', '0a', '2030-01-01T01:00:00.000Z', '2030-01-01T00:00:00.000Z', FALSE)`,
        [id],
      );
      const again = await PostgresStore.open(url, { schema });
      try {
        expect(POSTGRES_SCHEMA_VERSION).toBe(4);
        const v = await admin.query<{ version: number }>(`SELECT version FROM "${schema}".schema_version`);
        expect(v.rows).toEqual([{ version: 4 }]);
        expect((await again.getAgent(id))?.factorIds).toEqual([id]);
        const raw = await admin.query<{ factor_ids: unknown }>(`SELECT factor_ids FROM "${schema}".agents WHERE id = $1`, [id]);
        expect(raw.rows[0]?.factor_ids).toEqual([id]);
        expect(await again.renewAgentSvid(id, '0a', '0b', '2030-01-01T02:00:00.000Z')).toBe(true);
      } finally {
        await again.close();
        await dropSchema(schema);
      }
    });

    it('refuses a schema newer than this build', async () => {
      const schema = schemaName();
      const s = await PostgresStore.open(url, { schema });
      await s.close();
      await admin.query(`UPDATE "${schema}".schema_version SET version = $1`, [POSTGRES_SCHEMA_VERSION + 5]);
      const e = await sigilError(PostgresStore.open(url, { schema }));
      expect(e.code).toBe('store.schema_too_new');
      await dropSchema(schema);
    });

    it('rejects bad configuration with clear codes', async () => {
      expect((await sigilError(PostgresStore.open('mysql://x@y/z'))).code).toBe('store.bad_url');
      expect((await sigilError(PostgresStore.open(url, { schema: 'Robert"; DROP TABLE x; --' }))).code).toBe('store.bad_schema');
      expect((await sigilError(PostgresStore.open(url, { schema: 'ok', poolMax: 0 }))).code).toBe('store.bad_option');
      expect(redactPostgresUrl('postgres://user:s3cret@db.example:5432/sigil')).toBe('postgres://user:***@db.example:5432/sigil');
    });

    it('reports an unreachable server as store.unavailable (503) without leaking the password', async () => {
      const bad = `postgres://sigil:hunter2@/postgres?host=${encodeURIComponent(server.dir)}&port=${server.port + 1}`;
      const e = await sigilError(PostgresStore.open(bad, { connectTimeoutMs: 2000 }));
      expect(e.code).toBe('store.unavailable');
      expect(e.status).toBe(503);
      expect(e.message).not.toContain('hunter2');
      const missingDb = await sigilError(PostgresStore.open(url.replace('/postgres?', '/no_such_db?'), { connectTimeoutMs: 2000 }));
      expect(missingDb.code).toBe('store.unavailable');
    });

    it('maps bad values and use after close to SigilErrors', async () => {
      const schema = schemaName();
      const s = await PostgresStore.open(url, { schema });
      try {
        const bad = await sigilError(
          s.upsertAgent({ id: 'x', attestors: [], selectors: [], serial: '', svidExpiresAt: 'not a time', attestedAt: '2030-01-01T00:00:00.000Z', banned: false, factorIds: ['x'] }),
        );
        expect(bad.code).toBe('store.invalid_value');
        expect(bad.status).toBe(400);
        const t = tok();
        await s.createJoinToken(t);
        expect((await sigilError(s.createJoinToken(t))).code).toBe('store.duplicate');
      } finally {
        await s.close();
        await dropSchema(schema);
      }
      const closed = await sigilError(s.ping());
      expect(closed.code).toBe('store.closed');
      expect(closed.status).toBe(503);
      await s.close();
    });

    it('reports a stopped server as store.unavailable', async () => {
      const schema = schemaName();
      const s = await PostgresStore.open(url, { schema, connectTimeoutMs: 2000 });
      await admin.end();
      await server.stop();
      const e = await sigilError(s.countEntries());
      expect(e.code, e.message).toBe('store.unavailable');
      expect(e.status).toBe(503);
      await s.close();
    });
  });
}
