/**
 * Authorized-entries lookup with 100,000 registration entries in SQLite, and verifier RSS.
 * Layout: 1,000 agents × 95 workload entries each, 50 node entries (each matching 1 in 20 agents by
 * selector) with 50 workload entries under each, and 2,500 nested entries (child of a workload).
 * Run: npx tsx bench/entries.ts
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { authorizedEntries } from '../src/verifier/authorization.js';
import { verifierConfigFrom } from '../src/verifier/config.js';
import { startVerifier } from '../src/verifier/server.js';
import type { NewEntry } from '../src/store/types.js';

const TD = 'example.org';
const dir = mkdtempSync(join(tmpdir(), 'sigil-bench-entries-'));
const cfg = verifierConfigFrom({ trustDomain: TD, dataDir: join(dir, 'data'), adminSocket: join(dir, 'admin.sock'), listen: { address: '127.0.0.1', port: 0 }, logLevel: 'silent' }, dir);
const v = await startVerifier(cfg, { logger: pino({ level: 'silent' }), tickMs: 0 });
const store = v.core.store;

const mk = (spiffeId: string, parentId: string, selectors: string[]): NewEntry => ({ spiffeId, parentId, selectors, x509SvidTtl: 0, jwtSvidTtl: 0, dnsNames: [], hint: '', admin: false, expiresAt: null });
const agent = (i: number) => `spiffe://${TD}/sigil/agent/tpm/agent${i}`;
const t0 = performance.now();
let batch: NewEntry[] = [];
const flush = async () => {
  if (batch.length) await store.createEntries(batch);
  batch = [];
};
for (let a = 0; a < 1000; a++) {
  for (let w = 0; w < 95; w++) batch.push(mk(`spiffe://${TD}/a${a}/w${w}`, agent(a), [`unix:uid:${1000 + w}`]));
  if (batch.length >= 10_000) await flush();
}
for (let n = 0; n < 50; n++) {
  batch.push(mk(`spiffe://${TD}/node/group${n}`, `spiffe://${TD}/sigil/verifier`, [`tpm:pcr:sha256:7:group${n}`]));
  for (let w = 0; w < 50; w++) batch.push(mk(`spiffe://${TD}/g${n}/w${w}`, `spiffe://${TD}/node/group${n}`, [`unix:uid:${2000 + w}`]));
}
for (let k = 0; k < 2500; k++) batch.push(mk(`spiffe://${TD}/nested/${k}`, `spiffe://${TD}/a${k % 1000}/w${k % 95}`, ['unix:uid:3000']));
await flush();
const total = await store.countEntries();
const loadSecs = (performance.now() - t0) / 1000;

const times: number[] = [];
let sizes = 0;
for (let i = 0; i < 300; i++) {
  const a = i % 1000;
  const s = performance.now();
  const r = await authorizedEntries(store, TD, agent(a), [`tpm:pcr:sha256:7:group${a % 50}`, 'tpm:ek_pubhash:ab'], new Date());
  times.push(performance.now() - s);
  sizes += r.entries.length;
}
times.sort((x, y) => x - y);
const pct = (p: number) => times[Math.min(times.length - 1, Math.floor((p / 100) * times.length))]!.toFixed(2);
global.gc?.();
const rssMb = process.memoryUsage().rss / 1024 / 1024;
console.log(`entries in store: ${total} (loaded in ${loadSecs.toFixed(1)} s)`);
console.log(`authorized entries per agent: ${(sizes / times.length).toFixed(0)}`);
console.log(`authorized-entries lookup: p50 ${pct(50)} ms, p99 ${pct(99)} ms, max ${times[times.length - 1]!.toFixed(2)} ms (goal < 20 ms)`);
console.log(`verifier process RSS with 100k entries: ${rssMb.toFixed(0)} MB (goal < 300 MB)`);
await v.close();
rmSync(dir, { recursive: true, force: true });
