/**
 * Real processes, real time: `sigil verifier run` with ca.ttl 60s (the minimum) and `sigil agent
 * run` with a join token, through two CA activations and the first CA's expiry (~82 s). A workload keeps a
 * FetchX509SVID stream open; every second its latest SVID must be valid and verify against the
 * bundle that came with it. The agent must renew its node SVID across the rotations (its issuer
 * changes), never report `agent.verifier_untrusted` and never need to attest again.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { pemToDers } from '../../src/spiffe/pem.js';
import { verifyX509Svid } from '../../src/spiffe/x509svid.js';
import { UID, WorkloadClient, createEntry, describeSvids, freePort, joinToken, waitFor } from './harness.js';

const runner = fileURLToPath(new URL('./fixtures/run-cli.ts', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'sigil-carot-e2e-'));
const children: ChildProcess[] = [];
afterAll(async () => {
  for (const c of children) {
    if (c.exitCode === null) {
      const gone = new Promise((r) => c.once('exit', r));
      c.kill('SIGTERM');
      await gone;
    }
  }
  rmSync(dir, { recursive: true, force: true });
});

interface Line {
  level: number;
  msg: string;
  code?: string;
  time: number;
}

function run(args: string[]): { lines: () => Line[]; child: ChildProcess } {
  const child = spawn(process.execPath, ['--import', 'tsx', runner, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let out = '';
  child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString()));
  return {
    child,
    lines: () =>
      out
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as Line),
  };
}

describe('CA rotation at ca.ttl 60s with a real verifier and a real agent', () => {
  it('serves a valid, trusted SVID at every second across two CA activations; the agent keeps its identity and trust', async () => {
    const port = await freePort();
    const adminSocket = join(dir, 'admin.sock');
    const vcfg = join(dir, 'verifier.yaml');
    writeFileSync(
      vcfg,
      [
        'trustDomain: example.org',
        `listen: { address: 127.0.0.1, port: ${port} }`,
        `adminSocket: ${adminSocket}`,
        `dataDir: ${join(dir, 'verifier')}`,
        'ca: { ttl: 60s }',
        'svid: { x509Ttl: 10s, jwtTtl: 10s, agentTtl: 1h }',
        'nodeAttestors: { join_token: {} }',
        'logLevel: info',
        '',
      ].join('\n'),
    );
    const verifier = run(['verifier', 'run', '--config', vcfg]);
    const firstBundle = await waitFor(() => adminCall<string>(adminSocket, 'GET', '/v1/admin/bundle?format=pem'), 30_000, 'verifier admin socket', 200);
    const startedAt = verifier.lines().find((l) => l.msg === 'verifier running')!.time;
    const firstCa = SpiffeBundle.fromPem('example.org', firstBundle).x509Authorities[0]!;

    const t = await joinToken(adminSocket);
    await createEntry(adminSocket, { spiffeId: 'spiffe://example.org/rotating', parentId: t.agentId, selectors: [`unix:uid:${UID}`] });
    writeFileSync(join(dir, 'bootstrap.pem'), firstBundle);
    const acfg = join(dir, 'agent.yaml');
    const agentData = join(dir, 'agent');
    const socket = join(dir, 'agent.sock');
    writeFileSync(
      acfg,
      [
        'trustDomain: example.org',
        `verifier: { address: 127.0.0.1, port: ${port} }`,
        `trustBundle: ${join(dir, 'bootstrap.pem')}`,
        `dataDir: ${agentData}`,
        `workloadApiSocket: ${socket}`,
        `nodeAttestors: { join_token: { token: ${t.token} } }`,
        'workloadAttestors: { unix: { hashBinaries: false } }',
        'logLevel: info',
        '',
      ].join('\n'),
    );
    const agent = run(['agent', 'run', '--config', acfg]);
    await waitFor(() => agent.lines().some((l) => l.msg === 'node attested'), 30_000, 'agent attested', 200);
    const wl = new WorkloadClient(socket);
    try {
      const stream = await wl.streamWhen((m) => m.svids.some((s) => s.spiffe_id === 'spiffe://example.org/rotating'), 15_000, 'first SVID');
      // Sample every second past the first activation (+50 s), the first CA's end (+60 s) and the second activation (+80 s).
      const problems: string[] = [];
      const serials = new Set<string>();
      const until = startedAt + 82_000;
      while (Date.now() < until) {
        await new Promise((r) => setTimeout(r, 1000));
        const at = `at +${((Date.now() - startedAt) / 1000).toFixed(1)}s`;
        if (stream.ended) {
          problems.push(`${at}: the stream ended (${stream.error?.message ?? 'no error'})`);
          break;
        }
        try {
          const d = describeSvids(stream.latest()!)[0]!; // verifies against the bundle sent with it, now
          if (d.notAfter.getTime() <= Date.now()) problems.push(`${at}: the latest SVID expired at ${d.notAfter.toISOString()}`);
          serials.add(d.serial);
        } catch (e) {
          problems.push(`${at}: ${(e as Error).message}`);
        }
      }
      expect(problems).toEqual([]);
      expect(serials.size).toBeGreaterThanOrEqual(10); // rotated every ~5 s

      const vLines = verifier.lines();
      const activations = vLines.filter((l) => l.msg === 'activated the successor X.509 CA');
      expect(activations.length).toBeGreaterThanOrEqual(2);
      expect(vLines.filter((l) => l.level >= 50)).toEqual([]);

      const aLines = agent.lines();
      expect(aLines.filter((l) => l.code === 'agent.verifier_untrusted')).toEqual([]);
      expect(aLines.filter((l) => l.msg === 'node attested')).toHaveLength(1);
      expect(aLines.filter((l) => l.level >= 50)).toEqual([]);
      expect(aLines.filter((l) => l.msg === 'node SVID renewed').length).toBeGreaterThanOrEqual(2);
      // The node SVID now held was issued by a later CA than the first, and verifies against the agent's bundle.
      const node = pemToDers(readFileSync(join(agentData, 'node-svid.pem'), 'utf8'));
      const bundle = SpiffeBundle.fromPem('example.org', readFileSync(join(agentData, 'bundle.pem'), 'utf8'));
      expect(bundle.x509Authorities.some((d) => d.equals(firstCa))).toBe(false);
      expect(verifyX509Svid(node, () => bundle.x509Authorities, new Date()).spiffeId.toString()).toBe(t.agentId);
    } finally {
      wl.close();
    }
  }, 150_000);
});
