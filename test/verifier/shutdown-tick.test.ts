/**
 * The verifier's periodic rotation step (CA, JWT keys, its TLS certificate, the agent count) and
 * shutdown. A 10,000-agent bench run logged "rotation step failed: PostgreSQL datastore is closed"
 * at a clean stop: a step still reading when the verifier closed its datastore. Shutting down now
 * waits for the step under way, and a step never starts while the previous one still runs. The step
 * is held on its agent count (SqliteStore.countAgents, gated here) to make both cases happen. The
 * CA's own timer (activations at their exact times, peers' journals) is held the same way, on its
 * read of the journals.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { SqliteStore } from '../../src/store/sqlite.js';
import { CertificateAuthority, MAX_PEER_REFRESH_MS } from '../../src/verifier/ca.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startVerifier, type RunningVerifier } from '../../src/verifier/server.js';

interface Line {
  level: number;
  msg: string;
}

let dir = '';
let v: RunningVerifier | undefined;

afterEach(async () => {
  vi.restoreAllMocks();
  await v?.close();
  v = undefined;
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function start(lines: Line[]): Promise<RunningVerifier> {
  dir = mkdtempSync(join(tmpdir(), 'sigil-tick-'));
  const cfg = verifierConfigFrom(
    { trustDomain: 'example.org', listen: { address: '127.0.0.1', port: 0 }, adminSocket: join(dir, 'admin.sock'), dataDir: join(dir, 'data'), nodeAttestors: { join_token: {} } },
    dir,
  );
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Line);
      cb();
    },
  });
  return startVerifier(cfg, { logger: pino({ level: 'info' }, sink), tickMs: 20 });
}

/** Holds every call of SqliteStore's `method` until `release()`; `calls` counts them. */
function gate(method: 'countAgents' | 'listCaJournals'): { calls: () => number; release: () => void } {
  const original = SqliteStore.prototype[method] as (this: SqliteStore) => Promise<unknown>;
  let calls = 0;
  let open: () => void = () => undefined;
  const held = new Promise<void>((r) => (open = r));
  vi.spyOn(SqliteStore.prototype, method).mockImplementation(async function (this: SqliteStore) {
    calls++;
    await held;
    return original.call(this) as never;
  });
  return { calls: () => calls, release: () => open() };
}
const gateAgentCount = () => gate('countAgents');

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !cond(); i++) await sleep(10);
  if (!cond()) throw new Error(`timed out waiting for ${what}`);
}

describe('the rotation step and shutdown', () => {
  it('close() waits for the step under way: no step runs against the closed datastore', async () => {
    const lines: Line[] = [];
    const gate = gateAgentCount();
    v = await start(lines);
    await until(() => gate.calls() > 0, 'a rotation step to reach its agent count');
    let closed = false;
    const closing = v.close().then(() => (closed = true));
    await sleep(100);
    // Still waiting for the step: the datastore is open.
    expect(closed).toBe(false);
    gate.release();
    await closing;
    v = undefined;
    await sleep(50);
    const errors = lines.filter((l) => l.level >= 50);
    expect(errors).toEqual([]);
  });

  it('a step does not start while the previous one is still running', async () => {
    const lines: Line[] = [];
    const gate = gateAgentCount();
    v = await start(lines);
    await until(() => gate.calls() > 0, 'a rotation step to reach its agent count');
    // Ten more intervals pass with the first step held.
    await sleep(200);
    expect(gate.calls()).toBe(1);
    gate.release();
    await until(() => gate.calls() > 1, 'the next step');
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
  });

  it("the CA's timer: stop() waits for its step, which never reads the closed datastore", async () => {
    const lines: Line[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString('utf8').split('\n')) if (l) lines.push(JSON.parse(l) as Line);
        cb();
      },
    });
    dir = mkdtempSync(join(tmpdir(), 'sigil-tick-'));
    const store = new SqliteStore(join(dir, 'sigil.db'));
    const ca = new CertificateAuthority(store, { instance: 'a', trustDomain: 'example.org', dataDir: dir, keyType: 'ec-p256', jwtKeyType: 'ec-p256', ttlSeconds: 3600, now: () => new Date(), logger: pino({ level: 'info' }, sink) });
    await ca.init();
    const g = gate('listCaJournals');
    // Its first step that reads the peers' journals comes MAX_PEER_REFRESH_MS after start.
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date'] });
    try {
      ca.start();
      await vi.advanceTimersByTimeAsync(MAX_PEER_REFRESH_MS + 100);
      expect(g.calls()).toBe(1);
      let stopped = false;
      const stopping = ca.stop().then(() => (stopped = true));
      await vi.advanceTimersByTimeAsync(1000);
      expect(stopped).toBe(false);
      g.release();
      await stopping;
    } finally {
      vi.useRealTimers();
    }
    store.close();
    await sleep(50);
    expect(lines.filter((l) => l.level >= 50)).toEqual([]);
  });
});
