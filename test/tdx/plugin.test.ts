/**
 * `tdx` plugin halves: the agent over a fake configfs-tsm (provider tdx_guest), the verifier with a
 * collateral directory and a stand-in for Intel PCS (rate limit, cache only after verification).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { AgentPluginDeps, SessionInput, VerifierPluginDeps } from '../../src/plugins/types.js';
import { type PcsFetch, type PcsResponse, collateralKeyOfQuote, writeCollateralDir } from '../../src/tdx/collateral.js';
import { createTdxAgent, createTdxVerifier, tdxAgentPlugin, tdxVerifierPlugin } from '../../src/tdx/plugin.js';
import type { TdxCollateral } from '../../src/tdx/verify.js';
import { FakeTsm } from '../sev/fake-tsm.js';
import { codeOfAsync } from '../sev/helpers.js';
import { MemoryState } from '../tpm/memory-state.js';
import { tdxFile } from './helpers.js';
import { T0, makeCollateral, makeTdxQuote, makeTdxTestPki, type QuoteOptions } from './synthetic.js';

const logger = pino({ level: 'silent' });
const pki = makeTdxTestPki();
let tmp = '';
beforeAll(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'sigil-tdx-plugin-'));
});
afterAll(async () => {
  await rm(tmp, { recursive: true, force: true });
});

const clock = T0;
const vdeps = (): VerifierPluginDeps => ({ trustDomain: 'example.org', logger, now: () => clock, state: new MemoryState(), configDir: tmp });
const adeps = (): AgentPluginDeps => ({ trustDomain: 'example.org', logger, dataDir: tmp, configDir: tmp, now: () => clock });

function newSession(now = T0): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now };
}
const wire = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T;
const guest = (o: QuoteOptions = {}, provider = 'tdx_guest') => new FakeTsm({ provider, produce: (inblob) => ({ report: makeTdxQuote(pki, { reportData: inblob, ...o }) }) });
const noLog = { readFile: async (p: string): Promise<Buffer> => Promise.reject(Object.assign(new Error(`ENOENT: ${p}`), { code: 'ENOENT' })) };

/** A stand-in for Intel PCS serving `col`, counting requests. */
function pcs(col: TdxCollateral): { fetch: PcsFetch; urls: string[] } {
  const urls: string[] = [];
  const answer = (body: Uint8Array | string, headers: Record<string, string> = {}): PcsResponse => {
    const bytes = Buffer.from(body);
    return {
      ok: true,
      status: 200,
      headers: { get: (n: string) => headers[n] ?? (n === 'content-length' ? String(bytes.length) : null) },
      body: new ReadableStream({ start: (c) => (c.enqueue(new Uint8Array(bytes)), c.close()) }),
    };
  };
  const fetch: PcsFetch = async (url) => {
    urls.push(url);
    const chain = encodeURIComponent(col.tcbSigningChain);
    if (url.includes('/tdx/certification/v4/tcb?fmspc=')) return answer(col.tcbInfo, { 'TCB-Info-Issuer-Chain': chain });
    if (url.endsWith('/tdx/certification/v4/qe/identity')) return answer(col.qeIdentity, { 'SGX-Enclave-Identity-Issuer-Chain': chain });
    if (url.includes('/sgx/certification/v4/pckcrl?ca=platform')) return answer(col.pckCrl, { 'SGX-PCK-CRL-Issuer-Chain': encodeURIComponent(col.pckCrlIssuerChain) });
    if (url.endsWith('/root.der')) return answer(col.rootCrl);
    return { ok: false, status: 404, headers: { get: () => null }, body: null };
  };
  return { fetch, urls };
}

async function round(o: { fs: FakeTsm; verifierConfig: Record<string, unknown>; fetch?: PcsFetch; session?: SessionInput; agentConfig?: Record<string, unknown> }) {
  const session = o.session ?? newSession();
  const agent = createTdxAgent(o.agentConfig ?? { configfsRoot: o.fs.root }, adeps(), { fs: o.fs, ...noLog });
  const verifier = createTdxVerifier(o.verifierConfig, vdeps(), o.fetch ? { fetch: o.fetch } : {});
  const { challenge, state } = await verifier.begin(wire(await agent.hello()), session);
  const response = wire(await agent.respond(wire(challenge), session));
  return verifier.finish(response, state, session);
}

const PCS = { enabled: true, baseUrl: 'http://127.0.0.1:9', rootCrlUrl: 'http://127.0.0.1:9/root.der' };

describe('tdx plugin halves', () => {
  it('agent + verifier with a collateral directory: verified selectors, agent ID suffix = PPID', async () => {
    const dir = join(tmp, 'dir1');
    const quote = makeTdxQuote(pki);
    await writeCollateralDir(dir, collateralKeyOfQuote(quote), makeCollateral(pki));
    expect((await readdir(dir)).sort()).toEqual(['pck-crl-issuer-chain-platform.pem', 'pck-crl-platform.der', 'qe-identity.json', 'root-crl.der', 'tcb-signing-chain.pem', 'tcbinfo-00806f050000.json']);
    const r = await round({ fs: guest(), verifierConfig: { collateralDir: dir, rootSha256: pki.rootSha256 } });
    expect(r.selectors).toContain('tdx:tcb_status:UpToDate');
    expect(r.agentIdSuffix).toBe('11'.repeat(16));
  });

  it('refuses a quote bound to another session before any PCS request', async () => {
    const p = pcs(makeCollateral(pki));
    const other = newSession();
    const fs = new FakeTsm({ provider: 'tdx_guest', produce: () => ({ report: makeTdxQuote(pki, { reportData: Buffer.concat([other.binding, Buffer.alloc(32)]) }) }) });
    // The agent itself notices; a verifier given the same quote refuses it without fetching.
    expect(await codeOfAsync(() => round({ fs, verifierConfig: { pcs: PCS, rootSha256: pki.rootSha256 }, fetch: p.fetch }))).toBe('tdx.attester_report_data_mismatch');
    const verifier = createTdxVerifier({ pcs: PCS, rootSha256: pki.rootSha256 }, vdeps(), { fetch: p.fetch });
    const s = newSession();
    const quote = makeTdxQuote(pki, { reportData: Buffer.concat([other.binding, Buffer.alloc(32)]) });
    expect(await codeOfAsync(() => verifier.finish({ quote: quote.toString('base64') }, {}, s))).toBe('tdx.report_data_mismatch');
    expect(p.urls).toEqual([]);
  });

  it('fetches from PCS, caches only what verified, and rate-limits', async () => {
    const dir = join(tmp, 'pcs-cache');
    const p = pcs(makeCollateral(pki));
    const cfg = { collateralDir: dir, pcs: { ...PCS, maxRequestsPerMinute: 4 }, rootSha256: pki.rootSha256 };
    const verifier = createTdxVerifier(cfg, vdeps(), { fetch: p.fetch });
    const once = async () => {
      const s = newSession();
      const quote = makeTdxQuote(pki, { reportData: Buffer.concat([s.binding, Buffer.alloc(32)]) });
      return verifier.finish({ quote: quote.toString('base64') }, {}, s);
    };
    expect((await once()).selectors).toContain('tdx:tcb_status:UpToDate');
    expect(p.urls).toHaveLength(4);
    expect(await readdir(dir)).toHaveLength(6);
    await once(); // memory cache
    expect(p.urls).toHaveLength(4);
    // Collateral from PCS that does not verify (other root) is not cached, and the budget runs out.
    const bad = pcs(makeCollateral(makeTdxTestPki()));
    const v2 = createTdxVerifier({ pcs: { ...PCS, maxRequestsPerMinute: 4 }, rootSha256: pki.rootSha256 }, vdeps(), { fetch: bad.fetch });
    const s = newSession();
    const q = makeTdxQuote(pki, { reportData: Buffer.concat([s.binding, Buffer.alloc(32)]) });
    expect(await codeOfAsync(() => v2.finish({ quote: q.toString('base64') }, {}, s))).toBe('tdx.root_untrusted');
    expect(await codeOfAsync(() => v2.finish({ quote: q.toString('base64') }, {}, s))).toBe('tdx.pcs_rate_limited');
    expect(bad.urls).toHaveLength(4);
  });

  it('replaces an expired directory copy from PCS', async () => {
    const dir = join(tmp, 'expired');
    const quote = makeTdxQuote(pki);
    const DAY = 86_400_000;
    await writeCollateralDir(dir, collateralKeyOfQuote(quote), makeCollateral(pki, { tcbInfo: { nextUpdate: new Date(T0.getTime() - DAY), issueDate: new Date(T0.getTime() - 2 * DAY) } }));
    const p = pcs(makeCollateral(pki));
    const r = await round({ fs: guest(), verifierConfig: { collateralDir: dir, pcs: PCS, rootSha256: pki.rootSha256 }, fetch: p.fetch });
    expect(r.selectors).toContain('tdx:tcb_status:UpToDate');
    expect(p.urls).toHaveLength(4);
    expect(await codeOfAsync(() => round({ fs: guest(), verifierConfig: { collateralDir: join(tmp, 'expired2'), rootSha256: pki.rootSha256 } }))).toBe('tdx.collateral_missing');
  });

  it('the agent sends the CC event log it reads; the verifier replays it against the quote RTMRs', async () => {
    const files: Record<string, Buffer> = { '/ccel/data': tdxFile('ccel_data.dat'), '/ccel/table': tdxFile('ccel_table.dat') };
    const fs = guest();
    const agent = createTdxAgent({ configfsRoot: fs.root, eventLogPath: '/ccel/data', ccelTablePath: '/ccel/table' }, adeps(), { fs, readFile: async (p) => files[p]! });
    const s = newSession();
    const response = wire(await agent.respond({}, s)) as Record<string, string>;
    expect(Buffer.from(response.eventLog!, 'base64').equals(files['/ccel/data']!)).toBe(true);
    expect(response.ccelTable).toBe(files['/ccel/table']!.toString('base64'));
    // The synthetic quote's RTMRs are not what this (real) log replays to.
    const v = createTdxVerifier({ allowUnknownTcb: true, rootSha256: pki.rootSha256 }, vdeps());
    expect(await codeOfAsync(() => v.finish(response, {}, s))).toBe('tdx.rtmr_mismatch');
  });

  it('refuses an incomplete collateral directory', async () => {
    const dir = join(tmp, 'partial');
    await writeCollateralDir(dir, collateralKeyOfQuote(makeTdxQuote(pki)), makeCollateral(pki));
    await rm(join(dir, 'root-crl.der'));
    expect(await codeOfAsync(() => round({ fs: guest(), verifierConfig: { collateralDir: dir, rootSha256: pki.rootSha256 } }))).toBe('tdx.collateral_incomplete');
  });

  it('agent: wrong configfs provider, event log policy; verifier: requireEventLog, config validation', async () => {
    expect(await codeOfAsync(() => round({ fs: guest({}, 'sev_guest'), verifierConfig: {} }))).toBe('tdx.configfs_wrong_provider');
    const fs = guest();
    const agent = createTdxAgent({ eventLog: 'always', configfsRoot: fs.root }, adeps(), { fs, ...noLog });
    expect(await codeOfAsync(() => agent.respond({}, newSession()))).toBe('tdx.event_log_unreadable');
    expect(await codeOfAsync(() => round({ fs: guest(), verifierConfig: { requireEventLog: true, allowUnknownTcb: true, rootSha256: pki.rootSha256 } }))).toBe('tdx.event_log_missing');
    expect(await codeOfAsync(async () => tdxVerifierPlugin.create({ acceptedTcbStatuses: ['Fine'] }, vdeps()))).toBe('tdx.config_invalid');
    expect(await codeOfAsync(async () => tdxVerifierPlugin.create({ pcs: { enabled: true, baseUrl: 'http://example.com' } }, vdeps()))).toBe('tdx.config_invalid');
    expect(await codeOfAsync(async () => tdxAgentPlugin.create({ eventLog: 'sometimes' }, adeps()))).toBe('tdx.config_invalid');
    const v = createTdxVerifier({}, vdeps());
    expect(await codeOfAsync(() => v.finish({ quote: 'not base64!' }, {}, newSession()))).toBe('tdx.payload_invalid');
    expect(await codeOfAsync(() => v.finish({ quote: 'AAAA', extra: 1 }, {}, newSession()))).toBe('tdx.payload_invalid');
    expect(await codeOfAsync(() => v.begin({ x: 1 }, newSession()))).toBe('tdx.payload_invalid');
  });
});
