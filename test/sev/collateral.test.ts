/**
 * SnpCollateralSource guards on AMD KDS requests (src/sev/collateral.ts), with an injected fetch
 * and clock: the token-bucket rate limit, the 404 memory, sharing of concurrent requests, and that
 * nothing fetched is cached until persist() is called.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FetchLike, KDS_NOT_FOUND_TTL_MS, SnpCollateralSource, chainFileName, kdsVcekUrl, vcekFileName } from '../../src/sev/collateral.js';
import { makeSnpTestChain } from '../support/sev-synthetic.js';
import { codeOfAsync } from './helpers.js';

const BASE = 'https://kds.test';
const milan = makeSnpTestChain('milan');

let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-sev-collateral-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

/** A fake KDS: known URLs answer 200 with their body, others 404; every call is recorded. */
function fakeKds(known: Map<string, Buffer | string>, opts: { gate?: Promise<void> } = {}) {
  const calls: string[] = [];
  const fetchImpl: FetchLike = async (url) => {
    calls.push(url);
    if (opts.gate) await opts.gate;
    const body = known.get(url);
    const bytes = body === undefined ? Buffer.alloc(0) : Buffer.from(body);
    return {
      ok: body !== undefined,
      status: body === undefined ? 404 : 200,
      arrayBuffer: async () => bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer,
    };
  };
  return { calls, fetchImpl };
}

function source(fetchImpl: FetchLike, o: { dir?: string; rate?: number; clock?: () => number } = {}) {
  return new SnpCollateralSource({
    ...(o.dir ? { dir: o.dir } : {}),
    kds: { enabled: true, baseUrl: BASE, ...(o.rate ? { maxRequestsPerMinute: o.rate } : {}) },
    fetch: fetchImpl,
    ...(o.clock ? { clock: o.clock } : {}),
  });
}

const chip = (n: number): Buffer => {
  const b = Buffer.alloc(64, 0x11);
  b.writeUInt32BE(n, 0);
  return b;
};

describe('KDS rate limit (token bucket)', () => {
  it('allows a burst of maxRequestsPerMinute, then refuses until tokens refill', async () => {
    let now = 1_000_000;
    const kds = fakeKds(new Map());
    const src = source(kds.fetchImpl, { rate: 2, clock: () => now });
    expect(await src.vcek(['milan'], chip(1), milan.reportedTcb)).toBeUndefined();
    expect(await src.vcek(['milan'], chip(2), milan.reportedTcb)).toBeUndefined();
    expect(await codeOfAsync(() => src.vcek(['milan'], chip(3), milan.reportedTcb))).toBe('sev.kds_rate_limited');
    expect(kds.calls.length).toBe(2);
    now += 29_000; // 2 per minute: not yet a whole token
    expect(await codeOfAsync(() => src.vcek(['milan'], chip(3), milan.reportedTcb))).toBe('sev.kds_rate_limited');
    now += 1_000;
    expect(await codeOfAsync(() => src.vcek(['milan'], chip(3), milan.reportedTcb))).toBe('no error');
    expect(kds.calls.length).toBe(3);
    now += 10 * 60_000; // refill is capped at the burst size
    for (let i = 10; i < 12; i++) expect(await codeOfAsync(() => src.vcek(['milan'], chip(i), milan.reportedTcb))).toBe('no error');
    expect(await codeOfAsync(() => src.vcek(['milan'], chip(12), milan.reportedTcb))).toBe('sev.kds_rate_limited');
  });
  it('a rate of less than one request per minute is refused as configuration', () => {
    expect(() => source(fakeKds(new Map()).fetchImpl, { rate: 0.5 })).toThrow(/maxRequestsPerMinute/);
  });
});

describe('KDS 404 memory and shared requests', () => {
  it('a 404 is remembered for KDS_NOT_FOUND_TTL_MS, then asked again', async () => {
    let now = 5_000_000;
    const kds = fakeKds(new Map());
    const src = source(kds.fetchImpl, { clock: () => now });
    for (let i = 0; i < 5; i++) expect(await src.vcek(['milan'], chip(7), milan.reportedTcb)).toBeUndefined();
    expect(kds.calls.length).toBe(1);
    now += KDS_NOT_FOUND_TTL_MS + 1;
    expect(await src.vcek(['milan'], chip(7), milan.reportedTcb)).toBeUndefined();
    expect(kds.calls.length).toBe(2);
  });
  it('concurrent lookups of one VCEK share a single request', async () => {
    let open = (): void => undefined;
    const gate = new Promise<void>((r) => (open = r));
    const url = kdsVcekUrl(BASE, 'milan', milan.chipId, milan.reportedTcb);
    const kds = fakeKds(new Map([[url, milan.endorsement]]), { gate });
    const src = source(kds.fetchImpl);
    const all = Promise.all([1, 2, 3].map(() => src.vcek(['milan'], milan.chipId, milan.reportedTcb)));
    open();
    const got = await all;
    expect(kds.calls).toEqual([url]);
    for (const g of got) expect(g?.equals(milan.endorsement)).toBe(true);
  });
  it('a masked (all-zero) CHIP_ID is never looked up', async () => {
    const kds = fakeKds(new Map());
    expect(await source(kds.fetchImpl).vcek(['milan', 'genoa', 'turin'], Buffer.alloc(64), milan.reportedTcb)).toBeUndefined();
    expect(kds.calls).toEqual([]);
  });
});

describe('fetched certificates are cached only through persist()', () => {
  it('lookupVcek/lookupChain do not write; persist() writes the directory and memory; cached hits are not "fetched"', async () => {
    const dir = join(tmp, 'persist');
    const vcekUrl = kdsVcekUrl(BASE, 'milan', milan.chipId, milan.reportedTcb);
    const chainUrl = `${BASE}/vcek/v1/Milan/cert_chain`;
    const kds = fakeKds(
      new Map<string, Buffer | string>([
        [vcekUrl, milan.endorsement],
        [chainUrl, milan.chainPem],
      ]),
    );
    const src = source(kds.fetchImpl, { dir });
    const v = await src.lookupVcek(['milan'], milan.chipId, milan.reportedTcb);
    const c = await src.lookupChain('milan', 'vcek');
    expect(v?.fetched).toBe(true);
    expect(c?.fetched).toBe(true);
    expect(existsSync(vcekFileName(dir, 'milan', milan.chipId, milan.reportedTcb))).toBe(false);
    expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(false);
    // The plain helpers never write either.
    expect((await src.vcek(['milan'], milan.chipId, milan.reportedTcb))?.equals(milan.endorsement)).toBe(true);
    expect(existsSync(vcekFileName(dir, 'milan', milan.chipId, milan.reportedTcb))).toBe(false);

    await v!.persist();
    await c!.persist();
    expect(existsSync(vcekFileName(dir, 'milan', milan.chipId, milan.reportedTcb))).toBe(true);
    expect(existsSync(chainFileName(dir, 'milan', 'vcek'))).toBe(true);
    const calls = kds.calls.length;
    const again = await src.lookupVcek(['milan'], milan.chipId, milan.reportedTcb);
    expect(again?.fetched).toBe(false);
    expect(again?.ders[0]?.equals(milan.endorsement)).toBe(true);
    expect((await src.lookupChain('milan', 'vcek'))?.ders).toEqual(milan.chainDer);
    expect(kds.calls.length).toBe(calls);
    // A new source on the same directory finds them without KDS.
    const fresh = fakeKds(new Map());
    const v2 = await source(fresh.fetchImpl, { dir }).lookupVcek(['milan'], milan.chipId, milan.reportedTcb);
    expect(v2?.fetched).toBe(false);
    expect(fresh.calls).toEqual([]);
  });
});
