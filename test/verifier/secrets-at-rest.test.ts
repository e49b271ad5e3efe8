/**
 * Secrets at rest (issue 11 item 8) and the verifier's dataDir edge cases (item 12): the database
 * files never hold a join token (only its digest), they are 0600, dataDir is made 0700 or refused,
 * and a dataDir that is a file, someone else's or unwritable gives a coded error.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import { joinTokenVerifierPlugin } from '../../src/join-token/plugin.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { startVerifier, type RunningVerifier } from '../../src/verifier/server.js';
import { generateJoinToken, joinTokenServices } from '../../src/verifier/tokens.js';
import { httpsJson } from '../support/verifier.js';

const OTHER_UID = 65534;
const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'sigil-rest-'));
  dirs.push(d);
  return d;
}

function start(dir: string, dataDir = join(dir, 'data')): Promise<RunningVerifier> {
  const cfg = verifierConfigFrom(
    { trustDomain: 'example.org', listen: { address: '127.0.0.1', port: 0 }, adminSocket: join(dir, 'admin.sock'), dataDir, nodeAttestors: { join_token: {} }, logLevel: 'silent' },
    dir,
  );
  return startVerifier(cfg, { logger: pino({ level: 'silent' }), tickMs: 0 });
}

async function refusal(p: Promise<RunningVerifier>): Promise<SigilError> {
  const r = await Promise.race([
    p.then(
      async (v) => {
        await v.close();
        return new Error('the verifier started');
      },
      (e: unknown) => e,
    ),
    new Promise((resolve) => setTimeout(() => resolve(new Error('the verifier neither started nor failed within 10 s')), 10_000)),
  ]);
  expect(r).toBeInstanceOf(SigilError);
  return r as SigilError;
}

const DB_FILES = ['sigil.db', 'sigil.db-wal', 'sigil.db-shm'];

/** Which of the database files contain `needle` (as text, as the attacker would grep for it). */
function filesHolding(dataDir: string, needle: string): string[] {
  return DB_FILES.filter((f) => existsSync(join(dataDir, f)) && readFileSync(join(dataDir, f)).includes(Buffer.from(needle)));
}

describe('join tokens at rest', () => {
  it('neither an open session nor a finished attestation leaves the token in sigil.db or its WAL', async () => {
    const dir = tempDir();
    const v = await start(dir);
    const dataDir = join(dir, 'data');
    try {
      const caPem = await adminCall<string>(v.adminSocket, 'GET', '/v1/admin/bundle?format=pem');
      const { token } = await adminCall<{ token: string }>(v.adminSocket, 'POST', '/v1/admin/tokens', {});
      // The grep below can find what the database holds: the token's id is there in plain text.
      const csr = createCsr(generateKey('ec-p256')).toString('base64');
      const r1 = await httpsJson(v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token } }, csr } });
      expect(r1.status).toBe(200);
      // The session is open now: its state is in the datastore.
      expect(filesHolding(dataDir, token)).toEqual([]);
      const session = (r1.body as { session: string }).session;
      expect(filesHolding(dataDir, session).length).toBeGreaterThan(0);
      const r2 = await httpsJson(v.port, 'POST', `/v1/attest/${session}`, { caPem, body: { responses: { join_token: {} } } });
      expect(r2.status).toBe(200);
      expect(filesHolding(dataDir, token)).toEqual([]);
    } finally {
      await v.close();
    }
    expect(filesHolding(dataDir, 'join_token')).not.toEqual([]);
  });

  it('the join_token attestor keeps the digest, not the token, as session state', async () => {
    const store = new SqliteStore(':memory:');
    try {
      const now = new Date('2030-01-01T00:00:00Z');
      const services = joinTokenServices(store);
      const { token, tokenId } = await generateJoinToken(store, 'example.org', 600, now);
      const plugin = await joinTokenVerifierPlugin.create({}, { trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => now, configDir: '/', services, state: undefined as never });
      const session = { nonce: Buffer.alloc(32), binding: Buffer.alloc(32), csrSpki: Buffer.alloc(0), now };
      const { state } = await plugin.begin({ token }, session);
      expect(JSON.stringify(state)).not.toContain(token);
      expect(state).toEqual({ v: 2, digest: services.digestJoinToken(token) });
      // A round trip through JSON (as the datastore does) still finishes and commits.
      const stored = JSON.parse(JSON.stringify(state)) as unknown;
      expect((await plugin.finish({}, stored, session)).agentIdSuffix).toBe(tokenId);
      await plugin.commit!(stored, session);
      await expect(plugin.finish({}, stored, session)).rejects.toMatchObject({ code: 'join_token.used' });
      // State written by an older verifier (the token itself) is refused, not used.
      const { token: t2 } = await generateJoinToken(store, 'example.org', 600, now);
      await expect(plugin.finish({}, { token: t2 }, session)).rejects.toMatchObject({ code: 'join_token.bad_state' });
      await expect(plugin.commit!({ v: 2, digest: 'zz' }, session)).rejects.toMatchObject({ code: 'join_token.bad_state' });
    } finally {
      await store.close();
    }
  });
});

describe('database files', () => {
  it('are created 0600 (main file, WAL and shared memory), whatever the umask', async () => {
    const dir = tempDir();
    const old = process.umask(0o000);
    let v: RunningVerifier;
    try {
      v = await start(dir);
    } finally {
      process.umask(old);
    }
    try {
      await adminCall(v.adminSocket, 'POST', '/v1/admin/tokens', {});
      for (const f of DB_FILES) {
        const p = join(dir, 'data', f);
        expect(existsSync(p), p).toBe(true);
        expect((statSync(p).mode & 0o777).toString(8), p).toBe('600');
      }
    } finally {
      await v.close();
    }
  });

  it('made 0644 by an older version are made 0600 when opened', async () => {
    const dir = tempDir();
    const path = join(dir, 'sigil.db');
    new SqliteStore(path).close();
    chmodSync(path, 0o644);
    writeFileSync(`${path}-wal`, '', { mode: 0o644 });
    chmodSync(`${path}-wal`, 0o644);
    const s = new SqliteStore(path);
    try {
      for (const f of ['sigil.db', 'sigil.db-wal']) expect((statSync(join(dir, f)).mode & 0o777).toString(8)).toBe('600');
    } finally {
      await s.close();
    }
  });
});

describe('verifier dataDir', () => {
  it('a pre-created 0755 dataDir and keys/ are made 0700', async () => {
    const dir = tempDir();
    const dataDir = join(dir, 'data');
    mkdirSync(join(dataDir, 'keys'), { recursive: true, mode: 0o755 });
    chmodSync(dataDir, 0o755);
    chmodSync(join(dataDir, 'keys'), 0o755);
    const v = await start(dir);
    await v.close();
    expect((statSync(dataDir).mode & 0o777).toString(8)).toBe('700');
    expect((statSync(join(dataDir, 'keys')).mode & 0o777).toString(8)).toBe('700');
  });

  it('a new dataDir is created 0700 even under umask 000', async () => {
    const dir = tempDir();
    const old = process.umask(0o000);
    let v: RunningVerifier;
    try {
      v = await start(dir, join(dir, 'a', 'b', 'data'));
    } finally {
      process.umask(old);
    }
    await v.close();
    expect((statSync(join(dir, 'a', 'b', 'data')).mode & 0o777).toString(8)).toBe('700');
  });

  it('a dataDir owned by another user is refused, naming it', async () => {
    const dir = tempDir();
    const dataDir = join(dir, 'data');
    mkdirSync(dataDir, { mode: 0o700 });
    chownSync(dataDir, OTHER_UID, OTHER_UID);
    const e = await refusal(start(dir));
    expect(e.code).toBe('verifier.data_dir_not_owned');
    expect(e.message).toContain(dataDir);
  });

  it('a dataDir that is a regular file gives verifier.data_dir_not_directory, not internal EEXIST', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'data'), 'a file');
    const e = await refusal(start(dir));
    expect(e.code).toBe('verifier.data_dir_not_directory');
    expect(e.message).toContain(join(dir, 'data'));
  });

  it('a dataDir under /proc fails at once with verifier.data_dir_unusable (in a child process: the old code looped forever)', () => {
    const dir = tempDir();
    const dataDir = `/proc/sigil-${process.pid}/data`;
    const script = join(dir, 'start.mts');
    writeFileSync(
      script,
      `import { verifierConfigFrom } from ${JSON.stringify(new URL('../../src/verifier/config.ts', import.meta.url).href)};
       import { startVerifier } from ${JSON.stringify(new URL('../../src/verifier/server.ts', import.meta.url).href)};
       const cfg = verifierConfigFrom({ trustDomain: 'example.org', listen: { address: '127.0.0.1', port: 0 }, adminSocket: ${JSON.stringify(join(dir, 'admin.sock'))}, dataDir: ${JSON.stringify(dataDir)}, nodeAttestors: { join_token: {} }, logLevel: 'silent' }, ${JSON.stringify(dir)});
       const t0 = Date.now();
       try { const v = await startVerifier(cfg, { tickMs: 0 }); await v.close(); console.log(JSON.stringify({ started: true })); }
       catch (e) { console.log(JSON.stringify({ code: e.code, message: e.message, ms: Date.now() - t0 })); }`,
    );
    const r = spawnSync(process.execPath, ['--import', 'tsx', script], { cwd: fileURLToPath(new URL('../..', import.meta.url)), encoding: 'utf8', timeout: 40_000 });
    expect(r.error?.message, 'the verifier neither started nor failed within 40 s').toBeUndefined();
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as { code?: string; message?: string; ms?: number };
    expect(out.code).toBe('verifier.data_dir_unusable');
    expect(out.message).toContain(`/proc/sigil-${process.pid}`);
    expect(out.ms).toBeLessThan(2000);
  });

  it('an existing but unwritable dataDir fails at start with verifier.data_dir_unusable', async () => {
    const dir = tempDir();
    const e = await refusal(start(dir, `/proc/${process.pid}`));
    expect(e.code).toBe('verifier.data_dir_unusable');
    expect(e.message).toContain(`/proc/${process.pid}`);
  });
});
