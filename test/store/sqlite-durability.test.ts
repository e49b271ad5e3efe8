/**
 * SQLite durability off the event loop (src/store/wal-sync.ts): a write is acknowledged only after
 * a flush of the write-ahead log that started after its commit; writes that commit during a flush
 * share the next one; a failed flush fails the write with `store.sync_failed` and every write after
 * it is refused until a restart; every write method waits for its flush; the log flushed is the one
 * SQLite writes, also behind a symbolic link.
 */
import { createHash, randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readlinkSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { WalSync } from '../../src/store/wal-sync.js';
import type { AgentRecord, JoinTokenRecord, StoredSession } from '../../src/store/types.js';
import { newEntry } from '../support/entries.js';

const TD = 'spiffe://example.org';

/** A flush the test releases (or fails) by hand; records the descriptor it was asked to flush. */
class HeldSync {
  calls = 0;
  /** The file each flush was asked for (the descriptor's target). */
  files: string[] = [];
  private pending: { resolve: () => void; reject: (e: Error) => void }[] = [];
  readonly fn = (fd: number): Promise<void> => {
    this.calls++;
    this.files.push(readlinkSync(`/proc/self/fd/${fd}`));
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  };
  get waiting(): number {
    return this.pending.length;
  }
  release(): void {
    const p = this.pending.shift();
    if (!p) throw new Error('no flush is waiting');
    p.resolve();
  }
  fail(e: Error): void {
    const p = this.pending.shift();
    if (!p) throw new Error('no flush is waiting');
    p.reject(e);
  }
}

/** Whether a promise has settled, after the microtasks and a macrotask have run. */
async function settled(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  await new Promise((r) => setImmediate(r));
  return done;
}

const dirs: string[] = [];
const stores: SqliteStore[] = [];
afterEach(async () => {
  for (const s of stores.splice(0)) await s.close().catch(() => undefined);
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function open(sync?: HeldSync): { store: SqliteStore; path: string } {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-sync-'));
  dirs.push(dir);
  const path = join(dir, 'sigil.db');
  const store = new SqliteStore(path, sync ? { sync: sync.fn } : {});
  stores.push(store);
  return { store, path };
}

const entry = (id: string) => newEntry(`${TD}/w/${id}`, `${TD}/agent/one`, { id, selectors: ['unix:uid:1000'] });

describe('SQLite write durability', () => {
  it('acknowledges a write only after a flush that began after its commit; writes committed during a flush share the next one', async () => {
    const sync = new HeldSync();
    const { store } = open(sync);
    const p1 = store.createEntry(entry('e1'));
    expect(sync.waiting).toBe(1);
    expect(await settled(p1)).toBe(false);
    // Committed and visible to this process's reads before its flush ends (the file header says so).
    expect((await store.getEntry('e1'))?.id).toBe('e1');

    // Committed while flush 1 runs: flush 1 may have started before it, so it waits for flush 2.
    const p2 = store.createEntry(entry('e2'));
    expect(sync.calls).toBe(1);
    sync.release();
    expect(await settled(p1)).toBe(true);
    expect(await settled(p2)).toBe(false);
    expect(sync.calls).toBe(2);

    // Two writes during flush 2 share flush 3.
    const p3 = store.createEntry(entry('e3'));
    const p4 = store.deleteEntry('e1');
    sync.release();
    expect(await settled(p2)).toBe(true);
    expect(await settled(p3)).toBe(false);
    expect(await settled(p4)).toBe(false);
    expect(sync.calls).toBe(3);
    sync.release();
    expect(await p3).toMatchObject({ id: 'e3' });
    expect(await p4).toBe(true);
    expect(sync.calls).toBe(3);
    expect(sync.waiting).toBe(0);
  });

  it('a failed flush fails the write with store.sync_failed naming the log, and every later write is refused until a restart', async () => {
    const sync = new HeldSync();
    const { store, path } = open(sync);
    const p1 = store.createEntry(entry('e1'));
    sync.fail(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    const err = await p1.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SigilError);
    expect((err as SigilError).code).toBe('store.sync_failed');
    expect((err as SigilError).message).toContain(`${path}-wal`);
    expect((err as SigilError).message).toContain('EIO');
    // The transaction itself committed and stays readable.
    expect((await store.getEntry('e1'))?.id).toBe('e1');
    // Linux may report a write-back error once and drop the pages: a later fdatasync that succeeds
    // proves nothing about the frames before it, so no later write is acknowledged.
    const calls = sync.calls;
    const p2 = store.createEntry(entry('e2'));
    await expect(p2).rejects.toMatchObject({ code: 'store.sync_failed' });
    await expect(p2).rejects.toThrow(/refuses writes.*EIO.*restart the verifier/);
    expect(sync.calls).toBe(calls);
    expect(await store.getEntry('e2')).toBeUndefined();
    // Not ready (the verifier's /readyz asks ping).
    await expect(store.ping()).rejects.toMatchObject({ code: 'store.sync_failed' });
    await store.close();
    stores.splice(stores.indexOf(store), 1);
    // A restart recovers from what the disk holds and writes again.
    const again = new SqliteStore(path);
    stores.push(again);
    await again.ping();
    expect((await again.createEntry(entry('e3'))).id).toBe('e3');
  });

  it('a write waiting behind a failed flush is refused with it (no flush of its own)', async () => {
    const sync = new HeldSync();
    const { store } = open(sync);
    const p1 = store.createEntry(entry('e1'));
    const p2 = store.createEntry(entry('e2'));
    sync.fail(new Error('EIO'));
    await expect(p1).rejects.toMatchObject({ code: 'store.sync_failed' });
    await expect(p2).rejects.toThrow(/refuses writes/);
    expect(sync.calls).toBe(1);
    expect(sync.waiting).toBe(0);
  });

  it('after a failed flush every write method is refused before it commits, by Sigil and by SQLite', async () => {
    const sync = new HeldSync();
    const { store, path } = open(sync);
    const p = store.createEntry(entry('e1'));
    sync.fail(new Error('EIO'));
    await expect(p).rejects.toMatchObject({ code: 'store.sync_failed' });
    const now = new Date('2030-01-01T00:00:00.000Z');
    const tok: JoinTokenRecord = { id: 't1', secretHash: 'a'.repeat(64), expiresAt: '2030-01-01T00:10:00.000Z', usedAt: null, spiffeId: null, createdAt: now.toISOString() };
    const agentId = `${TD}/sigil/agent/join_token/a1`;
    const agent: AgentRecord = { id: agentId, attestors: ['join_token'], selectors: [], serial: '0a', svidExpiresAt: '2030-01-01T01:00:00.000Z', attestedAt: now.toISOString(), banned: false, factorIds: [agentId] };
    const session: StoredSession = { id: 'e'.repeat(32), nonce: 'AA==', csrSpki: 'AA==', attestors: ['join_token'], states: {}, expiresAt: '2000-01-01T00:00:00.000Z' };
    const rel = { trustDomain: 'other.org', bundleEndpointUrl: 'https://other.org/bundle', profile: 'https_web' as const, createdAt: now.toISOString(), updatedAt: now.toISOString() };
    const writes: [string, () => Promise<unknown>][] = [
      ['createEntry', () => store.createEntry(entry('e2'))],
      ['createEntries', () => store.createEntries([entry('e3')])],
      ['deleteEntry', () => store.deleteEntry('e1')],
      ['upsertAgent', () => store.upsertAgent(agent)],
      ['renewAgentSvid', () => store.renewAgentSvid(agentId, '0a', '0b', '2030-01-01T02:00:00.000Z')],
      ['createJoinToken', () => store.createJoinToken(tok)],
      ['useJoinToken', () => store.useJoinToken(tok.secretHash, now)],
      ['createJoinTokenWithAlias', () => store.createJoinTokenWithAlias(tok, entry('e4'))],
      ['saveCaJournal', () => store.saveCaJournal('v1', { x509: [], jwt: [], sequence: 1 })],
      ['putSession', () => store.putSession(session)],
      ['takeSession', () => store.takeSession(session.id)],
      ['sweepSessions', () => store.sweepSessions(now)],
      ['putPluginState', () => store.putPluginState('p', 'k', { a: 1 })],
      ['compareAndSetPluginState', () => store.compareAndSetPluginState('p', 'k2', undefined, { b: 1 })],
      ['putFederation', () => store.putFederation(rel, true)],
      ['saveFederatedBundle', () => store.saveFederatedBundle({ trustDomain: 'other.org', bundle: '{"keys":[]}', sequence: 1, updatedAt: now.toISOString() })],
      ['deleteFederation', () => store.deleteFederation('other.org')],
      ['evictAgent', () => store.evictAgent(agentId, false)],
    ];
    for (const [name, write] of writes) await expect(write(), name).rejects.toMatchObject({ code: 'store.sync_failed' });
    expect(sync.calls).toBe(1);
    // Nothing was committed after the failure: SQLite itself is read-only on this connection.
    const check = new Database(path, { readonly: true });
    expect(check.prepare('SELECT COUNT(*) AS n FROM entries').get()).toEqual({ n: 1 });
    expect(check.prepare('SELECT COUNT(*) AS n FROM agents').get()).toEqual({ n: 0 });
    check.close();
    expect(() => (store as unknown as { db: Database.Database }).db.prepare("INSERT INTO meta (key, value) VALUES ('x', '1')").run()).toThrow(/readonly/);
  });

  it('a missing log after a commit is a failed flush, never "nothing to flush"', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-sync-'));
    dirs.push(dir);
    const failures: SigilError[] = [];
    const w = new WalSync(join(dir, 'gone.db-wal'), undefined, (e) => failures.push(e));
    w.flushNow(); // before any commit there may be no log: nothing to do
    await expect(w.flush()).rejects.toThrow(/gone\.db-wal.*missing after a commit/);
    expect(failures).toHaveLength(1);
    await expect(w.flush()).rejects.toThrow(/refuses writes/);
  });

  it('flushes the log SQLite writes when sigil.db is a symbolic link (the log lies next to the target)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sigil-sqlite-sync-'));
    dirs.push(dir);
    mkdirSync(join(dir, 'volume'));
    mkdirSync(join(dir, 'data'));
    const target = join(dir, 'volume', 'real.db');
    new Database(target).close();
    symlinkSync(target, join(dir, 'data', 'sigil.db'));
    const sync = new HeldSync();
    const store = new SqliteStore(join(dir, 'data', 'sigil.db'), { sync: sync.fn });
    stores.push(store);
    const p = store.createEntry(entry('e1'));
    expect(sync.waiting).toBe(1);
    expect(existsSync(join(dir, 'data', 'sigil.db-wal'))).toBe(false);
    expect(sync.files).toEqual([`${realpathSync(target)}-wal`]);
    sync.release();
    await p;
    // With the real flush too: acknowledged writes through the link are there after reopening.
    await store.close();
    stores.splice(stores.indexOf(store), 1);
    const real = new SqliteStore(join(dir, 'data', 'sigil.db'));
    stores.push(real);
    await real.createEntry(entry('e2'));
    expect(await real.countEntries()).toBe(2);
  });

  it('every write method waits for its flush', async () => {
    const sync = new HeldSync();
    const { store } = open(sync);
    const now = new Date('2030-01-01T00:00:00.000Z');
    const secret = (s: string) => createHash('sha256').update(s).digest('hex');
    const tok = (id: string): JoinTokenRecord => ({ id, secretHash: secret(id), expiresAt: '2030-01-01T00:10:00.000Z', usedAt: null, spiffeId: null, createdAt: now.toISOString() });
    const agentId = `${TD}/sigil/agent/join_token/a1`;
    const agent: AgentRecord = { id: agentId, attestors: ['join_token'], selectors: ['join_token:id:a1'], serial: '0a', svidExpiresAt: '2030-01-01T01:00:00.000Z', attestedAt: now.toISOString(), banned: false, factorIds: [agentId] };
    const session: StoredSession = { id: randomUUID().replace(/-/g, ''), nonce: 'AA==', csrSpki: 'AA==', attestors: ['join_token'], states: {}, expiresAt: '2000-01-01T00:00:00.000Z' };
    const rel = { trustDomain: 'other.org', bundleEndpointUrl: 'https://other.org/bundle', profile: 'https_web' as const, createdAt: now.toISOString(), updatedAt: now.toISOString() };
    const writes: [string, () => Promise<unknown>][] = [
      ['createEntry', () => store.createEntry(entry('e1'))],
      ['createEntries', () => store.createEntries([entry('e2'), entry('e3')])],
      ['deleteEntry', () => store.deleteEntry('e2')],
      ['upsertAgent', () => store.upsertAgent(agent)],
      ['renewAgentSvid', () => store.renewAgentSvid(agentId, '0a', '0b', '2030-01-01T02:00:00.000Z')],
      ['createJoinToken', () => store.createJoinToken(tok('t1'))],
      ['useJoinToken', () => store.useJoinToken(secret('t1'), now)],
      ['createJoinTokenWithAlias', () => store.createJoinTokenWithAlias(tok('t2'), entry('e4'))],
      ['saveCaJournal', () => store.saveCaJournal('v1', { x509: [], jwt: [], sequence: 1 })],
      ['putSession', () => store.putSession(session)],
      ['takeSession', () => store.takeSession(session.id)],
      ['putSession (to sweep)', () => store.putSession({ ...session, id: 'f'.repeat(32) })],
      ['sweepSessions', () => store.sweepSessions(now)],
      ['putPluginState', () => store.putPluginState('p', 'k', { a: 1 })],
      ['compareAndSetPluginState (create)', () => store.compareAndSetPluginState('p', 'k2', undefined, { b: 1 })],
      ['compareAndSetPluginState (swap)', () => store.compareAndSetPluginState('p', 'k2', { b: 1 }, { b: 2 })],
      ['putFederation', () => store.putFederation(rel, true)],
      ['saveFederatedBundle', () => store.saveFederatedBundle({ trustDomain: 'other.org', bundle: '{"keys":[]}', sequence: 1, updatedAt: now.toISOString() })],
      ['deleteFederation', () => store.deleteFederation('other.org')],
      ['evictAgent', () => store.evictAgent(agentId, false)],
    ];
    for (const [name, write] of writes) {
      const before = sync.calls;
      const p = write();
      expect(sync.calls, `${name} starts a flush`).toBe(before + 1);
      expect(await settled(p), `${name} waits for its flush`).toBe(false);
      sync.release();
      const v = await p;
      // Each of these writes changed something (so none returns "nothing written").
      if (typeof v === 'boolean') expect(v, name).toBe(true);
      if (name === 'sweepSessions') expect(v).toBe(0);
    }
    // Writes that change nothing do not wait for a flush.
    const before = sync.calls;
    expect(await store.deleteEntry('no-such-entry')).toBe(false);
    expect(await store.renewAgentSvid(agentId, 'stale', '0c', '2030-01-01T02:00:00.000Z')).toBe(false);
    expect(await store.useJoinToken(secret('t1'), now)).toBeUndefined();
    expect(await store.takeSession(session.id)).toBeUndefined();
    expect(sync.calls).toBe(before);
  });

  it('with the real flush: acknowledged writes, one by one and concurrent, are there after reopening', async () => {
    const { store, path } = open();
    for (let i = 0; i < 20; i++) await store.createEntry(entry(`e${i}`));
    await Promise.all(Array.from({ length: 20 }, (_, i) => store.createEntry(entry(`c${i}`))));
    expect(existsSync(`${path}-wal`)).toBe(true);
    const check = new Database(path, { readonly: true });
    expect(check.prepare('SELECT COUNT(*) AS n FROM entries').get()).toEqual({ n: 40 });
    check.close();
    await store.close();
    stores.splice(stores.indexOf(store), 1);
    const again = new SqliteStore(path);
    stores.push(again);
    expect(await again.countEntries()).toBe(40);
  });

  it('close() lets a write waiting for the next flush have it, and a write that commits while close() waits', async () => {
    const sync = new HeldSync();
    const { store, path } = open(sync);
    const p1 = store.createEntry(entry('e1'));
    const p2 = store.createEntry(entry('e2')); // waits for flush 2
    const closing = store.close();
    const p3 = store.createEntry(entry('e3')); // commits while close() waits: shares flush 2
    sync.release();
    expect(await p1).toMatchObject({ id: 'e1' });
    expect(await settled(closing)).toBe(false);
    expect(sync.waiting).toBe(1);
    const p4 = store.createEntry(entry('e4')); // commits during flush 2: waits for flush 3
    sync.release();
    expect(await p2).toMatchObject({ id: 'e2' });
    expect(await p3).toMatchObject({ id: 'e3' });
    expect(await settled(closing)).toBe(false);
    expect(sync.waiting).toBe(1);
    sync.release();
    expect(await p4).toMatchObject({ id: 'e4' });
    await closing;
    expect(sync.calls).toBe(3);
    stores.splice(0);
    const again = new SqliteStore(path);
    stores.push(again);
    expect(await again.countEntries()).toBe(4);
  });

  it('close() waits for the flushes under way', async () => {
    const sync = new HeldSync();
    const { store } = open(sync);
    const p = store.createEntry(entry('e1'));
    const closing = store.close();
    expect(await settled(closing)).toBe(false);
    sync.release();
    await closing;
    expect(await p).toMatchObject({ id: 'e1' });
    stores.splice(0);
  });
});
