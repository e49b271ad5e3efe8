/**
 * Test helpers for the PostgreSQL change feed's failure tests: stop and start again the throw-away
 * server of test/support/postgres.ts (same directory, port and options, so every URL stays valid),
 * and a TCP proxy in front of its Unix socket that counts connections and can cut them all and turn
 * new ones away (the server out of reach), so a test sees how often a store tries to reconnect and can
 * look at its sockets' TCP options.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import type { PostgresHandle } from '../support/postgres.js';

const BIN_DIRS = ['/usr/lib/postgresql/17/bin', '/usr/lib/postgresql/16/bin', '/usr/lib/postgresql/15/bin'];

function pgCtl(args: string[]): Promise<void> {
  const bin = BIN_DIRS.map((d) => join(d, 'pg_ctl')).find((p) => existsSync(p));
  if (bin === undefined) return Promise.reject(new Error('pg_ctl not found'));
  const [file, argv] = userInfo().uid === 0 ? ['runuser', ['-u', 'postgres', '--', bin, ...args]] : [bin, args];
  // Asynchronous: the verifier under test runs in this process and must keep running meanwhile.
  return new Promise((resolve, reject) => {
    execFile(file, argv, { timeout: 60_000 }, (err, stdout, stderr) => (err ? reject(new Error(`pg_ctl ${args.at(-1)} failed: ${err.message}\n${stdout}${stderr}`)) : resolve()));
  });
}

/** Stop the server (fast shutdown: every connection is ended) and wait until it is down. */
export function stopServer(h: PostgresHandle): Promise<void> {
  return pgCtl(['-D', join(h.dir, 'data'), '-m', 'fast', '-w', '-t', '30', 'stop']);
}

/** Start the stopped server again with the options test/support/postgres.ts gave it. */
export function startServer(h: PostgresHandle): Promise<void> {
  const opts = `-k ${h.dir} -p ${h.port} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=100`;
  return pgCtl(['-D', join(h.dir, 'data'), '-l', join(h.dir, 'server.log'), '-o', opts, '-w', '-t', '30', 'start']);
}

/** A TCP proxy on 127.0.0.1 to the server's Unix socket. */
export interface PgProxy {
  /** `postgres://sigil@127.0.0.1:<port>/postgres` */
  url: string;
  port: number;
  /** When each client connection was accepted (Date.now()), turned away ones included. */
  accepted: number[];
  /** End every proxied connection and turn new ones away (accepted, then closed at once) until restore(). */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

export async function startProxy(h: PostgresHandle): Promise<PgProxy> {
  const target = join(h.dir, `.s.PGSQL.${h.port}`);
  const open = new Set<Socket>();
  const accepted: number[] = [];
  let down = false;
  const server: Server = createServer((client) => {
    accepted.push(Date.now());
    if (down) {
      client.destroy();
      return;
    }
    const upstream = createConnection(target);
    open.add(client);
    open.add(upstream);
    const end = (): void => {
      client.destroy();
      upstream.destroy();
      open.delete(client);
      open.delete(upstream);
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return {
    url: `postgres://sigil@127.0.0.1:${port}/postgres`,
    port,
    accepted,
    cut() {
      down = true;
      for (const s of [...open]) s.destroy();
      open.clear();
    },
    restore() {
      down = false;
    },
    async close() {
      for (const s of [...open]) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * The kernel's timer on the IPv4 TCP socket from local port `localPort` to `remotePort` (both on
 * 127.0.0.1), from /proc/net/tcp: `timer` 2 is the keepalive timer (0: none armed), `seconds` the
 * time until it fires. Undefined when there is no such socket.
 */
export async function tcpTimer(localPort: number, remotePort: number): Promise<{ timer: number; seconds: number } | undefined> {
  const { readFile } = await import('node:fs/promises');
  const hex = (p: number): string => p.toString(16).toUpperCase().padStart(4, '0');
  for (const line of (await readFile('/proc/net/tcp', 'utf8')).split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 6) continue;
    if (f[1] !== `0100007F:${hex(localPort)}` || f[2] !== `0100007F:${hex(remotePort)}`) continue;
    const [timer, when] = (f[5] as string).split(':');
    // `when` is in clock ticks (USER_HZ, 100 per second on Linux).
    return { timer: parseInt(timer as string, 16), seconds: parseInt(when as string, 16) / 100 };
  }
  return undefined;
}
