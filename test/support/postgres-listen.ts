/** Reach a PostgresStore's LISTEN connection, so that a test can stand in for a network that loses it. */
import type { Duplex } from 'node:stream';
import type pg from 'pg';
import type { PostgresStore } from '../../src/store/postgres.js';

/** The socket of the store's LISTEN connection (a private field). */
export function listenSocket(s: PostgresStore): Duplex {
  const c = (s as unknown as { listenClient: pg.Client | undefined }).listenClient;
  if (!c) throw new Error('no LISTEN connection');
  return c.connection.stream;
}
