/**
 * A held long-poll is answered at its deadline even when a re-evaluation of it waits on a store read
 * that hangs (PostgreSQL out of reach without an error yet). The attacker's version: an entry that
 * expires during the wait makes the cache re-evaluate the long-poll at that expiry; the re-evaluation's
 * agent read then never returns. Before, the expiry timer was the waiter's only timer, so nothing
 * ended it and the long-poll (and the agent's sync) hung until the read failed; a CI run caught the
 * same hang when Node fired the deadline timer a few ms before Date.now() reached the deadline.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import type { AgentRecord } from '../../src/store/types.js';
import { AuthorizedSetCache, LONG_POLL_DEFAULTS } from '../../src/verifier/authorized-cache.js';
import { joinTokenAgent } from '../support/agents.js';
import { newEntry } from '../support/entries.js';

const TD = 'example.org';
const AGENT: AgentRecord = joinTokenAgent(`spiffe://${TD}/sigil/agent/join_token/hung`);

let store: SqliteStore | undefined;
let cache: AuthorizedSetCache | undefined;
afterEach(() => {
  cache?.close();
  store?.close();
  cache = store = undefined;
});

describe('a long-poll whose re-evaluation hangs on the store', () => {
  it('is answered at its deadline, not when the read returns', async () => {
    store = new SqliteStore(':memory:');
    cache = new AuthorizedSetCache(store, TD, () => new Date(), LONG_POLL_DEFAULTS);
    // One entry that lives past the wait, one that expires 300 ms into it.
    await store.createEntry(newEntry(`spiffe://${TD}/stays`, AGENT.id));
    await store.createEntry(newEntry(`spiffe://${TD}/expires`, AGENT.id, { expiresAt: new Date(Date.now() + 300).toISOString() }));
    const set = await cache.get(AGENT);
    let rechecks = 0;
    let release = (): void => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const t0 = Date.now();
    const answer = cache
      .waitForChange(
        AGENT,
        set,
        1200,
        async () => {
          rechecks++;
          await gate; // the agent record read hangs
          return AGENT;
        },
        () => undefined,
      )
      .then(
        (s) => ({ s, ms: Date.now() - t0 }),
        (e: unknown) => ({ e, ms: Date.now() - t0 }),
      );
    const bound = new Promise<'hung'>((r) => setTimeout(() => r('hung'), 4000));
    const r = await Promise.race([answer, bound]);
    release();
    expect(r).not.toBe('hung');
    expect(rechecks).toBe(1);
    const got = r as { s?: unknown; e?: unknown; ms: number };
    expect(got.ms).toBeGreaterThanOrEqual(1150);
    expect(got.ms).toBeLessThan(3000);
    // The store answered its revision reads throughout: unchanged as far as it could tell.
    if (got.e !== undefined) expect((got.e as SigilError).code).toBe('store.unavailable');
    else expect(got.s).toBeUndefined();
  });
});
