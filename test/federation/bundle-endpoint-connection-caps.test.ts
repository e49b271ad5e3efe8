/**
 * The public bundle endpoint caps open connections in all and per source address, drops a
 * connection that does not finish its TLS handshake or goes idle, and counts its caps against the
 * verifier's open-file budget: any network peer can reach it, and idle sockets piled up to EMFILE
 * would break the whole verifier. 127.0.0.x addresses act as distinct sources (Linux).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUNDLE_ENDPOINT_CAPS, startBundleEndpoint, type RunningBundleEndpoint } from '../../src/federation/endpoint.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { issueCaCertificate } from '../../src/spiffe/x509svid.js';
import { verifierConfigFrom } from '../../src/verifier/config.js';
import { idleProbe } from '../support/idle-probe.js';
import { startTestVerifier, type TestVerifier } from '../support/verifier.js';
import { startupOutputUnder } from '../support/verifier-under-limit.js';

const TD = 'caps.example';
const held: Socket[] = [];
const refused: string[] = [];
let capped: RunningBundleEndpoint;
let timed: RunningBundleEndpoint;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  const k = generateKey('ec-p256');
  const ca = issueCaCertificate({ trustDomain: TD, subjectKey: k.publicKey, signerKey: k.privateKey, notBefore: new Date(Date.now() - 60_000), notAfter: new Date(Date.now() + 3600_000) });
  const common = {
    bundle: () => new SpiffeBundle(TD, { x509Authorities: [ca], sequence: 7 }),
    svid: () => ({ cert: certsToPem([ca]), key: k.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string }),
    logger: pino({ level: 'silent' }),
    metrics: { refusals: { inc: ({ code }: { code: string }) => void refused.push(code) } },
  };
  capped = await startBundleEndpoint({ ...common, config: { address: '127.0.0.1', port: 0, profile: 'https_spiffe', maxConnections: 6, maxConnectionsPerAddress: 3 } });
  timed = await startBundleEndpoint({ ...common, config: { address: '127.0.0.1', port: 0, profile: 'https_spiffe', maxConnections: 2, maxConnectionsPerAddress: 2 }, handshakeTimeoutMs: 400, idleTimeoutMs: 400 });
});
afterAll(async () => {
  for (const s of held) s.destroy();
  await capped?.close();
  await timed?.close();
});

/** A silent TCP connection from `localAddress`: 'open' if still open after 300 ms (then kept when `keep`), 'closed' if the server closed it. */
function probe(port: number, localAddress: string, keep: boolean): Promise<'open' | 'closed'> {
  return idleProbe(port, localAddress, keep, held);
}

/** GET / from `localAddress` (the TLS identity is not what is tested here). */
function fetchBundle(port: number, localAddress: string): Promise<{ status: number; body: { keys: unknown[]; spiffe_sequence: number } }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, localAddress, path: '/', rejectUnauthorized: false, agent: false }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as never }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Milliseconds until the server closes a connection made by `open`, or 'open' after `waitMs`. */
function closedWithin(open: () => Socket, waitMs: number): Promise<number | 'open'> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const s = open();
    s.on('error', () => undefined);
    const timer = setTimeout(() => {
      s.destroy();
      resolve('open');
    }, waitMs);
    s.once('close', () => {
      clearTimeout(timer);
      resolve(performance.now() - t0);
    });
  });
}

describe('bundle endpoint connection caps', () => {
  it('closes idle connections over the per-address cap at accept; another address still fetches the bundle', async () => {
    for (let i = 0; i < 3; i++) expect(await probe(capped.port, '127.0.0.2', true)).toBe('open');
    expect(await probe(capped.port, '127.0.0.2', false)).toBe('closed');
    expect(refused).toContain('federation.endpoint_address_connection_limit');
    const r = await fetchBundle(capped.port, '127.0.0.1');
    expect(r.status).toBe(200);
    expect(r.body.spiffe_sequence).toBe(7);
  });

  it('closes connections over the total cap from any address; a closed connection frees its slot', async () => {
    // 3 held from 127.0.0.2; 3 more from two other addresses fill the total of 6.
    expect(await probe(capped.port, '127.0.0.3', true)).toBe('open');
    expect(await probe(capped.port, '127.0.0.3', true)).toBe('open');
    expect(await probe(capped.port, '127.0.0.4', true)).toBe('open');
    expect(await probe(capped.port, '127.0.0.5', false)).toBe('closed');
    expect(refused).toContain('federation.endpoint_connection_limit');
    held.pop()?.destroy();
    await sleep(200);
    expect((await fetchBundle(capped.port, '127.0.0.5')).status).toBe(200);
    for (const s of held.splice(0)) s.destroy();
  });

  it('drops a connection that sends no TLS ClientHello after the handshake timeout, freeing its slot', async () => {
    const t = await closedWithin(() => connect({ host: '127.0.0.1', port: timed.port, localAddress: '127.0.0.6' }), 5_000);
    expect(t).not.toBe('open');
    expect(t as number).toBeGreaterThanOrEqual(300);
    // Two silent connections fill the cap of 2; once the handshake timeout drops them, a fetch gets in.
    const silent = ['127.0.0.7', '127.0.0.8'].map((localAddress) => {
      const s = connect({ host: '127.0.0.1', port: timed.port, localAddress });
      s.on('error', () => undefined);
      held.push(s);
      return new Promise((r) => s.once('close', r));
    });
    await sleep(100);
    expect(await probe(timed.port, '127.0.0.9', false)).toBe('closed');
    await Promise.all(silent);
    await sleep(100);
    expect((await fetchBundle(timed.port, '127.0.0.9')).status).toBe(200);
    held.splice(0);
  });

  it('drops a connection idle after its TLS handshake', async () => {
    const t = await closedWithin(() => tlsConnect({ host: '127.0.0.1', port: timed.port, rejectUnauthorized: false }), 5_000);
    expect(t).not.toBe('open');
    expect(t as number).toBeGreaterThanOrEqual(300);
  });
});

describe('bundle endpoint caps in the verifier', () => {
  let tv: TestVerifier;
  afterAll(async () => {
    for (const s of held.splice(0)) s.destroy();
    await tv?.stop();
  });

  it('config keys federation.bundleEndpoint.maxConnections / maxConnectionsPerAddress: defaults, values, bounds', () => {
    const base = { trustDomain: 'example.org', dataDir: '/tmp/x' };
    const d = verifierConfigFrom({ ...base, federation: { bundleEndpoint: { listen: '0.0.0.0:8444', profile: 'https_spiffe' } } }, '/tmp');
    expect(d.federation.bundleEndpoint).toMatchObject({ maxConnections: BUNDLE_ENDPOINT_CAPS.maxConnections, maxConnectionsPerAddress: BUNDLE_ENDPOINT_CAPS.maxConnectionsPerAddress });
    expect(BUNDLE_ENDPOINT_CAPS).toEqual({ maxConnections: 256, maxConnectionsPerAddress: 16 });
    const c = verifierConfigFrom({ ...base, federation: { bundleEndpoint: { address: '0.0.0.0', port: 8444, profile: 'https_spiffe', maxConnections: 50, maxConnectionsPerAddress: 5 } } }, '/tmp');
    expect(c.federation.bundleEndpoint).toMatchObject({ maxConnections: 50, maxConnectionsPerAddress: 5 });
    expect(() => verifierConfigFrom({ ...base, federation: { bundleEndpoint: { profile: 'https_spiffe', maxConnections: 0 } } }, '/tmp')).toThrow(expect.objectContaining({ code: 'config.invalid' }));
  });

  it('a verifier applies the configured caps and counts refusals in sigil_refusals_total', async () => {
    tv = await startTestVerifier({ federation: { bundleEndpoint: { listen: '127.0.0.1:0', profile: 'https_spiffe', maxConnections: 3, maxConnectionsPerAddress: 2 } } });
    const port = tv.v.bundleEndpointPort!;
    expect(await probe(port, '127.0.0.11', true)).toBe('open');
    expect(await probe(port, '127.0.0.11', true)).toBe('open');
    expect(await probe(port, '127.0.0.11', false)).toBe('closed');
    expect(await probe(port, '127.0.0.12', true)).toBe('open');
    expect(await probe(port, '127.0.0.13', false)).toBe('closed');
    const metrics = await tv.v.core.metrics.registry.getSingleMetricAsString('sigil_refusals_total');
    expect(metrics).toContain('code="federation.endpoint_address_connection_limit"} 1');
    expect(metrics).toContain('code="federation.endpoint_connection_limit"} 1');
    held.pop()?.destroy();
    await sleep(200);
    expect((await fetchBundle(port, '127.0.0.14')).status).toBe(200);
  });
});

describe('bundle endpoint caps and the open-file limit', () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), '../..');
  let dir: string;
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'sigil-fedfd-'));
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** Start a verifier under `limit` open files; its start-up output. */
  async function startUnder(limit: number, name: string, federation: string): Promise<string> {
    const config = join(dir, `${name}.yaml`);
    writeFileSync(config, `trustDomain: example.org\nlisten: { address: 127.0.0.1, port: 0, maxConnections: 1000 }\nadminSocket: ${join(dir, `${name}.sock`)}\ndataDir: ${join(dir, name)}\nlogLevel: warn\nnodeAttestors: { join_token: {} }\n${federation}`);
    return startupOutputUnder(root, config, limit);
  }

  it('the endpoint cap is added to listen.maxConnections in the start-up check', async () => {
    // 1,000 + 256 (margin) fits under 1,400; 1,000 + 256 (endpoint default) + 256 does not.
    const withEndpoint = await startUnder(1400, 'with', 'federation: { bundleEndpoint: { listen: "127.0.0.1:0", profile: https_spiffe } }\n');
    expect(withEndpoint).toContain('verifier.open_file_limit_low');
    expect(withEndpoint).toContain('listen.maxConnections + federation.bundleEndpoint.maxConnections 1256 does not fit under the open-file limit 1400');
    const without = await startUnder(1400, 'without', '');
    expect(without).not.toContain('open_file_limit_low');
  }, 60_000);
});
