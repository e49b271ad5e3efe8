/**
 * The memory floor of the fleet's connections: what a bare `node:https` server, with no application
 * state at all, holds for N idle kept-alive TLS connections that have each carried one request. The
 * verifier holds one such connection per agent (its long-poll), so at 10,000 agents this is the
 * least RSS any Node.js verifier can have, before its registration entries and its held requests
 * (issue 15's goal: verifier RSS < 500 MB at 10,000 agents).
 *
 *   npx tsx bench/tls-floor.ts [--connections 10000] [--mode mutual|server|both] [--malloc-mmap-threshold N]
 *
 * Modes: `server` — server certificate only; `mutual` — the server asks for a client certificate as
 * the verifier does (`requestCert`, checked by the application, TLS ≥ 1.2, P-256 SVIDs from one CA,
 * each connection's certificate read once with getPeerX509Certificate). Each mode runs in a fresh
 * server process (the same Node.js, V8's defaults, glibc's malloc defaults unless
 * `--malloc-mmap-threshold` sets glibc's MALLOC_MMAP_THRESHOLD_ for it, as the verifier's
 * `mallocMmapThreshold` does with mallopt); the clients run in this process. RSS is read from /proc after three full collections in the server
 * (bench/support/tls-floor-server.mjs).
 */
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { issueCaCertificate, issueX509Svid } from '../src/spiffe/x509svid.js';
import { spkiDer } from '../src/spiffe/keys.js';

interface Memory {
  rss: number;
  heapUsed: number;
  heapTotal: number;
}

/** The server, plain JavaScript in a process of its own (no TypeScript loader in its memory). */
const SERVER = fileURLToPath(new URL('./support/tls-floor-server.mjs', import.meta.url));

const TD = 'example.org';
const pem = (der: Buffer): string => `-----BEGIN CERTIFICATE-----\n${der.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END CERTIFICATE-----\n`;
const keyPem = (k: KeyObject): string => k.export({ type: 'pkcs8', format: 'pem' }) as string;

function ask<T>(child: ChildProcess, what: string | undefined, key: string): Promise<T> {
  return new Promise((resolve, reject) => {
    const onMessage = (m: Record<string, unknown>): void => {
      if (key in m) {
        child.off('message', onMessage);
        child.off('exit', onExit);
        resolve(m as T);
      }
    };
    const onExit = (code: number | null): void => reject(new Error(`the server process ended (code ${code}) before it answered`));
    child.on('message', onMessage);
    child.once('exit', onExit);
    if (what !== undefined) child.send(what);
  });
}

/** One client connection: the handshake, one request, its 204; then the socket is kept, idle. */
function connect(port: number, opts: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ ...opts, host: '127.0.0.1', port, servername: 'localhost' });
    let got = '';
    s.setEncoding('latin1');
    s.once('error', reject);
    s.once('secureConnect', () => s.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n'));
    s.on('data', (d: string) => {
      got += d;
      if (!got.includes('\r\n\r\n')) return;
      if (!got.startsWith('HTTP/1.1 204')) reject(new Error(`unexpected answer: ${got.split('\r\n')[0]}`));
      else {
        s.removeAllListeners('data');
        s.off('error', reject);
        s.on('error', () => undefined);
        resolve(s);
      }
    });
  });
}

async function measure(mutual: boolean, n: number, threshold: number | undefined, material: { ca: string; serverKey: string; serverCert: string; clients: { key: string; cert: string }[] }): Promise<void> {
  const child = fork(SERVER, [], {
    execArgv: ['--expose-gc'],
    env: { ...process.env, ...(threshold !== undefined ? { MALLOC_MMAP_THRESHOLD_: String(threshold) } : {}), TLS_FLOOR_SERVER: JSON.stringify({ mutual, key: material.serverKey, cert: material.serverCert, ca: material.ca }) },
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const sockets: tls.TLSSocket[] = [];
  try {
    const { port } = await ask<{ port: number }>(child, undefined, 'port');
    const before = (await ask<{ memory: Memory }>(child, 'memory', 'memory')).memory;
    const t0 = Date.now();
    for (let i = 0; i < n; i += 200) {
      const batch: Promise<tls.TLSSocket>[] = [];
      for (let j = i; j < Math.min(n, i + 200); j++) {
        const c = material.clients[j % material.clients.length] as { key: string; cert: string };
        batch.push(connect(port, { ca: material.ca, ...(mutual ? { key: c.key, cert: c.cert } : {}) }));
      }
      sockets.push(...(await Promise.all(batch)));
    }
    const took = (Date.now() - t0) / 1000;
    const after = await ask<{ memory: Memory; connections: number }>(child, 'memory', 'memory');
    if (after.connections !== n) throw new Error(`the server holds ${after.connections} connections, not ${n}`);
    const m = after.memory;
    const mb = (b: number): string => `${(b / 2 ** 20).toFixed(0)} MB`;
    console.log(
      `${mutual ? 'mutual TLS' : 'server TLS'}: ${n} idle kept-alive connections (opened in ${took.toFixed(1)} s): ` +
        `server RSS ${mb(before.rss)} → ${mb(m.rss)} (+${((m.rss - before.rss) / n / 1024).toFixed(1)} KiB per connection); ` +
        `V8 heap used ${mb(m.heapUsed)} of ${mb(m.heapTotal)}; RSS outside the V8 heap ${mb(m.rss - m.heapTotal)}`,
    );
  } finally {
    for (const s of sockets) s.destroy();
    child.kill();
  }
}

/**
 * Each connection is a descriptor at both ends (this process, and the server, which inherits this
 * limit): raise the open-file limit to what N needs when the soft limit is lower, as far as the hard
 * limit allows (beyond it needs CAP_SYS_RESOURCE), or say what to do.
 */
function ensureOpenFiles(n: number): void {
  const want = n + 256;
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const soft = m ? (m[1] === 'unlimited' ? Infinity : Number(m[1])) : 0;
  if (soft >= want) return;
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${want}:${want}`], { stdio: 'pipe' });
  } catch {
    const hard = m?.[2] ?? 'unknown';
    throw new Error(`--connections ${n} needs an open-file limit of at least ${want}; this process has ${soft} (hard limit ${hard}) and could not raise it: raise it (ulimit -n) or ask for fewer connections`);
  }
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (name: string): string | undefined => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : undefined;
  };
  const n = Number(opt('--connections') ?? 10_000);
  const mode = opt('--mode') ?? 'both';
  if (!Number.isInteger(n) || n < 1 || n > 50_000) throw new Error('--connections must be a whole number from 1 to 50000');
  if (!['mutual', 'server', 'both'].includes(mode)) throw new Error('--mode must be mutual, server or both');
  const t = opt('--malloc-mmap-threshold');
  const threshold = t === undefined ? undefined : Number(t);
  if (threshold !== undefined && (!Number.isInteger(threshold) || threshold < 0 || threshold > 32 * 2 ** 20)) throw new Error('--malloc-mmap-threshold must be a whole number of bytes up to 32 MiB');
  ensureOpenFiles(n);

  const now = new Date();
  const notAfter = new Date(now.getTime() + 3_600_000);
  const caKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const caDer = issueCaCertificate({ subjectKey: caKeys.publicKey, signerKey: caKeys.privateKey, trustDomain: TD, notBefore: now, notAfter });
  const leaf = (id: string, dnsNames?: string[]): { key: string; cert: string } => {
    const k = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const der = issueX509Svid({ caCertDer: caDer, caKey: caKeys.privateKey, subjectSpki: spkiDer(k.publicKey), spiffeId: id, notBefore: now, notAfter, dnsNames });
    return { key: keyPem(k.privateKey), cert: pem(der) };
  };
  const server = leaf(`spiffe://${TD}/sigil/verifier`, ['localhost']);
  // Distinct agent identities, as a fleet has (each connection parses its own copy of its peer's certificate either way).
  const clients = Array.from({ length: 64 }, (_, i) => leaf(`spiffe://${TD}/sigil/agent/bench/${i}`));
  const material = { ca: pem(caDer), serverKey: server.key, serverCert: server.cert, clients };
  console.log(`Node ${process.version}, OpenSSL ${process.versions.openssl}; glibc malloc mmap threshold: ${threshold === undefined ? "glibc's default" : `${threshold} bytes`}`);
  if (mode !== 'mutual') await measure(false, n, threshold, material);
  if (mode !== 'server') await measure(true, n, threshold, material);
}

main().catch((e: unknown) => {
  console.error(`tls-floor: ${e instanceof Error ? e.message : String(e)}`);
  process.exit(1);
});
