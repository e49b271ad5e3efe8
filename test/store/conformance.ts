/**
 * The DataStore conformance suite: every implementation (SQLite, PostgreSQL) must pass it
 * unchanged. Each test gets a fresh, empty store from `makeStore`.
 */
import { createHash, randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import type { AgentRecord, CaJournal, DataStore, JoinTokenRecord, NewEntry } from '../../src/store/types.js';
import { newEntry as entryWith } from '../support/entries.js';

export interface StoreUnderTest {
  store: DataStore;
  cleanup(): Promise<void>;
}

const TD = 'spiffe://example.org';
const VERIFIER = `${TD}/spire/server`;

function newEntry(over: Partial<NewEntry> = {}): NewEntry {
  return entryWith(`${TD}/workload/${randomUUID()}`, `${TD}/agent/one`, { selectors: ['unix:uid:1000', 'tpm:pcr:7:abc'], ...over });
}

function token(over: Partial<JoinTokenRecord> = {}, now = new Date('2030-01-01T00:00:00.000Z')): JoinTokenRecord {
  const secret = randomUUID();
  return {
    id: randomUUID(),
    secretHash: createHash('sha256').update(secret).digest('hex'),
    expiresAt: new Date(now.getTime() + 600_000).toISOString(),
    usedAt: null,
    spiffeId: null,
    createdAt: now.toISOString(),
    ...over,
  };
}

function agent(id: string, over: Partial<AgentRecord> = {}): AgentRecord {
  return {
    id,
    attestors: ['tpm', 'join_token'],
    selectors: ['tpm:ek_hash:00ff', 'join_token:id:x'],
    serial: '0a1b2c',
    svidExpiresAt: '2030-01-01T01:00:00.000Z',
    attestedAt: '2030-01-01T00:00:00.000Z',
    ...over,
    banned: over.banned ?? false,
    factorIds: over.factorIds ?? [id],
  };
}

async function expectSigil(p: Promise<unknown>, code: string, status?: number): Promise<SigilError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, `expected a SigilError ${code}`).toBeInstanceOf(SigilError);
  const se = err as SigilError;
  expect(se.code).toBe(code);
  if (status !== undefined) expect(se.status).toBe(status);
  return se;
}

const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

export function runStoreConformance(name: string, makeStore: () => Promise<StoreUnderTest>): void {
  describe(`DataStore conformance: ${name}`, () => {
    let current: StoreUnderTest | undefined;
    const fresh = async (): Promise<DataStore> => {
      current = await makeStore();
      return current.store;
    };
    afterEach(async () => {
      const c = current;
      current = undefined;
      if (c) await c.cleanup();
    });

    it('answers ping and starts empty', async () => {
      const s = await fresh();
      expect(typeof s.kind).toBe('string');
      await s.ping();
      expect(await s.countEntries()).toBe(0);
      expect(await s.entriesRevision()).toBe(0);
      expect(await s.listEntries()).toEqual([]);
      expect(await s.listAgents()).toEqual([]);
      expect(await s.countAgents()).toBe(0);
      expect(await s.loadCaJournal('v1')).toBeUndefined();
      expect(await s.listCaJournals()).toEqual([]);
      expect(await s.getPluginState('tpm', 'k')).toBeUndefined();
    });

    describe('entries', () => {
      it('creates an entry with a generated id, sorted selectors and the new revision, and reads it back identically', async () => {
        const s = await fresh();
        const created = await s.createEntry(
          newEntry({
            selectors: ['unix:uid:1000', 'k8s:ns:"quoted"', 'a:ü€😀', 'b:back\\slash'],
            dnsNames: ['z.example.org', 'a.example.org'],
            hint: 'web frontend',
            admin: true,
            x509SvidTtl: 3600,
            jwtSvidTtl: 300,
            expiresAt: '2031-02-03T04:05:06.789Z',
          }),
        );
        expect(created.id).toMatch(/^[0-9a-f-]{36}$/);
        expect(created.selectors).toEqual(['a:ü€😀', 'b:back\\slash', 'k8s:ns:"quoted"', 'unix:uid:1000']);
        expect(created.dnsNames).toEqual(['z.example.org', 'a.example.org']);
        expect(created.admin).toBe(true);
        expect(created.x509SvidTtl).toBe(3600);
        expect(created.jwtSvidTtl).toBe(300);
        expect(created.hint).toBe('web frontend');
        expect(created.expiresAt).toBe('2031-02-03T04:05:06.789Z');
        expect(created.createdAt).toMatch(ISO_RE);
        expect(Math.abs(Date.parse(created.createdAt) - Date.now())).toBeLessThan(60_000);
        expect(created.revisionNumber).toBe(1);
        expect(await s.entriesRevision()).toBe(1);
        expect(await s.getEntry(created.id)).toEqual(created);
        expect(await s.getEntry('no-such-id')).toBeUndefined();
        expect(await s.countEntries()).toBe(1);
      });

      it('keeps a caller-chosen id and rejects a duplicate id with entry.exists, changing nothing', async () => {
        const s = await fresh();
        const a = await s.createEntry(newEntry({ id: 'entry-1', admin: false }));
        expect(a.id).toBe('entry-1');
        expect(a.admin).toBe(false);
        expect(a.expiresAt).toBeNull();
        await expectSigil(s.createEntry(newEntry({ id: 'entry-1' })), 'entry.exists', 409);
        expect(await s.countEntries()).toBe(1);
        expect(await s.entriesRevision()).toBe(1);
        expect(await s.getEntry('entry-1')).toEqual(a);
      });

      it('bumps the revision on every create and successful delete, not on a missed delete', async () => {
        const s = await fresh();
        const revs: number[] = [];
        for (let i = 0; i < 5; i++) revs.push((await s.createEntry(newEntry())).revisionNumber);
        expect(revs).toEqual([1, 2, 3, 4, 5]);
        const e = await s.createEntry(newEntry({ id: 'gone' }));
        expect(e.revisionNumber).toBe(6);
        expect(await s.deleteEntry('gone')).toBe(true);
        expect(await s.entriesRevision()).toBe(7);
        expect(await s.getEntry('gone')).toBeUndefined();
        expect(await s.deleteEntry('gone')).toBe(false);
        expect(await s.deleteEntry('never-was')).toBe(false);
        expect(await s.entriesRevision()).toBe(7);
        expect(await s.countEntries()).toBe(5);
        // The id is free again after delete.
        expect((await s.createEntry(newEntry({ id: 'gone' }))).revisionNumber).toBe(8);
      });

      it('createEntries gives each entry its own consecutive revision, in input order', async () => {
        const s = await fresh();
        await s.createEntry(newEntry());
        expect(await s.createEntries([])).toEqual([]);
        expect(await s.entriesRevision()).toBe(1);
        const batch = await s.createEntries([newEntry({ id: 'b1' }), newEntry({ id: 'b2' }), newEntry({ id: 'b3', selectors: ['z:1', 'a:1'] })]);
        expect(batch.map((e) => e.id)).toEqual(['b1', 'b2', 'b3']);
        expect(batch.map((e) => e.revisionNumber)).toEqual([2, 3, 4]);
        expect(batch[2]!.selectors).toEqual(['a:1', 'z:1']);
        expect(await s.entriesRevision()).toBe(4);
        for (const e of batch) expect(await s.getEntry(e.id)).toEqual(e);
      });

      it('createEntries is all or nothing (clash with a stored id, and a duplicate inside the batch)', async () => {
        const s = await fresh();
        await s.createEntry(newEntry({ id: 'taken' }));
        await expectSigil(s.createEntries([newEntry({ id: 'n1' }), newEntry({ id: 'taken' }), newEntry({ id: 'n3' })]), 'entry.exists', 409);
        expect(await s.getEntry('n1')).toBeUndefined();
        expect(await s.getEntry('n3')).toBeUndefined();
        await expectSigil(s.createEntries([newEntry({ id: 'd1' }), newEntry({ id: 'd1' })]), 'entry.exists', 409);
        expect(await s.getEntry('d1')).toBeUndefined();
        expect(await s.countEntries()).toBe(1);
        expect(await s.entriesRevision()).toBe(1);
        // The store is still usable after the rolled-back transactions.
        expect((await s.createEntry(newEntry({ id: 'n1' }))).revisionNumber).toBe(2);
      });

      it('lists with parentId / spiffeId filters, creation order with id as tie-break (byte order), limit and offset', async () => {
        const s = await fresh();
        // One batch: created_at is non-decreasing in input order and often equal, so the id
        // tie-break decides; ids given in byte order ('Z' < 'a'), which a locale collation would reverse.
        const all = await s.createEntries([
          newEntry({ id: 'Z-1', parentId: `${TD}/p1`, spiffeId: `${TD}/w/x` }),
          newEntry({ id: 'a-1', parentId: `${TD}/p1`, spiffeId: `${TD}/w/y` }),
          newEntry({ id: 'b-1', parentId: `${TD}/p2`, spiffeId: `${TD}/w/x` }),
        ]);
        // Make sure the next entry is created in a later millisecond.
        const last = Math.max(...all.map((e) => Date.parse(e.createdAt)));
        while (Date.now() <= last) await new Promise((r) => setTimeout(r, 2));
        const later = await s.createEntry(newEntry({ id: '0-later', parentId: `${TD}/p1`, spiffeId: `${TD}/w/x` }));
        const ids = (es: { id: string }[]): string[] => es.map((e) => e.id);
        const listed = await s.listEntries();
        expect(ids(listed)).toEqual(['Z-1', 'a-1', 'b-1', '0-later']);
        expect(listed).toEqual([...all, later]);
        expect(ids(await s.listEntries({ parentId: `${TD}/p1` }))).toEqual(['Z-1', 'a-1', '0-later']);
        expect(ids(await s.listEntries({ spiffeId: `${TD}/w/x` }))).toEqual(['Z-1', 'b-1', '0-later']);
        expect(ids(await s.listEntries({ parentId: `${TD}/p1`, spiffeId: `${TD}/w/x` }))).toEqual(['Z-1', '0-later']);
        expect(ids(await s.listEntries({ parentId: `${TD}/none` }))).toEqual([]);
        expect(ids(await s.listEntries({ limit: 2 }))).toEqual(['Z-1', 'a-1']);
        expect(ids(await s.listEntries({ limit: 2, offset: 2 }))).toEqual(['b-1', '0-later']);
        expect(ids(await s.listEntries({ offset: 3 }))).toEqual(['0-later']);
        expect(ids(await s.listEntries({ limit: 0 }))).toEqual([]);
        expect(ids(await s.listEntries({ limit: -1 }))).toHaveLength(4);
        expect(ids(await s.listEntries({ offset: 10 }))).toEqual([]);
      });

      it('entriesByParents returns exactly the children of the given parents, for more than 500 parents', async () => {
        const s = await fresh();
        const N = 620;
        const parents = Array.from({ length: N }, (_, i) => `${TD}/agent/${String(i).padStart(4, '0')}`);
        const children = await s.createEntries(parents.map((p, i) => newEntry({ id: `child-${i}`, parentId: p })));
        const extra = await s.createEntry(newEntry({ id: 'child-extra', parentId: parents[N - 1] }));
        await s.createEntry(newEntry({ id: 'unrelated', parentId: `${TD}/agent/other` }));
        const nodeEntry = await s.createEntry(newEntry({ id: 'node', parentId: VERIFIER }));

        const got = await s.entriesByParents(parents);
        expect(got.map((e) => e.id).sort()).toEqual([...children.map((e) => e.id), extra.id].sort());
        const byId = new Map(got.map((e) => [e.id, e]));
        expect(byId.get('child-7')).toEqual(children[7]);
        expect(await s.entriesByParents([])).toEqual([]);
        expect(await s.entriesByParents([`${TD}/agent/nobody`])).toEqual([]);
        expect(await s.entriesByParents([VERIFIER])).toEqual([nodeEntry]);
        // Repeating a parent does not repeat its children.
        const twice = await s.entriesByParents([parents[N - 1]!, parents[N - 1]!, parents[0]!]);
        expect(twice.map((e) => e.id).sort()).toEqual(['child-0', `child-${N - 1}`, 'child-extra'].sort());
      });
    });

    describe('agents', () => {
      it('upserts, reads, updates and lists agents in id order', async () => {
        const s = await fresh();
        const b = agent(`${TD}/spire/agent/b`);
        const a = agent(`${TD}/spire/agent/a`, { attestors: ['aws_nitro'], selectors: ['aws_nitro:pcr0:ff'] });
        await s.upsertAgent(b);
        await s.upsertAgent(a);
        expect(await s.getAgent(b.id)).toEqual(b);
        expect(await s.getAgent(`${TD}/spire/agent/none`)).toBeUndefined();
        const b2 = { ...b, serial: 'ffee', svidExpiresAt: '2030-01-02T00:00:00.000Z', attestedAt: '2030-01-01T12:00:00.000Z', selectors: ['tpm:ek_hash:11'] };
        await s.upsertAgent(b2);
        expect(await s.getAgent(b.id)).toEqual(b2);
        expect(await s.listAgents()).toEqual([a, b2]);
        expect(await s.countAgents()).toBe((await s.listAgents()).length);
      });

      it('evicts (deletes) or bans (keeps the record, banned, with no accepted serial)', async () => {
        const s = await fresh();
        const a = agent(`${TD}/spire/agent/a`);
        const b = agent(`${TD}/spire/agent/b`);
        await s.upsertAgent(a);
        await s.upsertAgent(b);
        expect(await s.evictAgent(a.id, false)).toBe(true);
        expect(await s.getAgent(a.id)).toBeUndefined();
        expect(await s.evictAgent(a.id, false)).toBe(false);
        expect(await s.evictAgent(b.id, true)).toBe(true);
        expect(await s.getAgent(b.id)).toEqual({ ...b, banned: true, serial: '' });
        expect(await s.evictAgent(`${TD}/spire/agent/none`, true)).toBe(false);
        expect(await s.getAgent(`${TD}/spire/agent/none`)).toBeUndefined();
        expect((await s.listAgents()).map((x) => x.id)).toEqual([b.id]);
        expect(await s.countAgents()).toBe((await s.listAgents()).length);
        // A banned record is never overwritten, whatever the caller passes (even banned: true).
        expect(await s.upsertAgent({ ...b, banned: true, serial: '99' })).toBe(false);
        expect(await s.getAgent(b.id)).toEqual({ ...b, banned: true, serial: '' });
      });

      it('upsertAgent reports that it wrote a new or unbanned record, and never clears or overwrites a ban', async () => {
        const s = await fresh();
        const a = agent(`${TD}/spire/agent/a`, { serial: 'ee01' });
        expect(await s.upsertAgent(a)).toBe(true);
        const a2 = { ...a, serial: 'ee02', attestedAt: '2030-01-01T00:30:00.000Z' };
        expect(await s.upsertAgent(a2)).toBe(true);
        expect(await s.getAgent(a.id)).toEqual(a2);
        expect(await s.evictAgent(a.id, true)).toBe(true);
        const bannedA = { ...a2, banned: true, serial: '' };
        for (const attempt of [{ ...a, serial: 'ee03' }, { ...a, serial: 'ee04', banned: true }, { ...a, serial: '' }]) {
          expect(await s.upsertAgent(attempt)).toBe(false);
          expect(await s.getAgent(a.id)).toEqual(bannedA);
        }
        // Only the ban's own row is affected: another agent is still written.
        const b = agent(`${TD}/spire/agent/b`);
        expect(await s.upsertAgent(b)).toBe(true);
        expect(await s.listAgents()).toEqual([bannedA, b]);
        expect(await s.countAgents()).toBe((await s.listAgents()).length);
        // An eviction without ban removes the record; attesting again re-creates it.
        expect(await s.evictAgent(b.id, false)).toBe(true);
        expect(await s.upsertAgent({ ...b, serial: 'ff01' })).toBe(true);
        expect(await s.getAgent(b.id)).toEqual({ ...b, serial: 'ff01' });
      });

      it('a ban that lands between attestation\'s ban check and its write stands', async () => {
        const s = await fresh();
        const a = agent(`${TD}/spire/agent/a`, { serial: 'ab01' });
        expect(await s.upsertAgent(a)).toBe(true);
        // Attestation reads the record: not banned, so it goes on (commits factors, signs an SVID)...
        expect((await s.getAgent(a.id))?.banned).toBe(false);
        // ...an operator runs `agent evict --ban` meanwhile...
        expect(await s.evictAgent(a.id, true)).toBe(true);
        // ...and attestation's write, which says banned: false, is refused: the ban is not undone.
        expect(await s.upsertAgent({ ...a, serial: 'ab02', attestedAt: '2030-01-01T00:05:00.000Z', banned: false })).toBe(false);
        expect(await s.getAgent(a.id)).toEqual({ ...a, banned: true, serial: '' });
        // Nor by a renewal with the serial attestation would have issued.
        expect(await s.renewAgentSvid(a.id, 'ab02', 'ab03', '2030-01-01T02:00:00.000Z')).toBe(false);
        expect(await s.getAgent(a.id)).toEqual({ ...a, banned: true, serial: '' });
      });

      it('a ban racing concurrent attestation writes always stands', async () => {
        const s = await fresh();
        for (let round = 0; round < 5; round++) {
          const a = agent(`${TD}/spire/agent/race-${round}`, { serial: 'c000' });
          expect(await s.upsertAgent(a)).toBe(true);
          const writes = Array.from({ length: 8 }, (_, i) => ({ ...a, serial: `c${String(i + 1).padStart(3, '0')}` }));
          const [banResult] = await Promise.all([s.evictAgent(a.id, true), ...writes.map((w) => s.upsertAgent(w))]);
          expect(banResult).toBe(true);
          expect(await s.getAgent(a.id)).toEqual({ ...a, banned: true, serial: '' });
          // Once banned, every further write is refused.
          expect(await s.upsertAgent(writes[0]!)).toBe(false);
        }
      });

      it('renewAgentSvid updates serial and expiry only while the agent holds the expected serial, unbanned', async () => {
        const s = await fresh();
        const a = agent(`${TD}/spire/agent/a`, { serial: 'aa01' });
        await s.upsertAgent(a);
        expect(await s.renewAgentSvid(a.id, 'aa01', 'aa02', '2030-01-01T02:00:00.000Z')).toBe(true);
        const renewed = { ...a, serial: 'aa02', svidExpiresAt: '2030-01-01T02:00:00.000Z' };
        expect(await s.getAgent(a.id)).toEqual(renewed);
        // The old serial is no longer the current one: a second renewal with it changes nothing.
        expect(await s.renewAgentSvid(a.id, 'aa01', 'aa03', '2030-01-01T03:00:00.000Z')).toBe(false);
        expect(await s.getAgent(a.id)).toEqual(renewed);
        expect(await s.renewAgentSvid(`${TD}/spire/agent/none`, 'aa02', 'aa04', '2030-01-01T03:00:00.000Z')).toBe(false);
        expect(await s.getAgent(`${TD}/spire/agent/none`)).toBeUndefined();
      });

      it('a renewal that lands after an eviction or a ban is refused and does not undo it', async () => {
        const s = await fresh();
        const a = agent(`${TD}/spire/agent/a`, { serial: 'bb01' });
        const b = agent(`${TD}/spire/agent/b`, { serial: 'cc01' });
        await s.upsertAgent(a);
        await s.upsertAgent(b);
        // The renew route read both rows (serials bb01 / cc01); then an operator evicts a and bans b.
        const readA = await s.getAgent(a.id);
        const readB = await s.getAgent(b.id);
        expect(readA?.serial).toBe('bb01');
        expect(await s.evictAgent(a.id, false)).toBe(true);
        expect(await s.evictAgent(b.id, true)).toBe(true);
        // Now the route's write: conditional, so it is refused and the eviction / ban stand.
        expect(await s.renewAgentSvid(a.id, readA!.serial, 'bb02', '2030-01-01T02:00:00.000Z')).toBe(false);
        expect(await s.getAgent(a.id)).toBeUndefined();
        expect(await s.listAgents()).toEqual([{ ...b, banned: true, serial: '' }]);
        expect(await s.countAgents()).toBe((await s.listAgents()).length);
        expect(await s.renewAgentSvid(b.id, readB!.serial, 'cc02', '2030-01-01T02:00:00.000Z')).toBe(false);
        expect(await s.getAgent(b.id)).toEqual({ ...b, banned: true, serial: '' });
        // Even a caller that passes the banned row's (empty) serial cannot revive it.
        expect(await s.renewAgentSvid(b.id, '', 'cc03', '2030-01-01T02:00:00.000Z')).toBe(false);
        expect(await s.getAgent(b.id)).toEqual({ ...b, banned: true, serial: '' });
      });

      it('keeps every factor ID of the attestation; an old-style empty list reads as the agent\'s own ID', async () => {
        const s = await fresh();
        const a = agent(`${TD}/sigil/agent/tpm/aa`, { factorIds: [`${TD}/sigil/agent/tpm/aa`, `${TD}/sigil/agent/join_token/t1`] });
        expect(await s.upsertAgent(a)).toBe(true);
        expect(await s.getAgent(a.id)).toEqual(a);
        // Attesting again with other factors replaces the list.
        const a2 = { ...a, serial: 'ab99', factorIds: [a.id] };
        expect(await s.upsertAgent(a2)).toBe(true);
        expect(await s.getAgent(a.id)).toEqual(a2);
        const b = agent(`${TD}/sigil/agent/x/b`, { factorIds: [] });
        expect(await s.upsertAgent(b)).toBe(true);
        expect((await s.getAgent(b.id))?.factorIds).toEqual([b.id]);
      });

      it('evicting deletes the plugin state of every factor of the evicted agent, in the same transaction', async () => {
        const s = await fresh();
        const tpmId = `${TD}/sigil/agent/tpm/e1`;
        const tokId = `${TD}/sigil/agent/join_token/t1`;
        // The node attested with join_token first and tpm second: its record is the join_token ID.
        const a = agent(tokId, { factorIds: [tokId, tpmId] });
        const other = agent(`${TD}/sigil/agent/tpm/e2`);
        await s.upsertAgent(a);
        await s.upsertAgent(other);
        const c = { resetCount: 5, restartCount: 0, clock: '100' };
        await s.putPluginState('tpm', 'counters:e1', c);
        await s.putPluginState('tpm', 'counters:e2', c);
        await s.putPluginState('tpm', 'unrelated', 1);
        const asked: string[] = [];
        const map = (id: string) => {
          asked.push(id);
          return id.startsWith(`${TD}/sigil/agent/tpm/`) ? [{ plugin: 'tpm', key: `counters:${id.split('/').pop()}` }] : [];
        };
        // An eviction that finds neither a record nor state of the ID changes nothing.
        expect(await s.evictAgent(`${TD}/sigil/agent/tpm/none`, false, map)).toBe(false);
        expect(asked).toEqual([`${TD}/sigil/agent/tpm/none`]);
        expect(await s.evictAgent(`${TD}/sigil/agent/tpm/none`, true, map)).toBe(false);
        expect(asked).toEqual([`${TD}/sigil/agent/tpm/none`]);
        asked.length = 0;
        expect(await s.evictAgent(tokId, false, map)).toBe(true);
        expect(asked.sort()).toEqual([tokId, tpmId].sort());
        expect(await s.getAgent(tokId)).toBeUndefined();
        expect(await s.getPluginState('tpm', 'counters:e1')).toBeUndefined();
        // Other EKs' counters and other keys stay.
        expect(await s.getPluginState('tpm', 'counters:e2')).toEqual(c);
        expect(await s.getPluginState('tpm', 'unrelated')).toBe(1);
        expect(await s.getAgent(other.id)).toEqual(other);
        // Without a mapper only the agent record goes.
        expect(await s.evictAgent(other.id, false)).toBe(true);
        expect(await s.getPluginState('tpm', 'counters:e2')).toEqual(c);
        // State of an ID that no record is or names (left by a session that failed after its factor
        // committed) goes with an eviction of that ID; a ban of it finds nothing to ban.
        await s.putPluginState('tpm', 'counters:e3', c);
        expect(await s.evictAgent(`${TD}/sigil/agent/tpm/e3`, true, map)).toBe(false);
        expect(await s.getPluginState('tpm', 'counters:e3')).toEqual(c);
        expect(await s.evictAgent(`${TD}/sigil/agent/tpm/e3`, false, map)).toBe(true);
        expect(await s.getPluginState('tpm', 'counters:e3')).toBeUndefined();
        expect(await s.getAgent(`${TD}/sigil/agent/tpm/e3`)).toBeUndefined();
        // A ban resets them too.
        const d = agent(`${TD}/sigil/agent/tpm/e2`);
        await s.upsertAgent(d);
        expect(await s.evictAgent(d.id, true, map)).toBe(true);
        expect(await s.getPluginState('tpm', 'counters:e2')).toBeUndefined();
        expect(await s.getAgent(d.id)).toEqual({ ...d, banned: true, serial: '' });
      });

      it('an eviction whose plugin state step fails changes nothing (one transaction)', async () => {
        const s = await fresh();
        const a = agent(`${TD}/sigil/agent/tpm/e1`);
        await s.upsertAgent(a);
        await s.putPluginState('tpm', 'counters:e1', { resetCount: 1, restartCount: 0, clock: '1' });
        for (const ban of [false, true]) {
          const failing = () => {
            throw new Error('mapper failed');
          };
          await expect(s.evictAgent(a.id, ban, failing)).rejects.toThrow();
          expect(await s.getAgent(a.id)).toEqual(a);
          expect(await s.getPluginState('tpm', 'counters:e1')).toEqual({ resetCount: 1, restartCount: 0, clock: '1' });
        }
      });

      it('evicting a secondary factor\'s ID evicts every agent that presented it', async () => {
        const s = await fresh();
        const tpmId = `${TD}/sigil/agent/tpm/e1`;
        const a = agent(`${TD}/sigil/agent/join_token/t1`, { factorIds: [`${TD}/sigil/agent/join_token/t1`, tpmId] });
        const b = agent(`${TD}/sigil/agent/join_token/t2`, { factorIds: [`${TD}/sigil/agent/join_token/t2`] });
        await s.upsertAgent(a);
        await s.upsertAgent(b);
        await s.putPluginState('tpm', 'counters:e1', 7);
        expect(await s.evictAgent(tpmId, false, (id) => (id === tpmId ? [{ plugin: 'tpm', key: 'counters:e1' }] : []))).toBe(true);
        expect(await s.getAgent(a.id)).toBeUndefined();
        expect(await s.getAgent(b.id)).toEqual(b);
        expect(await s.getPluginState('tpm', 'counters:e1')).toBeUndefined();
      });

      it('banning a factor ID with no record of its own keeps a banned record; renewal is refused while any factor is banned', async () => {
        const s = await fresh();
        const tpmId = `${TD}/sigil/agent/tpm/e1`;
        const a = agent(`${TD}/sigil/agent/join_token/t1`, { serial: 'ee01', factorIds: [`${TD}/sigil/agent/join_token/t1`, tpmId] });
        await s.upsertAgent(a);
        expect(await s.renewAgentSvid(a.id, 'ee01', 'ee02', '2030-01-01T02:00:00.000Z')).toBe(true);
        const renewed = { ...a, serial: 'ee02', svidExpiresAt: '2030-01-01T02:00:00.000Z' };
        // An ID that is nobody's record nor factor cannot be banned.
        expect(await s.evictAgent(`${TD}/sigil/agent/tpm/none`, true)).toBe(false);
        expect(await s.getAgent(`${TD}/sigil/agent/tpm/none`)).toBeUndefined();
        expect(await s.evictAgent(tpmId, true)).toBe(true);
        const placeholder = (await s.getAgent(tpmId)) as AgentRecord;
        expect(placeholder).toMatchObject({ id: tpmId, banned: true, serial: '', attestors: [], selectors: [], factorIds: [tpmId] });
        expect(placeholder.attestedAt).toMatch(ISO_RE);
        // The agent that presented it keeps its record, but cannot renew.
        expect(await s.getAgent(a.id)).toEqual(renewed);
        expect(await s.renewAgentSvid(a.id, 'ee02', 'ee03', '2030-01-01T03:00:00.000Z')).toBe(false);
        expect(await s.getAgent(a.id)).toEqual(renewed);
        // Attestation cannot overwrite the banned factor record either.
        expect(await s.upsertAgent(agent(tpmId, { serial: 'ff01' }))).toBe(false);
        // Banning it again is fine; evicting it without ban lifts the ban and evicts the agents naming it.
        expect(await s.evictAgent(tpmId, true)).toBe(true);
        expect(await s.evictAgent(tpmId, false)).toBe(true);
        expect(await s.getAgent(tpmId)).toBeUndefined();
        expect(await s.getAgent(a.id)).toBeUndefined();
      });

      it('of 10 concurrent renewals from the same SVID exactly one wins', async () => {
        const s = await fresh();
        const a = agent(`${TD}/spire/agent/a`, { serial: 'dd00' });
        await s.upsertAgent(a);
        const serials = Array.from({ length: 10 }, (_, i) => `dd${String(i + 1).padStart(2, '0')}`);
        const results = await Promise.all(serials.map((n) => s.renewAgentSvid(a.id, 'dd00', n, '2030-01-01T02:00:00.000Z')));
        expect(results.filter(Boolean)).toHaveLength(1);
        expect((await s.getAgent(a.id))?.serial).toBe(serials[results.indexOf(true)]);
      });
    });

    describe('join tokens', () => {
      const now = new Date('2030-01-01T00:00:00.000Z');

      it('stores a token (never as used) and finds it by hash', async () => {
        const s = await fresh();
        const t = token({ spiffeId: `${TD}/node/alias` }, now);
        await s.createJoinToken({ ...t, usedAt: '2029-01-01T00:00:00.000Z' });
        expect(await s.getJoinTokenByHash(t.secretHash)).toEqual(t);
        expect(await s.getJoinTokenByHash('00'.repeat(32))).toBeUndefined();
        await expect(s.createJoinToken(t)).rejects.toThrow();
        await expect(s.createJoinToken({ ...t, id: randomUUID() })).rejects.toThrow();
      });

      it('uses a token once, only while unexpired', async () => {
        const s = await fresh();
        const t = token({}, now);
        await s.createJoinToken(t);
        const used = await s.useJoinToken(t.secretHash, new Date(now.getTime() + 1000));
        expect(used).toEqual({ ...t, usedAt: '2030-01-01T00:00:01.000Z' });
        expect(await s.getJoinTokenByHash(t.secretHash)).toEqual(used);
        expect(await s.useJoinToken(t.secretHash, new Date(now.getTime() + 2000))).toBeUndefined();
        expect(await s.useJoinToken('11'.repeat(32), now)).toBeUndefined();

        const exp = token({}, now);
        await s.createJoinToken(exp);
        // Expiry is exclusive: at expiresAt the token is already dead.
        expect(await s.useJoinToken(exp.secretHash, new Date(exp.expiresAt))).toBeUndefined();
        expect(await s.useJoinToken(exp.secretHash, new Date(Date.parse(exp.expiresAt) + 1))).toBeUndefined();
        expect((await s.getJoinTokenByHash(exp.secretHash))?.usedAt).toBeNull();
        expect(await s.useJoinToken(exp.secretHash, new Date(Date.parse(exp.expiresAt) - 1))).toBeDefined();
      });

      it('lets exactly one of 20 concurrent useJoinToken calls win', async () => {
        const s = await fresh();
        const t = token({}, now);
        await s.createJoinToken(t);
        const results = await Promise.all(Array.from({ length: 20 }, (_, i) => s.useJoinToken(t.secretHash, new Date(now.getTime() + 1000 + i))));
        const winners = results.filter((r) => r !== undefined);
        expect(winners).toHaveLength(1);
        expect((await s.getJoinTokenByHash(t.secretHash))?.usedAt).toBe(winners[0]!.usedAt);
      });

      it('createJoinTokenWithAlias writes the token and the alias entry together', async () => {
        const s = await fresh();
        const t = token({ spiffeId: `${TD}/node/n1` }, now);
        const e = await s.createJoinTokenWithAlias(t, newEntry({ spiffeId: `${TD}/node/n1`, parentId: VERIFIER, selectors: [`join_token:id:${t.id}`] }));
        expect(e.revisionNumber).toBe(1);
        expect(await s.getEntry(e.id)).toEqual(e);
        expect(await s.getJoinTokenByHash(t.secretHash)).toEqual(t);
        expect(await s.entriesRevision()).toBe(1);
      });

      it('createJoinTokenWithAlias leaves nothing behind when either half fails', async () => {
        const s = await fresh();
        await s.createEntry(newEntry({ id: 'alias-taken' }));
        const t1 = token({}, now);
        await expectSigil(s.createJoinTokenWithAlias(t1, newEntry({ id: 'alias-taken' })), 'entry.exists', 409);
        expect(await s.getJoinTokenByHash(t1.secretHash)).toBeUndefined();

        const t2 = token({}, now);
        await s.createJoinToken(t2);
        await expect(s.createJoinTokenWithAlias({ ...t2, id: randomUUID() }, newEntry({ id: 'alias-new' }))).rejects.toThrow();
        expect(await s.getEntry('alias-new')).toBeUndefined();
        expect(await s.countEntries()).toBe(1);
        expect(await s.entriesRevision()).toBe(1);
      });
    });

    describe('CA journal and plugin state', () => {
      it('round-trips the CA journal and overwrites it', async () => {
        const s = await fresh();
        const j: CaJournal = {
          x509: [
            {
              id: 'ca-1',
              keyType: 'ec-p256',
              certDer: Buffer.from('cert').toString('base64'),
              upstreamChain: [Buffer.from('int').toString('base64')],
              keyFile: 'ca-1.p8',
              notBefore: '2030-01-01T00:00:00.000Z',
              notAfter: '2030-01-02T00:00:00.000Z',
              state: 'active',
            },
          ],
          jwt: [{ kid: 'k1', keyType: 'ec-p256', keyFile: 'jwt-1.p8', publicKey: 'MFkw', notBefore: '2030-01-01T00:00:00.000Z', notAfter: '2030-01-02T00:00:00.000Z', state: 'prepared' }],
          sequence: 3,
        };
        await s.saveCaJournal('v1', j);
        expect(await s.loadCaJournal('v1')).toEqual(j);
        const j2: CaJournal = { ...j, x509: [{ ...j.x509[0]!, state: 'old' }], sequence: 4 };
        await s.saveCaJournal('v1', j2);
        expect(await s.loadCaJournal('v1')).toEqual(j2);
        // One journal per verifier instance; listed in instance order.
        const other: CaJournal = { x509: [], jwt: [], sequence: 1, upstreamRoot: Buffer.from('root').toString('base64') };
        await s.saveCaJournal('v0', other);
        expect(await s.loadCaJournal('v1')).toEqual(j2);
        expect(await s.listCaJournals()).toEqual([
          { instance: 'v0', journal: other },
          { instance: 'v1', journal: j2 },
        ]);
      });
    });

    describe('attestation sessions', () => {
      const sess = (id: string, expiresAt: string) => ({
        id,
        nonce: Buffer.alloc(32, 1).toString('base64'),
        csrSpki: Buffer.from('spki').toString('base64'),
        attestors: ['tpm', 'sev_snp'],
        states: { tpm: { secret: 'c2VjcmV0', n: [1, 2] }, sev_snp: { certs: {} } },
        expiresAt,
      });

      it('stores a session and hands it out exactly once', async () => {
        const s = await fresh();
        const a = sess('a'.repeat(32), '2099-01-01T00:00:00.000Z');
        await s.putSession(a);
        expect(await s.hasSession(a.id, new Date())).toBe(true);
        expect(await s.hasSession(a.id, new Date('2099-01-01T00:00:00.000Z'))).toBe(false);
        const takers = await Promise.all(Array.from({ length: 10 }, () => s.takeSession(a.id)));
        expect(takers.filter((t) => t !== undefined)).toEqual([a]);
        expect(await s.takeSession(a.id)).toBeUndefined();
        expect(await s.takeSession('unknown')).toBeUndefined();
        expect(await s.hasSession(a.id, new Date())).toBe(false);
        expect(await s.hasSession('unknown', new Date())).toBe(false);
      });

      it('sweeps expired sessions and counts the open ones', async () => {
        const s = await fresh();
        await s.putSession(sess('old', '2020-01-01T00:00:00.000Z'));
        await s.putSession(sess('new', '2099-01-01T00:00:00.000Z'));
        expect(await s.sweepSessions(new Date('2030-01-01T00:00:00Z'))).toBe(1);
        expect(await s.takeSession('old')).toBeUndefined();
        expect((await s.takeSession('new'))?.id).toBe('new');
      });

      it('stores plugin state per (plugin, key), any JSON value, and overwrites it', async () => {
        const s = await fresh();
        const values: unknown[] = [{ a: 1, nested: { b: [1, 'two', null, true] } }, 42, 'text with "quotes", \\ and \u0000', null, [3, 2, 1], false];
        for (const [i, v] of values.entries()) await s.putPluginState('tpm', `k${i}`, v);
        for (const [i, v] of values.entries()) expect(await s.getPluginState('tpm', `k${i}`)).toEqual(v);
        expect(await s.getPluginState('tpm', 'k3')).toBeNull();
        expect(await s.getPluginState('sev_snp', 'k0')).toBeUndefined();
        await s.putPluginState('sev_snp', 'k0', { other: true });
        await s.putPluginState('tpm', 'k0', { replaced: 1 });
        expect(await s.getPluginState('tpm', 'k0')).toEqual({ replaced: 1 });
        expect(await s.getPluginState('sev_snp', 'k0')).toEqual({ other: true });
      });

      it('compareAndSetPluginState writes only over the expected value (undefined = absent), per (plugin, key)', async () => {
        const s = await fresh();
        const c1 = { resetCount: 1, restartCount: 0, clock: '100' };
        const c2 = { resetCount: 1, restartCount: 0, clock: '200' };
        // Create: only while nothing is stored.
        expect(await s.compareAndSetPluginState('tpm', 'counters:x', undefined, c1)).toBe(true);
        expect(await s.getPluginState('tpm', 'counters:x')).toEqual(c1);
        expect(await s.compareAndSetPluginState('tpm', 'counters:x', undefined, c2)).toBe(false);
        expect(await s.getPluginState('tpm', 'counters:x')).toEqual(c1);
        // Swap: only over exactly what is stored (as read back by getPluginState).
        const read = await s.getPluginState('tpm', 'counters:x');
        expect(await s.compareAndSetPluginState('tpm', 'counters:x', read, c2)).toBe(true);
        expect(await s.getPluginState('tpm', 'counters:x')).toEqual(c2);
        // The value read before is stale now: a second writer holding it is refused.
        expect(await s.compareAndSetPluginState('tpm', 'counters:x', read, { ...c1, clock: '150' })).toBe(false);
        expect(await s.getPluginState('tpm', 'counters:x')).toEqual(c2);
        expect(await s.compareAndSetPluginState('tpm', 'counters:x', { ...c2, clock: '201' }, c1)).toBe(false);
        expect(await s.compareAndSetPluginState('tpm', 'counters:x', null, c1)).toBe(false);
        expect(await s.getPluginState('tpm', 'counters:x')).toEqual(c2);
        // Another plugin's or another key's state is a separate slot.
        expect(await s.compareAndSetPluginState('sev_snp', 'counters:x', c2, c1)).toBe(false);
        expect(await s.getPluginState('sev_snp', 'counters:x')).toBeUndefined();
        expect(await s.compareAndSetPluginState('sev_snp', 'counters:x', undefined, 'v')).toBe(true);
        expect(await s.compareAndSetPluginState('tpm', 'counters:y', c2, c1)).toBe(false);
        expect(await s.getPluginState('tpm', 'counters:y')).toBeUndefined();
        expect(await s.getPluginState('tpm', 'counters:x')).toEqual(c2);
        // Any JSON value works as expected and next, including null and values put() wrote.
        for (const v of [null, 0, 'text with "quotes"', [1, 'two', null], { nested: { b: [true, false] } }]) {
          await s.putPluginState('p', 'k', v);
          expect(await s.compareAndSetPluginState('p', 'k', await s.getPluginState('p', 'k'), { after: v })).toBe(true);
          expect(await s.getPluginState('p', 'k')).toEqual({ after: v });
        }
      });

      it('of 10 concurrent compare-and-sets from the same read, exactly one wins (create and swap)', async () => {
        const s = await fresh();
        const created = await Promise.all(Array.from({ length: 10 }, (_, i) => s.compareAndSetPluginState('tpm', 'k', undefined, { n: i })));
        expect(created.filter(Boolean)).toHaveLength(1);
        const first = await s.getPluginState('tpm', 'k');
        expect(first).toEqual({ n: created.indexOf(true) });
        const swapped = await Promise.all(Array.from({ length: 10 }, (_, i) => s.compareAndSetPluginState('tpm', 'k', first, { m: i })));
        expect(swapped.filter(Boolean)).toHaveLength(1);
        expect(await s.getPluginState('tpm', 'k')).toEqual({ m: swapped.indexOf(true) });
      });
    });
  });
}
