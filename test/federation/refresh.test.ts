/**
 * The refresher's timing and accounting (FederationService on a real SQLite store, the fetch
 * replaced by a scripted endpoint and the clock fixed): the foreign bundle's refresh hint is
 * honoured within [min, max], failures back off exponentially with a bound, and every refresh is
 * logged and counted (issue 17, Build 2).
 */
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { FederationService } from '../../src/federation/service.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { SqliteStore } from '../../src/store/sqlite.js';

const TD = 'b.org';
const NOW = new Date('2026-06-01T12:00:00Z');
const k = generateKey('ec-p256');
const CA = issueCaCertificate({ trustDomain: TD, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 3600_000), notAfter: new Date(Date.now() + 3600_000) });
const bundle = (seq: number, hint?: number) => Buffer.from(JSON.stringify(new SpiffeBundle(TD, { x509Authorities: [CA], sequence: seq, ...(hint !== undefined ? { refreshHintSeconds: hint } : {}) }).toJwks()));

// The refresher's timers are faked: nothing runs unless a test calls refresh() or advances them.
const cleanups: (() => Promise<void>)[] = [];
beforeEach(() => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
});
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
  vi.useRealTimers();
});

/** A service over SQLite whose endpoint answers `next()` (bytes, or an error to throw). */
async function setup(next: () => Buffer | Error, random = () => 1) {
  let fetches = 0;
  const store = new SqliteStore(':memory:');
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
      cb();
    },
  });
  const registry = new Registry();
  const f = new FederationService({
    store,
    trustDomain: 'a.org',
    logger: pino({ level: 'debug' }, sink),
    registry,
    now: () => NOW,
    refresh: { defaultSeconds: 300, minSeconds: 5, maxSeconds: 3600, maxBackoffSeconds: 60, backoffBaseMs: 1000 },
    random,
    fetch: () => {
      fetches++;
      const r = next();
      return r instanceof Error ? Promise.reject(r) : Promise.resolve(r);
    },
  });
  await f.create({ trustDomain: TD, bundleEndpointUrl: 'https://b.example/', profile: 'https_web' });
  await f.start();
  cleanups.push(async () => {
    f.stop();
    await store.close();
  });
  const counter = async (name: string, labels: Record<string, string>) =>
    (await registry.getSingleMetric(name)!.get()).values.find((v) => Object.entries(labels).every(([lk, lv]) => v.labels[lk] === lv))?.value ?? 0;
  return { f, lines, counter, fetches: () => fetches };
}

const delayOf = (v: { refresh: { nextRefreshAt?: string } }) => Date.parse(v.refresh.nextRefreshAt!) - NOW.getTime();

describe('refresh timing', () => {
  it.each([
    [42, 42_000],
    [1, 5_000], // below refresh.min
    [100_000, 3_600_000], // above refresh.max
    [undefined, 300_000], // no hint: refresh.default
  ])('hint %s s → next refresh in %s ms', async (hint, want) => {
    const { f } = await setup(() => bundle(3, hint));
    expect(delayOf(await f.refresh(TD))).toBe(want);
  });

  it('the refresher fetches again when the hint says, not before', async () => {
    const { f, fetches } = await setup(() => bundle(3, 42));
    await vi.advanceTimersByTimeAsync(0); // start(): the first fetch at once
    expect(fetches()).toBe(1);
    expect(delayOf(await f.show(TD))).toBe(42_000);
    await vi.advanceTimersByTimeAsync(41_900);
    expect(fetches()).toBe(1);
    await vi.advanceTimersByTimeAsync(200);
    expect(fetches()).toBe(2);
  });

  it('failures back off exponentially (1 s doubling, full jitter) up to maxBackoff and never past the regular refresh', async () => {
    const { f } = await setup(() => bundle(1, 3000));
    for (const [failures, want] of [[1, 1000], [2, 2000], [3, 4000], [6, 32_000], [7, 60_000], [40, 60_000]] as const) expect(f.backoffMs(failures, 3000)).toBe(want);
    // The regular refresh (hint 10 s) bounds the back-off below maxBackoff.
    expect(f.backoffMs(10, 10)).toBe(10_000);
    // Jitter: between half and all of the exponential value.
    const low = await setup(() => bundle(1), () => 0);
    expect(low.f.backoffMs(3, undefined)).toBe(2000);
  });

  it('a failing endpoint is retried on the back-off schedule, the failures counted, and a success resets it', async () => {
    let answer: Buffer | Error = bundle(2, 600);
    const { f } = await setup(() => answer);
    expect(delayOf(await f.refresh(TD))).toBe(600_000);
    answer = new SigilError('federation.endpoint_unreachable', 'down');
    for (const want of [1000, 2000, 4000]) {
      await expect(f.refresh(TD)).rejects.toMatchObject({ code: 'federation.endpoint_unreachable' });
      const v = await f.show(TD);
      expect(delayOf(v)).toBe(want);
      expect(v.bundleSequence).toBe(2);
    }
    expect((await f.show(TD)).refresh.consecutiveFailures).toBe(3);
    answer = bundle(2, 600);
    const ok = await f.refresh(TD);
    expect(ok.refresh).toMatchObject({ consecutiveFailures: 0 });
    expect(ok.refresh.lastError).toBeUndefined();
    expect(delayOf(ok)).toBe(600_000);
  });
});

describe('logs and metrics', () => {
  it('a new bundle is logged and counted as a change; the same again as unchanged; a refusal at warn with its code', async () => {
    let answer: Buffer | Error = bundle(4, 600);
    const { f, lines, counter } = await setup(() => answer);
    await f.refresh(TD);
    expect(await counter('sigil_federation_bundle_changes_total', { trust_domain: TD })).toBe(1);
    expect(await counter('sigil_federation_refreshes_total', { trust_domain: TD, result: 'ok' })).toBe(1);
    expect(await counter('sigil_federation_bundle_sequence', { trust_domain: TD })).toBe(4);
    expect(lines.filter((l) => l.msg === 'federated bundle updated').map((l) => [l.level, l.trustDomain, l.sequence])).toEqual([[30, TD, 4]]);

    await f.refresh(TD);
    expect(await counter('sigil_federation_refreshes_total', { trust_domain: TD, result: 'unchanged' })).toBe(1);
    expect(await counter('sigil_federation_bundle_changes_total', { trust_domain: TD })).toBe(1);

    answer = bundle(3, 600);
    await expect(f.refresh(TD)).rejects.toMatchObject({ code: 'federation.sequence_downgrade' });
    expect(await counter('sigil_federation_refreshes_total', { trust_domain: TD, result: 'federation.sequence_downgrade' })).toBe(1);
    const warn = lines.find((l) => l.level === 40 && l.code === 'federation.sequence_downgrade');
    expect(warn).toMatchObject({ trustDomain: TD, lastGoodSequence: 4, failures: 1 });

    answer = bundle(5, 600);
    await f.refresh(TD);
    expect(await counter('sigil_federation_bundle_changes_total', { trust_domain: TD })).toBe(2);
    expect(await counter('sigil_federation_bundle_sequence', { trust_domain: TD })).toBe(5);
  });
});
