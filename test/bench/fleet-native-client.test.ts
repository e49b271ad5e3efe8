/**
 * The fleet benchmark's C load generator (bench/support/fleet-agents.c, driven by
 * bench/support/fleet-native.ts) against a real verifier: what it reports is what the benchmark
 * prints as the fleet's sync latency and change propagation, so it must see what an agent sees.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildNativeClient, monoNow, NativeAgents } from '../../bench/support/fleet-native.js';
import type { WorkerAgent } from '../../bench/support/fleet-worker.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { attestWithJoinToken, startTestVerifier, type TestVerifier } from '../support/verifier.js';

const VID = 'spiffe://example.org/sigil/verifier';

let dir: string;
let binary: string;
let tv: TestVerifier;
let caPem: string;
let agents: (WorkerAgent & { agentId: string })[];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'sigil-fleet-native-'));
  binary = buildNativeClient(dir);
  tv = await startTestVerifier();
  caPem = await adminCall<string>(tv.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
  agents = [];
  for (let i = 0; i < 3; i++) {
    const a = await attestWithJoinToken(tv, caPem);
    agents.push({ i, port: tv.v.port, localAddress: `127.1.0.${i + 1}`, tls: a.tls, agentId: a.agentId });
  }
});

afterAll(async () => {
  await tv?.stop();
  rmSync(dir, { recursive: true, force: true });
});

async function until(what: string, ok: () => boolean, ms = 8000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('the fleet benchmark native client', () => {
  it('syncs every agent, measures 304s after their wait, and reports a change when the affected agent holds it', async () => {
    const seen: { id: string; create: boolean; i: number; at: number }[] = [];
    const native = new NativeAgents(binary, join(dir, 'run1'), agents, caPem, VID, 1, (id, create, i, at) => seen.push({ id, create, i, at }));
    try {
      expect(await native.start()).toBeGreaterThan(0); // three first sets (bytes)
      native.measure();
      await new Promise((r) => setTimeout(r, 2500)); // 1-s long-polls, answered 304 when the wait is over
      const t0 = monoNow();
      const e = await adminCall<{ id: string }>(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: 'spiffe://example.org/native/w', parentId: agents[1]?.agentId, selectors: ['unix:uid:7'] });
      native.op(e.id, true, t0, [1]);
      await until('the change to reach agent 1', () => seen.some((s) => s.id === e.id));
      const s = seen.find((x) => x.id === e.id);
      expect(s?.i).toBe(1);
      expect(s?.create).toBe(true);
      expect(s?.at).toBeGreaterThanOrEqual(t0);
      expect(s?.at).toBeLessThan(monoNow() + 1);
      // Agents 0 and 2 do not hold the entry: a change reported for them must not be seen.
      native.op(e.id, true, t0, [0, 2]);
      const [w] = await native.window();
      expect(w?.errors).toEqual([]);
      expect(w?.handshakes).toBe(0);
      expect(w?.pushed).toBeGreaterThanOrEqual(1);
      expect(w?.lateness.length).toBeGreaterThanOrEqual(3);
      for (const l of w?.lateness ?? []) {
        expect(l).toBeGreaterThan(-2); // answered when the 1-s wait was over (timer granularity aside)
        expect(l).toBeLessThan(1000);
      }
      expect(w?.syncs).toBe((w?.lateness.length ?? 0) + (w?.pushed ?? 0));
      await new Promise((r) => setTimeout(r, 1500));
      expect(seen.filter((x) => x.id === e.id).map((x) => x.i)).toEqual([1]);
      // The entry deleted: agent 1 reported again once it holds a set without it.
      const t1 = monoNow();
      await adminCall(tv.adminSocket, 'DELETE', `/v1/admin/entries/${e.id}`);
      native.op(e.id, false, t1, [1]);
      await until('the delete to reach agent 1', () => seen.filter((x) => x.id === e.id).length === 2);
      expect(seen.filter((x) => x.id === e.id).map((x) => [x.i, x.create])).toEqual([
        [1, true],
        [1, false],
      ]);
    } finally {
      await native.stop();
    }
  });

  it('refuses a verifier whose certificate names another SPIFFE ID, and says so', async () => {
    const native = new NativeAgents(binary, join(dir, 'run2'), agents.slice(0, 1), caPem, 'spiffe://example.org/someone-else', 1, () => undefined);
    await expect(native.start()).rejects.toThrow(/agent 0: first sync: the verifier's certificate is not the one expected/);
    await native.stop();
  });

  it('names what is wrong in its agents file', async () => {
    const bad = join(dir, 'bad.txt');
    writeFileSync(bad, `ca ${join(dir, 'none.pem')}\nserver ${VID}\nagent 0 70000 127.1.0.1 x.pem\n`);
    const out = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      execFile(binary, [bad], (err, stdout) => resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout }));
    });
    expect(out.code).toBe(1);
    expect(out.stdout).toBe('failed agent 0: port 70000 out of range\n');
  });
});
