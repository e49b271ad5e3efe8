/**
 * A verifier on PostgreSQL keeps no join token in any table (issue 11 item 8): while a join_token
 * session is open and after it finished, no row of the schema contains the token; the session row
 * holds its digest.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startVerifier, type RunningVerifier } from '../../src/verifier/server.js';
import { startPostgres } from '../support/postgres.js';
import { httpsJson } from '../support/verifier.js';

const server = await startPostgres();

if (!server) {
  describe.skip('join tokens at rest in PostgreSQL (PostgreSQL not installed)', () => {
    it('skipped', () => undefined);
  });
} else {
  const schema = `t_${randomBytes(6).toString('hex')}`;
  const dir = mkdtempSync(join(tmpdir(), 'sigil-pgsec-'));
  let v: RunningVerifier;
  let db: pg.Client;

  beforeAll(async () => {
    const cfg = verifierConfigFrom(
      {
        trustDomain: 'example.org',
        listen: { address: '127.0.0.1', port: 0 },
        adminSocket: join(dir, 'admin.sock'),
        dataDir: join(dir, 'data'),
        datastore: { kind: 'postgres', url: server.url, schema },
        nodeAttestors: { join_token: {} },
        logLevel: 'silent',
      },
      dir,
    );
    v = await startVerifier(cfg, { logger: pino({ level: 'silent' }), tickMs: 0 });
    db = new pg.Client(server.url);
    await db.connect();
  });
  afterAll(async () => {
    await v?.close();
    await db?.end().catch(() => undefined);
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  /** Every row of every table of the schema, as text, that contains `needle`. */
  async function rowsHolding(needle: string): Promise<string[]> {
    const tables = await db.query<{ table_name: string }>('SELECT table_name FROM information_schema.tables WHERE table_schema = $1', [schema]);
    expect(tables.rows.length).toBeGreaterThan(3);
    const hits: string[] = [];
    for (const { table_name } of tables.rows) {
      const r = await db.query<{ row: string }>(`SELECT t::text AS row FROM "${schema}"."${table_name}" t`);
      for (const { row } of r.rows) if (row.includes(needle)) hits.push(`${table_name}: ${row}`);
    }
    return hits;
  }

  describe('join tokens at rest in PostgreSQL', () => {
    it('no table holds the token during or after attestation; the session row holds its digest', async () => {
      const caPem = await adminCall<string>(v.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
      const { token } = await adminCall<{ token: string }>(v.adminSocket, 'POST', '/v1/admin/tokens', {});
      const csr = createCsr(generateKey('ec-p256')).toString('base64');
      const r1 = await httpsJson(v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token } }, csr } });
      expect(r1.status).toBe(200);
      const session = (r1.body as { session: string }).session;
      expect(await rowsHolding(token)).toEqual([]);
      const digest = createHash('sha256').update(token, 'utf8').digest('hex');
      const sessionRows = await rowsHolding(session);
      expect(sessionRows.length).toBe(1);
      expect(sessionRows[0]).toContain(digest);
      const r2 = await httpsJson(v.port, 'POST', `/v1/attest/${session}`, { caPem, body: { responses: { join_token: {} } } });
      expect(r2.status).toBe(200);
      expect(await rowsHolding(token)).toEqual([]);
    });
  });
}
