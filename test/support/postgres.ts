/**
 * Test helper: a throw-away PostgreSQL server (Debian's postgresql-15 binaries), Unix socket only.
 *
 *   const pg = await startPostgres();   // null (with a printed reason) when PostgreSQL is absent
 *   if (!pg) return;                     // ... and under CI=true it throws instead
 *   ... new pg.Client(pg.url) / PostgresStore.open(pg.url, { schema }) ...
 *   await pg.stop();                     // stops the server and deletes its directory
 *
 * Tests run as root and postgres refuses to run as root, so the cluster directory belongs to the
 * `postgres` user and initdb / pg_ctl run through `runuser -u postgres`. The server listens on no
 * TCP address (listen_addresses=''); its socket lives in the temp directory (mode 0711 so root's
 * client can reach it). Auth is `trust` for the superuser `sigil`. fsync is off: these servers
 * hold test data only and are deleted afterwards.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';

export interface PostgresHandle {
  /** `postgres://sigil@/postgres?host=<dir>&port=<port>` */
  url: string;
  /** Directory holding the socket and the cluster (`<dir>/data`). */
  dir: string;
  port: number;
  /** Stop the server (fast shutdown) and delete its directory. Safe to call twice. */
  stop(): Promise<void>;
}

const BIN_DIRS = ['/usr/lib/postgresql/17/bin', '/usr/lib/postgresql/16/bin', '/usr/lib/postgresql/15/bin'];

function findBinDir(): string | null {
  for (const d of BIN_DIRS) if (existsSync(join(d, 'initdb')) && existsSync(join(d, 'pg_ctl'))) return d;
  return null;
}

function postgresUid(): { uid: number; gid: number } | null {
  const r = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (r.status !== 0 || g.status !== 0) return null;
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** Why startPostgres() would return null, or null when a server can be started here. */
export function postgresUnavailableReason(): string | null {
  if (!findBinDir()) return `PostgreSQL server binaries not found (looked in ${BIN_DIRS.join(', ')}); apt-get install postgresql`;
  if (userInfo().uid === 0) {
    if (!postgresUid()) return 'running as root but there is no "postgres" user to run the server as';
    if (spawnSync('sh', ['-c', 'command -v runuser'], { encoding: 'utf8' }).status !== 0) return 'running as root but runuser is missing';
  }
  return null;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function run(asPostgres: boolean, cmd: string, args: string[]): { ok: boolean; out: string } {
  const [file, argv] = asPostgres ? ['runuser', ['-u', 'postgres', '--', cmd, ...args]] : [cmd, args];
  const r = spawnSync(file as string, argv as string[], { encoding: 'utf8', timeout: 60_000 });
  return { ok: r.status === 0, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}`.trim() };
}

export async function startPostgres(): Promise<PostgresHandle | null> {
  const reason = postgresUnavailableReason();
  if (reason) {
    if (process.env.CI === 'true') throw new Error(`PostgreSQL tests cannot run under CI=true: ${reason}`);
    console.warn(`[postgres] skipping PostgreSQL tests: ${reason}`);
    return null;
  }
  const bin = findBinDir() as string;
  const asPostgres = userInfo().uid === 0;
  const dir = mkdtempSync(join(tmpdir(), 'sigil-pg-'));
  const data = join(dir, 'data');
  let started = false;
  const cleanup = (): void => {
    if (started) run(asPostgres, join(bin, 'pg_ctl'), ['-D', data, '-m', 'fast', '-w', '-t', '30', 'stop']);
    started = false;
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    chmodSync(dir, 0o711);
    if (asPostgres) {
      const ids = postgresUid() as { uid: number; gid: number };
      chownSync(dir, ids.uid, ids.gid);
    }
    const init = run(asPostgres, join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'sigil', '-E', 'UTF8', '--no-sync']);
    if (!init.ok) throw new Error(`initdb failed: ${init.out}`);
    const port = await freePort();
    const log = join(dir, 'server.log');
    const opts = `-k ${dir} -p ${port} -c listen_addresses='' -c fsync=off -c full_page_writes=off -c max_connections=100`;
    const start = run(asPostgres, join(bin, 'pg_ctl'), ['-D', data, '-l', log, '-o', opts, '-w', '-t', '30', 'start']);
    if (!start.ok) {
      const serverLog = existsSync(log) ? readFileSync(log, 'utf8').slice(-2000) : '';
      throw new Error(`pg_ctl start failed: ${start.out}\n${serverLog}`);
    }
    started = true;
    return {
      url: `postgres://sigil@/postgres?host=${encodeURIComponent(dir)}&port=${port}`,
      dir,
      port,
      async stop() {
        cleanup();
      },
    };
  } catch (e) {
    cleanup();
    throw e;
  }
}
