/**
 * Test helper: two real verifiers on one schema of a throw-away PostgreSQL server — A takes the
 * admin calls, B the agents (a VerifierPair) — and a SQL client on that server.
 *
 *   const pair = await startPostgresPair('my_schema');  // null when PostgreSQL is absent (throws under CI=true)
 *   ... pair.p, pair.sql, pair.pa, pair.pb ...
 *   await pair.stop();                                   // both verifiers, the client, the server, the folders
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import type { VerifierPair } from './long-poll-agents.js';
import { startPostgres, type PostgresHandle } from './postgres.js';
import { startTestVerifier, type TestVerifier } from './verifier.js';

export interface PostgresPair {
  p: VerifierPair;
  pa: TestVerifier;
  pb: TestVerifier;
  sql: pg.Client;
  pgh: PostgresHandle;
  stop(): Promise<void>;
}

export async function startPostgresPair(schema: string): Promise<PostgresPair | null> {
  const pgh = await startPostgres();
  if (!pgh) return null;
  const sql = new pg.Client(pgh.url);
  await sql.connect();
  const ds = { kind: 'postgres', url: pgh.url, schema };
  const dirs = [mkdtempSync(join(tmpdir(), 'sigil-pair-')), mkdtempSync(join(tmpdir(), 'sigil-pair-'))];
  const pa = await startTestVerifier({ datastore: ds }, { dir: dirs[0] as string });
  const pb = await startTestVerifier({ datastore: ds }, { dir: dirs[1] as string });
  await pa.v.tick();
  await pb.v.tick();
  // B's bundle holds both verifiers' CA keys (the journals are shared) once both have ticked.
  const p = { writer: pa, server: pb, caPem: SpiffeBundle.fromJwks(pb.trustDomain, pb.v.core.ca.bundle().toJwks()).toPem() };
  return {
    p,
    pa,
    pb,
    sql,
    pgh,
    async stop() {
      await pa.stop();
      await pb.stop();
      for (const d of dirs) rmSync(d, { recursive: true, force: true });
      await sql.end();
      await pgh.stop();
    },
  };
}
