import { describe, expect, it } from 'vitest';
import { pino } from 'pino';
import { SvidCache, entryMatches, rotationTime } from '../../src/agent/svid-cache.js';
import type { AuthorizedEntry } from '../../src/agent/verifier-client.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { mintJwtSvidSync } from '../../src/spiffe/jwtsvid.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { waitFor } from './harness.js';

const logger = pino({ level: 'silent' });
const T0 = new Date('2030-01-01T00:00:00Z');

function entry(id: string, selectors: string[], extra: Partial<AuthorizedEntry> = {}): AuthorizedEntry {
  return {
    id,
    spiffeId: `spiffe://example.org/${id}`,
    parentId: 'spiffe://example.org/sigil/agent/join_token/t',
    selectors,
    x509SvidTtl: 0,
    jwtSvidTtl: 0,
    dnsNames: [],
    hint: `hint-${id}`,
    admin: false,
    expiresAt: null,
    revisionNumber: 1,
    ...extra,
  };
}

function setup(opts: { random?: () => number; jwtCacheSize?: number; mint?: (id: string, aud: string[]) => Promise<{ token: string; spiffeId: string; expiresAt: Date }> } = {}) {
  let now = T0.getTime();
  const jwtKey = generateKey('ec-p256');
  const bundle = new SpiffeBundle('example.org', { x509Authorities: [], jwtAuthorities: [{ kid: 'k1', publicKey: jwtKey.publicKey }], sequence: 7 });
  const minted: { id: string; aud: string[] }[] = [];
  const realMint = async (id: string, aud: string[]) => {
    minted.push({ id, aud });
    const expiresAt = new Date(now + 300_000);
    const token = mintJwtSvidSync({ privateKey: jwtKey.privateKey, kid: 'k1', spiffeId: `spiffe://example.org/${id}`, audience: aud, notAfter: expiresAt, now: new Date(now) });
    return { token, spiffeId: `spiffe://example.org/${id}`, expiresAt };
  };
  const cache = new SvidCache({
    trustDomain: 'example.org',
    logger,
    now: () => new Date(now),
    random: opts.random ?? (() => 0.5),
    ...(opts.jwtCacheSize !== undefined ? { jwtCacheSize: opts.jwtCacheSize } : {}),
    bundle: () => bundle,
    mintJwt: opts.mint ?? realMint,
  });
  return {
    cache,
    minted,
    realMint,
    advance: (ms: number) => {
      now += ms;
    },
    now: () => new Date(now),
  };
}

function give(cache: SvidCache, e: AuthorizedEntry, receivedAt: Date, ttlMs: number) {
  const k = generateKey('ec-p256');
  cache.putSvid(e, [Buffer.from(`cert-${e.id}`)], k.privateKey, new Date(receivedAt.getTime() - 10_000), new Date(receivedAt.getTime() + ttlMs), receivedAt);
}

describe('rotation timing', () => {
  it('rotates at the configured fraction ± 10 %', () => {
    const start = new Date(0);
    const end = new Date(3600_000);
    expect(rotationTime(start, end, 0.5, () => 0.5).getTime()).toBe(1800_000);
    expect(rotationTime(start, end, 0.5, () => 0).getTime()).toBe(1620_000); // 0.45
    expect(rotationTime(start, end, 0.5, () => 0.9999999).getTime()).toBeCloseTo(1980_000, -1); // 0.55
    for (let i = 0; i < 1000; i++) {
      const t = rotationTime(start, end, 0.5).getTime();
      expect(t).toBeGreaterThanOrEqual(1620_000);
      expect(t).toBeLessThanOrEqual(1980_000);
    }
    expect(rotationTime(start, end, 0.9, () => 1).getTime()).toBe(0.95 * 3600_000);
    expect(rotationTime(start, start, 0.5).getTime()).toBe(0);
  });

  it('counts the lifetime from receipt, not from a backdated notBefore, and follows a fake clock', () => {
    const t = setup();
    const e = entry('web', ['unix:uid:1000']);
    t.cache.setEntries([e]);
    expect(t.cache.dueForIssue().map((x) => x.id)).toEqual(['web']);
    give(t.cache, e, t.now(), 60_000);
    expect(t.cache.svidOf('web')!.rotateAt.getTime()).toBe(T0.getTime() + 30_000);
    expect(t.cache.nextRotation()!.getTime()).toBe(T0.getTime() + 30_000);
    expect(t.cache.dueForIssue()).toEqual([]);
    t.advance(29_999);
    expect(t.cache.dueForIssue()).toEqual([]);
    t.advance(1);
    expect(t.cache.dueForIssue().map((x) => x.id)).toEqual(['web']);
    // Still served while valid, even though rotation is due.
    expect(t.cache.x509SvidsFor(['unix:uid:1000'])).toHaveLength(1);
    t.advance(30_000);
    expect(t.cache.x509SvidsFor(['unix:uid:1000'])).toHaveLength(0);
  });
});

describe('entry matching', () => {
  it('applies an entry only when all its selectors are among the workload selectors', () => {
    const w = new Set(['unix:uid:1000', 'unix:gid:50', 'container:runtime:docker']);
    expect(entryMatches(['unix:uid:1000'], w)).toBe(true);
    expect(entryMatches(['unix:uid:1000', 'unix:gid:50'], w)).toBe(true);
    expect(entryMatches(['unix:uid:1000', 'unix:gid:51'], w)).toBe(false);
    expect(entryMatches(['unix:uid:100'], w)).toBe(false);
    expect(entryMatches([], w)).toBe(false);
  });

  it('serves the SVIDs of matching entries only, in entry order, and not expired entries', () => {
    const t = setup();
    const a = entry('a', ['unix:uid:1000']);
    const b = entry('b', ['unix:gid:50', 'unix:uid:1000']); // indexed under another selector than a and d
    const c = entry('c', ['unix:uid:2000']);
    const d = entry('d', ['unix:uid:1000'], { expiresAt: new Date(T0.getTime() + 1000).toISOString() });
    t.cache.setEntries([a, b, c, d]);
    for (const e of [a, b, c, d]) give(t.cache, e, t.now(), 3600_000);
    expect(t.cache.x509SvidsFor(['unix:uid:1000', 'unix:gid:50']).map((s) => s.spiffeId)).toEqual([
      'spiffe://example.org/a',
      'spiffe://example.org/b',
      'spiffe://example.org/d',
    ]);
    const s = t.cache.x509SvidsFor(['unix:uid:2000'])[0]!;
    expect(s.entryId).toBe('c');
    expect(s.hint).toBe('hint-c');
    expect(s.privateKeyPkcs8Der.length).toBeGreaterThan(100);
    t.advance(1000);
    expect(t.cache.x509SvidsFor(['unix:uid:1000']).map((x) => x.entryId)).toEqual(['a']);
    expect(t.cache.dueForIssue().map((x) => x.id)).toEqual([]);
  });

  it('drops SVIDs of removed entries and of entries whose identity changed', () => {
    const t = setup();
    const a = entry('a', ['unix:uid:1']);
    const b = entry('b', ['unix:uid:1']);
    expect(t.cache.setEntries([a, b])).toBe(true);
    give(t.cache, a, t.now(), 3600_000);
    give(t.cache, b, t.now(), 3600_000);
    expect(t.cache.setEntries([a, b])).toBe(false);
    // Selector change only: same SVID kept.
    const a2 = { ...a, selectors: ['unix:uid:2'], revisionNumber: 2 };
    expect(t.cache.setEntries([a2, b])).toBe(true);
    expect(t.cache.svidOf('a')).toBeDefined();
    expect(t.cache.x509SvidsFor(['unix:uid:2']).map((s) => s.entryId)).toEqual(['a']);
    // SPIFFE ID change: SVID dropped and due again.
    const a3 = { ...a2, spiffeId: 'spiffe://example.org/renamed', revisionNumber: 3 };
    expect(t.cache.setEntries([a3, b])).toBe(true);
    expect(t.cache.svidOf('a')).toBeUndefined();
    expect(t.cache.dueForIssue().map((x) => x.id)).toEqual(['a']);
    // Removal.
    expect(t.cache.setEntries([a3])).toBe(true);
    expect(t.cache.svidOf('b')).toBeUndefined();
    expect(t.cache.svidCount()).toBe(0);
    // An SVID for an entry removed while its CSR was in flight is not stored.
    give(t.cache, b, t.now(), 3600_000);
    expect(t.cache.svidOf('b')).toBeUndefined();
  });
});

describe('JWT-SVIDs and bundles', () => {
  it('caches per (entry, sorted audience) until half life, then mints again', async () => {
    const t = setup();
    const e = entry('api', ['unix:uid:1']);
    t.cache.setEntries([e]);
    const r1 = await t.cache.jwtSvidsFor(['unix:uid:1'], ['b', 'a']);
    expect(r1).toHaveLength(1);
    expect(r1[0]!.spiffeId).toBe('spiffe://example.org/api');
    expect(t.minted).toEqual([{ id: 'api', aud: ['a', 'b'] }]);
    const r2 = await t.cache.jwtSvidsFor(['unix:uid:1'], ['a', 'b', 'a']);
    expect(r2[0]!.token).toBe(r1[0]!.token);
    expect(t.minted).toHaveLength(1);
    await t.cache.jwtSvidsFor(['unix:uid:1'], ['c']);
    expect(t.minted).toHaveLength(2);
    t.advance(150_000); // half of 5 min
    await t.cache.jwtSvidsFor(['unix:uid:1'], ['a', 'b']);
    expect(t.minted).toHaveLength(3);
    // Validation through the JWT bundle.
    const v = await t.cache.validateJwtSvid(r1[0]!.token, 'a');
    expect(v.spiffeId).toBe('spiffe://example.org/api');
    await expect(t.cache.validateJwtSvid(r1[0]!.token, 'z')).rejects.toMatchObject({ code: 'jwtsvid.audience_mismatch' });
  });

  it('jwtSvidsCached answers synchronously with the cached objects, and only while all are fresh', async () => {
    const t = setup();
    t.cache.setEntries([entry('api', ['unix:uid:1']), entry('web', ['unix:uid:1'])]);
    expect(t.cache.jwtSvidsCached(['unix:uid:1'], ['a'])).toBeUndefined(); // nothing minted yet
    const minted = await t.cache.jwtSvidsFor(['unix:uid:1'], ['a']);
    expect(t.minted).toHaveLength(2);
    const cached = t.cache.jwtSvidsCached(['unix:uid:1'], ['a', 'a']);
    expect(cached).toHaveLength(2);
    expect(cached![0]).toBe(minted[0]); // the same objects, so encodings can be reused
    expect(cached![1]).toBe(minted[1]);
    expect(t.cache.jwtSvidsCached(['unix:uid:1'], ['a'], 'spiffe://example.org/web')!.map((r) => r.spiffeId)).toEqual(['spiffe://example.org/web']);
    expect(t.cache.jwtSvidsCached(['unix:uid:1'], ['b'])).toBeUndefined(); // another audience: not minted
    expect(t.cache.jwtSvidsCached(['unix:uid:1'], [])).toBeUndefined(); // refused requests: the slow path gives the error
    expect(t.cache.jwtSvidsCached(['unix:uid:1'], ['a'], 'spiffe://example.org/other')).toBeUndefined();
    expect(t.cache.jwtSvidsCached(['unix:uid:2'], ['a'])).toEqual([]); // no entry: nothing to mint
    expect(t.minted).toHaveLength(2); // the fast path never mints
    t.advance(150_000); // the refresh point (half of 5 min)
    expect(t.cache.jwtSvidsCached(['unix:uid:1'], ['a'])).toBeUndefined();
  });

  it('deduplicates concurrent mints, bounds the cache (LRU) and filters by SPIFFE ID', async () => {
    const t = setup({ jwtCacheSize: 2 });
    const es = ['a', 'b', 'c'].map((id) => entry(id, [`unix:uid:${id}`]));
    t.cache.setEntries(es);
    await Promise.all([t.cache.jwtSvidsFor(['unix:uid:a'], ['x']), t.cache.jwtSvidsFor(['unix:uid:a'], ['x'])]);
    expect(t.minted).toHaveLength(1);
    await t.cache.jwtSvidsFor(['unix:uid:b'], ['x']);
    await t.cache.jwtSvidsFor(['unix:uid:a'], ['x']); // touch a: b is now least recently used
    await t.cache.jwtSvidsFor(['unix:uid:c'], ['x']); // evicts b
    expect(t.minted).toHaveLength(3);
    await t.cache.jwtSvidsFor(['unix:uid:a'], ['x']);
    expect(t.minted).toHaveLength(3);
    await t.cache.jwtSvidsFor(['unix:uid:b'], ['x']);
    expect(t.minted).toHaveLength(4);

    const both = entry('d', ['unix:uid:a']);
    t.cache.setEntries([...es, both]);
    const all = await t.cache.jwtSvidsFor(['unix:uid:a'], ['x']);
    expect(all.map((r) => r.spiffeId)).toEqual(['spiffe://example.org/a', 'spiffe://example.org/d']);
    const one = await t.cache.jwtSvidsFor(['unix:uid:a'], ['x'], 'spiffe://example.org/d');
    expect(one.map((r) => r.spiffeId)).toEqual(['spiffe://example.org/d']);
    await expect(t.cache.jwtSvidsFor(['unix:uid:a'], ['x'], 'spiffe://example.org/c')).rejects.toMatchObject({ code: 'agent.jwt_spiffe_id_not_authorized', status: 403 });
    await expect(t.cache.jwtSvidsFor(['unix:uid:a'], [])).rejects.toMatchObject({ code: 'agent.jwt_audience_required' });
    expect(await t.cache.jwtSvidsFor(['unix:uid:zzz'], ['x'])).toEqual([]);
  });

  it('over its bound, drops the least recently used 1 % at once', async () => {
    const t = setup({ jwtCacheSize: 200 });
    t.cache.setEntries([entry('a', ['unix:uid:a'])]);
    const sel = ['unix:uid:a'];
    for (let i = 0; i < 200; i++) await t.cache.jwtSvidsFor(sel, [`aud-${i}`]);
    expect(t.minted).toHaveLength(200);
    await t.cache.jwtSvidsFor(sel, ['aud-0']); // touched: aud-1 and aud-2 are now the oldest
    expect(t.minted).toHaveLength(200);
    await t.cache.jwtSvidsFor(sel, ['aud-new']); // 201 > 200: the 2 least recently used go
    expect(t.minted).toHaveLength(201);
    for (const kept of ['aud-0', 'aud-3', 'aud-199', 'aud-new']) expect(t.cache.jwtSvidsCached(sel, [kept])).toBeDefined();
    for (const gone of ['aud-1', 'aud-2']) expect(t.cache.jwtSvidsCached(sel, [gone])).toBeUndefined();
  });

  describe('jwtSvidsCached called again with the same selector array (a connection\'s cached selectors) answers as a first call would', () => {
    /** The answer for `sel` itself (remembered from the last call) and for a copy of it (computed anew), which must agree. */
    const both = (t: ReturnType<typeof setup>, sel: string[], aud: string[], id?: string) => {
      const again = t.cache.jwtSvidsCached(sel, aud, id);
      const fresh = t.cache.jwtSvidsCached([...sel], [...aud], id);
      expect(again).toEqual(fresh);
      return again;
    };

    it('the same objects while nothing changes, then nothing at the refresh point', async () => {
      const t = setup();
      t.cache.setEntries([entry('api', ['unix:uid:1']), entry('web', ['unix:uid:1'])]);
      const sel = ['unix:uid:1', 'unix:gid:1'];
      const minted = await t.cache.jwtSvidsFor(sel, ['a']);
      const first = t.cache.jwtSvidsCached(sel, ['a'])!;
      expect(first).toEqual(minted);
      for (let i = 0; i < 3; i++) {
        const again = both(t, sel, ['a'])!;
        expect(again[0]).toBe(minted[0]);
        expect(again[1]).toBe(minted[1]);
        expect(again).not.toBe(first); // a fresh array: a caller may change it
      }
      expect(both(t, sel, ['a'], 'spiffe://example.org/web')!.map((r) => r.spiffeId)).toEqual(['spiffe://example.org/web']);
      expect(both(t, sel, ['a'])).toHaveLength(2);
      expect(both(t, sel, ['b'])).toBeUndefined(); // another audience
      expect(both(t, sel, ['a'], 'spiffe://example.org/other')).toBeUndefined();
      expect(both(t, sel, ['a'])).toHaveLength(2);
      t.advance(149_999);
      expect(both(t, sel, ['a'])).toHaveLength(2);
      t.advance(1); // the refresh point
      expect(both(t, sel, ['a'])).toBeUndefined();
      expect(t.minted).toHaveLength(2);
    });

    it('follows the entries: one added, one changed, one expiring', async () => {
      const t = setup();
      const api = entry('api', ['unix:uid:1'], { expiresAt: new Date(T0.getTime() + 60_000).toISOString() });
      t.cache.setEntries([api]);
      const sel = ['unix:uid:1'];
      await t.cache.jwtSvidsFor(sel, ['a']);
      expect(both(t, sel, ['a'])).toHaveLength(1);
      // A second matching entry: its token must be minted first.
      t.cache.setEntries([api, entry('web', ['unix:uid:1'])]);
      expect(both(t, sel, ['a'])).toBeUndefined();
      await t.cache.jwtSvidsFor(sel, ['a']);
      expect(both(t, sel, ['a'])).toHaveLength(2);
      // A new revision of an entry: its token is dropped.
      t.cache.setEntries([api, entry('web', ['unix:uid:1'], { revisionNumber: 2 })]);
      expect(both(t, sel, ['a'])).toBeUndefined();
      await t.cache.jwtSvidsFor(sel, ['a']);
      expect(both(t, sel, ['a'])).toHaveLength(2);
      // The entry's own expiry, well before its token's refresh point.
      t.advance(59_999);
      expect(both(t, sel, ['a'])).toHaveLength(2);
      t.advance(1);
      expect(both(t, sel, ['a'])!.map((r) => r.spiffeId)).toEqual(['spiffe://example.org/web']);
      // A clock stepped back: the expired entry applies again, and has a token to serve.
      t.advance(-1);
      expect(both(t, sel, ['a'])).toHaveLength(2);
    });

    it('follows the token cache: evicted tokens are not served', async () => {
      const t = setup({ jwtCacheSize: 2 });
      t.cache.setEntries([entry('a', ['unix:uid:a'])]);
      const sel = ['unix:uid:a'];
      await t.cache.jwtSvidsFor(sel, ['x']);
      expect(both(t, sel, ['x'])).toHaveLength(1);
      await t.cache.jwtSvidsFor([...sel], ['y']);
      await t.cache.jwtSvidsFor([...sel], ['z']); // 3 > 2: x, the least recently used, goes
      expect(t.cache.jwtSvidsCached(sel, ['x'])).toBeUndefined();
    });

    it('counts as a use of its tokens (least recently used eviction)', async () => {
      const t = setup({ jwtCacheSize: 2 });
      t.cache.setEntries([entry('a', ['unix:uid:a'])]);
      const sel = ['unix:uid:a'];
      await t.cache.jwtSvidsFor(sel, ['x']);
      await t.cache.jwtSvidsFor([...sel], ['y']);
      expect(t.cache.jwtSvidsCached(sel, ['x'])).toHaveLength(1);
      expect(t.cache.jwtSvidsCached([...sel], ['y'])).toHaveLength(1); // y used after x
      expect(t.cache.jwtSvidsCached(sel, ['x'])).toHaveLength(1); // from the memo: x is now the most recently used
      await t.cache.jwtSvidsFor([...sel], ['z']); // y goes, not x
      expect(t.cache.jwtSvidsCached([...sel], ['x'])).toHaveLength(1);
      expect(t.cache.jwtSvidsCached([...sel], ['y'])).toBeUndefined();
    });

    it('an array changed in place is answered for what it now holds', async () => {
      const t = setup();
      t.cache.setEntries([entry('api', ['unix:uid:1']), entry('other', ['unix:uid:2'])]);
      const sel = ['unix:uid:1'];
      await t.cache.jwtSvidsFor(sel, ['a']);
      expect(both(t, sel, ['a'])).toHaveLength(1);
      sel[0] = 'unix:uid:2';
      expect(both(t, sel, ['a'])).toBeUndefined(); // other's token was never minted
      sel[0] = 'unix:uid:3';
      expect(both(t, sel, ['a'])).toEqual([]);
      const aud = ['a'];
      sel[0] = 'unix:uid:1';
      expect(both(t, sel, aud)).toHaveLength(1);
      aud[0] = 'b';
      expect(both(t, sel, aud)).toBeUndefined();
    });
  });

  it('serves a still-valid cached token when minting fails, and refuses tokens for the wrong identity', async () => {
    let fail = false;
    let wrong = false;
    const holder: { t?: ReturnType<typeof setup> } = {};
    const t = setup({
      mint: async (id, aud) => {
        if (fail) throw Object.assign(new Error('down'), { code: 'agent.verifier_unreachable' });
        return holder.t!.realMint(wrong ? 'other' : id, aud);
      },
    });
    holder.t = t;
    t.cache.setEntries([entry('api', ['unix:uid:1'])]);
    const first = await t.cache.jwtSvidsFor(['unix:uid:1'], ['a']);
    t.advance(200_000); // past half life, still valid
    fail = true;
    expect((await t.cache.jwtSvidsFor(['unix:uid:1'], ['a']))[0]!.token).toBe(first[0]!.token);
    t.advance(100_001); // expired
    await expect(t.cache.jwtSvidsFor(['unix:uid:1'], ['a'])).rejects.toThrow('down');
    fail = false;
    wrong = true;
    await expect(t.cache.jwtSvidsFor(['unix:uid:1'], ['a'])).rejects.toMatchObject({ code: 'agent.verifier_bad_response' });
  });

  it('publishes bundles (JWT bundle with JWT authorities only) and notifies listeners', () => {
    const t = setup();
    const x = t.cache.x509Bundles();
    expect([...x.keys()]).toEqual(['example.org']);
    const jwks = JSON.parse(t.cache.jwtBundles().get('example.org')!.toString('utf8')) as { keys: { use: string; kid: string }[]; spiffe_sequence: number };
    expect(jwks.keys.map((k) => [k.use, k.kid])).toEqual([['jwt-svid', 'k1']]);
    expect(jwks.spiffe_sequence).toBe(7);
    let calls = 0;
    const off = t.cache.onChange(() => calls++);
    t.cache.onChange(() => {
      throw new Error('a broken listener does not stop the others');
    });
    t.cache.notify();
    t.cache.bundleUpdated();
    expect(calls).toBe(2);
    expect(t.cache.x509Bundles()).not.toBe(x);
    off();
    t.cache.notify();
    expect(calls).toBe(2);
  });
});

describe('expiry notifications', () => {
  it('notifies listeners when a held SVID or a live entry expires, even when nothing else changes', async () => {
    const cache = new SvidCache({
      trustDomain: 'example.org',
      logger,
      now: () => new Date(),
      bundle: () => new SpiffeBundle('example.org'),
      mintJwt: async () => {
        throw new Error('not used');
      },
    });
    let fired = 0;
    cache.onChange(() => fired++);
    // Far enough apart that a loaded host's late timers cannot merge the two expiries.
    const soon = new Date(Date.now() + 150).toISOString();
    const a = entry('a', ['unix:uid:1'], { expiresAt: soon });
    const b = entry('b', ['unix:uid:1']);
    cache.setEntries([a, b]);
    const key = generateKey('ec-p256');
    const bEnds = Date.now() + 900;
    cache.putSvid(b, [Buffer.from('leaf')], key.privateKey, new Date(Date.now() - 1000), new Date(bEnds), new Date());
    expect(fired).toBe(0);
    await waitFor(() => fired >= 1, 5000, 'entry a expired', 10);
    if (Date.now() < bEnds) expect(fired).toBe(1);
    await waitFor(() => fired >= 2, 5000, "b's SVID expired", 10);
    expect(Date.now()).toBeGreaterThanOrEqual(bEnds - 5);
    await new Promise((r) => setTimeout(r, 150)); // nothing left to expire: no more notifications
    expect(fired).toBe(2);
    cache.close();
  });

  it('close() stops the expiry timer', async () => {
    const cache = new SvidCache({ trustDomain: 'example.org', logger, now: () => new Date(), bundle: () => new SpiffeBundle('example.org'), mintJwt: async () => Promise.reject(new Error('x')) });
    let fired = 0;
    cache.onChange(() => fired++);
    cache.setEntries([entry('a', ['unix:uid:1'], { expiresAt: new Date(Date.now() + 50).toISOString() })]);
    cache.close();
    await new Promise((r) => setTimeout(r, 120));
    expect(fired).toBe(0);
  });
});
