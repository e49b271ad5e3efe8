/**
 * SnpCollateralSource guards on AMD KDS requests (src/sev/collateral.ts), with an injected fetch
 * and clock: the token-bucket rate limit, the 404 memory, sharing of concurrent requests, that
 * nothing fetched is cached until persist() is called (and a VCEK only under the chip and TCB it
 * names), the streamed 64 KiB answer cap, and the https-only base URL.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FetchLike, KDS_NOT_FOUND_TTL_MS, SnpCollateralSource, chainFileName, checkKdsBaseUrl, kdsVcekUrl, vcekFileName } from '../../src/sev/collateral.js';
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
    return body === undefined ? new Response(null, { status: 404 }) : new Response(Buffer.from(body), { status: 200 });
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

describe('a fetched VCEK is cached only under the chip and TCB it names', () => {
  const victim = makeSnpTestChain('milan');
  const url = kdsVcekUrl(BASE, 'milan', victim.chipId, victim.reportedTcb);
  const cases: [string, () => Buffer][] = [
    ['another chip\'s genuine VCEK', () => makeSnpTestChain('milan').endorsement],
    ['this chip\'s VCEK for another TCB', () => makeSnpTestChain('milan', { chipId: victim.chipId, tcb: { snp: victim.tcb.snp + 1 } }).endorsement],
    ['a Genoa VCEK with the same hwID and TCB', () => makeSnpTestChain('genoa', { chipId: victim.chipId, tcb: victim.tcb }).endorsement],
    ['bytes that are not a certificate', () => Buffer.from('not a certificate')],
  ];
  for (const [name, served] of cases) {
    it(`${name}: returned, but persist() writes nothing and the next lookup asks KDS again`, async () => {
      const dir = join(tmp, `wrong-vcek-${name.replace(/\W+/g, '-')}`);
      const wrong = served();
      const kds = fakeKds(new Map([[url, wrong]]));
      const src = source(kds.fetchImpl, { dir });
      const hit = await src.lookupVcek(['milan'], victim.chipId, victim.reportedTcb);
      expect(hit?.fetched).toBe(true);
      expect(hit?.ders[0]?.equals(wrong)).toBe(true);
      await hit!.persist();
      expect(existsSync(vcekFileName(dir, 'milan', victim.chipId, victim.reportedTcb))).toBe(false);
      expect((await src.lookupVcek(['milan'], victim.chipId, victim.reportedTcb))?.fetched).toBe(true);
      expect(kds.calls).toEqual([url, url]);
    });
  }
  it('control: the requested chip\'s VCEK at the requested TCB is cached (Milan and Turin)', async () => {
    const turin = makeSnpTestChain('turin');
    for (const c of [victim, turin]) {
      const dir = join(tmp, `right-vcek-${c.product}`);
      const u = kdsVcekUrl(BASE, c.product, c.chipId, c.reportedTcb);
      const kds = fakeKds(new Map([[u, c.endorsement]]));
      const src = source(kds.fetchImpl, { dir });
      await (await src.lookupVcek([c.product], c.chipId, c.reportedTcb))!.persist();
      expect(existsSync(vcekFileName(dir, c.product, c.chipId, c.reportedTcb))).toBe(true);
      expect((await src.lookupVcek([c.product], c.chipId, c.reportedTcb))?.fetched).toBe(false);
      expect(kds.calls).toEqual([u]);
    }
  });
});

describe('KDS answers are streamed and capped at 64 KiB', () => {
  const MAX = 64 * 1024;
  const CHUNK = 16 * 1024;
  /** A KDS answering `chunks` chunks of CHUNK bytes, pulled one read at a time; records reads, cancel and the request's signal. */
  function streamingKds(chunks: number, o: { contentLength?: string; lastChunk?: number } = {}) {
    const seen = { pulls: 0, cancelled: false, signal: undefined as AbortSignal | undefined };
    const fetchImpl: FetchLike = async (_url, init) => {
      seen.signal = init.signal;
      let sent = 0;
      const body = new ReadableStream<Uint8Array>(
        {
          pull(controller) {
            seen.pulls++;
            if (sent === chunks) {
              controller.close();
              return;
            }
            sent++;
            controller.enqueue(new Uint8Array(sent === chunks && o.lastChunk !== undefined ? o.lastChunk : CHUNK).fill(0x30));
          },
          cancel() {
            seen.cancelled = true;
          },
        },
        { highWaterMark: 0 },
      );
      return new Response(body, { status: 200, headers: o.contentLength === undefined ? {} : { 'content-length': o.contentLength } });
    };
    return { seen, fetchImpl };
  }
  const lookup = (f: FetchLike) => source(f).vcek(['milan'], chip(99), milan.reportedTcb);

  it('an endless answer is read only up to the cap, then the request is aborted and the stream cancelled', async () => {
    const kds = streamingKds(64); // 1 MiB, no Content-Length
    expect(await codeOfAsync(() => lookup(kds.fetchImpl))).toBe('sev.kds_fetch_failed');
    expect(kds.seen.pulls).toBeLessThanOrEqual(MAX / CHUNK + 1);
    expect(kds.seen.cancelled).toBe(true);
    expect(kds.seen.signal?.aborted).toBe(true);
  });
  it('a Content-Length over the cap is refused before any of the body is read', async () => {
    const kds = streamingKds(64, { contentLength: String(64 * CHUNK) });
    expect(await codeOfAsync(() => lookup(kds.fetchImpl))).toBe('sev.kds_fetch_failed');
    expect(kds.seen.pulls).toBe(0);
    expect(kds.seen.signal?.aborted).toBe(true);
  });
  it('exactly 64 KiB is accepted, one byte more is not; an empty answer is refused', async () => {
    const exact = streamingKds(MAX / CHUNK);
    expect((await lookup(exact.fetchImpl))?.length).toBe(MAX);
    expect(exact.seen.signal?.aborted).toBe(false);
    expect(await codeOfAsync(() => lookup(streamingKds(MAX / CHUNK + 1, { lastChunk: 1 }).fetchImpl))).toBe('sev.kds_fetch_failed');
    expect(await codeOfAsync(() => lookup(streamingKds(0).fetchImpl))).toBe('sev.kds_fetch_failed');
  });
});

describe('kds.baseUrl must be https:// (http:// only on a loopback host)', () => {
  const make = (baseUrl: string) => () => new SnpCollateralSource({ kds: { enabled: true, baseUrl } });
  it('refuses plain http to a remote host and other schemes, with a config error naming https', () => {
    for (const u of ['http://kdsintf.amd.com', 'http://10.0.0.1:8080', 'http://127.example.com', 'ftp://kdsintf.amd.com', 'not a url']) {
      expect(make(u), u).toThrow(expect.objectContaining({ code: 'sev.config_invalid' }));
    }
    expect(make('http://kdsintf.amd.com')).toThrow(/must use https:\/\//);
    expect(make('https://user:pw@kdsintf.amd.com')).toThrow(/credentials, a query or a fragment/);
    expect(make('https://kdsintf.amd.com/?x=1')).toThrow(/credentials, a query or a fragment/);
  });
  it('accepts https anywhere and http on 127.0.0.0/8, ::1 and localhost', () => {
    for (const u of ['https://kdsintf.amd.com', 'https://kds.internal:8443/prefix/', 'http://127.0.0.1:9', 'http://127.1.2.3', 'http://[::1]:8080', 'http://localhost:3000']) {
      expect(() => checkKdsBaseUrl(u), u).not.toThrow();
      expect(make(u), u).not.toThrow();
    }
  });
  it('is not checked while KDS is disabled in the source (the plugin checks any configured baseUrl)', () => {
    expect(() => new SnpCollateralSource({ kds: { enabled: false, baseUrl: 'http://kdsintf.amd.com' } })).not.toThrow();
  });
});
