/**
 * The held long-poll is the agent's entries sync (issue 15): against a real verifier over real
 * HTTPS (through a TCP relay that counts the agent's connections and can cut them, as a crash or a
 * network failure would),
 *   - an idle agent whose long-poll is healthy sends no periodic entries request over many
 *     intervals and holds one TLS connection; a change still reaches it through the long-poll;
 *   - when the long-poll is refused, cut, or answered at once (a verifier that does not hold it),
 *     the periodic cycle fetches the entries again within one interval;
 *   - a long-poll answer naming another bundle ETag (a CA rotation) makes the agent fetch the bundle;
 *   - an eviction or a ban through the admin API answers the held long-poll at once, and the agent
 *     acts on it without waiting for the wait or the interval.
 * Verifier-side requests are counted from its own metrics, by status: an unchanged set is answered
 * 304 within 1 s to a periodic fetch and after the verifier's longPoll.maxWait (3 s here) to a held
 * long-poll; a new set is answered 200 to either, and a long-poll's 200 comes as soon as the set
 * changes, so its duration does not tell the two apart (it is under 1 s when the change lands just
 * after the long-poll was sent).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, connect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { EntrySync } from '../../src/agent/entry-sync.js';
import type { NodeIdentity } from '../../src/agent/node-attestation.js';
import type { SvidCache } from '../../src/agent/svid-cache.js';
import { TrustStore } from '../../src/agent/trust.js';
import { VerifierClient, type AuthorizedEntry } from '../../src/agent/verifier-client.js';
import { adminCall } from '../../src/cli/admin-client.js';
import { SigilError } from '../../src/errors.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { httpsJson, startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { waitFor } from './harness.js';

const TD = 'example.org';
const logger = pino({ level: 'silent' });
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/** A TCP relay in front of the verifier: counts connections, can cut them all and refuse new ones. */
class Relay {
  readonly server: Server;
  accepted = 0;
  private readonly open = new Set<Socket>();
  private down = false;

  constructor(public target: number) {
    this.server = createServer((c) => {
      if (this.down) {
        c.destroy();
        return;
      }
      this.accepted++;
      const up = connect(this.target, '127.0.0.1');
      this.open.add(c);
      c.pipe(up).pipe(c);
      const end = (): void => {
        this.open.delete(c);
        c.destroy();
        up.destroy();
      };
      c.on('error', end).on('close', end);
      up.on('error', end).on('close', end);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    return (this.server.address() as { port: number }).port;
  }

  connections(): number {
    return this.open.size;
  }

  /** Cut every connection and refuse new ones (a crash, seen from the agent). */
  cut(): void {
    this.down = true;
    for (const c of this.open) c.destroy();
  }

  restore(target: number): void {
    this.target = target;
    this.down = false;
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}

/**
 * Entries requests the verifier answered, from its metrics: `unchangedQuick`, 304s within 1 s (periodic
 * fetches of an unchanged set; a held long-poll's 304 takes longPoll.maxWait); `changed`, 200s (a new
 * set, to a periodic fetch or a long-poll); `all`.
 */
async function entriesRequests(tv: TestVerifier): Promise<{ unchangedQuick: number; changed: number; all: number }> {
  const text = await tv.v.core.metrics.registry.metrics();
  let unchangedQuick = 0;
  let changed = 0;
  let all = 0;
  for (const line of text.split('\n')) {
    if (!line.includes('route="/v1/entries/authorized"')) continue;
    const n = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith('sigil_http_request_duration_seconds_bucket') && line.includes('le="1"') && line.includes('status="304"')) unchangedQuick += n;
    else if (line.startsWith('sigil_http_request_duration_seconds_count')) {
      all += n;
      if (line.includes('status="200"')) changed += n;
    }
  }
  return { unchangedQuick, changed, all };
}

interface Setup {
  tv: TestVerifier;
  relay: Relay;
  sync: EntrySync;
  client: VerifierClient;
  agentId: string;
  entries: AuthorizedEntry[][];
  invalidated: SigilError[];
  bundleFetches: () => number;
  trust: TrustStore;
}

async function setup(o: { verifier?: Record<string, unknown>; intervalMs: number; now?: () => Date; client?: (c: VerifierClient) => void }): Promise<Setup> {
  const dir = mkdtempSync(join(tmpdir(), 'sigil-push-sync-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const tv = await startTestVerifier({ longPoll: { maxWait: '3s' }, ...(o.verifier ?? {}) }, { dir: join(dir, 'verifier'), ...(o.now ? { now: o.now } : {}) });
  cleanups.push(() => tv.stop());
  const cas = tv.v.core.ca.x509Authorities();
  const caPem = certsToPem(cas);
  // Attest through the real protocol (join token).
  const tok = await adminCall<{ token: string; agentId: string }>(tv.adminSocket, 'POST', '/v1/admin/tokens', {});
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(tv.v.port, 'POST', '/v1/attest', { caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
  const r2 = await httpsJson(tv.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem, body: { responses: { join_token: {} } } });
  expect(r2.status).toBe(200);
  const chainDer = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
  await adminCall(tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${TD}/first`, parentId: tok.agentId, selectors: ['unix:uid:1'] });

  const relay = new Relay(tv.v.port);
  const port = await relay.listen();
  cleanups.push(() => relay.close());
  const client = new VerifierClient({ trustDomain: TD, address: '127.0.0.1', port, trust: cas });
  client.setIdentity({ chainDer, privateKey: key.privateKey });
  cleanups.push(() => client.close());
  let bundleFetches = 0;
  const bundleIfChanged = client.bundleIfChanged.bind(client);
  client.bundleIfChanged = (etag) => {
    bundleFetches++;
    return bundleIfChanged(etag);
  };
  o.client?.(client);
  writeFileSync(join(dir, 'bootstrap.pem'), caPem);
  const trust = TrustStore.load({ trustDomain: TD, dataDir: dir, bootstrapPath: join(dir, 'bootstrap.pem'), logger });
  const invalidated: SigilError[] = [];
  const node = {
    current: () => ({ agentId: tok.agentId }),
    generation: () => 1,
    onIdentity: () => () => undefined,
    trustFailure: () => undefined,
    invalidate: (e: SigilError) => void invalidated.push(e),
  } as unknown as NodeIdentity;
  const entries: AuthorizedEntry[][] = [];
  const cache = {
    setEntries: (l: AuthorizedEntry[]) => (entries.push(l), true),
    dueForIssue: () => [],
    nextRotation: () => undefined,
    notify: () => undefined,
  } as unknown as SvidCache;
  const sync = new EntrySync({ trustDomain: TD, client, cache, node, trust, logger, now: () => new Date(), intervalMs: o.intervalMs });
  sync.start();
  cleanups.push(() => sync.close());
  return { tv, relay, sync, client, agentId: tok.agentId, entries, invalidated, bundleFetches: () => bundleFetches, trust };
}

describe('the held long-poll carries the entries sync', () => {
  it('an idle agent sends no periodic entries request and holds one connection; a change arrives by the long-poll', async () => {
    const s = await setup({ intervalMs: 300 });
    await waitFor(() => s.sync.longPollHealthy(), 8000, 'a long-poll answered as designed');
    // Connections opened while the periodic cycle still fetched beside the held long-poll (and the
    // bundle's, fetched without a client certificate) are closed by the client when idle for 5 s.
    await waitFor(() => s.relay.connections() === 1, 8000, 'one connection left');
    const fetches = s.sync.periodicFetches();
    const before = await entriesRequests(s.tv);
    const accepted = s.relay.accepted;
    const idleFrom = Date.now();
    // 7 s = 23 intervals; the verifier holds each long-poll 3 s (longPoll.maxWait).
    for (let i = 0; i < 14; i++) {
      await sleep(500);
      expect(s.relay.connections()).toBe(1);
    }
    const after = await entriesRequests(s.tv);
    const idleMs = Date.now() - idleFrom;
    expect(s.sync.periodicFetches()).toBe(fetches);
    expect(after.unchangedQuick).toBe(before.unchangedQuick);
    expect(after.changed).toBe(before.changed);
    // Only held long-polls, sent one after another and each held 3 s: at most one per 3 s of the
    // window (plus the one in flight at its start; the window is 7 s unless the host is slow).
    expect(after.all - before.all).toBeGreaterThanOrEqual(2);
    expect(after.all - before.all).toBeLessThanOrEqual(Math.floor(idleMs / 3000) + 1);
    expect(s.relay.accepted).toBe(accepted);
    expect(s.sync.longPollHealthy()).toBe(true);

    const t0 = Date.now();
    const seen = s.entries.length;
    await adminCall(s.tv.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${TD}/pushed`, parentId: s.agentId, selectors: ['unix:uid:2'] });
    await waitFor(() => s.entries.slice(seen).some((l) => l.some((e) => e.spiffeId === `spiffe://${TD}/pushed`)), 3000, 'the new entry by long-poll');
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(s.sync.pushedChanges()).toBe(1);
    expect(s.sync.periodicFetches()).toBe(fetches);
    // The new set was answered once, to the held long-poll; no periodic fetch reached the verifier.
    const pushed = await entriesRequests(s.tv);
    expect(pushed.changed).toBe(before.changed + 1);
    expect(pushed.unchangedQuick).toBe(before.unchangedQuick);
    expect(s.relay.connections()).toBe(1);
  }, 30_000);

  it('a verifier that refuses long-polls gets the entries fetched every interval', async () => {
    const s = await setup({ intervalMs: 300, verifier: { longPoll: { maxWaiters: 0 } } });
    await waitFor(() => s.sync.periodicFetches() >= 2, 3000, 'first fetches');
    const f0 = s.sync.periodicFetches();
    const q0 = (await entriesRequests(s.tv)).unchangedQuick;
    await sleep(3000);
    // ~10 intervals; at least 7 fetches allowing for timer slack on a loaded machine.
    expect(s.sync.periodicFetches() - f0).toBeGreaterThanOrEqual(7);
    expect((await entriesRequests(s.tv)).unchangedQuick - q0).toBeGreaterThanOrEqual(7);
    expect(s.sync.longPollHealthy()).toBe(false);
  }, 30_000);

  it('a verifier that answers the long-poll at once (does not know wait) gets the entries fetched every interval', async () => {
    let polls = 0;
    const s = await setup({
      intervalMs: 300,
      // An older verifier: `?wait` ignored, the answer comes at once.
      client: (c) => {
        c.waitEntries = (revision) => {
          polls++;
          return c.syncEntries(revision);
        };
      },
    });
    await waitFor(() => polls >= 1, 3000, 'a first long-poll');
    const f0 = s.sync.periodicFetches();
    await sleep(3000);
    expect(s.sync.periodicFetches() - f0).toBeGreaterThanOrEqual(7);
    expect(s.sync.longPollHealthy()).toBe(false);
    // Asked again after an interval, then only after LONG_POLL_RETRY_MS (30 s).
    expect(polls).toBeLessThanOrEqual(2);
  }, 30_000);

  it('a cut connection (verifier gone) resumes the periodic fetch within one interval, and the long-poll takes over again after a restart', async () => {
    const interval = 1000;
    const s = await setup({ intervalMs: interval });
    await waitFor(() => s.sync.longPollHealthy(), 8000, 'a healthy long-poll');
    await sleep(1500);
    const f0 = s.sync.periodicFetches();
    expect(s.sync.longPollHealthy()).toBe(true);
    s.relay.cut();
    const t0 = Date.now();
    await waitFor(() => s.sync.periodicFetches() > f0, interval + 1000, 'a periodic fetch after the cut');
    expect(Date.now() - t0).toBeLessThanOrEqual(interval + 300);
    expect(s.sync.longPollHealthy()).toBe(false);
    // The verifier restarts (same datastore, another port) and the network comes back.
    await s.tv.restart();
    s.relay.restore(s.tv.v.port);
    await waitFor(() => s.sync.longPollHealthy(), 15_000, 'the long-poll healthy again');
    const f1 = s.sync.periodicFetches();
    await sleep(3 * interval);
    expect(s.sync.periodicFetches()).toBe(f1);
  }, 40_000);

  it('a long-poll answer naming another bundle ETag fetches the bundle, without a periodic fetch', async () => {
    // The verifier names its bundle ETag on long-poll answers (test/verifier/fleet-conditional-sync
    // shows it changing at a CA rotation); a rotation cannot be staged here with the verifier's
    // clock moved, as its re-issued TLS certificate would not yet be valid on the real clock. So the
    // ETag named by the real answers is replaced once `rotated` is set, as a rotation would change it.
    let rotated = false;
    const s = await setup({
      intervalMs: 300,
      client: (c) => {
        const wait = c.waitEntries.bind(c);
        c.waitEntries = async (revision, seconds, signal) => {
          const r = await wait(revision, seconds, signal);
          return rotated ? { ...r, bundleEtag: '"AAAAAAAAAAAAAAAAAAAAAA"' } : r;
        };
      },
    });
    await waitFor(() => s.sync.longPollHealthy(), 8000, 'a healthy long-poll');
    const b0 = s.bundleFetches();
    const f0 = s.sync.periodicFetches();
    await sleep(3500);
    expect(s.bundleFetches()).toBe(b0);
    rotated = true;
    await waitFor(() => s.bundleFetches() > b0, 5000, 'a bundle fetch after a long-poll answer named another ETag');
    expect(s.sync.periodicFetches()).toBe(f0);
    expect(s.sync.longPollHealthy()).toBe(true);
  }, 30_000);

  for (const ban of [false, true]) {
    it(`an agent ${ban ? 'banned' : 'evicted'} while its long-poll is held learns it at once`, async () => {
      // Interval 60 s and the verifier's default 20 s wait: only the answered long-poll can tell it in time.
      const s = await setup({ intervalMs: 60_000, verifier: { longPoll: { maxWait: '20s' } } });
      // The first fetch (the cycle) gives the revision; the long-poll is then held.
      await waitFor(() => s.entries.length >= 1, 5000, 'first entries');
      await sleep(500);
      const t0 = Date.now();
      await adminCall(s.tv.adminSocket, 'POST', '/v1/admin/agents/evict', { id: s.agentId, ban });
      if (ban) await waitFor(() => s.sync.error()?.code === 'agent.banned', 2000, 'agent.banned reported');
      else await waitFor(() => s.invalidated.find((e) => e.code === 'agent.unknown'), 2000, 'the node SVID invalidated (agent.unknown)');
      expect(Date.now() - t0).toBeLessThan(1500);
      expect(s.sync.longPollHealthy()).toBe(false);
    }, 30_000);
  }
});
