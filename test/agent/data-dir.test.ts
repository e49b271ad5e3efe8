/**
 * The agent's dataDir and Workload API socket directory (issue 11 items 7, 8 and 12): a dataDir
 * under /proc fails at once (it used to hang the agent forever), a file, someone else's directory or
 * an open one are handled with coded errors naming them, and a socket directory another user could
 * change is refused.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startAgent, type RunningAgent } from '../../src/agent/agent.js';
import { SigilError } from '../../src/errors.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { agentEnv } from './harness.js';

const OTHER_UID = 65534;
const dirs: string[] = [];
let tv: TestVerifier;

beforeAll(async () => {
  tv = await startTestVerifier();
});
afterAll(async () => {
  await tv?.stop();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'sigil-agent-dd-'));
  dirs.push(d);
  return d;
}

async function tokenAttestor(): Promise<Record<string, unknown>> {
  const { adminCall } = await import('../../src/cli/admin-client.js');
  const { token } = await adminCall<{ token: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
  return { join_token: { token } };
}

async function refusal(p: Promise<RunningAgent>): Promise<SigilError> {
  const r = await Promise.race([
    p.then(
      async (a) => {
        await a.close();
        return new Error('the agent started');
      },
      (e: unknown) => e,
    ),
    new Promise((resolve) => setTimeout(() => resolve(new Error('the agent neither started nor failed within 10 s')), 10_000)),
  ]);
  expect(r).toBeInstanceOf(SigilError);
  return r as SigilError;
}

async function start(dir: string, extra: Record<string, unknown>): Promise<RunningAgent> {
  const env = await agentEnv(dir, tv.adminSocket, tv.v.port, await tokenAttestor(), extra);
  return startAgent(env.config, { logger: pino({ level: 'silent' }), backoff: { baseMs: 100, capMs: 1000 } });
}

/**
 * Start an agent with `paths` in a child process (a start that hangs must not hang the test
 * runner) and return how it ended: its error code, message and time to fail.
 */
function startInChild(dir: string, paths: { dataDir: string; workloadApiSocket: string }): { code?: string; message?: string; ms?: number; stderr: string } {
  const cfg = {
    trustDomain: 'example.org',
    verifier: { address: '127.0.0.1', port: 1 },
    trustBundle: join(dir, 'bootstrap.pem'),
    ...paths,
    nodeAttestors: { join_token: { token: 'x'.repeat(32) } },
    logLevel: 'silent',
  };
  const script = join(dir, 'start.mts');
  writeFileSync(
    script,
    `import { agentConfigFrom } from ${JSON.stringify(new URL('../../src/agent/config.ts', import.meta.url).href)};
     import { startAgent } from ${JSON.stringify(new URL('../../src/agent/agent.ts', import.meta.url).href)};
     const t0 = Date.now();
     try { const a = await startAgent(agentConfigFrom(${JSON.stringify(cfg)}, ${JSON.stringify(dir)})); await a.close(); console.log(JSON.stringify({ started: true })); }
     catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, ms: Date.now() - t0 })); }`,
  );
  const r = spawnSync(process.execPath, ['--import', 'tsx', script], { cwd: fileURLToPath(new URL('../..', import.meta.url)), encoding: 'utf8', timeout: 40_000 });
  expect(r.error?.message, 'the agent neither started nor failed within 40 s').toBeUndefined();
  return { ...(JSON.parse(r.stdout.trim().split('\n').pop()!) as { code?: string; message?: string; ms?: number }), stderr: r.stderr };
}

describe('agent dataDir', () => {
  it('under /proc fails at once with agent.data_dir_unusable (in a child process: the old code looped forever)', () => {
    const dir = tempDir();
    const out = startInChild(dir, { dataDir: `/proc/sigil-agent-${process.pid}/data`, workloadApiSocket: join(dir, 'agent.sock') });
    expect(out.stderr).toBe('');
    expect(out.code).toBe('agent.data_dir_unusable');
    expect(out.message).toContain(`/proc/sigil-agent-${process.pid}`);
    expect(out.ms).toBeLessThan(2000);
  });

  it('a Workload API socket under /proc fails at once too (Node\'s recursive mkdir never returns there)', () => {
    const dir = tempDir();
    // A well-formed bootstrap bundle, so that the socket is what fails.
    spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', join(dir, 'k.pem'), '-out', join(dir, 'bootstrap.pem'), '-days', '1', '-subj', '/CN=bootstrap'], { stdio: 'ignore' });
    const out = startInChild(dir, { dataDir: join(dir, 'data'), workloadApiSocket: `/proc/sigil-agent-${process.pid}/api/agent.sock` });
    expect(out.code).toMatch(/^workload_api\.socket_(path_invalid|dir_insecure)$/);
    expect(out.ms).toBeLessThan(5000);
  });

  it('that is a regular file gives agent.data_dir_not_directory, naming it', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'data'), 'a file');
    const e = await refusal(start(dir, {}));
    expect(e.code).toBe('agent.data_dir_not_directory');
    expect(e.message).toContain(join(dir, 'data'));
  });

  it('owned by another user is refused with agent.data_dir_not_owned, naming it', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'data'), { mode: 0o700 });
    chownSync(join(dir, 'data'), OTHER_UID, OTHER_UID);
    const e = await refusal(start(dir, {}));
    expect(e.code).toBe('agent.data_dir_not_owned');
    expect(e.message).toContain(join(dir, 'data'));
  });

  it('pre-created 0755 and ours is made 0700', async () => {
    const dir = tempDir();
    mkdirSync(join(dir, 'data'), { mode: 0o755 });
    chmodSync(join(dir, 'data'), 0o755);
    const a = await start(dir, {});
    await a.close();
    expect((statSync(join(dir, 'data')).mode & 0o777).toString(8)).toBe('700');
  });
});

describe('Workload API socket directory', () => {
  it.each([
    ['world-writable', 0o777],
    ['group-writable', 0o775],
    ['world-writable with the sticky bit', 0o1777],
  ])('a %s socket directory is refused with workload_api.socket_dir_insecure, naming it', async (_what, mode) => {
    const dir = tempDir();
    const sockDir = join(dir, 'run');
    mkdirSync(sockDir);
    chmodSync(sockDir, mode);
    const e = await refusal(start(dir, { workloadApiSocket: join(sockDir, 'agent.sock') }));
    expect(e.code).toBe('workload_api.socket_dir_insecure');
    expect(e.message).toContain(sockDir);
  });

  it('a socket directory owned by another user is refused', async () => {
    const dir = tempDir();
    const sockDir = join(dir, 'run');
    mkdirSync(sockDir, { mode: 0o755 });
    chownSync(sockDir, OTHER_UID, OTHER_UID);
    const e = await refusal(start(dir, { workloadApiSocket: join(sockDir, 'agent.sock') }));
    expect(e.code).toBe('workload_api.socket_dir_insecure');
    expect(e.message).toContain(`${sockDir} is owned by uid ${OTHER_UID}`);
  });

  it('a 0755 socket directory of ours is accepted and the socket stays connectable by everyone', async () => {
    const dir = tempDir();
    chmodSync(dir, 0o755);
    const sockDir = join(dir, 'run');
    mkdirSync(sockDir, { mode: 0o755 });
    const a = await start(dir, { workloadApiSocket: join(sockDir, 'agent.sock') });
    try {
      expect(statSync(join(sockDir, 'agent.sock')).mode & 0o777).toBe(0o777);
    } finally {
      await a.close();
    }
  });
});
