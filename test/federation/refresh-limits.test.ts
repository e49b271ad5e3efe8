/**
 * Refresh delays never overflow Node's timer (2^31 − 1 ms; a longer setTimeout fires after 1 ms):
 * the config refuses `federation.refresh.max`, `default` and `maxBackoff` above 24 days and
 * `timeout` above 10 minutes, and every delay the refresher and the fetch arm is clamped, so a
 * foreign bundle's huge `spiffe_refresh_hint` (with settings not from the config) causes no
 * refetch loop and a huge fetch timeout no instant failure. Real timers, real SQLite.
 */
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { federationConfigFrom, type RawFederation } from '../../src/federation/config.js';
import { fetchBundleDocument } from '../../src/federation/fetch.js';
import { FederationService } from '../../src/federation/service.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey, spkiDer } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate, issueX509Svid } from '../../src/spiffe/x509svid.js';
import { SqliteStore } from '../../src/store/sqlite.js';
import { MAX_TIMER_MS } from '../../src/util/timers.js';

const TD = 'b.org';
const HOUR = 3600_000;
const k = generateKey('ec-p256');
const CA = issueCaCertificate({ trustDomain: TD, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + HOUR) });

const refreshConfig = (over: Partial<RawFederation['refresh']>) =>
  federationConfigFrom({ refresh: { default: '5m', min: '5s', max: '1h', maxBackoff: '5m', timeout: '10s', ...over }, relationships: [] }, 'a.org', '/tmp');

describe('federation.refresh upper bounds', () => {
  it.each([
    ['max', { max: '25d' }, /\/federation\/refresh\/max: at most 24d \(2073600 s\), got 2160000 s/],
    ['default', { default: '30d', max: '24d' }, /\/federation\/refresh\/default: at most 24d \(2073600 s\), got 2592000 s/],
    ['maxBackoff', { maxBackoff: '24d1s' }, /\/federation\/refresh\/maxBackoff: at most 24d \(2073600 s\), got 2073601 s/],
    ['timeout', { timeout: '11m' }, /\/federation\/refresh\/timeout: at most 10m \(600 s\), got 660 s/],
  ])('refuses an over-large %s, naming the key and the limit', (_key, over, msg) => {
    expect(() => refreshConfig(over)).toThrow(expect.objectContaining({ code: 'config.invalid', message: expect.stringMatching(msg) }));
  });

  it('takes the limits themselves', () => {
    const c = refreshConfig({ max: '24d', default: '24d', maxBackoff: '24d', timeout: '10m' });
    expect(c.refresh).toMatchObject({ maxSeconds: 24 * 86_400, defaultSeconds: 24 * 86_400, maxBackoffSeconds: 24 * 86_400, timeoutMs: 600_000 });
  });
});

describe('delays clamped to one Node timer', () => {
  it('a 30-day refresh hint (refresh.max 30 days given directly) fetches once, and the next refresh is one clamp period away', async () => {
    let fetches = 0;
    const store = new SqliteStore(':memory:');
    const f = new FederationService({
      store,
      trustDomain: 'a.org',
      logger: pino({ level: 'silent' }),
      registry: new Registry(),
      now: () => new Date(),
      refresh: { defaultSeconds: 30 * 86_400, minSeconds: 5, maxSeconds: 30 * 86_400, maxBackoffSeconds: 30 * 86_400, timeoutMs: 10_000 },
      fetch: async () => {
        fetches++;
        return Buffer.from(JSON.stringify(new SpiffeBundle(TD, { x509Authorities: [CA], sequence: 1, refreshHintSeconds: 30 * 86_400 }).toJwks()));
      },
    });
    try {
      await f.create({ trustDomain: TD, bundleEndpointUrl: 'https://b.example/', profile: 'https_web' });
      const before = Date.now();
      await f.start();
      await new Promise((r) => setTimeout(r, 1500));
      expect(fetches).toBe(1);
      const next = Date.parse((await f.show(TD)).refresh.nextRefreshAt!);
      expect(next - before).toBeGreaterThanOrEqual(MAX_TIMER_MS - 5000);
      expect(next - before).toBeLessThanOrEqual(MAX_TIMER_MS + 5000);
    } finally {
      f.stop();
      await store.close();
    }
  });

  it('a fetch timeout above one timer (30 days) waits for the endpoint instead of failing at once', async () => {
    const caKey = generateKey('ec-p256');
    const ca = issueCaCertificate({ trustDomain: TD, subjectKey: caKey.publicKey, signerKey: caKey.privateKey, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + HOUR) });
    const leafKey = generateKey('ec-p256');
    const id = `spiffe://${TD}/sigil/verifier`;
    const leaf = issueX509Svid({ caCertDer: ca, caKey: caKey.privateKey, subjectSpki: spkiDer(leafKey.publicKey), spiffeId: id, notBefore: new Date(Date.now() - HOUR), notAfter: new Date(Date.now() + HOUR) });
    const bundle = new SpiffeBundle(TD, { x509Authorities: [ca], sequence: 3 });
    // Answers after 500 ms.
    const server: Server = createServer({ cert: certsToPem([leaf]), key: leafKey.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string }, (_req, res) => {
      setTimeout(() => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(bundle.toJwks())), 500);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    try {
      const port = (server.address() as AddressInfo).port;
      const bytes = await fetchBundleDocument({ trustDomain: TD, bundleEndpointUrl: `https://127.0.0.1:${port}/`, profile: 'https_spiffe', endpointSpiffeId: id }, { trust: bundle, timeoutMs: 30 * 86_400_000 });
      expect(SpiffeBundle.fromJwks(TD, bytes.toString()).sequence).toBe(3);
    } finally {
      await new Promise<void>((r) => {
        server.close(() => r());
        server.closeAllConnections();
      });
    }
  });
});
