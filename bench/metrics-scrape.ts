/**
 * How long one /metrics collection holds the event loop with many open connections: prom-client's
 * default metrics (which list every handle, request and resource, and every entry of
 * /proc/self/fd) against Sigil's process metrics (src/util/process-metrics.ts), in the same process
 * with the same sockets, alternately. A verifier with 10,000 agents holds one socket per agent.
 *
 *   npx tsx bench/metrics-scrape.ts [--sockets 9000] [--rounds 8]
 *
 * The socket count is capped by the open-file limit (each connection here is two descriptors).
 */
import { readFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { Registry, collectDefaultMetrics } from 'prom-client';
import { openFdCount, registerProcessMetrics } from '../src/util/process-metrics.js';
import { pct } from './support/load.js';

const args = process.argv.slice(2);
const opt = (name: string, dflt: number): number => {
  const i = args.indexOf(name);
  return i >= 0 && args[i + 1] ? Number(args[i + 1]) : dflt;
};

/** The soft open-file limit, from /proc/self/limits (Linux). */
function openFileLimit(): number {
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return !m || m[1] === 'unlimited' ? 1 << 20 : Number(m[1]);
}

const limit = openFileLimit();
const wanted = opt('--sockets', 9000);
const pairs = Math.max(0, Math.min(wanted, Math.floor((limit - 200) / 2)));
const ROUNDS = opt('--rounds', 8);
if (pairs < wanted) console.log(`open-file limit ${limit}: ${pairs} connections instead of ${wanted} (raise it with \`ulimit -n\`)`);

const server = createServer(() => undefined);
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
const port = (server.address() as { port: number }).port;
const socks: Socket[] = [];
for (let i = 0; i < pairs; i += 500) {
  const n = Math.min(500, pairs - i);
  await Promise.all(
    Array.from(
      { length: n },
      () =>
        new Promise<void>((resolve, reject) => {
          const s = connect(port, '127.0.0.1', () => resolve());
          s.once('error', reject);
          socks.push(s);
        }),
    ),
  );
}
console.log(`${pairs} connections open (${openFdCount() ?? '?'} descriptors in this process)`);

const defaults = new Registry();
collectDefaultMetrics({ register: defaults, prefix: 'a_' });
const sigil = new Registry();
registerProcessMetrics(sigil, 'b_');
const times: Record<string, number[]> = { 'prom-client defaults': [], 'Sigil process metrics': [] };
for (let k = 0; k < ROUNDS; k++) {
  for (const [name, reg] of [
    ['prom-client defaults', defaults],
    ['Sigil process metrics', sigil],
  ] as const) {
    const t = performance.now();
    await reg.metrics();
    times[name]!.push(performance.now() - t);
  }
}
for (const [name, t] of Object.entries(times)) {
  const s = [...t].sort((a, b) => a - b);
  console.log(`${name}: one collection ${pct(s, 50).toFixed(1)} ms median, ${Math.max(...s).toFixed(1)} ms max over ${s.length} (event loop held meanwhile)`);
}
for (const s of socks) s.destroy();
server.close();
